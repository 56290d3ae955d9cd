import SpookCore
import SpookLink
import SpookStore
import SpookTestSupport
import SpookWire
import Testing

/// The session as a state machine: driven against a `StoreView` held in
/// memory (no store at all), it returns what the driver must do and changes
/// nothing itself. The driver here plays the node: it "commits" by moving
/// the view's vector, whenever it likes.
@Suite struct SyncActionTests {
    /// Only what a session may read; nothing here can be written by it.
    final class MemoryView: StoreView {
        var vector = QStateVector()
        var horizon = QStateVector()
        var acks: [String: QStateVector] = [:]
        var log: [Delta] = []
        func peerVector(_ peer: String) -> QStateVector { acks[peer] ?? QStateVector() }
        func catchUp(for peer: QStateVector, limit: Int) throws -> CatchUp {
            .deltas(Array(log.filter { !peer.contains($0.id) }.prefix(limit)))
        }
        func heldHLC(origin: Origin, seq: UInt64) throws -> HLCTimestamp? {
            log.first { $0.origin == origin && $0.seq == seq }?.hlc
        }
    }

    let dir = TemporaryDirectory()

    /// Real deltas of `origin`, seqs 1…count (made by a real store, then only read).
    func deltas(origin: UInt64, count: Int) throws -> [Delta] {
        let store = try SQLStore(path: dir.file("make-\(origin)-\(count).db"), options: StoreOptions(sync: .off))
        defer { store.close() }
        let group = try QGroupName("site1/pump")
        let requests = (0..<count).map { LocalWrite(group: group, writes: [Write("r\($0)", .set, .int(Int64($0)))]) }
        return try store.commitLocal(requests, origin: Origin(origin), physicalMs: 1_000).map { try $0.get() }
    }

    func sends(_ actions: [SyncAction]) -> [Message] {
        actions.compactMap { if case .send(let m) = $0 { m } else { nil } }
    }

    func acks(_ actions: [SyncAction]) -> [QStateVector] {
        sends(actions).compactMap { if case .ack(let v, _) = $0 { v } else { nil } }
    }

    @Test func aDeltasFrameBecomesACommitAndIsAcknowledgedOnlyOnceCommitted() throws {
        let view = MemoryView()
        var s = SyncSession(peer: "b")
        #expect(sends(try s.start(view, nowMs: 0)).map(\.type) == [.vector])
        _ = try s.receive(.vector(QStateVector()), view, nowMs: 0)
        let frame = try deltas(origin: 7, count: 5)
        let actions = try s.receive(.deltas(frame), view, nowMs: 1)
        #expect(actions == [.commit(frame)], "a frame asks for its commit and nothing else: no ACK before it is durable")
        #expect(view.vector.entries.isEmpty)
        // The driver commits, maybe with other links' frames, later.
        view.vector[Origin(7)] = 5
        var result = CommitResult()
        result.held = frame.map(\.id)
        let after = try s.committed(result, view, nowMs: 2)
        #expect(acks(after).first?[Origin(7)] == 5, "the ACK covers the committed frame")
        #expect(s.deltasReceived == 5)
    }

    /// A daemon holding 50 agents' origins answers one agent's frame with an
    /// ACK of the link's origins only; the answer to a VECTOR stays whole.
    @Test func anAckAfterACommitCarriesOnlyTheLinksOrigins() throws {
        let view = MemoryView()
        for o in 1...50 { view.vector[Origin(UInt64(100 + o))] = UInt64(o) }
        var s = SyncSession(peer: "b")
        _ = try s.start(view, nowMs: 0)
        let answer = acks(try s.receive(.vector(QStateVector([Origin(3): 2])), view, nowMs: 0))
        #expect(answer == [view.vector], "the answer to a VECTOR is the whole vector")
        let frame = try deltas(origin: 7, count: 2)
        _ = try s.receive(.deltas(frame), view, nowMs: 1)
        view.vector[Origin(7)] = 2
        var result = CommitResult()
        result.held = frame.map(\.id)
        let after = sends(try s.committed(result, view, nowMs: 2))
        #expect(after == [.ack(QStateVector([Origin(7): 2]), partial: true)],
                "origin 3 (in the peer's VECTOR) is not held here, origin 7 is what it sent; the 50 others are not the link's")
    }

    /// A partial ACK only adds: lower or first, it never replaces what the
    /// store records of the peer, nor counts as the peer's start.
    @Test func aPartialAckOnlyAdds() throws {
        let view = MemoryView()
        view.acks["b"] = QStateVector([Origin(1): 10, Origin(2): 4])
        var s = SyncSession(peer: "b")
        _ = try s.start(view, nowMs: 0)
        let lower = QStateVector([Origin(1): 3])
        #expect(try s.receive(.ack(lower, partial: true), view, nowMs: 0).first == .recordAck(lower),
                "before any VECTOR, a whole ACK would replace; a partial one may not")
        #expect(s.acknowledged == QStateVector([Origin(1): 10, Origin(2): 4]))
        #expect(!s.isCaughtUp(view), "a partial ACK is not the peer's start")
        let whole = QStateVector([Origin(1): 3])
        #expect(try s.receive(.ack(whole), view, nowMs: 1).first == .replaceAck(whole), "a whole first ACK is as current as a VECTOR")
    }

    @Test func aFrameThatIsNotFullWaitsWhileAnotherIsUnacknowledged() throws {
        let view = MemoryView()
        view.log = try deltas(origin: 1, count: 3)
        view.vector[Origin(1)] = 3
        var s = SyncSession(peer: "b")
        _ = try s.start(view, nowMs: 0)
        let first = sends(try s.receive(.vector(QStateVector()), view, nowMs: 0)).filter { $0.type == .deltas }
        #expect(first.count == 1, "nothing in flight: the partial frame goes at once")
        // Two more writes while that frame is unacknowledged: they wait.
        view.log += try deltas(origin: 1, count: 5).suffix(2)
        view.vector[Origin(1)] = 5
        #expect(try s.poll(view, nowMs: 1).isEmpty, "a partial frame waits for the ACK")
        // The ACK comes: both go in one frame.
        let after = sends(try s.receive(.ack(QStateVector([Origin(1): 3])), view, nowMs: 2))
        guard case .deltas(let next)? = after.first else { Issue.record("no frame after the ACK: \(after)"); return }
        #expect(next.map(\.seq) == [4, 5])
    }

    @Test func fullFramesFillTheWindow() throws {
        let view = MemoryView()
        view.log = try deltas(origin: 1, count: 25)
        view.vector[Origin(1)] = 25
        var options = SyncSession.Options()
        options.batchDeltasMax = 10
        var s = SyncSession(peer: "b", options: options)
        _ = try s.start(view, nowMs: 0)
        let frames = sends(try s.receive(.vector(QStateVector()), view, nowMs: 0)).compactMap { m -> [Delta]? in
            if case .deltas(let d) = m { d } else { nil }
        }
        #expect(frames.map(\.count) == [10, 10], "two full frames go out together; the partial third waits")
    }

    @Test func whatThePeerHoldsComesBackAsAcknowledgementActions() throws {
        let view = MemoryView()
        view.acks["b"] = QStateVector([Origin(1): 10])
        var s = SyncSession(peer: "b")
        _ = try s.start(view, nowMs: 0)
        #expect(s.acknowledged == QStateVector([Origin(1): 10]), "the session starts from what the store recorded")
        // The peer's store went back in time: it holds 4, not 10.
        let lower = QStateVector([Origin(1): 4])
        #expect(try s.receive(.vector(lower), view, nowMs: 0).first == .replaceAck(lower))
        let higher = QStateVector([Origin(1): 7])
        #expect(try s.receive(.ack(higher), view, nowMs: 1).first == .recordAck(higher))
        #expect(s.acknowledged == higher)
        #expect(view.acks["b"] == QStateVector([Origin(1): 10]), "the view is read, never written")

        var publisher = SyncSession(peer: "p")
        publisher.publishOnly = true
        _ = try publisher.start(view, nowMs: 0)
        let actions = try publisher.receive(.vector(higher), view, nowMs: 0)
        #expect(!actions.contains { if case .recordAck = $0 { true } else if case .replaceAck = $0 { true } else { false } },
                "what a publisher holds is not recorded")
    }

    @Test func aCompleteSnapshotBecomesAnApplyAndItsACKWaitsForIt() throws {
        let view = MemoryView()
        var s = SyncSession(peer: "b")
        _ = try s.start(view, nowMs: 0)
        _ = try s.receive(.vector(QStateVector()), view, nowMs: 0)
        // A real snapshot: a store that compacted everything it wrote.
        let store = try SQLStore(path: dir.file("snap.db"), options: StoreOptions(sync: .off))
        defer { store.close() }
        _ = try store.commitLocal([LocalWrite(group: QGroupName("site1/pump"), writes: [Write("r", .set, .int(1))])], origin: Origin(9), physicalMs: 1_000)
        try store.recordAck(peer: "other", vector: store.vector)
        _ = try store.compact()
        guard case .snapshot(let snapshot) = try store.catchUp(for: QStateVector(), limit: 10) else { Issue.record("no snapshot"); return }
        let v = snapshot.vector
        let (name, state) = try #require(snapshot.registers.first)
        let part0 = try s.receive(.snapshot(SnapshotChunk(index: 0, count: 2, vector: v, registers: [name: state])), view, nowMs: 1)
        #expect(!part0.contains { if case .apply = $0 { true } else { false } }, "half a snapshot is not applied")
        let part1 = try s.receive(.snapshot(SnapshotChunk(index: 1, count: 2, vector: v, registers: [:])), view, nowMs: 2)
        #expect(part1 == [.apply(Snapshot(registers: [name: state], vector: v))])
        view.vector = v
        #expect(acks(try s.applied(view, nowMs: 3)) == [v])
        #expect(s.snapshotsApplied == 1)
    }
}
