#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookStore
import SpookTestSupport
import Testing

@Suite struct DurabilityTests {
    /// Streams `rounds` × 400 deltas over 32 registers; a peer
    /// acknowledges each round when `acked`, and the store compacts. Returns
    /// disk bytes after the warm-up and at the end.
    static func stream(rounds: Int, acked: Bool, in dir: TemporaryDirectory) throws -> (warm: Int, end: Int, horizon: UInt64) {
        let store = try SQLStore(path: dir.file(acked ? "acked.db" : "unacked.db"), options: options(.off, history: 4))
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
            if round == rounds / 4 {
                // The WAL comes and goes with checkpoints (and is capped by
                // journal_size_limit): measure the database proper.
                try store.checkpoint()
                warm = store.diskBytes()
            }
        }
        _ = try store.verify()
        try store.checkpoint()
        return (warm, store.diskBytes(), store.horizon[Origin(1)])
    }

    @Test func diskUseStaysFlatUnderALongAcknowledgedWriteStream() throws {
        let dir = TemporaryDirectory()
        let flat = try Self.stream(rounds: 200, acked: true, in: dir)
        #expect(flat.horizon == 80_000, "every acknowledged delta was compacted")
        #expect(flat.end <= flat.warm + flat.warm / 10 + 16_384, "disk grew from \(flat.warm) to \(flat.end) bytes over 60,000 more deltas")
        // The same stream with a peer that never acknowledges must keep every
        // delta: proves the measurement can see growth at all.
        let held = try Self.stream(rounds: 200, acked: false, in: dir)
        #expect(held.horizon == 0)
        #expect(held.end > 2 * flat.end, "unacknowledged deltas must be kept: \(held.end) bytes against \(flat.end) compacted")
        print("disk bytes: compacted \(flat.warm) -> \(flat.end), never acknowledged \(held.warm) -> \(held.end)")
    }

    /// SIGKILL a writer at random moments, 25 times; after each, the store
    /// reopens with every acknowledged delta present once, its checksums and
    /// vectors intact, and its registers equal to the collapse of its log.
    @Test func killNineAtRandomMomentsLosesNothingAcknowledged() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("crash.db")
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

            let store = try SQLStore(path: path, options: options(.full, history: 8))
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
