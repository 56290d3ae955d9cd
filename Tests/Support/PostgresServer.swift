#if canImport(Glibc)
import Glibc
#endif

/// A private PostgreSQL 15 server for the tests (Debian's `postgresql`,
/// which scripts/install-deps installs): `initdb` in a temporary folder,
/// listening on a Unix socket in that folder and on a loopback port, one per
/// test process, stopped when the process exits (or dies: the server gets
/// SIGINT with its parent). Each test takes a database of its own.
public final class PostgresServer: @unchecked Sendable {
    public static let binaries = "/usr/lib/postgresql/15/bin"
    public let dir: String
    public let port: Int
    /// The CA that signed the server's certificate (for the name `localhost`
    /// only): the server takes TLS on its port, for `sslmode` tests.
    public var caFile: String { "\(dir)/ca.pem" }
    /// The user who must log in over TLS with a client certificate (pg_hba's
    /// `cert`): `clientCertificate` and `clientKey`, signed by the same CA.
    public static let certificateUser = "spook_cert"
    public var clientCertificate: String { "\(dir)/client.pem" }
    public var clientKey: String { "\(dir)/client.key" }
    private var process: ChildProcess?
    private var databases = 0
    private let lock = Lock()

    /// The server of this test process, started at the first call.
    public static func shared() throws -> PostgresServer {
        try startLock.withLock {
            if let s = current { return s }
            let s = try PostgresServer()
            current = s
            atexit { PostgresServer.current?.stop() }
            return s
        }
    }

    nonisolated(unsafe) private static var current: PostgresServer?
    private static let startLock = Lock()

    /// A server of its own (for a test that stops and restarts it); most tests use `shared()`.
    public init() throws {
        // As root, the server runs as Debian's `postgres` user (initdb refuses root).
        let asRoot = geteuid() == 0
        var template = Array("/tmp/spook-pg-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw ChildProcess.Failure("mkdtemp: \(errno)") }
        dir = String(cString: made)
        if asRoot {
            guard let pw = getpwnam("postgres") else { throw ChildProcess.Failure("no \"postgres\" user: install Debian's postgresql (scripts/install-deps)") }
            chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid)
        }
        chmod(dir, 0o755)
        let initdb = try PostgresServer.run("initdb", ["-D", "\(dir)/data", "-U", "spook", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"], stderr: "\(dir)/initdb.log")
        guard initdb.wait() == 0 else { throw ChildProcess.Failure("initdb failed: see \(dir)/initdb.log") }
        port = try PostgresServer.freePort()
        try makeCertificates(owner: asRoot ? getpwnam("postgres")?.pointee : nil)
        writeHostRules()
        try start()
        guard try psql("postgres", "CREATE ROLE \(PostgresServer.certificateUser) LOGIN") != nil else {
            throw ChildProcess.Failure("CREATE ROLE \(PostgresServer.certificateUser) failed: see \(dir)/psql.log")
        }
    }

    /// The server's pg_hba.conf (`hba_file`): `certificateUser` logs in over
    /// TLS on the loopback port with a client certificate the CA signed, or
    /// not at all; everyone else without a password, as initdb's `-A trust`.
    private func writeHostRules() {
        let user = PostgresServer.certificateUser
        TestCertificates.writeFile("\(dir)/hba.conf", """
            hostssl all \(user) 127.0.0.1/32 cert
            host all \(user) 127.0.0.1/32 reject
            local all all trust
            host all all 127.0.0.1/32 trust

            """)
    }

    /// A throwaway CA and the server's certificate and key (the key readable
    /// by the server's user only, as PostgreSQL insists).
    private func makeCertificates(owner: passwd?) throws {
        try TestCertificates.ca(in: dir, commonName: "spook test database CA")
        try TestCertificates.server(in: dir)
        try TestCertificates.client(in: dir, commonName: PostgresServer.certificateUser)
        for file in ["server.key", "server.pem", "ca.pem"] {
            if let owner { chown("\(dir)/\(file)", owner.pw_uid, owner.pw_gid) }
            chmod("\(dir)/\(file)", file == "server.key" ? 0o600 : 0o644)
        }
    }

    /// Starts the server (again) on its folder and port; returns once it accepts connections.
    public func start() throws {
        let (dir, port) = (self.dir, self.port)
        // fsync off: the tests kill daemons, not this server; the daemons still wait for each COMMIT.
        // Started from a thread that lives as long as the process: the server's
        // parent-death signal follows the thread that spawned it.
        process = try PostgresServer.onLastingThread { try PostgresServer.run("postgres", ["-D", "\(dir)/data", "-k", dir, "-p", "\(port)", "-c", "listen_addresses=127.0.0.1",
                                       "-c", "fsync=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB",
                                       "-c", "ssl=on", "-c", "ssl_cert_file=\(dir)/server.pem", "-c", "ssl_key_file=\(dir)/server.key",
                                       "-c", "ssl_ca_file=\(dir)/ca.pem", "-c", "hba_file=\(dir)/hba.conf"], stderr: "\(dir)/server.log") }
        try waitUntil("PostgreSQL to accept connections (log: \(dir)/server.log)", seconds: 30, everyMs: 50) {
            let check = try ChildProcess("/usr/bin/pg_isready", ["-q", "-h", dir, "-p", "\(port)", "-U", "spook", "-d", "postgres"])
            return check.wait() == 0
        }
    }

    /// Stops the server (a fast shutdown: sessions are ended), keeping its data.
    public func halt() {
        process?.signal(SIGINT)
        _ = process?.wait()
        process = nil
    }

    static func run(_ binary: String, _ arguments: [String], stderr: String) throws -> ChildProcess {
        let path = "\(PostgresServer.binaries)/\(binary)"
        guard access(path, X_OK) == 0 else { throw ChildProcess.Failure("\(path) is missing: install Debian's postgresql (scripts/install-deps)") }
        if geteuid() == 0 {
            return try ChildProcess("/usr/bin/setpriv", ["--reuid=postgres", "--regid=postgres", "--init-groups", "--pdeathsig=SIGINT", "--", path] + arguments,
                                    stderrPath: stderr)
        }
        return try ChildProcess(path, arguments, stderrPath: stderr)
    }

    /// A new, empty database; its URL over the Unix socket.
    public func createDatabase(_ hint: String = "t") throws -> String {
        let name = lock.withLock { () -> String in
            databases += 1
            return "\(hint.lowercased().filter { $0.isLetter || $0.isNumber }.prefix(40))_\(databases)"
        }
        let psql = try ChildProcess("/usr/bin/psql", ["-q", "-h", dir, "-p", "\(port)", "-U", "spook", "-d", "postgres", "-c", "CREATE DATABASE \(name)"],
                                    stderrPath: "\(dir)/psql.log")
        guard psql.wait() == 0 else { throw ChildProcess.Failure("CREATE DATABASE \(name) failed: see \(dir)/psql.log") }
        return url(name)
    }

    public func url(_ database: String) -> String { "postgres://spook@/\(database)?host=\(dir)&port=\(port)" }

    /// The database a `postgres://` URL names (what `psql` takes).
    public static func database(of url: String) -> String {
        String(url.split(separator: "/")[2].prefix { $0 != "?" })
    }

    /// Runs SQL with psql; its output, or nil when psql failed.
    public func psql(_ database: String, _ sql: String) throws -> String? {
        let p = try ChildProcess("/usr/bin/psql", ["-q", "-t", "-A", "-h", dir, "-p", "\(port)", "-U", "spook", "-d", database, "-c", sql], stderrPath: "\(dir)/psql.log")
        var lines: [String] = []
        while let line = try p.readLine(timeoutMs: 30_000) { lines.append(line) }
        return p.wait() == 0 ? lines.joined(separator: "\n") : nil
    }

    /// Stops the server and removes its folder.
    public func stop() {
        halt()
        // SPOOK_KEEP_POSTGRES=1 keeps the folder (and server.log) for a post-mortem.
        guard getenv("SPOOK_KEEP_POSTGRES") == nil else { return }
        if let rm = try? ChildProcess("/bin/rm", ["-rf", dir]) { _ = rm.wait() }
    }

    /// Runs `body` on a new thread that then sleeps until the process ends; returns what it returned.
    static func onLastingThread(_ body: @escaping () throws -> ChildProcess) throws -> ChildProcess {
        let box = LastingThread(body)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let box = Unmanaged<LastingThread>.fromOpaque(raw!).takeUnretainedValue()
            let result = Result { try box.body() }
            pthread_mutex_lock(&box.mutex)
            box.result = result
            pthread_cond_signal(&box.cond)
            pthread_mutex_unlock(&box.mutex)
            while true { pause() }
        }, Unmanaged.passRetained(box).toOpaque())
        guard rc == 0 else { throw ChildProcess.Failure("pthread_create: \(rc)") }
        pthread_mutex_lock(&box.mutex)
        while box.result == nil { pthread_cond_wait(&box.cond, &box.mutex) }
        pthread_mutex_unlock(&box.mutex)
        return try box.result!.get()
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else { throw ChildProcess.Failure("no free port: \(errno)") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

private final class LastingThread: @unchecked Sendable {
    let body: () throws -> ChildProcess
    var result: Result<ChildProcess, Error>?
    var mutex = pthread_mutex_t(), cond = pthread_cond_t()
    init(_ body: @escaping () throws -> ChildProcess) {
        self.body = body
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }
}

/// A mutex for the few shared counters of the test helpers.
final class Lock: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
