#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Logging
import SpookCore
import SpookStore

/// `[api] fifo`: a named pipe for shell scripts and legacy programs that
/// cannot speak the socket protocol:
///
///     echo 'set site1.line1/plc1/speed 1500' > /run/spook-edge/edge.in
///
/// One command per line: `set REGISTER VALUE`, VALUE as in `spookctl set`
/// (JSON, else a string); blank lines and lines starting with `#` are
/// skipped. A bad line is refused with a log line and a counter and never
/// stops the reader. Writes are committed like the API's (group commit,
/// durable), but nobody is answered: a writer that needs to know uses the
/// socket.
final class FifoReader: @unchecked Sendable {
    /// A line longer than this is refused (and skipped up to its end).
    static let lineBytesMax = 64 * 1024
    /// Lines read and not yet handled on the node loop; past this a line is
    /// refused as `busy` where it is read, so a writer flooding the pipe
    /// cannot queue unbounded work on the node.
    static let linesInFlightMax = 1_024
    let inFlight = NIOLockedValueBox(0)
    /// The `reason` labels of `spook_fifo_refused_total`.
    static let reasons = ["syntax", "too-long", "refused", "busy"]

    let path: String
    unowned let node: Node
    var channel: Channel?
    /// Our own writer end: the pipe never reads end-of-file when the last outside writer closes.
    var keepOpen: Int32 = -1
    var lineNumber = 0

    init(path: String, node: Node) {
        self.path = path
        self.node = node
    }

    /// Creates the pipe if it is missing (mode 0620: the owner reads, the group writes), opens it.
    func start(group: EventLoopGroup) throws {
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFIFO else { throw APIError("[api] fifo: \(path) exists and is not a named pipe") }
        } else if mkfifo(path, 0o620) != 0 {
            throw APIError("[api] fifo: cannot create \(path): \(String(cString: strerror(errno)))")
        }
        chmod(path, 0o620)
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { throw APIError("[api] fifo: cannot open \(path): \(String(cString: strerror(errno)))") }
        keepOpen = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        let node = self.node
        channel = try NIOPipeBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(FifoLineHandler { line in
                        let admitted = self.inFlight.withLockedValue { n in
                            guard n < FifoReader.linesInFlightMax else { return false }
                            n += 1
                            return true
                        }
                        guard admitted else {
                            node.metrics.fifoRefused("busy")
                            node.limitLog.warning("fifo-busy", "fifo \(self.path): \(FifoReader.linesInFlightMax) lines wait for the node; a line was refused",
                                                  nowMs: node.clock.nowMs())
                            return
                        }
                        node.loop.execute {
                            self.inFlight.withLockedValue { $0 -= 1 }
                            self.handle(line)
                        }
                    })
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .wait()
        node.logger.info("fifo", metadata: ["path": "\(path)"])
    }

    func stop() {
        try? channel?.close().wait()
        if keepOpen >= 0 { close(keepOpen) }
        unlink(path)
    }

    func refuse(_ reason: String, _ message: String) {
        node.metrics.fifoRefused(reason)
        node.limitLog.warning("fifo-\(reason)", "fifo \(path) line \(lineNumber): \(message)", nowMs: node.clock.nowMs())
    }

    /// One line (node loop); nil: a line over the limit.
    func handle(_ line: [UInt8]?) {
        lineNumber += 1
        guard let line else { return refuse("too-long", "longer than \(FifoReader.lineBytesMax) bytes; skipped") }
        guard let text = String(validating: line, as: UTF8.self) else { return refuse("syntax", "not UTF-8") }
        let trimmed = text.drop { $0 == " " || $0 == "\t" }
        if trimmed.isEmpty || trimmed.hasPrefix("#") { return }
        let words = trimmed.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard words.count == 3, words[0] == "set" else {
            return refuse("syntax", "expected \"set REGISTER VALUE\", got \"\(trimmed.prefix(80))\"")
        }
        do {
            let name = try QRegisterName(String(words[1]))
            // VALUE is JSON, else the text itself, as `spookctl set` reads it.
            let write = try node.api.applicationWrite(name, try Value(json: JSONValue.parseOrString(String(words[2]))))
            let number = lineNumber
            try node.api.enqueue(LocalWrite(group: name.group, writes: [write])) { result in
                if case .failure(let e) = result {
                    self.node.metrics.fifoRefused("refused")
                    self.node.limitLog.warning("fifo-refused", "fifo \(self.path) line \(number): \(e.message)", nowMs: self.node.clock.nowMs())
                }
            }
        } catch let e as APIError where e.code == "busy" || e.code == "refused" {
            refuse(e.code, e.description)
        } catch let e as CoreError {
            refuse("syntax", e.message)
        } catch {
            refuse("syntax", "\(error)")
        }
    }
}

/// Splits the pipe's bytes into lines, bounded by `FifoReader.lineBytesMax`.
final class FifoLineHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let onLine: ([UInt8]?) -> Void
    var pending: [UInt8] = []
    /// Skipping the rest of a line that went over the limit.
    var skipping = false

    init(onLine: @escaping ([UInt8]?) -> Void) { self.onLine = onLine }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
        for b in bytes {
            if b == UInt8(ascii: "\n") {
                if skipping { skipping = false } else { onLine(pending) }
                pending.removeAll(keepingCapacity: true)
            } else if !skipping {
                pending.append(b)
                if pending.count > FifoReader.lineBytesMax {
                    onLine(nil)
                    pending.removeAll()
                    skipping = true
                }
            }
        }
    }
}
