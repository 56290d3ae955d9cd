import SpookCore

/// A register type of the firmware bridge; every value travels as 4 bytes.
public enum FirmwareValueType: UInt8, Sendable, CustomStringConvertible {
    case bool = 0, u16, i16, u32, i32, f32

    public var description: String { ["bool", "u16", "i16", "u32", "i32", "f32"][Int(rawValue)] }

    public func value(_ raw: UInt32) -> Value {
        switch self {
        case .bool: .bool(raw != 0)
        case .u16: .int(Int64(raw & 0xFFFF))
        case .i16: .int(Int64(Int16(truncatingIfNeeded: raw)))
        case .u32: .int(Int64(raw))
        case .i32: .int(Int64(Int32(bitPattern: raw)))
        case .f32: .float(Float(bitPattern: raw).shortestDouble)
        }
    }

    /// The raw form of a desired value; nil when the value does not fit the type.
    public func raw(_ value: Value) -> UInt32? {
        switch (self, value) {
        case (.bool, .bool(let b)): return b ? 1 : 0
        case (.bool, .int(let i)) where i == 0 || i == 1: return UInt32(i)
        case (.u16, .int(let i)) where (0...0xFFFF).contains(i): return UInt32(i)
        case (.i16, .int(let i)) where (-32768...32767).contains(i): return UInt32(bitPattern: Int32(i))
        case (.u32, .int(let i)) where (0...0xFFFF_FFFF).contains(i): return UInt32(i)
        case (.i32, .int(let i)) where (-2_147_483_648...2_147_483_647).contains(i): return UInt32(bitPattern: Int32(i))
        case (.f32, .float(let d)): return Float(d).bitPattern
        case (.f32, .int(let i)): return Float(i).bitPattern
        default: return nil
        }
    }
}

public struct FirmwareRegister: Hashable, Sendable {
    public var id: UInt8
    public var name: String
    public var type: FirmwareValueType
    public var writable: Bool
}

/// What a device says about itself in HELLO and DESCRIBE.
public struct FirmwareDescriptor: Hashable, Sendable {
    public var name: String
    public var serial: String
    public var registers: [FirmwareRegister]

    public func register(named name: String) -> FirmwareRegister? { registers.first { $0.name == name } }
}

/// The host side of one firmware bridge link (docs/firmware-bridge.md). Pure:
/// bytes and time in, bytes and events out; the agent moves them. It mirrors
/// `sfb.c`: one outstanding sequenced packet each way, retransmitted until
/// acknowledged, duplicates acknowledged again and dropped.
///
/// A REPORT is acknowledged only when the agent calls `acknowledge()`,
/// after it committed the reported values: a device's change is never
/// acknowledged before it is durable.
public struct FirmwareHost: Sendable {
    public struct Options: Sendable {
        public var retransmitMs: UInt64 = 100
        public var heartbeatMs: UInt64 = 1_000
        /// Silence after which the device counts as gone (and SYNC starts again).
        public var silenceMs: UInt64 = 3_000
        public init() {}
    }

    public enum Event: Sendable, Equatable {
        /// The device described itself: validate, then `welcome` or `refuse`.
        case described(FirmwareDescriptor)
        /// New values from the device: commit, then `acknowledge()`.
        case reported([(FirmwareRegister, Value)])
        case rejected(FirmwareRegister?, id: UInt8, reason: UInt8)
        /// Heard nothing for `silenceMs`, or the device restarted.
        case lost(String)
        /// A packet that makes no sense in this state (logged, dropped).
        case protocolError(String)

        public static func == (a: Event, b: Event) -> Bool {
            switch (a, b) {
            case (.described(let x), .described(let y)): x == y
            case (.reported(let x), .reported(let y)): x.map(\.0) == y.map(\.0) && x.map(\.1) == y.map(\.1)
            case (.rejected(_, let i, let r), .rejected(_, let j, let s)): i == j && r == s
            case (.lost(let x), .lost(let y)): x == y
            case (.protocolError(let x), .protocolError(let y)): x == y
            default: false
            }
        }
    }

    enum Phase: Equatable, Sendable {
        case syncing
        case describing(expected: Int)
        case awaitingDecision
        case running
        case refused
    }

    public let options: Options
    var phase: Phase = .syncing
    var partial: FirmwareDescriptor?
    public private(set) var descriptor: FirmwareDescriptor?
    var decoder = FirmwareFrameDecoder()
    var rxSeq: UInt8 = 0
    var ackHeld: UInt8?
    var nextSeq: UInt8 = 1
    var outstanding: (seq: UInt8, frame: [UInt8], sentMs: UInt64)?
    var queuedWrites: [UInt8: UInt32] = [:]
    var welcomePending = false
    var lastSentMs: UInt64 = 0
    var lastHeardMs: UInt64 = 0
    public private(set) var duplicates = 0
    public private(set) var retransmits = 0
    public var badCRC: Int { decoder.badCRC }
    public var badFrames: Int { decoder.badFrames }

    public init(options: Options = Options()) {
        self.options = options
    }

    /// Running: welcomed and reporting.
    public var online: Bool { phase == .running }

    /// The port was (re)opened: ask the device to start over.
    public mutating func open(nowMs: UInt64) -> [UInt8] {
        phase = .syncing
        resetSession()
        lastHeardMs = nowMs
        return control(.sync, nowMs: nowMs)
    }

    mutating func resetSession() {
        partial = nil
        rxSeq = 0
        ackHeld = nil
        nextSeq = 1
        outstanding = nil
        welcomePending = false
    }

    /// Feeds received bytes. Returns events to act on and bytes to send now.
    public mutating func receive(_ bytes: some Sequence<UInt8>, nowMs: UInt64) -> (events: [Event], out: [UInt8]) {
        var events: [Event] = []
        var out: [UInt8] = []
        for packet in decoder.feed(bytes) {
            handle(packet, nowMs: nowMs, events: &events, out: &out)
        }
        return (events, out)
    }

    mutating func handle(_ p: FirmwarePacket, nowMs: UInt64, events: inout [Event], out: inout [UInt8]) {
        lastHeardMs = nowMs
        if let o = outstanding, p.ack == o.seq { outstanding = nil }
        guard p.seq != 0 else { return }
        if p.type == .hello {
            // A duplicate of the HELLO that opened the session we are in, or a new session.
            if case .describing = phase, partial?.registers.isEmpty == true, p.seq == rxSeq {
                duplicates += 1
                out += control(.ack, nowMs: nowMs)
                return
            }
            guard let hello = parseHello(p.payload) else {
                events.append(.protocolError("HELLO is malformed (\(p.payload.count) bytes)"))
                return
            }
            if phase == .running { events.append(.lost("the device restarted its session")) }
            resetSession()
            rxSeq = p.seq
            partial = FirmwareDescriptor(name: hello.name, serial: hello.serial, registers: [])
            phase = .describing(expected: hello.count)
            out += control(.ack, nowMs: nowMs)
            finishDescribing(events: &events)
            return
        }
        if p.seq == rxSeq || p.seq == ackHeld {
            duplicates += 1
            if ackHeld == nil { out += control(.ack, nowMs: nowMs) }
            return
        }
        guard ackHeld == nil else { return } // the previous report is still being committed
        let expected: UInt8 = rxSeq == 255 ? 1 : rxSeq + 1
        guard rxSeq == 0 || p.seq == expected else { return }
        switch (p.type, phase) {
        case (.describe, .describing):
            guard let r = parseDescribe(p.payload) else {
                events.append(.protocolError("DESCRIBE is malformed"))
                return
            }
            rxSeq = p.seq
            partial?.registers.removeAll { $0.id == r.id }
            partial?.registers.append(r)
            out += control(.ack, nowMs: nowMs)
            finishDescribing(events: &events)
        case (.report, .running):
            guard let descriptor else { return }
            var values: [(FirmwareRegister, Value)] = []
            var i = 0
            while i + 5 <= p.payload.count {
                let id = p.payload[i]
                let raw = UInt32(p.payload[i + 1]) << 24 | UInt32(p.payload[i + 2]) << 16 | UInt32(p.payload[i + 3]) << 8 | UInt32(p.payload[i + 4])
                if let r = descriptor.registers.first(where: { $0.id == id }) { values.append((r, r.type.value(raw))) }
                i += 5
            }
            // Acknowledged once committed: hold the seq until `acknowledge()`.
            ackHeld = p.seq
            events.append(.reported(values))
        case (.reject, .running):
            rxSeq = p.seq
            let id = p.payload.first ?? 0
            events.append(.rejected(descriptor?.registers.first { $0.id == id }, id: id, reason: p.payload.count > 1 ? p.payload[1] : 0))
            out += control(.ack, nowMs: nowMs)
        default:
            rxSeq = p.seq
            out += control(.ack, nowMs: nowMs)
            events.append(.protocolError("\(p.type) is not expected while \(phase)"))
        }
    }

    mutating func finishDescribing(events: inout [Event]) {
        guard case .describing(let expected) = phase, let partial, partial.registers.count == expected else { return }
        let d = FirmwareDescriptor(name: partial.name, serial: partial.serial, registers: partial.registers.sorted { $0.id < $1.id })
        descriptor = d
        phase = .awaitingDecision
        events.append(.described(d))
    }

    /// The agent accepted the descriptor: start the session.
    public mutating func welcome(nowMs: UInt64) -> [UInt8] {
        guard phase == .awaitingDecision else { return [] }
        phase = .running
        welcomePending = true
        return poll(nowMs: nowMs).out
    }

    /// The agent refused the descriptor (bad names, say): ignore the device
    /// until it says HELLO again.
    public mutating func refuse() {
        phase = .refused
        outstanding = nil
    }

    /// The reported values are durable: acknowledge them to the device.
    public mutating func acknowledge(nowMs: UInt64) -> [UInt8] {
        guard let seq = ackHeld else { return [] }
        rxSeq = seq
        ackHeld = nil
        return control(.ack, nowMs: nowMs)
    }

    /// The commit failed: forget the report; the device will send it again.
    public mutating func forgetReport() { ackHeld = nil }

    /// Drive register `id` towards `raw`; queued writes to one register coalesce.
    public mutating func write(id: UInt8, raw: UInt32) {
        queuedWrites[id] = raw
    }

    /// Retransmits, sends queued writes and heartbeats, notices silence
    /// (then `.lost`, and SYNC until the device says HELLO again).
    public mutating func poll(nowMs: UInt64) -> (events: [Event], out: [UInt8]) {
        var out: [UInt8] = []
        if phase != .syncing && phase != .refused && nowMs >= lastHeardMs + options.silenceMs {
            let wasOnline = phase == .running
            phase = .syncing
            resetSession()
            lastHeardMs = nowMs
            return (wasOnline ? [.lost("heard nothing for \(options.silenceMs) ms")] : [], control(.sync, nowMs: nowMs))
        }
        if phase == .syncing {
            if nowMs >= lastSentMs + options.retransmitMs * 5 { out += control(.sync, nowMs: nowMs) }
            return ([], out)
        }
        if var o = outstanding {
            if nowMs >= o.sentMs + options.retransmitMs {
                o.sentMs = nowMs
                outstanding = o
                retransmits += 1
                lastSentMs = nowMs
                out += o.frame
            }
        } else if phase == .running {
            if welcomePending {
                welcomePending = false
                out += sequenced(.welcome, [], nowMs: nowMs)
            } else if !queuedWrites.isEmpty {
                var payload: [UInt8] = []
                for id in queuedWrites.keys.sorted().prefix(48) {
                    let raw = queuedWrites.removeValue(forKey: id)!
                    payload += [id, UInt8(raw >> 24), UInt8(raw >> 16 & 0xFF), UInt8(raw >> 8 & 0xFF), UInt8(raw & 0xFF)]
                }
                out += sequenced(.write, payload, nowMs: nowMs)
            }
        }
        if out.isEmpty && nowMs >= lastSentMs + options.heartbeatMs { out += control(.heartbeat, nowMs: nowMs) }
        return ([], out)
    }

    mutating func control(_ type: FirmwarePacketType, nowMs: UInt64) -> [UInt8] {
        lastSentMs = nowMs
        return FirmwareCodec.frame(FirmwarePacket(type, ack: rxSeq))
    }

    mutating func sequenced(_ type: FirmwarePacketType, _ payload: [UInt8], nowMs: UInt64) -> [UInt8] {
        let seq = nextSeq
        nextSeq = nextSeq == 255 ? 1 : nextSeq + 1
        let frame = FirmwareCodec.frame(FirmwarePacket(type, seq: seq, ack: rxSeq, payload: payload))
        outstanding = (seq, frame, nowMs)
        lastSentMs = nowMs
        return frame
    }

    func parseHello(_ p: [UInt8]) -> (name: String, serial: String, count: Int)? {
        var r = PayloadReader(p)
        guard let version = r.byte(), version == 1, let count = r.byte(), let name = r.name(), let serial = r.name() else { return nil }
        return (name, serial, Int(count))
    }

    func parseDescribe(_ p: [UInt8]) -> FirmwareRegister? {
        var r = PayloadReader(p)
        guard let id = r.byte(), let t = r.byte(), let type = FirmwareValueType(rawValue: t), let access = r.byte(), access <= 1,
              let name = r.name()
        else { return nil }
        return FirmwareRegister(id: id, name: name, type: type, writable: access == 1)
    }
}

struct PayloadReader {
    let bytes: [UInt8]
    var at = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func byte() -> UInt8? {
        guard at < bytes.count else { return nil }
        defer { at += 1 }
        return bytes[at]
    }

    mutating func name() -> String? {
        guard let n = byte(), at + Int(n) <= bytes.count else { return nil }
        defer { at += Int(n) }
        return String(decoding: bytes[at..<(at + Int(n))], as: UTF8.self)
    }
}
