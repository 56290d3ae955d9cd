#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SpookCore

/// A node's Ed25519 key pair, and its origin: the first 8 bytes of SHA-256
/// of the public key, read big-endian (SUBSTRATE.md §2).
public struct Identity: Sendable {
    public let privateKey: Ed25519.PrivateKey

    public init(privateKey: Ed25519.PrivateKey = .init()) {
        self.privateKey = privateKey
    }

    public var publicKey: [UInt8] { privateKey.publicKey }
    public var origin: Origin { Identity.origin(of: publicKey) }

    /// The origin of incarnation `epoch` (SUBSTRATE.md §6): epoch 0 is the
    /// key's own origin; a later one hashes the key with the epoch, so a node
    /// whose store went back in time writes under an origin nobody holds.
    public func origin(epoch: UInt32) -> Origin { Identity.origin(of: publicKey, epoch: epoch) }

    public static func origin(of publicKey: [UInt8], epoch: UInt32 = 0) -> Origin {
        var input = publicKey
        if epoch != 0 {
            input += Array("spook epoch".utf8)
            input += [UInt8(epoch >> 24), UInt8(epoch >> 16 & 0xff), UInt8(epoch >> 8 & 0xff), UInt8(epoch & 0xff)]
        }
        let digest = SHA256.hash(input)
        return Origin(digest.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
    }

    public func sign(_ message: [UInt8]) throws -> [UInt8] {
        privateKey.sign(message)
    }

    public static func verify(signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
        Ed25519.verify(signature: signature, of: message, publicKey: publicKey)
    }

    // MARK: key files
    //
    // One line: "spook-ed25519-private " + 64 hex digits, then a newline.
    // Written with mode 0600; a file others can read is refused, as ssh does.

    static let filePrefix = "spook-ed25519-private "

    /// Loads the key at `path`, or creates it (mode 0600) if there is none.
    public static func loadOrCreate(path: String) throws -> (identity: Identity, created: Bool) {
        if access(path, F_OK) == 0 { return (try load(path: path), false) }
        let identity = Identity()
        try identity.save(path: path)
        return (identity, true)
    }

    public static func load(path: String) throws -> Identity {
        var info = stat()
        guard stat(path, &info) == 0 else { throw IdentityError("\(path): cannot read the key: \(String(cString: strerror(errno)))") }
        guard info.st_mode & 0o077 == 0 else {
            throw IdentityError("\(path): the key file is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))); run chmod 600 \(path)")
        }
        guard let file = fopen(path, "r") else { throw IdentityError("\(path): cannot open the key: \(String(cString: strerror(errno)))") }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 256)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { throw IdentityError("\(path): the key file is empty") }
        let line = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            .trimmingSuffix { $0 == "\n" || $0 == "\r" || $0 == "\r\n" }
        guard line.hasPrefix(filePrefix), let raw = [UInt8](hex: String(line.dropFirst(filePrefix.count))), raw.count == 32 else {
            throw IdentityError("\(path): not a Spook key file (expected \"\(filePrefix)\" and 64 hex digits)")
        }
        do {
            return Identity(privateKey: try .init(seed: raw))
        } catch {
            throw IdentityError("\(path): the key cannot be used: \(error)")
        }
    }

    /// Writes the key with mode 0600, refusing to overwrite an existing file.
    public func save(path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw IdentityError("\(path): cannot create the key file: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let text = Identity.filePrefix + privateKey.seed.hex + "\n"
        let written = text.withCString { write(fd, $0, strlen($0)) }
        guard written == text.utf8.count, fsync(fd) == 0 else {
            throw IdentityError("\(path): cannot write the key file: \(String(cString: strerror(errno)))")
        }
    }
}

public struct IdentityError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension String {
    func trimmingSuffix(while predicate: (Character) -> Bool) -> String {
        var s = self
        while let last = s.last, predicate(last) { s.removeLast() }
        return s
    }
}
