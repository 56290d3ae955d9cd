import CNIOBoringSSL

/// Ed25519 and SHA-256 from the BoringSSL that swift-nio-ssl already links
/// for TLS. One crypto library in the agent rather than two: swift-crypto
/// brought a second BoringSSL and FoundationEssentials for three calls
/// (docs/benchmarks.md, footprint).
public enum Ed25519 {
    /// A private key's 32-byte seed (what a key file holds), and the public key derived from it.
    public struct PrivateKey: Sendable {
        public let seed: [UInt8]
        public let publicKey: [UInt8]
        /// BoringSSL's 64-byte signing form: seed ‖ public key.
        let expanded: [UInt8]

        /// A key from 32 bytes of the kernel's random number generator.
        public init() {
            var seed = [UInt8](repeating: 0, count: 32)
            let ok = seed.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, 32) }
            precondition(ok == 1, "the system's random number generator failed")
            try! self.init(seed: seed)
        }

        public init(seed: [UInt8]) throws {
            guard seed.count == 32 else { throw IdentityError("an Ed25519 private key is 32 bytes, not \(seed.count)") }
            var publicKey = [UInt8](repeating: 0, count: 32)
            var expanded = [UInt8](repeating: 0, count: 64)
            ED25519_keypair_from_seed(&publicKey, &expanded, seed)
            self.seed = seed
            self.publicKey = publicKey
            self.expanded = expanded
        }

        public func sign(_ message: [UInt8]) -> [UInt8] {
            var signature = [UInt8](repeating: 0, count: 64)
            let ok = ED25519_sign(&signature, message, message.count, expanded)
            precondition(ok == 1, "Ed25519 signing failed")
            return signature
        }
    }

    /// Whether `signature` is `publicKey`'s over `message`; false for keys or signatures of the wrong size.
    public static func verify(signature: [UInt8], of message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard signature.count == 64, publicKey.count == 32 else { return false }
        return ED25519_verify(message, message.count, signature, publicKey) == 1
    }
}

public enum SHA256 {
    public static func hash(_ data: [UInt8]) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: 32)
        _ = CNIOBoringSSL.SHA256(data, data.count, &digest)
        return digest
    }
}
