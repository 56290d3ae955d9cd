import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import SpookCore
import SpookDevices
import SpookStore

/// The node's Prometheus metrics (swift-prometheus), served as text on
/// `GET /metrics` when `[metrics] listen` is set. Counters are bumped where
/// things happen; gauges are read from the node when scraped.
final class NodeMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    let commitSeconds: DurationHistogram
    let reconnects: Counter
    let deltasHeld: Counter
    let links: Gauge
    /// Times this node found its store behind its peers and started a new incarnation.
    let reincarnations: Counter
    /// Deltas received under an (origin, seq) held with other content.
    let seqConflicts: Counter
    /// Remote deltas refused because their HLC was too far from our clock.
    let clockDriftRefused: Counter
    var lastHeld: UInt64 = 0
    /// The gauges of each link now present, by its configured name.
    var linkGauges: [String: [Gauge]] = [:]
    let peersForgotten: Counter
    let compactedDeltas: Counter
    let bufferedOut: Gauge
    let bufferedIn: Gauge
    var server: Channel?

    /// `spook_<metric>_<unit>`.
    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "spook", metricName: metric, unitName: unit, helpText: help)
    }

    static var refusedName: MetricNameDescriptor { name("links_refused", "total", "Links closed with an ERROR frame, by code") }
    static var lagName: MetricNameDescriptor { name("link_lag", "deltas", "Deltas the peer has not acknowledged") }
    static var onlineName: MetricNameDescriptor { name("link", "online", "1 while the link is coherent") }
    static var deviceOnlineName: MetricNameDescriptor { name("device", "online", "1 while the device HalfPair is coherent") }
    static var deviceTransactionsName: MetricNameDescriptor { name("device_transactions", "total", "Modbus requests and firmware bridge reports since start") }
    static var deviceErrorsName: MetricNameDescriptor { name("device_errors", "total", "Problems written to a device's $error (timeouts, exceptions, refused writes)") }
    static var bytesName: MetricNameDescriptor { name("link_sent", "bytes", "Frame bytes sent on the current connection") }

    init() {
        commitSeconds = registry.makeDurationHistogram(
            descriptor: NodeMetrics.name("commit", "seconds", "Time to make a StateBlock durable (local writes and received DELTAS)"),
            buckets: [.microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(250)])
        reconnects = registry.makeCounter(descriptor: NodeMetrics.name("reconnects", "total", "Reconnect attempts scheduled by upstream HalfPairs"))
        deltasHeld = registry.makeCounter(descriptor: NodeMetrics.name("deltas_held", "total", "Deltas held by this node's store (rate() is deltas/s)"))
        links = registry.makeGauge(descriptor: NodeMetrics.name("links", "", "Links past the handshake"))
        peersForgotten = registry.makeCounter(descriptor: NodeMetrics.name("peers_forgotten", "total", "Peers removed by the retention or spookctl peers forget"))
        compactedDeltas = registry.makeCounter(descriptor: NodeMetrics.name("compacted_deltas", "total", "Deltas removed from the log by compaction"))
        bufferedOut = registry.makeGauge(descriptor: NodeMetrics.name("buffered_outbound", "bytes", "Bytes queued towards links and API clients, not yet taken by the kernel"))
        bufferedIn = registry.makeGauge(descriptor: NodeMetrics.name("buffered_inbound", "bytes", "Bytes read from links and API clients, not yet handled"))
        // The running build, as Prometheus conventions have it: a gauge of 1 labelled with the version.
        registry.makeGauge(descriptor: NodeMetrics.name("build", "info", "This build (version label)"), labels: [("version", SpookVersion.string)]).set(to: 1)
        reincarnations = registry.makeCounter(descriptor: NodeMetrics.name("incarnations_started", "total",
                                                                           "New incarnations started because the store was behind a peer"))
        seqConflicts = registry.makeCounter(descriptor: NodeMetrics.name("seq_conflicts", "total",
                                                                         "Deltas received under an (origin, seq) held with other content"))
        clockDriftRefused = registry.makeCounter(descriptor: NodeMetrics.name("clock_drift_refused", "total",
                                                                              "Remote deltas refused: HLC too far from local time"))
    }

    static var refusedWritesName: MetricNameDescriptor { name("writes_refused", "total", "Deltas a peer wrote outside its grant, held withheld") }

    func refusedWrite(_ peer: String) {
        registry.makeCounter(descriptor: NodeMetrics.refusedWritesName, labels: [("peer", peer)]).increment()
    }

    func deviceError(_ device: String) {
        registry.makeCounter(descriptor: NodeMetrics.deviceErrorsName, labels: [("device", device)]).increment()
    }

    static var connectionsRefusedName: MetricNameDescriptor {
        name("connections_refused", "total", "Connections closed by a limit: limit (a cap), handshake-timeout, slow-reader, api-clients")
    }

    /// `reason` is one of the fixed names above.
    func connectionRefused(_ reason: String) {
        registry.makeCounter(descriptor: NodeMetrics.connectionsRefusedName, labels: [("reason", reason)]).increment()
    }

    static var internalErrorsName: MetricNameDescriptor { name("internal_errors", "total", "Store or status errors on paths that would otherwise be silent, by where") }

    /// `place` is one of a fixed set of names in the code (never peer input).
    func internalError(_ place: String) {
        registry.makeCounter(descriptor: NodeMetrics.internalErrorsName, labels: [("where", place)]).increment()
    }

    func refused(_ code: String) {
        registry.makeCounter(descriptor: NodeMetrics.refusedName, labels: [("code", code)]).increment()
    }

    /// Reads the node's gauges (on the node loop), then renders everything.
    func scrape(_ node: Node) -> [UInt8] {
        let held = node.store.vector.total
        if held > lastHeld { deltasHeld.increment(by: Int64(held - lastHeld)) }
        lastHeld = held
        let status = node.linkStatus()
        links.set(to: Double(status.filter { $0.peer != "-" }.count))
        // Series per link, labelled with configured names only (an upstream's,
        // or a [[peer]]'s), and removed when the link goes: a flood of
        // connections, or peers naming themselves, cannot grow the registry.
        var present: [String: [Gauge]] = [:]
        for l in status where l.peer != "-" {
            let gauges = linkGauges[l.name] ?? [NodeMetrics.lagName, NodeMetrics.onlineName, NodeMetrics.bytesName].map {
                registry.makeGauge(descriptor: $0, labels: [("link", l.name)])
            }
            gauges[0].set(to: Double(l.lag))
            gauges[1].set(to: l.online ? 1.0 : 0.0)
            gauges[2].set(to: Double(l.bytesSent))
            present[l.name] = gauges
        }
        for (name, gauges) in linkGauges where present[name] == nil {
            for g in gauges { registry.unregisterGauge(g) }
        }
        linkGauges = present
        let counts = node.budget.snapshot
        bufferedOut.set(to: Double(counts.outbound))
        bufferedIn.set(to: Double(counts.inbound))
        for d in node.devices?.devices ?? [] {
            registry.makeGauge(descriptor: NodeMetrics.deviceOnlineName, labels: [("device", d.spec.name)]).set(to: d.pair.state.isOnline ? 1.0 : 0.0)
            registry.makeGauge(descriptor: NodeMetrics.deviceTransactionsName, labels: [("device", d.spec.name)]).set(to: Double(d.transactionCount))
        }
        return registry.emitToBuffer()
    }

    func listen(host: String, port: Int, group: EventLoopGroup, node: Node) throws {
        server = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHTTPHandler(node: node))
                }
            }
            .bind(host: host, port: port)
            .wait()
    }
}

/// `GET /metrics` → the text exposition format; anything else → 404.
final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let node: Node
    var path = ""

    init(node: Node) { self.node = node }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.uri
        case .body:
            break
        case .end:
            let channel = context.channel
            let path = self.path
            let node = self.node
            node.loop.submit { () -> (HTTPResponseStatus, String, [UInt8]) in
                switch path {
                case "/metrics": return (.ok, "text/plain; version=0.0.4", node.metrics.scrape(node))
                case "/healthz":
                    let (healthy, body) = node.health()
                    return (healthy ? .ok : .serviceUnavailable, "application/json", body.serialized + [10])
                default: return (.notFound, "text/plain", Array("not found; try /metrics or /healthz\n".utf8))
                }
            }.whenSuccess { status, type, body in
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: type)
                headers.add(name: "Content-Length", value: "\(body.count)")
                headers.add(name: "Connection", value: "close")
                channel.write(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers)), promise: nil)
                channel.write(HTTPServerResponsePart.body(.byteBuffer(channel.allocator.buffer(bytes: body))), promise: nil)
                channel.writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
            }
        }
    }
}
