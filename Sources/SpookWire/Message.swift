import SpookCore

/// Which end of a Pair a node is.
public enum Role: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// `spook-edge`: hosts device HalfPairs, connects upstream.
    case agent = 1
    /// `spookd`: accepts links, routes between them.
    case daemon = 2

    public var description: String { self == .agent ? "agent" : "daemon" }
}

/// The first frame each side sends.
public struct Hello: Hashable, Sendable {
    public static let protocolVersion: UInt16 = 1
    public static let nonceLength = 32
    public static let publicKeyLength = 32
    public static let patternsMax = 256
    public static let nodeNameMax = 64

    public var protocolVersion: UInt16
    public var role: Role
    /// Ed25519 public key, 32 bytes.
    public var publicKey: [UInt8]
    /// 32 fresh random bytes: what makes each handshake's transcript unique.
    public var nonce: [UInt8]
    /// Domain patterns whose groups this side wants.
    public var subscriptions: [QDomainPattern]
    /// A name for logs (not trusted for anything).
    public var node: String
    /// The sender's incarnation: its origin is derived from its key and this
    /// (0: the key alone). A node starts a new incarnation when its store
    /// turns out to be behind what peers hold of its origin.
    public var epoch: UInt32

    public init(role: Role, publicKey: [UInt8], nonce: [UInt8], subscriptions: [QDomainPattern], node: String,
                epoch: UInt32 = 0, protocolVersion: UInt16 = Hello.protocolVersion) {
        self.protocolVersion = protocolVersion
        self.role = role
        self.publicKey = publicKey
        self.nonce = nonce
        self.subscriptions = subscriptions
        self.node = node
        self.epoch = epoch
    }
}

/// What a VECTOR's sender holds of the receiver's own origin: its vector
/// entry and the HLC of the delta at that seq. The receiver compares it with
/// its own log to learn whether its store went back in time.
public struct OriginTip: Hashable, Sendable {
    public var origin: Origin
    public var seq: UInt64
    public var hlc: HLCTimestamp

    public init(origin: Origin, seq: UInt64, hlc: HLCTimestamp) {
        self.origin = origin
        self.seq = seq
        self.hlc = hlc
    }
}

/// One chunk of a snapshot. A snapshot larger than a frame is sent as
/// `count` chunks; the receiver applies it only once it holds every chunk
/// `0 ..< count` for the same vector, so a lost chunk can never pass for a
/// complete snapshot.
public struct SnapshotChunk: Hashable, Sendable {
    public static let registersMax = 100_000
    public static let chunksMax: UInt32 = 1 << 20

    public var index: UInt32
    public var count: UInt32
    /// The vector the whole snapshot covers (the same in every chunk).
    public var vector: QStateVector
    public var registers: [QRegisterName: RegisterState]

    public init(index: UInt32, count: UInt32, vector: QStateVector, registers: [QRegisterName: RegisterState]) {
        precondition(count >= 1 && index < count, "chunk \(index) of \(count)")
        self.index = index
        self.count = count
        self.vector = vector
        self.registers = registers
    }
}

/// Every ETCP/ESTP message, with its payload encoding (docs/protocol.md).
public enum Message: Hashable, Sendable {
    /// The ACK's optional flag byte: the vector holds only some origins.
    static let ackPartial: UInt8 = 0x01

    case hello(Hello)
    /// Ed25519 signature (64 bytes) over the handshake transcript.
    case auth(signature: [UInt8])
    /// What the sender holds: starts catch-up. `tip` (optional on the wire)
    /// tells the receiver what the sender holds of the receiver's origin.
    case vector(QStateVector, tip: OriginTip? = nil)
    /// Deltas in per-origin seq order.
    case deltas([Delta])
    /// The receiver's vector, sent only after what it acknowledges is
    /// durable. `partial` (a flag byte on the wire): only the origins this
    /// link carries, the others unchanged since the last whole ACK (a
    /// daemon's whole vector is 16 KB with 1,000 agents; an agent needs
    /// its own entry). A partial ACK only adds to what the sender knows.
    case ack(QStateVector, partial: Bool = false)
    case snapshot(SnapshotChunk)
    /// The sender's wall clock, for lag estimates.
    case heartbeat(sentMs: UInt64)
    case error(code: WireError.Code, message: String)
    case close(message: String)

    public static let deltasMax = 10_000
    public static let textMax = 1_024
    public static let signatureLength = 64

    public var type: FrameType {
        switch self {
        case .hello: .hello
        case .auth: .auth
        case .vector: .vector
        case .deltas: .deltas
        case .ack: .ack
        case .snapshot: .snapshot
        case .heartbeat: .heartbeat
        case .error: .error
        case .close: .close
        }
    }

    public var frame: Frame {
        var w = ByteWriter()
        switch self {
        case .hello(let h):
            w.write(h.protocolVersion)
            w.write(h.role.rawValue)
            w.write(contentsOf: h.publicKey)
            w.write(contentsOf: h.nonce)
            w.write(UInt16(h.subscriptions.count))
            for p in h.subscriptions { Message.writeText(p.description, into: &w) }
            Message.writeText(h.node, into: &w)
            if h.epoch != 0 { w.write(h.epoch) }
        case .auth(let signature):
            w.write(contentsOf: signature)
        case .vector(let v, let tip):
            v.encode(into: &w)
            if let tip {
                w.write(tip.origin.rawValue)
                w.write(tip.seq)
                w.write(tip.hlc.rawValue)
            }
        case .ack(let v, let partial):
            v.encode(into: &w)
            if partial { w.write(Message.ackPartial) }
        case .deltas(let deltas):
            w.write(UInt32(deltas.count))
            for d in deltas {
                let body = d.encoded
                w.write(UInt32(body.count))
                w.write(contentsOf: body)
            }
        case .snapshot(let s):
            w.write(s.index)
            w.write(s.count)
            s.vector.encode(into: &w)
            w.write(UInt32(s.registers.count))
            for name in s.registers.keys.sorted() {
                Message.writeText(name.text, into: &w)
                s.registers[name]!.encode(into: &w)
            }
        case .heartbeat(let ms):
            w.write(ms)
        case .error(let code, let message):
            w.write(code.rawValue)
            Message.writeText(Message.truncated(message), into: &w)
        case .close(let message):
            Message.writeText(Message.truncated(message), into: &w)
        }
        return Frame(type: type, payload: w.bytes)
    }

    /// Decodes a frame's payload; refuses anything malformed with a
    /// `malformed` error that says what and where.
    public init(frame: Frame) throws {
        var r = ByteReader(frame.payload)
        do {
            switch frame.type {
            case .hello:
                let version = try r.read(UInt16.self, "protocol version")
                let rawRole = try r.read(UInt8.self, "role")
                guard let role = Role(rawValue: rawRole) else { throw CoreError(.malformed, "unknown role \(rawRole)") }
                let key = Array(try r.readBytes(Hello.publicKeyLength, "public key"))
                let nonce = Array(try r.readBytes(Hello.nonceLength, "nonce"))
                let count = Int(try r.read(UInt16.self, "subscription count"))
                guard count <= Hello.patternsMax else {
                    throw CoreError(.malformed, "\(count) subscriptions, the limit is \(Hello.patternsMax)")
                }
                var patterns: [QDomainPattern] = []
                for i in 0..<count { patterns.append(try QDomainPattern(try Message.readText(&r, "subscription \(i)", max: 255))) }
                let node = try Message.readText(&r, "node name", max: Hello.nodeNameMax)
                // The epoch is optional: absent means 0.
                let epoch = r.remaining > 0 ? try r.read(UInt32.self, "epoch") : 0
                self = .hello(Hello(role: role, publicKey: key, nonce: nonce, subscriptions: patterns, node: node, epoch: epoch,
                                    protocolVersion: version))
            case .auth:
                self = .auth(signature: Array(try r.readBytes(Message.signatureLength, "signature")))
            case .vector:
                let vector = try QStateVector.decode(from: &r)
                var tip: OriginTip?
                if r.remaining > 0 {
                    tip = OriginTip(origin: Origin(try r.read(UInt64.self, "tip origin")), seq: try r.read(UInt64.self, "tip seq"),
                                    hlc: HLCTimestamp(rawValue: try r.read(UInt64.self, "tip hlc")))
                }
                self = .vector(vector, tip: tip)
            case .ack:
                let vector = try QStateVector.decode(from: &r)
                var partial = false
                if r.remaining > 0 {
                    let flags = try r.read(UInt8.self, "ack flags")
                    guard flags == Message.ackPartial else { throw CoreError(.malformed, "ACK flags 0x\(String(flags, radix: 16)): only 0x01 (partial) is defined") }
                    partial = true
                }
                self = .ack(vector, partial: partial)
            case .deltas:
                let count = Int(try r.read(UInt32.self, "delta count"))
                guard count <= Message.deltasMax else {
                    throw CoreError(.malformed, "\(count) deltas in one batch, the limit is \(Message.deltasMax)")
                }
                var deltas: [Delta] = []
                deltas.reserveCapacity(min(count, r.remaining / 30))
                for i in 0..<count {
                    let length = Int(try r.read(UInt32.self, "length of delta \(i)"))
                    var body = ByteReader(Array(try r.readBytes(length, "delta \(i)")))
                    do {
                        deltas.append(try Delta.decode(from: &body, previousGroup: deltas.last?.group))
                        try body.expectEnd("delta \(i)")
                    } catch let e as CoreError {
                        throw CoreError(e.code, "delta \(i): \(e.message)")
                    }
                }
                self = .deltas(deltas)
            case .snapshot:
                let index = try r.read(UInt32.self, "chunk index")
                let chunks = try r.read(UInt32.self, "chunk count")
                guard chunks >= 1, chunks <= SnapshotChunk.chunksMax, index < chunks else {
                    throw CoreError(.malformed, "chunk \(index) of \(chunks) (chunks number 0 ..< count, count 1 … \(SnapshotChunk.chunksMax))")
                }
                let vector = try QStateVector.decode(from: &r)
                let count = Int(try r.read(UInt32.self, "register count"))
                guard count <= SnapshotChunk.registersMax else {
                    throw CoreError(.malformed, "\(count) registers in one snapshot chunk, the limit is \(SnapshotChunk.registersMax)")
                }
                var registers: [QRegisterName: RegisterState] = [:]
                for i in 0..<count {
                    let name = try QRegisterName(try Message.readText(&r, "register name \(i)", max: 512))
                    guard registers[name] == nil else { throw CoreError(.malformed, "register \(name) twice in one snapshot chunk") }
                    registers[name] = try RegisterState.decode(from: &r)
                }
                self = .snapshot(SnapshotChunk(index: index, count: chunks, vector: vector, registers: registers))
            case .heartbeat:
                self = .heartbeat(sentMs: try r.read(UInt64.self, "heartbeat time"))
            case .error:
                let code = WireError.Code.number(try r.read(UInt16.self, "error code"))
                self = .error(code: code, message: try Message.readText(&r, "error message", max: Message.textMax))
            case .close:
                self = .close(message: try Message.readText(&r, "close message", max: Message.textMax))
            }
            try r.expectEnd("\(frame.type) payload")
        } catch let e as CoreError {
            throw WireError(.malformed, "\(frame.type): \(e.message)")
        }
    }

    /// Cuts a message to `textMax` bytes at a character boundary.
    static func truncated(_ text: String) -> String {
        guard text.utf8.count > textMax else { return text }
        var out = ""
        for c in text {
            if out.utf8.count + c.utf8.count > textMax { break }
            out.append(c)
        }
        return out
    }

    // u16 length + UTF-8.
    static func writeText(_ text: String, into w: inout ByteWriter) {
        let utf8 = Array(text.utf8)
        w.write(UInt16(utf8.count))
        w.write(contentsOf: utf8)
    }

    static func readText(_ r: inout ByteReader, _ what: @autoclosure () -> String, max: Int) throws -> String {
        let length = Int(try r.read(UInt16.self, "\(what()) length"))
        guard length <= max else { throw CoreError(.malformed, "\(what()) is \(length) bytes, the limit is \(max)") }
        guard let text = String(validating: try r.readBytes(length, what()), as: UTF8.self) else {
            throw CoreError(.malformed, "\(what()) is not valid UTF-8")
        }
        return text
    }
}
