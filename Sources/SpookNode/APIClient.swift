#if canImport(Glibc)
import Glibc
#endif

/// A blocking client of the local API, for `spookctl` and tests: connect,
/// send one JSON line, read JSON lines back.
public final class APIClient {
    let fd: Int32
    var buffer: [UInt8] = []

    public init(socket path: String) throws {
        fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw APIClientError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            Glibc.close(fd)
            throw APIClientError("\(path): socket path too long")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw APIClientError("\(path): cannot connect: \(reason) (is the daemon running?)")
        }
    }

    deinit { Glibc.close(fd) }

    public func send(_ request: JSONValue) throws {
        let bytes = request.serialized + [UInt8(ascii: "\n")]
        var sent = 0
        while sent < bytes.count {
            // MSG_NOSIGNAL: a daemon that went away is an error here, not a SIGPIPE that kills the caller.
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw APIClientError("write: \(String(cString: strerror(errno)))") }
            sent += n
        }
    }

    /// The next response or event line, nil when the daemon closed the connection.
    public func next(timeoutMs: Int32 = -1) throws -> JSONValue? {
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<newline])
                buffer.removeSubrange(...newline)
                return try JSONValue.parse(line)
            }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, timeoutMs)
            if ready == 0 { throw APIClientError("no answer within \(timeoutMs) ms") }
            if ready < 0 {
                if errno == EINTR { continue }
                throw APIClientError("poll: \(String(cString: strerror(errno)))")
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer += chunk[..<n]
        }
    }

    /// Sends a request and returns its answer.
    public func call(_ request: JSONValue, timeoutMs: Int32 = 30_000) throws -> JSONValue {
        try send(request)
        guard let answer = try next(timeoutMs: timeoutMs) else { throw APIClientError("the daemon closed the connection") }
        return answer
    }
}

public struct APIClientError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
