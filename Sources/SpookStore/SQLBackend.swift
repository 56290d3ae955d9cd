/// The database under an `SQLStore`: the embedded SQLite file, or a
/// PostgreSQL server (module SpookPostgres). One connection, used from one
/// thread at a time; the store serialises its calls.
///
/// The store writes the same SQL to both, with `?` placeholders (a backend
/// that numbers its parameters rewrites them) and the statements both
/// engines take (`ON CONFLICT … DO UPDATE`, `RETURNING`, window functions).
/// What differs is here: the tables' DDL, how a write transaction begins,
/// and whether other processes write the same database.
public protocol SQLBackend: AnyObject {
    /// Where the data is, for messages: a path, or a URL without its password.
    var location: String { get }
    /// Other processes write this database too (several `spookd` on one
    /// PostgreSQL): the store re-reads what they committed at the start of
    /// each write transaction, and tags the rows it writes with a generation.
    var shared: Bool { get }
    /// The tables, created when missing (one or more statements).
    var schemaSQL: String { get }
    /// The log is keyed by StateBlock, and the `runs` table says where each
    /// origin's seqs lie (SQLite: a commit's rows go to one place of the
    /// file). False: the log is keyed by (origin, seq) and read by origin
    /// directly, with no `runs` (PostgreSQL: the pages are the server's,
    /// and runs written at every commit cost more than they saved).
    var logByBlock: Bool { get }
    /// Converts a store of an older format, after `schemaSQL` created the
    /// tables that format lacked (inside the same transaction); nil when
    /// this build cannot.
    func migrationSQL(fromFormat: Int64) -> String?
    /// Rows per multi-row INSERT the store writes (at most 5 columns each).
    var insertRowsMax: Int { get }

    /// Runs statements without parameters or results.
    func exec(_ sql: String) throws
    /// A statement ready to be bound and stepped (cached by the backend).
    func prepare(_ sql: String) throws -> any SQLStatement
    /// Starts a write transaction; no other writer of the database runs
    /// until `commit` or `rollback` (SQLite `BEGIN IMMEDIATE`, PostgreSQL
    /// an advisory lock held to the end of the transaction).
    func begin() throws
    /// Makes the transaction durable at the backend's sync level; returns
    /// only once it is (a connection lost here is an error: not acknowledged).
    func commit() throws
    func rollback()
    /// Calls `handler` (on any thread) when another process committed; nothing
    /// for a backend that is not `shared`.
    func onOthersCommit(_ handler: @escaping @Sendable () -> Void)
    /// The engine's own consistency check (SQLite `quick_check`); throws what it finds.
    func integrityCheck() throws
    func close()
}

/// A prepared statement: bind parameters (1-based, unbound ones are NULL),
/// then step through the rows (0-based columns).
public protocol SQLStatement {
    func reset()
    func bind(_ index: Int32, _ value: Int64)
    func bind(_ index: Int32, _ value: UInt64)
    func bind(_ index: Int32, _ value: String)
    func bind(_ index: Int32, _ value: [UInt8])
    /// Runs the statement (first call) or moves to the next row: true while a row is available.
    @discardableResult func step() throws -> Bool
    func int64(_ column: Int32) -> Int64
    func uint64(_ column: Int32) -> UInt64
    func text(_ column: Int32) -> String
    func blob(_ column: Int32) -> [UInt8]
    func isNull(_ column: Int32) -> Bool
}

extension SQLBackend {
    /// SQLite: each statement is a call into the library, not a round trip;
    /// 64 rows (320 parameters) a statement.
    public var insertRowsMax: Int { 64 }
}

extension SQLStatement {
    public func bind(_ index: Int32, _ value: UInt64) { bind(index, Int64(bitPattern: value)) }
    public func uint64(_ column: Int32) -> UInt64 { UInt64(bitPattern: int64(column)) }
}
