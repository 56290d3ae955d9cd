#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookTestSupport
import SpookWire
import Testing

@Suite struct IdentityTests {
    @Test func originIsTheFirstEightBytesOfSHA256OfThePublicKey() throws {
        // SHA-256 of 32 zero bytes is 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925.
        #expect(Identity.origin(of: Array(repeating: 0, count: 32)) == Origin(0x6668_7AAD_F862_BD77))
        let id = Identity()
        #expect(id.origin == Identity.origin(of: id.publicKey))
    }

    /// RFC 8032 §7.1, TEST 1 and TEST 2: the key derived from a seed, and its signatures, byte for byte.
    @Test func ed25519MatchesRFC8032() throws {
        let key1 = try Ed25519.PrivateKey(seed: [UInt8](hex: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")!)
        #expect(key1.publicKey.hex == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let sig1 = key1.sign([])
        #expect(sig1.hex == "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")
        let key2 = try Ed25519.PrivateKey(seed: [UInt8](hex: "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")!)
        #expect(key2.publicKey.hex == "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
        #expect(key2.sign([0x72]).hex == "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
        #expect(Ed25519.verify(signature: sig1, of: [], publicKey: key1.publicKey))
        #expect(!Ed25519.verify(signature: sig1, of: [0], publicKey: key1.publicKey))
        #expect(!Ed25519.verify(signature: sig1, of: [], publicKey: key2.publicKey))
        #expect(!Ed25519.verify(signature: Array(sig1.dropLast()), of: [], publicKey: key1.publicKey))
        #expect(throws: IdentityError.self) { try Ed25519.PrivateKey(seed: [1, 2, 3]) }
        // SHA-256 of "abc" (FIPS 180-2).
        #expect(SHA256.hash(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func keyFilesAreCreatedPrivateAndReadBack() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("node.key")
        let (created, isNew) = try Identity.loadOrCreate(path: path)
        #expect(isNew)
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        let (loaded, again) = try Identity.loadOrCreate(path: path)
        #expect(!again)
        #expect(loaded.publicKey == created.publicKey)
        let signature = try loaded.sign([1, 2, 3])
        #expect(Identity.verify(signature: signature, of: [1, 2, 3], publicKey: created.publicKey))
        #expect(!Identity.verify(signature: signature, of: [1, 2, 4], publicKey: created.publicKey))
    }

    @Test func aKeyOthersCanReadIsRefusedWithTheFix() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("node.key")
        try Identity().save(path: path)
        chmod(path, 0o644)
        let error = #expect(throws: IdentityError.self) { try Identity.load(path: path) }
        #expect(error?.description.contains("readable by others (mode 644); run chmod 600") == true)
    }

    @Test func aFileThatIsNotAKeyIsRefused() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("junk.key")
        let fd = open(path, O_WRONLY | O_CREAT, 0o600)
        _ = "hello\n".withCString { write(fd, $0, 6) }
        close(fd)
        let error = #expect(throws: IdentityError.self) { try Identity.load(path: path) }
        #expect(error?.description.contains("not a Spook key file") == true)
    }
}

@Suite struct HandshakeTests {
    let agent = Identity(), daemon = Identity()
    static func nonce(_ byte: UInt8) -> [UInt8] { Array(repeating: byte, count: 32) }

    func pair(agentNonce: UInt8 = 1, daemonNonce: UInt8 = 2, daemonAccepts: [[UInt8]]? = nil) -> (Handshake, Handshake) {
        let accepted = daemonAccepts ?? [agent.publicKey]
        let daemonKey = daemon.publicKey
        let a = Handshake(side: .initiator, identity: agent, role: .agent, nonce: Self.nonce(agentNonce),
                          subscriptions: [try! QDomainPattern("site1.*")], node: "gw-1", isAuthorised: { $0 == daemonKey })
        let d = Handshake(side: .responder, identity: daemon, role: .daemon, nonce: Self.nonce(daemonNonce),
                          subscriptions: [try! QDomainPattern("*")], node: "spookd", isAuthorised: { accepted.contains($0) })
        return (a, d)
    }

    /// Runs both sides to the end, passing each message across as bytes.
    func run(_ a: inout Handshake, _ d: inout Handshake) throws {
        var toDaemon = [a.start()], toAgent = [d.start()]
        while !toDaemon.isEmpty || !toAgent.isEmpty {
            let (forD, forA) = (toDaemon, toAgent)
            toDaemon = []
            toAgent = []
            for m in forD { toAgent += try d.receive(try Message(frame: m.frame)) }
            for m in forA { toDaemon += try a.receive(try Message(frame: m.frame)) }
        }
    }

    @Test func bothSidesLearnWhoTheOtherIs() throws {
        var (a, d) = pair()
        try run(&a, &d)
        #expect(a.peer?.origin == daemon.origin && a.peer?.role == .daemon)
        #expect(d.peer?.origin == agent.origin && d.peer?.role == .agent && d.peer?.node == "gw-1")
        #expect(d.peer?.subscriptions.map(\.description) == ["site1.*"])
    }

    @Test func anUnknownKeyIsRefused() throws {
        var (a, d) = pair(daemonAccepts: [])
        let helloA = a.start()
        _ = d.start()
        let error = #expect(throws: WireError.self) { try d.receive(helloA) }
        #expect(error?.code == .unauthorised)
        #expect(error?.message.contains("(origin \(agent.origin)) is not authorised") == true, "\(error?.message ?? "-")")
        #expect(d.peer == nil)
    }

    @Test func aWrongSignatureIsRefused() throws {
        var (a, d) = pair()
        let helloA = a.start(), helloD = d.start()
        guard case .auth(var signature)? = try a.receive(helloD).first else {
            Issue.record("the agent did not answer HELLO with AUTH")
            return
        }
        _ = try d.receive(helloA)
        signature[10] ^= 0x40
        let error = #expect(throws: WireError.self) { try d.receive(.auth(signature: signature)) }
        #expect(error?.code == .badSignature)
        #expect(d.peer == nil)
    }

    @Test func aRecordedHandshakeReplayedToANewSessionIsRefused() throws {
        // Record a complete agent side.
        var (a, d) = pair(agentNonce: 7, daemonNonce: 8)
        let helloA = a.start(), helloD = d.start()
        let authA = try a.receive(helloD)
        _ = try d.receive(helloA)
        _ = try d.receive(authA[0])
        #expect(d.peer != nil)
        // Replay HELLO and AUTH to a daemon with a fresh nonce: the transcript
        // differs, so the recorded signature does not verify.
        var (_, fresh) = pair(daemonNonce: 9)
        _ = fresh.start()
        _ = try fresh.receive(helloA)
        let error = #expect(throws: WireError.self) { try fresh.receive(authA[0]) }
        #expect(error?.code == .badSignature)
        // And the daemon's nonce registry refuses the same HELLO nonce outright.
        var registry = NonceRegistry(capacity: 2)
        let admitted = [7, 7, 8, 9, 7].map { registry.admit(Self.nonce($0)) }
        // The second 7 is a replay; once 8 and 9 fill the ring, 7 is forgotten.
        #expect(admitted == [true, false, true, true, true])
    }

    @Test func aReflectedHelloIsRefused() throws {
        var (a, _) = pair()
        let helloA = a.start()
        let error = #expect(throws: WireError.self) { try a.receive(helloA) }
        #expect(error?.code == .replay)
    }

    @Test func framesOutOfOrderAreRefused() throws {
        var (a, d) = pair()
        _ = a.start()
        _ = d.start()
        let error = #expect(throws: WireError.self) { try d.receive(.deltas([])) }
        #expect(error?.code == .unexpected)
        #expect(error?.message == "DELTAS is not expected during the handshake")
        var (a2, _) = pair()
        _ = a2.start()
        #expect((#expect(throws: WireError.self) { try a2.receive(.auth(signature: Array(repeating: 0, count: 64))) })?.code == .unexpected)
    }
}
