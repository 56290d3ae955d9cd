#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Every bound a running node keeps on what others can make it hold
/// (`[limits]` in the config; docs/configuration.md). Reaching one is a log
/// line, a metric and a handled event, never growth.
public struct NodeLimits: Sendable, Hashable {
    /// Open connections per listener (links and the WebSocket upgrade before them).
    public var connectionsMax = 1_024
    /// Open connections per listener from one source address (every Unix socket client is one source).
    public var connectionsPerSourceMax = 64
    /// Local API clients at once.
    public var apiClientsMax = 1_024
    /// Bytes queued towards one local API client (a `watch` that does not
    /// read); past it the client is closed, with the reason logged.
    public var apiClientBufferBytesMax = 4 << 20
    /// Bytes queued towards one link's peer; past it the link is closed and
    /// resumes from acknowledgements when it returns.
    public var linkBufferBytesMax = 64 << 20
    /// Writes waiting for the next group commit; past it `set` answers `busy`.
    public var pendingWritesMax = 50_000
    /// Bytes of one snapshot being reassembled from its chunks.
    public var snapshotBytesMax = 256 << 20

    /// Frames a link's reader hands the node loop before it stops reading
    /// (TCP then pushes back on the sender), and bytes of them.
    public static let linkFramesQueuedMax = 64
    public static let linkBytesQueuedMax = 8 << 20
    /// Request batches an API connection hands the node loop before it stops reading.
    public static let apiBatchesQueuedMax = 16
    /// The frame size a peer may send before it has authenticated: a HELLO
    /// with every subscription pattern fits; nothing much larger is buffered
    /// for a stranger.
    public static let unauthenticatedFrameMax = 80 * 1024
    /// The listen backlog of every listener and the API socket (the kernel caps it at somaxconn).
    public static let backlog: Int32 = 1_024

    public init() {}
}

/// Connection counts and buffered bytes, shared by the I/O loop (which
/// admits connections and queues bytes) and the node loop (which reports
/// them in `status` and metrics).
final class NodeBudget: Sendable {
    struct Counts {
        var connections: [String: Int] = [:]
        var perSource: [String: Int] = [:]
        var apiClients = 0
        /// Bytes written to sockets and not yet taken by the kernel, of which to API clients.
        var outbound = 0
        var apiOutbound = 0
        /// Bytes read and not yet handled: partial frames and lines, frames queued for the node loop.
        var inbound = 0
    }

    let limits: NodeLimits
    private let counts = NIOLockedValueBox(Counts())

    init(limits: NodeLimits) { self.limits = limits }

    var snapshot: Counts { counts.withLockedValue { $0 } }

    /// Takes a connection slot for `listener` and `source`, or says why not.
    func admit(listener: String, source: String) -> String? {
        counts.withLockedValue { c in
            if c.connections[listener, default: 0] >= limits.connectionsMax {
                return "\(listener) already has \(limits.connectionsMax) connections ([limits] connections_max)"
            }
            let key = "\(listener) \(source)"
            if c.perSource[key, default: 0] >= limits.connectionsPerSourceMax {
                return "\(source) already has \(limits.connectionsPerSourceMax) connections to \(listener) ([limits] connections_per_source_max)"
            }
            c.connections[listener, default: 0] += 1
            c.perSource[key, default: 0] += 1
            return nil
        }
    }

    func release(listener: String, source: String) {
        counts.withLockedValue { c in
            c.connections[listener, default: 1] -= 1
            let key = "\(listener) \(source)"
            c.perSource[key, default: 1] -= 1
            if c.perSource[key] == 0 { c.perSource[key] = nil }
        }
    }

    func admitAPIClient() -> Bool {
        counts.withLockedValue { c in
            guard c.apiClients < limits.apiClientsMax else { return false }
            c.apiClients += 1
            return true
        }
    }

    func releaseAPIClient() { counts.withLockedValue { $0.apiClients -= 1 } }
    func outbound(_ delta: Int, api: Bool) {
        counts.withLockedValue {
            $0.outbound += delta
            if api { $0.apiOutbound += delta }
        }
    }
    func inbound(_ delta: Int) { counts.withLockedValue { $0.inbound += delta } }
}

/// Counts the bytes written to a channel until the kernel takes them, and
/// closes a channel whose peer lets more than `max` pile up (a slow reader
/// cannot grow the process). The first handler on the outbound path.
final class OutboundBudget: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let max: Int
    let budget: NodeBudget
    let what: String
    /// A local API client (else a link): counted apart in `buffered_bytes`.
    let api: Bool
    let onExceeded: @Sendable (String) -> Void
    private var pending = 0
    private var exceeded = false

    init(max: Int, budget: NodeBudget, what: String, api: Bool, onExceeded: @escaping @Sendable (String) -> Void) {
        self.max = max
        self.budget = budget
        self.what = what
        self.api = api
        self.onExceeded = onExceeded
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data).readableBytes
        guard !exceeded else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        pending += bytes
        budget.outbound(bytes, api: api)
        if pending > max {
            exceeded = true
            onExceeded("\(what): \(pending) bytes queued for a peer that does not read, the limit is \(max)")
            context.close(promise: nil)
        }
        let done = promise ?? context.eventLoop.makePromise()
        done.futureResult.whenComplete { [self] _ in
            pending -= bytes
            budget.outbound(-bytes, api: api)
        }
        context.write(data, promise: done)
    }
}

/// Says a limit was reached once per `intervalMs` per kind (with how many
/// times since), so a flood cannot flood the log too.
package final class RateLimitedLog: Sendable {
    let logger: Logger
    let intervalMs: UInt64
    private let last = NIOLockedValueBox<[String: (atMs: UInt64, suppressed: Int)]>([:])

    init(logger: Logger, intervalMs: UInt64 = 10_000) {
        self.logger = logger
        self.intervalMs = intervalMs
    }

    package func warning(_ kind: String, _ message: String, nowMs: UInt64) {
        let suppressed: Int? = last.withLockedValue { seen in
            if let previous = seen[kind], nowMs < previous.atMs + intervalMs {
                seen[kind] = (previous.atMs, previous.suppressed + 1)
                return nil
            }
            let count = seen[kind]?.suppressed ?? 0
            seen[kind] = (nowMs, 0)
            return count
        }
        guard let suppressed else { return }
        logger.warning("\(message)", metadata: suppressed > 0 ? ["also": "\(suppressed) more like it not logged"] : [:])
    }
}

/// One process per store: an exclusive `flock` on `<data>.lock`, which holds
/// the owner's pid. A second daemon started on the same store stops before
/// it touches anything (the store, the API socket) and names the first.
public final class StoreLock {
    let fd: Int32
    public let path: String

    public init(data: String, name: String) throws {
        path = data + ".lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreLockError("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 64)
            let n = pread(fd, &buffer, buffer.count, 0)
            let owner = String(decoding: buffer[..<max(0, n)], as: UTF8.self).trimmingSpaces
            close(fd)
            throw StoreLockError("\(data) is in use by another \(name) (\(owner.isEmpty ? "pid unknown" : "pid \(owner)"), lock \(path)): "
                                 + "one process per store; this one stops and leaves it running")
        }
        let pid = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = pid.withCString { pwrite(fd, $0, strlen($0), 0) }
    }

    deinit { close(fd) }
}

public struct StoreLockError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let c = s.first, c.isWhitespace { s.removeFirst() }
        while let c = s.last, c.isWhitespace { s.removeLast() }
        return String(s)
    }
}

/// A transport error as one sentence an operator can read: "connection
/// refused by 10.0.0.5:7700", "connection reset by peer", not the description
/// of the NIO type with the system call's argument labels.
func sentence(_ error: Error) -> String {
    func reason(_ code: Int32) -> String { String(cString: strerror(code)).lowercased() }
    switch error {
    case let e as NIOConnectionError:
        let attempts = e.connectionErrors.map { "\(reason(of: $0.error)) (\($0.target))" }
        if let dns = e.dnsAAAAError ?? e.dnsAError, attempts.isEmpty { return "could not resolve \(e.host): \(dns)" }
        return attempts.isEmpty ? "could not connect to \(e.host):\(e.port)" : "could not connect to \(e.host):\(e.port): " + attempts.joined(separator: "; ")
    default:
        return reason(of: error)
    }
    func reason(of error: Error) -> String {
        switch error {
        case let e as IOError: return reason(e.errnoCode)
        case ChannelError.connectTimeout(let t): return "no answer within \(t.nanoseconds / 1_000_000) ms"
        case ChannelError.ioOnClosedChannel, ChannelError.alreadyClosed: return "the connection was already closed"
        case ChannelError.eof: return "the peer closed the connection"
        default: return "\(error)"
        }
    }
}
