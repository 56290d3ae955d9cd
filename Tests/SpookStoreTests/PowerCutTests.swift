#if canImport(Glibc)
import Glibc
#endif
import CPowerCut
import SpookCore
import SpookStore
import SpookTestSupport
import Testing

/// Power loss, not only `kill -9` (which leaves the page cache intact, so a
/// crash test passes even at sync = "off"). The `powercut` VFS undoes every
/// write not yet synced, at a chosen write/sync operation, and fails all
/// later ones; the store is then reopened with the ordinary VFS.
@Suite(.serialized) struct PowerCutTests {
    static let origin = Origin(7)

    struct Run {
        var acknowledged: UInt64 = 0
        var held: UInt64 = 0
        var cut = false
    }

    /// Options for a store on this VFS (registered, the power on, no cut
    /// armed), each register's history four long.
    static func powerCutOptions(_ sync: SyncLevel) -> StoreOptions {
        #expect(powercut_register() == 0)
        powercut_reset()
        var options = StoreOptions(sync: sync, historyLength: 4)
        options.vfs = "powercut"
        return options
    }

    /// Commits up to 40 small batches with the power cut after `ops` VFS
    /// operations; returns what was acknowledged and what the disk held.
    static func run(_ sync: SyncLevel, cutAfter ops: Int, in dir: TemporaryDirectory) throws -> Run {
        let options = powerCutOptions(sync)
        let path = dir.file("cut-\(sync)-\(ops).db")
        var run = Run()
        var store: SQLStore? = try SQLStore(path: path, options: options)
        powercut_arm(ops)
        do {
            for i in 0..<40 {
                let requests = (0...(i % 3)).map { j in
                    LocalWrite(group: try! QGroupName("site1/m"), writes: [Write("r\(j)", .set, .int(Int64(i * 10 + j)))])
                }
                for case .failure(let e) in try store!.commitLocal(requests, origin: origin, physicalMs: 1_000 + UInt64(i)) { throw e }
                // commitLocal returned: these deltas are acknowledged.
                run.acknowledged = store!.vector[origin]
            }
        } catch {
            // The cut: the commit in progress failed, and was never acknowledged.
        }
        run.cut = powercut_happened() != 0
        store?.close()
        store = nil
        powercut_reset()
        let reopened = try SQLStore(path: path, options: StoreOptions(sync: .full))
        defer { reopened.close() }
        _ = try reopened.verify()
        run.held = reopened.vector[origin]
        // What is held is whole: every seq up to the vector reads back.
        if run.held > 0 { #expect(try reopened.deltas(origin: origin, seqs: 1...run.held).count == Int(run.held)) }
        return run
    }

    /// A group commit's multi-row statements keep their undo (SQLite's
    /// statement journal) in memory: spilled to a deleted file in /var/tmp,
    /// a fleet's commits wrote 16 MiB/s there beside the log. Counted by
    /// this VFS, which sees every file SQLite opens.
    @Test func aGroupCommitKeepsItsStatementJournalsInMemory() throws {
        let dir = TemporaryDirectory()
        let store = try SQLStore(path: dir.file("journals.db"), options: Self.powerCutOptions(.normal))
        defer { store.close() }
        let before = powercut_subjournals()
        // As a fleet: 500 origins, each writing its own group, a delta each
        // per commit, so every multi-row statement spans many pages.
        let groups = try (0..<500).map { try QGroupName("plant.l\($0)/a") }
        for round in 1...12 {
            let batch = (0..<500).map { k in
                delta(UInt64(k + 1), UInt64(round), 1_700_000_000_000 + UInt64(round), groups[k], [Write("r\(round % 3)", .set, .int(Int64(round)))])
            }
            #expect(try store.commitGroup(batch, local: [], origin: Self.origin, physicalMs: 1_700_000_000_100).result.held.count == 500)
        }
        #expect(powercut_subjournals() == before, "SQLite opened \(powercut_subjournals() - before) statement journal file(s)")
        #expect(store.state.registers[try groups[499].register("r0")]?.value == .int(12))
    }

    /// A step of a history trim runs inside the commit that takes it, so a
    /// trim adds no sync: as a transaction of its own after the commit, each
    /// step cost one more (about 20 per trim at a fleet's bound). Counted by
    /// this VFS, which sees every sync.
    @Test func aHistoryTrimAddsNoSyncToTheCommitsThatCarryIt() throws {
        let dir = TemporaryDirectory()
        var options = Self.powerCutOptions(.full)
        options.historyTrimRowsPerStep = 50
        let store = try SQLStore(path: dir.file("trim.db"), options: options)
        defer { store.close() }
        let groups = try (0..<20).map { try QGroupName("plant.l\($0)/a") }
        var round: UInt64 = 0
        func commit() throws -> Int {  // the syncs this commit took
            round += 1
            let before = powercut_syncs()
            let batch = (0..<20).map { k in
                delta(UInt64(k + 1), round, 1_700_000_000_000 + round, groups[k], [Write("r", .set, .int(Int64(round)))])
            }
            #expect(try store.commitGroup(batch, local: [], origin: Self.origin, physicalMs: 1_700_000_000_100).result.held.count == 20)
            return powercut_syncs() - before
        }
        _ = try commit()  // the log's first commit writes its header too
        var plain: [Int] = [], stepped: [Int] = []
        while round < 300 && !(store.historyTrims == 1 && !store.historyTrimming) {
            let steps = store.historyTrimSteps
            let syncs = try commit()
            if store.historyTrimSteps > steps { stepped.append(syncs) } else { plain.append(syncs) }
        }
        // 20 rows a commit: the trim starts at 1,024 rows and reads them 80
        // at a time (four times the rows appended since its last step).
        #expect(store.historyTrims == 1 && !store.historyTrimming, "no trim began and ended in \(round) commits")
        #expect(stepped.count >= 10, "the trim took \(stepped.count) steps")
        #expect(!plain.isEmpty && Set(plain).count == 1, "commits without a trim step synced \(Set(plain)) times")
        #expect(Set(stepped) == Set(plain), "commits with a trim step synced \(Set(stepped)) times, others \(Set(plain))")
    }

    /// At sync = "full" no acknowledged delta is lost at any cut point.
    @Test func fullLosesNothingAcknowledgedAtAnyCutPoint() throws {
        let dir = TemporaryDirectory()
        var cuts = 0
        for ops in stride(from: 1, through: 240, by: 2) {
            let r = try Self.run(.full, cutAfter: ops, in: dir)
            #expect(r.held >= r.acknowledged, "cut after \(ops) operations: \(r.acknowledged) acknowledged, \(r.held) held")
            if r.cut { cuts += 1 }
        }
        #expect(cuts >= 100, "only \(cuts) of 120 runs reached their cut point")
    }

    /// At sync = "normal" (WAL synced only at checkpoints) a power cut loses
    /// the commits acknowledged since the last checkpoint, and nothing else:
    /// what is held is always a whole prefix that verifies. This is also the
    /// canary: it shows the fault layer can lose data at all.
    @Test func normalMayLoseTheCommitsSinceTheLastCheckpoint() throws {
        let dir = TemporaryDirectory()
        var lost: [UInt64] = []
        for ops in stride(from: 5, through: 120, by: 5) {
            let r = try Self.run(.normal, cutAfter: ops, in: dir)
            lost.append(r.acknowledged - min(r.acknowledged, r.held))
        }
        #expect(lost.contains { $0 > 0 }, "a power cut at sync = normal lost nothing: the fault layer did not act")
        print("power cut at sync=normal: acknowledged deltas lost per cut point \(lost)")
    }
}
