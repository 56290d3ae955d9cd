#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode
import SpookTestSupport
import SpookWire
import Testing

/// The substrate's promises, tried from outside with faults and hostile
/// peers: each test here failed before the fix it names.
@Suite(.serialized) struct HardeningTests {
    static func copy(_ from: String, _ to: String) throws {
        let cp = try ChildProcess("/bin/cp", ["-f", from, to])
        guard cp.wait() == 0 else { throw APIClientError("cp \(from) \(to) failed") }
    }

    static func remove(_ path: String) { unlink(path) }

    func list(_ c: Cluster, _ who: String, _ prefix: String) throws -> JSONValue? {
        try c.call(who, .object(["op": .string("list"), "prefix": .string(prefix)]))["registers"]
    }

    func history(_ c: Cluster, _ who: String, _ register: String) throws -> [JSONValue] {
        guard case .array(let entries)? = try c.call(who, .object(["op": .string("history"), "register": .string(register)]))["history"] else { return [] }
        return entries
    }

    /// Defect 1: an agent whose store is restored from a backup while its
    /// daemon is away, and written again, used to reuse seqs the daemon held
    /// for other deltas: 50 of 50 acknowledged writes never arrived, with both
    /// sides "coherent". Now the handshake finds the fork, the agent starts a
    /// new incarnation, and every write from every period is upstream.
    @Test func aRestoredStoreStartsANewIncarnationAndLosesNothing() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let oldOrigin = try c.status("gw1")["origin"]?.string
        for i in 0..<10 { try c.set("gw1", "site1.l1/a/r\(i)", .int(Int64(i))) }
        try c.waitFor("the first writes upstream") { c.value("spookd", "site1.l1/a/r9") == .int(9) }
        // The backup: a copy of the stopped agent's store.
        c.edges["gw1"]?.signal(SIGTERM)
        c.edges["gw1"]?.wait()
        let db = c.dir.file("gw1.db")
        try Self.copy(db, db + ".backup")
        try c.startEdge()
        for i in 0..<50 { try c.set("gw1", "site1.l1/b/r\(i)", .int(Int64(i))) }
        try c.waitFor("the second writes upstream") { c.value("spookd", "site1.l1/b/r49") == .int(49) }
        c.edges["gw1"]?.signal(SIGTERM)
        c.edges["gw1"]?.wait()
        c.stopDaemon(signal: SIGTERM)
        // Restore while the daemon is away, then write under the old seqs.
        for suffix in ["-wal", "-shm"] { Self.remove(db + suffix) }
        try Self.copy(db + ".backup", db)
        try c.startEdge()
        for i in 0..<50 { try c.set("gw1", "site1.l1/c/r\(i)", .int(Int64(1000 + i))) }
        try c.startDaemon()
        try c.waitFor("every write after the restore upstream", seconds: 30) {
            (0..<50).allSatisfy { c.value("spookd", "site1.l1/c/r\($0)") == .int(Int64(1000 + $0)) }
        }
        // Nothing of the period the backup forgot was lost upstream either.
        for i in 0..<50 { #expect(c.value("spookd", "site1.l1/b/r\(i)") == .int(Int64(i))) }
        let newOrigin = try c.status("gw1")["origin"]?.string
        #expect(newOrigin != nil && newOrigin != oldOrigin, "the agent writes under a new incarnation")
        #expect(try c.status("gw1")["epoch"] == .int(1))
        // And the replicas converge: the agent gets the forgotten period back.
        try c.waitFor("both replicas to hold the same registers", seconds: 30) {
            try list(c, "gw1", "site1.l1/") == list(c, "spookd", "site1.l1/")
        }
    }

    /// Defect 1: a zero-length store file used to become a new empty store
    /// under the same key and origin, reusing every seq.
    @Test func anEmptiedStoreFileWritesUnderANewOrigin() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let oldOrigin = try c.status("gw1")["origin"]?.string
        for i in 0..<20 { try c.set("gw1", "site1.l1/z/r\(i)", .int(Int64(i))) }
        try c.waitFor("the writes upstream") { c.value("spookd", "site1.l1/z/r19") == .int(19) }
        c.edges["gw1"]?.signal(SIGTERM)
        c.edges["gw1"]?.wait()
        let db = c.dir.file("gw1.db")
        for suffix in ["-wal", "-shm"] { Self.remove(db + suffix) }
        let fd = open(db, O_WRONLY | O_TRUNC)
        #expect(fd >= 0)
        close(fd)
        try c.startEdge()
        let newOrigin = try c.status("gw1")["origin"]?.string
        #expect(newOrigin != nil && newOrigin != oldOrigin)
        for i in 0..<20 { try c.set("gw1", "site1.l1/z/r\(i)", .int(Int64(100 + i))) }
        try c.waitFor("the new writes upstream") { (0..<20).allSatisfy { c.value("spookd", "site1.l1/z/r\($0)") == .int(Int64(100 + $0)) } }
    }

    /// A store-level check: a delta under a held (origin, seq) with another
    /// HLC is reported as a conflict, not skipped as a duplicate.
    @Test func aDaemonReportsTwoDeltasUnderOneSeq() throws {
        let c = try Cluster()
        try c.startDaemon()
        let key = c.edgeKeys["gw1"]!
        let group = try QGroupName("site1.l1/dup")
        let peer = try RawPeer(socket: c.dir.file("link.sock"), identity: key, daemonKey: c.daemonKey.publicKey)
        let first = try Delta(origin: key.origin, seq: 1, hlc: HLCTimestamp(ms: 1_000, counter: 0), group: group, writes: [Write("r", .set, .int(1))])
        guard case .ack = try peer.deliver(first) else { Issue.record("the first delta was refused"); return }
        let again = try RawPeer(socket: c.dir.file("link.sock"), identity: key, daemonKey: c.daemonKey.publicKey)
        let other = try Delta(origin: key.origin, seq: 1, hlc: HLCTimestamp(ms: 2_000, counter: 0), group: group, writes: [Write("r", .set, .int(2))])
        try again.send(.vector(QStateVector()))
        try again.send(.deltas([other]))
        // The first ACK answers VECTOR; the DELTAS get an ERROR, or a second ACK if taken silently.
        var acks = 0
        var refusal: (WireError.Code, String)?
        while refusal == nil && acks < 2 {
            switch try again.next() {
            case .ack: acks += 1
            case .error(let code, let text): refusal = (code, text)
            default: break
            }
        }
        guard let (code, text) = refusal else { Issue.record("a second delta under one seq was taken silently"); return }
        #expect(code == .conflict && text.contains("reused seqs"), "\(text)")
        #expect(c.value("spookd", "site1.l1/dup/r") == .int(1), "the held delta stays")
    }

    /// Defect 2: a daemon that stops answering during the handshake kept the
    /// agent "reentangling" for as long as the kernel kept the socket (for
    /// ever on a Unix socket). Now silence ends the link within
    /// missed_max × interval_ms (3 × 200 ms in the test cluster).
    @Test func aPeerStoppedDuringTheHandshakeIsDetected() throws {
        let c = try Cluster()
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        c.daemon?.signal(SIGSTOP)
        defer { c.daemon?.signal(SIGCONT) }
        // The agent notices the silence, reconnects into a daemon that accepts
        // (the kernel does) but never answers, and must give up each time.
        let register = "spook.gw1/primary/$state"
        try c.waitFor("the agent to give up on a silent handshake at least twice", seconds: 10) {
            let states = try history(c, "gw1", register).compactMap { $0["value"]?.string }
            return states.prefix { $0 != "coherent" }.filter { $0 == "decoherent" }.count >= 2
        }
    }

    /// Defect 2, during catch-up: the daemon completes the handshake, then
    /// nothing more reaches the agent (a proxy drops every later frame). The
    /// agent used to wait in "reentangling" for ever.
    @Test func aPeerSilentDuringCatchUpIsDetected() throws {
        let port = try CuttableProxy.freePort()
        let proxy = try CuttableProxy(to: port)
        let c = try Cluster(daemonLink: "tcp://127.0.0.1:\(port)", edgeLink: "tcp://127.0.0.1:\(proxy.port)")
        try c.startDaemon()
        proxy.silenceAfter(frames: 3)  // HELLO, AUTH, VECTOR; then no ACK, no heartbeat
        try c.startEdge()
        let origin = c.edgeKeys["gw1"]!.origin.description
        for i in 0..<20 { try c.set("gw1", "site1.l1/s/r\(i)", .int(Int64(i))) }
        // The handshake completed: the daemon holds the agent's deltas ...
        try c.waitFor("the daemon to receive the agent's deltas") {
            if case .int(let n)? = try c.status("spookd")["vector"]?[origin] { return n >= 20 }
            return false
        }
        // ... and the agent, hearing nothing after VECTOR, gives up the link.
        try c.waitFor("the agent to decohere after a silent catch-up", seconds: 10) {
            let states = try history(c, "gw1", "spook.gw1/primary/$state").compactMap { $0["value"]?.string }
            return states.contains("decoherent") && !states.contains("coherent")
        }
        proxy.heal()
        try c.waitFor("the edge to be coherent once the link carries frames again") { c.coherent() }
    }

    /// Defect 6: a SNAPSHOT used to bypass the write grant and push any
    /// origin's vector forward. Now it carries only what the peer may write
    /// and wrote itself, and only its own vector entry.
    @Test func aSnapshotPassesTheWriteGrant() throws {
        let c = try Cluster(edges: ["gw1", "gw2"])
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.waitFor("gw1 coherent") { c.coherent("gw1") }
        try c.set("gw1", "site1.l1/own/r", .int(1))
        try c.waitFor("gw1's write upstream") { c.value("spookd", "site1.l1/own/r") == .int(1) }
        let gw1 = c.edgeKeys["gw1"]!.origin, gw2 = c.edgeKeys["gw2"]!
        let stamp = { (o: Origin, seq: UInt64) in Stamp(hlc: try HLCTimestamp(ms: 5_000, counter: 0), origin: o, seq: seq) }
        var vector = QStateVector()
        vector[gw1] = 1_000_000
        vector[gw2.origin] = 1
        let registers: [QRegisterName: RegisterState] = [
            try QRegisterName("site1.l1/own/r"): .lww(Versioned(.int(666), try stamp(gw1, 1_000_000))),  // another origin's value
            try QRegisterName("site9.l1/x/r"): .lww(Versioned(.int(7), try stamp(gw2.origin, 1))),  // outside gw2's grant
            try QRegisterName("site1.l1/mine/r"): .lww(Versioned(.int(42), try stamp(gw2.origin, 1))),  // allowed
        ]
        let gw1Held = { () throws -> JSONValue? in try c.status("spookd")["vector"]?[gw1.description] }
        let before = try gw1Held()
        let peer = try RawPeer(socket: c.dir.file("link.sock"), identity: gw2, daemonKey: c.daemonKey.publicKey)
        try peer.send(.vector(QStateVector()))
        try peer.send(.snapshot(SnapshotChunk(index: 0, count: 1, vector: vector, registers: registers)))
        var refusal: String?
        while refusal == nil {
            if case .error(let code, let text) = try peer.next() {
                #expect(code == .forbidden)
                refusal = text
            }
        }
        #expect(refusal?.contains("site9.l1/x/r") == true, "\(refusal ?? "-")")
        #expect(c.value("spookd", "site1.l1/own/r") == .int(1), "another origin's register is not overwritten")
        #expect(c.value("spookd", "site9.l1/x/r") == nil)
        #expect(c.value("spookd", "site1.l1/mine/r") == .int(42), "what gw2 may write and wrote is taken")
        #expect(try gw1Held() == before, "gw1's vector did not move")
        // gw1's real deltas still arrive, not skipped as held.
        try c.set("gw1", "site1.l1/own/r", .int(2))
        try c.waitFor("gw1's next write upstream") { c.value("spookd", "site1.l1/own/r") == .int(2) }
    }

    /// Defect 7: a delta stamped far in the future used to be stored and
    /// relayed, and ended every local write on every replica with
    /// clock-overflow. Now it is refused before it is stored.
    @Test func aStampFarAheadOfTheClockIsRefused() throws {
        let c = try Cluster()
        try c.startDaemon()
        let key = c.edgeKeys["gw1"]!
        let group = try QGroupName("site1.l1/clock")
        let peer = try RawPeer(socket: c.dir.file("link.sock"), identity: key, daemonKey: c.daemonKey.publicKey)
        let future = try Delta(origin: key.origin, seq: 1, hlc: HLCTimestamp(rawValue: UInt64.max), group: group, writes: [Write("r", .set, .int(1))])
        guard case .error(let code, let text) = try peer.deliver(future) else { Issue.record("a stamp from the far future was taken"); return }
        #expect(code == .clockDrift && text.contains("ahead of the local clock"), "\(text)")
        #expect(c.value("spookd", "site1.l1/clock/r") == nil)
        if case .int? = try c.status("spookd")["vector"]?[key.origin.description] { Issue.record("the refused delta counts in the vector") }
        // Local writes still work, and the same peer with a sane clock is served.
        try c.set("spookd", "site1.l1/clock/local", .int(1))
        let now = UInt64(time(nil)) * 1000
        let sane = try Delta(origin: key.origin, seq: 1, hlc: HLCTimestamp(ms: now, counter: 0), group: group, writes: [Write("r", .set, .int(2))])
        let again = try RawPeer(socket: c.dir.file("link.sock"), identity: key, daemonKey: c.daemonKey.publicKey)
        guard case .ack = try again.deliver(sane) else { Issue.record("a sane delta was refused"); return }
        #expect(c.value("spookd", "site1.l1/clock/r") == .int(2))
    }
}

@Suite(.serialized) struct EveryValueTests {
    /// Hardening defect 10: values that arrived in a catch-up were invisible:
    /// `watch` showed the last value per register of each StateBlock, and
    /// history kept one per block. Now history keeps every value (bounded by
    /// [node] history) and `watch` in "every" mode shows each, in order.
    @Test func everyValueOfACatchUpReachesHistoryAndAnEveryWatcher() throws {
        let port = try CuttableProxy.freePort()
        let proxy = try CuttableProxy(to: port)
        let c = try Cluster(daemonLink: "tcp://127.0.0.1:\(port)", edgeLink: "tcp://127.0.0.1:\(proxy.port)", history: 4096)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the edge to be coherent") { c.coherent() }
        let watcher = try APIClient(socket: c.socket("spookd"))
        let ack = try watcher.call(.object(["op": .string("watch"), "prefix": .string("site1.l1/meter/"), "mode": .string("every")]))
        #expect(ack["mode"] == .string("every"))
        let latest = try APIClient(socket: c.socket("spookd"))
        #expect(try latest.call(.object(["op": .string("watch"), "prefix": .string("site1.l1/meter/")]))["mode"] == .string("latest"))
        proxy.partition()
        try c.waitFor("the edge to notice the cut") { !c.coherent() }
        let writer = try c.api("gw1")
        for i in 1...500 { try writer.send(.object(["op": .string("set"), "register": .string("site1.l1/meter/kwh"), "value": .int(Int64(i))])) }
        for _ in 1...500 { #expect(try writer.next(timeoutMs: 20_000)?["ok"] == .bool(true)) }
        proxy.heal()
        try c.waitFor("the backlog upstream") { c.value("spookd", "site1.l1/meter/kwh") == .int(500) }
        // Every value, in order, each with its stamp.
        var seen: [JSONValue] = []
        while seen.count < 500, let event = try watcher.next(timeoutMs: 20_000) {
            #expect(event["mode"] == .string("every") && event["stamp"]?.string != nil)
            if let v = event["value"] { seen.append(v) }
        }
        #expect(seen == (1...500).map { JSONValue.int(Int64($0)) }, "an every-watcher saw \(seen.count) of 500 values")
        let history = try c.history("spookd", "site1.l1/meter/kwh").compactMap { $0["value"] }
        #expect(Array(history.reversed()) == (1...500).map { JSONValue.int(Int64($0)) }, "history holds \(history.count) of 500 values")
        // The latest-state watcher is coalesced: it saw the final value, in fewer events.
        var last: JSONValue?
        var events = 0
        while last != .int(500), let event = try latest.next(timeoutMs: 20_000) {
            events += 1
            last = event["register"]?["value"]
        }
        #expect(last == .int(500) && events < 500, "latest mode: \(events) events")
    }
}
