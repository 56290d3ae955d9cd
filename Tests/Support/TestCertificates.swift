import Glibc

/// Throwaway X.509 material for TLS tests, made with openssl(1): a
/// self-signed CA, and server (`DNS:localhost`) and client certificates it signs.
/// P-256 keys, valid two days; openssl's output goes to `<dir>/openssl.log`.
public enum TestCertificates {
    /// `<dir>/<name>.key` and `<dir>/<name>.pem`.
    public static func ca(in dir: String, name: String = "ca", commonName: String) throws {
        try openssl(["req", "-x509"] + curve + ["-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).pem", "-days", "2", "-subj", "/CN=\(commonName)"], in: dir)
    }

    /// `<dir>/<name>.key` and `<dir>/<name>.pem` for `localhost`, signed by the CA `<dir>/<ca>.pem`.
    public static func server(in dir: String, ca: String = "ca", name: String = "server") throws {
        try signed(in: dir, ca: ca, name: name, commonName: "localhost", extensions: "subjectAltName=DNS:localhost")
    }

    /// `<dir>/<name>.key` and `<dir>/<name>.pem`, a client certificate for
    /// `commonName` (a PostgreSQL user, for `cert` authentication), signed by the CA `<dir>/<ca>.pem`.
    public static func client(in dir: String, ca: String = "ca", name: String = "client", commonName: String) throws {
        try signed(in: dir, ca: ca, name: name, commonName: commonName, extensions: "extendedKeyUsage=clientAuth")
    }

    static func signed(in dir: String, ca: String, name: String, commonName: String, extensions: String) throws {
        try openssl(["req"] + curve + ["-keyout", "\(dir)/\(name).key", "-out", "\(dir)/\(name).csr", "-subj", "/CN=\(commonName)"], in: dir)
        let ext = "\(dir)/\(name).ext"
        writeFile(ext, "\(extensions)\n")
        try openssl(["x509", "-req", "-in", "\(dir)/\(name).csr", "-CA", "\(dir)/\(ca).pem", "-CAkey", "\(dir)/\(ca).key", "-CAcreateserial",
                     "-out", "\(dir)/\(name).pem", "-days", "2", "-extfile", ext], in: dir)
    }

    /// Writes `text` to `path` (created or emptied first), readable by everyone.
    static func writeFile(_ path: String, _ text: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    static let curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]

    static func openssl(_ arguments: [String], in dir: String) throws {
        let p = try ChildProcess("/usr/bin/openssl", arguments, stderrPath: "\(dir)/openssl.log")
        guard p.wait() == 0 else { throw ChildProcess.Failure("openssl \(arguments.first ?? "") failed: see \(dir)/openssl.log") }
    }
}
