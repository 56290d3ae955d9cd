#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import SpookCore
import SpookStore

extension PostgresURL {
    func configuration() throws -> PostgresConnection.Configuration {
        var c: PostgresConnection.Configuration
        if let dir = socketDirectory {
            c = .init(unixSocketPath: "\(dir)/.s.PGSQL.\(port)", username: user, password: password, database: database)
        } else {
            let tls: PostgresConnection.Configuration.TLS
            switch self.tls {
            case .disable:
                tls = .disable
            case .require, .verifyCA, .verifyFull:
                var t = TLSConfiguration.makeClientConfiguration()
                switch self.tls {
                // libpq's `require`: encrypted, any certificate (no impostor check).
                case .require: t.certificateVerification = .none
                // `verify-ca`: the chain, not the name.
                case .verifyCA: t.certificateVerification = .noHostnameVerification
                default: t.certificateVerification = .fullVerification
                }
                if let rootCertificate {
                    t.trustRoots = .certificates(try readPEM("sslrootcert", rootCertificate) { try NIOSSLCertificate.fromPEMFile($0) })
                }
                if let clientCertificate, let clientKey {
                    try checkKeyMode(clientKey)
                    t.certificateChain = try readPEM("sslcert", clientCertificate) { try NIOSSLCertificate.fromPEMFile($0) }.map { .certificate($0) }
                    t.privateKey = .privateKey(try readPEM("sslkey", clientKey) { try NIOSSLPrivateKey(file: $0, format: .pem) })
                }
                tls = .require(try NIOSSLContext(configuration: t))
            }
            c = .init(host: host ?? "127.0.0.1", port: port, username: user, password: password, database: database, tls: tls)
        }
        c.options.connectTimeout = .seconds(5)
        return c
    }

    /// libpq's rule for a client key: no access for others, nor for the
    /// group unless root owns it (then group read at most), so a key other
    /// users could read is refused rather than used.
    private func checkKeyMode(_ path: String) throws {
        var info = stat()
        guard stat(path, &info) == 0 else { return }  // reading it names the error
        let mode = info.st_mode & 0o777
        let allowed: mode_t = info.st_uid == 0 ? 0o640 : 0o600
        if mode & ~allowed != 0 {
            throw StoreError(.unavailable, "\(self): sslkey \(path): mode \(String(mode, radix: 8)) lets others read the key; chmod it to \(String(allowed, radix: 8)) or less")
        }
    }

    /// What `read` makes of the PEM file at `path`; a failure names the key and the file.
    private func readPEM<T>(_ key: String, _ path: String, _ read: (String) throws -> T) throws -> T {
        do { return try read(path) } catch { throw StoreError(.unavailable, "\(self): \(key) \(path): \(error)") }
    }
}

/// The store's database on a PostgreSQL server (postgres-nio). Several
/// `spookd` may open the same database: it is `shared`, every write
/// transaction holds an advisory lock (one writer at a time across them),
/// and each commit sends a NOTIFY the others LISTEN to.
///
/// The store's calls are synchronous (it runs on the node's loop, like
/// SQLite's); the connection lives on an event loop of its own, and each
/// call waits for its answer. Statements that return no rows are sent
/// without waiting inside a transaction: `commit` waits for all of them, so
/// nothing is acknowledged before the server said COMMIT.
public final class PostgresBackend: SQLBackend, @unchecked Sendable {
    public let url: PostgresURL
    public var location: String { url.description }
    public var shared: Bool { true }

    /// The lock every write transaction holds (`pg_advisory_xact_lock`), for the database.
    static let writerLock: Int64 = 0x5370_6F6F_6B45
    static let channel = "spook_commits"

    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    private let sync: SyncLevel
    private var connection: PostgresConnection?
    private var nextConnectionID = 1
    /// The last failed connection attempt: for `reconnectPause` after it,
    /// calls fail at once with its error instead of each waiting for a
    /// connect timeout on the node loop.
    private var lastFailure: (at: ContinuousClock.Instant, error: StoreError)?
    static let reconnectPause = Duration.seconds(1)
    /// How long a call waits for the server's answer (a connection, a query,
    /// COMMIT). A network that drops packets without a reset would otherwise
    /// hold the node's loop forever; past this the connection counts as
    /// lost: it is closed, the call throws (nothing of a transaction is
    /// acknowledged), and the next call connects again. A COMMIT that timed
    /// out may still have committed: the next transaction reads it back like
    /// another daemon's commit, and the deltas sent again are duplicates.
    public static let answerTimeout = Duration.seconds(10)
    private var inTransaction = false
    private var pending: [EventLoopFuture<PostgresQueryResult>] = []
    private var numbered: [String: (sql: String, parameters: Int)] = [:]
    /// This process's NOTIFY payload: its own commits do not wake it.
    private let instance: String
    private let listener = NIOLockedValueBox<ListenerState>(ListenerState())

    struct ListenerState {
        var handler: (@Sendable () -> Void)?
        var connection: PostgresConnection?
        var stopped = false
    }

    public init(url: PostgresURL, sync: SyncLevel, logger: Logger) throws {
        self.url = url
        self.sync = sync
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var g = SystemRandomNumberGenerator()
        instance = String(UInt64.random(in: 1...UInt64.max, using: &g), radix: 16)
        do { _ = try live() } catch {
            group.shutdownGracefully { _ in }
            throw error
        }
    }

    deinit { close() }

    func failure(_ what: String, _ error: Error) -> StoreError {
        let detail: String
        if let e = error as? StoreError {
            detail = e.message
        } else if let e = error as? PSQLError {
            detail = e.serverInfo?[.message].map { "\($0) (\(e.serverInfo?[.sqlState] ?? "?"))" }
                ?? e.underlying.map { "\(e.code): \($0)" } ?? "\(e.code)"
        } else {
            detail = "\(error)"
        }
        // A failure that left no connection is the server's absence, not the statement's fault.
        let gone = (error as? StoreError)?.code == .unavailable || connection.map(\.isClosed) ?? true
        return StoreError(gone ? .unavailable : .database, "\(url): \(what): \(detail)")
    }

    /// Waits for `future`, at most `answerTimeout`. Past it the connection is
    /// dropped (see `answerTimeout`) and the wait throws.
    private func wait<T: Sendable>(_ future: EventLoopFuture<T>) throws -> T {
        guard let value = try future.block(within: PostgresBackend.answerTimeout) else {
            let seconds = PostgresBackend.answerTimeout.components.seconds
            logger.error("PostgreSQL did not answer: closing the connection; the next call opens another", metadata: [
                "database": "\(url)", "timeout_s": "\(seconds)",
            ])
            if let c = connection { c.close().whenComplete { _ in } }
            connection = nil
            pending = []
            inTransaction = false
            throw StoreError(.unavailable, "no answer from the server within \(seconds) s: the connection is closed and opened again by the next call")
        }
        return value
    }

    /// The connection, opened (again) when there is none: a server restart
    /// costs the calls made while it is down, each of which throws.
    private func live() throws -> PostgresConnection {
        if let c = connection, !c.isClosed { return c }
        guard !listener.withLockedValue({ $0.stopped }) else { throw StoreError(.closed, "\(url): the store is closed") }
        if let last = lastFailure, ContinuousClock.now - last.at < PostgresBackend.reconnectPause { throw last.error }
        connection = nil
        let id = nextConnectionID
        nextConnectionID += 1
        let c: PostgresConnection
        do {
            c = try wait(PostgresConnection.connect(on: group.next(), configuration: try url.configuration(), id: id, logger: logger))
            lastFailure = nil
        } catch {
            let e = failure("cannot connect", error)
            lastFailure = (ContinuousClock.now, e)
            throw e
        }
        // "full" and "extra" wait for the server's WAL flush at COMMIT; "off"
        // and "normal" do not (a crash of the server may lose the last commits).
        let flush = sync == .full || sync == .extra ? "on" : "off"
        do { _ = try wait(c.simpleQuery("SET synchronous_commit = \(flush)")) } catch {
            c.close().whenComplete { _ in }
            throw failure("cannot set synchronous_commit", error)
        }
        connection = c
        if id > 1 { logger.notice("reconnected to PostgreSQL", metadata: ["database": "\(url)"]) }
        return c
    }

    public var schemaSQL: String {
        """
        CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS blocks(id BIGSERIAL PRIMARY KEY, count BIGINT NOT NULL, checksum BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS deltas(
            origin BIGINT NOT NULL, seq BIGINT NOT NULL, block BIGINT NOT NULL,
            body BYTEA NOT NULL, refused TEXT,
            PRIMARY KEY(origin, seq));
        CREATE INDEX IF NOT EXISTS deltas_block ON deltas(block);
        CREATE TABLE IF NOT EXISTS vector(origin BIGINT PRIMARY KEY, seq BIGINT NOT NULL, gen BIGINT NOT NULL DEFAULT 0);
        CREATE INDEX IF NOT EXISTS vector_gen ON vector(gen);
        CREATE TABLE IF NOT EXISTS horizon(origin BIGINT PRIMARY KEY, seq BIGINT NOT NULL, gen BIGINT NOT NULL DEFAULT 0);
        CREATE INDEX IF NOT EXISTS horizon_gen ON horizon(gen);
        CREATE TABLE IF NOT EXISTS peers(peer TEXT NOT NULL, origin BIGINT NOT NULL, seq BIGINT NOT NULL, gen BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY(peer, origin));
        CREATE INDEX IF NOT EXISTS peers_gen ON peers(gen);
        CREATE TABLE IF NOT EXISTS registers(name TEXT PRIMARY KEY, body BYTEA NOT NULL, gen BIGINT NOT NULL DEFAULT 0);
        CREATE INDEX IF NOT EXISTS registers_gen ON registers(gen);
        CREATE TABLE IF NOT EXISTS history(id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, side BIGINT NOT NULL, body BYTEA NOT NULL);
        CREATE INDEX IF NOT EXISTS history_name ON history(name, id);
        CREATE TABLE IF NOT EXISTS orphans(id BIGSERIAL PRIMARY KEY, origin BIGINT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL);
        """
    }

    /// The log stays keyed by (origin, seq) here, with no runs: writing a
    /// commit's runs at once (other daemons read them) cost a fleet's
    /// daemon about a tenth of its rate (docs/benchmarks.md).
    public var logByBlock: Bool { false }

    /// Format 2 changed only SQLite's tables: a format-1 database is read as it is.
    public func migrationSQL(fromFormat: Int64) -> String? { fromFormat == 1 ? "" : nil }

    /// Runs statements separated by ";" (none of ours has one in a literal), one by one.
    public func exec(_ sql: String) throws {
        let c = try live()
        try drain()
        for statement in sql.split(separator: ";") where statement.contains(where: { !$0.isWhitespace }) {
            do { _ = try wait(c.simpleQuery(String(statement))) } catch { throw failure("\"\(statement.prefix(60))\"", error) }
        }
    }

    /// Sends statements one after the other without waiting between them; waits for all.
    private func pipeline(_ c: PostgresConnection, _ statements: [String]) throws {
        let futures = statements.map { c.simpleQuery($0) }
        var first: Error?
        for f in futures {
            do { _ = try wait(f) } catch { first = first ?? error }
        }
        if let first { throw first }
    }

    /// Each statement is a round trip to the server: 1,000 rows (at most
    /// 5,000 parameters of PostgreSQL's 65,535) a statement.
    public var insertRowsMax: Int { 1_000 }

    public func prepare(_ sql: String) throws -> any SQLStatement {
        let n = numbered[sql] ?? PostgresBackend.number(sql)
        numbered[sql] = n
        return PostgresStatement(backend: self, sql: n.sql, parameters: n.parameters)
    }

    /// `?` placeholders (outside quoted literals) become `$1`, `$2`, …
    static func number(_ sql: String) -> (sql: String, parameters: Int) {
        var out = ""
        var n = 0
        var quoted = false
        for ch in sql {
            if ch == "'" { quoted.toggle() }
            if ch == "?" && !quoted {
                n += 1
                out += "$\(n)"
            } else {
                out.append(ch)
            }
        }
        return (out, n)
    }

    /// Runs a statement: a query now (its rows), anything else inside a
    /// transaction without waiting (`commit` collects it).
    func run(_ query: PostgresQuery, rows: Bool) throws -> [PostgresRow] {
        let c = try live()
        let future = c.query(query, logger: logger)
        if !rows && inTransaction {
            pending.append(future)
            return []
        }
        do { return try wait(future).rows } catch { throw failure("\"\(query.sql.prefix(60))\"", error) }
    }

    /// Waits for the statements sent without waiting; throws the first failure.
    private func drain() throws {
        let waiting = pending
        pending = []
        var first: Error?
        for f in waiting {
            do { _ = try wait(f) } catch { first = first ?? error }
        }
        if let first { throw failure("a statement of the transaction failed", first) }
    }

    public func begin() throws {
        let c = try live()
        do { try pipeline(c, ["BEGIN", "SELECT pg_advisory_xact_lock(\(PostgresBackend.writerLock))"]) } catch {
            throw failure("cannot begin a transaction", error)
        }
        inTransaction = true
    }

    public func commit() throws {
        try drain()
        guard let c = connection, !c.isClosed else { throw StoreError(.unavailable, "\(url): the connection closed before COMMIT: nothing of the transaction is acknowledged") }
        do {
            // NOTIFY is delivered to the other daemons only if the transaction commits.
            try pipeline(c, ["NOTIFY \(PostgresBackend.channel), '\(instance)'", "COMMIT"])
        } catch {
            throw failure("COMMIT failed: nothing of the transaction is acknowledged", error)
        }
        inTransaction = false
    }

    public func rollback() {
        _ = try? drain()
        inTransaction = false
        guard let c = connection, !c.isClosed else { return }
        _ = try? wait(c.simpleQuery("ROLLBACK"))
    }

    public func integrityCheck() throws {}

    public func onOthersCommit(_ handler: @escaping @Sendable () -> Void) {
        listener.withLockedValue { $0.handler = handler }
        listen(attempt: 0)
    }

    /// The LISTEN connection, opened again (1 s, 2 s, … 30 s apart) whenever
    /// it closes; each time it is back the handler runs once (commits may
    /// have been missed meanwhile).
    private func listen(attempt: Int) {
        let config: PostgresConnection.Configuration
        do { config = try url.configuration() } catch { return }
        let loop = group.next()
        let instance = self.instance, logger = self.logger, url = self.url
        let box = listener
        PostgresConnection.connect(on: loop, configuration: config, id: 0, logger: logger).whenComplete { [weak self] result in
            guard let self else { return }
            switch result {
            case .success(let c):
                c.addListener(channel: PostgresBackend.channel) { _, note in
                    guard note.payload != instance else { return }
                    box.withLockedValue { $0.handler }?()
                }
                c.simpleQuery("LISTEN \(PostgresBackend.channel)").whenComplete { [weak self] listened in
                    guard let self else { return }
                    if case .failure(let error) = listened {
                        logger.warning("LISTEN failed; trying again", metadata: ["database": "\(url)", "error": "\(error)"])
                        c.close().whenComplete { _ in }
                        self.relisten(attempt: attempt + 1)
                        return
                    }
                    let stopped = box.withLockedValue { state -> Bool in
                        if !state.stopped { state.connection = c }
                        return state.stopped
                    }
                    if stopped {
                        c.close().whenComplete { _ in }
                        return
                    }
                    if attempt > 0 { logger.notice("listening for other daemons' commits again", metadata: ["database": "\(url)"]) }
                    box.withLockedValue { $0.handler }?()
                    c.closeFuture.whenComplete { [weak self] _ in self?.relisten(attempt: 1) }
                }
            case .failure(let error):
                logger.warning("cannot listen for other daemons' commits; trying again", metadata: ["database": "\(url)", "error": "\(error)"])
                self.relisten(attempt: attempt + 1)
            }
        }
    }

    private func relisten(attempt: Int) {
        guard !listener.withLockedValue({ $0.stopped }) else { return }
        let delay = min(30, 1 << min(attempt - 1, 5))
        group.next().scheduleTask(in: .seconds(Int64(delay))) { [weak self] in self?.listen(attempt: attempt) }
    }

    /// Closes both connections and stops the event loop; later calls do nothing.
    public func close() {
        let l = listener.withLockedValue { state -> PostgresConnection?? in
            guard !state.stopped else { return .none }
            state.stopped = true
            state.handler = nil
            defer { state.connection = nil }
            return .some(state.connection)
        }
        guard case .some(let l) = l else { return }
        _ = try? l?.close().block(within: PostgresBackend.answerTimeout)
        if let c = connection { _ = try? c.close().block(within: PostgresBackend.answerTimeout) }
        connection = nil
        // Not syncShutdownGracefully: close() may run on the node's event loop.
        group.shutdownGracefully { _ in }
    }
}

/// A statement for `PostgresBackend`: binds are collected, the query runs at
/// the first `step`, rows are read from its result. Each row's cells are
/// decoded by their column type when `step` reaches it, so a cell that does
/// not decode is an error there rather than a zero read later.
final class PostgresStatement: SQLStatement {
    enum Bind { case int(Int64), text(String), bytes([UInt8]) }
    enum Cell { case null, int(Int64), text(String), bytes([UInt8]) }

    let backend: PostgresBackend
    let sql: String
    let parameters: Int
    let returnsRows: Bool
    private var binds: [Int32: Bind] = [:]
    private var rows: [PostgresRow] = []
    private var cursor = -1
    private var current: [Cell] = []

    init(backend: PostgresBackend, sql: String, parameters: Int) {
        self.backend = backend
        self.sql = sql
        self.parameters = parameters
        let head = sql.drop { $0 == " " || $0 == "\n" }.prefix(6).uppercased()
        returnsRows = head == "SELECT" || sql.contains("RETURNING")
    }

    func reset() {
        binds = [:]
        rows = []
        cursor = -1
        current = []
    }

    func bind(_ index: Int32, _ value: Int64) { binds[index] = .int(value) }
    func bind(_ index: Int32, _ value: String) { binds[index] = .text(value) }
    func bind(_ index: Int32, _ value: [UInt8]) { binds[index] = .bytes(value) }

    @discardableResult
    func step() throws -> Bool {
        if cursor < 0 {
            var b = PostgresBindings(capacity: parameters)
            for i in 1...max(1, parameters) where i <= parameters {
                switch binds[Int32(i)] {
                case .int(let v)?: b.append(v)
                case .text(let v)?: b.append(v)
                case .bytes(let v)?: b.append(ByteBuffer(bytes: v))
                case nil: b.appendNull()
                }
            }
            rows = try backend.run(PostgresQuery(unsafeSQL: sql, binds: b), rows: returnsRows)
            cursor = 0
        } else {
            cursor += 1
        }
        guard cursor < rows.count else {
            current = []
            return false
        }
        current = try rows[cursor].map { cell -> Cell in
            guard let bytes = cell.bytes else { return .null }
            do {
                switch cell.dataType {
                case .int2, .int4, .int8: return .int(try cell.decode(Int64.self))
                case .text, .varchar, .name: return .text(try cell.decode(String.self))
                case .bytea: return .bytes(Array(bytes.readableBytesView))
                default: throw StoreError(.database, "column \(cell.columnName) has type \(cell.dataType), which the store never writes")
                }
            } catch let e as StoreError {
                throw e
            } catch {
                throw StoreError(.database, "\(backend.url): column \(cell.columnName) of \"\(sql.prefix(60))\" does not decode: \(error)")
            }
        }
        return true
    }

    /// Columns read with the accessor of their type (the store's own tables); NULL reads as SQLite's does.
    func int64(_ column: Int32) -> Int64 {
        switch current[Int(column)] {
        case .int(let v): return v
        case .null: return 0
        case let other: preconditionFailure("column \(column) of \"\(sql.prefix(60))\" is \(other), read as an integer")
        }
    }
    func text(_ column: Int32) -> String {
        switch current[Int(column)] {
        case .text(let v): return v
        case .null: return ""
        case let other: preconditionFailure("column \(column) of \"\(sql.prefix(60))\" is \(other), read as text")
        }
    }
    func blob(_ column: Int32) -> [UInt8] {
        switch current[Int(column)] {
        case .bytes(let v): return v
        case .null: return []
        case let other: preconditionFailure("column \(column) of \"\(sql.prefix(60))\" is \(other), read as bytes")
        }
    }
    func isNull(_ column: Int32) -> Bool { if case .null = current[Int(column)] { true } else { false } }
}

extension SQLStore {
    /// The store `data` names: a PostgreSQL URL (`postgres://…`), else an SQLite file path.
    public static func open(data: String, options: StoreOptions, logger: Logger) throws -> SQLStore {
        guard PostgresURL.isPostgres(data) else { return try SQLStore(path: data, options: options, logger: logger) }
        let backend = try PostgresBackend(url: try PostgresURL(data), sync: options.sync, logger: logger)
        return try SQLStore(backend: backend, options: options, logger: logger)
    }
}

extension EventLoopFuture {
    /// Waits for the result on the calling thread, at most `timeout`: nil
    /// when the timeout passed first (the future completes later, unheeded).
    /// Unlike `wait()`, allowed on another group's event loop: the store is
    /// called on the node's loop, which does nothing else while a commit is
    /// in progress (as with SQLite), and the connection runs on the
    /// backend's own loop, so this cannot deadlock.
    func block(within timeout: Duration) throws -> Value? where Value: Sendable {
        let done = ConditionLock(value: 0)
        let result = NIOLockedValueBox<Result<Value, Error>?>(nil)
        whenComplete { r in
            done.lock()
            result.withLockedValue { $0 = r }
            done.unlock(withValue: 1)
        }
        let c = timeout.components
        guard done.lock(whenValue: 1, timeoutSeconds: Double(c.seconds) + Double(c.attoseconds) / 1e18) else { return nil }
        done.unlock()
        return try result.withLockedValue { $0! }.get()
    }
}
