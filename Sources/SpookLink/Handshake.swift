import SpookCore
import SpookWire

/// Who may connect, and what each key may do: the daemon's authorisation
/// table (from config), per QDomain pattern.
public struct Authorisation: Sendable {
    public struct Grant: Sendable, Hashable {
        public var read: [QDomainPattern]
        public var write: [QDomainPattern]
        /// Domains whose devices this peer hosts: only it may write `reported` there.
        public var owns: [QDomainPattern]
        /// A daemon below this one (`relay = true`): it may forward deltas
        /// and snapshot sides of other origins (its agents'), each still
        /// held to `write` and `owns`. Any other peer speaks only for itself.
        public var relay = false
        public init(read: [QDomainPattern], write: [QDomainPattern], owns: [QDomainPattern] = [], relay: Bool = false) {
            self.read = read
            self.write = write
            self.owns = owns
            self.relay = relay
        }
        public func mayWrite(_ domain: QDomain) -> Bool { write.contains { $0.matches(domain) } }
        public func owns(_ domain: QDomain) -> Bool { owns.contains { $0.matches(domain) } }

        /// Checks a DELTAS batch from `origin`, a peer with this grant (pure;
        /// the node and the simulation both call it). A delta already held
        /// passes (a relay or a resend); one of another origin that is not
        /// held is refused whole (a peer speaks for itself) unless the grant
        /// is a `relay`'s. A delta outside
        /// the write grant, or with `report` writes outside `owns`, is kept
        /// *withheld* (its place in the origin's sequence, not its content)
        /// and listed with the reason, so the writer's later deltas are not
        /// blocked behind it.
        public func check(_ deltas: [Delta], from origin: Origin, holds: (DeltaID) -> Bool) throws -> (checked: [Delta], refusals: [(DeltaID, String)]) {
            var checked: [Delta] = []
            var refusals: [(DeltaID, String)] = []
            for d in deltas {
                if holds(d.id) || Withheld.isWithheld(d) && (d.origin == origin || relay) {
                    checked.append(d)
                    continue
                }
                guard d.origin == origin || relay else {
                    throw WireError(.forbidden, "\(origin) sent delta \(d.id) of another origin that this node does not hold")
                }
                var writer: String { d.origin == origin ? "\(origin)" : "\(d.origin) (relayed by \(origin))" }
                if !mayWrite(d.group.domain) {
                    let hint = d.group.domain.description.hasPrefix("spook.")
                        ? ": an agent's own status registers are granted when its [[peer]] name equals its [node] name, else add \"\(d.group.domain)\" to the peer's write"
                        : ""
                    refusals.append((d.id, "\(writer) may not write \(d.group) (domain \(d.group.domain) is not in its write grant)\(hint)"))
                    checked.append(Withheld.redact(d))
                } else if d.writes.contains(where: { $0.kind == .report }), !owns(d.group.domain) {
                    // The device policy: only the agent that hosts a device reports its state.
                    refusals.append((d.id, "\(writer) may not write reported values in \(d.group) (domain \(d.group.domain) is not in its \"owns\")"))
                    checked.append(Withheld.redact(d))
                } else {
                    checked.append(d)
                }
            }
            return (checked, refusals)
        }

        /// What of a snapshot chunk from `origin` (a peer with this grant) may
        /// be taken: every state-changing frame passes the same grant as
        /// DELTAS. A peer (but a relay) speaks only for its own origin: the vector keeps only
        /// that origin's entry (it may not advance anyone else's, or their real
        /// deltas would later be skipped as held), and a register keeps only the
        /// sides that origin wrote (others' values come from their own origins).
        /// Of those, a side outside the grant (a domain it may not write, or
        /// `reported` where it does not own the domain) is `forbidden`.
        public func admit(_ chunk: SnapshotChunk, from origin: Origin) -> (chunk: SnapshotChunk, forbidden: [QRegisterName]) {
            var registers: [QRegisterName: RegisterState] = [:]
            var forbidden: [QRegisterName] = []
            for name in chunk.registers.keys.sorted() {
                let domain = name.group.domain
                let own = { (v: Versioned?) in v.flatMap { $0.stamp.origin == origin || self.relay ? $0 : nil } }
                switch chunk.registers[name]! {
                case .lww(let v):
                    guard let v = own(v) else { continue }
                    if mayWrite(domain) { registers[name] = .lww(v) } else { forbidden.append(name) }
                case .device(let reported, let desired):
                    var r = own(reported), d = own(desired)
                    if (r != nil || d != nil) && !mayWrite(domain) || r != nil && !owns(domain) {
                        forbidden.append(name)
                        if !mayWrite(domain) { d = nil }
                        r = nil
                    }
                    if r != nil || d != nil { registers[name] = .device(reported: r, desired: d) }
                }
            }
            var vector = QStateVector()
            vector[origin] = chunk.vector[origin]
            if relay { vector = chunk.vector }
            return (SnapshotChunk(index: chunk.index, count: chunk.count, vector: vector, registers: registers), forbidden)
        }
    }

    /// Public key (32 bytes, hex) → grant.
    public var keys: [String: Grant]

    public init(keys: [String: Grant]) { self.keys = keys }

    public func grant(for publicKey: [UInt8]) -> Grant? { keys[publicKey.hex] }
}

/// The ETCP handshake for one link (docs/protocol.md, "Handshake").
///
/// Both sides send HELLO at once. The transcript is SHA-256 over a label,
/// the initiator's HELLO payload and the responder's; each side then sends
/// AUTH, an Ed25519 signature over a label naming its side and the
/// transcript, so a signature can neither be reflected back nor replayed
/// into a handshake with other nonces. Pure apart from the signing: the
/// nonce comes in from outside, so tests and the simulation can fix it.
public struct Handshake: Sendable {
    public enum Side: Sendable, Hashable { case initiator, responder }

    /// What the peer proved.
    public struct Peer: Sendable, Hashable {
        public let publicKey: [UInt8]
        public let origin: Origin
        /// The incarnation the peer announced (its origin's epoch).
        public let epoch: UInt32
        public let role: Role
        public let node: String
        public let subscriptions: [QDomainPattern]
    }

    enum State: Sendable {
        case start
        case awaitingHello(sent: [UInt8])
        case awaitingAuth(transcript: [UInt8], peer: Peer)
        case done(Peer)
        case failed
    }

    public let side: Side
    let identity: Identity
    let hello: Hello
    /// Decides whether a peer key may connect at all.
    let isAuthorised: @Sendable ([UInt8]) -> Bool
    private var state: State = .start

    static let transcriptLabel = Array("spook etcp v1 transcript".utf8)
    static func authLabel(_ side: Side) -> [UInt8] { Array("spook etcp v1 auth \(side == .initiator ? "initiator" : "responder")".utf8) }

    public init(side: Side, identity: Identity, role: Role, nonce: [UInt8], subscriptions: [QDomainPattern], node: String,
                epoch: UInt32 = 0, isAuthorised: @escaping @Sendable ([UInt8]) -> Bool) {
        precondition(nonce.count == Hello.nonceLength, "a nonce is \(Hello.nonceLength) bytes")
        self.side = side
        self.identity = identity
        self.hello = Hello(role: role, publicKey: identity.publicKey, nonce: nonce, subscriptions: subscriptions, node: node, epoch: epoch)
        self.isAuthorised = isAuthorised
    }

    public var peer: Peer? { if case .done(let p) = state { p } else { nil } }

    /// The HELLO to send first.
    public mutating func start() -> Message {
        guard case .start = state else { preconditionFailure("handshake started twice") }
        let message = Message.hello(hello)
        state = .awaitingHello(sent: message.frame.payload)
        return message
    }

    /// Takes the peer's next message; returns what to send back. Throws the
    /// `WireError` to send in an ERROR frame before closing the link.
    public mutating func receive(_ message: Message) throws -> [Message] {
        do {
            switch (state, message) {
            case (.awaitingHello(let sent), .hello(let theirs)):
                guard theirs.protocolVersion == Hello.protocolVersion else {
                    throw WireError(.unsupportedVersion, "peer speaks protocol \(theirs.protocolVersion), this build speaks \(Hello.protocolVersion)")
                }
                guard theirs.publicKey != hello.publicKey else {
                    throw WireError(.replay, "the peer presented our own public key (a reflected handshake)")
                }
                guard theirs.nonce != hello.nonce else { throw WireError(.replay, "the peer echoed our nonce") }
                guard isAuthorised(theirs.publicKey) else {
                    throw WireError(.unauthorised, "key \(theirs.publicKey.hex) (origin \(Identity.origin(of: theirs.publicKey))) is not authorised")
                }
                let theirPayload = Message.hello(theirs).frame.payload
                var input = Handshake.transcriptLabel
                input += side == .initiator ? sent + theirPayload : theirPayload + sent
                let transcript = SHA256.hash(input)
                let peer = Peer(publicKey: theirs.publicKey, origin: Identity.origin(of: theirs.publicKey, epoch: theirs.epoch),
                                epoch: theirs.epoch, role: theirs.role,
                                node: theirs.node, subscriptions: theirs.subscriptions)
                state = .awaitingAuth(transcript: transcript, peer: peer)
                return [.auth(signature: try identity.sign(Handshake.authLabel(side) + transcript))]

            case (.awaitingAuth(let transcript, let peer), .auth(let signature)):
                let theirSide: Side = side == .initiator ? .responder : .initiator
                guard Identity.verify(signature: signature, of: Handshake.authLabel(theirSide) + transcript, publicKey: peer.publicKey) else {
                    throw WireError(.badSignature, "AUTH from \(peer.origin) does not verify against its key and this handshake")
                }
                state = .done(peer)
                return []

            case (_, .error(let code, let text)):
                throw WireError(code, "peer refused the handshake: \(text)")
            default:
                throw WireError(.unexpected, "\(message.type) is not expected during the handshake")
            }
        } catch {
            state = .failed
            throw error
        }
    }
}

/// Remembers recent peer nonces so a recorded HELLO cannot be replayed, in
/// a bounded ring (the oldest is forgotten first).
public struct NonceRegistry: Sendable {
    public let capacity: Int
    private var seen: Set<[UInt8]> = []
    private var order: [[UInt8]] = []
    private var next = 0

    public init(capacity: Int = 4096) {
        precondition(capacity > 0, "capacity must be positive")
        self.capacity = capacity
    }

    /// False when `nonce` was seen before.
    public mutating func admit(_ nonce: [UInt8]) -> Bool {
        guard !seen.contains(nonce) else { return false }
        if order.count < capacity {
            order.append(nonce)
        } else {
            seen.remove(order[next])
            order[next] = nonce
            next = (next + 1) % capacity
        }
        seen.insert(nonce)
        return true
    }
}
