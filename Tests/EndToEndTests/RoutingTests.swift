#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookWire
import SpookNode
import SpookTestSupport
import Testing

extension Cluster {
    /// What `who` holds of `origin`'s deltas.
    func held(_ who: String, of origin: String) -> Int64 {
        if case .int(let n)? = (try? status(who))?["vector"]?[origin] { return n }
        return 0
    }
}

@Suite struct RoutingTests {
    /// A daemon sends a peer only the groups its read grant allows and its
    /// HELLO subscribed to; the rest holds its place, withheld, so the peer's
    /// vector still covers every delta and nothing behind a withheld one waits.
    @Test func readGrantsAndSubscriptionsDecideWhatAPeerSees() throws {
        let c = try Cluster(edges: ["gw1", "gw2", "gw3"], grants: ["gw1": ["site1.*", "site2.*", "spook.*"]], reads: ["gw2": ["site2.*"]])
        // gw3 may read everything but subscribes to site1.* only (its upstream's domains).
        try c.write("gw3.toml", c.edgeToml("gw3", upstreams: [("primary", c.edgeLink, c.daemonKey, 0, "domains = [\"site1.*\"]")]))
        try c.startDaemon()
        for e in ["gw1", "gw2", "gw3"] { try c.startEdge(e) }
        try c.set("gw1", "site1.l1/a/x", .int(1))
        try c.set("gw1", "site2.l1/b/y", .int(2))
        try c.set("gw1", "site1.l1/a/z", .int(3))
        let origin = c.edgeKeys["gw1"]!.origin.description
        let written = c.held("gw1", of: origin)
        // At least: gw1 goes on writing its own registers ($lag at a heartbeat), which may arrive too.
        try c.waitFor("gw2 and gw3 hold all of gw1's deltas") { c.held("gw2", of: origin) >= written && c.held("gw3", of: origin) >= written }
        // gw2 reads site2 only; gw3 subscribed to site1 only.
        #expect(c.value("gw2", "site2.l1/b/y") == .int(2))
        #expect(c.value("gw2", "site1.l1/a/x") == nil && c.value("gw2", "site1.l1/a/z") == nil)
        #expect(c.value("gw3", "site1.l1/a/x") == .int(1) && c.value("gw3", "site1.l1/a/z") == .int(3))
        #expect(c.value("gw3", "site2.l1/b/y") == nil)
        // The placeholders are bookkeeping, not registers an application lists.
        let listed = try c.call("gw2", .object(["op": .string("list"), "prefix": .string("")]))["registers"]
        guard case .array(let registers)? = listed else { throw APIClientError("no list") }
        #expect(!registers.contains { ($0["register"]?.string ?? "").hasPrefix("spook/withheld") })
        #expect(registers.contains { $0["register"]?.string == "site2.l1/b/y" })
        // gw3 sends upstream only its domains: its site9 write stays on the gateway, the next one arrives.
        try c.set("gw3", "site9.l1/c/secret", .int(9))
        try c.set("gw3", "site1.l1/c/public", .int(10))
        try c.waitFor("gw3's site1 write upstream") { c.value("spookd", "site1.l1/c/public") == .int(10) }
        #expect(c.value("spookd", "site9.l1/c/secret") == nil)
        #expect(c.value("gw3", "site9.l1/c/secret") == .int(9), "the agent keeps its own write")
    }

    /// QRoute per domain: the agent's site1 deltas go to the primary, which
    /// carries site1.*; the backup carries "*", which the primary does not
    /// cover, so it is not standby and gets everything.
    @Test func eachDomainGoesToTheUpstreamsThatCarryIt() throws {
        let c = try Cluster(edges: ["gw1"])
        let backup = try c.startWithBackup(primaryExtra: "domains = [\"site1.*\"]", backupExtra: "domains = [\"*\"]")
        defer { backup.signal(SIGTERM); backup.wait() }
        let origin = c.edgeKeys["gw1"]!.origin.description
        for i in 0..<10 {
            try c.set("gw1", "site1.l1/a/r\(i)", .int(Int64(i)))
            try c.set("gw1", "site2.l1/b/r\(i)", .int(Int64(100 + i)))
        }
        let written = c.held("gw1", of: origin)
        // At least: the agent goes on writing its own registers ($lag at a
        // heartbeat), which may arrive too (withheld at the primary).
        try c.waitFor("both daemons hold every delta of the agent") { c.held("spookd", of: origin) >= written && c.held("backup", of: origin) >= written }
        #expect(c.value("spookd", "site1.l1/a/r9") == .int(9))
        #expect(c.value("spookd", "site2.l1/b/r9") == nil, "the primary does not carry site2")
        #expect(c.value("backup", "site1.l1/a/r9") == .int(9) && c.value("backup", "site2.l1/b/r9") == .int(109))
    }
}

@Suite struct WithheldSecurityTests {
    /// A peer may withhold its own deltas, never another origin's: a
    /// placeholder for someone else's seq would shadow the real delta.
    @Test func aPlaceholderForAnotherOriginIsRefused() throws {
        let c = try Cluster(edges: ["gw1", "gw2"])
        try c.startDaemon()
        let victim = c.edgeKeys["gw1"]!.origin
        let forged = Withheld.redact(try Delta(origin: victim, seq: 1, hlc: HLCTimestamp(ms: 1_000, counter: 0),
                                               group: try QGroupName("site1.l1/x"), writes: [Write("y", .set, .int(1))]))
        let gw2 = try RawPeer(socket: c.dir.file("link.sock"), identity: c.edgeKeys["gw2"]!, daemonKey: c.daemonKey.publicKey)
        guard case .error(let code, let text) = try gw2.deliver(forged) else { Issue.record("a placeholder for another origin was held"); return }
        #expect(code == .forbidden && text.contains("of another origin"), "\(text)")
        // gw1's real first delta is still taken.
        try c.startEdge("gw1")
        try c.set("gw1", "site1.l1/x/y", .int(7))
        try c.waitFor("gw1's write upstream") { c.value("spookd", "site1.l1/x/y") == .int(7) }
    }
}
