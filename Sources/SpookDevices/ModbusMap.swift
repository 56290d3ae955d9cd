import SpookCore

/// One mapped Modbus point: where it lives, how its words become a value.
public struct ModbusPoint: Hashable, Sendable {
    public enum Table: String, Sendable, CaseIterable {
        case coil, discrete, input, holding

        public var isBits: Bool { self == .coil || self == .discrete }
        public var isWritable: Bool { self == .coil || self == .holding }
    }

    public enum DataType: String, Sendable, CaseIterable {
        case bool, u16, i16, u32, i32, f32, u64, i64, f64

        public var words: Int {
            switch self {
            case .bool, .u16, .i16: 1
            case .u32, .i32, .f32: 2
            case .u64, .i64, .f64: 4
            }
        }
    }

    public enum WordOrder: String, Sendable {
        /// High word first (Modbus convention, "ABCD").
        case big
        /// Low word first ("CDAB").
        case little
    }

    /// The order of the two bytes within each register.
    public enum ByteOrder: String, Sendable {
        /// High byte first (the Modbus convention).
        case big
        /// Low byte first ("BADC" with big word order, "DCBA" with little).
        case little
    }

    public var name: String
    public var table: Table
    public var address: Int
    public var type: DataType
    public var wordOrder: WordOrder = .big
    public var byteOrder: ByteOrder = .big
    /// value = raw · scale; a scale other than 1 makes the register a float.
    public var scale: Double = 1
    public var writable: Bool = false

    public init(name: String, table: Table, address: Int, type: DataType, wordOrder: WordOrder = .big, byteOrder: ByteOrder = .big,
                scale: Double = 1, writable: Bool = false) {
        self.name = name
        self.table = table
        self.address = address
        self.type = table.isBits ? .bool : type
        self.wordOrder = wordOrder
        self.byteOrder = byteOrder
        self.scale = scale
        self.writable = writable
    }

    /// Registers (16-bit words) or bits this point occupies.
    public var width: Int { table.isBits ? 1 : type.words }

    /// The value of this point given its words (bit tables: one word, 0 or 1).
    public func decode(_ words: ArraySlice<UInt16>) -> Value {
        let w = Array(words)
        if table.isBits || type == .bool { return .bool(w[0] != 0) }
        // Words as they are on the wire, each byte-swapped if the device stores
        // low bytes first, then joined most significant first.
        let ordered = (wordOrder == .big ? w : w.reversed()).map { byteOrder == .big ? $0 : $0.byteSwapped }
        let raw = ordered.reduce(UInt64(0)) { $0 << 16 | UInt64($1) }
        let number: Double
        switch type {
        case .u16: number = Double(raw & 0xFFFF)
        case .i16: number = Double(Int16(truncatingIfNeeded: raw))
        case .u32: number = Double(raw & 0xFFFF_FFFF)
        case .i32: number = Double(Int32(truncatingIfNeeded: raw))
        case .f32: return .float(scaled(Float(bitPattern: UInt32(truncatingIfNeeded: raw)).shortestDouble))
        case .f64: return .float(scaled(Double(bitPattern: raw)))
        case .i64:
            if scale == 1 { return .int(Int64(bitPattern: raw)) }
            number = Double(Int64(bitPattern: raw))
        case .u64:
            // Above Int64.max a u64 can only be a float.
            if scale == 1 { return raw <= UInt64(Int64.max) ? .int(Int64(raw)) : .float(Double(raw)) }
            number = Double(raw)
        case .bool: number = 0
        }
        if scale == 1 { return .int(Int64(number)) }
        return .float(scaled(number))
    }

    /// raw · scale, computed as raw / 10ⁿ when the scale is 1/10ⁿ, so 259 · 0.1 reads 25.9, not 25.900000000000002.
    func scaled(_ raw: Double) -> Double {
        let inverse = 1 / scale
        return scale < 1 && inverse == inverse.rounded() ? raw / inverse : raw * scale
    }

    /// The words that make the device hold `value`; nil when it does not fit.
    public func encode(_ value: Value) -> [UInt16]? {
        if table.isBits || type == .bool {
            switch value {
            case .bool(let b): return [b ? 1 : 0]
            case .int(let i) where i == 0 || i == 1: return [UInt16(i)]
            default: return nil
            }
        }
        let number: Double
        switch value {
        case .int(let i): number = Double(i)
        case .float(let d) where d.isFinite: number = d
        default: return nil
        }
        let inverse = 1 / scale
        let scaled = scale < 1 && inverse == inverse.rounded() ? number * inverse : number / scale
        let raw: UInt64
        switch (type, value) {
        case (.i64, .int(let i)) where scale == 1: raw = UInt64(bitPattern: i)
        case (.u64, .int(let i)) where scale == 1:
            guard i >= 0 else { return nil }
            raw = UInt64(i)
        case (.f64, _): raw = scaled.bitPattern
        case (.f32, _): raw = UInt64(Float(scaled).bitPattern)
        case (.u16, _):
            guard let v = UInt16(exactly: scaled.rounded()) else { return nil }
            raw = UInt64(v)
        case (.i16, _):
            guard let v = Int16(exactly: scaled.rounded()) else { return nil }
            raw = UInt64(UInt16(bitPattern: v))
        case (.u32, _):
            guard let v = UInt32(exactly: scaled.rounded()) else { return nil }
            raw = UInt64(v)
        case (.i32, _):
            guard let v = Int32(exactly: scaled.rounded()) else { return nil }
            raw = UInt64(UInt32(bitPattern: v))
        case (.u64, _):
            guard let v = UInt64(exactly: scaled.rounded()) else { return nil }
            raw = v
        case (.i64, _):
            guard let v = Int64(exactly: scaled.rounded()) else { return nil }
            raw = UInt64(bitPattern: v)
        case (.bool, _): return nil
        }
        let n = type.words
        let mostSignificantFirst = (0..<n).map { i in UInt16(truncatingIfNeeded: raw >> (16 * UInt64(n - 1 - i))) }
        let swapped = mostSignificantFirst.map { byteOrder == .big ? $0 : $0.byteSwapped }
        return wordOrder == .big ? swapped : swapped.reversed()
    }
}

/// One read transaction: a contiguous span of one table, and the points in it.
public struct ModbusRead: Hashable, Sendable {
    public var table: ModbusPoint.Table
    public var address: Int
    public var count: Int
    public var points: [ModbusPoint]

    public init(table: ModbusPoint.Table, address: Int, count: Int, points: [ModbusPoint]) {
        self.table = table
        self.address = address
        self.count = count
        self.points = points
    }
}

public enum ModbusPlan {
    /// Registers per read (the protocol's limit for function 3 and 4).
    public static let registersMax = 125
    /// Bits per read (function 1 and 2).
    public static let bitsMax = 2000

    /// The fewest reads that cover every point: per table, points sorted by
    /// address; a span grows over adjacent (or overlapping) addresses while it
    /// stays within the per-request limit. Gaps are not read across: an
    /// address nobody mapped may not exist on the device and would fail the
    /// whole request with an exception.
    public static func reads(_ points: [ModbusPoint]) -> [ModbusRead] {
        var out: [ModbusRead] = []
        for table in ModbusPoint.Table.allCases {
            let sorted = points.filter { $0.table == table }.sorted { ($0.address, $0.name) < ($1.address, $1.name) }
            let limit = table.isBits ? bitsMax : registersMax
            var current: ModbusRead?
            for p in sorted {
                let end = p.address + p.width
                if var c = current, p.address <= c.address + c.count, max(c.address + c.count, end) - c.address <= limit {
                    c.count = max(c.count, end - c.address)
                    c.points.append(p)
                    current = c
                } else {
                    if let c = current { out.append(c) }
                    current = ModbusRead(table: table, address: p.address, count: p.width, points: [p])
                }
            }
            if let c = current { out.append(c) }
        }
        return out
    }

    /// Values of a read's points from the words (or bits as 0/1) it returned.
    public static func values(_ read: ModbusRead, _ words: [UInt16]) -> [(ModbusPoint, Value)] {
        read.points.map { p in
            let start = p.address - read.address
            return (p, p.decode(words[start..<(start + p.width)]))
        }
    }
}

extension Float {
    /// The double that prints like this float: 21.3f becomes 21.3, not 21.299999237060547.
    var shortestDouble: Double { isFinite ? Double(description) ?? Double(self) : Double(self) }
}
