/// A node's id: the first 8 bytes of SHA-256 of its Ed25519 public key,
/// read big-endian. Printed as 16 hex digits.
public struct Origin: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public init?(hex: String) {
        guard hex.utf8.count == 16, let v = UInt64(hex, radix: 16) else { return nil }
        rawValue = v
    }

    public var description: String {
        let s = String(rawValue, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    public static func < (a: Origin, b: Origin) -> Bool { a.rawValue < b.rawValue }
}

/// The total order of writes: `(hlc, origin, seq)`. Every replica picks the
/// same winner between two stamps.
public struct Stamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let hlc: HLCTimestamp
    public let origin: Origin
    public let seq: UInt64

    public init(hlc: HLCTimestamp, origin: Origin, seq: UInt64) {
        self.hlc = hlc
        self.origin = origin
        self.seq = seq
    }

    public static func < (a: Stamp, b: Stamp) -> Bool {
        (a.hlc, a.origin, a.seq) < (b.hlc, b.origin, b.seq)
    }

    public var description: String { "\(hlc)@\(origin)#\(seq)" }

    func encode(into w: inout ByteWriter) {
        w.write(hlc.rawValue)
        w.write(origin.rawValue)
        w.write(seq)
    }

    static func decode(from r: inout ByteReader) throws -> Stamp {
        let hlc = HLCTimestamp(rawValue: try r.read(UInt64.self, "stamp hlc"))
        let origin = Origin(try r.read(UInt64.self, "stamp origin"))
        let seq = try r.read(UInt64.self, "stamp seq")
        return Stamp(hlc: hlc, origin: origin, seq: seq)
    }
}

/// What a write means: `set` (an ordinary `lww` write), `report` (the device
/// says what it has) or `desire` (a request that the device take this value).
public enum WriteKind: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case set = 0
    case report = 1
    case desire = 2

    public var description: String {
        switch self {
        case .set: "set"
        case .report: "report"
        case .desire: "desire"
        }
    }

    public init?(name: String) {
        guard let k = WriteKind.allCases.first(where: { $0.description == name }) else { return nil }
        self = k
    }
}

public struct Write: Hashable, Sendable {
    /// The register's name inside the delta's group.
    public let register: String
    public let kind: WriteKind
    public let value: Value

    public init(_ register: String, _ kind: WriteKind = .set, _ value: Value) {
        self.register = register
        self.kind = kind
        self.value = value
    }
}

/// One atomic write to one group. Construction validates everything that does
/// not depend on the schema: names, sizes, counts, no register twice.
public struct Delta: Hashable, Sendable, CustomStringConvertible {
    public static let writesMax = 1024
    /// The largest encoding a node writes: half a frame (frames are bounded at
    /// 1 MiB), so any delta fits a DELTAS frame of its own and a batch of them.
    public static let encodedBytesMax = 512 * 1024

    /// Refuses a delta that could never be sent (`encodedBytesMax`), naming
    /// the group, the size and its largest write.
    public func checkSize() throws {
        let size = encoded.count
        guard size > Delta.encodedBytesMax else { return }
        var largest = (name: "", bytes: 0)
        for w in writes {
            var b = ByteWriter()
            w.value.encode(into: &b)
            if b.bytes.count > largest.bytes { largest = (w.register, b.bytes.count) }
        }
        throw CoreError(.deltaTooLarge, "a write to \(group) encodes to \(size) bytes, the limit is \(Delta.encodedBytesMax) "
                        + "(largest: register \"\(largest.name)\", \(largest.bytes) bytes): split it over several writes")
    }

    public let origin: Origin
    public let seq: UInt64
    public let hlc: HLCTimestamp
    public let group: QGroupName
    public let writes: [Write]
    /// The full name of each write's register, validated once here.
    public let names: [QRegisterName]

    public init(origin: Origin, seq: UInt64, hlc: HLCTimestamp, group: QGroupName, writes: [Write]) throws {
        // Built only for an error: a fleet's daemon decodes tens of thousands of deltas a second.
        var at: String { "delta \(origin)#\(seq) to \(group)" }
        guard seq >= 1 else { throw CoreError(.invalidSeq, "\(at): seq must be 1 or more") }
        guard !writes.isEmpty else { throw CoreError(.emptyDelta, "\(at): a delta carries at least one write") }
        guard writes.count <= Delta.writesMax else {
            throw CoreError(.tooManyWrites, "\(at): \(writes.count) writes, the limit is \(Delta.writesMax)")
        }
        var names: [QRegisterName] = []
        names.reserveCapacity(writes.count)
        for (i, w) in writes.enumerated() {
            let name = try QRegisterName(group: group, name: w.register)
            try w.value.validate("\(at): register \"\(w.register)\"")
            // Deltas are small (usually a handful of writes): a scan beats hashing.
            guard !names[..<i].contains(where: { $0.name == w.register }) else {
                throw CoreError(.duplicateRegister, "\(at): register \"\(w.register)\" is written twice in one delta")
            }
            names.append(name)
        }
        self.names = names
        self.origin = origin
        self.seq = seq
        self.hlc = hlc
        self.group = group
        self.writes = writes
    }

    public var stamp: Stamp { Stamp(hlc: hlc, origin: origin, seq: seq) }
    public var id: DeltaID { DeltaID(origin: origin, seq: seq) }
    public var description: String { "delta \(origin)#\(seq) @\(hlc) \(group) \(writes.count) write(s)" }

    // MARK: canonical encoding
    //
    //   u64 origin, u64 seq, u64 hlc,
    //   u16 len + group name (UTF-8, "domain/group"),
    //   u16 write count, then per write:
    //     u8 len + register name, u8 kind, value

    public func encode(into w: inout ByteWriter) {
        w.write(origin.rawValue)
        w.write(seq)
        w.write(hlc.rawValue)
        let g = group.description.utf8
        w.write(UInt16(g.count))
        w.write(contentsOf: g)
        w.write(UInt16(writes.count))
        for write in writes {
            w.write(UInt8(write.register.utf8.count))
            w.write(contentsOf: write.register.utf8)
            w.write(write.kind.rawValue)
            write.value.encode(into: &w)
        }
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 64)
        encode(into: &w)
        return w.bytes
    }

    /// `previousGroup`: the group of the delta decoded before this one (in
    /// the same frame): the same bytes are that name, already checked. A
    /// writer's frame is mostly one group, and checking its name again for
    /// each delta was a tenth of a loaded daemon's time.
    public static func decode(from r: inout ByteReader, previousGroup: QGroupName? = nil) throws -> Delta {
        let origin = Origin(try r.read(UInt64.self, "delta origin"))
        let seq = try r.read(UInt64.self, "delta seq")
        let hlc = HLCTimestamp(rawValue: try r.read(UInt64.self, "delta hlc"))
        let groupLength = Int(try r.read(UInt16.self, "group length"))
        let groupBytes = try r.readBytes(groupLength, "group name")
        let group: QGroupName
        if let previousGroup, previousGroup.description.utf8.elementsEqual(groupBytes) {
            group = previousGroup
        } else {
            guard let groupText = String(validating: groupBytes, as: UTF8.self) else {
                throw CoreError(.malformed, "group name is not valid UTF-8")
            }
            group = try QGroupName(groupText)
        }
        let count = Int(try r.read(UInt16.self, "write count"))
        guard count <= Delta.writesMax else {
            throw CoreError(.tooManyWrites, "delta \(origin)#\(seq): \(count) writes, the limit is \(Delta.writesMax)")
        }
        var writes = [Write]()
        writes.reserveCapacity(count)
        for i in 0..<count {
            let nameLength = Int(try r.read(UInt8.self, "register name length of write \(i)"))
            let nameBytes = try r.readBytes(nameLength, "register name of write \(i)")
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw CoreError(.malformed, "register name of write \(i) is not valid UTF-8")
            }
            let rawKind = try r.read(UInt8.self, "kind of write \(i)")
            guard let kind = WriteKind(rawValue: rawKind) else {
                throw CoreError(.malformed, "write \(i): unknown kind \(rawKind)")
            }
            writes.append(Write(name, kind, try Value.decode(from: &r)))
        }
        return try Delta(origin: origin, seq: seq, hlc: hlc, group: group, writes: writes)
    }

    /// Decodes one delta that fills `bytes` exactly.
    public static func decode(_ bytes: [UInt8]) throws -> Delta {
        var r = ByteReader(bytes)
        let d = try decode(from: &r)
        try r.expectEnd("delta")
        return d
    }
}

/// A delta's identity: `(origin, seq)`.
public struct DeltaID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let origin: Origin
    public let seq: UInt64
    public init(origin: Origin, seq: UInt64) {
        self.origin = origin
        self.seq = seq
    }
    public static func < (a: DeltaID, b: DeltaID) -> Bool { (a.origin, a.seq) < (b.origin, b.seq) }
    public var description: String { "\(origin)#\(seq)" }
}
