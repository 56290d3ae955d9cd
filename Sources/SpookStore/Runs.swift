import SpookCore

/// Where some of one origin's seqs lie in the log: the StateBlock that holds
/// them, from `first` up to the next run's first (or the origin's vector).
/// The log is keyed by StateBlock, so a commit appends to one place; the
/// runs say, per origin, which blocks to read.
struct Run: Equatable, Sendable {
    var first: UInt64
    var block: Int64
}

/// Runs committed but not yet in the `runs` table (an SQLite store only).
///
/// Writing a block's runs with the block would touch one page of the `runs`
/// table per origin in it: the very cost keying the log by block avoids. So
/// the origin space is cut into `slices`; the commit of block `b` writes
/// the runs pending in slice `b mod slices` (and keeps the rest), so each
/// commit writes one slice's worth, each run waits at most `slices` blocks,
/// and a store opened again finds its pending runs among the last `slices`
/// blocks. Past `StoreOptions.pendingRunsMax` pending runs a commit
/// writes all of them. (A fleet at 20 updates/s per agent: 16 slices gave
/// a p50 of 54–76 ms, 64 slices 39–47 ms; docs/benchmarks.md.)
struct PendingRuns: Sendable {
    static let slices = 64

    private var bySlice = [[Origin: [Run]]](repeating: [:], count: slices)
    private(set) var count = 0

    static func slice(of origin: Origin) -> Int {
        // Mixed first: an origin's low bits need not be spread evenly.
        let x = origin.rawValue ^ (origin.rawValue >> 29) ^ (origin.rawValue >> 47)
        return Int(x % UInt64(slices))
    }

    /// The slices the commit of `block` writes, given `adding` more runs
    /// and at most `limit` pending.
    func due(block: Int64, adding: Int, limit: Int) -> [Int] {
        count + adding > limit ? Array(0..<PendingRuns.slices) : [Int(UInt64(bitPattern: block) % UInt64(PendingRuns.slices))]
    }

    /// Pending runs of `origin`, oldest first.
    func runs(of origin: Origin) -> [Run] { bySlice[PendingRuns.slice(of: origin)][origin] ?? [] }

    /// Every pending run in `slices`.
    func rows(in slices: [Int]) -> [(origin: Origin, run: Run)] {
        slices.flatMap { s in bySlice[s].flatMap { o, runs in runs.map { (o, $0) } } }
    }

    /// After a commit: its new runs join, the slices it wrote leave.
    mutating func committed(_ new: [(origin: Origin, run: Run)], written slices: [Int]) {
        for s in slices {
            count -= bySlice[s].values.reduce(0) { $0 + $1.count }
            bySlice[s] = [:]
        }
        for (o, run) in new where !slices.contains(PendingRuns.slice(of: o)) {
            bySlice[PendingRuns.slice(of: o)][o, default: []].append(run)
            count += 1
        }
    }

    /// Drops the runs of `origin` that `drop` selects.
    mutating func remove(of origin: Origin, where drop: (Run) -> Bool) {
        let s = PendingRuns.slice(of: origin)
        guard let runs = bySlice[s][origin] else { return }
        let kept = runs.filter { !drop($0) }
        count -= runs.count - kept.count
        bySlice[s][origin] = kept.isEmpty ? nil : kept
    }

    /// Adds a run found pending when the store opened.
    mutating func reload(_ origin: Origin, _ run: Run) {
        bySlice[PendingRuns.slice(of: origin)][origin, default: []].append(run)
        count += 1
    }

    /// The runs a block holds, one per origin: `ids` in ascending order.
    static func runs<C: Collection>(of ids: C, block: Int64) -> [(origin: Origin, run: Run)] where C.Element == DeltaID {
        var out: [(origin: Origin, run: Run)] = []
        for id in ids where out.last?.origin != id.origin { out.append((id.origin, Run(first: id.seq, block: block))) }
        return out
    }
}
