#if canImport(Glibc)
import Glibc
#endif
import SpookLink
import SpookNode
import SpookTestSupport
import Testing
import SpookCore

/// Real `spookd` and `spook-edge` processes on Unix sockets in a temporary
/// folder, with configs written for them, stopped when the value goes away.
final class Cluster {
    let dir: TemporaryDirectory
    var daemon: ChildProcess?
    var edges: [String: ChildProcess] = [:]
    let daemonKey: Identity
    var edgeKeys: [String: Identity] = [:]

    /// The daemon's link address, and the one edges connect to (a proxy's, for partitions).
    let daemonLink: String
    let edgeLink: String

    /// Extra keys for the daemon's [[listen]] and the edges' [[upstream]] (TLS files), and extra edge tables.
    let listenExtra: String
    let upstreamExtra: String
    let edgeExtra: String
    /// Values kept per register history ([node] history).
    let history: Int
    /// Every node's [heartbeat] interval_ms (a link is given up after 3 missed).
    let heartbeatMs: Int

    init(edges names: [String] = ["gw1"], grants: [String: [String]] = [:], owns: [String: [String]] = [:], reads: [String: [String]] = [:],
         extraDaemonToml: String = "",
         daemonLink: String? = nil, edgeLink: String? = nil, listenExtra: String = "", upstreamExtra: String = "",
         edgeExtra: String = "", directory: TemporaryDirectory? = nil, history: Int = 32, heartbeatMs: Int = 200) throws {
        self.history = history
        self.heartbeatMs = heartbeatMs
        self.listenExtra = listenExtra
        self.upstreamExtra = upstreamExtra
        self.edgeExtra = edgeExtra
        let dir = directory ?? TemporaryDirectory()
        self.dir = dir
        self.daemonLink = daemonLink ?? "unix://\(dir.file("link.sock"))"
        self.edgeLink = edgeLink ?? self.daemonLink
        daemonKey = Identity()
        try daemonKey.save(path: dir.file("spookd.key"))
        var peers = ""
        for name in names {
            let key = Identity()
            try key.save(path: dir.file("\(name).key"))
            edgeKeys[name] = key
            let write = (grants[name] ?? ["site1.*", "spook.*"]).map { "\"\($0)\"" }.joined(separator: ", ")
            let owned = (owns[name] ?? []).map { "\"\($0)\"" }.joined(separator: ", ")
            let read = (reads[name] ?? ["*"]).map { "\"\($0)\"" }.joined(separator: ", ")
            peers += "[[peer]]\nname = \"\(name)\"\nkey = \"\(key.publicKey.hex)\"\nread = [\(read)]\nwrite = [\(write)]\nowns = [\(owned)]\n\n"
        }
        try write("spookd.toml", daemonToml("up", file: "spookd", listen: self.daemonLink, listenExtra: listenExtra, tail: peers + extraDaemonToml))
        for name in names { try writeEdgeConfig(name, key: edgeKeys[name]!) }
    }

    /// The [node], [api] and [heartbeat] tables of a test node whose files are
    /// `<file>.key/.db/.sock` (or `key` and `data` when given: a shared key, a postgres:// URL).
    func nodeToml(_ name: String, file: String, key: String? = nil, data: String? = nil, sync: String = "normal") -> String {
        """
        [node]
        name = "\(name)"
        key = "\(key ?? dir.file("\(file).key"))"
        data = "\(data ?? dir.file("\(file).db"))"
        sync = "\(sync)"
        history = \(history)
        [api]
        socket = "\(dir.file("\(file).sock"))"
        [heartbeat]
        interval_ms = \(heartbeatMs)
        missed_max = 3

        """
    }

    /// A daemon listening on `listen`; `tail` carries its [[peer]] tables and anything else.
    func daemonToml(_ name: String, file: String, listen: String, listenExtra: String = "", tail: String) -> String {
        nodeToml(name, file: file) + "[[listen]]\nurl = \"\(listen)\"\n\(listenExtra)\n\n" + tail
    }

    /// An edge with fast reconnects and the given upstreams (name, url, daemon key, priority, extra keys).
    func edgeToml(_ name: String, upstreams: [(name: String, url: String, key: Identity, priority: Int, extra: String)], extra: String = "") -> String {
        var text = nodeToml(name, file: name) + "[reconnect]\nbase_ms = 50\ncap_ms = 400\n\(extra)\n"
        for u in upstreams {
            text += "[[upstream]]\nname = \"\(u.name)\"\nurl = \"\(u.url)\"\nkey = \"\(u.key.publicKey.hex)\"\npriority = \(u.priority)\n\(u.extra)\n"
        }
        return text
    }

    func writeEdgeConfig(_ name: String, key: Identity) throws {
        try write("\(name).toml", edgeToml(name, upstreams: [("primary", edgeLink, daemonKey, 0, upstreamExtra)], extra: edgeExtra))
    }

    func write(_ name: String, _ text: String) throws {
        let fd = open(dir.file(name), O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw APIClientError("cannot write \(name)") }
        defer { close(fd) }
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
    }

    static func binary(_ name: String) -> String { ChildProcess.builtExecutable(name) }

    /// Starts a process and waits for its "ready" line.
    func launch(_ binary: String, _ config: String, environment: [String: String] = [:]) throws -> ChildProcess {
        let child = try ChildProcess(Cluster.binary(binary), ["run", "-c", dir.file(config), "--log-level", "warning"], environment: environment)
        guard let line = try child.readLine(timeoutMs: 20_000), line.contains("ready") else {
            throw APIClientError("\(binary) did not start")
        }
        return child
    }

    /// A second daemon, "backup" (its own key, store and link socket), and gw1
    /// linked to both: "primary" at priority 10 and "backup" at 5, each with
    /// `extra` keys (e.g. `domains`). Starts both daemons and gw1; the caller stops the backup.
    func startWithBackup(primaryExtra: String = "", backupExtra: String = "") throws -> ChildProcess {
        let backupKey = Identity()
        try backupKey.save(path: dir.file("backup.key"))
        let grant = "[[peer]]\nname = \"gw1\"\nkey = \"\(edgeKeys["gw1"]!.publicKey.hex)\"\nread = [\"*\"]\nwrite = [\"*\"]\n"
        try write("backup.toml", daemonToml("backup", file: "backup", listen: "unix://\(dir.file("backup-link.sock"))", tail: grant))
        try write("gw1.toml", edgeToml("gw1", upstreams: [
            ("primary", "unix://\(dir.file("link.sock"))", daemonKey, 10, primaryExtra),
            ("backup", "unix://\(dir.file("backup-link.sock"))", backupKey, 5, backupExtra),
        ]))
        try startDaemon()
        let backup = try launch("spookd", "backup.toml")
        try startEdge()
        return backup
    }

    func startDaemon(environment: [String: String] = [:]) throws { daemon = try launch("spookd", "spookd.toml", environment: environment) }
    func startEdge(_ name: String = "gw1") throws { edges[name] = try launch("spook-edge", "\(name).toml") }

    func stopEdge(_ name: String = "gw1", signal: Int32 = SIGTERM) {
        if let e = edges[name], !e.stop(signal) { Issue.record("\(name) did not exit within 30 s of signal \(signal)") }
        edges[name] = nil
    }

    func stopDaemon(signal: Int32 = SIGKILL) {
        daemon?.signal(signal)
        daemon?.wait()
        daemon = nil
    }

    func socket(_ who: String) -> String { dir.file("\(who).sock") }

    func api(_ who: String) throws -> APIClient { try APIClient(socket: socket(who)) }

    func call(_ who: String, _ request: JSONValue) throws -> JSONValue {
        let answer = try api(who).call(request)
        guard case .bool(true)? = answer["ok"] else { throw APIClientError("\(who): \(answer["error"]?.string ?? "failed")") }
        return answer
    }

    func set(_ who: String, _ register: String, _ value: JSONValue) throws {
        _ = try call(who, .object(["op": .string("set"), "register": .string(register), "value": value]))
    }

    func value(_ who: String, _ register: String) -> JSONValue? {
        (try? call(who, .object(["op": .string("get"), "register": .string(register)])))?["register"]?["value"]
    }

    func status(_ who: String) throws -> JSONValue { try call(who, .object(["op": .string("status")])) }

    /// Waits for `condition` (state in the daemons) with a deadline.
    func waitFor(_ what: String, seconds: Double = 20, _ condition: () throws -> Bool) throws {
        try waitUntil(what, seconds: seconds, condition)
    }

    func coherent(_ edge: String = "gw1") -> Bool {
        guard case .array(let links)? = (try? status(edge))?["links"] else { return false }
        return links.contains { $0["state"]?.string == "coherent" }
    }

    /// Every process is asked to stop (SIGTERM) and must within 30 s: a
    /// shutdown that hangs is a failure, not a hung test run.
    deinit {
        for (name, e) in edges.sorted(by: { $0.key < $1.key }) where !e.stop() {
            Issue.record("spook-edge \(name) did not exit within 30 s of SIGTERM")
        }
        if let daemon, !daemon.stop() { Issue.record("spookd did not exit within 30 s of SIGTERM") }
    }
}
