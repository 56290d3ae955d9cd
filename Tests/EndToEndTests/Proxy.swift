#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookWire

/// A TCP proxy on 127.0.0.1 that a test can cut (every connection dropped,
/// new ones refused) and restore: a network partition between real processes.
final class CuttableProxy: @unchecked Sendable {
    let port: Int
    let target: Int
    private let listener: Int32
    private let lock = NSLock()
    private var cut = false
    private var pairs: [(Int32, Int32)] = []
    private var stopped = false
    /// When set, each connection forwards only this many ETCP frames from the
    /// target back to the client, then drops the rest and stays open: a peer
    /// that completed the handshake and then went silent (a blackhole).
    private var downstreamFramesMax: Int?
    /// When set, nothing at all is forwarded and connections stay open.
    private var blackholed = false

    init(to target: Int) throws {
        self.target = target
        (listener, port) = try CuttableProxy.listen()
        let thread = Thread { [unowned self] in self.acceptLoop() }
        thread.start()
    }

    deinit {
        lock.lock()
        stopped = true
        for (a, b) in pairs { shutdown(a, Int32(SHUT_RDWR)); shutdown(b, Int32(SHUT_RDWR)) }
        lock.unlock()
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// A TCP connection to 127.0.0.1:`port`, or nil.
    static func connectLoopback(_ port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// A free port on 127.0.0.1, found by binding port 0.
    static func freePort() throws -> Int {
        let (fd, port) = try listen()
        close(fd)
        return port
    }

    static func listen() throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, Glibc.listen(fd, 16) == 0 else { throw ProxyError("bind/listen: \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    func partition() {
        lock.lock()
        cut = true
        for (a, b) in pairs { shutdown(a, Int32(SHUT_RDWR)); shutdown(b, Int32(SHUT_RDWR)) }
        pairs = []
        lock.unlock()
    }

    func heal() {
        lock.lock()
        cut = false
        blackholed = false
        downstreamFramesMax = nil
        lock.unlock()
    }

    /// New and open connections stay up but carry nothing either way.
    func blackhole() {
        lock.lock()
        blackholed = true
        lock.unlock()
    }

    /// New connections pass `frames` frames from the target, then go silent that way.
    func silenceAfter(frames: Int) {
        lock.lock()
        downstreamFramesMax = frames
        lock.unlock()
    }

    private var isBlackholed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return blackholed
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { return }
            lock.lock()
            let refuse = cut || stopped
            lock.unlock()
            if refuse {
                close(client)
                continue
            }
            guard let upstream = CuttableProxy.connectLoopback(target) else {
                close(client)
                continue
            }
            lock.lock()
            pairs.append((client, upstream))
            let framesMax = downstreamFramesMax
            lock.unlock()
            Thread { [unowned self] in self.pump(client, upstream, downstreamFramesMax: framesMax) }.start()
        }
    }

    /// Copies bytes both ways until either side closes (`a` the client, `b` the target).
    func pump(_ a: Int32, _ b: Int32, downstreamFramesMax: Int?) {
        var fds = [pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536)
        var decoder = FrameDecoder()
        var framesPassed = 0
        loop: while poll(&fds, 2, -1) > 0 {
            for (i, (from, to)) in [(a, b), (b, a)].enumerated() where fds[i].revents != 0 {
                var n = read(from, &buffer, buffer.count)
                if n <= 0 { break loop }
                if isBlackholed { continue }
                if i == 1, let framesMax = downstreamFramesMax {
                    // Pass whole frames up to the limit, then nothing.
                    decoder.feed(buffer[0..<n])
                    var out: [UInt8] = []
                    while framesPassed < framesMax, let frame = try? decoder.next() {
                        out += frame.encoded
                        framesPassed += 1
                    }
                    n = out.count
                    buffer.replaceSubrange(0..<n, with: out)
                }
                var sent = 0
                while sent < n {
                    let m = buffer[sent..<n].withUnsafeBytes { send(to, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    if m <= 0 { break loop }
                    sent += m
                }
            }
        }
        close(a)
        close(b)
    }
}

struct ProxyError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
