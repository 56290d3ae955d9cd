import SpookCore

/// `[node] data = "postgres://…"`: where the database is and who logs in.
///
///     postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE[&sslrootcert=PATH][&sslcert=PATH&sslkey=PATH]]
///     postgres://USER@/DATABASE?host=/run/postgresql[&port=5432]   (a Unix socket)
///
/// `sslmode` means what it means to libpq: `disable` (the default) sends
/// everything in clear; `require` encrypts but trusts any certificate the
/// server shows (it stops eavesdropping, not an impostor); `verify-ca`
/// encrypts and checks that the certificate chains to the system's CAs, or
/// to the CA file `sslrootcert` names; `verify-full` checks that, and its
/// name against HOST. `sslcert` and `sslkey` (together, with any mode but
/// `disable`) are a client certificate and its key, for a server that asks
/// for one (`cert` in its pg_hba.conf).
public struct PostgresURL: Sendable, Hashable, CustomStringConvertible {
    public enum TLSMode: String, Sendable, Hashable {
        case disable
        case require
        case verifyCA = "verify-ca"
        case verifyFull = "verify-full"
    }
    public var user: String
    public var password: String?
    public var host: String?
    public var port = 5432
    /// The directory of the server's Unix socket (`host=` in the query).
    public var socketDirectory: String?
    public var database: String
    public var tls = TLSMode.disable
    /// `sslrootcert=`: the CA certificate(s) (PEM) `verify-ca` and `verify-full` check the server against.
    public var rootCertificate: String?
    /// `sslcert=` and `sslkey=`: the client's certificate chain and private key (PEM).
    public var clientCertificate: String?
    public var clientKey: String?

    /// True for a string that names PostgreSQL rather than an SQLite path.
    public static func isPostgres(_ text: String) -> Bool {
        text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }

    public init(_ text: String) throws {
        func bad(_ why: String) -> CoreError { CoreError(.malformed, "\"\(PostgresURL.redacted(text))\": \(why); expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE or postgres://USER@/DATABASE?host=/socket/dir") }
        guard PostgresURL.isPostgres(text) else { throw bad("not a postgres:// URL") }
        var rest = Substring(text.hasPrefix("postgres://") ? text.dropFirst("postgres://".count) : text.dropFirst("postgresql://".count))
        var query: [(String, String)] = []
        if let q = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: q)...].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2 else { throw bad("query part \"\(pair)\" is not key=value") }
                query.append((kv[0], kv[1]))
            }
            rest = rest[..<q]
        }
        guard let at = rest.lastIndex(of: "@") else { throw bad("no user (USER@…)") }
        let credentials = rest[..<at], location = rest[rest.index(after: at)...]
        if let colon = credentials.firstIndex(of: ":") {
            user = String(credentials[..<colon])
            password = String(credentials[credentials.index(after: colon)...])
        } else {
            user = String(credentials)
        }
        guard !user.isEmpty else { throw bad("the user is empty") }
        guard let slash = location.firstIndex(of: "/") else { throw bad("no database (…/DATABASE)") }
        database = String(location[location.index(after: slash)...])
        guard !database.isEmpty, !database.contains("/") else { throw bad("the database name is empty or has a \"/\"") }
        let hostPort = location[..<slash]
        if !hostPort.isEmpty {
            if let colon = hostPort.lastIndex(of: ":"), !hostPort.hasSuffix("]") {
                guard let p = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(p) else { throw bad("the port is not 1…65535") }
                port = p
                host = String(hostPort[..<colon])
            } else {
                host = String(hostPort)
            }
            host = host.map { $0.hasPrefix("[") && $0.hasSuffix("]") ? String($0.dropFirst().dropLast()) : $0 }
        }
        for (key, value) in query {
            switch key {
            case "host":
                guard value.hasPrefix("/") else { throw bad("host= must be the absolute path of the server's socket directory") }
                socketDirectory = value
            case "port":
                guard let p = Int(value), (1...65535).contains(p) else { throw bad("port= is not 1…65535") }
                port = p
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else { throw bad("sslmode must be disable, require, verify-ca or verify-full") }
                tls = mode
            case "sslrootcert":
                guard value.hasPrefix("/") else { throw bad("sslrootcert= must be the absolute path of a CA certificate file (PEM)") }
                rootCertificate = value
            case "sslcert":
                guard value.hasPrefix("/") else { throw bad("sslcert= must be the absolute path of a client certificate file (PEM)") }
                clientCertificate = value
            case "sslkey":
                guard value.hasPrefix("/") else { throw bad("sslkey= must be the absolute path of the client certificate's private key (PEM)") }
                clientKey = value
            default:
                throw bad("unknown query key \"\(key)\" (known: host, port, sslmode, sslrootcert, sslcert, sslkey)")
            }
        }
        if rootCertificate != nil && tls != .verifyCA && tls != .verifyFull { throw bad("sslrootcert= is only used with sslmode=verify-ca or verify-full") }
        if (clientCertificate == nil) != (clientKey == nil) { throw bad("sslcert= and sslkey= go together") }
        if clientCertificate != nil && tls == .disable { throw bad("sslcert= and sslkey= need sslmode=require, verify-ca or verify-full") }
        if socketDirectory != nil && tls != .disable { throw bad("sslmode= is for TCP; a Unix socket is not encrypted") }
        guard host != nil || socketDirectory != nil else { throw bad("neither a host nor host=/socket/dir") }
        if socketDirectory != nil && host != nil { throw bad("both a host and host=/socket/dir") }
    }

    /// The URL with its password replaced, for logs and messages.
    public var description: String {
        let who = password == nil ? user : "\(user):***"
        if let dir = socketDirectory { return "postgres://\(who)@/\(database)?host=\(dir)&port=\(port)" }
        var query = tls == .disable ? "" : "?sslmode=\(tls.rawValue)"
        if let rootCertificate { query += "&sslrootcert=\(rootCertificate)" }
        if let clientCertificate, let clientKey { query += "&sslcert=\(clientCertificate)&sslkey=\(clientKey)" }
        return "postgres://\(who)@\(host ?? ""):\(port)/\(database)\(query)"
    }

    /// `text` with the password of a postgres:// URL replaced (any other text as it is).
    public static func redacted(_ text: String) -> String {
        guard isPostgres(text), let at = text.lastIndex(of: "@") else { return text }
        let start = text.index(text.startIndex, offsetBy: text.hasPrefix("postgres://") ? 11 : 13)
        guard start <= at, let colon = text[start..<at].firstIndex(of: ":") else { return text }
        return String(text[..<colon]) + ":***" + String(text[at...])
    }
}
