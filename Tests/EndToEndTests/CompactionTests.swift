#if canImport(Glibc)
import Glibc
#endif
import SpookNode
import SpookTestSupport
import Testing
import SpookCore
import SpookLink

/// Hardening defect 5: compaction only ever ran in the simulation; every
/// delta stayed on disk for ever, and a peer that never returned pinned the
/// horizon for ever.
@Suite(.serialized) struct CompactionTests {
    static let fast = "[compaction]\ninterval_ms = 100\n"

    func int(_ v: JSONValue?) -> Int { if case .int(let i)? = v { Int(i) } else { -1 } }

    func diskBytes(_ c: Cluster, _ file: String) -> Int {
        ["", "-wal"].reduce(0) { total, suffix in
            var info = stat()
            return total + (stat(c.dir.file(file) + suffix, &info) == 0 ? Int(info.st_size) : 0)
        }
    }

    /// Writes `count` values of 300 bytes pipelined, then waits until the
    /// daemon holds them and both logs are compacted.
    func phase(_ c: Cluster, _ count: Int, tag: String) throws {
        let client = try c.api("gw1")
        let value = JSONValue.string(tag + String(repeating: "d", count: 300))
        for i in 0..<count {
            try client.send(.object(["op": .string("set"), "register": .string("site1.l1/disk/r\(i % 20)"), "value": value]))
            if i % 500 == 499 { for _ in 0..<500 { _ = try client.next(timeoutMs: 20_000) } }
        }
        let origin = c.edgeKeys["gw1"]!.origin.description
        try c.waitFor("the daemon to hold the phase", seconds: 60) {
            let up = int(try c.status("spookd")["vector"]?[origin]), here = int(try c.status("gw1")["vector"]?[origin])
            return up == here
        }
        try c.waitFor("both logs compacted", seconds: 30) {
            let agent = int(try c.status("gw1")["log_deltas"]), daemon = int(try c.status("spookd")["log_deltas"])
            return agent < 500 && daemon < 500
        }
    }

    /// A long stream of writes over a live link keeps both database files
    /// under a fixed size: the second 30,000 writes reuse the pages the first
    /// freed (without compaction each phase adds about 10 MB).
    @Test func aLongStreamKeepsBothStoresBounded() throws {
        let c = try Cluster(extraDaemonToml: Self.fast, edgeExtra: Self.fast)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        try phase(c, 30_000, tag: "a")
        let first = (diskBytes(c, "gw1.db"), diskBytes(c, "spookd.db"))
        try phase(c, 30_000, tag: "b")
        let second = (diskBytes(c, "gw1.db"), diskBytes(c, "spookd.db"))
        print("compaction: agent store \(first.0) → \(second.0) bytes, daemon store \(first.1) → \(second.1) bytes over 2 × 30,000 writes")
        #expect(second.0 <= first.0 + 4 << 20, "the agent's store grew from \(first.0) to \(second.0) bytes")
        #expect(second.1 <= first.1 + 4 << 20, "the daemon's store grew from \(first.1) to \(second.1) bytes")
        #expect(c.value("spookd", "site1.l1/disk/r19") == .string("b" + String(repeating: "d", count: 300)))
    }

    /// A peer silent past the retention no longer holds the horizon back;
    /// when it returns it gets a snapshot and converges.
    @Test func aSilentPeerIsForgottenAfterTheRetentionAndServedASnapshot() throws {
        let c = try Cluster(extraDaemonToml: Self.fast + "peer_retention_s = 1\n")
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let origin = c.edgeKeys["gw1"]!.origin.description
        func peers() throws -> [String] {
            guard case .array(let list)? = try c.call("spookd", .object(["op": .string("peers")]))["peers"] else { return [] }
            return list.compactMap { $0["peer"]?.string }
        }
        #expect(try peers().contains(origin))
        c.edges["gw1"]?.signal(SIGTERM)
        c.edges["gw1"]?.wait()
        for i in 0..<200 { try c.set("spookd", "site1.l1/away/r\(i % 10)", .int(Int64(i))) }
        try c.waitFor("the silent peer forgotten", seconds: 15) { try !peers().contains(origin) }
        try c.waitFor("the daemon's log compacted without it") { int(try c.status("spookd")["log_deltas"]) == 0 }
        try c.startEdge()
        try c.waitFor("the returning agent converged through a snapshot") { c.value("gw1", "site1.l1/away/r9") == .int(199) }
        #expect(try peers().contains(origin), "the agent is a peer again")
    }

    /// `spookctl peers` lists peers; `forget` removes one that is not linked
    /// and refuses one that is.
    @Test func spookctlPeersForget() throws {
        let c = try Cluster(edges: ["gw1", "gw2"])
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.startEdge("gw2")
        try c.waitFor("both edges coherent") { c.coherent("gw1") && c.coherent("gw2") }
        c.edges["gw2"]?.signal(SIGTERM)
        c.edges["gw2"]?.wait()
        let ctl = Cluster.binary("spookctl")
        let gw1 = c.edgeKeys["gw1"]!.origin.description, gw2 = c.edgeKeys["gw2"]!.origin.description
        let list = try ChildProcess(ctl, ["peers", "--socket", c.socket("spookd")])
        var lines: [String] = []
        while let line = try list.readLine(timeoutMs: 10_000) { lines.append(line) }
        #expect(list.wait() == 0)
        #expect(lines.contains { $0.hasPrefix(gw1) && $0.contains("linked (gw1)") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix(gw2) && $0.contains("not linked") }, "\(lines)")
        let linked = try ChildProcess(ctl, ["peers", "forget", gw1, "--socket", c.socket("spookd")])
        #expect(linked.wait() != 0, "a linked peer is not forgotten")
        let forget = try ChildProcess(ctl, ["peers", "forget", gw2, "--socket", c.socket("spookd")])
        #expect(try forget.readLine(timeoutMs: 10_000) == "forgot \(gw2): it no longer holds back compaction")
        #expect(forget.wait() == 0)
        let again = try ChildProcess(ctl, ["peers", "--socket", c.socket("spookd")])
        var after: [String] = []
        while let line = try again.readLine(timeoutMs: 10_000) { after.append(line) }
        #expect(!after.contains { $0.hasPrefix(gw2) } && after.contains { $0.hasPrefix(gw1) }, "\(after)")
    }
}
