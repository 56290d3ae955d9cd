#if canImport(Glibc)
import Glibc
#endif
import Logging
import SpookCore
import SpookPostgres
import SpookStore
import SpookTestSupport
import Testing

/// `sslmode` means what it means to libpq, against the test server (TLS on,
/// its certificate for `localhost`, signed by a throwaway CA no system trusts).
@Suite struct PostgresTLSTests {
    static func open(_ url: String) throws -> PostgresBackend {
        try PostgresBackend(url: try PostgresURL(url), sync: .full, logger: Logger(label: "test.tls"))
    }

    /// Whether the backend's own session is encrypted, as the server sees it.
    static func encrypted(_ backend: PostgresBackend) throws -> Bool {
        defer { backend.close() }
        let s = try backend.prepare("SELECT ssl::int FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        guard try s.step() else { return false }
        return s.int64(0) == 1
    }

    /// A new database on the test server: its name.
    static func database(_ pg: PostgresServer, _ hint: String) throws -> String {
        PostgresServer.database(of: try pg.createDatabase(hint))
    }

    /// The message of the error `body` throws (a StoreError), or nil.
    static func refusal(_ body: () throws -> Void) -> String? {
        do { try body() } catch let e as StoreError { return e.description } catch { return "not a StoreError: \(error)" }
        return nil
    }

    @Test func sslModesDoWhatTheySay() throws {
        let pg = try PostgresServer.shared()
        let database = try Self.database(pg, "tls")
        let byAddress = "postgres://spook@127.0.0.1:\(pg.port)/\(database)"
        let byName = "postgres://spook@localhost:\(pg.port)/\(database)"

        // disable (and no sslmode): in clear.
        #expect(try !Self.encrypted(Self.open(byAddress)))
        #expect(try !Self.encrypted(Self.open(byAddress + "?sslmode=disable")))
        // require: encrypted, whatever certificate the server shows.
        #expect(try Self.encrypted(Self.open(byAddress + "?sslmode=require")))
        // verify-full with the CA that signed it, under the name it was issued for: encrypted.
        #expect(try Self.encrypted(Self.open(byName + "?sslmode=verify-full&sslrootcert=\(pg.caFile)")))

        // verify-full against the system's CAs: refused, saying why.
        let untrusted = Self.refusal { _ = try Self.open(byName + "?sslmode=verify-full") }
        #expect(untrusted?.contains("database-unavailable") == true && untrusted?.contains("CERTIFICATE_VERIFY_FAILED") == true, "\(untrusted ?? "connected")")
        // verify-full with the right CA but another name (the address): refused.
        let wrongName = Self.refusal { _ = try Self.open(byAddress + "?sslmode=verify-full&sslrootcert=\(pg.caFile)") }
        #expect(wrongName?.contains("database-unavailable") == true && wrongName?.contains("failedToValidateHostname") == true, "\(wrongName ?? "connected")")
        // A CA file that is not there: refused, naming it.
        let missing = Self.refusal { _ = try Self.open(byName + "?sslmode=verify-full&sslrootcert=\(pg.dir)/nope.pem") }
        #expect(missing?.contains("sslrootcert \(pg.dir)/nope.pem") == true, "\(missing ?? "connected")")
    }

    /// `verify-ca` checks the chain, not the name. A server that asks for a
    /// client certificate (pg_hba's `cert`, for `PostgresServer.certificateUser`)
    /// takes the one `sslcert` and `sslkey` name, and a store works through it.
    @Test func verifyCAAndAClientCertificate() throws {
        let pg = try PostgresServer.shared()
        let database = try Self.database(pg, "tlsclient")
        let byAddress = "postgres://spook@127.0.0.1:\(pg.port)/\(database)"

        // verify-ca with the CA that signed it, by address (not the name it was issued for): encrypted.
        #expect(try Self.encrypted(Self.open(byAddress + "?sslmode=verify-ca&sslrootcert=\(pg.caFile)")))
        // verify-ca against the system's CAs: refused, saying why.
        let untrusted = Self.refusal { _ = try Self.open(byAddress + "?sslmode=verify-ca") }
        #expect(untrusted?.contains("CERTIFICATE_VERIFY_FAILED") == true, "\(untrusted ?? "connected")")

        let user = PostgresServer.certificateUser
        #expect(try pg.psql(database, "ALTER DATABASE \(database) OWNER TO \(user)") != nil)
        let verified = "postgres://\(user)@localhost:\(pg.port)/\(database)?sslmode=verify-full&sslrootcert=\(pg.caFile)"
        let client = "&sslcert=\(pg.clientCertificate)&sslkey=\(pg.clientKey)"
        // The certificate's user without a certificate: refused by the server.
        let without = Self.refusal { _ = try Self.open(verified) }
        #expect(without?.contains("connection requires a valid client certificate") == true, "\(without ?? "connected")")
        // A key file that is not there: refused, naming it.
        let missing = Self.refusal { _ = try Self.open(verified + "&sslcert=\(pg.clientCertificate)&sslkey=\(pg.dir)/nope.key") }
        #expect(missing?.contains("sslkey \(pg.dir)/nope.key") == true, "\(missing ?? "connected")")
        // A key others may read: refused, saying so (libpq's rule).
        let readable = "\(pg.dir)/readable.key"
        #expect(try ChildProcess("/bin/cp", [pg.clientKey, readable]).wait() == 0 && chmod(readable, 0o644) == 0)
        let loose = Self.refusal { _ = try Self.open(verified + "&sslcert=\(pg.clientCertificate)&sslkey=\(readable)") }
        #expect(loose?.contains("sslkey \(readable): mode 644 lets others read the key") == true, "\(loose ?? "connected")")
        // With its certificate: in, encrypted, and a store keeps a write there.
        #expect(try Self.encrypted(Self.open(verified + client)))
        let store = try SQLStore(backend: Self.open(verified + client), options: StoreOptions(sync: .full), logger: Logger(label: "test.tls"))
        defer { store.close() }
        let group = try QGroupName("plant.tls/a")
        #expect(try store.commit([delta(1, 1, 1_700_000_000_000, group, [Write("r", .set, .int(7))])]).held.count == 1)
        #expect(try pg.psql(database, "SELECT count(*) FROM deltas") == "1")
    }
}
