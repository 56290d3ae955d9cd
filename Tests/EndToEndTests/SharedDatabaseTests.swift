#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode
import SpookTestSupport
import Testing

/// Several `spookd` on one PostgreSQL database (a private server: initdb in
/// a temporary folder, stopped with the test process).
let agents = ["gw1", "gw2", "gw3", "gw4", "gw5"]

@Suite struct SharedDatabaseTests {

    /// Two daemons ("d1", "d2") on `url`, sharing `spookd.key`, and the five
    /// agents, gw1–gw3 preferring d1 and gw4–gw5 preferring d2.
    static func configure(_ c: Cluster, url: String, compactionMs: Int = 86_400_000) throws {
        var peers = ""
        for name in agents {
            peers += "[[peer]]\nname = \"\(name)\"\nkey = \"\(c.edgeKeys[name]!.publicKey.hex)\"\nread = [\"*\"]\nwrite = [\"site1.*\", \"spook.*\"]\n\n"
        }
        for d in ["d1", "d2"] {
            try c.write("\(d).toml", c.nodeToml(d, file: d, key: c.dir.file("spookd.key"), data: url, sync: "full")
                        + "[compaction]\ninterval_ms = \(compactionMs)\n\n[[listen]]\nurl = \"unix://\(c.dir.file("\(d)-link.sock"))\"\n\n" + peers)
        }
        for (i, name) in agents.enumerated() {
            let (first, second) = i < 3 ? (10, 5) : (5, 10)
            try c.write("\(name).toml", c.edgeToml(name, upstreams: [
                ("d1", "unix://\(c.dir.file("d1-link.sock"))", c.daemonKey, first, ""),
                ("d2", "unix://\(c.dir.file("d2-link.sock"))", c.daemonKey, second, ""),
            ]))
        }
    }

    static func digest(_ c: Cluster, _ who: String) -> String? { (try? c.status(who))?["state_sha256"]?.string }

    /// Writes `count` values (`from`…) to each agent's own counter, pipelined, all acknowledged by the agent.
    static func write(_ c: Cluster, from: Int, count: Int) throws {
        for name in agents {
            let client = try c.api(name)
            for i in from..<(from + count) {
                try client.send(.object(["op": .string("set"), "register": .string("site1.\(name)/data/n"), "value": .int(Int64(i))]))
            }
            for _ in 0..<count {
                guard try client.next(timeoutMs: 30_000)?["ok"] == .bool(true) else { throw APIClientError("\(name): a write was not acknowledged") }
            }
        }
    }

    /// Five agents write while one of two daemons on one database is killed
    /// with -9; its agents fail over to the other. Afterwards (the killed one
    /// restarted) both daemons and every agent hold byte-identical state, and
    /// the database holds each agent's deltas 1…n exactly once.
    @Test func twoDaemonsOnOneDatabaseLoseNothingWhenOneIsKilled() throws {
        let url = try PostgresServer.shared().createDatabase("pair")
        let c = try Cluster(edges: agents)
        try Self.configure(c, url: url)
        c.edges["d1"] = try c.launch("spookd", "d1.toml")
        c.edges["d2"] = try c.launch("spookd", "d2.toml")
        for name in agents { c.edges[name] = try c.launch("spook-edge", "\(name).toml") }
        try c.waitFor("every agent coherent") { agents.allSatisfy { c.coherent($0) } }

        // A write through one daemon is visible through the other, and reaches the agents linked to it.
        try c.set("d1", "site1.hq/plan/target", .int(42))
        try c.waitFor("d1's write through d2 and at gw5") { c.value("d2", "site1.hq/plan/target") == .int(42) && c.value("gw5", "site1.hq/plan/target") == .int(42) }
        try c.set("d2", "site1.hq/plan/target", .int(43))
        try c.waitFor("d2's write through d1 and at gw1") { c.value("d1", "site1.hq/plan/target") == .int(43) && c.value("gw1", "site1.hq/plan/target") == .int(43) }

        try Self.write(c, from: 1, count: 150)
        // Mid-stream: the agents' links are still sending these when d1 dies.
        c.edges["d1"]?.signal(SIGKILL)
        c.edges["d1"]?.wait()
        c.edges["d1"] = nil
        try Self.write(c, from: 151, count: 150)
        try c.set("d2", "site1.hq/plan/target", .int(44))

        let origins = Dictionary(uniqueKeysWithValues: agents.map { ($0, c.edgeKeys[$0]!.origin.description) })
        /// Per agent: its own seq, d2's for it, the target it holds, its links (state, lag).
        func failover(_ name: String) -> (own: Int64, atD2: Int64, target: JSONValue?, caughtUp: Bool, links: [String]) {
            guard case .array(let ls)? = (try? c.status(name))?["links"] else { return (0, 0, nil, false, ["status unanswered"]) }
            let links = ls.map { "\($0["name"]?.string ?? "?") \($0["state"]?.string ?? "?") lag \($0["lag"]?.intValue.map(String.init) ?? "?")" }
            return (c.held(name, of: origins[name]!), c.held("d2", of: origins[name]!), c.value(name, "site1.hq/plan/target"),
                    ls.allSatisfy { $0["lag"] == .int(0) }, links)
        }
        do {
            try c.waitFor("d2 holds every agent's writes, and every agent holds d2's", seconds: 120) {
                agents.allSatisfy { name in
                    let f = failover(name)
                    return f.own == f.atD2 && f.target == .int(44) && f.caughtUp
                }
            }
        } catch {
            Issue.record("\(error): \(agents.map { "\($0) \(failover($0))" }.joined(separator: "; "))")
            throw error
        }
        #expect(agents.allSatisfy { c.value("d2", "site1.\($0)/data/n") == .int(300) })

        // d1 comes back on the same database: it serves the same state.
        c.edges["d1"] = try c.launch("spookd", "d1.toml")
        // As long as the wait above: in the full suite this runs beside the
        // simulations on two cores. A timeout says who differed.
        do {
            try c.waitFor("one state on both daemons and all five agents", seconds: 120) {
                let reference = Self.digest(c, "d2")
                let sameVector = try c.status("d1")["vector"] == c.status("d2")["vector"]
                return reference != nil && sameVector && (["d1"] + agents).allSatisfy { Self.digest(c, $0) == reference }
            }
        } catch {
            let digests = (["d1", "d2"] + agents).map { "\($0) \(Self.digest(c, $0)?.prefix(12) ?? "unanswered")" }
            let vectors = ["d1", "d2"].map { "\($0) vector \((try? c.status($0))?["vector"].map { "\($0)" } ?? "unanswered")" }
            Issue.record("\(error): \((digests + vectors).joined(separator: "; "))")
            throw error
        }
        for name in agents {
            #expect(c.value(name, "site1.gw3/data/n") == .int(300), "\(name)")
            #expect(try Self.history(c, "d1", "site1.\(name)/data/n").prefix(3) == [300, 299, 298], "\(name)'s last values in order")
        }

        // Exactly once: per agent origin the database's vector says n, and its
        // log holds n rows, seqs 1…n (one statement: one snapshot of both).
        let database = PostgresServer.database(of: url)
        let rows = try #require(try PostgresServer.shared().psql(database, """
            SELECT v.origin, v.seq, COUNT(d.seq), MIN(d.seq), MAX(d.seq) FROM vector v LEFT JOIN deltas d ON d.origin = v.origin GROUP BY v.origin, v.seq
            """))
        var perOrigin: [String: [Int64]] = [:]
        for line in rows.split(separator: "\n") {
            let f = line.split(separator: "|").compactMap { Int64($0) }
            guard f.count == 5 else { continue }
            perOrigin[Origin(UInt64(bitPattern: f[0])).description] = Array(f[1...])
        }
        for name in agents {
            let row = try #require(perOrigin[origins[name]!], "\(name)'s origin is in the database's vector")
            let n = row[0]
            #expect(n >= 300, "\(name) wrote 300 values and its status registers")
            #expect(row == [n, n, 1, n], "\(name): vector, then rows (count, first, last): \(row)")
        }
    }

    static func history(_ c: Cluster, _ who: String, _ register: String) throws -> [Int64] {
        let answer = try c.call(who, .object(["op": .string("history"), "register": .string(register)]))
        guard case .array(let entries)? = answer["history"] else { return [] }
        return entries.compactMap { if case .int(let v)? = $0["value"] { v } else { nil } }
    }

    /// A daemon whose key differs from the one the database belongs to is refused at start, with both keys named.
    @Test func aDaemonWithAnotherKeyIsRefused() throws {
        let url = try PostgresServer.shared().createDatabase("other")
        let c = try Cluster(edges: agents)
        try Self.configure(c, url: url)
        c.edges["d1"] = try c.launch("spookd", "d1.toml")
        let stranger = Identity()
        try stranger.save(path: c.dir.file("stranger.key"))
        try c.write("d3.toml", c.nodeToml("d3", file: "d3", key: c.dir.file("stranger.key"), data: url) + "[[listen]]\nurl = \"unix://\(c.dir.file("d3-link.sock"))\"\n")
        let child = try ChildProcess(Cluster.binary("spookd"), ["run", "-c", c.dir.file("d3.toml")], stderrPath: c.dir.file("d3.err"))
        #expect(child.wait() != 0)
        let err = try ConfigFile.read(c.dir.file("d3.err"))
        #expect(err.contains("belongs to the replica whose key begins with \(Array(c.daemonKey.publicKey.prefix(8)).hex)"), "\(err)")
        #expect(err.contains(Array(stranger.publicKey.prefix(8)).hex), "\(err)")
    }

    /// One daemon on `url` and gw1 linked to it, gw1's counter written
    /// 1…50 and seen at the daemon. `write` writes more of it through gw1.
    static func daemonWithAnAgent(url: String) throws -> (c: Cluster, write: (ClosedRange<Int>) throws -> Void) {
        let c = try Cluster(edges: ["gw1"])
        try c.write("d1.toml", c.nodeToml("d1", file: "d1", key: c.dir.file("spookd.key"), data: url, sync: "full")
                    + "[[listen]]\nurl = \"unix://\(c.dir.file("d1-link.sock"))\"\n\n"
                    + "[[peer]]\nname = \"gw1\"\nkey = \"\(c.edgeKeys["gw1"]!.publicKey.hex)\"\nread = [\"*\"]\nwrite = [\"site1.*\", \"spook.*\"]\n")
        try c.write("gw1.toml", c.edgeToml("gw1", upstreams: [("d1", "unix://\(c.dir.file("d1-link.sock"))", c.daemonKey, 0, "")]))
        c.edges["d1"] = try c.launch("spookd", "d1.toml")
        c.edges["gw1"] = try c.launch("spook-edge", "gw1.toml")
        try c.waitFor("gw1 coherent") { c.coherent("gw1") }
        let writer = try c.api("gw1")
        func write(_ range: ClosedRange<Int>) throws {
            for i in range { try writer.send(.object(["op": .string("set"), "register": .string("site1.gw1/data/n"), "value": .int(Int64(i))])) }
            for _ in range { guard try writer.next(timeoutMs: 30_000)?["ok"] == .bool(true) else { throw APIClientError("gw1 refused a write") } }
        }
        try write(1...50)
        try c.waitFor("the first 50 at the daemon") { c.value("d1", "site1.gw1/data/n") == .int(50) }
        return (c, write)
    }

    /// Once the database is reachable again: the daemon holds gw1's 100
    /// writes, and `database` holds each of gw1's deltas exactly once.
    static func expectEveryDeltaOnce(_ c: Cluster, _ pg: PostgresServer, database: String, _ what: String, seconds: Double) throws {
        let origin = c.edgeKeys["gw1"]!.origin
        try c.waitFor(what, seconds: seconds) {
            c.value("d1", "site1.gw1/data/n") == .int(100) && c.held("d1", of: origin.description) == c.held("gw1", of: origin.description)
        }
        let row = try #require(try pg.psql(database, "SELECT v.seq, COUNT(d.seq), MIN(d.seq), MAX(d.seq) FROM vector v JOIN deltas d ON d.origin = v.origin "
                                               + "WHERE v.origin = \(Int64(bitPattern: origin.rawValue)) GROUP BY v.seq"))
        let f = row.split(separator: "|").compactMap { Int64($0) }
        #expect(f.count == 4 && f[0] >= 100 && f == [f[0], f[0], 1, f[0]], "vector, then rows (count, first, last): \(row)")
        #expect(try Self.history(c, "d1", "site1.gw1/data/n").prefix(3) == [100, 99, 98])
    }

    /// PostgreSQL going away is an error the daemon says and retries, never
    /// an acknowledgement: an API write on the daemon is refused naming the
    /// database, the agent keeps what it writes meanwhile, and once the
    /// server is back the database holds every delta of the agent once.
    @Test func aLostDatabaseAcknowledgesNothingAndIsRetried() throws {
        let pg = try PostgresServer()
        defer { pg.stop() }
        let url = try pg.createDatabase("lost")
        let (c, write) = try Self.daemonWithAnAgent(url: url)

        pg.halt()
        let refused = try c.api("d1").call(.object(["op": .string("set"), "register": .string("site1.hq/x/y"), "value": .int(1)]))
        #expect(refused["ok"] == .bool(false), "a write the database did not commit was acknowledged")
        #expect(refused["error"]?.string?.contains("database") == true, "\(refused)")
        try write(51...100)
        #expect(c.value("gw1", "site1.gw1/data/n") == .int(100), "the agent keeps working")
        #expect(c.value("d1", "site1.gw1/data/n") == .int(50), "nothing reaches the daemon's state without the database")

        try pg.start()
        let database = PostgresServer.database(of: url)
        try Self.expectEveryDeltaOnce(c, pg, database: database, "everything at the daemon once the database is back", seconds: 60)
    }

    /// A network to PostgreSQL that drops packets without a reset (a
    /// firewall, a pulled cable) leaves the connection up with nothing on it.
    /// The daemon does not wait forever: past `answerTimeout` the call fails
    /// naming the silence, the connection is closed and opened again, and
    /// once the network is back the database holds every delta of the agent
    /// exactly once.
    @Test func aSilentNetworkToTheDatabaseIsDroppedAndRetried() throws {
        let pg = try PostgresServer.shared()
        let direct = try pg.createDatabase("silent")
        let database = PostgresServer.database(of: direct)
        let proxy = try CuttableProxy(to: pg.port)
        let url = "postgres://spook@127.0.0.1:\(proxy.port)/\(database)"
        let (c, write) = try Self.daemonWithAnAgent(url: url)

        proxy.blackhole()
        let refused = try c.api("d1").call(.object(["op": .string("set"), "register": .string("site1.hq/x/y"), "value": .int(1)]), timeoutMs: 90_000)
        #expect(refused["ok"] == .bool(false), "a write the database did not answer for was acknowledged: \(refused)")
        // Refused with the silence's own error: the transaction's statement
        // went unanswered, or (when a heartbeat's query met the silence first
        // and closed the connection) the new connection's startup did.
        let error = refused["error"]?.string ?? ""
        #expect(error.contains("database-unavailable: \(url): ")
                && (error.contains("cannot begin a transaction: no answer from the server within 10 s") || error.contains("cannot connect: connectionError: Connect timeout")),
                "\(refused)")
        try write(51...100)
        #expect(c.value("gw1", "site1.gw1/data/n") == .int(100), "the agent keeps working")

        proxy.heal()
        try Self.expectEveryDeltaOnce(c, pg, database: database, "everything at the daemon once the network is back", seconds: 90)
    }
}
