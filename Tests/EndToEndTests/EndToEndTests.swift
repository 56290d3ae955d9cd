#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode
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
    }

    @Test func garbageOnALinkClosesOnlyThatLink() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let fd = try RawSocket.connect(c.dir.file("link.sock"))
        defer { close(fd) }
        let garbage = Array("GET / HTTP/1.1\r\n\r\n".utf8)
        _ = garbage.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
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
