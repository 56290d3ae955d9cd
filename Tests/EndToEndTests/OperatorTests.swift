#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookCore
import SpookLink
import SpookNode
import SpookTestSupport
import Testing

/// Everyday operator actions on a running agent (issue "Ready for a real gateway").
@Suite(.serialized) struct OperatorTests {
    static func device(_ name: String, _ link: String) -> String {
        "[[device]]\nname = \"\(name)\"\nkind = \"serial\"\nport = \"\(link)\"\ngroup = \"site1.dev/\(name)\"\n"
    }

    func rewriteEdge(_ c: Cluster, _ extra: String) throws {
        try c.write("gw1.toml", c.edgeToml("gw1", upstreams: [("primary", c.edgeLink, c.daemonKey, 0, "")], extra: extra))
    }

    /// SIGHUP reloads the config: a device added and one removed while the
    /// agent runs; a config with errors, or one that changes what cannot
    /// change live, is refused and the running one stays. (SIGHUP used to
    /// kill the agent: exit 129, no CLOSE, its socket left behind.)
    @Test func sighupReloadsDevicesAndRefusesWhatItCannotApply() throws {
        let dir = TemporaryDirectory()
        let simA = try FirmwareSim(link: dir.file("ttyA"), ["--count", "3"])
        defer { simA.stop() }
        let simB = try FirmwareSim(link: dir.file("ttyB"), ["--count", "5"])
        defer { simB.stop() }
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema,
                            edgeExtra: deviceSchema + Self.device("a", dir.file("ttyA")), directory: dir)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("device a upstream") { c.value("spookd", "site1.dev/a/counter") == .int(3) }
        // b added, a removed.
        try rewriteEdge(c, deviceSchema + Self.device("b", dir.file("ttyB")) + "[log]\nlevel = \"debug\"\n")
        c.edges["gw1"]?.signal(SIGHUP)
        try c.waitFor("device b upstream after the reload") { c.value("spookd", "site1.dev/b/counter") == .int(5) }
        try c.waitFor("device a dissolved") { c.value("gw1", "site1.dev/a/$state") == .string("closed") }
        #expect(c.value("gw1", "site1.dev/a/counter") == .int(3), "a dissolved device keeps its values")
        // A config with an error: refused, nothing changes, the agent serves on.
        try c.write("gw1.toml", "[node]\nname = \"gw1\"\nthis is not TOML\n")
        c.edges["gw1"]?.signal(SIGHUP)
        // A config that changes the node's name cannot be applied live: refused too.
        try rewriteEdge(c, deviceSchema + Self.device("a", dir.file("ttyA")))
        try c.write("gw1.toml", String(try String(contentsOfFile: dir.file("gw1.toml"), encoding: .utf8).replacingOccurrences(of: "name = \"gw1\"", with: "name = \"gw9\"")))
        c.edges["gw1"]?.signal(SIGHUP)
        try c.set("gw1", "site1.l1/after/reload", .int(1))
        try c.waitFor("the agent still serves and syncs") { c.value("spookd", "site1.l1/after/reload") == .int(1) }
        #expect(try c.status("gw1")["node"] == .string("gw1"))
        #expect(c.value("gw1", "site1.dev/b/$online") == .bool(true), "device b still runs: the refused configs changed nothing")
        #expect(c.value("gw1", "site1.dev/a/$state") == .string("closed"))
    }

    /// SIGHUP applies [[upstream]] changes: the upstream pointed elsewhere
    /// (the agent leaves its daemon, and what it writes waits), then renamed
    /// and pointed back (the new HalfPair links, the waiting write arrives,
    /// the old one's `$state` is "closed").
    @Test func sighupAppliesUpstreamChanges() throws {
        let metrics = try CuttableProxy.freePort()
        let extra = "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n"
        let c = try Cluster(edgeExtra: extra)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the agent upstream") { c.value("spookd", "spook.gw1/primary/$state") == .string("coherent") }
        let reconnects = { MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_reconnects_total") ?? 0 }
        try c.write("gw1.toml", c.edgeToml("gw1", upstreams: [("primary", "unix://\(c.dir.file("nowhere.sock"))", c.daemonKey, 0, "")], extra: extra))
        c.edges["gw1"]?.signal(SIGHUP)
        try c.waitFor("the agent left its daemon") { c.value("gw1", "spook.gw1/primary/$state") != .string("coherent") }
        let before = try reconnects()
        try c.set("gw1", "site1.l1/moved/r", .int(7))
        try c.waitFor("two more attempts at the new address") { try reconnects() >= before + 2 }
        #expect(c.value("spookd", "site1.l1/moved/r") == nil, "an upstream pointed nowhere receives nothing")
        try c.write("gw1.toml", c.edgeToml("gw1", upstreams: [("main", c.edgeLink, c.daemonKey, 0, "")], extra: extra))
        c.edges["gw1"]?.signal(SIGHUP)
        try c.waitFor("the renamed upstream linked, and the waiting write upstream") {
            c.value("spookd", "site1.l1/moved/r") == .int(7) && c.value("gw1", "spook.gw1/main/$state") == .string("coherent")
        }
        #expect(c.value("gw1", "spook.gw1/primary/$state") == .string("closed"))
        #expect(try c.status("gw1")["node"] == .string("gw1"))
    }

    /// One instance per store: a second agent on the same `data` stops with
    /// a message naming the running one (pid), and never disturbs it (it
    /// used to take the API socket away).
    @Test func aSecondAgentOnTheSameStoreRefusesAndLeavesTheFirstRunning() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let log = c.dir.file("second.stderr")
        let second = try ChildProcess(Cluster.binary("spook-edge"), ["run", "-c", c.dir.file("gw1.toml")], stderrPath: log)
        #expect(second.exitCode() == 73)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(text.contains("is in use by another spook-edge (pid \(c.edges["gw1"]!.pid)"), "\(text)")
        try c.set("gw1", "site1.l1/still/here", .int(1))
        try c.waitFor("the first agent still serves") { c.value("spookd", "site1.l1/still/here") == .int(1) }
    }

    /// `--version` on every binary, and in `status`.
    @Test func everyBinaryTellsItsVersion() throws {
        for binary in ["spookd", "spook-edge", "spookctl"] {
            let p = try ChildProcess(Cluster.binary(binary), ["--version"])
            #expect(try p.readLine() == SpookVersion.string, "\(binary) --version")
            #expect(p.wait() == 0)
        }
        let c = try Cluster()
        try c.startDaemon()
        #expect(try c.status("spookd")["version"] == .string(SpookVersion.string))
    }

    /// Under systemd (JOURNAL_STREAM names stderr) every log line starts with
    /// its sd-daemon priority; `[log] level` sets the level, and an unknown
    /// `--log-level` is a config error (exit 78), not `info`.
    @Test func logLinesCarryJournalPrioritiesAndLevelsAreChecked() throws {
        let c = try Cluster(edgeExtra: "[log]\nlevel = \"debug\"\n")
        let log = c.dir.file("edge.stderr")
        close(open(log, O_WRONLY | O_CREAT, 0o600))
        var info = stat()
        stat(log, &info)
        let edge = try ChildProcess(Cluster.binary("spook-edge"), ["run", "-c", c.dir.file("gw1.toml")],
                                    environment: ["JOURNAL_STREAM": "\(info.st_dev):\(info.st_ino)"], stderrPath: log)
        #expect(try edge.readLine(timeoutMs: 20_000)?.contains("ready") == true)
        // No daemon is up: the agent logs its failed connects (info) and debug lines.
        try waitUntil("journal lines") { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("<7>debug") }
        edge.signal(SIGTERM)
        #expect(edge.wait() == 0)
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { $0.hasPrefix("<") }, "every line has a priority: \(lines.prefix(3))")
        #expect(lines.contains { $0.hasPrefix("<5>notice") }, "stopping is a notice")
        let bad = try ChildProcess(Cluster.binary("spook-edge"), ["run", "-c", c.dir.file("gw1.toml"), "--log-level", "loud"],
                                   stderrPath: c.dir.file("bad.stderr"))
        #expect(bad.exitCode() == 78)
        #expect(((try? String(contentsOfFile: c.dir.file("bad.stderr"), encoding: .utf8)) ?? "").contains("unknown log level \"loud\""))
    }
}

@Suite(.serialized) struct OperatorDefaultsTests {
    /// udev waits for RUN programs: `spookctl attach` gives up after 2 s when
    /// the agent does not answer (here: a socket that accepts and never
    /// answers), with exit 75 and a sentence, instead of hanging for 30 s.
    @Test func attachGivesUpFastWhenTheAgentDoesNotAnswer() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("mute.sock")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0 && listen(fd, 4) == 0)
        let started = monotonicMs()
        let ctl = try ChildProcess(Cluster.binary("spookctl"), ["attach", "--socket", path], environment: ["DEVNAME": "/dev/ttyACM0"],
                                   stderrPath: dir.file("ctl.stderr"))
        #expect(ctl.exitCode() == 75)
        let elapsed = monotonicMs() - started
        #expect(elapsed < 10_000, "spookctl attach took \(elapsed) ms")
        #expect(((try? String(contentsOfFile: dir.file("ctl.stderr"), encoding: .utf8)) ?? "").contains("no answer from the agent"))
    }

    /// `spookctl watch` exits 69 with a sentence when the node goes away
    /// (a script must not take a stopped agent for a finished watch), and 0
    /// after --count changes.
    @Test func watchExitsNonZeroWhenTheNodeGoesAway() throws {
        let c = try Cluster()
        try c.startEdge()
        let counted = try ChildProcess(Cluster.binary("spookctl"), ["watch", "site1.l1/w/", "--count", "1", "--json", "--socket", c.socket("gw1")])
        #expect(try counted.readLine()?.contains("\"ok\":true") == true)
        try c.set("gw1", "site1.l1/w/r", .int(1))
        #expect(counted.wait() == 0)
        let watch = try ChildProcess(Cluster.binary("spookctl"), ["watch", "site1.l1/w/", "--json", "--socket", c.socket("gw1")],
                                     stderrPath: c.dir.file("watch.stderr"))
        #expect(try watch.readLine()?.contains("\"ok\":true") == true)
        c.stopEdge()
        #expect(watch.exitCode() == 69)
        #expect(((try? String(contentsOfFile: c.dir.file("watch.stderr"), encoding: .utf8)) ?? "").contains("the node closed the connection"))
    }

    /// A [[peer]] may write its own status registers (spook.<name>) without
    /// listing them: an agent whose grant names only its data domains used
    /// to be refused in a reconnect loop ("may not write spook.…").
    @Test func aPeerMayWriteItsOwnStatusRegistersByDefault() throws {
        let c = try Cluster(grants: ["gw1": ["site1.*"]])
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        try c.waitFor("its $state upstream") { c.value("spookd", "spook.gw1/primary/$state") == .string("coherent") }
        try c.set("gw1", "site1.l1/grant/r", .int(1))
        try c.waitFor("its data upstream") { c.value("spookd", "site1.l1/grant/r") == .int(1) }
    }
}

@Suite(.serialized) struct HealthTests {
    /// `/healthz` says whether the store answers and, on an agent, whether an
    /// upstream is coherent (503 until then); `/metrics` carries spook_build_info.
    @Test func healthzFollowsTheLinksAndMetricsCarryTheBuild() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(port)\"\n")
        try c.startEdge()
        let down = try MetricsTests.get(port, "/healthz")
        #expect(down.hasPrefix("HTTP/1.1 503") && down.contains("\"healthy\":false"), "\(down)")
        try c.startDaemon()
        try c.waitFor("healthy once the upstream is coherent") { try MetricsTests.get(port, "/healthz").hasPrefix("HTTP/1.1 200") }
        let up = try MetricsTests.get(port, "/healthz")
        #expect(up.contains("\"store\":\"ok\"") && up.contains("\"state\":\"coherent\""), "\(up)")
        #expect(try MetricsTests.get(port, "/metrics").contains("spook_build_info{version=\"\(SpookVersion.string)\"} 1"))
    }
}

/// SIGHUP on a daemon: [[peer]] tables and TLS certificate files apply live.
@Suite(.serialized) struct DaemonReloadTests {
    /// A peer removed from the daemon's config is sent CLOSE and refused when
    /// it reconnects; added back, it links again. The other peer never stops.
    @Test func sighupAppliesPeerChanges() throws {
        let c = try Cluster(edges: ["gw1", "gw2"])
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.startEdge("gw2")
        try c.waitFor("both agents upstream") {
            c.value("spookd", "spook.gw1/primary/$state") == .string("coherent") && c.value("spookd", "spook.gw2/primary/$state") == .string("coherent")
        }
        let full = try String(contentsOfFile: c.dir.file("spookd.toml"), encoding: .utf8)
        // The config without gw2's [[peer]] table.
        let gw2Key = c.edgeKeys["gw2"]!.publicKey.hex
        let tables = full.components(separatedBy: "[[peer]]")
        let without = tables[0] + tables.dropFirst().filter { !$0.contains(gw2Key) }.map { "[[peer]]" + $0 }.joined()
        #expect(without != full)
        let states = { try c.history("gw2", "spook.gw2/primary/$state").count }
        let statesBefore = try states()
        try c.write("spookd.toml", without)
        c.daemon?.signal(SIGHUP)
        try c.waitFor("gw2 is no longer linked") { c.value("gw2", "spook.gw2/primary/$state") != .string("coherent") }
        try c.set("gw2", "site1.l1/gw2/while-removed", .int(1))
        try c.set("gw1", "site1.l1/gw1/still", .int(1))
        try c.waitFor("gw1 still syncs") { c.value("spookd", "site1.l1/gw1/still") == .int(1) }
        // gw2 keeps trying (its HalfPair moves on each attempt) and is refused each time: its write never arrives.
        try c.waitFor("gw2 tried again, more than once", seconds: 30) { try states() >= statesBefore + 4 }
        #expect(c.value("spookd", "site1.l1/gw2/while-removed") == nil)
        #expect(c.value("gw2", "spook.gw2/primary/$state") != .string("coherent"))
        try c.write("spookd.toml", full)
        c.daemon?.signal(SIGHUP)
        try c.waitFor("gw2 back, and its write upstream", seconds: 40) { c.value("spookd", "site1.l1/gw2/while-removed") == .int(1) }
    }

    /// A TLS listener's certificate is re-read: an agent that trusts only
    /// another CA is refused, until the daemon's files are replaced by a
    /// certificate from that CA and the daemon gets SIGHUP.
    @Test func sighupRereadsTLSCertificates() throws {
        let c = try TransportTests.cluster(.tls, trust: "otherca")
        try c.startDaemon()
        try c.startEdge()
        try c.set("gw1", "site1.l1/tls/after-renewal", .int(1))
        try c.waitFor("the agent refuses the daemon's certificate") {
            let state = c.value("gw1", "spook.gw1/primary/$state")
            return state != nil && state != .string("coherent") && state != .string("entangling") && c.value("spookd", "site1.l1/tls/after-renewal") == nil
        }
        // A certificate for localhost from the CA the agent trusts, moved over the daemon's files.
        let dir = c.dir
        try TestCertificates.server(in: dir.path, ca: "otherca", name: "renewed")
        #expect(rename(dir.file("renewed.key"), dir.file("server.key")) == 0 && rename(dir.file("renewed.pem"), dir.file("server.pem")) == 0)
        c.daemon?.signal(SIGHUP)
        try c.waitFor("the agent links with the renewed certificate", seconds: 40) { c.value("spookd", "site1.l1/tls/after-renewal") == .int(1) }
    }
}
