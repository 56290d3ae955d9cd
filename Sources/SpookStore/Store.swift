import SpookCore

/// How hard a commit waits for the disk (SQLite `PRAGMA synchronous` in WAL mode).
///
/// - `off`: survives a process crash, not a power loss; for tests and simulations.
/// - `normal`: survives a process crash; a power loss may lose the last commits.
/// - `full`: every acknowledged commit survives a power loss. The default.
/// - `extra`: `full`, and the directory entry too.
public enum SyncLevel: String, Sendable, CaseIterable, CustomStringConvertible {
    case off, normal, full, extra
    public var description: String { rawValue }
}

/// Options of a store. Every bound is a named, documented value.
public struct StoreOptions: Sendable {
    public var sync: SyncLevel = .full
    /// Collapsed values kept per QRegister (a ring; oldest dropped first).
    public var historyLength: Int = 32
    /// StateBlocks examined per `compact()` call, so one call never stalls writers for long.
    public var compactionBlocksMax: Int = 10_000
    /// Deltas removed per `compact()` call at most (whole blocks: at least one).
    public var compactionDeltasMax: Int = Int.max
    /// History rows a trim reads per step at least (SQLite; each step runs
    /// inside a commit, so a trim never stalls writers for long).
    public var historyTrimRowsPerStep: Int = 32_768
    /// SQLite: the log (WAL) is checkpointed into the database file once it
    /// holds this many bytes, and cut back to it afterwards (`[node]
    /// log_mib`). SQLite's default, 1,000 pages (4 MiB), checkpointed after
    /// nearly every group commit of a fleet's daemon, each time with a
    /// second fsync (docs/benchmarks.md); an agent on a small board may
    /// want less disk. At `sync = normal` a power cut may lose up to this much.
    public var walBytes: Int = StoreOptions.walBytesDefault
    public static let walBytesDefault = 32 << 20
    /// SQLite: runs (where each origin's seqs lie in the log) kept in
    /// memory until their slice of origins is written (16 bytes each, and
    /// an array per origin); past it a commit writes them all (counted,
    /// `SQLStore.pendingRunsFlushedWhole`, and logged). A fleet's daemon
    /// holds about 64 runs per origin (`PendingRuns.slices`).
    public var pendingRunsMax: Int = 262_144
    /// Largest catch-up batch `catchUp(for:limit:)` accepts.
    public static let catchUpLimitMax = 100_000

    public var schema: Schema = Schema()
    public var rule: any CollapseRule = QSCS()
    /// The SQLite VFS to open the file with (nil: the default). Tests name a
    /// fault-injecting one (power cuts); production never sets it.
    public var vfs: String?
    /// Acknowledgements (`recordAck`) are kept in memory and written with
    /// the next commit, compaction step, `flushAcks()` or `close()`, instead
    /// of a transaction (and, at `sync = "full"`, an fsync) each. A crash
    /// loses only acknowledgements since then: the peer is sent those deltas
    /// again (duplicates are skipped) or says what it holds in its next
    /// VECTOR. A peer's first acknowledgement, and `replaceAck`, are written
    /// at once. The nodes set it; the default writes every one.
    public var lazyAcks = false

    public init(sync: SyncLevel = .full, historyLength: Int = 32, schema: Schema = Schema()) {
        precondition(historyLength >= 1, "historyLength must be at least 1")
        self.sync = sync
        self.historyLength = historyLength
        self.schema = schema
    }
}

/// What one commit did.
public struct CommitResult: Sendable {
    /// StateBlock that holds the new deltas; nil when nothing new was held.
    public var block: Int64?
    /// Deltas now durably held, in the order given (refused ones included:
    /// they are held, relayed and count in the vector, but change no register).
    public var held: [DeltaID] = []
    /// Held deltas the schema refused, with the reason.
    public var refused: [(id: DeltaID, error: CoreError)] = []
    /// Deltas already held before (ignored).
    public var duplicates: Int = 0
    /// Deltas not held because an earlier seq of their origin is missing.
    public var gaps: [DeltaID] = []
    /// Deltas whose (origin, seq) is held with another HLC: an origin
    /// reused a seq. The held delta stays; the conflict must be reported.
    public var conflicts: [DeltaID] = []
    /// Registers whose collapsed state changed, in order of first change.
    public var changed: [QRegisterName] = []
    /// Every value a register took in this block, in the order the deltas
    /// were applied (a register written by ten deltas of the block appears
    /// ten times): what history records and `watch` in "every" mode shows.
    public var changes: [RegisterChange] = []

    public init() {}

    /// Each frame's share of a group commit that held `frames` together:
    /// which of its deltas were held and which conflicted (the sets are
    /// built once for the whole group).
    public func shares(of frames: [[Delta]]) -> [CommitResult] {
        // No duplicate and no gap: every delta the commit was given is held (refused ones too).
        if duplicates == 0 && gaps.isEmpty && conflicts.isEmpty {
            return frames.map { deltas in
                var part = CommitResult()
                part.held = deltas.map(\.id)
                return part
            }
        }
        let held = Set(self.held), conflicts = Set(self.conflicts)
        return frames.map { deltas in
            var part = CommitResult()
            part.held = deltas.lazy.map(\.id).filter { held.contains($0) }
            part.conflicts = conflicts.isEmpty ? [] : deltas.lazy.map(\.id).filter { conflicts.contains($0) }
            return part
        }
    }
}

/// A snapshot replaces deltas a peer lacks behind the compaction horizon:
/// the collapsed registers with their stamps, and the vector they cover.
public struct Snapshot: Sendable, Hashable {
    public var registers: [QRegisterName: RegisterState]
    public var vector: QStateVector

    public init(registers: [QRegisterName: RegisterState], vector: QStateVector) {
        self.registers = registers
        self.vector = vector
    }
}

/// What a peer needs next: the deltas it lacks (per origin in seq order), or
/// a snapshot when some of them are behind the compaction horizon.
public enum CatchUp: Sendable {
    case deltas([Delta])
    case snapshot(Snapshot)
}

/// One value a register took, with the stamp of the write that set it.
public struct RegisterChange: Hashable, Sendable {
    public var name: QRegisterName
    public var entry: HistoryEntry
    public init(name: QRegisterName, entry: HistoryEntry) {
        self.name = name
        self.entry = entry
    }
}

/// One entry of a QRegister's bounded history.
public struct HistoryEntry: Hashable, Sendable {
    public enum Side: UInt8, Sendable { case value = 0, reported = 1, desired = 2 }
    public var side: Side
    public var versioned: Versioned
}

public struct CompactionReport: Sendable, Hashable {
    public var blocksRemoved: Int
    public var deltasRemoved: Int
    public var horizon: QStateVector
    /// The step stopped at its bound: more may be removable now.
    public var more = false
}

public struct VerifyReport: Sendable, Hashable {
    public var blocks: Int
    public var deltas: Int
    public var registers: Int

    public init(blocks: Int, deltas: Int, registers: Int) {
        self.blocks = blocks
        self.deltas = deltas
        self.registers = registers
    }
}

/// What a sync session reads of a store (`SyncSession` decides from it and
/// never writes: it returns the writes as actions for its driver).
public protocol StoreView: AnyObject {
    /// Per origin, the highest seq held contiguously.
    var vector: QStateVector { get }
    /// Per origin, the highest seq compacted away (or skipped by a snapshot).
    var horizon: QStateVector { get }
    /// What `peer` has acknowledged as durable.
    func peerVector(_ peer: String) -> QStateVector
    /// The deltas (at most `limit`) or snapshot a peer holding `peer` needs.
    func catchUp(for peer: QStateVector, limit: Int) throws -> CatchUp
    /// The HLC of the delta held at (origin, seq), nil when not held (or compacted).
    func heldHLC(origin: Origin, seq: UInt64) throws -> HLCTimestamp?
}

/// Durable replica state (SUBSTRATE.md §6): StateBlocks (the delta log),
/// QStateVectors (own and per peer), collapsed registers and their histories.
/// Every mutating call is one transaction at the configured sync level; it
/// returns only once that transaction committed, so whatever it reports as
/// held is acknowledged-safe. The SQLite store is the embedded default; a
/// PostgreSQL store implements the same protocol.
public protocol Store: StoreView {
    var path: String { get }
    var options: StoreOptions { get }
    /// The collapsed registers (a cache of the durable table).
    var state: CollapseState { get }
    /// The greatest HLC of any delta held: local clocks never go below it.
    var hlcHigh: HLCTimestamp { get }
    /// This replica's incarnation: its own origin is derived from its key and this.
    var epoch: UInt32 { get }
    /// Own deltas set aside by `reincarnate`, not yet settled.
    var orphanCount: Int { get }

    /// Holds a batch of deltas from anywhere in one StateBlock (group commit):
    /// those that extend their origin's contiguous run are collapsed and made
    /// durable; duplicates are skipped; those after a gap are not held.
    func commit(_ deltas: [Delta]) throws -> CommitResult

    /// Stamps local writes (next seqs of `origin`, HLC above everything held)
    /// and commits them in one StateBlock. A request the schema refuses gets
    /// its error and no seq; the others commit.
    func commitLocal(_ requests: [LocalWrite], origin: Origin, physicalMs: UInt64) throws -> [Result<Delta, CoreError>]

    /// Starts a new incarnation because the store went back in time (SUBSTRATE.md
    /// §6): in one transaction the epoch goes up, and `origin`'s own deltas after
    /// `keepThrough` leave the log for the orphans table (the vector of `origin`
    /// goes back to `keepThrough`, so the peers' real deltas can come back).
    /// Orphans are settled later by `settleOrphans`. Returns how many were set aside.
    func reincarnate(origin: Origin, keepThrough: UInt64, waitThrough: UInt64) throws -> Int

    /// Settles orphans: one whose (origin, seq) is now held with the same
    /// HLC (the same delta, or its withheld placeholder) is dropped (it was never lost); any other is written again as a
    /// new local delta of `newOrigin`, in the same transaction that removes it.
    /// An orphan whose seq the peer never held (above `waitThrough`), or any
    /// orphan when `force` is set, is settled now; the others wait for the
    /// peer's deltas to arrive.
    func settleOrphans(newOrigin: Origin, physicalMs: UInt64, force: Bool) throws -> OrphanSettlement

    /// Merges a snapshot received from a peer; returns the registers that changed.
    func apply(_ snapshot: Snapshot) throws -> [QRegisterName]

    /// Records (merges) a peer's acknowledgement. Registering a peer holds
    /// back compaction of everything it has not acknowledged.
    func recordAck(peer: String, vector: QStateVector) throws
    /// Sets what `peer` holds to exactly `vector` (its VECTOR at a session
    /// start): a peer whose store went back in time holds less than it once
    /// acknowledged, and must be sent again what it lost.
    func replaceAck(peer: String, vector: QStateVector) throws
    func removePeer(_ peer: String) throws
    var peers: [String] { get }

    /// Removes StateBlocks whose deltas every peer acknowledged.
    func compact() throws -> CompactionReport
    /// A register's recent collapsed values, newest first.
    func history(_ name: QRegisterName) throws -> [HistoryEntry]
    /// Re-reads the log and checks every checksum, decode and vector.
    func verify() throws -> VerifyReport
    /// All deltas held for `origin` in `seqs` (for tests and tools).
    func deltas(origin: Origin, seqs: ClosedRange<UInt64>) throws -> [Delta]
    func close()
}

/// A local write request: writes to one group, to become one delta.
public struct LocalWrite: Sendable, Hashable {
    public var group: QGroupName
    public var writes: [Write]

    public init(group: QGroupName, writes: [Write]) {
        self.group = group
        self.writes = writes
    }
}

/// What `settleOrphans` did.
public struct OrphanSettlement: Sendable {
    /// Orphans the peer held too (same origin, seq and HLC).
    public var dropped = 0
    /// Orphans written again under the new origin: the orphan, then its new delta.
    public var rewritten: [(orphan: Delta, delta: Delta)] = []
    /// Orphans the schema now refuses (kept out, with the reason).
    public var refused: [(id: DeltaID, error: CoreError)] = []
    public init() {}
}
