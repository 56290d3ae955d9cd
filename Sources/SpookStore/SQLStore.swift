#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
internal import CSQLite
import Logging
import SpookCore

/// The store over SQL: the embedded SQLite database in WAL mode (the
/// default), or PostgreSQL (`SpookPostgres`), through an `SQLBackend`. Both
/// run the same statements on the same tables.
///
/// Tables (format 2):
///
///     meta(key, value)                       format version, hlc_high
///     blocks(id, count, checksum)            StateBlocks; checksum = CRC-32C of the
///                                            block's delta bodies in (origin, seq) order
///     deltas(origin, seq, block, body, refused)   the delta log; SQLite keys it by
///                                            (block, origin, seq), so a commit appends
///     runs(origin, first, block)             SQLite (`SQLBackend.logByBlock`): where each
///                                            origin's seqs lie, per StateBlock the first seq
///                                            it holds of the origin (written a slice of
///                                            origins per commit: `PendingRuns`)
///     vector(origin, seq)                    own QStateVector
///     horizon(origin, seq)                   compaction horizon
///     peers(peer, origin, seq)               acknowledged vector per peer
///     registers(name, body)                  collapsed state
///     orphans(id, origin, seq, body)         own deltas set aside by `reincarnate`
///     history(id, name, side, body)          collapsed values as they changed, appended;
///                                            trimmed in batches to the newest
///                                            `historyLength` per register
///
/// Memory holds caches only (state, vectors); `init` rebuilds them from disk,
/// so a `kill -9` at any instant reopens to the last committed transaction.
///
/// A `shared` backend (several daemons on one PostgreSQL database: one
/// replica with several front doors) adds a `generation` in `meta`, bumped
/// by every write transaction, and a `gen` column on vector, horizon, peers
/// and registers rows naming the generation that last wrote them. Each write
/// transaction first takes the database's writer lock, then re-reads the
/// rows other daemons wrote since the generation this store last saw, and
/// only then decides anything (seqs, collapse, compaction), so the caches it
/// decides from are the database's.
public final class SQLStore: Store {
    public static let formatVersion: Int64 = 2

    public let path: String
    public let options: StoreOptions
    public private(set) var vector = QStateVector()
    public private(set) var horizon = QStateVector()
    public private(set) var state: CollapseState
    public private(set) var hlcHigh = HLCTimestamp.zero
    public private(set) var epoch: UInt32 = 0
    public private(set) var orphanCount = 0
    /// The file existed but was empty when opened: whatever was there is gone,
    /// and this store starts from nothing under a key that wrote before.
    public private(set) var openedEmptyFile = false

    /// Called after every successful commit or snapshot with the registers
    /// whose state changed, and every value they took in order (for
    /// watchers); runs on the caller's thread.
    public var onChange: (([QRegisterName], [RegisterChange]) -> Void)?

    private let db: any SQLBackend
    private let logger: Logger
    /// Shared backends: the generation whose rows the caches hold, the one
    /// the open transaction writes as, and the newest history row seen.
    private var seenGeneration: Int64 = 0
    private var txGeneration: Int64 = 0
    private var historySeen: Int64 = 0
    /// Registers other daemons changed, read by a refresh, not yet told to `onChange`.
    private var othersChanged: [QRegisterName] = []
    private var othersChanges: [RegisterChange] = []
    private var peerVectors: [String: QStateVector] = [:]
    /// History rows appended since the last trim.
    private var historyUntrimmed = 0
    /// Runs committed but not yet in the `runs` table (SQLite only).
    private var pendingRuns = PendingRuns()
    /// Commits that wrote every pending run at once (`StoreOptions.pendingRunsMax` reached).
    public private(set) var pendingRunsFlushedWhole = 0

    /// SQLite's page size (its default): the unit of the log.
    static let pageBytes = 4_096

    /// SQLite's page cache per store, in KiB (memory, not disk: a bound on RSS).
    public static let pageCacheKiB = 8 << 10

    /// The embedded store: the SQLite database at `path` (created when missing).
    public convenience init(path: String, options: StoreOptions = StoreOptions(), logger: Logger = Logger(label: "spook.store")) throws {
        var info = stat()
        let empty = stat(path, &info) == 0 && info.st_size == 0
        if empty {
            logger.error("the store file is empty: everything it held is gone; starting an empty store", metadata: ["path": "\(path)"])
        }
        let db = try SQLiteConnection(path: path, vfs: options.vfs)
        try db.exec("PRAGMA journal_mode=WAL")
        try db.exec("PRAGMA synchronous=\(options.sync.rawValue.uppercased())")
        // SQLite checkpoints the log into the database file once it holds
        // `walBytes`, on the committing thread; a checkpoint writes each page
        // once however often it changed since the last one. After a
        // checkpoint the file is cut back to `walBytes` (reused, not regrown).
        try db.exec("PRAGMA wal_autocheckpoint=\(max(1, options.walBytes / SQLStore.pageBytes))")
        try db.exec("PRAGMA journal_size_limit=\(options.walBytes)")
        // SQLite's default page cache (2 MiB) is smaller than a daemon's hot
        // indexes: under a fleet's load a third of a commit's time was preads.
        try db.exec("PRAGMA cache_size=-\(SQLStore.pageCacheKiB)")
        // Statement journals (a multi-row statement's undo inside a transaction)
        // in memory: on disk (a deleted file in /var/tmp) a fleet's commits
        // wrote 16 MiB/s to them, competing with the log's fsync. Each is
        // bounded by one statement's pages (`SQLBackend.insertRowsMax` rows).
        try db.exec("PRAGMA temp_store=MEMORY")
        try self.init(backend: db, options: options, logger: logger)
        openedEmptyFile = empty
    }

    /// A store on any backend: its tables are created when missing, its
    /// caches read. A shared backend whose tables this call created counts
    /// as an empty file (`openedEmptyFile`).
    public init(backend: any SQLBackend, options: StoreOptions, logger: Logger) throws {
        path = backend.location
        self.options = options
        self.logger = logger
        self.state = CollapseState(schema: options.schema, rule: options.rule)
        db = backend
        let created = try migrate()
        if backend.shared && created { openedEmptyFile = true }
        try loadCaches()
        logger.debug("store opened", metadata: [
            "path": "\(path)", "registers": "\(state.registers.count)", "vector": "\(vector)", "horizon": "\(horizon)",
        ])
    }

    deinit { db.close() }

    public func close() {
        do { try flushAcks() } catch {
            logger.error("acknowledgements not written at close; peers will be sent those deltas again", metadata: ["error": "\(error)"])
        }
        db.close()
    }

    public var peers: [String] { peerVectors.keys.sorted() }

    /// The sync level SQLite reports for this connection.
    public func syncLevelInEffect() throws -> SyncLevel {
        let s = try sqlite().statement("PRAGMA synchronous")
        _ = try s.step()
        let levels: [SyncLevel] = [.off, .normal, .full, .extra]
        let raw = Int(s.int64(0))
        guard levels.indices.contains(raw) else { throw StoreError(.sqlite, "\(path): PRAGMA synchronous reports \(raw)") }
        return levels[raw]
    }

    /// Copies the WAL into the database file and truncates the WAL (SQLite
    /// also does this on its own every `StoreOptions.walBytes`; this is for backups and
    /// measurements).
    public func checkpoint() throws {
        try sqlite().exec("PRAGMA wal_checkpoint(TRUNCATE)")
    }

    private func sqlite() throws -> SQLiteConnection {
        guard let c = db as? SQLiteConnection else { throw StoreError(.invariant, "\(path): not an SQLite store") }
        return c
    }

    /// Bytes on disk: the database file and its WAL (0 for a server's database).
    public func diskBytes() -> Int {
        var total = 0
        for suffix in ["", "-wal"] {
            var info = stat()
            if stat(path + suffix, &info) == 0 { total += Int(info.st_size) }
        }
        return total
    }

    public func peerVector(_ peer: String) -> QStateVector { peerVectors[peer] ?? QStateVector() }

    // MARK: schema

    /// Creates missing tables and checks the format; true when this call created them.
    private func migrate() throws -> Bool {
        try db.begin()
        do {
            try db.exec(db.schemaSQL)
            let s = try db.prepare("SELECT value FROM meta WHERE key = 'format'")
            var created = false
            if try s.step() {
                let found = s.int64(0)
                if found < SQLStore.formatVersion, let sql = db.migrationSQL(fromFormat: found) {
                    if !sql.isEmpty { try db.exec(sql) }
                    let resealed = found == 1 ? try resealFormatOneChecksums() : 0
                    try setMeta("format", SQLStore.formatVersion)
                    logger.notice("store converted to this build's format", metadata: [
                        "path": "\(path)", "from": "\(found)", "to": "\(SQLStore.formatVersion)", "checksums_resealed": "\(resealed)",
                    ])
                } else if found != SQLStore.formatVersion {
                    throw StoreError(.wrongFormat, "\(path): store format \(found), this build reads format \(SQLStore.formatVersion)")
                }
            } else {
                let insert = try db.prepare("INSERT INTO meta(key, value) VALUES ('format', ?)")
                insert.bind(1, SQLStore.formatVersion)
                try insert.step()
                created = true
            }
            try db.commit()
            return created
        } catch {
            db.rollback()
            throw error
        }
    }

    private func loadCaches() throws {
        // A shared database: the generation first. Each statement below reads
        // what is committed when it runs, so another daemon may commit between
        // them; its rows carry a later generation, and the first refresh reads
        // them again. Read last, the generation would cover a commit whose
        // registers this store never read, and it would differ from the others
        // until those registers changed again.
        if db.shared {
            seenGeneration = Int64(bitPattern: try meta("generation") ?? 0)
            historySeen = try historyHead()
        }
        vector = try readVector("SELECT origin, seq FROM vector")
        horizon = try readVector("SELECT origin, seq FROM horizon")
        peerVectors = [:]
        let p = try db.prepare("SELECT peer, origin, seq FROM peers")
        while try p.step() {
            peerVectors[p.text(0), default: QStateVector()][Origin(p.uint64(1))] = p.uint64(2)
        }
        var registers: [QRegisterName: RegisterState] = [:]
        let r = try db.prepare("SELECT name, body FROM registers")
        while try r.step() {
            let text = r.text(0)
            do {
                let name = try QRegisterName(text)
                registers[name] = try RegisterState.decode(r.blob(1))
            } catch let e as CoreError {
                throw StoreError(.corrupt, "\(path): register \"\(text)\" cannot be read back: \(e.message)")
            }
        }
        if db.shared { SQLStore.readingForTests?(path, .registersLoaded) }
        state = CollapseState(schema: options.schema, rule: options.rule, registers: registers)
        hlcHigh = HLCTimestamp(rawValue: try meta("hlc_high") ?? 0)
        epoch = UInt32(truncatingIfNeeded: try meta("epoch") ?? 0)
        let o = try db.prepare("SELECT COUNT(*) FROM orphans")
        _ = try o.step()
        orphanCount = Int(o.int64(0))
        if db.logByBlock { try loadPendingRuns() }
    }

    /// Tests only: called with the store's location at two steps of reading
    /// a shared database, so a test can commit through another store there.
    nonisolated(unsafe) package static var readingForTests: ((String, ReadingStep) -> Void)?
    package enum ReadingStep: Sendable {
        /// Opening: the registers are read, the rest of the caches not yet.
        case registersLoaded
        /// Reading others' commits: the history rows to tell are read.
        case historyRead
    }

    /// Finds the runs of the last `PendingRuns.slices` blocks that the
    /// `runs` table does not hold yet (no older run can be pending).
    private func loadPendingRuns() throws {
        pendingRuns = PendingRuns()
        let top = try db.prepare("SELECT MAX(id) FROM blocks")
        guard try top.step(), !top.isNull(0) else { return }
        let newest = top.int64(0)
        top.reset()
        let s = try db.prepare("SELECT block, origin, MIN(seq) FROM deltas WHERE block > ? GROUP BY block, origin ORDER BY block")
        s.bind(1, newest - Int64(PendingRuns.slices))
        var found: [(origin: Origin, run: Run)] = []
        while try s.step() { found.append((Origin(s.uint64(1)), Run(first: s.uint64(2), block: s.int64(0)))) }
        let held = try db.prepare("SELECT 1 FROM runs WHERE origin = ? AND first = ?")
        for (o, run) in found {
            held.reset()
            held.bind(1, o.rawValue)
            held.bind(2, run.first)
            if try !held.step() { pendingRuns.reload(o, run) }
        }
    }

    private func meta(_ key: String) throws -> UInt64? {
        let m = try db.prepare("SELECT value FROM meta WHERE key = ?")
        m.bind(1, key)
        return try m.step() ? m.uint64(0) : nil
    }

    private func readVector(_ sql: String) throws -> QStateVector {
        var v = QStateVector()
        let s = try db.prepare(sql)
        while try s.step() { v[Origin(s.uint64(0))] = s.uint64(1) }
        return v
    }

    // MARK: transactions, and other daemons' commits

    /// One write transaction. On a shared backend it holds the writer lock
    /// from the start, re-reads what others committed, and writes as the next
    /// generation. What others changed is told to `onChange` once it ends.
    /// `undo` runs if it fails, after the rollback and before `onChange`
    /// hears of others' changes, so nothing reads what was not committed.
    private func transaction<T>(undo: () -> Void = {}, _ body: () throws -> T) throws -> T {
        defer { tellOthersChanges() }
        try db.begin()
        do {
            if db.shared {
                try readOthersCommits()
                txGeneration = seenGeneration + 1
            }
            let result = try body()
            if db.shared {
                try setMeta("generation", txGeneration)
                historySeen = try historyHead()
            }
            try db.commit()
            if db.shared { seenGeneration = txGeneration }
            return result
        } catch {
            db.rollback()
            undo()
            throw error
        }
    }

    /// Reads what other daemons on a shared database committed (each row
    /// tagged with a generation after the one these caches hold), so the
    /// caches are the database's again; their register changes wait for
    /// `tellOthersChanges`. Outside a transaction each statement reads
    /// committed rows: the generation is read first, so a row committed
    /// meanwhile is read (again) by the next refresh.
    private func readOthersCommits() throws {
        let generation = Int64(bitPattern: try meta("generation") ?? 0)
        guard generation != seenGeneration else { return }
        let since = seenGeneration
        func rows(_ sql: String, _ each: (any SQLStatement) throws -> Void) throws {
            let s = try db.prepare(sql)
            s.bind(1, since)
            while try s.step() { try each(s) }
        }
        try rows("SELECT origin, seq FROM vector WHERE gen > ?") { vector[Origin($0.uint64(0))] = $0.uint64(1) }
        try rows("SELECT origin, seq FROM horizon WHERE gen > ?") { horizon[Origin($0.uint64(0))] = $0.uint64(1) }
        var peersTouched = Set<String>()
        try rows("SELECT DISTINCT peer FROM peers WHERE gen > ?") { peersTouched.insert($0.text(0)) }
        for peer in peersTouched.sorted() {
            var v = QStateVector()
            let p = try db.prepare("SELECT origin, seq FROM peers WHERE peer = ?")
            p.bind(1, peer)
            while try p.step() { v[Origin(p.uint64(0))] = p.uint64(1) }
            // Acknowledgements this daemon holds in memory (lazy) are kept.
            peerVectors[peer] = dirtyAcks.contains(peer) ? v.merged(peerVector(peer)) : v
        }
        var registers: [QRegisterName: RegisterState] = [:]
        try rows("SELECT name, body FROM registers WHERE gen > ?") { r in
            let text = r.text(0)
            do { registers[try QRegisterName(text)] = try RegisterState.decode(r.blob(1)) } catch let e as CoreError {
                throw StoreError(.corrupt, "\(path): register \"\(text)\" cannot be read back: \(e.message)")
            }
        }
        // Committed states only move forward (C3): merged as a snapshot, each becomes the database's.
        othersChanged += state.merge(snapshot: registers)
        // The head first: a commit after it has its history rows told by the next refresh, not skipped.
        let head = try historyHead()
        for (id, change) in try historyRows(after: historySeen, limit: Self.othersChangesMax) where id <= head { othersChanges.append(change) }
        SQLStore.readingForTests?(path, .historyRead)
        historySeen = head
        hlcHigh = max(hlcHigh, HLCTimestamp(rawValue: try meta("hlc_high") ?? 0))
        epoch = UInt32(truncatingIfNeeded: try meta("epoch") ?? 0)
        let o = try db.prepare("SELECT COUNT(*) FROM orphans")
        _ = try o.step()
        orphanCount = Int(o.int64(0))
        seenGeneration = generation
    }

    /// Values other daemons wrote that one refresh passes to watchers at most
    /// (the registers' final states always pass; a watcher in "every" mode
    /// may miss values past this many).
    static let othersChangesMax = 10_000

    private func tellOthersChanges() {
        guard !othersChanged.isEmpty else { return }
        let (names, changes) = (othersChanged, othersChanges)
        othersChanged = []
        othersChanges = []
        onChange?(names, changes)
    }

    /// On a shared backend: reads what other daemons committed and tells
    /// `onChange` (the node calls it when the database says someone
    /// committed). Nothing on a store of its own.
    /// Returns whether anything was new.
    @discardableResult
    public func refreshFromOthers() throws -> Bool {
        guard db.shared else { return false }
        defer { tellOthersChanges() }
        let before = seenGeneration
        try readOthersCommits()
        return seenGeneration != before
    }

    /// Other processes write this store's database too (several daemons on one PostgreSQL).
    public var shared: Bool { db.shared }

    /// A shared database belongs to one replica, so the daemons on it share
    /// its key (one origin). Records `fingerprint` (the key's first 8 bytes)
    /// the first time; after that returns the recorded one when it differs
    /// (nil: this key is the replica's).
    public func claimReplica(fingerprint: Int64) throws -> Int64? {
        try transaction {
            if let held = try meta("replica_key") {
                let h = Int64(bitPattern: held)
                return h == fingerprint ? nil : h
            }
            try setMeta("replica_key", fingerprint)
            return nil
        }
    }

    /// `handler` runs (on another thread) whenever another daemon on a shared database committed.
    public func onOthersCommit(_ handler: @escaping @Sendable () -> Void) {
        db.onOthersCommit(handler)
    }

    /// The generation column's value in rows this transaction writes (shared backends only).
    private var genColumn: (name: String, value: String, update: String) {
        db.shared ? (", gen", ", ?", ", gen = excluded.gen") : ("", "", "")
    }

    // MARK: commit

    public func commit(_ deltas: [Delta]) throws -> CommitResult {
        try commitBlock(local: false) { deltas }
    }

    /// A group commit: local writes (stamped as `commitLocal` does) and
    /// deltas received from any number of links, in one StateBlock and one
    /// transaction. The received deltas are held in (origin, seq) order, so
    /// frames of one origin from two links still form a contiguous run.
    public func commitGroup(_ received: [Delta], local requests: [LocalWrite], origin: Origin, physicalMs: UInt64) throws
        -> (result: CommitResult, local: [Result<Delta, CoreError>]) {
        var results: [Result<Delta, CoreError>] = []
        let result = try commitBlock(local: false) {
            let (r, batch) = try stamp(requests, origin: origin, physicalMs: physicalMs)
            results = r
            // Frames of one origin from two links may have arrived out of order: hold it in order.
            var sorted = received
            if !SQLStore.inOrder(sorted.lazy.map(\.id)) { sorted.sort { $0.id < $1.id } }
            return batch.isEmpty ? sorted : batch + sorted
        }
        return (result, results)
    }

    public func commitLocal(_ requests: [LocalWrite], origin: Origin, physicalMs: UInt64) throws -> [Result<Delta, CoreError>] {
        var results: [Result<Delta, CoreError>] = []
        // Stamped inside the transaction: on a shared database another daemon may have just written this origin.
        _ = try commitBlock(local: true) {
            let (r, batch) = try stamp(requests, origin: origin, physicalMs: physicalMs)
            results = r
            return batch
        }
        return results
    }

    /// Next seqs of `origin` and HLCs above everything held, for local writes the schema accepts.
    private func stamp(_ requests: [LocalWrite], origin: Origin, physicalMs: UInt64) throws -> (results: [Result<Delta, CoreError>], batch: [Delta]) {
        var clock = HybridLogicalClock(last: hlcHigh, driftMsMax: nil)
        var seq = vector[origin]
        var results: [Result<Delta, CoreError>] = []
        var batch: [Delta] = []
        for request in requests {
            do {
                let hlc = try clock.tick(physicalMs: physicalMs)
                let delta = try Delta(origin: origin, seq: seq + 1, hlc: hlc, group: request.group, writes: request.writes)
                try delta.checkSize()
                try state.schema.check(delta)
                seq += 1
                batch.append(delta)
                results.append(.success(delta))
            } catch let e as CoreError {
                results.append(.failure(e))
            }
        }
        return (results, batch)
    }

    /// The body held at (origin, seq), nil when not in the log.
    private func heldBody(_ origin: Origin, _ seq: UInt64) throws -> [UInt8]? {
        guard let block = try blocks(of: origin, seq...seq).last else { return nil }
        let s = try db.prepare("SELECT body FROM deltas WHERE block = ? AND origin = ? AND seq = ?")
        s.bind(1, block)
        s.bind(2, origin.rawValue)
        s.bind(3, seq)
        return try s.step() ? s.blob(0) : nil
    }

    public func heldHLC(origin: Origin, seq: UInt64) throws -> HLCTimestamp? {
        try heldBody(origin, seq).map(SQLStore.hlc(ofEncoded:))
    }

    /// The HLC of an encoded delta: bytes 16..<24 (origin, seq, hlc lead every encoding).
    static func hlc(ofEncoded body: [UInt8]) -> HLCTimestamp {
        precondition(body.count >= 24, "an encoded delta starts with origin, seq and hlc")
        return HLCTimestamp(rawValue: body[16..<24].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    /// Holds the deltas `make` returns (called once the transaction holds the
    /// writer lock) in one StateBlock; `also` writes more in the same transaction.
    private func commitBlock(local: Bool, _ make: () throws -> [Delta], also: (() throws -> Void)? = nil) throws -> CommitResult {
        var result = CommitResult()
        // The registers and the vector change in place (a copy of the
        // registers was a third of a fleet daemon's commit), and what each
        // changed register and origin held before this block is kept: if the
        // transaction fails, they are set back, so memory is again exactly
        // as the disk is. The greatest HLC is swapped in after COMMIT.
        var vectorBefore: [Origin: UInt64] = [:]
        var nextHigh = HLCTimestamp.zero
        var newRuns: [(origin: Origin, run: Run)] = []
        var runSlicesWritten: [Int] = []
        // Each changed register's state before this block (for history, C3 and the undo).
        var before: [QRegisterName: RegisterState?] = [:]
        // If the transaction fails: the registers and origins it moved go back.
        let undo = {
            self.state.restore(before)
            for (origin, seq) in vectorBefore { self.vector[origin] = seq }
        }
        let blockID: Int64? = try transaction(undo: undo) {
            let deltas = try make()
            nextHigh = hlcHigh
            // What the log holds of each delta (not the delta: a fleet's commit holds tens of thousands).
            var held: [(id: DeltaID, body: [UInt8], refusal: CoreError?)] = []
            held.reserveCapacity(deltas.count)
            result.held.reserveCapacity(deltas.count)

            for delta in deltas {
                let expected = vector[delta.origin] + 1
                if delta.seq < expected {
                    result.duplicates += 1
                    // Two different deltas under one (origin, seq): report it, never hide it.
                    if delta.seq > horizon[delta.origin], let held = try heldHLC(origin: delta.origin, seq: delta.seq), held != delta.hlc {
                        result.conflicts.append(delta.id)
                        logger.error("two different deltas under one origin and seq: the origin reused a seq", metadata: ["delta": "\(delta.id)"])
                    }
                    continue
                }
                if delta.seq > expected {
                    result.gaps.append(delta.id)
                    continue
                }
                if vectorBefore[delta.origin] == nil { vectorBefore[delta.origin] = vector[delta.origin] }
                vector[delta.origin] = delta.seq
                nextHigh = max(nextHigh, delta.hlc)
                var refusal: CoreError?
                do {
                    try state.apply(delta) { name, previous, now in
                        if before[name] == nil {
                            before[name] = .some(previous)
                            result.changed.append(name)
                        }
                        SQLStore.appendChanges(of: name, old: previous, new: now, to: &result.changes)
                    }
                } catch let e as CoreError {
                    precondition(!local, "a local delta was checked before stamping: \(e)")
                    refusal = e
                    result.refused.append((delta.id, e))
                }
                held.append((delta.id, delta.encoded, refusal))
                result.held.append(delta.id)
            }
            guard !held.isEmpty else {
                try also?()
                return nil
            }

            // C3, checked at the boundary before anything is written: no register
            // may go to a smaller stamp. Only a broken collapse rule trips this;
            // the commit is refused whole and the store stays as it was.
            for name in result.changed {
                if case let old?? = before[name], let new = state.registers[name], !SQLStore.notOlder(new, than: old) {
                    throw StoreError(.invariant, "\(path): collapse would move \(name) back from \(old) to \(new) (C3)")
                }
            }

            // The block's checksum covers its deltas in id order (local writes may lead the received ones).
            if !SQLStore.inOrder(held.lazy.map(\.id)) { held.sort { $0.id < $1.id } }
            let checksum = SQLStore.checksum(of: held.lazy.map(\.body))
            let b = try db.prepare("INSERT INTO blocks(count, checksum) VALUES (?, ?) RETURNING id")
            b.bind(1, Int64(held.count))
            b.bind(2, Int64(checksum))
            guard try b.step() else { throw StoreError(.invariant, "\(path): a new StateBlock got no id") }
            let id = b.int64(0)
            b.reset()
            try insertRows("INSERT INTO deltas(origin, seq, block, body, refused) VALUES", columns: 5, held) { d, at, h in
                d.bind(at, h.id.origin.rawValue)
                d.bind(at + 1, h.id.seq)
                d.bind(at + 2, id)
                d.bind(at + 3, h.body)
                if let r = h.refusal { d.bind(at + 4, r.code.rawValue) }
            }
            if db.logByBlock {
                newRuns = PendingRuns.runs(of: held.lazy.map(\.id), block: id)
                runSlicesWritten = try writeRuns(newRuns, block: id)
            }
            try writeVector(table: "vector", vectorBefore.keys.sorted(), of: vector)
            try writeRegisters(result.changed, state: state)
            try appendHistory(result.changes)
            if nextHigh > hlcHigh { try setMeta("hlc_high", Int64(bitPattern: nextHigh.rawValue)) }
            // Acknowledgements kept in memory ride along: no transaction of their own.
            try writeDirtyAcks()
            try also?()
            // So does a step of a history trim (SQLite).
            if !db.shared { try trimHistoryIfDue() }
            return id
        }
        guard let blockID else { return result }
        lazyWritten()
        if db.logByBlock {
            if runSlicesWritten.count == PendingRuns.slices {
                pendingRunsFlushedWhole += 1
                logger.notice("pending runs reached their bound; this commit wrote them all", metadata: [
                    "runs": "\(pendingRuns.count + newRuns.count)", "bound": "\(options.pendingRunsMax)",
                ])
            }
            pendingRuns.committed(newRuns, written: runSlicesWritten)
        }
        hlcHigh = nextHigh
        result.block = blockID
        if db.shared { try trimHistoryIfDue() }
        if !result.changed.isEmpty { onChange?(result.changed, result.changes) }
        return result
    }

    /// Ids strictly ascending: a group's received deltas usually already are, and need no sort.
    static func inOrder<C: Collection>(_ ids: C) -> Bool where C.Element == DeltaID {
        zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 }
    }

    static func notOlder(_ new: RegisterState, than old: RegisterState) -> Bool {
        func ok(_ n: Versioned?, _ o: Versioned?) -> Bool {
            guard let o else { return true }
            guard let n else { return false }
            return n.stamp >= o.stamp
        }
        switch (new, old) {
        case (.lww(let n), .lww(let o)): return ok(n, o)
        case (.device(let nr, let nd), .device(let or, let od)): return ok(nr, or) && ok(nd, od)
        default: return false
        }
    }

    private func setMeta(_ key: String, _ value: Int64) throws {
        let s = try db.prepare("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        s.bind(1, key)
        s.bind(2, value)
        try s.step()
    }

    /// Inserts `rows` with multi-row VALUES, `db.insertRowsMax` rows a
    /// statement, the rest in statements of halving sizes (a power of two
    /// each): a server round trip per chunk instead of per row, and at most
    /// a dozen cached statements per table. `bind` binds one row's columns
    /// from the given first index. Each chunk holds distinct keys (an
    /// upsert may not touch a row twice in one statement).
    private func insertRows<Row>(_ head: String, columns: Int, tail: String = "", _ rows: [Row], bind: (any SQLStatement, Int32, Row) -> Void) throws {
        let tuple = "(" + Array(repeating: "?", count: columns).joined(separator: ", ") + ")"
        var i = 0
        var size = db.insertRowsMax
        while i < rows.count {
            if rows.count - i < size {
                // The largest power of two not above what is left.
                size = 1 << (Int.bitWidth - 1 - (rows.count - i).leadingZeroBitCount)
            }
            let s = try db.prepare("\(head) \(Array(repeating: tuple, count: size).joined(separator: ", "))\(tail)")
            while i + size <= rows.count {
                s.reset()
                for j in 0..<size { bind(s, Int32(j * columns + 1), rows[i + j]) }
                try s.step()
                i += size
            }
        }
    }

    /// Writes the runs pending in the slices this block's commit is due to
    /// write, the new block's among them, and returns those slices.
    private func writeRuns(_ runs: [(origin: Origin, run: Run)], block: Int64) throws -> [Int] {
        let slices = pendingRuns.due(block: block, adding: runs.count, limit: options.pendingRunsMax)
        let rows = pendingRuns.rows(in: slices) + runs.filter { slices.contains(PendingRuns.slice(of: $0.origin)) }
        try insertRows("INSERT INTO runs(origin, first, block) VALUES", columns: 3, rows) { s, at, row in
            s.bind(at, row.origin.rawValue)
            s.bind(at + 1, row.run.first)
            s.bind(at + 2, row.run.block)
        }
        return slices
    }

    /// The StateBlocks holding seqs `seqs` of `origin`, oldest first.
    private func blocks(of origin: Origin, _ seqs: ClosedRange<UInt64>) throws -> [Int64] {
        guard db.logByBlock else {
            let s = try db.prepare("SELECT DISTINCT block FROM deltas WHERE origin = ? AND seq BETWEEN ? AND ? ORDER BY block")
            s.bind(1, origin.rawValue)
            s.bind(2, seqs.lowerBound)
            s.bind(3, seqs.upperBound)
            var blocks: [Int64] = []
            while try s.step() { blocks.append(s.int64(0)) }
            return blocks
        }
        let s = try db.prepare("""
            SELECT first, block FROM runs WHERE origin = ? AND first <= ?
                AND first >= COALESCE((SELECT MAX(first) FROM runs WHERE origin = ? AND first <= ?), 0) ORDER BY first
            """)
        s.bind(1, origin.rawValue)
        s.bind(2, seqs.upperBound)
        s.bind(3, origin.rawValue)
        s.bind(4, seqs.lowerBound)
        var runs: [Run] = []
        while try s.step() { runs.append(Run(first: s.uint64(0), block: s.int64(1))) }
        // Pending runs are newer than every run in the table.
        runs += pendingRuns.runs(of: origin).lazy.filter { $0.first <= seqs.upperBound }
        if let start = runs.lastIndex(where: { $0.first <= seqs.lowerBound }) { runs.removeFirst(start) }
        return runs.map(\.block)
    }

    /// Removes the runs of `origin` that start after seq `seq` from the table
    /// (the caller drops the pending ones once its transaction committed).
    private func dropRuns(of origin: Origin, after seq: UInt64) throws {
        guard db.logByBlock else { return }
        let s = try db.prepare("DELETE FROM runs WHERE origin = ? AND first > ?")
        s.bind(1, origin.rawValue)
        s.bind(2, seq)
        try s.step()
    }

    private func writeVector(table: String, old: QStateVector, new: QStateVector) throws {
        try writeVector(table: table, new.origins.filter { new[$0] != old[$0] }, of: new)
    }

    /// Upserts the entries of `v` for `origins` (those a commit changed: no walk of every origin).
    private func writeVector(table: String, _ origins: [Origin], of v: QStateVector) throws {
        let g = genColumn
        let shared = db.shared, generation = txGeneration
        try insertRows("INSERT INTO \(table)(origin, seq\(g.name)) VALUES", columns: shared ? 3 : 2,
                       tail: " ON CONFLICT(origin) DO UPDATE SET seq = excluded.seq\(g.update)", origins) { s, at, o in
            s.bind(at, o.rawValue)
            s.bind(at + 1, v[o])
            if shared { s.bind(at + 2, generation) }
        }
    }

    /// Upserts changed registers.
    private func writeRegisters(_ changed: [QRegisterName], state: CollapseState) throws {
        let g = genColumn
        let shared = db.shared, generation = txGeneration
        let rows = changed.compactMap { name in state.registers[name].map { (name, $0) } }
        try insertRows("INSERT INTO registers(name, body\(g.name)) VALUES", columns: shared ? 3 : 2,
                       tail: " ON CONFLICT(name) DO UPDATE SET body = excluded.body\(g.update)", rows) { s, at, row in
            s.bind(at, row.0.description)
            s.bind(at + 1, row.1.encoded)
            if shared { s.bind(at + 2, generation) }
        }
    }

    /// Appends every value registers took to their histories. Appending
    /// (not a ring updated in place) keeps the pages a commit dirties few and
    /// sequential; `trimHistoryIfDue` bounds the table.
    private func appendHistory(_ changes: [RegisterChange]) throws {
        try insertRows("INSERT INTO history(name, side, body) VALUES", columns: 3, changes) { h, at, change in
            let v = change.entry.versioned
            h.bind(at, change.name.description)
            h.bind(at + 1, Int64(change.entry.side.rawValue))
            var w = ByteWriter()
            v.value.encode(into: &w)
            w.write(v.stamp.hlc.rawValue)
            w.write(v.stamp.origin.rawValue)
            w.write(v.stamp.seq)
            h.bind(at + 2, w.bytes)
        }
        historyUntrimmed += changes.count
        historyAppendedSinceStep += changes.count
    }

    /// Cuts every register's history back to its newest `historyLength`
    /// entries once the rows appended since the last cut reach the size of a
    /// full history, so the table stays within a small multiple of its bound
    /// and each appended row pays for its own removal once (amortised O(1)).
    /// SQLite: called inside each commit's transaction, where it takes one
    /// step of the trim, so a step costs no sync of its own (a step rolled
    /// back with its commit leaves its rows to the next trim). A shared
    /// backend: called after the commit, and trims in a transaction of its own.
    private func trimHistoryIfDue() throws {
        if trimScan == nil {
            guard historyUntrimmed >= max(1_024, state.registers.count * options.historyLength) else { return }
            let keepAfter = try trimBoundForReader(warn: true)
            historyTrims += 1
            guard !db.shared else {
                // PostgreSQL ranks the rows itself, on its (name, id) index, without sending them here.
                try transaction {
                    let s = try db.prepare("""
                        DELETE FROM history WHERE id IN (
                            SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY name ORDER BY id DESC) AS newer FROM history) AS ranked
                            WHERE newer > ? AND id <= ?)
                        """)
                    s.bind(1, Int64(options.historyLength))
                    s.bind(2, keepAfter)
                    try s.step()
                }
                historyUntrimmed = 0
                return
            }
            // Rows appended from here on count towards the next trim.
            historyUntrimmed = 0
            var scan = TrimScan(keepAfter: keepAfter)
            scan.rows.reserveCapacity(state.registers.count)
            trimScan = scan
            historyAppendedSinceStep = 0
        }
        // Each step reads at least four times the rows appended since the
        // last one, so a trim ends long before the next is due.
        let limit = max(1, options.historyTrimRowsPerStep, 4 * historyAppendedSinceStep)
        guard var scan = trimScan else { return }
        scan.keepAfter = min(scan.keepAfter, try trimBoundForReader(warn: false))
        let done = try trimStep(&scan, limit: limit)
        historyAppendedSinceStep = 0
        historyTrimSteps += 1
        trimScan = done ? nil : scan
    }

    /// The newest history row a trim may delete: rows a reader has not
    /// consumed stay, up to its `rowsMax` of them (`warn`: log and count
    /// the rows past that bound, once per trim).
    private func trimBoundForReader(warn: Bool) throws -> Int64 {
        guard let hold = historyHold else { return Int64.max }
        let head = try historyHead()
        let keepAfter = max(hold.after, head - Int64(hold.rowsMax))
        if warn && keepAfter > hold.after {
            let c = try db.prepare("SELECT COUNT(*) FROM history WHERE id > ? AND id <= ?")
            c.bind(1, hold.after)
            c.bind(2, keepAfter)
            _ = try c.step()
            historyHoldOverrun += Int(c.int64(0))
            logger.warning("history rows a reader holds exceed its bound: the oldest are trimmed like any other", metadata: [
                "rows_max": "\(hold.rowsMax)", "reader_at": "\(hold.after)", "trimmed_from": "\(keepAfter)",
            ])
        }
        return keepAfter
    }

    /// A SQLite trim in progress: the rows below `below` are still to be
    /// read, newest first; `rows` counts each register's rows read so far.
    struct TrimScan {
        var below = Int64.max
        var rows: [String: Int] = [:]
        var keepAfter: Int64
        init(keepAfter: Int64) { self.keepAfter = keepAfter }
    }

    /// SQLite: the next `limit` rows below `scan.below`, newest first (the
    /// table's own order: nothing to sort), counting each register's rows;
    /// those past its newest `historyLength`, and not held for a reader
    /// (`id <= keepAfter`), are deleted, a run of such rows (no row kept
    /// between them) at a time: once a history is full the doomed rows are
    /// mostly one long run of the oldest. Returns whether the scan reached
    /// the oldest row. Rows appended between steps are newer than any the
    /// scan reads and are not counted, so a register keeps at least its
    /// newest `historyLength`. One pass over the whole table in one go
    /// stalled a fleet's node loop for a third of a second; the ranking query
    /// PostgreSQL runs, for 1.5 s (docs/benchmarks.md).
    private func trimStep(_ scan: inout TrimScan, limit: Int) throws -> Bool {
        var runs: [(from: Int64, through: Int64)] = []
        var run: (from: Int64, through: Int64)?
        let read = try db.prepare("SELECT id, name FROM history WHERE id < ? ORDER BY id DESC LIMIT ?")
        read.bind(1, scan.below)
        read.bind(2, Int64(limit))
        var count = 0
        while try read.step() {
            let id = read.int64(0), name = read.text(1)
            count += 1
            scan.below = id
            let n = (scan.rows[name] ?? 0) + 1
            scan.rows[name] = n
            if n > options.historyLength && id <= scan.keepAfter {
                run = (id, run?.through ?? id)
            } else if let r = run {
                runs.append(r)
                run = nil
            }
        }
        read.reset()
        if let run { runs.append(run) }
        let delete = try db.prepare("DELETE FROM history WHERE id BETWEEN ? AND ?")
        for r in runs {
            delete.reset()
            delete.bind(1, r.from)
            delete.bind(2, r.through)
            try delete.step()
        }
        return count < limit
    }

    private var trimScan: TrimScan?
    /// A trim has steps left (SQLite).
    public var historyTrimming: Bool { trimScan != nil }
    private var historyAppendedSinceStep = 0
    /// History trims started, and the steps they took (each inside a commit).
    public private(set) var historyTrims = 0
    public private(set) var historyTrimSteps = 0

    /// A reader of the history (MQTT store-and-forward) that has consumed
    /// the rows through `after`: newer rows are not trimmed to the
    /// per-register bound until more than `rowsMax` of them wait.
    public var historyHold: (after: Int64, rowsMax: Int)?
    /// Rows a reader held that were trimmed anyway (its `rowsMax` reached).
    public private(set) var historyHoldOverrun = 0

    /// Appends to `changes` each side of `name` that differs between `old` and `new`.
    static func appendChanges(of name: QRegisterName, old: RegisterState?, new: RegisterState, to changes: inout [RegisterChange]) {
        func add(_ side: HistoryEntry.Side, _ v: Versioned) { changes.append(RegisterChange(name: name, entry: HistoryEntry(side: side, versioned: v))) }
        switch (old, new) {
        case (.lww(let o)?, .lww(let n)) where o == n: return
        case (_, .lww(let n)): add(.value, n)
        case (_, .device(let nr, let nd)):
            var oldReported: Versioned?, oldDesired: Versioned?
            if case .device(let r, let d)? = old { (oldReported, oldDesired) = (r, d) }
            if let nr, nr != oldReported { add(.reported, nr) }
            if let nd, nd != oldDesired { add(.desired, nd) }
        }
    }

    // MARK: incarnations

    /// Sets the epoch of a store that holds nothing yet: a store that lost its
    /// file under a key that wrote before starts under an origin nobody holds.
    public func startIncarnation(epoch e: UInt32) throws {
        precondition(vector.entries.isEmpty, "only an empty store starts an incarnation this way")
        try transaction { try setMeta("epoch", Int64(e)) }
        epoch = e
    }

    public func reincarnate(origin: Origin, keepThrough: UInt64, waitThrough: UInt64) throws -> Int {
        var keep: UInt64 = 0
        var nextEpoch: UInt32 = 0
        var moved = 0
        var nextPeers: [String: QStateVector] = [:]
        try transaction {
            keep = min(vector[origin], max(keepThrough, horizon[origin]))
            nextEpoch = epoch == UInt32.max ? 1 : epoch + 1
            nextPeers = peerVectors
            if vector[origin] > keep {
                // Oldest block first, so the orphans keep the seqs' order.
                let touched = try blocks(of: origin, keep + 1...vector[origin])
                let copy = try db.prepare("INSERT INTO orphans(origin, seq, body) SELECT origin, seq, body FROM deltas WHERE block = ? AND origin = ? AND seq > ? ORDER BY seq")
                let d = try db.prepare("DELETE FROM deltas WHERE block = ? AND origin = ? AND seq > ?")
                for block in touched {
                    for s in [copy, d] {
                        s.reset()
                        s.bind(1, block)
                        s.bind(2, origin.rawValue)
                        s.bind(3, keep)
                        try s.step()
                    }
                }
                try dropRuns(of: origin, after: keep)
                moved = Int(vector[origin] - keep)
                for block in touched { try resealBlock(block) }
                let gen = db.shared ? ", gen = ?" : ""
                let v = try db.prepare("UPDATE vector SET seq = ?\(gen) WHERE origin = ?")
                v.bind(1, keep)
                v.bind(db.shared ? 3 : 2, origin.rawValue)
                if db.shared { v.bind(2, txGeneration) }
                try v.step()
                // Acknowledgements this store recorded beyond `keep` were for deltas it no longer holds.
                let p = try db.prepare("UPDATE peers SET seq = ?\(gen) WHERE origin = ? AND seq > ?")
                p.bind(1, keep)
                if db.shared { p.bind(2, txGeneration) }
                let at: Int32 = db.shared ? 3 : 2
                p.bind(at, origin.rawValue)
                p.bind(at + 1, keep)
                try p.step()
                for (peer, v) in nextPeers where v[origin] > keep { nextPeers[peer]![origin] = keep }
            }
            try setMeta("epoch", Int64(nextEpoch))
            try setMeta("orphans_wait", Int64(bitPattern: waitThrough))
        }
        vector[origin] = keep
        if db.logByBlock { pendingRuns.remove(of: origin) { $0.first > keep } }
        peerVectors = nextPeers
        epoch = nextEpoch
        orphanCount += moved
        logger.critical("new incarnation", metadata: [
            "epoch": "\(nextEpoch)", "old_origin": "\(origin)", "kept_through": "\(keep)", "set_aside": "\(moved)",
        ])
        return moved
    }

    public func settleOrphans(newOrigin: Origin, physicalMs: UInt64, force: Bool) throws -> OrphanSettlement {
        var settlement = OrphanSettlement()
        guard orphanCount > 0 else { return settlement }
        var settled: [Int64] = []
        // Decided once the transaction holds the writer lock: the rewrites take seqs of `newOrigin`.
        _ = try commitBlock(local: true, {
            settlement = OrphanSettlement()
            settled = []
            let wait = try meta("orphans_wait") ?? 0
            let s = try db.prepare("SELECT id, origin, seq, body FROM orphans ORDER BY id")
            var rows: [(id: Int64, origin: Origin, seq: UInt64, body: [UInt8])] = []
            while try s.step() { rows.append((s.int64(0), Origin(s.uint64(1)), s.uint64(2), s.blob(3))) }
            var rewrite: [(id: Int64, delta: Delta)] = []
            for row in rows {
                let delta: Delta
                do { delta = try Delta.decode(row.body) } catch let e as CoreError {
                    throw StoreError(.corrupt, "\(path): orphan \(row.origin)#\(row.seq) cannot be read back: \(e.message)")
                }
                if vector[row.origin] >= row.seq {
                    if row.seq > horizon[row.origin], try heldHLC(origin: row.origin, seq: row.seq) == delta.hlc {
                        settlement.dropped += 1
                        settled.append(row.id)
                    } else {
                        rewrite.append((row.id, delta))
                    }
                } else if row.seq > wait || force {
                    rewrite.append((row.id, delta))
                }
            }
            let (results, batch) = try stamp(rewrite.map { LocalWrite(group: $0.delta.group, writes: $0.delta.writes) }, origin: newOrigin, physicalMs: physicalMs)
            for (r, orphan) in zip(results, rewrite) {
                settled.append(orphan.id)
                switch r {
                case .success(let d): settlement.rewritten.append((orphan.delta, d))
                case .failure(let e): settlement.refused.append((orphan.delta.id, e))
                }
            }
            return batch
        }, also: {
            let d = try self.db.prepare("DELETE FROM orphans WHERE id = ?")
            for id in settled {
                d.reset()
                d.bind(1, id)
                try d.step()
            }
        })
        orphanCount -= settled.count
        return settlement
    }

    // MARK: catch-up and snapshots

    public func catchUp(for peer: QStateVector, limit: Int) throws -> CatchUp {
        precondition(limit > 0 && limit <= StoreOptions.catchUpLimitMax, "catch-up limit out of range")
        let lacking = vector.lacking(in: peer)
        if lacking.contains(where: { $0.first <= horizon[$0.origin] }) {
            return .snapshot(Snapshot(registers: state.registers, vector: vector))
        }
        var out: [Delta] = []
        for range in lacking where out.count < limit {
            let last = min(range.last, range.first + UInt64(limit - out.count) - 1)
            out += try deltas(origin: range.origin, seqs: range.first...last)
        }
        return .deltas(out)
    }

    public func deltas(origin: Origin, seqs: ClosedRange<UInt64>) throws -> [Delta] {
        var out: [Delta] = []
        let s = try db.prepare("SELECT seq, body FROM deltas WHERE block = ? AND origin = ? AND seq BETWEEN ? AND ? ORDER BY seq")
        for block in try blocks(of: origin, seqs) {
            s.reset()
            s.bind(1, block)
            s.bind(2, origin.rawValue)
            s.bind(3, seqs.lowerBound)
            s.bind(4, seqs.upperBound)
            while try s.step() {
                let seq = s.uint64(0)
                do {
                    let d = try Delta.decode(s.blob(1))
                    guard d.origin == origin, d.seq == seq else {
                        throw CoreError(.malformed, "row key \(origin)#\(seq) holds delta \(d.id)")
                    }
                    out.append(d)
                } catch let e as CoreError {
                    throw StoreError(.corrupt, "\(path): delta \(origin)#\(seq) cannot be read back: \(e.message)")
                }
            }
        }
        return out
    }

    public func apply(_ snapshot: Snapshot) throws -> [QRegisterName] {
        var nextState = state, nextHorizon = horizon, nextVector = vector
        var changed: [QRegisterName] = []
        var snapshotChanges: [RegisterChange] = []
        var dropped: [Origin] = []
        try transaction {
            nextState = state
            changed = nextState.merge(snapshot: snapshot.registers)
            // A snapshot carries only the collapsed state: each changed register's
            // history gains its new value, not the values it skipped.
            snapshotChanges = []
            for name in changed {
                guard let new = nextState.registers[name] else { continue }
                SQLStore.appendChanges(of: name, old: state.registers[name], new: new, to: &snapshotChanges)
            }
            // Seqs the snapshot covers but we never held as deltas can no longer be
            // served to others: they join our horizon.
            // Deltas we did hold of such an origin are dropped too, so the log keeps
            // its shape: per origin exactly the seqs horizon+1 ... vector.
            nextHorizon = horizon
            let jumped = snapshot.vector.origins.filter { snapshot.vector[$0] > vector[$0] }
            for o in jumped { nextHorizon[o] = snapshot.vector[o] }
            nextVector = vector.merged(snapshot.vector)
            var touched = Set<Int64>()
            dropped = jumped.filter { vector[$0] > horizon[$0] }
            let d = try db.prepare("DELETE FROM deltas WHERE block = ? AND origin = ?")
            for o in dropped {
                for block in try blocks(of: o, horizon[o] + 1...vector[o]) {
                    d.reset()
                    d.bind(1, block)
                    d.bind(2, o.rawValue)
                    try d.step()
                    touched.insert(block)
                }
                try dropRuns(of: o, after: 0)
            }
            for block in touched.sorted() { try resealBlock(block) }
            try writeVector(table: "vector", old: vector, new: nextVector)
            try writeVector(table: "horizon", old: horizon, new: nextHorizon)
            try writeRegisters(changed, state: nextState)
            try appendHistory(snapshotChanges)
            if !db.shared { try trimHistoryIfDue() }
        }
        state = nextState
        vector = nextVector
        horizon = nextHorizon
        if db.logByBlock { for o in dropped { pendingRuns.remove(of: o) { _ in true } } }
        if db.shared { try trimHistoryIfDue() }
        if !changed.isEmpty { onChange?(changed, snapshotChanges) }
        return changed
    }

    /// Recomputes a StateBlock's count and checksum after some of its deltas
    /// were dropped (by a snapshot), or removes it when none are left.
    private func resealBlock(_ id: Int64) throws {
        let held = try blockRows(id)
        let crc = SQLStore.checksum(of: held.lazy.map(\.body))
        let count = Int64(held.count)
        if count == 0 {
            let d = try db.prepare("DELETE FROM blocks WHERE id = ?")
            d.bind(1, id)
            try d.step()
        } else {
            let u = try db.prepare("UPDATE blocks SET count = ?, checksum = ? WHERE id = ?")
            u.bind(1, count)
            u.bind(2, Int64(crc))
            u.bind(3, id)
            try u.step()
        }
    }

    /// Format 1 resealed a StateBlock (after a snapshot dropped some of its
    /// deltas) over its rows in SQL's order, origins as signed integers;
    /// every other checksum covers them by DeltaID, unsigned. The two orders
    /// differ only in a block with origins on both sides of 2^63. Such a
    /// block whose checksum is the signed order's gets the unsigned order's;
    /// one that matches neither is left as it is, for `verify()` to report.
    /// Returns the blocks resealed.
    private func resealFormatOneChecksums() throws -> Int {
        let straddling = try db.prepare("""
            SELECT id, checksum FROM blocks WHERE id IN
                (SELECT block FROM deltas GROUP BY block HAVING MIN(origin) < 0 AND MAX(origin) >= 0)
            """)
        var blocks: [(id: Int64, checksum: UInt32)] = []
        while try straddling.step() { blocks.append((straddling.int64(0), UInt32(truncatingIfNeeded: straddling.int64(1)))) }
        var resealed = 0
        for (id, checksum) in blocks {
            let rows = try blockRows(id)
            let signed = rows.sorted { (Int64(bitPattern: $0.id.origin.rawValue), $0.id.seq) < (Int64(bitPattern: $1.id.origin.rawValue), $1.id.seq) }
            let unsignedCRC = SQLStore.checksum(of: rows.lazy.map(\.body))
            guard checksum != unsignedCRC, checksum == SQLStore.checksum(of: signed.lazy.map(\.body)) else { continue }
            let u = try db.prepare("UPDATE blocks SET checksum = ? WHERE id = ?")
            u.bind(1, Int64(unsignedCRC))
            u.bind(2, id)
            try u.step()
            resealed += 1
        }
        return resealed
    }

    /// A StateBlock's checksum: CRC-32C over its deltas' bodies, in the order given.
    static func checksum<C: Sequence>(of bodies: C) -> UInt32 where C.Element == [UInt8] {
        bodies.reduce(UInt32(0)) { CRC32C.update($0, $1) }
    }

    /// A StateBlock's rows in the order its checksum covers them: by
    /// (origin, seq) as unsigned numbers (the table holds origins as signed
    /// integers, so SQL's order differs for origins from 2^63 on).
    private func blockRows(_ id: Int64) throws -> [(id: DeltaID, body: [UInt8])] {
        let s = try db.prepare("SELECT origin, seq, body FROM deltas WHERE block = ?")
        s.bind(1, id)
        var rows: [(id: DeltaID, body: [UInt8])] = []
        while try s.step() { rows.append((DeltaID(origin: Origin(s.uint64(0)), seq: s.uint64(1)), s.blob(2))) }
        return rows.sorted { $0.id < $1.id }
    }

    // MARK: peers and compaction

    public func recordAck(peer: String, vector ack: QStateVector) throws {
        let old = peerVector(peer)
        let new = old.merged(ack)
        guard new != old || peerVectors[peer] == nil else { return }
        if options.lazyAcks, peerVectors[peer] != nil {
            peerVectors[peer] = new
            dirtyAcks.insert(peer)
            return
        }
        try writePeer(peer, new, replacing: false)
    }

    /// Peers whose acknowledged vector in memory is ahead of the file (`lazyAcks`).
    private var dirtyAcks: Set<String> = []

    /// Cursors set with `setCursorLazily` and not yet in the file.
    private var dirtyCursors: [String: Int64] = [:]

    /// Writes the acknowledgements and cursors kept in memory (inside the caller's transaction).
    private func writeDirtyAcks() throws {
        for (key, value) in dirtyCursors.sorted(by: { $0.key < $1.key }) { try setMeta("cursor " + key, value) }
        for peer in dirtyAcks.sorted() {
            let v = peerVector(peer)
            try upsertPeer(peer, v, origins: v.origins)
        }
    }

    /// Upserts `peer`'s acknowledged entries for `origins` of `v`.
    private func upsertPeer(_ peer: String, _ v: QStateVector, origins: [Origin]) throws {
        let g = genColumn
        let shared = db.shared, generation = txGeneration
        try insertRows("INSERT INTO peers(peer, origin, seq\(g.name)) VALUES", columns: shared ? 4 : 3,
                       tail: " ON CONFLICT(peer, origin) DO UPDATE SET seq = excluded.seq\(g.update)", origins) { s, at, o in
            s.bind(at, peer)
            s.bind(at + 1, o.rawValue)
            s.bind(at + 2, v[o])
            if shared { s.bind(at + 3, generation) }
        }
    }

    /// What `writeDirtyAcks` wrote is in the file now.
    private func lazyWritten() {
        dirtyAcks = []
        dirtyCursors = [:]
    }

    /// Writes the acknowledgements (`lazyAcks`) and cursors kept in memory; nothing when none wait.
    public func flushAcks() throws {
        guard !dirtyAcks.isEmpty || !dirtyCursors.isEmpty else { return }
        try transaction { try writeDirtyAcks() }
        lazyWritten()
    }

    // MARK: cursors (readers of the history that keep their place, e.g. MQTT store-and-forward)

    /// A reader's place, as last written (nil: never set).
    public func cursor(_ key: String) throws -> Int64? {
        if let v = dirtyCursors[key] { return v }
        return try meta("cursor " + key).map { Int64(bitPattern: $0) }
    }

    /// Sets a reader's place now, in a transaction of its own.
    public func setCursor(_ key: String, _ value: Int64) throws {
        try transaction { try setMeta("cursor " + key, value) }
        dirtyCursors[key] = nil
    }

    /// Sets a reader's place with the next commit or compaction step: losing
    /// it to a crash only makes the reader read some rows again.
    public func setCursorLazily(_ key: String, _ value: Int64) {
        dirtyCursors[key] = value
    }

    /// The id of the newest history row (0: none yet). Ids only grow.
    public func historyHead() throws -> Int64 {
        let s = try db.prepare("SELECT COALESCE(MAX(id), 0) FROM history")
        _ = try s.step()
        return s.int64(0)
    }

    /// History rows after `id`, oldest first, at most `limit`, with their
    /// ids: what every register took since a reader's cursor. Rows the
    /// history bound trimmed are gone (`[node] history` per register).
    public func historyRows(after id: Int64, limit: Int) throws -> [(id: Int64, change: RegisterChange)] {
        let s = try db.prepare("SELECT id, name, side, body FROM history WHERE id > ? ORDER BY id LIMIT ?")
        s.bind(1, id)
        s.bind(2, Int64(limit))
        var out: [(id: Int64, change: RegisterChange)] = []
        while try s.step() {
            let text = s.text(1)
            guard let name = try? QRegisterName(text) else { throw StoreError(.corrupt, "\(path): history row \(s.int64(0)) names \"\(text)\"") }
            out.append((s.int64(0), RegisterChange(name: name, entry: try historyEntry(of: name, side: s.int64(2), body: s.blob(3)))))
        }
        return out
    }

    public func replaceAck(peer: String, vector: QStateVector) throws {
        guard peerVectors[peer] != vector else { return }
        try writePeer(peer, vector, replacing: true)
    }

    /// Writes what `peer` holds: the entries that changed, or (`replacing`) all of them anew.
    private func writePeer(_ peer: String, _ new: QStateVector, replacing: Bool) throws {
        // A peer with acknowledgements kept in memory is written whole.
        let old = replacing || dirtyAcks.contains(peer) ? QStateVector() : peerVector(peer)
        try transaction {
            if replacing {
                let d = try db.prepare("DELETE FROM peers WHERE peer = ?")
                d.bind(1, peer)
                try d.step()
            }
            try upsertPeer(peer, new, origins: new.origins.filter { new[$0] != old[$0] })
            if new.entries.isEmpty {
                // Remember a peer that has acknowledged nothing yet: it still holds back compaction.
                let g = genColumn
                let z = try db.prepare("INSERT INTO peers(peer, origin, seq\(g.name)) VALUES (?, 0, 0\(g.value)) ON CONFLICT DO NOTHING")
                z.bind(1, peer)
                if db.shared { z.bind(2, txGeneration) }
                try z.step()
            }
        }
        peerVectors[peer] = new
        dirtyAcks.remove(peer)
    }

    /// When `peer` was last linked (Unix ms), as recorded by `recordPeerSeen`; durable, so a
    /// retention counts across restarts.
    public func peerSeen(_ peer: String) throws -> UInt64? { try meta("seen " + peer) }

    public func recordPeerSeen(_ peer: String, ms: UInt64) throws {
        try transaction { try setMeta("seen " + peer, Int64(bitPattern: ms)) }
    }

    /// Deltas in the log (per origin, horizon+1 … vector).
    public var logDeltas: UInt64 { vector.origins.reduce(0) { $0 + vector[$1] - min(vector[$1], horizon[$1]) } }

    public func removePeer(_ peer: String) throws {
        let m = try db.prepare("DELETE FROM meta WHERE key = ?")
        m.bind(1, "seen " + peer)
        try m.step()
        let s = try db.prepare("DELETE FROM peers WHERE peer = ?")
        s.bind(1, peer)
        try s.step()
        peerVectors[peer] = nil
        dirtyAcks.remove(peer)
    }

    public func compact() throws -> CompactionReport {
        var removed = 0, blocksRemoved = 0, more = false
        var nextHorizon = horizon
        var compactedThrough: Int64 = 0
        // Decided under the writer lock: on a shared database another daemon's peers count too.
        let done: Bool = try transaction {
            // Everything every peer acknowledged; with no peers, everything held
            // (a peer that joins later is served a snapshot).
            let acked = peers.reduce(vector) { $0.meet(peerVector($1)) }
            var lastBlock: Int64?
            nextHorizon = horizon
            let blocks = try db.prepare("SELECT id, count FROM blocks ORDER BY id LIMIT ?")
            blocks.bind(1, Int64(options.compactionBlocksMax))
            var candidates: [(id: Int64, count: Int)] = []
            var stoppedAtBound = false
            while try blocks.step() { candidates.append((blocks.int64(0), Int(blocks.int64(1)))) }
            scan: for block in candidates {
                let s = try db.prepare("SELECT origin, MAX(seq) FROM deltas WHERE block = ? GROUP BY origin")
                s.bind(1, block.id)
                var highs: [(Origin, UInt64)] = []
                while try s.step() {
                    let o = Origin(s.uint64(0)), high = s.uint64(1)
                    if high > acked[o] { break scan }
                    highs.append((o, high))
                }
                for (o, high) in highs where high > nextHorizon[o] { nextHorizon[o] = high }
                lastBlock = block.id
                removed += block.count
                if removed >= options.compactionDeltasMax {
                    stoppedAtBound = true
                    break
                }
            }
            guard let lastBlock else { return false }
            blocksRemoved = candidates.prefix { $0.id <= lastBlock }.count
            more = stoppedAtBound || (blocksRemoved == candidates.count && candidates.count >= options.compactionBlocksMax)
            let d = try db.prepare("DELETE FROM deltas WHERE block <= ?")
            d.bind(1, lastBlock)
            try d.step()
            // An origin's runs in the blocks removed are those up to its new horizon.
            if db.logByBlock {
                let r = try db.prepare("DELETE FROM runs WHERE origin = ? AND first <= ?")
                for o in nextHorizon.origins where nextHorizon[o] != horizon[o] {
                    r.reset()
                    r.bind(1, o.rawValue)
                    r.bind(2, nextHorizon[o])
                    try r.step()
                }
            }
            compactedThrough = lastBlock
            let b = try db.prepare("DELETE FROM blocks WHERE id <= ?")
            b.bind(1, lastBlock)
            try b.step()
            try writeVector(table: "horizon", old: horizon, new: nextHorizon)
            // The horizon follows acknowledgements: the file never holds it ahead of them.
            try writeDirtyAcks()
            return true
        }
        guard done else { return CompactionReport(blocksRemoved: 0, deltasRemoved: 0, horizon: horizon) }
        lazyWritten()
        if db.logByBlock {
            for o in nextHorizon.origins where nextHorizon[o] != horizon[o] {
                pendingRuns.remove(of: o) { $0.block <= compactedThrough }
            }
        }
        horizon = nextHorizon
        // SQLite checkpoints the WAL on its own (every `StoreOptions.walBytes`); a checkpoint
        // per step would cost every step an fsync.
        logger.debug("compacted", metadata: ["blocks": "\(blocksRemoved)", "deltas": "\(removed)", "horizon": "\(horizon)"])
        return CompactionReport(blocksRemoved: blocksRemoved, deltasRemoved: removed, horizon: horizon, more: more)
    }

    // MARK: reading back

    public func history(_ name: QRegisterName) throws -> [HistoryEntry] {
        let s = try db.prepare("SELECT side, body FROM history WHERE name = ? ORDER BY id DESC LIMIT ?")
        s.bind(1, name.description)
        s.bind(2, Int64(options.historyLength))
        var out: [HistoryEntry] = []
        while try s.step() { out.append(try historyEntry(of: name, side: s.int64(0), body: s.blob(1))) }
        return out
    }

    /// One history row's side and body, read back (`appendHistory` wrote them).
    private func historyEntry(of name: QRegisterName, side code: Int64, body: [UInt8]) throws -> HistoryEntry {
        guard let side = HistoryEntry.Side(rawValue: UInt8(truncatingIfNeeded: code)) else {
            throw StoreError(.corrupt, "\(path): history of \(name) has unknown side \(code)")
        }
        var r = ByteReader(body)
        do {
            let value = try Value.decode(from: &r)
            let hlc = HLCTimestamp(rawValue: try r.read(UInt64.self, "hlc"))
            let origin = Origin(try r.read(UInt64.self, "origin"))
            let seq = try r.read(UInt64.self, "seq")
            return HistoryEntry(side: side, versioned: Versioned(value, Stamp(hlc: hlc, origin: origin, seq: seq)))
        } catch let e as CoreError {
            throw StoreError(.corrupt, "\(path): history of \(name) cannot be read back: \(e.message)")
        }
    }

    public func verify() throws -> VerifyReport {
        try db.integrityCheck()
        var blockCount = 0, deltaCount = 0
        let blocks = try db.prepare("SELECT id, count, checksum FROM blocks ORDER BY id")
        var rows: [(Int64, Int64, UInt32)] = []
        while try blocks.step() { rows.append((blocks.int64(0), blocks.int64(1), UInt32(truncatingIfNeeded: blocks.int64(2)))) }
        for (id, count, checksum) in rows {
            let held = try blockRows(id)
            let crc = SQLStore.checksum(of: held.lazy.map(\.body))
            let n = Int64(held.count)
            for (key, body) in held {
                do {
                    let d = try Delta.decode(body)
                    guard d.id == key else { throw CoreError(.malformed, "row key \(key) holds \(d.id)") }
                } catch let e as CoreError {
                    throw StoreError(.corrupt, "\(path): StateBlock \(id): \(e.message)")
                }
            }
            guard n == count, crc == checksum else {
                throw StoreError(.corrupt, "\(path): StateBlock \(id): \(n) of \(count) deltas, checksum \(crc) expected \(checksum)")
            }
            blockCount += 1
            deltaCount += Int(n)
        }
        // Per origin the log must hold exactly horizon+1 ... vector.
        let runs = try db.prepare("SELECT origin, MIN(seq), MAX(seq), COUNT(*) FROM deltas GROUP BY origin")
        var seen = Set<Origin>()
        while try runs.step() {
            let o = Origin(runs.uint64(0)), low = runs.uint64(1), high = runs.uint64(2), n = runs.uint64(3)
            seen.insert(o)
            guard low == horizon[o] + 1, high == vector[o], n == high - low + 1 else {
                throw StoreError(.corrupt, "\(path): origin \(o) holds seqs \(low)...\(high) (\(n) rows), vector \(vector[o]), horizon \(horizon[o])")
            }
        }
        for o in vector.origins where !seen.contains(o) && vector[o] != horizon[o] {
            throw StoreError(.corrupt, "\(path): origin \(o) has vector \(vector[o]) but no deltas above horizon \(horizon[o])")
        }
        if db.logByBlock { try verifyRuns() }
        return VerifyReport(blocks: blockCount, deltas: deltaCount, registers: state.registers.count)
    }

    /// Each origin's part of each StateBlock has its run, in the table or pending.
    private func verifyRuns() throws {
        func describe(_ runs: [(origin: Origin, run: Run)], _ i: Int) -> String {
            i < runs.count ? "\(runs[i].origin) from \(runs[i].run.first) in StateBlock \(runs[i].run.block)" : "nothing"
        }
        var expected: [(origin: Origin, run: Run)] = []
        let parts = try db.prepare("SELECT origin, MIN(seq), block FROM deltas GROUP BY origin, block")
        while try parts.step() { expected.append((Origin(parts.uint64(0)), Run(first: parts.uint64(1), block: parts.int64(2)))) }
        var found = pendingRuns.rows(in: Array(0..<PendingRuns.slices))
        let table = try db.prepare("SELECT origin, first, block FROM runs")
        while try table.step() { found.append((Origin(table.uint64(0)), Run(first: table.uint64(1), block: table.int64(2)))) }
        let order: ((origin: Origin, run: Run), (origin: Origin, run: Run)) -> Bool = {
            $0.origin != $1.origin ? $0.origin < $1.origin : $0.run.first < $1.run.first
        }
        expected.sort(by: order)
        found.sort(by: order)
        for i in 0..<max(expected.count, found.count) {
            guard i < expected.count, i < found.count, expected[i].origin == found[i].origin, expected[i].run == found[i].run else {
                throw StoreError(.corrupt, "\(path): the runs do not match the log: the log needs \(describe(expected, i)), the runs say \(describe(found, i))")
            }
        }
    }
}
