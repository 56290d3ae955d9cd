#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookStore
import SpookStoreTestSupport
import SpookTestSupport
import Testing

@Suite struct DurabilityTests {
    /// Streams `rounds` × 400 deltas over 32 registers; a peer
    /// acknowledges each round when `acked`, and the store compacts. Returns
    /// disk bytes (SQLite) after the warm-up and at the end, the horizon, and
    /// the deltas left in the log.
    static func stream(rounds: Int, acked: Bool, in shelf: StoreShelf) throws -> (warm: Int, end: Int, horizon: UInt64, log: Int) {
        let store = try shelf.open(acked ? "acked" : "unacked", options(.off, history: 4))
        try store.recordAck(peer: "upstream", vector: QStateVector())
        var random = SplitMix64(seed: 5)
        var warm = 0
        for round in 0..<rounds {
            let requests = (0..<400).map { _ in
                LocalWrite(group: [groupA, groupB][Int(random.next() % 2)], writes: [Write("r\(random.next() % 16)", .set, .string(String(random.next(), radix: 36)))])
            }
            _ = try store.commitLocal(requests, origin: Origin(1), physicalMs: 1_000 + UInt64(round))
            if acked { try store.recordAck(peer: "upstream", vector: store.vector) }
            _ = try store.compact()
            if round == rounds / 4, shelf.backend == .sqlite {
                // The WAL comes and goes with checkpoints (and is capped by
                // journal_size_limit): measure the database proper.
                try store.checkpoint()
                warm = store.diskBytes()
            }
        }
        let log = try store.verify().deltas
        if shelf.backend == .sqlite { try store.checkpoint() }
        return (warm, store.diskBytes(), store.horizon[Origin(1)], log)
    }

    /// SQLite's log file stays within `walBytes` (`[node] log_mib`) and one
    /// commit, however much is written: 300 commits of about 140 KiB each
    /// against a bound of 1 MiB (about 40 times the bound in all). A commit that
    /// takes a step of a history trim writes about 570 KiB here, so one
    /// commit is allowed 1 MiB.
    @Test func theSQLiteLogStaysWithinItsBound() throws {
        let dir = TemporaryDirectory()
        var o = StoreOptions(sync: .off, historyLength: 4)
        o.walBytes = 1 << 20
        let store = try SQLStore(path: dir.file("log.db"), options: o)
        defer { store.close() }
        var random = SplitMix64(seed: 9)
        var largest = 0
        for round in 0..<300 {
            let requests = (0..<100).map { i in
                LocalWrite(group: [groupA, groupB][i % 2], writes: [Write("r\(random.next() % 64)", .set, .string(String(repeating: "x", count: 200) + "\(round)"))])
            }
            for case .failure(let e) in try store.commitLocal(requests, origin: Origin(1), physicalMs: 1_000 + UInt64(round)) { throw e }
            var info = stat()
            if stat(dir.file("log.db-wal"), &info) == 0 { largest = max(largest, Int(info.st_size)) }
        }
        #expect(largest >= 512 << 10, "the log never came near its bound (\(largest) bytes): the test wrote too little")
        #expect(largest <= (1 << 20) + (1 << 20), "the log grew to \(largest) bytes against a bound of 1 MiB")
    }

    /// The log holds what a peer has not acknowledged, no more: on SQLite the
    /// file stays flat too (on PostgreSQL the space of deleted rows is
    /// autovacuum's to reuse; docs/deployment.md).
    @Test(arguments: Backend.allCases) func diskUseStaysFlatUnderALongAcknowledgedWriteStream(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let rounds = backend == .sqlite ? 200 : 50
        let flat = try Self.stream(rounds: rounds, acked: true, in: shelf)
        #expect(flat.horizon == UInt64(rounds * 400), "every acknowledged delta was compacted")
        #expect(flat.log == 0, "\(flat.log) acknowledged deltas left in the log")
        // The same stream with a peer that never acknowledges must keep every delta.
        let held = try Self.stream(rounds: rounds, acked: false, in: shelf)
        #expect(held.horizon == 0 && held.log == rounds * 400)
        guard backend == .sqlite else { return }
        #expect(flat.end <= flat.warm + flat.warm / 10 + 16_384, "disk grew from \(flat.warm) to \(flat.end) bytes over 60,000 more deltas")
        // ... which proves the measurement can see growth at all.
        #expect(held.end > 2 * flat.end, "unacknowledged deltas must be kept: \(held.end) bytes against \(flat.end) compacted")
        print("disk bytes: compacted \(flat.warm) -> \(flat.end), never acknowledged \(held.warm) -> \(held.end)")
    }

    /// SIGKILL a writer at random moments, 25 times; after each, the store
    /// reopens with every acknowledged delta present once, its checksums and
    /// vectors intact, and its registers equal to the collapse of its log.
    @Test(arguments: Backend.allCases) func killNineAtRandomMomentsLosesNothingAcknowledged(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let path = try shelf.location("crash")
        let writer = ChildProcess.builtExecutable("spook-crash-writer")
        var random = SplitMix64(seed: 0x9)
        var acked: [Origin: UInt64] = [:]
        var totalAcked: UInt64 = 0
        for kill in 1...25 {
            let child = try ChildProcess(writer, [path, "\(kill)", "full"])
            guard let ready = try child.readLine(), ready.hasPrefix("ready") else {
                Issue.record("writer did not start: \(writer)")
                return
            }
            // Let it acknowledge a random number of batches, then pull the plug
            // while it is in the middle of the next ones.
            let batches = 1 + Int(random.next() % 25)
            for _ in 0..<batches {
                guard let line = try child.readLine() else { break }
                try Self.record(line, into: &acked)
            }
            child.signal(SIGKILL)
            let status = child.wait()
            #expect(status & 0x7f == SIGKILL, "kill \(kill): the writer must die by SIGKILL, status \(status)")
            // Lines already in the pipe were acknowledged before the kill too.
            while let line = try child.readLine() { try Self.record(line, into: &acked) }

            let store = try shelf.open("crash", options(.full, history: 8))
            _ = try store.verify()
            var log = CollapseState(schema: intN)
            for origin in store.vector.origins {
                let high = store.vector[origin]
                #expect(high >= acked[origin] ?? 0, "kill \(kill): origin \(origin) holds \(high), \(acked[origin] ?? 0) were acknowledged")
                let deltas = try store.deltas(origin: origin, seqs: 1...max(high, 1))
                #expect(deltas.map(\.seq) == Array(1...high), "kill \(kill): origin \(origin) must hold 1...\(high) exactly once")
                for d in deltas { _ = try? log.apply(d) }
            }
            #expect(log.canonicalBytes() == store.state.canonicalBytes(), "kill \(kill): registers differ from the collapse of the log")
            store.close()
            totalAcked = acked.values.reduce(0, +)
        }
        #expect(totalAcked > 25, "the writer must have acknowledged work to lose")
    }

    static func record(_ line: String, into acked: inout [Origin: UInt64]) throws {
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[0] == "acked", let origin = Origin(hex: String(parts[1])), let seq = UInt64(parts[2]) else {
            throw ChildProcess.Failure("unexpected line from the writer: \(line)")
        }
        acked[origin] = max(acked[origin] ?? 0, seq)
    }
}
