#if canImport(Glibc)
import Glibc
#endif
import Logging
import SpookCore
import SpookDevices
import SpookLink
import SpookStore

/// Where a link connects or listens.
public enum Endpoint: Hashable, Sendable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)
    /// TCP with TLS; certificates come from the listener's or upstream's config.
    case tls(host: String, port: Int)
    /// WebSocket binary messages at `path`, over TLS (wss://) or not (ws://).
    case websocket(host: String, port: Int, path: String, tls: Bool)

    public var isTLS: Bool {
        switch self {
        case .tls, .websocket(_, _, _, true): true
        default: false
        }
    }

    /// Parses `unix:///run/spookd/spookd.link` or `tcp://127.0.0.1:7400`.
    public static func parse(_ text: String) throws -> Endpoint {
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst(7))
            guard path.hasPrefix("/") else { throw EndpointError("\"\(text)\": a unix socket path must be absolute (unix:///run/…)") }
            guard path.utf8.count < 108 else { throw EndpointError("\"\(text)\": a unix socket path is limited to 107 bytes") }
            return .unix(path: path)
        }
        for scheme in ["tcp://", "tls://"] where text.hasPrefix(scheme) {
            let rest = text.dropFirst(6)
            guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]) else {
                throw EndpointError("\"\(text)\": expected \(scheme)HOST:PORT")
            }
            var host = String(rest[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { throw EndpointError("\"\(text)\": the host is empty") }
            guard (1...65535).contains(port) else { throw EndpointError("\"\(text)\": port \(port) is out of range 1…65535") }
            return scheme == "tls://" ? .tls(host: host, port: port) : .tcp(host: host, port: port)
        }
        for scheme in ["wss://", "ws://"] where text.hasPrefix(scheme) {
            let rest = text.dropFirst(scheme.count)
            let slash = rest.firstIndex(of: "/") ?? rest.endIndex
            let authority = rest[..<slash]
            let path = slash == rest.endIndex ? "/" : String(rest[slash...])
            guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]) else {
                throw EndpointError("\"\(text)\": expected \(scheme)HOST:PORT/PATH")
            }
            var host = String(authority[..<colon])
            if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { throw EndpointError("\"\(text)\": the host is empty") }
            guard (1...65535).contains(port) else { throw EndpointError("\"\(text)\": port \(port) is out of range 1…65535") }
            return .websocket(host: host, port: port, path: path, tls: scheme == "wss://")
        }
        throw EndpointError("\"\(text)\": unknown scheme; use unix:///path, tcp://host:port, tls://host:port, ws://host:port/path or wss://host:port/path")
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix://\(path)"
        case .tcp(let host, let port): host.contains(Character(":")) ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        case .tls(let host, let port): host.contains(Character(":")) ? "tls://[\(host)]:\(port)" : "tls://\(host):\(port)"
        case .websocket(let host, let port, let path, let tls):
            "\(tls ? "wss" : "ws")://\(host.contains(Character(":")) ? "[\(host)]" : host):\(port)\(path)"
        }
    }
}

struct EndpointError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What both daemons share: identity, store, local API, timers, schema.
public struct NodeConfig: Sendable {
    /// An earlier rule takes registers a later rule was meant for: the two
    /// share registers, the later is narrower in domain, and the earlier is
    /// narrower in group or name (so it is not an exception carved out of
    /// the later one, which is what "first match wins" is for).
    static func shadows(_ earlier: RegisterSelector, _ later: RegisterSelector) -> Bool {
        func covers(_ outer: QDomainPattern, _ inner: QDomainPattern) -> Bool {
            if outer.description == "*" || outer == inner { return true }
            if outer.wildcard { return inner.prefix.count > outer.prefix.count && inner.prefix.starts(with: outer.prefix) }
            return false
        }
        let compatible = { (a: String?, b: String?) in a == nil || b == nil || a == b }
        guard compatible(earlier.group, later.group), compatible(earlier.register, later.register) else { return false }
        let laterNarrowerDomain = covers(earlier.domain, later.domain) && earlier.domain != later.domain
        let earlierNarrowerElsewhere = earlier.group != nil && later.group == nil || earlier.register != nil && later.register == nil
        return laterNarrowerDomain && earlierNarrowerElsewhere
    }

    static func describe(_ s: RegisterSelector) -> String {
        "(domain \(s.domain)\(s.group.map { ", group \($0)" } ?? "")\(s.register.map { ", name \($0)" } ?? ""))"
    }

    /// Why a store at `path` could not be opened for writing, or nil: the
    /// folder must exist and be writable, and an existing file must be a
    /// regular file this user may read and write. check-config and run agree.
    public static func storeProblem(_ path: String) -> String? {
        guard !path.isEmpty else { return nil }
        let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        var info = stat()
        guard stat(folder.isEmpty ? "/" : folder, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            return "\"data\" = \"\(path)\": the folder \(folder) does not exist (create it, owned by the user the daemon runs as)"
        }
        guard access(folder.isEmpty ? "/" : folder, W_OK | X_OK) == 0 else {
            return "\"data\" = \"\(path)\": the folder \(folder) is not writable by this user (the store needs its -wal and -shm files beside it)"
        }
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFREG else { return "\"data\" = \"\(path)\" is not a regular file" }
            guard access(path, R_OK | W_OK) == 0 else { return "\"data\" = \"\(path)\" exists but this user may not read and write it" }
        }
        return nil
    }

    public var name = "spook"
    public var keyPath = ""
    public var dataPath = ""
    public var sync: SyncLevel = .full
    public var historyLength = 32
    /// `[node] log_mib`: the SQLite log's bound (StoreOptions.walBytes), in MiB.
    public var logMiB = StoreOptions.walBytesDefault >> 20
    public var apiSocket = ""
    /// `[api] fifo`: a named pipe that takes `set REGISTER VALUE` lines (nil: none).
    public var apiFifo: String?
    public var heartbeatIntervalMs: UInt64 = 1_000
    public var heartbeatsMissedMax: UInt32 = 3
    public var reconnectBaseMs: UInt64 = 500
    public var reconnectCapMs: UInt64 = 30_000
    /// A peer's HLC stamp more than this ahead of our clock is refused ([clock] drift_max_ms).
    public var clockDriftMsMax: UInt64 = 60_000
    /// Bounds on connections, queues and buffers ([limits]).
    public var limits = NodeLimits()
    /// `[log] level`; `run --log-level` overrides it.
    public var logLevel: Logger.Level = .info
    /// How often the background compaction runs ([compaction] interval_ms).
    public var compactionIntervalMs: UInt64 = 10_000
    /// A peer not linked for this long no longer holds back compaction; it
    /// gets a snapshot when it returns ([compaction] peer_retention_s).
    public var peerRetentionS: UInt64 = 7 * 24 * 3600
    /// Where to serve Prometheus metrics (`GET /metrics`); nil: not served.
    public var metricsListen: (host: String, port: Int)?
    public var schema = Schema()
    /// `[[modbus_server]]`: registers served to SCADA over Modbus TCP.
    public var modbusServers: [ModbusServerSpec] = []
    /// `[mqtt]`: the agent as a Sparkplug B edge node (spook-edge only).
    public var mqtt: MQTTSpec?
    /// `[web]`: the live register page (nil: not served).
    public var web: WebSpec?
}

/// `spook-edge`: the upstream links it keeps entangled.
public struct EdgeConfig: Sendable {
    public struct Upstream: Sendable, Hashable {
        public var name: String
        public var endpoint: Endpoint
        /// The upstream daemon's public key (hex), pinned.
        public var key: [UInt8]
        public var priority: Int
        public var domains: [QDomainPattern]
        /// For tls://: the CA certificate (PEM) the daemon's certificate must chain to.
        public var caPath: String? = nil
        /// For tls://: the name to verify (default: the URL's host).
        public var serverName: String? = nil
    }

    public var node = NodeConfig()
    /// What check-config warns about (file:line:column: warning: …).
    public var warnings: [String] = []
    public var upstreams: [Upstream] = []
    /// Attached devices, each hosted by its own HalfPair.
    public var devices: [DeviceSpec] = []
}

/// `spookd`: where it listens and which keys may connect, with what rights.
public struct DaemonConfig: Sendable {
    public struct Peer: Sendable, Hashable {
        public var name: String
        public var key: [UInt8]
        public var grant: Authorisation.Grant
    }

    /// Where the daemon accepts links; a tls:// listener has a certificate chain and key (PEM).
    public struct Listener: Sendable, Hashable {
        public var endpoint: Endpoint
        public var certPath: String? = nil
        public var keyPath: String? = nil
    }

    public var node = NodeConfig()
    /// What check-config warns about (file:line:column: warning: …).
    public var warnings: [String] = []
    public var listen: [Listener] = []
    public var peers: [Peer] = []
    /// Daemons above this one (a hierarchy: site → central): the same
    /// HalfPairs and routing by domain as an agent's, but relaying every
    /// origin it holds, not only its own writes.
    public var upstreams: [EdgeConfig.Upstream] = []

    public var authorisation: Authorisation {
        Authorisation(keys: Dictionary(peers.map { ($0.key.hex, $0.grant) }, uniquingKeysWith: { a, _ in a }))
    }
}

// MARK: reading

package enum ConfigFile {
    package static func read(_ path: String) throws -> String {
        guard let f = fopen(path, "r") else {
            throw ConfigError(diagnostics: [ConfigDiagnostic(file: path, line: 1, column: 1, message: "cannot read: \(String(cString: strerror(errno)))")])
        }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension ConfigReader {
    func nodeConfig(_ doc: Table) -> NodeConfig {
        var c = NodeConfig()
        if let node = doc.table("node") {
            node.rejectUnknownKeys(["name", "key", "data", "sync", "history", "log_mib"])
            c.name = node.string("name") ?? c.name
            if c.name.utf8.count > 64 { fail("node.name", "\"name\" is \(c.name.utf8.count) bytes, the limit is 64") }
            c.keyPath = node.string("key", required: true) ?? ""
            c.dataPath = node.string("data", required: true) ?? ""
            if PostgresURL.isPostgres(c.dataPath) {
                do { _ = try PostgresURL(c.dataPath) } catch let e as CoreError { fail(node.key("data"), "\"data\" = \(e.message)") } catch {}
            } else if checkFiles, let problem = NodeConfig.storeProblem(c.dataPath) {
                fail(node.key("data"), problem)
            }
            c.sync = node.choice("sync", SyncLevel.allCases.map { ($0.rawValue, $0) }) ?? c.sync
            c.historyLength = node.int("history", in: 1...4096) ?? c.historyLength
            c.logMiB = node.int("log_mib", in: 1...1024) ?? c.logMiB
        } else {
            fail("", "the [node] table is missing (it names the key and data files)")
        }
        if let api = doc.table("api") {
            api.rejectUnknownKeys(["socket", "fifo"])
            c.apiSocket = api.string("socket", required: true) ?? ""
            if let fifo = api.string("fifo") {
                if !fifo.hasPrefix("/") { fail(api.key("fifo"), "\"fifo\" = \"\(fifo)\" must be an absolute path") }
                c.apiFifo = fifo
            }
        } else {
            fail("", "the [api] table is missing (it names the local API socket)")
        }
        if let m = doc.table("metrics") {
            m.rejectUnknownKeys(["listen"])
            c.metricsListen = hostPort(m, "listen", example: "127.0.0.1:9464")
        }
        if let hb = doc.table("heartbeat") {
            hb.rejectUnknownKeys(["interval_ms", "missed_max"])
            c.heartbeatIntervalMs = UInt64(hb.int("interval_ms", in: 50...600_000) ?? Int(c.heartbeatIntervalMs))
            c.heartbeatsMissedMax = UInt32(hb.int("missed_max", in: 1...100) ?? Int(c.heartbeatsMissedMax))
        }
        if let l = doc.table("limits") {
            l.rejectUnknownKeys(["connections_max", "connections_per_source_max", "api_clients_max", "api_client_buffer_bytes",
                                 "link_buffer_bytes", "pending_writes_max", "snapshot_bytes_max"])
            c.limits.connectionsMax = l.int("connections_max", in: 1...1_000_000) ?? c.limits.connectionsMax
            c.limits.connectionsPerSourceMax = l.int("connections_per_source_max", in: 1...1_000_000) ?? c.limits.connectionsPerSourceMax
            c.limits.apiClientsMax = l.int("api_clients_max", in: 1...100_000) ?? c.limits.apiClientsMax
            c.limits.apiClientBufferBytesMax = l.int("api_client_buffer_bytes", in: (64 << 10)...(1 << 30)) ?? c.limits.apiClientBufferBytesMax
            c.limits.linkBufferBytesMax = l.int("link_buffer_bytes", in: (4 << 20)...(4 << 30)) ?? c.limits.linkBufferBytesMax
            c.limits.pendingWritesMax = l.int("pending_writes_max", in: 1...10_000_000) ?? c.limits.pendingWritesMax
            c.limits.snapshotBytesMax = l.int("snapshot_bytes_max", in: (1 << 20)...(16 << 30)) ?? c.limits.snapshotBytesMax
        }
        if let l = doc.table("log") {
            l.rejectUnknownKeys(["level"])
            c.logLevel = l.choice("level", Logger.Level.allCases.map { ($0.rawValue, $0) }) ?? c.logLevel
        }
        if let k = doc.table("compaction") {
            k.rejectUnknownKeys(["interval_ms", "peer_retention_s"])
            c.compactionIntervalMs = UInt64(k.int("interval_ms", in: 50...86_400_000) ?? Int(c.compactionIntervalMs))
            c.peerRetentionS = UInt64(k.int("peer_retention_s", in: 1...(10 * 365 * 24 * 3600)) ?? Int(c.peerRetentionS))
        }
        if let clock = doc.table("clock") {
            clock.rejectUnknownKeys(["drift_max_ms"])
            c.clockDriftMsMax = UInt64(clock.int("drift_max_ms", in: 100...86_400_000) ?? Int(c.clockDriftMsMax))
        }
        if let rc = doc.table("reconnect") {
            rc.rejectUnknownKeys(["base_ms", "cap_ms"])
            c.reconnectBaseMs = UInt64(rc.int("base_ms", in: 10...3_600_000) ?? Int(c.reconnectBaseMs))
            c.reconnectCapMs = UInt64(rc.int("cap_ms", in: 10...86_400_000) ?? Int(c.reconnectCapMs))
            if c.reconnectCapMs < c.reconnectBaseMs { fail("reconnect.cap_ms", "\"cap_ms\" (\(c.reconnectCapMs)) must be at least \"base_ms\" (\(c.reconnectBaseMs))") }
        }
        var rules: [(selector: RegisterSelector, spec: RegisterSpec)] = []
        var rulePaths: [String] = []
        for r in doc.tables("register") {
            r.rejectUnknownKeys(["domain", "group", "name", "type", "policy"])
            let domain = r.name("domain", QDomainPattern.init, required: true)
            let group = r.name("group") { g -> String in _ = try QGroupName("x/\(g)"); return g }
            let name = r.name("name") { n -> String in _ = try QRegisterName("x/y/\(n)"); return n }
            let type = r.choice("type", ValueType.allCases.filter { $0 != .null }.map { ($0.rawValue, $0) })
            let policy = r.choice("policy", Policy.allCases.map { ($0.rawValue, $0) }) ?? .lww
            if let domain {
                rules.append((RegisterSelector(domain: domain, group: group, register: name), RegisterSpec(type: type, policy: policy)))
                rulePaths.append(r.path)
            }
        }
        for (j, later) in rules.enumerated() {
            for (i, earlier) in rules[..<j].enumerated() where NodeConfig.shadows(earlier.selector, later.selector) {
                let line = (document_?.position(rulePaths[j]) ?? (1, 1)).0
                warn(rulePaths[i], "[[register]] \(NodeConfig.describe(earlier.selector)) comes first for the registers it shares with the more specific "
                     + "[[register]] \(NodeConfig.describe(later.selector)) at line \(line): first match wins, so those registers never get line \(line)'s "
                     + "declaration; put line \(line) first, or make the two rules disjoint")
            }
        }
        c.schema = Schema(registers: rules)
        c.modbusServers = modbusServers(doc, schema: c.schema)
        return c
    }

    /// A required `HOST:PORT` key (a TCP listener of ours), or nil after a failure naming `example`.
    func hostPort(_ t: Table, _ k: String, example: String) -> (host: String, port: Int)? {
        guard let text = t.string(k, required: true) else { return nil }
        guard case .tcp(let host, let port)? = try? Endpoint.parse("tcp://\(text)") else {
            fail(t.key(k), "\"\(k)\" = \"\(text)\" must be HOST:PORT, e.g. \(example)")
            return nil
        }
        return (host, port)
    }

    func hexKey(_ t: Table, _ k: String) -> [UInt8]? {
        guard let s = t.string(k, required: true) else { return nil }
        guard let key = [UInt8](hex: s), key.count == 32 else {
            fail(t.key(k), "\"\(k)\" must be a public key of 64 hex digits (spookctl keygen prints it), got \(s.utf8.count) characters")
            return nil
        }
        return key
    }

    func endpoint(_ t: Table, _ k: String) -> Endpoint? {
        guard let s = t.string(k, required: true) else { return nil }
        do { return try Endpoint.parse(s) } catch {
            fail(t.key(k), "\(error)")
            return nil
        }
    }
}

extension ConfigReader {
    /// `[[upstream]]` tables (an agent's, or a daemon's in a hierarchy). The
    /// link's own registers ($state, $online, $lag) live in domain
    /// "spook.<node name>", group "<upstream name>".
    func upstreams(_ doc: Table, nodeName: String) -> [EdgeConfig.Upstream] {
        var result: [EdgeConfig.Upstream] = []
        let tables = doc.tables("upstream")
        if !tables.isEmpty, (try? QDomain("spook.\(nodeName)")) == nil {
            fail("node.name", "with [[upstream]], \"name\" must be a domain label (a-z, 0-9, \"-\"): the links' own registers live in spook.<name>")
        }
        var names = Set<String>()
        for u in tables {
            u.rejectUnknownKeys(["name", "url", "key", "priority", "domains", "ca", "server_name"])
            let name = u.string("name", required: true) ?? ""
            if !name.isEmpty && !names.insert(name).inserted { fail(u.key("name"), "upstream \"\(name)\" is defined twice") }
            if !name.isEmpty, (try? QGroupName("spook/\(name)")) == nil {
                fail(u.key("name"), "upstream \"\(name)\" must be a group name (a-z, 0-9, \"-\", \"_\"): it names the group of the link's own registers")
            }
            let url = endpoint(u, "url")
            let key = hexKey(u, "key")
            let priority = u.int("priority", in: 0...1_000_000) ?? 0
            var domains: [QDomainPattern] = []
            for (i, p) in (u.strings("domains") ?? ["*"]).enumerated() {
                do { domains.append(try QDomainPattern(p)) } catch let e as CoreError {
                    fail(u.key("domains"), "domains[\(i)]: \(e.message)")
                } catch {}
            }
            var ca: String?, serverName: String?
            if url?.isTLS == true {
                ca = u.string("ca", required: true)
                serverName = u.string("server_name")
            } else if u.has("ca") || u.has("server_name") {
                fail(u.key(u.has("ca") ? "ca" : "server_name"), "\"ca\" and \"server_name\" belong to tls:// and wss:// upstreams only")
            }
            if let url, let key {
                result.append(EdgeConfig.Upstream(name: name, endpoint: url, key: key, priority: priority, domains: domains, caPath: ca, serverName: serverName))
            }
        }
        return result
    }
}

extension EdgeConfig {
    /// Reads and checks an edge config; throws every problem at once.
    /// `checkFiles`: also check the paths `run` opens (check-config and run do; tests of other machines' configs do not).
    public static func load(path: String, checkFiles: Bool = true) throws -> EdgeConfig {
        try parse(file: path, text: try ConfigFile.read(path), checkFiles: checkFiles)
    }

    public static func parse(file: String, text: String, checkFiles: Bool = false) throws -> EdgeConfig {
        let reader = ConfigReader(file: file, text: text, checkFiles: checkFiles)
        var c = EdgeConfig()
        if let doc = reader.document {
            doc.rejectUnknownKeys(["node", "api", "metrics", "heartbeat", "clock", "limits", "compaction", "log", "reconnect", "register", "upstream", "device", "modbus_server", "mqtt", "web"])
            c.node = reader.nodeConfig(doc)
            c.node.mqtt = reader.mqtt(doc, nodeName: c.node.name)
            if PostgresURL.isPostgres(c.node.dataPath) {
                reader.fail("node.data", "spook-edge keeps its store in an SQLite file: \"data\" must be a path (PostgreSQL is for spookd)")
            }
            c.node.web = reader.web(doc, daemon: false)
            c.upstreams = reader.upstreams(doc, nodeName: c.node.name)
            if doc.tables("upstream").isEmpty { reader.fail("", "no [[upstream]]: an edge agent needs at least one upstream daemon") }
            c.devices = reader.devices(doc, schema: c.node.schema)
        }
        try reader.finish()
        c.warnings = reader.warnings.sorted { ($0.line, $0.column) < ($1.line, $1.column) }.map(\.description)
        return c
    }
}

extension DaemonConfig {
    public static func load(path: String, checkFiles: Bool = true) throws -> DaemonConfig {
        try parse(file: path, text: try ConfigFile.read(path), checkFiles: checkFiles)
    }

    public static func parse(file: String, text: String, checkFiles: Bool = false) throws -> DaemonConfig {
        let reader = ConfigReader(file: file, text: text, checkFiles: checkFiles)
        var c = DaemonConfig()
        if let doc = reader.document {
            doc.rejectUnknownKeys(["node", "api", "metrics", "heartbeat", "clock", "limits", "compaction", "log", "reconnect", "register", "listen", "peer", "upstream", "modbus_server", "mqtt", "web"])
            c.node = reader.nodeConfig(doc)
            if doc.has("mqtt") { reader.fail("mqtt", "[mqtt] belongs to spook-edge's config: spookd is not a Sparkplug edge node") }
            c.node.web = reader.web(doc, daemon: true)
            for l in doc.tables("listen") {
                l.rejectUnknownKeys(["url", "cert", "key"])
                if let e = reader.endpoint(l, "url") {
                    if c.listen.contains(where: { $0.endpoint == e }) { reader.fail(l.key("url"), "\(e) is listed twice") }
                    var listener = Listener(endpoint: e)
                    if e.isTLS {
                        listener.certPath = l.string("cert", required: true)
                        listener.keyPath = l.string("key", required: true)
                    } else if l.has("cert") || l.has("key") {
                        reader.fail(l.key(l.has("cert") ? "cert" : "key"), "\"cert\" and \"key\" belong to tls:// and wss:// listeners only")
                    }
                    c.listen.append(listener)
                }
            }
            var names = Set<String>(), keys = Set<String>()
            for p in doc.tables("peer") {
                p.rejectUnknownKeys(["name", "key", "read", "write", "owns", "relay"])
                let name = p.string("name", required: true) ?? ""
                if !name.isEmpty && !names.insert(name).inserted { reader.fail(p.key("name"), "peer \"\(name)\" is defined twice") }
                let key = reader.hexKey(p, "key")
                if let key, !keys.insert(key.hex).inserted { reader.fail(p.key("key"), "this key is already given to another peer") }
                func patterns(_ k: String) -> [QDomainPattern] {
                    (p.strings(k) ?? []).enumerated().compactMap { i, s in
                        do { return try QDomainPattern(s) } catch let e as CoreError {
                            reader.fail(p.key(k), "\(k)[\(i)]: \(e.message)")
                        } catch {}
                        return nil
                    }
                }
                // A peer may always write its own status registers (spook.<its name>:
                // $state, $online, $lag of its upstream HalfPairs), named like its [node] name.
                var write = patterns("write")
                if let own = try? QDomainPattern("spook.\(name)"), !write.contains(where: { $0.matches(try! QDomain("spook.\(name)")) }) {
                    write.append(own)
                }
                var grant = Authorisation.Grant(read: patterns("read"), write: write, owns: patterns("owns"))
                // A daemon below this one forwards its agents' deltas: each is still held to the write grant.
                grant.relay = p.bool("relay") ?? false
                if let key { c.peers.append(Peer(name: name, key: key, grant: grant)) }
            }
            c.upstreams = reader.upstreams(doc, nodeName: c.node.name)
            if c.listen.isEmpty && doc.tables("listen").isEmpty { reader.fail("", "no [[listen]]: spookd needs at least one address to accept links on") }
        }
        try reader.finish()
        c.warnings = reader.warnings.sorted { ($0.line, $0.column) < ($1.line, $1.column) }.map(\.description)
        return c
    }
}

/// A config that may carry warnings (both daemons' configs).
public protocol WarningConfig {
    var warnings: [String] { get }
}

extension EdgeConfig: WarningConfig {}
extension DaemonConfig: WarningConfig {}
