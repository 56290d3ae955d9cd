import SpookCore
import SpookLink
import SpookStore
import SpookTestSupport
import SpookWire
import Testing

@Suite struct SyncSessionTests {
    let dir = TemporaryDirectory()
    static let group = try! QGroupName("site1/pump")

    func store(_ name: String) throws -> SQLStore {
        try SQLStore(path: dir.file("\(name).db"), options: StoreOptions(sync: .off))
    }

    func write(_ store: SQLStore, origin: UInt64, count: Int, value: String = "v") throws {
        let requests = (0..<count).map { i in LocalWrite(group: Self.group, writes: [Write("r\(i % 50)", .set, .string("\(value)\(i)"))]) }
        _ = try store.commitLocal(requests, origin: Origin(origin), physicalMs: 1_000)
    }

    /// Moves messages both ways over a perfect, ordered channel until both
    /// sides are quiet; `drop` may discard a message. Returns frame bytes sent by each side.
    @discardableResult
    func exchange(_ a: inout SyncSession, _ sa: SQLStore, _ b: inout SyncSession, _ sb: SQLStore,
                  start: Bool = true, nowMs: UInt64 = 0, drop: (Message) -> Bool = { _ in false }) throws -> (Int, Int) {
        var toB = try a.perform(start ? a.start(sa, nowMs: nowMs) : a.poll(sa, nowMs: nowMs), on: sa, nowMs: nowMs)
        var toA = try b.perform(start ? b.start(sb, nowMs: nowMs) : b.poll(sb, nowMs: nowMs), on: sb, nowMs: nowMs)
        var bytes = (0, 0)
        var rounds = 0
        while !toA.isEmpty || !toB.isEmpty {
            rounds += 1
            precondition(rounds < 10_000, "no quiescence")
            let (forB, forA) = (toB, toA)
            toB = []
            toA = []
            for m in forB where !drop(m) {
                bytes.0 += m.frame.encoded.count
                toA += try b.perform(b.receive(try Message(frame: m.frame), sb, nowMs: nowMs), on: sb, nowMs: nowMs)
            }
            for m in forA where !drop(m) {
                bytes.1 += m.frame.encoded.count
                toB += try a.perform(a.receive(try Message(frame: m.frame), sa, nowMs: nowMs), on: sa, nowMs: nowMs)
            }
        }
        return bytes
    }

    @Test func catchUpSendsEachSideExactlyWhatTheOtherLacks() throws {
        let sa = try store("a"), sb = try store("b")
        try write(sa, origin: 1, count: 500)
        guard case .deltas(let first100) = try sa.catchUp(for: QStateVector(), limit: 100) else { Issue.record("deltas"); return }
        _ = try sb.commit(first100)
        try write(sb, origin: 2, count: 300)
        var a = SyncSession(peer: "b"), b = SyncSession(peer: "a")
        try exchange(&a, sa, &b, sb)
        #expect(sa.vector == sb.vector && sa.vector == QStateVector([Origin(1): 500, Origin(2): 300]))
        #expect(sa.state.canonicalBytes() == sb.state.canonicalBytes())
        #expect(a.deltasSent == 400, "b already held 100 of a's deltas")
        #expect(b.deltasSent == 300)
        #expect(a.isCaughtUp(sa) && b.isCaughtUp(sb))
        #expect(a.lag(sa) == 0 && b.lag(sb) == 0)
        #expect(sa.peerVector("b") == sa.vector, "a recorded b's durable acknowledgement")
    }

    @Test func theWindowBoundsFramesInFlight() throws {
        let sa = try store("a")
        try write(sa, origin: 1, count: 100)
        var options = SyncSession.Options()
        options.batchDeltasMax = 10
        options.inFlightMax = 2
        var a = SyncSession(peer: "b", options: options)
        _ = try a.start(sa, nowMs: 0)
        let out = try a.perform(a.receive(.vector(QStateVector()), sa, nowMs: 0), on: sa, nowMs: 0)
        #expect(out.filter { $0.type == .deltas }.count == 2)
        #expect(try a.poll(sa, nowMs: 1).isEmpty, "the window is full until an ACK comes")
        let more = try a.perform(a.receive(.ack(QStateVector([Origin(1): 10])), sa, nowMs: 2), on: sa, nowMs: 2)
        #expect(more.map(\.type) == [.deltas])
    }

    /// Hardening defect 8: snapshot chunks were bounded by register count
    /// only, so 20 large values made a 1.2 MB chunk the receiver refused, on
    /// every reconnect. Every frame now decodes under the default frame limit.
    @Test func snapshotChunksOfLargeValuesFitAFrame() throws {
        let sa = try store("a"), sb = try store("b")
        let big = String(repeating: "x", count: 60_000)
        let requests = (0..<20).map { i in LocalWrite(group: Self.group, writes: [Write("big\(i)", .set, .string("\(i)\(big)"))]) }
        _ = try sa.commitLocal(requests, origin: Origin(1), physicalMs: 1_000)
        _ = try sa.compact()
        var a = SyncSession(peer: "b"), b = SyncSession(peer: "a")
        var frames = 0
        try exchange(&a, sa, &b, sb) { m in
            var decoder = FrameDecoder()
            decoder.feed(m.frame.encoded)
            #expect((try? decoder.next()) != nil, "a \(m.type) frame of \(m.frame.encoded.count) bytes exceeds the frame limit")
            if m.type == .snapshot { frames += 1 }
            return false
        }
        #expect(frames >= 3, "the snapshot went out in several chunks")
        #expect(a.snapshotsSent == 1 && b.snapshotsApplied == 1)
        #expect(sb.state.canonicalBytes() == sa.state.canonicalBytes())
    }

    /// Hardening defect 8: a delta that could never be sent is refused when it
    /// is written, with the register and the size.
    @Test func aDeltaLargerThanAFrameIsRefusedAtWriteTime() throws {
        let sa = try store("a")
        let big = String(repeating: "y", count: 60_000)
        let writes = (0..<20).map { Write("r\($0)", .set, .string(big + ($0 == 7 ? "longest" : ""))) }
        let results = try sa.commitLocal([LocalWrite(group: Self.group, writes: writes)], origin: Origin(1), physicalMs: 1_000)
        guard case .failure(let e)? = results.first else { Issue.record("a 1.2 MB delta was accepted"); return }
        #expect(e.code == .deltaTooLarge && e.message.contains("register \"r7\"") && e.message.contains("limit is 524288"), "\(e.message)")
        #expect(sa.vector.entries.isEmpty, "nothing was stamped")
    }

    @Test func framesStayWithinTheByteBound() throws {
        let sa = try store("a"), sb = try store("b")
        let big = String(repeating: "x", count: 60_000)
        _ = try sa.commitLocal((0..<40).map { LocalWrite(group: Self.group, writes: [Write("r\($0)", .set, .string(big))]) }, origin: Origin(1), physicalMs: 1)
        var a = SyncSession(peer: "b"), b = SyncSession(peer: "a")
        var largest = 0
        try exchange(&a, sa, &b, sb) { m in
            largest = max(largest, m.frame.encoded.count)
            return false
        }
        #expect(largest <= 512 * 1024 + 64, "largest frame \(largest) bytes")
        #expect(sb.vector == sa.vector)
    }

    @Test func aLostFrameIsResentAfterTheStall() throws {
        let sa = try store("a"), sb = try store("b")
        try write(sa, origin: 1, count: 30)
        var options = SyncSession.Options()
        options.batchDeltasMax = 10
        var a = SyncSession(peer: "b", options: options), b = SyncSession(peer: "a", options: options)
        var dropped = false
        try exchange(&a, sa, &b, sb) { m in
            if case .deltas(let d) = m, d.first?.seq == 1, !dropped {
                dropped = true
                return true
            }
            return false
        }
        #expect(dropped)
        #expect(sb.vector[Origin(1)] == 0, "deltas after the lost frame are gaps, not held")
        // Nothing moves until the stall timer; then a goes back and resends.
        try exchange(&a, sa, &b, sb, start: false, nowMs: 1_000)
        #expect(sb.vector[Origin(1)] == 0)
        try exchange(&a, sa, &b, sb, start: false, nowMs: 3_000)
        #expect(sb.vector == sa.vector)
        #expect(a.isCaughtUp(sa))
    }

    @Test func aPeerBehindTheHorizonGetsAChunkedSnapshotAppliedOnlyWhenWhole() throws {
        let sa = try store("a"), sb = try store("b")
        for _ in 0..<4 { try write(sa, origin: 1, count: 50) }
        try sa.recordAck(peer: "other", vector: sa.vector)
        _ = try sa.compact()
        #expect(sa.horizon[Origin(1)] == 200)
        var options = SyncSession.Options()
        options.snapshotChunkRegistersMax = 20  // 50 registers: 3 chunks
        var a = SyncSession(peer: "b", options: options), b = SyncSession(peer: "a", options: options)
        var chunks = 0
        try exchange(&a, sa, &b, sb) { m in
            guard case .snapshot(let c) = m else { return false }
            chunks += 1
            return c.index == 1 && chunks <= 3  // lose the middle chunk the first time
        }
        #expect(chunks == 3)
        #expect(sb.vector.entries.isEmpty && sb.state.registers.isEmpty, "an incomplete snapshot must not be applied")
        try exchange(&a, sa, &b, sb, start: false, nowMs: 5_000)
        #expect(b.snapshotsApplied == 1 && a.snapshotsSent == 2)
        #expect(sb.vector == sa.vector)
        #expect(sb.state.canonicalBytes() == sa.state.canonicalBytes())
        #expect(sb.horizon == sa.vector, "b cannot serve the deltas the snapshot stood for")
    }

    @Test func handshakeFramesAfterTheHandshakeAreRefused() throws {
        let sa = try store("a")
        var a = SyncSession(peer: "b")
        _ = try a.start(sa, nowMs: 0)
        let error = #expect(throws: WireError.self) { try a.receive(.auth(signature: Array(repeating: 0, count: 64)), sa, nowMs: 0) }
        #expect(error?.code == .unexpected)
    }
}
