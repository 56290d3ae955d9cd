#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Prometheus
import SpookCore
import SpookDevices
import SpookLink
import SpookStore
import SpookWire

/// A part of a node built outside this module (the MQTT Sparkplug B edge
/// node in spook-edge), told of changes like the built-in façades.
public protocol NodeService: AnyObject, Sendable {
    /// Registers changed (node loop): read what is new from the store.
    func changed()
    /// Ends it for good: called once, off the node loop, before the store closes.
    func stop()
}

/// The wall clock, for HLC readings and heartbeats.
public struct SystemClock: PhysicalClock {
    public init() {}
    public func nowMs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }
}

/// One running node: `spookd` or `spook-edge`. All of its state lives on
/// one event loop (`loop`), which also does the store's blocking SQLite
/// calls; sockets live on a separate I/O group and hand frames over, so a
/// commit waiting for the disk never stalls reads and writes on the wire.
public final class Node: @unchecked Sendable {
    public enum Role: Sendable {
        case edge(EdgeConfig)
        case daemon(DaemonConfig)

        public var node: NodeConfig {
            switch self {
            case .edge(let c): c.node
            case .daemon(let c): c.node
            }
        }

        /// What a reload cannot change on a running node, as text: the node
        /// table (but its log level), a daemon's listeners.
        var fixedPart: String {
            var node = self.node
            node.logLevel = .info
            switch self {
            case .edge: return "\(node)"
            case .daemon(let c): return "\(node) \(c.listen)"
            }
        }

        var devices: [DeviceSpec] { if case .edge(let c) = self { c.devices } else { [] } }

        /// `[[upstream]]`: an agent's daemons, or a daemon's in a hierarchy.
        var upstreams: [EdgeConfig.Upstream] {
            switch self {
            case .edge(let c): c.upstreams
            case .daemon(let c): c.upstreams
            }
        }
    }

    /// Confined to the node loop.
    final class Link: @unchecked Sendable {
        let id: Int
        let channel: Channel
        var handshake: Handshake
        var session: SyncSession?
        var peer: Handshake.Peer?
        var grant: Authorisation.Grant?
        /// Index into `upstreams` for links this edge opened (nil once a reload retired it).
        var upstream: Int?
        var lastHeardMs: UInt64
        /// Frame bytes sent on this link since it opened (catch-up cost shows here).
        var bytesSent = 0
        /// Our HELLO, until the stream can carry it (after a WebSocket upgrade).
        var pendingHello: Message?
        /// Set once the handshake succeeded: the listener's deadline reads it on the I/O loop.
        let established: NIOLockedValueBox<Bool>
        /// For logs and metrics: the configured peer or upstream name (never what the peer calls itself).
        var name: String

        init(id: Int, channel: Channel, handshake: Handshake, upstream: Int?, nowMs: UInt64, established: NIOLockedValueBox<Bool> = .init(false), name: String) {
            self.id = id
            self.channel = channel
            self.handshake = handshake
            self.upstream = upstream
            self.lastHeardMs = nowMs
            self.established = established
            self.name = name
        }
    }

    struct Upstream {
        let config: EdgeConfig.Upstream
        var pair: HalfPair
        var link: Int?
        var reconnect: Scheduled<Void>?
        var heartbeat: RepeatedTask?
        let group: QGroupName
    }

    public private(set) var role: Role
    public let config: NodeConfig
    public let identity: Identity
    package let store: SQLStore
    /// The lock file beside an SQLite store (nil on PostgreSQL, which several daemons share).
    let storeLock: StoreLock?
    package let logger: Logger
    package let clock: any PhysicalClock
    let ioGroup: MultiThreadedEventLoopGroup
    let nodeGroup: MultiThreadedEventLoopGroup
    public var loop: EventLoop { nodeGroup.next() }

    var links: [Int: Link] = [:]
    var nextID = 1
    var upstreams: [Upstream] = []
    var servers: [Channel] = []
    var nonces = NonceRegistry()
    package var api: LocalAPI!
    /// The agent's device HalfPairs (edge only).
    var devices: DeviceHost?
    /// How `usb` devices are opened: libusb, unless a test (or a simulator) says otherwise. Set before `start`.
    public var openBulk: BulkOpener = { match, settings in try USBContext().open(match, settings) }
    var daemonTimer: RepeatedTask?
    var compactionTimer: RepeatedTask?
    var compactionFollowUp: Scheduled<Void>?
    /// `[api] fifo`, when configured.
    var fifo: FifoReader?
    /// `[web]`, when configured.
    var web: WebServer?
    /// `[[modbus_server]]` façades (node loop).
    var modbusServers: [ModbusServer] = []
    /// Services built outside this module: the `[mqtt]` Sparkplug edge node (node loop).
    var services: [any NodeService] = []
    /// Makes the `[mqtt]` service and starts it; spook-edge's main sets this
    /// before `start` when the build has MQTT (nil: it has none).
    nonisolated(unsafe) public static var makeMQTT: (@Sendable (MQTTSpec, Node) throws -> any NodeService)?
    /// Opens a `postgres://` store; spookd's main sets it when the build has
    /// PostgreSQL (nil: `[node] data` must be an SQLite path).
    nonisolated(unsafe) public static var openSharedStore: (@Sendable (String, StoreOptions, Logger) throws -> SQLStore)?
    /// Bumped when a reload replaces `upstreams`: timers and connections of
    /// the old ones see it and stand down (their indices mean nothing now).
    var upstreamEpoch = 0
    /// Who may link, and with what grant (node loop; a reload replaces it).
    var authorisation: Authorisation?
    /// The server TLS context of each TLS listener, swapped by a reload that re-reads the files.
    var listenerTLS: [(listener: DaemonConfig.Listener, context: NIOLockedValueBox<NIOSSLContext>)] = []
    /// Configured peer names by public key (hex), for logs and metric labels.
    var peerNames: [String: String]
    package let metrics = NodeMetrics()
    let budget: NodeBudget
    package let limitLog: RateLimitedLog

    public init(role: Role, logger: Logger, clock: any PhysicalClock = SystemClock()) throws {
        self.role = role
        switch role {
        case .edge(let c): config = c.node
        case .daemon(let c): config = c.node
        }
        self.logger = logger
        self.clock = clock
        // Before the key, the store or the API socket is touched: one process per store.
        let shared = PostgresURL.isPostgres(config.dataPath)
        storeLock = shared ? nil : try StoreLock(data: config.dataPath, name: { if case .edge = role { "spook-edge" } else { "spookd" } }())
        let (identity, created) = try Identity.loadOrCreate(path: config.keyPath)
        self.identity = identity
        if created { logger.notice("created a new key", metadata: ["path": "\(config.keyPath)", "public": "\(identity.publicKey.hex)"]) }
        var storeOptions = StoreOptions(sync: config.sync, historyLength: config.historyLength, schema: config.schema)
        storeOptions.walBytes = config.logMiB << 20
        // An ACK costs no transaction of its own: it is written with the next
        // commit or compaction step (at most [compaction] interval_ms later).
        storeOptions.lazyAcks = true
        // A compaction step runs on the node loop between frames and writes: keep it short.
        storeOptions.compactionDeltasMax = Node.compactionStepDeltas
        if shared {
            guard let open = Node.openSharedStore else {
                throw APIError("[node] data is a PostgreSQL URL, but this spookd was built without PostgreSQL (--disable-default-traits): use an SQLite path or a build with it")
            }
            store = try open(config.dataPath, storeOptions, logger)
            // Daemons on one database are one replica: one key, one origin, one vector.
            let mine = identity.publicKey.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            if let other = try store.claimReplica(fingerprint: Int64(bitPattern: mine)) {
                let hex = { (v: UInt64) in (0..<8).map { i in UInt8(truncatingIfNeeded: v >> (56 - 8 * i)) }.hex }
                throw APIError("\(PostgresURL.redacted(config.dataPath)) belongs to the replica whose key begins with \(hex(UInt64(bitPattern: other))); "
                               + "this daemon's key (\(config.keyPath)) begins with \(hex(mine)): daemons sharing a database share its key file")
            }
        } else {
            store = try SQLStore(path: config.dataPath, options: storeOptions, logger: logger)
        }
        if store.openedEmptyFile && !created {
            // The key wrote before and its store is gone: never reuse its seqs.
            var g = SystemRandomNumberGenerator()
            try store.startIncarnation(epoch: UInt32.random(in: 1...UInt32.max, using: &g))
            let metadata: Logger.Metadata = [
                "path": "\(PostgresURL.redacted(config.dataPath))", "epoch": "\(store.epoch)", "origin": "\(identity.origin(epoch: store.epoch))",
            ]
            if store.shared {
                // A new database: this key may have written elsewhere (an SQLite store before), so it writes under an origin of its own.
                logger.notice("a new database for an existing key: writing as a new incarnation", metadata: metadata)
            } else {
                logger.critical("the store was emptied under a key that wrote before: writing as a new incarnation", metadata: metadata)
            }
        }
        ioGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        nodeGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        if case .daemon(let c) = role {
            authorisation = c.authorisation
            peerNames = Dictionary(c.peers.map { ($0.key.hex, $0.name) }, uniquingKeysWith: { a, _ in a })
        } else {
            authorisation = nil
            peerNames = [:]
        }
        budget = NodeBudget(limits: config.limits)
        limitLog = RateLimitedLog(logger: logger)
    }

    /// Nothing heard for this long ends a link, in every state, the handshake included.
    var silenceMs: UInt64 { config.heartbeatIntervalMs * UInt64(config.heartbeatsMissedMax) }

    /// Our origin: the key's, in the store's incarnation (SUBSTRATE.md §6).
    public var origin: Origin { identity.origin(epoch: store.epoch) }

    // MARK: start and stop

    /// Binds the API socket and listeners, starts the upstream HalfPairs.
    public func start() throws {
        api = LocalAPI(node: self)
        if case .edge(let c) = role, !c.devices.isEmpty { devices = DeviceHost(node: self, specs: c.devices) }
        try loop.submit {
            self.store.onChange = { [unowned self] changed, changes in
                self.api.changed(changed, changes)
                self.devices?.changed(changed)
                if !self.modbusServers.isEmpty {
                    let names = Set(changed)
                    for server in self.modbusServers { server.changed(names) }
                }
                for service in self.services { service.changed() }
            }
            self.metrics.prepare(self)
        }.wait()
        // Several daemons on one database: another's commit reaches this one's links and watchers.
        store.onOthersCommit { [weak self] in self?.othersCommitted() }
        try api.listen(path: config.apiSocket, group: ioGroup)
        if let path = config.apiFifo {
            let reader = FifoReader(path: path, node: self)
            try reader.start(group: ioGroup)
            fifo = reader
        }
        for spec in config.modbusServers {
            let server = try ModbusServer(spec, node: self)
            try loop.submit {
                try server.start()
                self.modbusServers.append(server)
            }.wait()
        }
        if let spec = config.mqtt {
            guard let make = Node.makeMQTT else {
                throw APIError("[mqtt]: this build has no MQTT (it was built with --disable-default-traits); remove [mqtt] or use a build with it")
            }
            let service = try loop.submit { try make(spec, self) }.wait()
            try loop.submit { self.services.append(service) }.wait()
        }
        try loop.submit {
            // Retention counts from the last link, or from now for a peer never seen linked.
            let now = self.clock.nowMs()
            for peer in self.store.peers where (try self.store.peerSeen(peer)) == nil { try self.store.recordPeerSeen(peer, ms: now) }
            let every = TimeAmount.milliseconds(Int64(self.config.compactionIntervalMs))
            self.compactionTimer = self.loop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in self.compactionStep() }
        }.wait()
        if let w = config.web {
            let server = WebServer(w, node: self)
            try server.start(group: ioGroup)
            web = server
            logger.info("web page", metadata: ["listen": "\(w.cert == nil ? "http" : "https")://\(w.host):\(w.port)/", "link": "\(w.link)"])
        }
        if let m = config.metricsListen {
            try metrics.listen(host: m.host, port: m.port, group: ioGroup, node: self)
            logger.info("metrics", metadata: ["listen": "http://\(m.host):\(m.port)/metrics"])
        }
        switch role {
        case .daemon(let c):
            for listener in c.listen {
                let endpoint = listener.endpoint
                let tls = try listener.certPath.map { certPath in NIOLockedValueBox(try Node.serverTLS(cert: certPath, key: listener.keyPath ?? "")) }
                if let tls { listenerTLS.append((listener, tls)) }
                let name = "\(endpoint)"
                let deadline = TimeAmount.milliseconds(Int64(silenceMs))
                let channel = try ServerBootstrap(group: ioGroup)
                    .serverChannelOption(.backlog, value: NodeLimits.backlog)
                    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelInitializer { channel in
                        // Caps first: a connection over them is closed before it costs anything.
                        let source = channel.remoteAddress?.ipAddress ?? "unix"
                        if let refusal = self.budget.admit(listener: name, source: source) {
                            self.metrics.connectionRefused("limit")
                            self.limitLog.warning("limit \(name)", "connection refused: \(refusal)", nowMs: self.clock.nowMs())
                            return channel.close()
                        }
                        channel.closeFuture.whenComplete { _ in self.budget.release(listener: name, source: source) }
                        // A connection that has not authenticated within the deadline (an
                        // unfinished WebSocket upgrade, a slowloris, a silent socket) is closed.
                        let established = NIOLockedValueBox(false)
                        channel.eventLoop.scheduleTask(in: deadline) {
                            guard !established.withLockedValue({ $0 }) else { return }
                            self.metrics.connectionRefused("handshake-timeout")
                            self.limitLog.warning("deadline \(name)", "connection closed: no handshake within \(deadline.nanoseconds / 1_000_000) ms on \(name) "
                                                  + "(from \(channel.remoteAddress.map { "\($0)" } ?? "a local socket"))", nowMs: self.clock.nowMs())
                            channel.close(promise: nil)
                        }
                        // TLS first, so the HELLO `accepted` writes goes out encrypted.
                        let secured: EventLoopFuture<Void>
                        if let tls {
                            // The context of now: a reload may have re-read the certificate.
                            let context = tls.withLockedValue { $0 }
                            secured = channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context)) }
                        } else {
                            secured = channel.eventLoop.makeSucceededVoidFuture()
                        }
                        // The link starts (HELLO goes out) once the stream can carry frames.
                        let start: @Sendable (Channel) -> EventLoopFuture<Void> = { channel in
                            self.loop.submit { self.accepted(channel, established: established) }.flatMap { id in
                                channel.pipeline.addHandlers([self.outboundBudget(link: id), FrameHandler(node: self, link: id)])
                            }
                        }
                        if case .websocket(_, _, let path, _) = endpoint {
                            return secured.flatMap { WebSocketLink.configureServer(channel, path: path, ready: start) }
                        }
                        return secured.flatMap { start(channel) }
                    }
                    .bind(to: endpoint)
                    .wait()
                servers.append(channel)
                logger.info("listening", metadata: ["endpoint": "\(endpoint)"])
            }
            let interval = TimeAmount.milliseconds(Int64(config.heartbeatIntervalMs))
            daemonTimer = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in self.daemonHeartbeat() }
            // A daemon in a hierarchy links up like an agent.
            try loop.submit { try self.startUpstreams(c.upstreams) }.wait()
        case .edge(let c):
            try loop.submit {
                try self.startUpstreams(c.upstreams)
                self.devices?.start()
            }.wait()
        }
    }

    static func serverTLS(cert: String, key: String) throws -> NIOSSLContext {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(cert).map { NIOSSLCertificateSource.certificate($0) }
            let privateKey = try NIOSSLPrivateKey(file: key, format: .pem)
            return try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(privateKey)))
        } catch {
            throw APIError("TLS listener: cannot use certificate \(cert) with key \(key): \(error)")
        }
    }

    static func clientTLS(ca: String) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .file(ca)
        configuration.certificateVerification = .fullVerification
        return try NIOSSLContext(configuration: configuration)
    }

    /// Sends CLOSE on every link, closes sockets and the store.
    public func shutdown() {
        try? loop.submit {
            self.shuttingDown = true
            self.daemonTimer?.cancel()
            self.compactionTimer?.cancel()
            self.compactionFollowUp?.cancel()
            for i in self.upstreams.indices {
                self.upstreams[i].reconnect?.cancel()
                self.upstreams[i].heartbeat?.cancel()
            }
            for link in self.links.values { self.send(.close(message: "shutting down"), on: link) }
            self.devices?.shutdown()
        }.wait()
        for s in servers { try? s.close().wait() }
        try? metrics.server?.close().wait()
        web?.stop()
        for server in (try? loop.submit { self.modbusServers }.wait()) ?? [] { server.stop() }
        for service in (try? loop.submit { self.services }.wait()) ?? [] { service.stop() }
        fifo?.stop()
        api?.close()
        for link in (try? loop.submit { Array(self.links.values) }.wait()) ?? [] { try? link.channel.close().wait() }
        try? loop.submit { self.store.close() }.wait()
        try? ioGroup.syncShutdownGracefully()
        try? nodeGroup.syncShutdownGracefully()
    }

    // MARK: health (GET /healthz)

    /// Healthy when the store answers (its log verifies as readable: a cheap
    /// query) and, on an agent, at least one upstream is coherent; the body
    /// says which links are in which state. On the node loop.
    func health() -> (Bool, JSONValue) {
        var storeOK = true
        var storeError = ""
        do { _ = try store.heldHLC(origin: origin, seq: store.vector[origin]) } catch {
            storeOK = false
            storeError = "\(error)"
        }
        let links = linkStatus()
        let linksOK: Bool
        switch role {
        case .edge: linksOK = links.contains { $0.online }
        case .daemon: linksOK = true
        }
        let body = JSONValue.object([
            "healthy": .bool(storeOK && linksOK), "version": .string(SpookVersion.string),
            "store": .string(storeOK ? "ok" : storeError),
            "links": .array(links.map { .object(["name": .string($0.name), "state": .string($0.state)]) }),
        ])
        return (storeOK && linksOK, body)
    }

    // MARK: reload (SIGHUP)

    /// Applies what can change on a running node: the log level; an agent's
    /// devices (removed ones dissolved, new ones started, changed ones
    /// restarted) and upstreams (all restarted when any changed); a daemon's
    /// peers and its TLS listeners' certificate files. A config that changes
    /// anything else is refused whole, with a log line, and the running one stays.
    public func reload(_ next: Role) {
        try? loop.submit {
            guard next.fixedPart == self.role.fixedPart else {
                self.logger.error("reload refused: only [log] level, [[device]], [[upstream]] and [[peer]] tables and TLS certificate files can change while running; restart for the rest. The running config stays")
                return
            }
            // Certificates first: a file that no longer loads refuses the whole reload.
            var contexts: [NIOSSLContext] = []
            for (listener, _) in self.listenerTLS {
                do { contexts.append(try Node.serverTLS(cert: listener.certPath ?? "", key: listener.keyPath ?? "")) } catch {
                    self.logger.error("reload refused: \(error). The running config stays")
                    return
                }
            }
            for (i, context) in contexts.enumerated() { self.listenerTLS[i].context.withLockedValue { $0 = context } }
            let level = next.node.logLevel
            SpookLogHandler.level.withLockedValue { $0 = level }
            var changes = ["log level \(level)"]
            if !contexts.isEmpty { changes.append("TLS certificates re-read for \(contexts.count) listener\(contexts.count == 1 ? "" : "s")") }
            if case .daemon(let c) = next { changes += self.reloadPeers(c) }
            if "\(next.upstreams)" != "\(self.role.upstreams)" {
                changes += self.reloadUpstreams(next.upstreams)
            }
            if case .edge = next {
                if self.devices == nil, !next.devices.isEmpty {
                    self.devices = DeviceHost(node: self, specs: [])
                }
                changes += self.devices?.reload(next.devices) ?? []
            }
            self.role = next
            self.metrics.prepare(self)
            self.logger.notice("reloaded", metadata: ["changes": "\(changes.joined(separator: "; "))"])
        }.wait()
    }

    // MARK: compaction

    /// The background compaction (on the node loop, bounded per step by
    /// `compactionBlocksMax`): peers silent past the retention stop holding
    /// the horizon back, then what every remaining peer acknowledged leaves
    /// the log.
    /// Deltas one compaction step removes at most (whole StateBlocks): a step
    /// costs the node loop a few milliseconds, and a log that is far behind
    /// is worked off in steps 50 ms apart rather than in one long stall.
    static let compactionStepDeltas = 2_000

    func compactionStep() {
        let now = clock.nowMs()
        let linked = Set(links.values.compactMap { $0.session?.peer })
        do {
            try store.flushAcks()
            for peer in store.peers {
                if linked.contains(peer) {
                    try store.recordPeerSeen(peer, ms: now)
                    continue
                }
                let seen = try store.peerSeen(peer) ?? now
                if now > seen, (now - seen) / 1000 >= config.peerRetentionS {
                    try store.removePeer(peer)
                    metrics.peersForgotten.increment()
                    logger.notice("forgetting a peer silent past the retention: it no longer holds back compaction, and gets a snapshot if it returns",
                                  metadata: ["peer": "\(peer)", "silent_s": "\((now - seen) / 1000)", "retention_s": "\(config.peerRetentionS)"])
                }
            }
            let report = try store.compact()
            if report.deltasRemoved > 0 {
                metrics.compactedDeltas.increment(by: Int64(report.deltasRemoved))
                logger.debug("compacted", metadata: ["deltas": "\(report.deltasRemoved)", "log": "\(store.logDeltas)"])
            }
            if report.more && report.deltasRemoved > 0 {
                // More is due: the next step soon, after whatever else waits on the loop.
                compactionFollowUp = loop.scheduleTask(in: .milliseconds(50)) { self.compactionStep() }
            }
        } catch {
            metrics.internalError("compaction")
            logger.error("compaction failed; the log keeps its deltas and the next step tries again", metadata: ["error": "\(error)"])
        }
    }

    /// `spookctl peers forget`: the peer no longer holds back compaction.
    func forgetPeer(_ peer: String) throws -> Bool {
        guard store.peers.contains(peer) else { return false }
        if let link = links.values.first(where: { $0.session?.peer == peer }) {
            throw APIError("\(peer) is linked now (\(link.name)): stop it first, or let the retention forget it once it is silent")
        }
        try store.removePeer(peer)
        metrics.peersForgotten.increment()
        logger.notice("peer forgotten by request: it gets a snapshot if it returns", metadata: ["peer": "\(peer)"])
        return true
    }

    func peerList() throws -> [JSONValue] {
        let linked = Dictionary(links.values.compactMap { l in l.session.map { ($0.peer, l.name) } }, uniquingKeysWith: { a, _ in a })
        return try store.peers.map { peer in
            var acked: [String: JSONValue] = [:]
            let v = store.peerVector(peer)
            for o in v.origins { acked[o.description] = .int(Int64(clamping: v[o])) }
            return .object([
                "peer": .string(peer), "link": .string(linked[peer] ?? "-"), "linked": .bool(linked[peer] != nil),
                "last_seen_ms": .int(Int64(clamping: try store.peerSeen(peer) ?? 0)), "acknowledged": .object(acked),
            ])
        }
    }

    // MARK: links

    /// The first outbound handler of every link: a peer that stops reading is closed past `link_buffer_bytes`.
    func outboundBudget(link id: Int) -> OutboundBudget {
        OutboundBudget(max: config.limits.linkBufferBytesMax, budget: budget, what: "link \(id)", api: false) { reason in
            self.metrics.connectionRefused("slow-reader")
            self.limitLog.warning("slow link", "closing a link: \(reason) ([limits] link_buffer_bytes)", nowMs: self.clock.nowMs())
        }
    }

    func accepted(_ channel: Channel, established: NIOLockedValueBox<Bool>) -> Int {
        let id = nextID
        nextID += 1
        let auth = authorisation
        let handshake = Handshake(side: .responder, identity: identity, role: .daemon, nonce: Node.nonce(), subscriptions: [try! QDomainPattern("*")],
                                  node: config.name, epoch: store.epoch, isAuthorised: { auth?.grant(for: $0) != nil })
        let link = Link(id: id, channel: channel, handshake: handshake, upstream: nil, nowMs: clock.nowMs(), established: established, name: "link \(id)")
        links[id] = link
        send(link.handshake.start(), on: link)
        logger.debug("link accepted", metadata: ["link": "\(id)", "remote": "\(channel.remoteAddress.map { "\($0)" } ?? "?")"])
        return id
    }

    static func nonce() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<Hello.nonceLength).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    /// The last whole ACK frame sent, encoded: a group commit may answer
    /// many links with the same vector (16 KB with 1,000 origins), so it
    /// is encoded once, not once per link. `==` on a copy of the same
    /// vector is one pointer comparison.
    var lastAck: (vector: QStateVector, bytes: [UInt8])?

    func send(_ message: Message, on link: Link) {
        let bytes: [UInt8]
        if case .ack(let v, partial: false) = message {
            if let last = lastAck, last.vector == v {
                bytes = last.bytes
            } else {
                bytes = message.frame.encoded
                lastAck = (v, bytes)
            }
        } else {
            bytes = message.frame.encoded
        }
        // Encoders bound every frame by bytes; one that slipped through would be
        // refused by the peer on every reconnect: a bug, said once, not a livelock.
        guard bytes.count <= Frame.payloadMaxDefault else {
            logger.error("a frame exceeds the frame limit: not sent", metadata: ["link": "\(link.id)", "type": "\(message.type)", "bytes": "\(bytes.count)"])
            link.channel.close(promise: nil)
            return
        }
        link.bytesSent += bytes.count
        link.channel.writeAndFlush(link.channel.allocator.buffer(bytes: bytes), promise: nil)
    }

    /// A frame arrived on `id` (on the node loop).
    /// `arrived`: when the I/O loop read it (a DELTAS frame's wait for its ACK is measured from there).
    func received(_ message: Message, on id: Int, arrived: ContinuousClock.Instant = .now) {
        guard let link = links[id] else { return }
        link.lastHeardMs = clock.nowMs()
        do {
            if link.peer == nil {
                if case .hello(let h) = message, link.upstream == nil, !nonces.admit(h.nonce) {
                    throw WireError(.replay, "HELLO nonce seen before")
                }
                for reply in try link.handshake.receive(message) { send(reply, on: link) }
                if let peer = link.handshake.peer { try established(link, peer) }
                return
            }
            switch message {
            case .error(let code, let text):
                logger.warning("peer refused the link", metadata: ["link": "\(id)", "code": "\(code)", "reason": "\(text)"])
                link.channel.close(promise: nil)
                return
            case .close(let text):
                logger.info("peer closed the link", metadata: ["link": "\(id)", "reason": "\(text)"])
                link.channel.close(promise: nil)
                return
            default:
                break
            }
            if let u = link.upstream { drive(u, .peerHeard) }
            // A daemon checks what a peer writes against its grant. A forbidden
            // delta is held withheld (its place in the origin's sequence, not its
            // content), so the writer's later deltas are not blocked behind it;
            // the peer still gets ERROR `forbidden` once the batch is durable.
            var message = message
            var forbidden: WireError?
            if case .deltas(let deltas) = message, let grant = link.grant, let peer = link.peer {
                let store = self.store
                let (checked, refusals) = try grant.check(deltas, from: peer.origin, holds: { store.vector.contains($0) })
                for (delta, refusal) in refusals {
                    // A relay's link stays up for its agents' refused deltas: the writer is below it, not the relay.
                    if delta.origin == peer.origin { forbidden = forbidden ?? WireError(.forbidden, refusal) }
                    metrics.refusedWrite(link.name)
                    limitLog.warning("write-refused:\(link.name)", "write from \(link.name) refused and held withheld (delta \(delta)): \(refusal)", nowMs: clock.nowMs())
                }
                if !refusals.isEmpty { message = .deltas(checked) }
            }
            if case .snapshot(let chunk) = message, let grant = link.grant, let peer = link.peer {
                let (admitted, refused) = grant.admit(chunk, from: peer.origin)
                if !refused.isEmpty {
                    let refusal = "\(peer.origin) may not write \(refused[0]) (and \(refused.count - 1) more) sent in a snapshot: outside its write grant or \"owns\""
                    forbidden = WireError(.forbidden, refusal)
                    metrics.refusedWrite(link.name)
                    limitLog.warning("write-refused:\(link.name)", "snapshot from \(link.name) refused in part: \(refusal)", nowMs: clock.nowMs())
                }
                message = .snapshot(admitted)
            }
            guard var session = link.session else { return }
            let actions = try session.receive(message, store, nowMs: clock.nowMs())
            let replies = try perform(actions, for: link, &session, forbidden: forbidden, arrived: arrived)
            link.session = session
            // DELTAS wait for the group commit of this loop turn; it answers them.
            if case .deltas = message { return }
            let applied = actions.contains { if case .apply = $0 { true } else { false } }
            // After a snapshot with forbidden values the peer gets ERROR, not
            // the ACK: it reconnects and learns from our VECTOR what we hold.
            if let forbidden {
                afterStoreChange(except: link.id)
                throw forbidden
            }
            for reply in replies { send(reply, on: link) }
            // Only a snapshot changes what the other links may send; an ACK
            // may let orphans settle.
            if applied || store.orphanCount > 0 { afterStoreChange(except: link.id) }
            checkCaughtUp(link)
        } catch let e as WireError {
            if e.code == .clockDrift { metrics.clockDriftRefused.increment() }
            refuse(link, e)
        } catch let conflict as OriginConflict {
            reincarnate(conflict, found: link)
        } catch {
            logger.error("link failed", metadata: ["link": "\(id)", "error": "\(error)"])
            refuse(link, WireError(.internal, "\(error)"))
        }
    }

    /// Performs a session's actions for `link`, in order: acknowledgements
    /// and snapshots written to the store at once, received deltas queued
    /// for the next group commit (`forbidden`: the frame held refused
    /// writes, so it earns ERROR instead of its ACK). Returns the messages
    /// to send; the caller sends them.
    func perform(_ actions: [SyncAction], for link: Link, _ session: inout SyncSession, forbidden: WireError? = nil,
                 arrived: ContinuousClock.Instant? = nil) throws -> [Message] {
        var out: [Message] = []
        for action in actions {
            switch action {
            case .send(let m): out.append(m)
            case .recordAck(let v): try store.recordAck(peer: session.peer, vector: v)
            case .replaceAck(let v): try store.replaceAck(peer: session.peer, vector: v)
            case .commit(let deltas): queueForCommit(link: link.id, deltas, forbidden: forbidden, arrived: arrived ?? .now)
            case .apply(let snapshot):
                _ = try store.apply(snapshot)
                out += try perform(session.applied(store, nowMs: clock.nowMs()), for: link, &session)
            }
        }
        return out
    }

    // MARK: group commit

    /// DELTAS frames taken from links, waiting for the next group commit.
    struct ReceivedFrame {
        let link: Int
        let deltas: [Delta]
        /// The frame held deltas outside the grant (kept withheld): ERROR instead of ACK once durable.
        let forbidden: WireError?
        /// When the I/O loop read it.
        let arrived: ContinuousClock.Instant
    }

    var receivedFrames: [ReceivedFrame] = []
    var receivedDeltas = 0
    var groupCommitScheduled = false

    /// Deltas waiting for a group commit past which it runs at once, inside
    /// the loop turn (each link's reader also stops at its own queue bound).
    static let groupCommitDeltasMax = 50_000

    func queueForCommit(link: Int, _ deltas: [Delta], forbidden: WireError?, arrived: ContinuousClock.Instant) {
        receivedFrames.append(ReceivedFrame(link: link, deltas: deltas, forbidden: forbidden, arrived: arrived))
        receivedDeltas += deltas.count
        if receivedDeltas >= Node.groupCommitDeltasMax {
            groupCommit()
        } else {
            scheduleGroupCommit()
        }
    }

    /// The next group commit runs after what the loop holds now: every frame
    /// and local write queued meanwhile goes into it.
    func scheduleGroupCommit() {
        guard !groupCommitScheduled else { return }
        groupCommitScheduled = true
        loop.execute { self.groupCommit() }
    }

    /// Commits every received frame and local write queued since the last
    /// one in one StateBlock (one transaction, one fsync), then answers each:
    /// an ACK to each link (or its ERROR), the local writers' replies. If the
    /// store refuses the group, each part is committed on its own, so a
    /// failure stays with what caused it.
    func groupCommit() {
        groupCommitScheduled = false
        let frames = receivedFrames, local = api?.takePending() ?? []
        receivedFrames = []
        receivedDeltas = 0
        guard !frames.isEmpty || !local.isEmpty else { return }
        let started = ContinuousClock.now
        for frame in frames { metrics.frameWaitSeconds.record(started - frame.arrived) }
        do {
            // Frames in order of their first delta: a fleet's frames (each one
            // origin's run) then arrive at the store in order, with no sort of their deltas.
            let inOrder = frames.filter { !$0.deltas.isEmpty }.sorted { $0.deltas[0].id < $1.deltas[0].id }
            let (result, results) = try store.commitGroup(inOrder.flatMap(\.deltas), local: local.map(\.write), origin: origin, physicalMs: clock.nowMs())
            metrics.commitSeconds.record(ContinuousClock.now - started)
            metrics.groupCommits.increment()
            metrics.groupCommitFrames.increment(by: Int64(frames.count))
            for (entry, r) in zip(local, results) { entry.reply(r) }
            api?.flushAll()
            for (frame, mine) in zip(frames, result.shares(of: frames.map(\.deltas))) { acknowledge(frame, mine) }
        } catch let e as StoreError where e.code == .unavailable {
            // Every part would fail alike, each after its own wait for the server: refuse them all now.
            logger.warning("a group commit failed: the database is unavailable; nothing of it is acknowledged", metadata: [
                "frames": "\(frames.count)", "local": "\(local.count)", "error": "\(e)",
            ])
            if !local.isEmpty {
                api?.refuse(local, e)
                api?.flushAll()
            }
            for link in Set(frames.map(\.link)).sorted().compactMap({ links[$0] }) { refuse(link, WireError(.internal, "\(e)")) }
        } catch {
            logger.warning("a group commit failed: committing its parts one by one", metadata: ["frames": "\(frames.count)", "local": "\(local.count)", "error": "\(error)"])
            if !local.isEmpty { api?.commitApart(local) }
            for frame in frames {
                do {
                    acknowledge(frame, try store.commit(frame.deltas))
                } catch {
                    guard let link = links[frame.link] else { continue }
                    logger.error("link failed", metadata: ["link": "\(frame.link)", "error": "\(error)"])
                    refuse(link, WireError(.internal, "\(error)"))
                }
            }
        }
        afterStoreChange(except: nil)
    }

    /// A frame's deltas are durable (`mine`: its share of the commit): the
    /// link's ACK, or the ERROR its conflicts or forbidden writes earned.
    func acknowledge(_ frame: ReceivedFrame, _ mine: CommitResult) {
        guard let link = links[frame.link], var session = link.session else { return }
        do {
            let replies = try perform(session.committed(mine, store, nowMs: clock.nowMs()), for: link, &session)
            link.session = session
            if !mine.conflicts.isEmpty {
                metrics.seqConflicts.increment(by: Int64(mine.conflicts.count))
                throw WireError(.conflict, "you sent \(mine.conflicts.count) delta(s) under (origin, seq) that this node holds with other content, first \(mine.conflicts[0]): "
                                + "that origin reused seqs; its store went back in time")
            }
            // After a forbidden write the peer gets ERROR, not the batch's ACK:
            // it reconnects and learns from our VECTOR what we hold.
            if let forbidden = frame.forbidden { throw forbidden }
            for reply in replies { send(reply, on: link) }
            metrics.frameAckSeconds.record(ContinuousClock.now - frame.arrived)
            checkCaughtUp(link)
        } catch let e as WireError {
            refuse(link, e)
        } catch {
            logger.error("link failed", metadata: ["link": "\(link.id)", "error": "\(error)"])
            refuse(link, WireError(.internal, "\(error)"))
        }
    }

    /// Our store went back in time (a restored backup, a lost file): the peer
    /// holds more of our origin than we do, or other deltas under its seqs.
    /// Writing on would reuse seqs, so before anything else: a new
    /// incarnation (a new origin), our own deltas the peer may not hold set
    /// aside, every link restarted under the new origin. Orphans are written
    /// again under it unless the peer sends back the same delta.
    func reincarnate(_ conflict: OriginConflict, found link: Link) {
        // Daemons on one database write under one origin: what looked like
        // more of it than we hold may be another daemon's commit we have not
        // read yet. Read it; if that explains it, the link only starts over.
        if store.shared, case .behind = conflict.verdict {
            refreshFromOthers()
            if conflict.peerHolds <= store.vector[conflict.origin] {
                logger.info("a peer held more of our origin than this daemon had read from the shared database: restarting the link", metadata: ["link": "\(link.id)"])
                link.channel.close(promise: nil)
                return
            }
        }
        metrics.reincarnations.increment()
        logger.critical("this store is behind what a peer holds of our own origin: starting a new incarnation", metadata: [
            "peer": "\(link.peer.map { "\($0.node) \($0.origin)" } ?? "-")", "origin": "\(conflict.origin)", "finding": "\(conflict.verdict)",
        ])
        do {
            _ = try store.reincarnate(origin: conflict.origin, keepThrough: conflict.acknowledged, waitThrough: conflict.peerHolds)
        } catch {
            // Nothing was changed: refuse the link and try again when it returns.
            logger.error("could not start a new incarnation", metadata: ["error": "\(error)"])
            refuse(link, WireError(.internal, "this node cannot start a new incarnation: \(error)"))
            return
        }
        orphanSource = link.peer?.origin.description
        settleOrphans(force: false)
        // Every link speaks for the old origin: close them all; agents and HalfPairs reconnect.
        for l in links.values.sorted(by: { $0.id < $1.id }) {
            send(.close(message: "restarting under a new incarnation (epoch \(store.epoch))"), on: l)
            l.channel.close(promise: nil)
            // Frames of these links already queued on the node loop are not
            // answered: their sessions spoke for the old origin.
            l.session = nil
        }
    }

    /// Where orphans wait for their peer's copy: settled when that peer has caught us up.
    var orphanSource: String?

    func settleOrphans(force: Bool) {
        guard store.orphanCount > 0 else { return }
        do {
            let settled = try store.settleOrphans(newOrigin: origin, physicalMs: clock.nowMs(), force: force)
            for (id, error) in settled.refused {
                logger.error("a write set aside by the new incarnation is refused by the schema now", metadata: ["delta": "\(id)", "error": "\(error)"])
            }
            if settled.dropped + settled.rewritten.count + settled.refused.count > 0 {
                logger.notice("settled writes set aside by the new incarnation", metadata: [
                    "held_by_peer": "\(settled.dropped)", "written_again": "\(settled.rewritten.count)", "left": "\(store.orphanCount)",
                ])
            }
        } catch {
            logger.error("could not settle writes set aside by the new incarnation", metadata: ["error": "\(error)"])
        }
    }


    func established(_ link: Link, _ peer: Handshake.Peer) throws {
        link.peer = peer
        link.established.withLockedValue { $0 = true }
        link.channel.pipeline.handler(type: FrameHandler.self).whenSuccess { $0.authenticated() }
        if let u = link.upstream {
            link.name = upstreams[u].config.name
        } else {
            link.name = peerNames[peer.publicKey.hex] ?? "link \(link.id)"
        }
        // Grants are for the peers that link to us; an upstream daemon is pinned by key.
        if let auth = authorisation, link.upstream == nil { link.grant = auth.grant(for: peer.publicKey) }
        logger.info("link entangling", metadata: ["link": "\(link.id)", "peer": "\(peer.origin)", "node": "\(peer.node)"])
        var options = SyncSession.Options()
        options.remoteDriftMsMax = config.clockDriftMsMax
        options.snapshotBytesMax = config.limits.snapshotBytesMax
        var session = SyncSession(peer: peer.origin.description, options: options)
        session.ownOrigin = origin
        session.peerOrigin = peer.origin
        if let u = link.upstream {
            // An agent sends upstream only what it wrote; a daemon relays every
            // origin it holds (its agents' writes). Either sends only the
            // route's domains (plus its own `spook.<name>` registers).
            if case .edge = role { session.onlyOrigin = origin }
            let domains = upstreams[u].config.domains
            if !domains.contains(where: { $0.description == "*" }) {
                let own = upstreams[u].group.domain
                session.visible = { group in group.domain == own || domains.contains { $0.matches(group.domain) } }
            }
        } else if peer.subscriptions.isEmpty {
            // A publisher (its HELLO subscribed to nothing): sent nothing, holds back no compaction.
            session.publishOnly = true
        } else if let grant = link.grant {
            // A daemon sends a peer what its read grant allows and its HELLO subscribed to.
            let read = grant.read, subscribed = peer.subscriptions
            let all = { (patterns: [QDomainPattern]) in patterns.contains { $0.description == "*" } }
            if !(all(read) && all(subscribed)) {
                session.visible = { group in
                    read.contains { $0.matches(group.domain) } && subscribed.contains { $0.matches(group.domain) }
                }
            }
        }
        link.session = session
        if let u = link.upstream {
            upstreams[u].link = link.id
            route()
            drive(u, .linkUp)
        } else {
            startSession(link)
        }
    }

    func startSession(_ link: Link) {
        guard var session = link.session else { return }
        do {
            for m in try perform(session.start(store, nowMs: clock.nowMs()), for: link, &session) { send(m, on: link) }
            link.session = session
        } catch {
            // No session: frames still queued from this link (it closes now) find none and are dropped.
            link.session = nil
            refuse(link, WireError(.internal, "\(error)"))
        }
    }

    /// QRoute: an agent's deltas of a domain go to the linked upstream (its
    /// handshake done) of highest priority that carries the domain, ties by
    /// name: `upstreams` is kept in that order. An upstream whose every domain
    /// pattern a higher linked one already carries is standby: it receives,
    /// answers and stays ready, but is sent nothing until it is needed.
    /// Upstreams whose domains only overlap both carry the overlap.
    func standby(_ u: Int) -> Bool {
        let higher = upstreams[..<u].filter { $0.link.flatMap { links[$0]?.peer } != nil }.flatMap(\.config.domains)
        return upstreams[u].config.domains.allSatisfy { p in higher.contains { Node.covers($0, p) } }
    }

    /// Every domain `inner` matches, `outer` matches too.
    static func covers(_ outer: QDomainPattern, _ inner: QDomainPattern) -> Bool {
        if outer.description == "*" || outer == inner { return true }
        // "site1.*" covers "site1.l3" and "site1.l3.*", not "site1" itself.
        return outer.wildcard && inner.prefix.count > outer.prefix.count && inner.prefix.starts(with: outer.prefix)
    }

    /// Pauses every standby session and resumes the others, which then send
    /// what their daemon lacks: failover and failback are a catch-up.
    func route() {
        for u in upstreams.indices {
            guard let id = upstreams[u].link, let link = links[id], var session = link.session else { continue }
            let pause = standby(u)
            if session.paused != pause {
                session.paused = pause
                // Taking over: start from what the other links to this daemon got acknowledged.
                if !pause { session.mergeAcknowledged(store) }
                logger.info(pause ? "standby" : "carrying this agent's deltas", metadata: ["upstream": "\(upstreams[u].config.name)"])
            }
            link.session = session
        }
    }

    func checkCaughtUp(_ link: Link) {
        guard let u = link.upstream, let session = link.session else { return }
        // A standby link is caught up once it holds what its daemon held: we send it nothing yet.
        let caughtUp = session.paused
            ? store.vector.covers(store.peerVector(session.peer))
            : session.isCaughtUp(store)
        guard caughtUp else { return }
        switch upstreams[u].pair.state {
        case .entangling(linkUp: true), .reentangling(_, linkUp: true): drive(u, .caughtUp)
        default: break
        }
    }

    /// After any commit: let every session send what its peer now lacks.
    func afterStoreChange(except: Int?) {
        if store.orphanCount > 0 {
            let caughtUp = links.values.contains { $0.session?.peer == orphanSource && $0.session?.isCaughtUp(store) == true }
            settleOrphans(force: caughtUp || orphanSource == nil)
        }
        let now = clock.nowMs()
        // Publishers and standby links are sent no deltas: only the others, in link order.
        for link in links.values.filter({ $0.id != except && $0.session?.sendsDeltas == true }).sorted(by: { $0.id < $1.id }) {
            guard var session = link.session else { continue }
            do {
                for m in try perform(session.poll(store, nowMs: now), for: link, &session) { send(m, on: link) }
                link.session = session
            } catch {
                refuse(link, WireError(.internal, "\(error)"))
            }
        }
    }

    func refuse(_ link: Link, _ error: WireError) {
        metrics.refused(error.code.name)
        // Once per interval per code (a fixed set): a peer retrying a refused key cannot flood the log.
        limitLog.warning("refused:\(error.code.name)", "link refused (\(link.name), \(error.code.name)): \(error.message)", nowMs: clock.nowMs())
        send(.error(code: error.code, message: error.message), on: link)
        link.channel.close(promise: nil)
    }

    /// One HalfPair per `[[upstream]]`, highest priority first, each connecting.
    func startUpstreams(_ configs: [EdgeConfig.Upstream]) throws {
        for (i, u) in configs.sorted(by: { ($0.priority, $1.name) > ($1.priority, $0.name) }).enumerated() {
            let pair = HalfPair(origin: origin, backoff: ReconnectBackoff(baseMs: config.reconnectBaseMs, capMs: config.reconnectCapMs),
                                heartbeatsMissedMax: config.heartbeatsMissedMax)
            let group = try QGroupName(domain: QDomain("spook.\(config.name)"), name: u.name)
            upstreams.append(Upstream(config: u, pair: pair, group: group))
            drive(i, .connect)
        }
    }

    /// New `[[upstream]]` tables: every upstream HalfPair is dissolved (CLOSE
    /// on its link, `$state` "closed") and the new ones start and connect. A
    /// link comes back with a catch-up, so nothing is lost; what was sent
    /// withheld to an upstream whose domains grew is not sent again.
    func reloadUpstreams(_ configs: [EdgeConfig.Upstream]) -> [String] {
        let before = upstreams.map(\.config.name)
        for u in upstreams.indices {
            upstreams[u].reconnect?.cancel()
            if let id = upstreams[u].link, let link = links[id] {
                send(.close(message: "this agent's upstreams were reloaded"), on: link)
                link.upstream = nil  // its late frames and its close no longer reach a HalfPair
                link.channel.close(promise: nil)
            }
            upstreams[u].link = nil
            drive(u, .dissolve)
        }
        upstreamEpoch += 1
        upstreams = []
        do { try startUpstreams(configs) } catch {
            logger.error("upstreams not restarted", metadata: ["error": "\(error)"])
        }
        route()
        let after = upstreams.map(\.config.name)
        return ["upstreams restarted: \(after.joined(separator: ", ")) (were \(before.joined(separator: ", ")))"]
    }

    /// `drive`, unless a reload replaced the upstreams since `epoch`.
    func drive(_ u: Int, epoch: Int, _ event: HalfPair.Event) {
        guard epoch == upstreamEpoch, u < upstreams.count else { return }
        drive(u, event)
    }

    /// New `[[peer]]` tables: who may link from now on. A linked peer whose
    /// grant changed, or who is no longer listed, is sent CLOSE: it
    /// reconnects and is judged by the new tables (a removed one is refused).
    func reloadPeers(_ c: DaemonConfig) -> [String] {
        let old = authorisation
        let next = c.authorisation
        authorisation = next
        peerNames = Dictionary(c.peers.map { ($0.key.hex, $0.name) }, uniquingKeysWith: { a, _ in a })
        var closed = 0
        for link in links.values {
            guard let peer = link.peer, link.upstream == nil else { continue }
            let grant = next.grant(for: peer.publicKey)
            guard grant != link.grant else { continue }
            send(.close(message: grant == nil ? "no longer a peer of this daemon" : "this peer's grant changed: reconnect"), on: link)
            link.channel.close(promise: nil)
            closed += 1
        }
        let before = Set(old.map { Array($0.keys.keys) } ?? []), after = Set(next.keys.keys)
        let changed = after.intersection(before).filter { old?.keys[$0] != next.keys[$0] }.count
        return ["peers: \(after.subtracting(before).count) added, \(before.subtracting(after).count) removed, \(changed) changed, \(closed) link\(closed == 1 ? "" : "s") closed to reconnect"]
    }

    /// When bytes last arrived on each link (ms), set by its reader on the I/O loop.
    let arrivals = NIOLockedValueBox<[Int: UInt64]>([:])

    /// The socket of `id` closed (on the node loop).
    func closed(_ id: Int) {
        arrivals.withLockedValue { $0[id] = nil }
        guard let link = links.removeValue(forKey: id) else { return }
        if let peer = link.session?.peer {
            do { try store.recordPeerSeen(peer, ms: clock.nowMs()) } catch {
                metrics.internalError("peer-seen")
                logger.error("could not record when a peer was last linked", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
        logger.info("link closed", metadata: ["link": "\(id)", "peer": "\(link.peer.map { "\($0.origin)" } ?? "-")"])
        if let u = link.upstream, upstreams[u].link == id || upstreams[u].link == nil {
            upstreams[u].link = nil
            drive(u, .linkDown)
            route()
            afterStoreChange(except: nil)
        }
    }

    /// Set while a refresh after another daemon's commit waits on the node loop.
    let refreshQueued = NIOLockedValueBox(false)

    /// Another daemon committed to the shared database (any thread): once the
    /// node loop is free, read what changed and let every link send it.
    /// Notifications that arrive meanwhile join the one queued refresh.
    func othersCommitted() {
        guard refreshQueued.withLockedValue({ q in defer { q = true }; return !q }) else { return }
        loop.execute {
            self.refreshQueued.withLockedValue { $0 = false }
            self.refreshFromOthers()
        }
    }

    func refreshFromOthers() {
        guard store.shared else { return }
        do {
            if try store.refreshFromOthers() { afterStoreChange(except: nil) }
        } catch let e as StoreError where e.code == .closed {
            return  // shutting down
        } catch {
            metrics.internalError("refresh")
            limitLog.warning("refresh", "could not read other daemons' commits (retried at the next heartbeat): \(error)", nowMs: clock.nowMs())
        }
    }

    func daemonHeartbeat() {
        let now = clock.nowMs()
        // A notification lost while the database connection was down: caught up here at the latest.
        refreshFromOthers()
        let silence = silenceMs
        for link in links.values where link.upstream == nil {
            // Bytes that arrived count, not only frames handled: an overloaded
            // node loop must not take a peer whose frames wait for it as silent.
            let heard = max(link.lastHeardMs, arrivals.withLockedValue { $0[link.id] } ?? 0)
            if now > heard + silence {
                refuse(link, WireError(.timeout, "nothing heard for \(now - heard) ms"))
            } else if link.peer != nil {
                send(.heartbeat(sentMs: now), on: link)
                pollSession(link, nowMs: now)
            }
        }
    }

    // MARK: the edge's HalfPairs

    func drive(_ u: Int, _ event: HalfPair.Event) {
        let actions: [HalfPair.Action]
        do { actions = try upstreams[u].pair.handle(event) } catch {
            logger.error("HalfPair refused an event", metadata: ["upstream": "\(upstreams[u].config.name)", "error": "\(error)"])
            return
        }
        for action in actions { perform(action, u) }
    }

    func perform(_ action: HalfPair.Action, _ u: Int) {
        let upstream = upstreams[u]
        switch action {
        case .openLink:
            connect(u)
        case .closeLink(let reason):
            if let id = upstream.link, let link = links[id] {
                if reason == .heartbeatTimeout { send(.error(code: .timeout, message: "heartbeats missed"), on: link) }
                upstreams[u].link = nil
                links[id] = nil
                link.channel.close(promise: nil)
            }
        case .startCatchUp:
            if let id = upstream.link, let link = links[id] { startSession(link) }
        case .sendHeartbeat:
            publishLag(u)
            if let id = upstream.link, let link = links[id] {
                send(.heartbeat(sentMs: clock.nowMs()), on: link)
                pollSession(link, nowMs: clock.nowMs())
            }
        case .startHeartbeatTimer:
            let interval = TimeAmount.milliseconds(Int64(config.heartbeatIntervalMs))
            let epoch = upstreamEpoch
            upstreams[u].heartbeat = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in self.drive(u, epoch: epoch, .heartbeatTimerFired) }
        case .stopHeartbeatTimer:
            upstreams[u].heartbeat?.cancel()
            upstreams[u].heartbeat = nil
        case .scheduleReconnect(let delayMs):
            metrics.reconnects.increment()
            logger.info("reconnecting later", metadata: ["upstream": "\(upstream.config.name)", "delay_ms": "\(delayMs)"])
            let epoch = upstreamEpoch
            upstreams[u].reconnect = loop.scheduleTask(in: .milliseconds(Int64(delayMs))) { self.drive(u, epoch: epoch, .reconnectTimerFired) }
        case .cancelReconnect:
            upstreams[u].reconnect?.cancel()
        case .publish(let state):
            logger.info("HalfPair", metadata: ["upstream": "\(upstream.config.name)", "state": "\(state.name)"])
            publish(u, [Write("$state", .set, .string(state.name)), Write("$online", .set, .bool(state.isOnline))])
        }
    }

    /// Set (on the node loop) when `shutdown` begins: links closing then
    /// must not start reconnects on an event loop group about to stop.
    var shuttingDown = false

    /// Opens the link of upstream `u`. The link is registered, and its
    /// handshake started, while the channel is being set up, so no frame and
    /// no close can arrive before the node knows the link.
    func connect(_ u: Int) {
        guard !shuttingDown else { return }
        let endpoint = upstreams[u].config.endpoint
        let pinned = upstreams[u].config.key
        let epoch = upstreamEpoch
        let domains = upstreams[u].config.domains, name = upstreams[u].config.name
        let id = nextID
        nextID += 1
        upstreams[u].link = id
        let tls: (NIOSSLContext, String)?
        let tlsHost: String? = {
            switch endpoint {
            case .tls(let host, _), .websocket(let host, _, _, true): host
            default: nil
            }
        }()
        if let host = tlsHost {
            do {
                tls = (try Node.clientTLS(ca: upstreams[u].config.caPath ?? ""), upstreams[u].config.serverName ?? host)
            } catch {
                logger.error("TLS setup failed", metadata: ["upstream": "\(upstreams[u].config.name)", "error": "\(error)"])
                upstreams[u].link = nil
                let epoch = upstreamEpoch
                loop.execute { self.drive(u, epoch: epoch, .linkDown) }
                return
            }
        } else {
            tls = nil
        }
        let bootstrap = ClientBootstrap(group: ioGroup)
            .connectTimeout(.milliseconds(Int64(max(1_000, config.heartbeatIntervalMs * UInt64(config.heartbeatsMissedMax)))))
            .channelInitializer { channel in
                let secured: EventLoopFuture<Void>
                if let (context, name) = tls {
                    secured = channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: name))
                    }
                } else {
                    secured = channel.eventLoop.makeSucceededVoidFuture()
                }
                let register = secured.flatMap { self.loop.submit {
                    // A reload replaced the upstreams while this connection was made: drop it.
                    guard epoch == self.upstreamEpoch else { throw ChannelError.ioOnClosedChannel }
                    let handshake = Handshake(side: .initiator, identity: self.identity, role: .agent, nonce: Node.nonce(),
                                              subscriptions: domains, node: self.config.name, epoch: self.store.epoch,
                                              isAuthorised: { $0 == pinned })
                    let link = Link(id: id, channel: channel, handshake: handshake, upstream: u, nowMs: self.clock.nowMs(), name: name)
                    link.pendingHello = link.handshake.start()
                    self.links[id] = link
                } }
                // A close at any stage, before or after an upgrade, reaches the node.
                channel.closeFuture.whenComplete { _ in self.loop.execute { self.closed(id) } }
                if case .websocket(let host, _, let path, _) = endpoint {
                    // Frames flow, and HELLO goes out, only once the upgrade succeeded.
                    return register.flatMap {
                        WebSocketLink.configureClient(channel, host: host, path: path) { channel in
                            channel.pipeline.addHandlers([self.outboundBudget(link: id), FrameHandler(node: self, link: id)]).flatMap {
                                self.loop.submit { if let link = self.links[id] { self.sendPendingHello(link) } }
                            }
                        }
                    }
                }
                return register.flatMap { channel.pipeline.addHandlers([self.outboundBudget(link: id), FrameHandler(node: self, link: id)]) }
            }
        let connecting: EventLoopFuture<Channel>
        switch endpoint {
        case .unix(let path): connecting = bootstrap.connect(unixDomainSocketPath: path)
        case .tcp(let host, let port), .tls(let host, let port), .websocket(let host, let port, _, _):
            connecting = bootstrap.connect(host: host, port: port)
        }
        connecting.hop(to: loop).whenComplete { result in
            guard epoch == self.upstreamEpoch else {
                self.links[id] = nil
                if case .success(let channel) = result { channel.close(promise: nil) }
                return
            }
            switch result {
            case .failure(let error):
                self.logger.info("upstream \(name): \(sentence(error))")
                self.links[id] = nil
                if self.upstreams[u].link == id {
                    self.upstreams[u].link = nil
                    self.drive(u, .linkDown)
                }
            case .success:
                guard let link = self.links[id] else { return }  // closed already: `closed` drove linkDown
                if case .websocket = endpoint {} else { self.sendPendingHello(link) }
                // A peer that accepts but never completes the handshake must not hold the HalfPair forever.
                let timeout = TimeAmount.milliseconds(Int64(self.config.heartbeatIntervalMs * UInt64(self.config.heartbeatsMissedMax)))
                self.loop.scheduleTask(in: timeout) {
                    if let link = self.links[id], link.peer == nil { self.refuse(link, WireError(.timeout, "no handshake within \(timeout.nanoseconds / 1_000_000) ms")) }
                }
            }
        }
    }

    func sendPendingHello(_ link: Link) {
        guard let hello = link.pendingHello else { return }
        link.pendingHello = nil
        send(hello, on: link)
    }

    /// Writes the substrate's own registers for an upstream HalfPair. A
    /// failure loses only this status write, but is said and counted.
    func publish(_ u: Int, _ writes: [Write]) {
        do {
            for case .failure(let e) in try store.commitLocal([LocalWrite(group: upstreams[u].group, writes: writes)], origin: origin, physicalMs: clock.nowMs()) {
                throw e
            }
        } catch {
            metrics.internalError("status-commit")
            logger.error("could not write the HalfPair's own registers", metadata: ["upstream": "\(upstreams[u].config.name)", "error": "\(error)"])
        }
    }

    /// Lets a session send what its peer lacks; a store error closes that link (it reconnects and resumes from acknowledgements).
    func pollSession(_ link: Link, nowMs: UInt64) {
        guard var session = link.session else { return }
        do {
            for m in try perform(session.poll(store, nowMs: nowMs), for: link, &session) { send(m, on: link) }
            link.session = session
        } catch {
            metrics.internalError("poll")
            logger.error("could not read what a peer lacks: closing the link", metadata: ["link": "\(link.id)", "error": "\(error)"])
            refuse(link, WireError(.internal, "this node could not read its store: \(error)"))
        }
    }

    var lastLag: [Int: UInt64] = [:]

    /// Writes `$lag` (deltas the upstream has not acknowledged) when it
    /// changed, once per heartbeat: measured more often, the write itself
    /// would be the lag it reports.
    func publishLag(_ u: Int) {
        guard let id = upstreams[u].link, let session = links[id]?.session else { return }
        let lag = session.lag(store)
        guard lastLag[u] != lag else { return }
        lastLag[u] = lag
        publish(u, [Write("$lag", .set, .int(Int64(clamping: lag)))])
    }

    // MARK: for the local API

    struct LinkStatus {
        var name: String
        var state: String
        var online: Bool
        var peer: String
        var lag: UInt64
        var bytesSent = 0
        var deltasSent = 0
        var deltasReceived = 0
        var snapshotsSent = 0
    }

    func counters(_ status: inout LinkStatus, _ link: Link?) {
        guard let link else { return }
        status.bytesSent = link.bytesSent
        status.deltasSent = link.session?.deltasSent ?? 0
        status.deltasReceived = link.session?.deltasReceived ?? 0
        status.snapshotsSent = link.session?.snapshotsSent ?? 0
    }

    /// The upstream HalfPairs (an agent's, a daemon's in a hierarchy), then
    /// on a daemon the links peers opened to it.
    func linkStatus() -> [LinkStatus] {
        let up = upstreams.map { u in
            let link = u.link.flatMap { links[$0] }
            var status = LinkStatus(name: u.config.name, state: u.pair.state.name, online: u.pair.state.isOnline,
                                    peer: link?.peer.map { "\($0.origin)" } ?? "-", lag: link?.session?.lag(store) ?? 0)
            counters(&status, link)
            return status
        }
        guard case .daemon = role else { return up }
        return up + links.values.filter { $0.upstream == nil }.sorted { $0.id < $1.id }.map { l in
            let caughtUp = l.session?.isCaughtUp(store) ?? false
            var status = LinkStatus(name: l.name, state: caughtUp ? "coherent" : "entangling",
                                    online: caughtUp, peer: l.peer.map { "\($0.origin)" } ?? "-", lag: l.session?.lag(store) ?? 0)
            counters(&status, l)
            return status
        }
    }
}

extension ServerBootstrap {
    func bind(to endpoint: Endpoint) -> EventLoopFuture<Channel> {
        switch endpoint {
        case .unix(let path):
            unlink(path)
            return bind(unixDomainSocketPath: path).map { c in
                chmod(path, 0o660)
                return c
            }
        case .tcp(let host, let port), .tls(let host, let port), .websocket(let host, let port, _, _):
            return bind(host: host, port: port)
        }
    }
}

/// Cuts a link's bytes into frames (on the I/O loop) and hands them to the
/// node loop, with back-pressure: while the node loop has not handled
/// `linkFramesQueuedMax` frames (or `linkBytesQueuedMax` bytes) of this link,
/// the handler stops asking the socket for more, so a fast or hostile sender
/// is slowed by TCP instead of growing the process. Until the peer has
/// authenticated, a frame may be at most `unauthenticatedFrameMax` bytes.
final class FrameHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let node: Node
    let link: Int
    var decoder = FrameDecoder(payloadMax: NodeLimits.unauthenticatedFrameMax)
    var failed = false
    /// Frames and bytes handed to the node loop and not yet handled (I/O loop only).
    var queuedFrames = 0
    var queuedBytes = 0
    /// A read the pipeline asked for while the queue was full.
    var readHeld = false
    var context: ChannelHandlerContext?
    /// Bytes of partial frames held by the decoder, as last told to the budget.
    var bufferedReported = 0

    init(node: Node, link: Int) {
        self.node = node
        self.link = link
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        node.budget.inbound(-bufferedReported)
        bufferedReported = 0
        self.context = nil
    }

    /// The peer authenticated: frames up to the full limit from now on.
    func authenticated() { decoder.payloadMax = Frame.payloadMaxDefault }

    func read(context: ChannelHandlerContext) {
        if queuedFrames >= NodeLimits.linkFramesQueuedMax || queuedBytes >= NodeLimits.linkBytesQueuedMax {
            readHeld = true
        } else {
            context.read()
        }
    }

    /// The node loop handled one of our frames (called on the I/O loop).
    func handled(bytes: Int) {
        queuedFrames -= 1
        queuedBytes -= bytes
        node.budget.inbound(-bytes)
        if readHeld, queuedFrames < NodeLimits.linkFramesQueuedMax / 2, queuedBytes < NodeLimits.linkBytesQueuedMax / 2, let context {
            readHeld = false
            context.read()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let (arrivals, link, at) = (node.arrivals, self.link, node.clock.nowMs())
        arrivals.withLockedValue { $0[link] = at }
        var buffer = unwrapInboundIn(data)
        decoder.feed(buffer.readBytes(length: buffer.readableBytes) ?? [])
        do {
            while let frame = try decoder.next() {
                let message = try Message(frame: frame)
                let bytes = frame.payload.count
                queuedFrames += 1
                queuedBytes += bytes
                node.budget.inbound(bytes)
                let (node, link, loop, arrived) = (self.node, self.link, context.eventLoop, ContinuousClock.now)
                node.loop.execute {
                    node.received(message, on: link, arrived: arrived)
                    loop.execute { self.handled(bytes: bytes) }
                }
            }
            node.budget.inbound(decoder.buffered - bufferedReported)
            bufferedReported = decoder.buffered
        } catch let e as WireError {
            failed = true
            let (node, link) = (self.node, self.link)
            node.logger.warning("malformed input, closing the link", metadata: ["link": "\(link)", "code": "\(e.code)", "reason": "\(e.message)"])
            node.metrics.refused(e.code.name)
            let bytes = Message.error(code: e.code, message: e.message).frame.encoded
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
            context.close(promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let (node, link) = (self.node, self.link)
        node.loop.execute { node.closed(link) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Transport errors: TLS verification, resets. The close tells the node.
        node.logger.warning("link \(link): \(sentence(error))")
        context.close(promise: nil)
    }
}
