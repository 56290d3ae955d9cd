internal import CSQLite

/// An error from SQLite or from the store's own integrity checks, with the
/// path of the database it concerns.
public struct StoreError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        private init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let sqlite = Code("sqlite")
        /// The PostgreSQL server refused a statement.
        public static let database = Code("database")
        /// The PostgreSQL server cannot be reached (no connection, or no
        /// answer in time). Every call fails alike until it is back: a caller
        /// does not retry the parts of a failed batch one by one.
        public static let unavailable = Code("database-unavailable")
        public static let corrupt = Code("corrupt")
        public static let compacted = Code("compacted")
        public static let closed = Code("closed")
        public static let wrongFormat = Code("wrong-format")
        public static let invariant = Code("invariant")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// A thin owner of one `sqlite3*` connection. Not thread-safe: the store
/// serialises access.
final class SQLiteConnection: SQLBackend {
    private var db: OpaquePointer?
    let path: String
    private var statements: [String: OpaquePointer] = [:]

    init(path: String, vfs: String? = nil) throws {
        self.path = path
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &handle, flags, vfs)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw StoreError(.sqlite, "\(path): cannot open database: \(message) (code \(rc))")
        }
        db = handle
        sqlite3_extended_result_codes(handle, 1)
        // A checkpoint or another reader may hold the lock briefly.
        sqlite3_busy_timeout(handle, 5_000)
    }

    deinit { close() }

    func close() {
        for (_, s) in statements { sqlite3_finalize(s) }
        statements = [:]
        if let db { sqlite3_close_v2(db) }
        db = nil
    }

    private func handle() throws -> OpaquePointer {
        guard let db else { throw StoreError(.closed, "\(path): the store is closed") }
        return db
    }

    func error(_ rc: Int32, _ what: String) -> StoreError {
        let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "closed"
        return StoreError(.sqlite, "\(path): \(what): \(message) (code \(rc))")
    }

    /// Runs one or more statements without parameters. Resets every cached
    /// statement first: one left mid-result would hold a read lock and block
    /// COMMIT or a checkpoint.
    func exec(_ sql: String) throws {
        for (_, s) in statements { sqlite3_reset(s) }
        let rc = sqlite3_exec(try handle(), sql, nil, nil, nil)
        guard rc == SQLITE_OK else { throw error(rc, "executing \"\(sql.prefix(60))\"") }
    }

    /// A cached prepared statement, reset and with cleared bindings.
    func statement(_ sql: String) throws -> Statement {
        if let s = statements[sql] {
            let statement = Statement(handle: s, connection: self)
            statement.reset()
            return statement
        }
        var s: OpaquePointer?
        let rc = sqlite3_prepare_v3(try handle(), sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &s, nil)
        guard rc == SQLITE_OK, let s else { throw error(rc, "preparing \"\(sql.prefix(60))\"") }
        statements[sql] = s
        return Statement(handle: s, connection: self)
    }

    // MARK: SQLBackend

    var location: String { path }
    /// One process per file (the nodes hold a lock file next to it).
    var shared: Bool { false }
    var logByBlock: Bool { true }

    var schemaSQL: String {
        """
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS blocks(id INTEGER PRIMARY KEY, count INTEGER NOT NULL, checksum INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS deltas(\(SQLiteConnection.deltasColumns)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS runs(origin INTEGER NOT NULL, first INTEGER NOT NULL, block INTEGER NOT NULL,
            PRIMARY KEY(origin, first)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS vector(origin INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS horizon(origin INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS peers(peer TEXT NOT NULL, origin INTEGER NOT NULL, seq INTEGER NOT NULL,
            PRIMARY KEY(peer, origin)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS registers(name TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS history(id INTEGER PRIMARY KEY, name TEXT NOT NULL, side INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE TABLE IF NOT EXISTS orphans(id INTEGER PRIMARY KEY, origin INTEGER NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL);

        """
    }

    /// The log, keyed by StateBlock: a commit's rows go to one place (by
    /// origin they went to one page per origin; `runs` finds an origin's).
    private static let deltasColumns = """
        origin INTEGER NOT NULL, seq INTEGER NOT NULL, block INTEGER NOT NULL,
                body BLOB NOT NULL, refused TEXT, PRIMARY KEY(block, origin, seq)
        """

    /// Format 1 keyed the log by (origin, seq) and had no runs.
    func migrationSQL(fromFormat: Int64) -> String? {
        guard fromFormat == 1 else { return nil }
        return """
            CREATE TABLE deltas_by_block(\(SQLiteConnection.deltasColumns)) WITHOUT ROWID;
            INSERT INTO deltas_by_block(origin, seq, block, body, refused)
                SELECT origin, seq, block, body, refused FROM deltas ORDER BY block, origin, seq;
            INSERT INTO runs(origin, first, block) SELECT origin, MIN(seq), block FROM deltas GROUP BY origin, block;
            DROP TABLE deltas;
            ALTER TABLE deltas_by_block RENAME TO deltas
            """
    }

    func prepare(_ sql: String) throws -> any SQLStatement { try statement(sql) }
    func begin() throws { try exec("BEGIN IMMEDIATE") }
    func commit() throws { try exec("COMMIT") }
    func rollback() { try? exec("ROLLBACK") }
    func onOthersCommit(_ handler: @escaping @Sendable () -> Void) {}

    func integrityCheck() throws {
        let quick = try statement("PRAGMA quick_check")
        while try quick.step() {
            let line = quick.text(0)
            guard line == "ok" else { throw StoreError(.corrupt, "\(path): SQLite quick_check: \(line)") }
        }
    }
}

/// A prepared statement being bound and stepped.
struct Statement: SQLStatement {
    let handle: OpaquePointer
    let connection: SQLiteConnection

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// Makes the statement ready to be bound and stepped again.
    func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    func bind(_ index: Int32, _ value: Int64) { sqlite3_bind_int64(handle, index, value) }
    func bind(_ index: Int32, _ value: String) { sqlite3_bind_text(handle, index, value, -1, Statement.transient) }
    func bind(_ index: Int32, _ value: [UInt8]) {
        value.withUnsafeBytes { raw in
            _ = sqlite3_bind_blob(handle, index, raw.baseAddress, Int32(raw.count), Statement.transient)
        }
    }

    /// Steps once: true while a row is available.
    @discardableResult
    func step() throws -> Bool {
        let rc = sqlite3_step(handle)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.error(rc, "stepping \"\(String(cString: sqlite3_sql(handle)).prefix(60))\"")
        }
    }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }
    func text(_ column: Int32) -> String {
        guard let p = sqlite3_column_text(handle, column) else { return "" }
        return String(cString: p)
    }
    func blob(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count > 0, let p = sqlite3_column_blob(handle, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }
    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }
}
