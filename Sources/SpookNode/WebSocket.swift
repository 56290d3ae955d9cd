import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Carries ETCP frames in WebSocket binary messages, one frame per message,
/// so the rest of the pipeline sees the same bytes as on any other stream.
/// Pings are answered; a close is returned and the channel closed. Clients
/// mask what they send (RFC 6455 §5.3).
final class WebSocketBinaryAdapter: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    let isClient: Bool
    init(isClient: Bool) { self.isClient = isClient }

    var mask: WebSocketMaskingKey? { isClient ? .random() : nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .continuation:
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: mask, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: mask, data: context.channel.allocator.buffer(capacity: 0))
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in channel.close(promise: nil) }
        case .text:
            // ETCP is binary: text is garbage to the frame decoder, which will refuse it.
            context.fireChannelRead(wrapInboundOut(frame.unmaskedData))
        default:
            break
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: mask, data: unwrapOutboundIn(data))
        context.write(wrapOutboundOut(frame), promise: promise)
    }
}

/// Sends the client's upgrade request once connected.
final class WebSocketUpgradeRequester: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let host: String
    let path: String

    init(host: String, path: String) {
        self.host = host
        self.path = path
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }
}

enum WebSocketLink {
    /// ETCP frames are up to 1 MiB plus their header and checksum.
    static let messageMax = (1 << 20) + 64

    /// Server: an HTTP pipeline that upgrades requests for `path` and then runs `ready`.
    static func configureServer(_ channel: Channel, path: String, ready: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<Void> {
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: messageMax,
            shouldUpgrade: { channel, head in
                channel.eventLoop.makeSucceededFuture(head.uri == path ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(WebSocketBinaryAdapter(isClient: false)) }
                    .flatMap { ready(channel) }
            })
        return channel.pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
    }

    /// Client: HTTP with an upgrade to WebSocket at `path`; `ready` runs once upgraded.
    static func configureClient(_ channel: Channel, host: String, path: String, ready: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) -> EventLoopFuture<Void> {
        let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: messageMax, upgradePipelineHandler: { channel, _ in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(WebSocketBinaryAdapter(isClient: true)) }
                .flatMap { ready(channel) }
        })
        return channel.pipeline.addHTTPClientHandlers(withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
            .flatMap { channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(WebSocketUpgradeRequester(host: host, path: path)) } }
    }
}
