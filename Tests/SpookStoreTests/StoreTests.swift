#if canImport(Glibc)
import Glibc
#endif
import CSQLite
import SpookCore
import SpookStore
import SpookStoreTestSupport
import SpookTestSupport
import Testing

let groupA = try! QGroupName("plant.l1/a")
let groupB = try! QGroupName("plant.l1/b")
let intN = Schema(registers: [(RegisterSelector(domain: try! QDomainPattern("plant.*"), register: "n"), RegisterSpec(type: .int))])

func delta(_ origin: UInt64, _ seq: UInt64, _ ms: UInt64, _ group: QGroupName, _ writes: [Write]) -> Delta {
    try! Delta(origin: Origin(origin), seq: seq, hlc: HLCTimestamp(ms: ms, counter: 0), group: group, writes: writes)
}

func delta(_ origin: UInt64, _ seq: UInt64, _ ms: UInt64, _ writes: [Write]) -> Delta {
    delta(origin, seq, ms, groupA, writes)
}

/// A broken collapse rule: the latest write to arrive wins, even an older
/// one. The store's C3 check refuses a block in which it moves a register back.
struct LatestArrivalWins: CollapseRule {
    func merge(_ current: RegisterState?, write: Write, stamp: Stamp, policy: Policy) -> RegisterState? {
        let next = RegisterState.lww(Versioned(write.value, stamp))
        return next == current ? nil : next
    }

    func merge(_ current: RegisterState?, snapshot: RegisterState) -> RegisterState? { snapshot == current ? nil : snapshot }
}

func options(_ sync: SyncLevel = .off, history: Int = 8) -> StoreOptions {
    StoreOptions(sync: sync, historyLength: history, schema: intN)
}

@Suite struct StoreTests {
    /// `lazyAcks`: an acknowledgement is kept in memory (compaction and
    /// sessions see it at once) and reaches the file with the next commit,
    /// compaction step, `flushAcks` or `close`; a peer's first one at once.
    @Test(arguments: Backend.allCases) func lazyAcknowledgementsRideOnTheNextWrite(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        var o = options(.full)
        o.lazyAcks = true
        let fileSays = { (peer: String) throws -> UInt64 in
            let reader = try shelf.open("s", options(.full))
            defer { reader.close() }
            return reader.peerVector(peer)[Origin(1)]
        }
        let store = try shelf.open("s", o)
        _ = try store.commit((1...3).map { delta(1, $0, 10 + $0, [Write("n", .set, .int(Int64($0)))]) })
        try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 1]))
        #expect(try fileSays("up") == 1, "a peer's first acknowledgement is written at once")
        try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 2]))
        #expect(store.peerVector("up")[Origin(1)] == 2)
        #expect(try fileSays("up") == 1, "kept in memory: no transaction of its own")
        _ = try store.commit([delta(1, 4, 20, [Write("n", .set, .int(4))])])
        #expect(try fileSays("up") == 2, "written with the next commit")
        try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 4]))
        let report = try store.compact()
        #expect(try report.deltasRemoved == 4 && fileSays("up") == 4, "compaction writes what its horizon follows")
        try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 4]))
        _ = try store.commit([delta(1, 5, 21, [Write("n", .set, .int(5))])])
        try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 5]))
        try store.flushAcks()
        #expect(try fileSays("up") == 5)
        _ = try store.commit([delta(1, 6, 22, [Write("n", .set, .int(6))])])
        try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 6]))
        store.close()
        #expect(try fileSays("up") == 6, "close writes what is left")
    }

    @Test(arguments: Backend.allCases) func stateVectorsAndHistorySurviveReopening(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        var bytes: [UInt8] = []
        do {
            let store = try shelf.open("s", options(.full))
            let r = try store.commit([delta(1, 1, 10, [Write("n", .set, .int(1))]), delta(1, 2, 11, groupB, [Write("x", .set, .string("hi"))])])
            #expect(r.held.count == 2 && r.block != nil)
            #expect(r.changed.map(\.description) == ["plant.l1/a/n", "plant.l1/b/x"])
            try store.recordAck(peer: "up", vector: QStateVector([Origin(1): 1]))
            bytes = store.state.canonicalBytes()
        }
        let again = try shelf.open("s", options(.full))
        #expect(again.vector == QStateVector([Origin(1): 2]))
        #expect(again.state.canonicalBytes() == bytes)
        #expect(again.peerVector("up") == QStateVector([Origin(1): 1]))
        #expect(again.hlcHigh == (try HLCTimestamp(ms: 11, counter: 0)))
        #expect(try again.history(groupA.register("n")).map(\.versioned.value) == [.int(1)])
        #expect(try again.verify() == VerifyReport(blocks: 1, deltas: 2, registers: 2))
    }

    @Test(arguments: Backend.allCases) func duplicatesAreSkippedAndDeltasAfterAGapAreNotHeld(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let store = try shelf.open("s", options())
        _ = try store.commit([delta(1, 1, 10, [Write("a", .set, .int(1))])])
        let r = try store.commit([delta(1, 1, 10, [Write("a", .set, .int(1))]), delta(1, 3, 12, [Write("a", .set, .int(3))]), delta(2, 1, 5, [Write("b", .set, .null)])])
        #expect(r.duplicates == 1)
        #expect(r.gaps == [DeltaID(origin: Origin(1), seq: 3)])
        #expect(r.held == [DeltaID(origin: Origin(2), seq: 1)])
        #expect(store.vector == QStateVector([Origin(1): 1, Origin(2): 1]))
        #expect(try store.commit([delta(1, 1, 10, [Write("a", .set, .int(1))])]).block == nil, "nothing new, no StateBlock")
    }

    @Test(arguments: Backend.allCases) func refusedDeltasAreHeldAndServedButChangeNoRegister(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let store = try shelf.open("s", options())
        let r = try store.commit([delta(1, 1, 10, [Write("n", .set, .string("not an int"))]), delta(1, 2, 11, [Write("n", .set, .int(2))])])
        #expect(r.refused.map(\.id.seq) == [1])
        #expect(r.refused.first?.error.code == .typeMismatch)
        #expect(store.vector[Origin(1)] == 2, "the origin's run stays contiguous")
        #expect(store.state.registers[try groupA.register("n")]?.value == .int(2))
        guard case .deltas(let served) = try store.catchUp(for: QStateVector(), limit: 10) else { Issue.record("expected deltas"); return }
        #expect(served.map(\.seq) == [1, 2], "a refused delta is relayed so peers see no gap")
    }

    @Test(arguments: Backend.allCases) func batchingAndInterleavingDoNotChangeTheStoredState(_ backend: Backend) throws {
        var random = SplitMix64(seed: 99)
        var perOrigin: [[Delta]] = []
        for o in UInt64(1)...4 {
            perOrigin.append((1...60).map { s in
                delta(o, s, random.next() % 30, [groupA, groupB][Int(random.next() % 2)], [Write(["n", "x", "y"][Int(random.next() % 3)], .set, .int(Int64(random.next() % 9)))])
            })
        }
        let shelf = StoreShelf(backend)
        var reference: [UInt8]?
        for trial in 0..<6 {
            // Interleave origins at random, keeping each origin's seq order, and cut into random batches.
            var queues = perOrigin
            var stream: [Delta] = []
            while queues.contains(where: { !$0.isEmpty }) {
                let i = Int(random.next() % 4)
                if !queues[i].isEmpty { stream.append(queues[i].removeFirst()) }
            }
            let store = try shelf.open("t\(trial)", options())
            var i = 0
            while i < stream.count {
                let size = 1 + Int(random.next() % 50)
                _ = try store.commit(Array(stream[i..<min(i + size, stream.count)]))
                i += size
            }
            let bytes = store.state.canonicalBytes()
            if let reference { #expect(bytes == reference, "trial \(trial)") } else { reference = bytes }
            #expect(store.vector.total == 240)
            _ = try store.verify()
        }
    }

    @Test(arguments: Backend.allCases) func localWritesTakeContiguousSeqsAndTheirClockNeverGoesBack(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let me = Origin(7)
        var last: Delta?
        do {
            let store = try shelf.open("s", options())
            // A remote delta from the future pulls our clock forward.
            _ = try store.commit([delta(1, 1, 9_000, [Write("a", .set, .int(0))])])
            let results = try store.commitLocal([LocalWrite(group: groupA, writes: [Write("a", .set, .int(1))]),
                                                 LocalWrite(group: groupA, writes: [Write("n", .set, .bool(true))]),
                                                 LocalWrite(group: groupB, writes: [Write("a", .set, .int(2))])], origin: me, physicalMs: 1_000)
            #expect(results.map { (try? $0.get())?.seq } == [1, nil, 2])
            if case .failure(let e) = results[1] { #expect(e.code == .typeMismatch) } else { Issue.record("expected a refusal") }
            last = try results[2].get()
            #expect(last!.hlc > (try HLCTimestamp(ms: 9_000, counter: 0)))
            #expect(store.state.registers[try groupA.register("a")]?.value == .int(1), "our later write wins over the remote one")
        }
        // After a restart with a physical clock that went backwards, seqs and stamps continue.
        let store = try shelf.open("s", options())
        let next = try store.commitLocal([LocalWrite(group: groupA, writes: [Write("a", .set, .int(3))])], origin: me, physicalMs: 500)
        let d = try next[0].get()
        #expect(d.seq == 3)
        #expect(d.hlc > last!.hlc)
    }

    @Test(arguments: Backend.allCases) func catchUpSendsExactlyWhatThePeerLacksInSeqOrder(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let store = try shelf.open("s", options())
        _ = try store.commit((1...10).map { delta(1, $0, $0, [Write("a", .set, .int(Int64($0)))]) } + (1...3).map { delta(2, $0, $0, [Write("b", .set, .int(Int64($0)))]) })
        guard case .deltas(let d) = try store.catchUp(for: QStateVector([Origin(1): 7, Origin(2): 3]), limit: 100) else { Issue.record("deltas"); return }
        #expect(d.map(\.id.description) == ["0000000000000001#8", "0000000000000001#9", "0000000000000001#10"])
        guard case .deltas(let limited) = try store.catchUp(for: QStateVector(), limit: 4) else { Issue.record("deltas"); return }
        #expect(limited.map(\.seq) == [1, 2, 3, 4])
        guard case .deltas(let none) = try store.catchUp(for: store.vector, limit: 4) else { Issue.record("deltas"); return }
        #expect(none.isEmpty)
    }

    @Test(arguments: Backend.allCases) func aPeerBehindTheHorizonGetsASnapshotAndConverges(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let a = try shelf.open("a", options())
        for seq in UInt64(1)...20 { _ = try a.commit([delta(1, seq, seq, [Write("a", .set, .int(Int64(seq)))])]) }
        try a.recordAck(peer: "b", vector: QStateVector([Origin(1): 15]))
        let report = try a.compact()
        #expect(report.deltasRemoved == 15 && a.horizon == QStateVector([Origin(1): 15]))
        _ = try a.verify()
        // A newcomer that holds only the first 5 deltas.
        let c = try shelf.open("c", options())
        _ = try c.commit((1...5).map { delta(1, $0, $0, [Write("a", .set, .int(Int64($0)))]) } + [delta(3, 1, 1, [Write("z", .set, .int(0))])])
        guard case .snapshot(let snapshot) = try a.catchUp(for: c.vector, limit: 100) else { Issue.record("expected a snapshot"); return }
        let changed = try c.apply(snapshot)
        #expect(changed.map(\.description) == ["plant.l1/a/a"])
        #expect(c.vector == QStateVector([Origin(1): 20, Origin(3): 1]))
        #expect(c.horizon == QStateVector([Origin(1): 20]))
        #expect(c.state.registers[try groupA.register("a")] == a.state.registers[try groupA.register("a")])
        #expect(try c.verify().deltas == 1, "the deltas the snapshot covers are dropped; the log keeps its shape")
        // The peer behind the horizon is served a snapshot; one past it gets deltas.
        guard case .deltas(let d) = try a.catchUp(for: QStateVector([Origin(1): 15]), limit: 100) else { Issue.record("deltas"); return }
        #expect(d.map(\.seq) == [16, 17, 18, 19, 20])
    }

    @Test(arguments: Backend.allCases) func historyIsABoundedRingNewestFirst(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let store = try shelf.open("s", options(history: 5))
        for i in UInt64(1)...23 { _ = try store.commit([delta(1, i, i, [Write("n", .set, .int(Int64(i)))])]) }
        let h = try store.history(groupA.register("n"))
        #expect(h.map(\.versioned.value) == (19...23).reversed().map { Value.int(Int64($0)) })
        #expect(h.allSatisfy { $0.side == .value })
    }

    /// Writes `count` one-write deltas of origin 1 (from `seq` on), ten a
    /// StateBlock, each to register `n` of `groups[register(i)]`.
    static func writeHistory(_ store: SQLStore, _ groups: [QGroupName], from seq: inout UInt64, count: Int, register: (Int) -> Int) throws {
        var i = 0
        while i < count {
            let block = (i..<min(i + 10, count)).map { k -> Delta in
                seq += 1
                return delta(1, seq, seq, groups[register(k)], [Write("n", .set, .int(Int64(k)))])
            }
            _ = try store.commit(block)
            i += block.count
        }
    }

    @Test(arguments: Backend.allCases) func theHistoryTableStaysBoundedAndKeepsEachRegistersNewest(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let store = try shelf.open("s", options(history: 4))
        let groups = try (0..<20).map { try QGroupName("plant.l\($0)/a") }
        var seq: UInt64 = 0
        // Register 0 is written only first: its rows are the oldest in the
        // table each time a trim runs (every 1,024 rows appended).
        try Self.writeHistory(store, groups, from: &seq, count: 6) { _ in 0 }
        try Self.writeHistory(store, groups, from: &seq, count: 3_000) { 1 + $0 % 19 }
        let rows = try store.historyRows(after: 0, limit: 1_000_000)
        #expect(rows.count < 3_006, "no trim ran")
        // After the last trim: at most 4 rows a register, then fewer than 1,024 appended.
        #expect(rows.count <= 1_024 + 20 * 4, "the table outgrew its bound: \(rows.count) rows")
        let byRegister = Dictionary(grouping: rows, by: { $0.change.name })
        #expect(byRegister.count == 20)
        for (name, kept) in byRegister { #expect(kept.count >= 4, "\(name) kept \(kept.count) rows") }
        // Register 0 keeps exactly its newest four, oldest first in the table.
        let rare = try groups[0].register("n")
        #expect(byRegister[rare]?.map(\.change.entry.versioned.value) == (2...5).map { Value.int(Int64($0)) })
        #expect(try store.history(rare).map(\.versioned.value) == (2...5).reversed().map { Value.int(Int64($0)) })
    }

    @Test(arguments: Backend.allCases) func historyRowsHeldForAReaderOutliveTheTrim(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        let store = try shelf.open("s", options(history: 4))
        let groups = try (0..<20).map { try QGroupName("plant.l\($0)/a") }
        var seq: UInt64 = 0
        try Self.writeHistory(store, groups, from: &seq, count: 100) { $0 % 20 }
        let head = try store.historyHead()
        store.historyHold = (after: head, rowsMax: 100_000)
        try Self.writeHistory(store, groups, from: &seq, count: 2_000) { $0 % 20 }
        let rows = try store.historyRows(after: 0, limit: 1_000_000)
        #expect(rows.filter { $0.id > head }.count == 2_000, "rows the reader had not consumed were trimmed")
        // Each register's newest four are among the held rows: the consumed ones all go.
        #expect(rows.filter { $0.id <= head }.isEmpty, "rows the reader had consumed were not trimmed")
    }

    /// SQLite trims in steps, each a transaction after a commit, so no
    /// commit waits for a whole table's pass: the same rows go, a register
    /// keeps its newest values, the table stays bounded, and rows a reader
    /// starts holding in the middle of a trim are kept.
    @Test func aTrimInStepsKeepsEachRegistersNewestAndWhatAReaderHolds() throws {
        let shelf = StoreShelf(.sqlite)
        var o = options(history: 4)
        o.historyTrimRowsPerStep = 50
        let store = try shelf.open("s", o)
        let groups = try (0..<20).map { try QGroupName("plant.l\($0)/a") }
        var seq: UInt64 = 0
        try Self.writeHistory(store, groups, from: &seq, count: 6) { _ in 0 }
        var written = 0
        while !store.historyTrimming && written < 2_000 {
            try Self.writeHistory(store, groups, from: &seq, count: 10) { 1 + ($0 + written) % 19 }
            written += 10
        }
        #expect(store.historyTrims == 1 && store.historyTrimming, "no trim began, or it ended in its first step")
        // The rows the trim reads; rows appended while it runs wait for the next one.
        let trimmed = try store.historyHead()
        try Self.writeHistory(store, groups, from: &seq, count: 10) { 1 + $0 % 19 }
        #expect(store.historyTrimming, "a trim of about 1,030 rows in steps of 50 ended within two commits")
        // Two steps have read the newest 100 rows. A reader far behind
        // starts holding the 300 rows below them, mid-trim.
        let reader = trimmed - 400
        store.historyHold = (after: reader, rowsMax: 100_000)
        try Self.writeHistory(store, groups, from: &seq, count: 400) { 1 + $0 % 19 }
        #expect(!store.historyTrimming, "the trim did not end")
        #expect(store.historyTrimSteps >= 1_000 / 50, "\(store.historyTrimSteps) steps")
        var rows = try store.historyRows(after: 0, limit: 1_000_000)
        #expect(rows.filter { $0.id > reader && $0.id <= trimmed - 100 }.count == 300, "rows the reader holds were trimmed")
        let old = Dictionary(grouping: rows.filter { $0.id <= reader }, by: { $0.change.name })
        #expect(old.values.allSatisfy { $0.count <= 4 }, "a register kept more than its newest four of the rows the reader consumed")
        let rare = try groups[0].register("n")
        #expect(try store.history(rare).map(\.versioned.value) == (2...5).reversed().map { Value.int(Int64($0)) })
        // Without a reader, more trims: each register keeps at least four, the table stays bounded.
        store.historyHold = nil
        try Self.writeHistory(store, groups, from: &seq, count: 3_000) { 1 + $0 % 19 }
        rows = try store.historyRows(after: 0, limit: 1_000_000)
        #expect(store.historyTrims >= 3)
        #expect(rows.count <= 2 * 1_024 + 20 * 4, "the table outgrew its bound: \(rows.count) rows")
        let byRegister = Dictionary(grouping: rows, by: { $0.change.name })
        #expect(byRegister.count == 20)
        for (name, kept) in byRegister { #expect(kept.count >= 4, "\(name) kept \(kept.count) rows") }
    }

    @Test(arguments: SyncLevel.allCases)
    func theConfiguredSyncLevelIsInEffect(_ level: SyncLevel) throws {
        let shelf = StoreShelf(.sqlite)
        let store = try shelf.open("s", options(level))
        #expect(try store.syncLevelInEffect() == level)
    }

    @Test(arguments: Backend.allCases) func verifyFindsATamperedStateBlock(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        do {
            let store = try shelf.open("s", options())
            _ = try store.commit([delta(1, 1, 1, [Write("a", .set, .int(1))]), delta(1, 2, 2, [Write("a", .set, .int(2))])])
            _ = try store.verify()
        }
        // Flip the value inside one stored delta behind the store's back.
        try StoreTests.behindTheStoresBack(shelf, "s",
                                           sqlite: "UPDATE deltas SET body = substr(body, 1, length(body) - 1) || x'07' WHERE seq = 2",
                                           postgres: "UPDATE deltas SET body = set_byte(body, length(body) - 1, 7) WHERE seq = 2")
        let store = try shelf.open("s", options())
        let error = #expect(throws: StoreError.self) { try store.verify() }
        #expect(error?.code == .corrupt)
        #expect(error?.message.contains("StateBlock 1") == true && error?.message.contains("checksum") == true, "\(error?.message ?? "-")")
    }

    @Test(arguments: Backend.allCases) func aStoreOfAnotherFormatIsRefusedByName(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        do { _ = try shelf.open("s", options()) }
        let sql = "UPDATE meta SET value = 99 WHERE key = 'format'"
        try StoreTests.behindTheStoresBack(shelf, "s", sqlite: sql, postgres: sql)
        let error = #expect(throws: StoreError.self) { try shelf.open("s", options()) }
        #expect(error?.code == .wrongFormat)
        #expect(error?.message.contains("store format 99, this build reads format \(SQLStore.formatVersion)") == true)
    }

    /// The log is keyed by StateBlock, and runs (in the `runs` table, or
    /// pending in memory on SQLite) say where each origin's seqs lie. Reads
    /// by origin return exactly the seqs asked for, through reopening with
    /// runs pending, the bound on pending runs, compaction, a snapshot that
    /// drops an origin's deltas and a reincarnation that sets some aside;
    /// `verify()` checks the runs against the log after each.
    @Test(arguments: Backend.allCases) func readsByOriginFindEverySeqThroughTheRuns(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        var o = options()
        o.pendingRunsMax = 40
        var store = try shelf.open("s", o)
        var rng = SplitMix64(seed: 7)
        let origins = (1...24).map { Origin(UInt64($0) &* 0x9E37_79B9_7F4A_7C15) }
        var mid = QStateVector()
        func readsAreExact(_ label: String) throws {
            _ = try store.verify()
            for origin in origins where store.vector[origin] > store.horizon[origin] {
                let low = store.horizon[origin] + 1, high = store.vector[origin]
                for _ in 0..<4 {
                    let a = low + rng.next() % (high - low + 1), b = a + rng.next() % (high - a + 1)
                    let got = try store.deltas(origin: origin, seqs: a...b).map(\.seq)
                    #expect(got == Array(a...b), "\(label): \(origin) \(a)...\(b)")
                }
                #expect(try store.heldHLC(origin: origin, seq: high) != nil && store.heldHLC(origin: origin, seq: high + 1) == nil, "\(label): \(origin)")
            }
        }
        for block in UInt64(1)...70 {
            var batch: [Delta] = []
            for origin in origins where rng.chance(0.4) {
                for _ in 0...(rng.next() % 3) {
                    batch.append(try Delta(origin: origin, seq: store.vector[origin] + 1 + UInt64(batch.filter { $0.origin == origin }.count),
                                           hlc: HLCTimestamp(ms: block, counter: 0), group: groupA, writes: [Write("n", .set, .int(Int64(block)))]))
                }
            }
            _ = try store.commit(batch)
            if block == 35 { mid = store.vector }
            if [9, 30, 47].contains(block) {
                store.close()
                store = try shelf.open("s", o)
                try readsAreExact("reopened after block \(block)")
            }
        }
        try readsAreExact("after 70 blocks")
        if backend == .sqlite { #expect(store.pendingRunsFlushedWhole > 0, "40 pending runs at most: some commits wrote them all") }

        try store.recordAck(peer: "p", vector: mid)
        while try store.compact().more {}
        for origin in origins { #expect(store.horizon[origin] == mid[origin]) }
        try readsAreExact("compacted through block 35")

        let dropped = origins[3], setAside = origins[5]
        _ = try store.apply(Snapshot(registers: [:], vector: QStateVector([dropped: store.vector[dropped] + 1])))
        let keep = mid[setAside] + (store.vector[setAside] - mid[setAside]) / 2
        _ = try store.reincarnate(origin: setAside, keepThrough: keep, waitThrough: 0)
        #expect(store.vector[setAside] == keep)
        try readsAreExact("after a snapshot and a reincarnation")
        store.close()
        store = try shelf.open("s", o)
        try readsAreExact("reopened at the end")
        #expect(try store.deltas(origin: dropped, seqs: 1...store.vector[dropped]).isEmpty)
    }

    /// A store written by the build before the log was keyed by StateBlock
    /// (format 1: `Fixtures/format1.sqlite`, written through `spookctl set`
    /// by a release `spookd` built from 7968c7c, whose store code is the
    /// same through f18d5f3) is converted when opened, and reads back whole.
    @Test func aFormatOneStoreIsConvertedAndReadsBackWhole() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("old.db")
        let fixture = "/" + #filePath.split(separator: "/").dropLast().joined(separator: "/") + "/Fixtures/format1.sqlite"
        // A copy, made by SQLite from the fixture opened as immutable: nothing
        // is written next to the repository's file (no -wal, no -shm).
        var db: OpaquePointer?
        #expect(sqlite3_open_v2("file:\(fixture)?immutable=1", &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, nil) == SQLITE_OK)
        #expect(sqlite3_exec(db, "VACUUM INTO '\(path)'", nil, nil, nil) == SQLITE_OK)
        sqlite3_close(db)
        let origin = Origin(0xd85f_e0c8_ec26_6960)
        let schema = Schema(registers: [(RegisterSelector(domain: try QDomainPattern("plant"), register: "speed"), RegisterSpec(type: .int))])
        for round in 1...2 {
            let store = try SQLStore(path: path, options: StoreOptions(sync: .off, schema: schema))
            #expect(store.vector[origin] == UInt64(6 + round), "round \(round)")
            #expect(try store.verify().deltas == 6 + round)
            #expect(try store.deltas(origin: origin, seqs: 1...7).map(\.seq) == Array(1...7))
            #expect(store.state.registers[try QRegisterName("plant/main/speed")] != nil)
            if round == 1 {
                let results = try store.commitLocal([LocalWrite(group: try QGroupName("plant/main"), writes: [Write("speed", .set, .int(6))])], origin: origin, physicalMs: 1_796_239_500_000)
                #expect(results.count == 1)
            }
            store.close()
        }
    }

    /// Format 2 changed only SQLite's tables: a PostgreSQL database of
    /// format 1 is taken as it is, and reads back whole.
    @Test func aFormatOneStoreOnPostgreSQLIsTakenAsItIs() throws {
        let shelf = StoreShelf(.postgres)
        do {
            let store = try shelf.open("s", options())
            _ = try store.commit((1...5).map { delta(1, $0, $0, [Write("n", .set, .int(Int64($0)))]) })
            _ = try store.commit([delta(2, 1, 9, [Write("n", .set, .int(9))])])
            store.close()
        }
        let sql = "UPDATE meta SET value = 1 WHERE key = 'format'"
        try StoreTests.behindTheStoresBack(shelf, "s", sqlite: sql, postgres: sql)
        let store = try shelf.open("s", options())
        #expect(try store.verify().deltas == 6)
        #expect(try store.deltas(origin: Origin(1), seqs: 2...4).map(\.seq) == [2, 3, 4])
        store.close()
        let format = try PostgresServer.shared().psql(PostgresServer.database(of: try shelf.location("s")), "SELECT value FROM meta WHERE key = 'format'")
        #expect(format == "\(SQLStore.formatVersion)")
    }

    /// Format 1 resealed a StateBlock over its rows with origins ordered as
    /// signed integers, unlike every other checksum (unsigned DeltaID order):
    /// the conversion reseals such a block in the order format 2 checks, and
    /// leaves a checksum that matches neither order to `verify()`.
    @Test(arguments: Backend.allCases) func aFormatOneResealInSignedOrderIsResealedWhenConverted(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        // Origins on both sides of 2^63: SQL orders `high` (negative) first.
        let low: UInt64 = 7, high: UInt64 = 0x8000_0000_0000_0005
        let first = [delta(low, 1, 1, [Write("n", .set, .int(1))]), delta(high, 1, 2, [Write("n", .set, .int(2))])]
        let second = [delta(low, 2, 3, [Write("n", .set, .int(3))]), delta(high, 2, 4, [Write("n", .set, .int(4))])]
        do {
            let store = try shelf.open("s", options())
            _ = try store.commit(first)
            _ = try store.commit(second)
            #expect(try store.verify().blocks == 2)
            store.close()
        }
        let signedOrder = first.reversed().reduce(UInt32(0)) { CRC32C.update($0, $1.encoded) }
        let tamper = """
            UPDATE meta SET value = 1 WHERE key = 'format';
            UPDATE blocks SET checksum = \(signedOrder) WHERE id = (SELECT MIN(id) FROM blocks);
            UPDATE blocks SET checksum = 12345 WHERE id = (SELECT MAX(id) FROM blocks);
            """
        // SQLite's conversion builds the runs again from the log.
        try StoreTests.behindTheStoresBack(shelf, "s", sqlite: "DELETE FROM runs; " + tamper, postgres: tamper)
        let store = try shelf.open("s", options())
        defer { store.close() }
        // The first block passes now; the second, which matched neither order, is still reported.
        do {
            _ = try store.verify()
            Issue.record("verify() passed a StateBlock with a wrong checksum")
        } catch let e as StoreError {
            #expect(e.code == .corrupt)
            #expect(e.message.contains("StateBlock 2:"), "\(e.message)")
        }
        #expect(try store.deltas(origin: Origin(high), seqs: 1...2).map(\.seq) == [1, 2])
    }

    /// The store's registers and vector change in place during a commit: one
    /// that fails (here C3 refuses it, after a register and two origins of
    /// the block had moved) sets them back, so memory is the disk's again and
    /// the next commit builds on it.
    @Test(arguments: Backend.allCases) func aCommitThatFailsLeavesTheCachesAsTheDiskHasThem(_ backend: Backend) throws {
        let shelf = StoreShelf(backend)
        var o = options()
        o.rule = LatestArrivalWins()
        let store = try shelf.open("s", o)
        _ = try store.commit([delta(1, 1, 100, groupA, [Write("n", .set, .int(1))]), delta(1, 2, 100, groupB, [Write("n", .set, .int(5))])])
        let committed = store.state.canonicalBytes()
        // groupB's n goes forward, then groupA's n back in time: the rule takes it, C3 refuses the block.
        do {
            _ = try store.commit([delta(2, 1, 300, groupB, [Write("n", .set, .int(6))]), delta(3, 1, 50, groupA, [Write("n", .set, .int(0))])])
            Issue.record("a commit moving a register back in time was taken")
        } catch let e as StoreError {
            #expect(e.code == .invariant, "\(e)")
        }
        #expect(store.state.canonicalBytes() == committed)
        #expect(store.vector[Origin(2)] == 0 && store.vector[Origin(3)] == 0)
        _ = try store.commit([delta(2, 1, 300, groupB, [Write("n", .set, .int(7))])])
        let after = store.state.canonicalBytes()
        #expect(after != committed)
        store.close()
        let reopened = try shelf.open("s", o)
        defer { reopened.close() }
        #expect(reopened.state.canonicalBytes() == after)
    }

    /// Runs SQL on a store's database with the engine's own client, not the store.
    static func behindTheStoresBack(_ shelf: StoreShelf, _ name: String, sqlite: String, postgres: String) throws {
        switch shelf.backend {
        case .sqlite:
            var db: OpaquePointer?
            #expect(sqlite3_open(try shelf.location(name), &db) == SQLITE_OK)
            #expect(sqlite3_exec(db, sqlite, nil, nil, nil) == SQLITE_OK)
            sqlite3_close(db)
        case .postgres:
            let url = try shelf.location(name)
            let database = PostgresServer.database(of: url)
            #expect(try PostgresServer.shared().psql(database, postgres) != nil, "psql: \(postgres)")
        }
    }
}

/// Another daemon commits at a chosen step of this store's reading of a
/// shared database (`SQLStore.readingForTests`, one hook for the process:
/// these tests run one at a time).
@Suite(.serialized) struct SharedReadingTests {
    /// How often the hook committed.
    final class Commits { var count = 0 }

    /// Commits `deltas` through `other` the first time a store on its
    /// database reaches `step` (until `readingForTests` is set again).
    static func commit(_ deltas: [Delta], through other: SQLStore, at step: SQLStore.ReadingStep) -> Commits {
        let commits = Commits()
        let location = other.path
        SQLStore.readingForTests = { path, reached in
            guard path == location, reached == step, commits.count == 0 else { return }
            commits.count += 1
            do { _ = try other.commit(deltas) } catch { Issue.record("the commit at \(step) failed: \(error)") }
        }
        return commits
    }

    /// Two daemons on one PostgreSQL database: a store that opens while the
    /// other commits holds that commit after its first refresh. (It had read
    /// the generation it starts from after the registers, so it never read
    /// a commit made in between, and the two differed until those registers
    /// changed again: found as a daemon restarted beside a busy one.)
    @Test func aCommitWhileAStoreOpensReachesItAtTheFirstRefresh() throws {
        let shelf = StoreShelf(.postgres)
        let a = try shelf.open("s", options())
        _ = try a.commit([delta(1, 1, 1, [Write("n", .set, .int(1))])])
        let commits = Self.commit([delta(1, 2, 2, [Write("n", .set, .int(2))]), delta(2, 1, 3, groupB, [Write("n", .set, .int(7))])],
                                  through: a, at: .registersLoaded)
        defer { SQLStore.readingForTests = nil }
        let b = try shelf.open("s", options())
        #expect(commits.count == 1, "a committed while b opened")
        _ = try b.refreshFromOthers()
        #expect(b.vector == a.vector, "b \(b.vector), a \(a.vector)")
        #expect(b.state.registers[try groupA.register("n")]?.value == .int(2))
        #expect(b.state.canonicalBytes() == a.state.canonicalBytes())
        b.close()
        a.close()
    }

    /// Two daemons on one PostgreSQL database: every value another daemon
    /// committed reaches this store's watchers once, including those of a
    /// commit made while this store was reading others' commits. (It read
    /// the history's head after the rows, so such a commit's values were
    /// skipped; the register's final state still arrived.)
    @Test func everyValueOtherDaemonsCommitReachesTheWatchersOnce() throws {
        let shelf = StoreShelf(.postgres)
        let a = try shelf.open("s", options())
        let b = try shelf.open("s", options())
        let n = try groupA.register("n")
        var told: [Int64] = []
        b.onChange = { _, changes in
            for c in changes where c.name == n { if case .int(let v) = c.entry.versioned.value { told.append(v) } }
        }
        _ = try a.commit([delta(1, 1, 1, [Write("n", .set, .int(1))])])
        let commits = Self.commit([delta(1, 2, 2, [Write("n", .set, .int(2))])], through: a, at: .historyRead)
        defer { SQLStore.readingForTests = nil }
        #expect(try b.refreshFromOthers())
        SQLStore.readingForTests = nil
        #expect(commits.count == 1, "a committed while b read its commits")
        _ = try b.refreshFromOthers()
        #expect(told == [1, 2], "values told to b's watchers: \(told)")
        #expect(b.state.canonicalBytes() == a.state.canonicalBytes())
        b.close()
        a.close()
    }
}
