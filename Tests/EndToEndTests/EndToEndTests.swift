#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode
import SpookStore
import SpookTestSupport
import SpookWire
import Testing

/// End to end with the real executables: spookd, spook-edge, spookctl.
@Suite(.serialized) struct EndToEndTests {
    @Test func writesFlowFromEdgeToUpstreamAndBack() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        try c.set("gw1", "site1.l1/pump/speed", .int(1200))
        try c.waitFor("speed upstream") { c.value("spookd", "site1.l1/pump/speed") == .int(1200) }
        try c.set("spookd", "site1.l1/pump/mode", .string("auto"))
        try c.waitFor("mode on the edge") { c.value("gw1", "site1.l1/pump/mode") == .string("auto") }
        // The HalfPair reports on itself through its own registers, upstream too.
        try c.waitFor("$state upstream") { c.value("spookd", "spook.gw1/primary/$state") == .string("coherent") }
        #expect(c.value("spookd", "spook.gw1/primary/$online") == .bool(true))
    }

    @Test func spookctlReadsWritesAndWatches() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let ctl = Cluster.binary("spookctl")
        let watch = try ChildProcess(ctl, ["watch", "--json", "--socket", c.socket("spookd"), "site1.l1/", "--count", "2"])
        // The first line acknowledges the watch: only then write.
        let ack = try JSONValue.parse(Array((try watch.readLine(timeoutMs: 20_000) ?? "").utf8))
        #expect(ack["ok"] == .bool(true) && ack["watching"] == .string("site1.l1/"))
        let set = try ChildProcess(ctl, ["set", "--socket", c.socket("gw1"), "site1.l1/pump/speed", "1500"])
        let written = try set.readLine()
        #expect(written?.hasPrefix("site1.l1/pump/speed: written as \(c.edgeKeys["gw1"]!.origin)#") == true, "\(written ?? "-")")
        #expect(set.wait() == 0)
        _ = try ChildProcess(ctl, ["set", "--socket", c.socket("gw1"), "site1.l1/pump/temp", "21.5"]).wait()
        let events = try (0..<2).map { _ in try JSONValue.parse(Array((try watch.readLine(timeoutMs: 20_000) ?? "").utf8)) }
        #expect(events.map { $0["event"] } == [.string("change"), .string("change")])
        #expect(events[0]["register"]?["register"] == .string("site1.l1/pump/speed") && events[0]["register"]?["value"] == .int(1500))
        #expect(events[1]["register"]?["register"] == .string("site1.l1/pump/temp") && events[1]["register"]?["value"] == .object(["float": .double(21.5)]))
        // The same change, as a person reads it.
        let get = try ChildProcess(ctl, ["get", "--socket", c.socket("spookd"), "site1.l1/pump/speed"])
        #expect(try get.readLine()?.hasPrefix("site1.l1/pump/speed = 1500 @") == true)
        #expect(watch.wait() == 0)
        let bad = try ChildProcess(ctl, ["set", "--socket", c.socket("gw1"), "site1.l1/Pump/speed", "1"])
        #expect(bad.wait() != 0, "an invalid name must fail")
    }

    @Test func concurrentWritesOnBothSidesCollapseIdentically() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let edge = try c.api("gw1"), up = try c.api("spookd")
        for i in 0..<300 {
            // Both sides write the same registers, pipelined, without waiting.
            try edge.send(.object(["op": .string("set"), "register": .string("site1.l1/mix/r\(i % 7)"), "value": .int(Int64(i))]))
            try up.send(.object(["op": .string("set"), "register": .string("site1.l1/mix/r\(i % 7)"), "value": .string("u\(i)")]))
        }
        for _ in 0..<300 {
            #expect(try edge.next(timeoutMs: 20_000)?["ok"] == .bool(true))
            #expect(try up.next(timeoutMs: 20_000)?["ok"] == .bool(true))
        }
        func list(_ who: String) throws -> JSONValue? {
            try c.call(who, .object(["op": .string("list"), "prefix": .string("site1.l1/mix/")]))["registers"]
        }
        try c.waitFor("both sides to converge") {
            let a = try list("gw1"), b = try list("spookd")
            return try a == b && (c.status("gw1"))["vector"] == (c.status("spookd"))["vector"]
        }
        guard case .array(let registers)? = try list("gw1") else { Issue.record("no list"); return }
        #expect(registers.count == 7)
    }

    @Test func killingTheDaemonMidStreamLosesNothingAcknowledged() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let edge = try c.api("gw1")
        var acknowledged = 0
        for i in 0..<1_500 {
            if i == 500 { c.stopDaemon(signal: SIGKILL) }
            if i == 1_000 { try c.startDaemon() }
            let a = try edge.call(.object(["op": .string("set"), "register": .string("site1.l1/stream/n\(i % 50)"), "value": .int(Int64(i))]))
            #expect(a["ok"] == .bool(true), "the edge keeps accepting writes while decoherent")
            acknowledged += 1
        }
        #expect(acknowledged == 1_500)
        let origin = c.edgeKeys["gw1"]!.origin.description
        try c.waitFor("the daemon to hold every write") {
            (try c.status("spookd"))["vector"]?[origin] == (try c.status("gw1"))["vector"]?[origin]
        }
        let prefix = JSONValue.object(["op": .string("list"), "prefix": .string("site1.l1/stream/")])
        #expect(try c.call("spookd", prefix)["registers"] == (try c.call("gw1", prefix)["registers"]))
        #expect(c.value("spookd", "site1.l1/stream/n49") == .int(1_499))
    }

    @Test func anUnknownKeyIsRefusedAndOtherLinksKeepWorking() throws {
        let c = try Cluster(edges: ["gw1"])
        // gw2 has a key the daemon does not list.
        let stranger = Identity()
        try stranger.save(path: c.dir.file("gw2.key"))
        try c.writeEdgeConfig("gw2", key: stranger)
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.startEdge("gw2")
        try c.waitFor("gw1 coherent") { c.coherent("gw1") }
        try c.set("gw2", "site1.l1/x/y", .int(1))
        try c.set("gw1", "site1.l1/x/z", .int(2))
        try c.waitFor("gw1's write upstream") { c.value("spookd", "site1.l1/x/z") == .int(2) }
        #expect(!c.coherent("gw2"))
        #expect(c.value("spookd", "site1.l1/x/y") == nil, "nothing from an unauthorised key is held")
    }

    @Test func aWriteOutsideTheGrantedDomainsIsRefused() throws {
        let c = try Cluster(edges: ["gw1", "gw2"], grants: ["gw2": ["site2.*", "spook.*"]])
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.startEdge("gw2")
        try c.waitFor("gw2 coherent") { c.coherent("gw2") }
        try c.set("gw2", "site1.l1/x/forbidden", .int(1))
        try c.set("gw1", "site1.l1/x/allowed", .int(2))
        try c.waitFor("gw1's write upstream") { c.value("spookd", "site1.l1/x/allowed") == .int(2) }
        try c.waitFor("gw2 to be refused") { !c.coherent("gw2") }
        #expect(c.value("spookd", "site1.l1/x/forbidden") == nil)
        // The refused delta is held withheld: gw2's later writes are not blocked behind it.
        try c.set("gw2", "site2.l1/x/allowed", .int(3))
        try c.waitFor("gw2's next write upstream") { c.value("spookd", "site2.l1/x/allowed") == .int(3) }
        try c.waitFor("gw2 coherent again") { c.coherent("gw2") }
        #expect(c.value("spookd", "site1.l1/x/forbidden") == nil)
    }

    @Test func garbageOnALinkClosesOnlyThatLink() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let fd = try RawSocket.connect(c.dir.file("link.sock"))
        defer { close(fd) }
        let garbage = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        _ = garbage.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let answer = RawSocket.readAll(fd)
        var decoder = FrameDecoder()
        decoder.feed(answer)
        var messages: [Message] = []
        while let f = try? decoder.next() { if let m = try? Message(frame: f) { messages.append(m) } }
        #expect(messages.contains { if case .error(let code, _) = $0 { code == .badMagic } else { false } }, "an ERROR bad-magic frame, then close")
        try c.set("gw1", "site1.l1/after/garbage", .bool(true))
        try c.waitFor("the live link still works") { c.value("spookd", "site1.l1/after/garbage") == .bool(true) }
        #expect(c.coherent())
    }
}

enum RawSocket {
    static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw APIClientError("connect \(path): \(errno)") }
        return fd
    }

    /// Reads until the peer closes (or 10 s pass).
    static func readAll(_ fd: Int32) -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 10_000) > 0 else { return out }
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return out }
            out += chunk[..<n]
        }
    }
}

@Suite(.serialized) struct PartitionAndCrashTests {
    func link(_ status: JSONValue) -> JSONValue? {
        if case .array(let links)? = status["links"] { return links.first }
        return nil
    }

    func int(_ v: JSONValue?) -> Int { if case .int(let i)? = v { Int(i) } else { -1 } }

    /// Writes `count` values pipelined on one API connection; returns once all are acknowledged.
    func stream(_ c: Cluster, _ who: String, _ count: Int, prefix: String) throws {
        let client = try c.api(who)
        for i in 0..<count {
            try client.send(.object(["op": .string("set"), "register": .string("\(prefix)/r\(i % 100)"), "value": .int(Int64(i))]))
        }
        for _ in 0..<count {
            guard try client.next(timeoutMs: 60_000)?["ok"] == .bool(true) else { throw APIClientError("a write was not acknowledged") }
        }
    }

    /// The counts are the link's own (its session's), so the link must live
    /// through the catch-up: heartbeats every second, not every 200 ms, so a
    /// loaded machine (the proxy runs in this process, beside every other
    /// test) does not end it half-way (in one run it did, after 4,000).
    @Test func afterAPartitionCatchUpSendsWhatIsMissingNotEverything() throws {
        let daemonPort = try CuttableProxy.freePort()
        let proxy = try CuttableProxy(to: daemonPort)
        let c = try Cluster(daemonLink: "tcp://127.0.0.1:\(daemonPort)", edgeLink: "tcp://127.0.0.1:\(proxy.port)", heartbeatMs: 1_000)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent over TCP") { c.coherent() }
        try stream(c, "gw1", 2_000, prefix: "site1.l1/before")
        try c.waitFor("the first 2,000 upstream") { c.value("spookd", "site1.l1/before/r99") == .int(1_999) }

        proxy.partition()
        try c.waitFor("the edge to notice the partition") { !c.coherent() }
        // Both sides keep writing, 10,000 each.
        try stream(c, "gw1", 10_000, prefix: "site1.l1/edge")
        try stream(c, "spookd", 10_000, prefix: "site1.l1/up")
        proxy.heal()

        try c.waitFor("both sides to converge", seconds: 60) {
            try (c.status("gw1"))["vector"] == (c.status("spookd"))["vector"] && c.coherent()
        }
        let list = JSONValue.object(["op": .string("list"), "prefix": .string("site1.l1/")])
        #expect(try c.call("gw1", list)["registers"] == (try c.call("spookd", list)["registers"]))
        // The new link carried what each side lacked: 10,000 one way, 10,000 plus
        // the edge's own $state/$online/$lag writes the other, not the 2,000 from before.
        let up = try #require(link(try c.status("spookd"))), edge = try #require(link(try c.status("gw1")))
        let sentDown = int(up["deltas_sent"]), sentUp = int(edge["deltas_sent"])
        #expect(sentDown == 10_000, "spookd sent \(sentDown) deltas after the partition")
        #expect(sentUp >= 10_000 && sentUp < 10_050, "spook-edge sent \(sentUp) deltas after the partition")
        let bytesDown = int(up["bytes_sent"])
        // A delta here encodes to about 50 bytes: the catch-up must cost about that per missing delta.
        #expect(bytesDown < 10_000 * 80, "spookd sent \(bytesDown) bytes to catch up 10,000 deltas")
        print("partition catch-up: spookd sent \(sentDown) deltas in \(bytesDown) bytes; spook-edge sent \(sentUp) deltas in \(int(edge["bytes_sent"])) bytes")
    }

    @Test func killNineOfEitherSideTenTimesLosesNoAcknowledgedWrite() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        var random = SplitMix64(seed: 42)
        var acknowledged: [Int] = []
        var next = 0
        for kill in 0..<20 {
            let burstStart = next
            // A burst of acknowledged writes, then kill -9 one side at once.
            let burst = 50 + Int(random.next() % 200)
            let client = try c.api("gw1")
            for _ in 0..<burst {
                try client.send(.object(["op": .string("set"), "register": .string("site1.l1/crash/r\(next % 40)"), "value": .int(Int64(next))]))
                next += 1
            }
            // Kill while those writes are still being committed and shipped.
            if kill % 2 == 0 {
                c.stopDaemon(signal: SIGKILL)
            } else {
                c.edges["gw1"]?.signal(SIGKILL)
                c.edges["gw1"]?.wait()
            }
            // Count what the edge acknowledged before its answers stopped.
            // Answers come in request order: the first k answered writes are the acknowledged ones.
            var k = 0
            while let answer = try? client.next(timeoutMs: 2_000), answer["ok"] == .bool(true) { k += 1 }
            acknowledged += Array(burstStart..<(burstStart + k))
            if kill % 2 == 0 { try c.startDaemon() } else { try c.startEdge() }
            try c.waitFor("the edge to be coherent again") { c.coherent() }
        }
        let origin = c.edgeKeys["gw1"]!.origin.description
        try c.waitFor("upstream to hold everything the edge holds") {
            (try c.status("spookd"))["vector"]?[origin] == (try c.status("gw1"))["vector"]?[origin]
        }
        let list = JSONValue.object(["op": .string("list"), "prefix": .string("site1.l1/crash/")])
        #expect(try c.call("gw1", list)["registers"] == (try c.call("spookd", list)["registers"]))
        #expect(acknowledged.count > 500, "only \(acknowledged.count) writes were acknowledged")
        // Every acknowledged write of the edge is upstream exactly once and in
        // order: read the daemon's store itself after stopping it.
        c.stopDaemon(signal: SIGTERM)
        let store = try SQLStore(path: c.dir.file("spookd.db"), options: StoreOptions(sync: .off))
        _ = try store.verify()
        let edgeOrigin = c.edgeKeys["gw1"]!.origin
        let held = try store.deltas(origin: edgeOrigin, seqs: 1...store.vector[edgeOrigin])
        #expect(held.map(\.seq) == Array(1...store.vector[edgeOrigin]), "seqs 1…n, each once")
        let numbers = held.filter { $0.group.name == "crash" }.flatMap { $0.writes.compactMap { w -> Int? in if case .int(let i) = w.value { Int(i) } else { nil } } }
        #expect(numbers == numbers.sorted(), "per-origin order is kept")
        #expect(Set(numbers).count == numbers.count, "no write twice")
        let missing = Set(acknowledged).subtracting(numbers)
        #expect(missing.isEmpty, "\(missing.count) acknowledged writes are not upstream, e.g. \(missing.sorted().prefix(5))")
    }
}

@Suite struct ServiceTests {
    /// A datagram socket standing in for systemd's NOTIFY_SOCKET.
    final class NotifySocket {
        let fd: Int32
        let path: String
        init(path: String) throws {
            self.path = path
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in for (i, b) in path.utf8.enumerated() { raw[i] = b } }
            let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            guard rc == 0 else { throw APIClientError("bind \(path): \(errno)") }
        }
        deinit { close(fd) }

        /// The next datagram, waiting at most `timeoutMs`.
        func next(timeoutMs: Int32 = 20_000) -> String? {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMs) > 0 else { return nil }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = recv(fd, &buffer, buffer.count, 0)
            return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : nil
        }
    }

    @Test func spookdTalksToSystemdAndStopsCleanlyOnSIGTERM() throws {
        let c = try Cluster()
        let notify = try NotifySocket(path: c.dir.file("notify.sock"))
        try c.startDaemon(environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
        let ready = notify.next()
        #expect(ready?.hasPrefix("READY=1\nSTATUS=origin \(c.daemonKey.origin)") == true, "\(ready ?? "nothing")")
        #expect(notify.next() == "WATCHDOG=1", "the watchdog is pinged at half its period")
        c.daemon?.signal(SIGTERM)
        #expect(notify.next() == "STOPPING=1")
        #expect(try c.daemon?.readLine() == "spookd: stopped")
        #expect(c.daemon?.wait() == 0, "SIGTERM is a clean exit")
        c.daemon = nil
    }

    @Test func checkConfigExitsSeventyEightOnABadConfig() throws {
        let c = try Cluster()
        try c.write("bad.toml", "[node]\nname = 5\n")
        let check = try ChildProcess(Cluster.binary("spookd"), ["check-config", c.dir.file("bad.toml")])
        let status = check.wait()
        #expect(status >> 8 & 0xff == 78, "exit status \(status >> 8 & 0xff)")
        let run = try ChildProcess(Cluster.binary("spook-edge"), ["run", "-c", c.dir.file("bad.toml")])
        #expect(run.wait() >> 8 & 0xff == 78, "a daemon never starts on a config it would reject")
        let good = try ChildProcess(Cluster.binary("spookd"), ["check-config", c.dir.file("spookd.toml")])
        #expect(try good.readLine() == "\(c.dir.file("spookd.toml")): ok")
        #expect(good.wait() == 0)
    }
}

/// The same sync scenario over every transport.
@Suite(.serialized) struct TransportTests {
    enum Transport: String, CaseIterable, Sendable { case unix, tcp, tls, ws, wss }

    /// A throwaway CA and a certificate for "localhost" signed by it, made with openssl.
    static func certificates(in dir: TemporaryDirectory, caName: String = "ca") throws {
        try TestCertificates.ca(in: dir.path, name: caName, commonName: "spook test \(caName)")
        if caName == "ca" { try TestCertificates.server(in: dir.path) }
    }

    static func cluster(_ transport: Transport, trust ca: String = "ca", edgeExtra: String = "") throws -> Cluster {
        let dir = TemporaryDirectory()
        switch transport {
        case .unix:
            return try Cluster(directory: dir)
        case .tcp:
            let port = try CuttableProxy.freePort()
            return try Cluster(daemonLink: "tcp://127.0.0.1:\(port)", directory: dir)
        case .ws:
            let port = try CuttableProxy.freePort()
            return try Cluster(daemonLink: "ws://127.0.0.1:\(port)/spook", directory: dir)
        case .tls, .wss:
            try certificates(in: dir)
            if ca != "ca" { try certificates(in: dir, caName: ca) }
            let port = try CuttableProxy.freePort()
            let url = transport == .tls ? "tls://127.0.0.1:\(port)" : "wss://127.0.0.1:\(port)/spook"
            return try Cluster(daemonLink: url,
                               listenExtra: "cert = \"\(dir.file("server.pem"))\"\nkey = \"\(dir.file("server.key"))\"",
                               upstreamExtra: "ca = \"\(dir.file("\(ca).pem"))\"\nserver_name = \"localhost\"", edgeExtra: edgeExtra, directory: dir)
        }
    }

    @Test(arguments: Transport.allCases)
    func theSameScenarioOverEveryTransport(_ transport: Transport) throws {
        let c = try Self.cluster(transport)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent over \(transport)") { c.coherent() }
        for i in 0..<200 { try c.set("gw1", "site1.l1/\(transport)/r\(i % 20)", .int(Int64(i))) }
        try c.set("spookd", "site1.l1/\(transport)/from-up", .string("hello"))
        // Near the value size bound: a frame far bigger than one socket read or WebSocket default.
        let big = String(repeating: "x", count: 60_000)
        try c.set("gw1", "site1.l1/\(transport)/big", .string(big))
        try c.waitFor("writes both ways") {
            c.value("spookd", "site1.l1/\(transport)/r19") == .int(199) && c.value("gw1", "site1.l1/\(transport)/from-up") == .string("hello")
                && c.value("spookd", "site1.l1/\(transport)/big") == .string(big)
        }
        let origin = c.edgeKeys["gw1"]!.origin.description
        try c.waitFor("equal vectors") { (try c.status("spookd"))["vector"]?[origin] == (try c.status("gw1"))["vector"]?[origin] }
    }

    @Test func aTLSUpstreamWithAnotherCAIsNeverTrusted() throws {
        let metrics = try CuttableProxy.freePort()
        let c = try Self.cluster(.tls, trust: "otherca", edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"")
        try c.startDaemon()
        try c.startEdge()
        try c.set("gw1", "site1.l1/tls/secret", .int(1))
        // Wait for the evidence: the agent has failed and rescheduled its link several times.
        try c.waitFor("three refused TLS attempts") {
            let text = try MetricsTests.get(metrics, "/metrics")
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("spook_reconnects_total ") }) else { return false }
            return (Double(line.split(separator: " ")[1]) ?? 0) >= 3
        }
        #expect(!c.coherent(), "a daemon whose certificate does not chain to the configured CA must not be trusted")
        #expect(c.value("spookd", "site1.l1/tls/secret") == nil)
    }
}

@Suite struct MetricsTests {
    /// GET `path` from 127.0.0.1:`port`; the whole response.
    static func get(_ port: Int, _ path: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw APIClientError("connect :\(port): \(errno)") }
        let request = "GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        return String(decoding: RawSocket.readAll(fd), as: UTF8.self)
    }

    @Test func prometheusMetricsDescribeTheLinksAndCommits() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(extraDaemonToml: "[metrics]\nlisten = \"127.0.0.1:\(port)\"\n")
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        try c.set("gw1", "site1.l1/m/r", .int(1))
        try c.waitFor("the write upstream") { c.value("spookd", "site1.l1/m/r") == .int(1) }
        var text = ""
        try c.waitFor("the link to show as online") {
            text = try Self.get(port, "/metrics")
            return text.contains("spook_link_online{link=\"gw1\"} 1")
        }
        #expect(text.hasPrefix("HTTP/1.1 200 OK"))
        #expect(text.contains("\nspook_links 1"))
        #expect(text.contains("# TYPE spook_commit_seconds histogram"))
        let held = text.split(separator: "\n").first { $0.hasPrefix("spook_deltas_held_total ") }.flatMap { Double($0.split(separator: " ")[1]) }
        #expect((held ?? 0) >= 1, "deltas held: \(held.map { "\($0)" } ?? "missing")")
        let commits = text.split(separator: "\n").first { $0.hasPrefix("spook_commit_seconds_count") }.flatMap { Double($0.split(separator: " ")[1]) }
        #expect((commits ?? 0) >= 1, "received DELTAS commits are timed")
        // The edge's DELTAS frame was timed from its read to its commit and to its ACK.
        for histogram in ["spook_frame_wait_seconds", "spook_frame_ack_seconds"] {
            let frames = Self.sample(text, "\(histogram)_count")
            #expect((frames ?? 0) >= 1, "\(histogram): \(frames.map { "\($0)" } ?? "missing")")
        }
        // A frame's ACK comes after its commit starts: the two sums are in order.
        #expect((Self.sample(text, "spook_frame_ack_seconds_sum") ?? 0) >= (Self.sample(text, "spook_frame_wait_seconds_sum") ?? .infinity))
        #expect(try Self.get(port, "/other").hasPrefix("HTTP/1.1 404"))
    }

    /// The value of the series that starts with `series ` in a scrape, if any.
    static func sample(_ text: String, _ series: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    /// Prometheus conventions: the configured peer's series exist before it
    /// ever links, counters are counters and do not go back when a link
    /// reconnects, process metrics are there.
    @Test func metricsFollowPrometheusConventions() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(extraDaemonToml: "[metrics]\nlisten = \"127.0.0.1:\(port)\"\n")
        try c.startDaemon()
        let before = try Self.get(port, "/metrics")
        for series in ["spook_link_online{link=\"gw1\"}", "spook_link_sent_bytes_total{link=\"gw1\"}", "spook_writes_refused_total{peer=\"gw1\"}",
                       "spook_connections_refused_total{reason=\"limit\"}", "spook_connections_refused_total{reason=\"slow-reader\"}"] {
            #expect(Self.sample(before, series) == 0, "\(series) before any link: \(before)")
        }
        #expect(before.contains("# TYPE spook_link_sent_bytes_total counter"))
        #expect((Self.sample(before, "process_resident_memory_bytes") ?? 0) > 1_000_000, "\(before)")
        #expect(Self.sample(before, "process_cpu_seconds_total") != nil && (Self.sample(before, "process_open_fds") ?? 0) > 0)
        #expect((Self.sample(before, "process_start_time_seconds") ?? 0) > 1_700_000_000)
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        var first = 0.0
        try c.waitFor("bytes sent to gw1 counted") {
            first = Self.sample(try Self.get(port, "/metrics"), "spook_link_sent_bytes_total{link=\"gw1\"}") ?? 0
            return first > 0
        }
        // The agent goes and comes back: a new connection, and the counter goes on from where it was.
        c.stopEdge()
        try c.waitFor("the link down") { Self.sample(try Self.get(port, "/metrics"), "spook_link_online{link=\"gw1\"}") == 0 }
        #expect((Self.sample(try Self.get(port, "/metrics"), "spook_link_sent_bytes_total{link=\"gw1\"}") ?? 0) >= first)
        try c.startEdge()
        try c.waitFor("the edge coherent again") { c.coherent() }
        try c.waitFor("the second connection's bytes added") {
            (Self.sample(try Self.get(port, "/metrics"), "spook_link_sent_bytes_total{link=\"gw1\"}") ?? 0) > first
        }
    }
}

/// A hand-driven ETCP peer: the real handshake and frames over a socket, so a
/// test can send spookd exactly the deltas it wants (a device report, say).
final class RawPeer {
    let fd: Int32
    var decoder = FrameDecoder()
    let identity: Identity

    init(socket path: String, identity: Identity, daemonKey: [UInt8]) throws {
        self.identity = identity
        fd = try RawSocket.connect(path)
        var handshake = Handshake(side: .initiator, identity: identity, role: .agent, nonce: (0..<32).map { _ in UInt8.random(in: 0...255) },
                                  subscriptions: [], node: "raw", isAuthorised: { $0 == daemonKey })
        try send(handshake.start())
        while handshake.peer == nil {
            for reply in try handshake.receive(try next()) { try send(reply) }
        }
    }

    deinit { close(fd) }

    func send(_ m: Message) throws {
        let bytes = m.frame.encoded
        guard bytes.withUnsafeBytes({ Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else { throw APIClientError("short write") }
    }

    /// The next frame, or an error after 20 s or at end of stream.
    func next() throws -> Message {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if let f = try decoder.next() { return try Message(frame: f) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 20_000) > 0 else { throw APIClientError("no frame within 20 s") }
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { throw APIClientError("the daemon closed the link") }
            decoder.feed(chunk[..<n])
        }
    }

    /// Sends one delta and returns the first ACK or ERROR that answers it.
    func deliver(_ delta: Delta) throws -> Message {
        try send(.vector(QStateVector()))
        try send(.deltas([delta]))
        while true {
            let m = try next()
            switch m {
            case .ack(let v, _) where v.contains(delta.id): return m
            case .error: return m
            default: continue
            }
        }
    }
}

@Suite struct DevicePolicyTests {
    @Test func onlyTheOwningAgentMayReportADevice() throws {
        let c = try Cluster(edges: ["owner", "other"], owns: ["owner": ["site1.*"]],
                            extraDaemonToml: "[[register]]\ndomain = \"site1.*\"\ngroup = \"pump\"\nname = \"rpm\"\ntype = \"int\"\npolicy = \"device\"\n")
        try c.startDaemon()
        let group = try QGroupName("site1.l1/pump")
        let other = try RawPeer(socket: c.dir.file("link.sock"), identity: c.edgeKeys["other"]!, daemonKey: c.daemonKey.publicKey)
        let forged = try Delta(origin: c.edgeKeys["other"]!.origin, seq: 1, hlc: HLCTimestamp(ms: 1_000, counter: 0), group: group, writes: [Write("rpm", .report, .int(666))])
        guard case .error(let code, let text) = try other.deliver(forged) else { Issue.record("a report from a non-owner was accepted"); return }
        #expect(code == .forbidden && text.contains("may not write reported values in site1.l1/pump"), "\(text)")

        let owner = try RawPeer(socket: c.dir.file("link.sock"), identity: c.edgeKeys["owner"]!, daemonKey: c.daemonKey.publicKey)
        let report = try Delta(origin: c.edgeKeys["owner"]!.origin, seq: 1, hlc: HLCTimestamp(ms: 2_000, counter: 0), group: group, writes: [Write("rpm", .report, .int(1450))])
        guard case .ack = try owner.deliver(report) else { Issue.record("the owner's report was refused"); return }
        let rpm = try c.call("spookd", .object(["op": .string("get"), "register": .string("site1.l1/pump/rpm")]))["register"]
        #expect(rpm?["reported"]?["value"] == .int(1450))
        #expect(rpm?["reported"]?["value"] == .int(1450), "the forged report changed nothing")
        // Anyone with write rights may desire. The refused report holds its place
        // (withheld), so the same writer's next delta is not blocked behind it.
        let desire = try Delta(origin: c.edgeKeys["other"]!.origin, seq: 2, hlc: HLCTimestamp(ms: 3_000, counter: 0), group: group, writes: [Write("rpm", .desire, .int(1500))])
        let again = try RawPeer(socket: c.dir.file("link.sock"), identity: c.edgeKeys["other"]!, daemonKey: c.daemonKey.publicKey)
        guard case .ack = try again.deliver(desire) else { Issue.record("a desire was refused"); return }
        let after = try c.call("spookd", .object(["op": .string("get"), "register": .string("site1.l1/pump/rpm")]))["register"]
        #expect(after?["desired"]?["value"] == .int(1500) && after?["reported"]?["value"] == .int(1450))
    }
}

@Suite struct QRouteTests {
    /// Two daemons; the agent's deltas go to the linked one of highest
    /// priority, fail over to the other when it dies, and come back to it.
    @Test func deltasFollowTheHighestPriorityLinkedUpstreamAndFailBack() throws {
        let c = try Cluster(edges: ["gw1"])
        let backup = try c.startWithBackup()
        defer { backup.signal(SIGTERM); backup.wait() }
        let origin = c.edgeKeys["gw1"]!.origin.description
        func held(_ who: String) -> Int64 {
            if case .int(let n)? = (try? c.status(who))?["vector"]?[origin] { return n }
            return 0
        }
        func links() -> [String: String] {
            guard case .array(let ls)? = (try? c.status("gw1"))?["links"] else { return [:] }
            return Dictionary(ls.compactMap { l in l["name"]?.string.map { ($0, l["state"]?.string ?? "?") } }, uniquingKeysWith: { a, _ in a })
        }
        try c.waitFor("both links coherent") { links() == ["primary": "coherent", "backup": "coherent"] }

        for i in 0..<100 { try c.set("gw1", "site1.l1/route/r\(i % 10)", .int(Int64(i))) }
        try c.waitFor("the primary to hold the agent's writes") { held("spookd") == held("gw1") }
        #expect(held("backup") < held("gw1"), "a standby upstream is sent nothing while the primary is linked")

        // Failover: the primary dies; the backup is sent everything it lacks.
        c.stopDaemon(signal: SIGKILL)
        for i in 100..<200 { try c.set("gw1", "site1.l1/route/r\(i % 10)", .int(Int64(i))) }
        try c.waitFor("the backup to take over") { held("backup") == held("gw1") }
        #expect(c.value("backup", "site1.l1/route/r9") == .int(199))

        // Failback: the primary returns, is selected again, and catches up.
        try c.startDaemon()
        try c.set("gw1", "site1.l1/route/after", .bool(true))
        try c.waitFor("the primary to catch up") { held("spookd") == held("gw1") }
        #expect(c.value("spookd", "site1.l1/route/r9") == .int(199))
        for i in 0..<20 { try c.set("gw1", "site1.l1/route/late\(i)", .int(Int64(i))) }
        try c.waitFor("the primary to carry again") { held("spookd") == held("gw1") }
        let lagging = held("gw1") - held("backup")
        #expect(lagging > 0, "after failback the backup is standby again")
    }
}
