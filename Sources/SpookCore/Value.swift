/// A register value. Equality is by canonical encoding: all NaNs are one NaN,
/// and `-0.0` differs from `0.0` (they are different bytes).
public enum Value: Sendable, CustomStringConvertible {
    case null
    case bool(Bool)
    case int(Int64)
    case float(Double)
    case string(String)
    case bytes([UInt8])

    /// Bound on the UTF-8 size of a string and the size of bytes.
    public static let sizeMax = 64 * 1024
    /// The one NaN the substrate stores and sends (quiet NaN, no payload).
    public static let canonicalNaNBits: UInt64 = 0x7FF8_0000_0000_0000

    public var type: ValueType {
        switch self {
        case .null: .null
        case .bool: .bool
        case .int: .int
        case .float: .float
        case .string: .string
        case .bytes: .bytes
        }
    }

    /// Refuses values over the size bound.
    public func validate(_ context: @autoclosure () -> String) throws {
        switch self {
        case .string(let s) where s.utf8.count > Value.sizeMax:
            throw CoreError(.valueTooLarge, "\(context()): string of \(s.utf8.count) bytes exceeds the limit of \(Value.sizeMax)")
        case .bytes(let b) where b.count > Value.sizeMax:
            throw CoreError(.valueTooLarge, "\(context()): bytes value of \(b.count) bytes exceeds the limit of \(Value.sizeMax)")
        default:
            return
        }
    }

    public var description: String {
        switch self {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .int(let i): "\(i)"
        case .float(let d): d.isNaN ? "nan" : "\(d)"
        case .string(let s): "\"\(s)\""
        case .bytes(let b): "0x\(b.hex)"
        }
    }

    // MARK: canonical encoding
    //
    //   0x00                         null
    //   0x01 u8(0|1)                 bool
    //   0x02 i64                     int (two's complement, big-endian)
    //   0x03 u64                     float (IEEE 754 bits, big-endian, NaN = 0x7FF8000000000000)
    //   0x04 u32 len, len bytes      string (UTF-8)
    //   0x05 u32 len, len bytes      bytes

    public func encode(into w: inout ByteWriter) {
        switch self {
        case .null:
            w.write(UInt8(0))
        case .bool(let b):
            w.write(UInt8(1))
            w.write(UInt8(b ? 1 : 0))
        case .int(let i):
            w.write(UInt8(2))
            w.write(i)
        case .float(let d):
            w.write(UInt8(3))
            w.write(d.isNaN ? Value.canonicalNaNBits : d.bitPattern)
        case .string(let s):
            w.write(UInt8(4))
            w.write(UInt32(s.utf8.count))
            w.write(contentsOf: s.utf8)
        case .bytes(let b):
            w.write(UInt8(5))
            w.write(UInt32(b.count))
            w.write(contentsOf: b)
        }
    }

    public var canonicalBytes: [UInt8] {
        var w = ByteWriter(capacity: 16)
        encode(into: &w)
        return w.bytes
    }

    public static func decode(from r: inout ByteReader) throws -> Value {
        let tag = try r.read(UInt8.self, "value tag")
        switch tag {
        case 0: return .null
        case 1:
            let b = try r.read(UInt8.self, "bool value")
            guard b <= 1 else { throw CoreError(.malformed, "bool value byte is \(b), expected 0 or 1") }
            return .bool(b == 1)
        case 2: return .int(try r.read(Int64.self, "int value"))
        case 3:
            let bits = try r.read(UInt64.self, "float value")
            let d = Double(bitPattern: bits)
            guard !d.isNaN || bits == Value.canonicalNaNBits else {
                throw CoreError(.malformed, "float NaN with bits 0x\(String(bits, radix: 16)) is not the canonical NaN 0x7ff8000000000000")
            }
            return .float(d)
        case 4, 5:
            let count = Int(try r.read(UInt32.self, "value length"))
            guard count <= Value.sizeMax else {
                throw CoreError(.valueTooLarge, "\(tag == 4 ? "string" : "bytes") value of \(count) bytes exceeds the limit of \(Value.sizeMax)")
            }
            let body = try r.readBytes(count, "value body")
            if tag == 5 { return .bytes(Array(body)) }
            guard let s = String(validating: body, as: UTF8.self) else {
                throw CoreError(.malformed, "string value is not valid UTF-8")
            }
            return .string(s)
        default:
            throw CoreError(.malformed, "unknown value tag 0x\([tag].hex)")
        }
    }
}

extension Value: Hashable {
    public static func == (a: Value, b: Value) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.bool(let x), .bool(let y)): x == y
        case (.int(let x), .int(let y)): x == y
        case (.float(let x), .float(let y)):
            (x.isNaN && y.isNaN) || (!x.isNaN && !y.isNaN && x.bitPattern == y.bitPattern)
        case (.string(let x), .string(let y)): x.utf8.elementsEqual(y.utf8)
        case (.bytes(let x), .bytes(let y)): x == y
        default: false
        }
    }

    public func hash(into h: inout Hasher) { h.combine(canonicalBytes) }

    /// Total order on canonical bytes; breaks the (corrupt-duplicate) tie of two
    /// different writes carrying the same stamp, identically on every replica.
    static func canonicalOrder(_ a: Value, _ b: Value) -> Bool {
        a.canonicalBytes.lexicographicallyPrecedes(b.canonicalBytes)
    }
}

/// The type a register may declare. A write of another type is refused;
/// `null` (no value) is accepted by every register.
public enum ValueType: String, Sendable, Hashable, CaseIterable {
    case null, bool, int, float, string, bytes
}
