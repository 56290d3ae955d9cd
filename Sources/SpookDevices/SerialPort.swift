#if canImport(Glibc)
import Glibc
#endif
import CSerialPort

/// Serial ports: opened as non-blocking raw termios descriptors (the path
/// production and the pseudo-terminal tests share), and enumerated with
/// libserialport for their USB identity.
public enum SerialPort {
    static let speeds: [Int: speed_t] = [
        1200: speed_t(B1200), 2400: speed_t(B2400), 4800: speed_t(B4800), 9600: speed_t(B9600),
        19200: speed_t(B19200), 38400: speed_t(B38400), 57600: speed_t(B57600), 115_200: speed_t(B115200),
        230_400: speed_t(B230400), 460_800: speed_t(B460800), 921_600: speed_t(B921600),
    ]

    public static var supportedBauds: [Int] { speeds.keys.sorted() }

    /// Opens `settings.port` raw, non-blocking, with the configured line
    /// settings. Throws with the path and the reason.
    public static func open(_ settings: SerialSettings) throws -> Int32 {
        let fd = Glibc.open(settings.port, O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw DeviceError("\(settings.port): \(String(cString: strerror(errno)))") }
        do {
            try configure(fd, settings)
            return fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    static func configure(_ fd: Int32, _ s: SerialSettings) throws {
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { throw DeviceError("\(s.port): not a terminal (\(String(cString: strerror(errno))))") }
        cfmakeraw(&t)
        guard let speed = speeds[s.baud] else { throw DeviceError("\(s.port): baud \(s.baud) is not supported") }
        cfsetispeed(&t, speed)
        cfsetospeed(&t, speed)
        let cleared: tcflag_t = tcflag_t(CSIZE) | tcflag_t(PARENB) | tcflag_t(PARODD) | tcflag_t(CSTOPB) | tcflag_t(CRTSCTS)
        t.c_cflag &= ~cleared
        switch s.dataBits {
        case 5: t.c_cflag |= tcflag_t(CS5)
        case 6: t.c_cflag |= tcflag_t(CS6)
        case 7: t.c_cflag |= tcflag_t(CS7)
        default: t.c_cflag |= tcflag_t(CS8)
        }
        switch s.parity {
        case .none: break
        case .even: t.c_cflag |= tcflag_t(PARENB)
        case .odd: t.c_cflag |= tcflag_t(PARENB) | tcflag_t(PARODD)
        }
        if s.stopBits == 2 { t.c_cflag |= tcflag_t(CSTOPB) }
        t.c_cflag |= tcflag_t(CLOCAL) | tcflag_t(CREAD)
        guard tcsetattr(fd, TCSANOW, &t) == 0 else { throw DeviceError("\(s.port): cannot set line settings (\(String(cString: strerror(errno))))") }
        tcflush(fd, TCIOFLUSH)
    }

    /// The serial ports libserialport sees, with their USB identity where
    /// they have one (pseudo-terminals are not listed: they have no
    /// /sys/class/tty entry).
    public static func list() -> [AttachedDevice] {
        var ports: UnsafeMutablePointer<OpaquePointer?>?
        guard sp_list_ports(&ports) == SP_OK, let ports else { return [] }
        defer { sp_free_port_list(ports) }
        var out: [AttachedDevice] = []
        var i = 0
        while let port = ports[i] {
            i += 1
            guard let name = sp_get_port_name(port) else { continue }
            var device = AttachedDevice(path: String(cString: name), subsystem: "tty")
            if sp_get_port_transport(port) == SP_TRANSPORT_USB {
                var vid: Int32 = 0, pid: Int32 = 0
                if sp_get_port_usb_vid_pid(port, &vid, &pid) == SP_OK {
                    device.vendor = hex4(vid)
                    device.product = hex4(pid)
                }
                device.serial = sp_get_port_usb_serial(port).map { String(cString: $0) }
                device.model = sp_get_port_usb_product(port).map { String(cString: $0) }
            }
            out.append(device)
        }
        return out
    }

    static func hex4(_ v: Int32) -> String {
        let s = String(UInt16(truncatingIfNeeded: v), radix: 16)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }
}
