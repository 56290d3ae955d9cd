#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// systemd's notify protocol (sd_notify(3)), without libsystemd: datagrams
/// to $NOTIFY_SOCKET. READY=1 once listening, WATCHDOG=1 from the node's own
/// loop at half of $WATCHDOG_USEC (a wedged node loop stops the pings and
/// systemd restarts the service), STOPPING=1 on shutdown. Does nothing when
/// not run by systemd.
enum SystemdNotify {
    static func send(_ state: String) {
        guard let env = getenv("NOTIFY_SOCKET") else { return }
        var path = Array(String(cString: env).utf8)
        guard !path.isEmpty, path.count < 108 else { return }
        if path[0] == UInt8(ascii: "@") { path[0] = 0 }  // abstract namespace
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count)
        _ = state.withCString { text in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), 0, $0, length) }
            }
        }
    }

    /// Starts the watchdog pings on `loop` if systemd asked for them.
    static func startWatchdog(on loop: EventLoop) -> RepeatedTask? {
        guard let env = getenv("WATCHDOG_USEC"), let usec = Int64(String(cString: env)), usec > 0 else { return nil }
        let interval = TimeAmount.microseconds(usec / 2)
        return loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in send("WATCHDOG=1") }
    }
}
