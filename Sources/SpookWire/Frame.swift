import SpookCore

/// ETCP framing (docs/protocol.md): every message on every byte stream is
///
///     "SP" | u8 version | u8 type | u32 length | payload (length bytes) | u32 CRC-32C
///
/// The checksum covers version, type, length and payload. Integers are
/// big-endian. A frame whose length exceeds the receiver's bound is refused
/// from its header alone, before any payload is buffered.
public struct Frame: Hashable, Sendable {
    public static let magic: (UInt8, UInt8) = (0x53, 0x50)  // "SP"
    public static let version: UInt8 = 1
    public static let headerLength = 8
    public static let trailerLength = 4
    /// Default bound on a payload (SUBSTRATE.md §5).
    public static let payloadMaxDefault = 1 << 20

    public var type: FrameType
    public var payload: [UInt8]

    public init(type: FrameType, payload: [UInt8]) {
        self.type = type
        self.payload = payload
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: payload.count + Frame.headerLength + Frame.trailerLength)
        w.write(Frame.magic.0)
        w.write(Frame.magic.1)
        w.write(Frame.version)
        w.write(type.rawValue)
        w.write(UInt32(payload.count))
        w.write(contentsOf: payload)
        let crc = w.bytes.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[2...])) }
        w.write(crc)
        return w.bytes
    }
}

/// Frame types. ETCP: hello, auth, heartbeat, error, close. ESTP: vector,
/// deltas, ack, snapshot.
public enum FrameType: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case hello = 0x01
    case auth = 0x02
    case vector = 0x03
    case deltas = 0x04
    case ack = 0x05
    case snapshot = 0x06
    case heartbeat = 0x07
    case error = 0x08
    case close = 0x09

    public var description: String {
        switch self {
        case .hello: "HELLO"
        case .auth: "AUTH"
        case .vector: "VECTOR"
        case .deltas: "DELTAS"
        case .ack: "ACK"
        case .snapshot: "SNAPSHOT"
        case .heartbeat: "HEARTBEAT"
        case .error: "ERROR"
        case .close: "CLOSE"
        }
    }
}

/// Why a byte stream was refused. The link that produced it is closed with
/// an ERROR frame carrying `code`; the process goes on.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: UInt16
        public let name: String
        private init(_ rawValue: UInt16, _ name: String) {
            self.rawValue = rawValue
            self.name = name
        }
        public var description: String { name }

        public static let badMagic = Code(1, "bad-magic")
        public static let unsupportedVersion = Code(2, "unsupported-version")
        public static let frameTooLarge = Code(3, "frame-too-large")
        public static let badChecksum = Code(4, "bad-checksum")
        public static let unknownType = Code(5, "unknown-type")
        public static let malformed = Code(6, "malformed")
        public static let unexpected = Code(7, "unexpected-frame")
        public static let unauthorised = Code(8, "unauthorised")
        public static let badSignature = Code(9, "bad-signature")
        public static let replay = Code(10, "replayed-handshake")
        public static let forbidden = Code(11, "forbidden")
        public static let timeout = Code(12, "timeout")
        public static let overloaded = Code(13, "overloaded")
        public static let `internal` = Code(14, "internal")
        /// Two different deltas under one (origin, seq): the sender's store went back in time.
        public static let conflict = Code(15, "seq-conflict")
        /// A remote HLC stamp too far from the receiver's clock.
        public static let clockDrift = Code(16, "clock-drift")

        static let all: [Code] = [
            .badMagic, .unsupportedVersion, .frameTooLarge, .badChecksum, .unknownType, .malformed, .unexpected,
            .unauthorised, .badSignature, .replay, .forbidden, .timeout, .overloaded, .internal, .conflict, .clockDrift,
        ]

        /// The code for a number read off the wire; unknown numbers are kept as `unknown-N`.
        public static func number(_ raw: UInt16) -> Code {
            all.first { $0.rawValue == raw } ?? Code(raw, "unknown-\(raw)")
        }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// Cuts a byte stream into frames. Feed it whatever arrived (one byte, many
/// frames, a frame and a half); take frames with `next()` until it returns
/// nil. After an error the stream is unusable: close the link.
public struct FrameDecoder: Sendable {
    /// May be raised between frames (a link allows larger frames once its peer authenticated).
    public var payloadMax: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var failed: WireError?

    public init(payloadMax: Int = Frame.payloadMaxDefault) {
        precondition(payloadMax > 0, "payloadMax must be positive")
        self.payloadMax = payloadMax
    }

    /// Bytes held that do not yet make a whole frame.
    public var buffered: Int { buffer.count - start }

    public mutating func feed(_ bytes: some Sequence<UInt8>) {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    public mutating func next() throws -> Frame? {
        if let failed { throw failed }
        do {
            return try decodeOne()
        } catch let e as WireError {
            failed = e
            throw e
        }
    }

    private mutating func decodeOne() throws -> Frame? {
        let available = buffer.count - start
        // Check what we have of the header as soon as we have it, so garbage
        // is refused at its first byte, not after a megabyte of waiting.
        if available >= 1, buffer[start] != Frame.magic.0 {
            throw WireError(.badMagic, "byte 0x\([buffer[start]].hex) where a frame starts (expected \"SP\")")
        }
        if available >= 2, buffer[start + 1] != Frame.magic.1 {
            throw WireError(.badMagic, "bytes 0x\(Array(buffer[start..<start + 2]).hex) where a frame starts (expected \"SP\")")
        }
        if available >= 3, buffer[start + 2] != Frame.version {
            throw WireError(.unsupportedVersion, "frame version \(buffer[start + 2]), this build speaks version \(Frame.version)")
        }
        guard available >= Frame.headerLength else { return nil }
        let rawType = buffer[start + 3]
        var length = 0
        for i in 4..<8 { length = length << 8 | Int(buffer[start + i]) }
        guard length <= payloadMax else {
            throw WireError(.frameTooLarge, "frame of \(length) bytes exceeds the limit of \(payloadMax)")
        }
        let total = Frame.headerLength + length + Frame.trailerLength
        guard available >= total else { return nil }
        let crc = buffer.withUnsafeBytes { raw in
            CRC32C.update(0, UnsafeRawBufferPointer(rebasing: raw[(start + 2)..<(start + Frame.headerLength + length)]))
        }
        var expected: UInt32 = 0
        for i in 0..<4 { expected = expected << 8 | UInt32(buffer[start + Frame.headerLength + length + i]) }
        guard crc == expected else {
            throw WireError(.badChecksum, "frame checksum 0x\(String(expected, radix: 16)) does not match its content (0x\(String(crc, radix: 16)))")
        }
        guard let type = FrameType(rawValue: rawType) else {
            throw WireError(.unknownType, "unknown frame type 0x\([rawType].hex)")
        }
        let payload = Array(buffer[(start + Frame.headerLength)..<(start + Frame.headerLength + length)])
        start += total
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: buffer.count <= 64 * 1024)
            start = 0
        }
        return Frame(type: type, payload: payload)
    }
}
