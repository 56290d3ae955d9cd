#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode
import SpookTestSupport
import Testing

/// Daemon hierarchies: device registers on an agent (`gw1`) reach a site
/// daemon (`site1`) and, through its `[[upstream]]`, a central daemon; desired
/// values set at the centre come down the same two hops. Each hop runs
/// through its own cuttable TCP proxy.
@Suite struct HierarchyTests {
    /// The three processes' configs, written into `c`'s folder (files named after the node).
    static func threeTiers(_ c: Cluster, centralPort: Int, toCentral: Int, sitePort: Int, toSite: Int,
                           agentWrites: String = "\"site1.*\"", centralExtra: String = "") throws -> (central: Identity, site: Identity) {
        let central = Identity(), site = Identity()
        try central.save(path: c.dir.file("central.key"))
        try site.save(path: c.dir.file("site1.key"))
        let gw1 = try #require(c.edgeKeys["gw1"])
        // Both daemons know the desired side: "site1.*" registers of group "pump" follow the device policy.
        let pumps = "[[register]]\ndomain = \"site1.*\"\ngroup = \"pump\"\npolicy = \"device\"\n\n"
        try c.write("central.toml", c.daemonToml("central", file: "central", listen: "tcp://127.0.0.1:\(centralPort)", tail: pumps + centralExtra + """
            [[peer]]
            name = "site1"
            key = "\(site.publicKey.hex)"
            relay = true
            read = ["*"]
            write = ["site1.*", "spook.*"]
            owns = ["site1.*"]

            """))
        try c.write("site1.toml", c.daemonToml("site1", file: "site1", listen: "tcp://127.0.0.1:\(sitePort)", tail: pumps + """
            [reconnect]
            base_ms = 50
            cap_ms = 400

            [[peer]]
            name = "gw1"
            key = "\(gw1.publicKey.hex)"
            read = ["*"]
            write = [\(agentWrites)]
            owns = ["site1.*"]

            [[upstream]]
            name = "central"
            url = "tcp://127.0.0.1:\(toCentral)"
            key = "\(central.publicKey.hex)"

            """))
        try c.write("gw1.toml", c.edgeToml("gw1", upstreams: [("site", "tcp://127.0.0.1:\(toSite)", site, 0, "")], extra: pumps))
        return (central, site)
    }

    /// Newest-first history of `register`'s `side` on `who`, as integers.
    static func history(_ c: Cluster, _ who: String, _ register: String, side: String) throws -> [Int64] {
        let answer = try c.call(who, .object(["op": .string("history"), "register": .string(register)]))
        guard case .array(let entries)? = answer["history"] else { return [] }
        return entries.compactMap { e in
            guard e["side"]?.string == side, case .int(let v)? = e["value"] else { return nil }
            return v
        }
    }

    static func upstreamCoherent(_ c: Cluster, _ who: String, _ link: String) -> Bool {
        guard case .array(let links)? = (try? c.status(who))?["links"] else { return false }
        return links.contains { $0["name"]?.string == link && $0["state"]?.string == "coherent" }
    }

    /// Values written on the agent while one hop is cut, and desired values
    /// set at the centre, cross both hops once each, in order, after each heal;
    /// at the end the three stores hold the same vector and registers.
    @Test func valuesGoUpAndDesiredValuesComeDownThroughPartitionsAtEachHop() throws {
        let c = try Cluster(edges: ["gw1"], history: 256)
        let centralPort = try CuttableProxy.freePort(), sitePort = try CuttableProxy.freePort()
        let toCentral = try CuttableProxy(to: centralPort), toSite = try CuttableProxy(to: sitePort)
        _ = try Self.threeTiers(c, centralPort: centralPort, toCentral: toCentral.port, sitePort: sitePort, toSite: toSite.port)
        c.edges["central"] = try c.launch("spookd", "central.toml")
        c.edges["site1"] = try c.launch("spookd", "site1.toml")
        c.edges["gw1"] = try c.launch("spook-edge", "gw1.toml")
        try c.waitFor("both hops coherent") { Self.upstreamCoherent(c, "site1", "central") && Self.upstreamCoherent(c, "gw1", "site") }

        // Up and down through both hops.
        try c.set("gw1", "site1.l1/sensor/level", .int(0))
        try c.set("central", "site1.l1/pump/speed", .int(0))
        try c.waitFor("a value up to the centre and a desired value down to the agent") {
            c.value("central", "site1.l1/sensor/level") == .int(0) && c.value("gw1", "site1.l1/pump/speed") != nil
                && (try? c.call("gw1", .object(["op": .string("get"), "register": .string("site1.l1/pump/speed")])))?["register"]?["desired"]?["value"] == .int(0)
        }
        // The site daemon's own HalfPair registers reach the centre too.
        try c.waitFor("the site's $online at the centre") { c.value("central", "spook.site1/central/$online") == .bool(true) }

        var up: Int64 = 0, down: Int64 = 0
        for (hop, proxy, noticed) in [("site ↔ central", toCentral, { !Self.upstreamCoherent(c, "site1", "central") }),
                                       ("agent ↔ site", toSite, { !Self.upstreamCoherent(c, "gw1", "site") })] {
            proxy.partition()
            try c.waitFor("the \(hop) partition noticed") { noticed() }
            for _ in 0..<40 {
                up += 1
                try c.set("gw1", "site1.l1/sensor/level", .int(up))
            }
            for _ in 0..<15 {
                down += 1
                try c.set("central", "site1.l1/pump/speed", .int(down))
            }
            #expect(c.value("central", "site1.l1/sensor/level") != .int(up), "a value crossed the cut \(hop) hop")
            proxy.heal()
            try c.waitFor("the last value up and the last desired value down after the \(hop) heal", seconds: 30) {
                c.value("central", "site1.l1/sensor/level") == .int(up)
                    && (try? c.call("gw1", .object(["op": .string("get"), "register": .string("site1.l1/pump/speed")])))?["register"]?["desired"]?["value"] == .int(down)
            }
        }

        // Exactly once, in order: each history (newest first) is every value once, nothing repeated or reordered.
        let levelHistory = Array((0...up).reversed())
        let speedHistory = Array((0...down).reversed())
        for who in ["gw1", "site1", "central"] {
            #expect(try Self.history(c, who, "site1.l1/sensor/level", side: "value") == levelHistory, "\(who)")
            #expect(try Self.history(c, who, "site1.l1/pump/speed", side: "desired") == speedHistory, "\(who)")
        }
        // Converged: the same vector and the same registers on all three tiers.
        try c.waitFor("one vector on all three tiers") {
            let v = try c.status("central")["vector"]
            return try c.status("site1")["vector"] == v && c.status("gw1")["vector"] == v
        }
        let list = JSONValue.object(["op": .string("list"), "prefix": .string("site1.")])
        let central = try c.call("central", list)["registers"]
        #expect(try c.call("site1", list)["registers"] == central)
        #expect(try c.call("gw1", list)["registers"] == central)
    }

    /// The centre holds the site daemon to its grant for relayed deltas as
    /// for its own: an agent's write outside it is held withheld, never
    /// applied, counted against the site; the site's link stays up (the
    /// writer is below it).
    @Test func aRelayIsHeldToItsWriteGrant() throws {
        let c = try Cluster(edges: ["gw1"])
        let centralPort = try CuttableProxy.freePort(), sitePort = try CuttableProxy.freePort()
        // The site lets the agent write site2 too; the centre does not let the site.
        let metrics = try CuttableProxy.freePort()
        _ = try Self.threeTiers(c, centralPort: centralPort, toCentral: centralPort, sitePort: sitePort, toSite: sitePort,
                                agentWrites: "\"site1.*\", \"site2.*\"", centralExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n\n")
        c.edges["central"] = try c.launch("spookd", "central.toml")
        c.edges["site1"] = try c.launch("spookd", "site1.toml")
        c.edges["gw1"] = try c.launch("spook-edge", "gw1.toml")
        try c.set("gw1", "site2.l1/x/forbidden", .int(1))
        try c.set("gw1", "site1.l1/x/allowed", .int(2))
        try c.waitFor("the allowed write at the centre") { c.value("central", "site1.l1/x/allowed") == .int(2) }
        #expect(c.value("site1", "site2.l1/x/forbidden") == .int(1), "the site's own grant allows it")
        #expect(c.value("central", "site2.l1/x/forbidden") == nil, "the centre's grant for the site does not")
        let origin = c.edgeKeys["gw1"]!.origin.description
        try c.waitFor("the centre holds every seq of the agent (the refused one withheld)") { c.held("central", of: origin) == c.held("gw1", of: origin) }
        let text = try MetricsTests.get(metrics, "/metrics")
        #expect(text.contains("spook_writes_refused_total{peer=\"site1\"} 1"), "\(text)")
        #expect(!text.contains("spook_links_refused_total{code=\"forbidden\"}"), "the relay's link was refused")
        #expect(Self.upstreamCoherent(c, "site1", "central"))
    }
}
