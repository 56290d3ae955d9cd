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
package final class NodeMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    let commitSeconds: DurationHistogram
    /// A received DELTAS frame: read from its socket → its group commit starts.
    let frameWaitSeconds: DurationHistogram
    /// A received DELTAS frame: read from its socket → its ACK handed to the link.
    let frameAckSeconds: DurationHistogram
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
    let peersForgotten: Counter
    let compactedDeltas: Counter
    let groupCommits: Counter
    let groupCommitFrames: Counter
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
    static var deviceTransactionsName: MetricNameDescriptor { name("device_transactions", "total", "Modbus requests and firmware bridge reports") }
    static var deviceErrorsName: MetricNameDescriptor { name("device_errors", "total", "Problems written to a device's $error (timeouts, exceptions, refused writes)") }
    static var bytesName: MetricNameDescriptor { name("link_sent_bytes", "total", "Frame bytes sent on the link, over every connection") }
    /// Per configured link: its gauges, its sent-bytes counter, and the byte count of the connection last seen.
    struct LinkSeries {
        let lag: Gauge, online: Gauge, sent: Counter
        var connectionBytes = 0
    }
    var linkSeries: [String: LinkSeries] = [:]
    /// Per device name: transactions counted so far (a device's count restarts when a reload re-creates it).
    var deviceCounted: [String: Int] = [:]
    /// The `reason` values of spook_connections_refused_total.
    static let refusalReasons = ["limit", "handshake-timeout", "slow-reader", "api-clients", "web-clients"]
    let process = ProcessMetrics()

    init() {
        commitSeconds = registry.makeDurationHistogram(
            descriptor: NodeMetrics.name("commit", "seconds", "Time to make a StateBlock durable (local writes and received DELTAS)"),
            buckets: [.microseconds(100), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(250)])
        let frameBuckets: [Duration] = [.milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(50),
                                        .milliseconds(100), .milliseconds(250), .seconds(1)]
        frameWaitSeconds = registry.makeDurationHistogram(
            descriptor: NodeMetrics.name("frame_wait", "seconds", "A received DELTAS frame: from its read off the socket to the start of the group commit that takes it"),
            buckets: frameBuckets)
        frameAckSeconds = registry.makeDurationHistogram(
            descriptor: NodeMetrics.name("frame_ack", "seconds", "A received DELTAS frame: from its read off the socket to its ACK handed to the link"),
            buckets: frameBuckets)
        reconnects = registry.makeCounter(descriptor: NodeMetrics.name("reconnects", "total", "Reconnect attempts scheduled by upstream HalfPairs"))
        deltasHeld = registry.makeCounter(descriptor: NodeMetrics.name("deltas_held", "total", "Deltas held by this node's store (rate() is deltas/s)"))
        links = registry.makeGauge(descriptor: NodeMetrics.name("links", "", "Links past the handshake"))
        peersForgotten = registry.makeCounter(descriptor: NodeMetrics.name("peers_forgotten", "total", "Peers removed by the retention or spookctl peers forget"))
        groupCommits = registry.makeCounter(descriptor: NodeMetrics.name("group_commits", "total", "Group commits: one StateBlock for the DELTAS frames and local writes of a loop turn"))
        groupCommitFrames = registry.makeCounter(descriptor: NodeMetrics.name("group_commit_frames", "total",
                                                                              "DELTAS frames committed in group commits (÷ spook_group_commits_total: frames per commit)"))
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

    static var modbusServerRefusedName: MetricNameDescriptor {
        name("modbus_server_refused", "total", "Modbus server requests answered with an exception, or clients closed, by reason")
    }

    /// `reason` is one of `ModbusServer.Refusal`'s fixed names.
    func modbusServerRefused(_ reason: String) {
        registry.makeCounter(descriptor: NodeMetrics.modbusServerRefusedName, labels: [("reason", reason)]).increment()
    }

    static var fifoRefusedName: MetricNameDescriptor { name("fifo_refused", "total", "Lines of the [api] fifo refused, by reason") }

    /// `reason` is one of `FifoReader.reasons`.
    func fifoRefused(_ reason: String) {
        registry.makeCounter(descriptor: NodeMetrics.fifoRefusedName, labels: [("reason", reason)]).increment()
    }

    static var mqttRefusedName: MetricNameDescriptor { name("mqtt_refused", "total", "Sparkplug commands (NCMD, DCMD) or their metrics refused, by reason") }
    static var mqttPublishedName: MetricNameDescriptor { name("mqtt_published", "total", "Sparkplug messages published, by type") }
    static var mqttConnectedName: MetricNameDescriptor { name("mqtt", "connected", "1 while the Sparkplug edge node is connected to its broker and born") }
    static var mqttBacklogName: MetricNameDescriptor { name("mqtt_backlog", "rows", "History rows not yet acknowledged by the MQTT broker (store-and-forward)") }

    /// `reason` is one of `MQTTSpec.refusalReasons`.
    package func mqttRefused(_ reason: String) {
        registry.makeCounter(descriptor: NodeMetrics.mqttRefusedName, labels: [("reason", reason)]).increment()
    }

    /// `type` is one of `MQTTSpec.messageTypes`.
    package func mqttPublished(_ type: String) {
        registry.makeCounter(descriptor: NodeMetrics.mqttPublishedName, labels: [("type", type)]).increment()
    }

    static var mqttTrimmedName: MetricNameDescriptor {
        name("mqtt_backlog_trimmed", "total", "History rows trimmed before the MQTT broker had them ([mqtt] backlog_rows_max reached)")
    }

    package func mqttTrimmed(_ rows: Int) {
        registry.makeCounter(descriptor: NodeMetrics.mqttTrimmedName).increment(by: Int64(rows))
    }

    static var mqttLostName: MetricNameDescriptor {
        name("mqtt_connections_lost", "total", "MQTT connections lost, or attempts that failed before the node was born (each is retried after the backoff)")
    }

    package func mqttLost() {
        registry.makeCounter(descriptor: NodeMetrics.mqttLostName).increment()
    }

    package func mqttState(connected: Bool, backlogRows: Int64) {
        registry.makeGauge(descriptor: NodeMetrics.mqttConnectedName).set(to: connected ? 1 : 0)
        registry.makeGauge(descriptor: NodeMetrics.mqttBacklogName).set(to: Double(backlogRows))
    }

    static var internalErrorsName: MetricNameDescriptor { name("internal_errors", "total", "Store or status errors on paths that would otherwise be silent, by where") }

    /// `place` is one of a fixed set of names in the code (never peer input).
    package func internalError(_ place: String) {
        registry.makeCounter(descriptor: NodeMetrics.internalErrorsName, labels: [("where", place)]).increment()
    }

    func refused(_ code: String) {
        registry.makeCounter(descriptor: NodeMetrics.refusedName, labels: [("code", code)]).increment()
    }

    /// Creates every labelled series the config names, so each exists (at 0)
    /// from start rather than from its first event: links by their configured
    /// names, devices, refusal reasons. Runs again after a reload (new names
    /// are added; series of removed names stay until the process ends).
    func prepare(_ node: Node) {
        var links: [String] = []
        switch node.role {
        case .edge(let c): links = c.upstreams.map(\.name)
        case .daemon(let c): links = c.peers.map(\.name) + c.upstreams.map(\.name)
        }
        for name in links where linkSeries[name] == nil {
            linkSeries[name] = LinkSeries(lag: registry.makeGauge(descriptor: NodeMetrics.lagName, labels: [("link", name)]),
                                          online: registry.makeGauge(descriptor: NodeMetrics.onlineName, labels: [("link", name)]),
                                          sent: registry.makeCounter(descriptor: NodeMetrics.bytesName, labels: [("link", name)]))
            _ = registry.makeCounter(descriptor: NodeMetrics.refusedWritesName, labels: [("peer", name)])
        }
        for spec in node.devices?.specs ?? [] {
            _ = registry.makeGauge(descriptor: NodeMetrics.deviceOnlineName, labels: [("device", spec.name)])
            _ = registry.makeCounter(descriptor: NodeMetrics.deviceTransactionsName, labels: [("device", spec.name)])
            _ = registry.makeCounter(descriptor: NodeMetrics.deviceErrorsName, labels: [("device", spec.name)])
        }
        for reason in NodeMetrics.refusalReasons { _ = registry.makeCounter(descriptor: NodeMetrics.connectionsRefusedName, labels: [("reason", reason)]) }
        if node.config.apiFifo != nil {
            for r in FifoReader.reasons { _ = registry.makeCounter(descriptor: NodeMetrics.fifoRefusedName, labels: [("reason", r)]) }
        }
        if !node.config.modbusServers.isEmpty {
            for r in ModbusServer.Refusal.allCases { _ = registry.makeCounter(descriptor: NodeMetrics.modbusServerRefusedName, labels: [("reason", r.rawValue)]) }
        }
        if node.config.mqtt != nil {
            for r in MQTTSpec.refusalReasons { _ = registry.makeCounter(descriptor: NodeMetrics.mqttRefusedName, labels: [("reason", r)]) }
            for t in MQTTSpec.messageTypes { _ = registry.makeCounter(descriptor: NodeMetrics.mqttPublishedName, labels: [("type", t)]) }
            _ = registry.makeGauge(descriptor: NodeMetrics.mqttConnectedName)
            _ = registry.makeCounter(descriptor: NodeMetrics.mqttLostName)
            _ = registry.makeGauge(descriptor: NodeMetrics.mqttBacklogName)
            _ = registry.makeCounter(descriptor: NodeMetrics.mqttTrimmedName)
        }
    }

    /// Reads the node's gauges (on the node loop), then renders everything.
    func scrape(_ node: Node) -> [UInt8] {
        let held = node.store.vector.total
        if held > lastHeld { deltasHeld.increment(by: Int64(held - lastHeld)) }
        lastHeld = held
        let status = node.linkStatus()
        links.set(to: Double(status.filter { $0.peer != "-" }.count))
        // Series per link, labelled with configured names only (an upstream's,
        // or a [[peer]]'s, made by `prepare`): a flood of connections, or peers
        // naming themselves, cannot grow the registry. A link that is down
        // reads online 0; its sent bytes count on across connections.
        var seen = Set<String>()
        for l in status where l.peer != "-" {
            guard var series = linkSeries[l.name] else { continue }
            seen.insert(l.name)
            series.lag.set(to: Double(l.lag))
            series.online.set(to: l.online ? 1.0 : 0.0)
            // A new connection starts its own count from 0.
            let sent = l.bytesSent >= series.connectionBytes ? l.bytesSent - series.connectionBytes : l.bytesSent
            if sent > 0 { series.sent.increment(by: Int64(sent)) }
            series.connectionBytes = l.bytesSent
            linkSeries[l.name] = series
        }
        for (name, series) in linkSeries where !seen.contains(name) {
            series.online.set(to: 0)
            linkSeries[name]?.connectionBytes = 0
        }
        let counts = node.budget.snapshot
        bufferedOut.set(to: Double(counts.outbound))
        bufferedIn.set(to: Double(counts.inbound))
        for d in node.devices?.devices ?? [] {
            registry.makeGauge(descriptor: NodeMetrics.deviceOnlineName, labels: [("device", d.spec.name)]).set(to: d.pair.state.isOnline ? 1.0 : 0.0)
            // The device object counts from its creation; the counter goes on across reloads.
            let count = d.transactionCount, counted = deviceCounted[d.spec.name] ?? 0
            let new = count >= counted ? count - counted : count
            if new > 0 { registry.makeCounter(descriptor: NodeMetrics.deviceTransactionsName, labels: [("device", d.spec.name)]).increment(by: Int64(new)) }
            deviceCounted[d.spec.name] = count
        }
        process.update()
        return registry.emitToBuffer() + process.render()
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
                channel.sendHTTP(status: status, type: type, body: body)
            }
        }
    }
}

extension Channel {
    /// Writes one whole HTTP/1 response (the metrics and the page's
    /// listeners); the connection closes after it unless `keepAlive`.
    func sendHTTP(status: HTTPResponseStatus, type: String, body: [UInt8], headers extra: [(String, String)] = [],
                  version: HTTPVersion = .http1_1, keepAlive: Bool = false, withBody: Bool = true) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(body.count)")
        for (name, value) in extra { headers.add(name: name, value: value) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        write(HTTPServerResponsePart.head(HTTPResponseHead(version: version, status: status, headers: headers)), promise: nil)
        if withBody { write(HTTPServerResponsePart.body(.byteBuffer(allocator.buffer(bytes: body))), promise: nil) }
        writeAndFlush(HTTPServerResponsePart.end(nil)).whenComplete { [self] _ in if !keepAlive { close(promise: nil) } }
    }
}

/// The process metrics Prometheus client libraries export by convention
/// (process_resident_memory_bytes, process_cpu_seconds_total, …), read from
/// /proc/self at each scrape and rendered beside the registry's.
final class ProcessMetrics: @unchecked Sendable {
    var residentBytes = 0.0, virtualBytes = 0.0, cpuSeconds = 0.0, openFDs = 0.0, startSeconds = 0.0
    let maxFDs: Double = {
        var limit = rlimit()
        return getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Double(limit.rlim_cur) : 0
    }()

    func update() {
        guard let f = fopen("/proc/self/stat", "r") else { return }
        var line = [CChar](repeating: 0, count: 1024)
        let read = fgets(&line, Int32(line.count), f) != nil
        fclose(f)
        guard read else { return }
        let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // Fields after the command name (which may hold spaces) in ")": state is field 3.
        let fields = (text.split(separator: ")").last ?? "").split(separator: " ").map(String.init)
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK))), page = Double(sysconf(Int32(_SC_PAGESIZE)))
        func field(_ n: Int) -> Double { n - 3 < fields.count ? Double(fields[n - 3]) ?? 0 : 0 }
        cpuSeconds = (field(14) + field(15)) / ticks
        virtualBytes = field(23)
        residentBytes = field(24) * page
        startSeconds = bootSeconds() + field(22) / ticks
        var count = 0
        if let dir = opendir("/proc/self/fd") {
            while readdir(dir) != nil { count += 1 }
            closedir(dir)
        }
        openFDs = Double(max(0, count - 3))  // ".", "..", and the directory's own descriptor
    }

    func bootSeconds() -> Double {
        guard let f = fopen("/proc/stat", "r") else { return 0 }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), f) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("btime ") { return Double(text.dropFirst(6).prefix { $0 != "\n" }) ?? 0 }
        }
        return 0
    }

    func render() -> [UInt8] {
        func metric(_ name: String, _ type: String, _ help: String, _ value: Double) -> String {
            "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        return Array((metric("process_cpu_seconds_total", "counter", "User and system CPU time spent in seconds.", cpuSeconds)
            + metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", residentBytes)
            + metric("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virtualBytes)
            + metric("process_open_fds", "gauge", "Number of open file descriptors.", openFDs)
            + metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", maxFDs)
            + metric("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", startSeconds)).utf8)
    }
}
