/// Per-origin highest seq that a replica holds contiguously (or, kept for a
/// peer, that the peer has acknowledged as durable). Absent origins are 0.
public struct QStateVector: Hashable, Sendable, CustomStringConvertible {
    public private(set) var entries: [Origin: UInt64]

    public init(_ entries: [Origin: UInt64] = [:]) {
        self.entries = entries.filter { $0.value > 0 }
    }

    /// `entries` holds no zero seq (the caller checked).
    init(validated entries: [Origin: UInt64]) {
        self.entries = entries
    }

    public subscript(origin: Origin) -> UInt64 {
        get { entries[origin] ?? 0 }
        set { entries[origin] = newValue == 0 ? nil : newValue }
    }

    public func contains(_ id: DeltaID) -> Bool { id.seq <= self[id.origin] }

    /// Holds everything `other` holds (`compare` says equal or ahead),
    /// looking only at `other`'s origins.
    public func covers(_ other: QStateVector) -> Bool {
        other.entries.allSatisfy { self[$0.key] >= $0.value }
    }

    /// Origins in ascending order: iterate this, never the dictionary, where
    /// order can be observed (determinism).
    public var origins: [Origin] { entries.keys.sorted() }

    /// Pointwise maximum.
    public mutating func merge(_ other: QStateVector) {
        for (o, s) in other.entries where s > self[o] { self[o] = s }
    }

    public func merged(_ other: QStateVector) -> QStateVector {
        var v = self
        v.merge(other)
        return v
    }

    /// Pointwise minimum (origins missing from either count as 0).
    public func meet(_ other: QStateVector) -> QStateVector {
        var out = QStateVector()
        for (o, s) in entries { out[o] = min(s, other[o]) }
        return out
    }

    public enum Order: Sendable, Hashable {
        case equal, ahead, behind, concurrent
    }

    /// Compares as a partial order: `ahead` when self holds everything other
    /// holds and more.
    /// No set of origins is built: a daemon compares a thousand agents'
    /// vectors of a thousand origins for each metrics scrape.
    public func compare(_ other: QStateVector) -> Order {
        var someAhead = false
        var someBehind = false
        var shared = 0
        for (o, a) in entries {
            guard let b = other.entries[o] else {
                someAhead = true
                continue
            }
            shared += 1
            if a > b { someAhead = true }
            if a < b { someBehind = true }
        }
        // No entry is zero, so an origin only `other` holds puts it ahead.
        if other.entries.count > shared { someBehind = true }
        switch (someAhead, someBehind) {
        case (false, false): return .equal
        case (true, false): return .ahead
        case (false, true): return .behind
        case (true, true): return .concurrent
        }
    }

    /// A run of one origin's seqs, `first...last`.
    public struct Range: Hashable, Sendable, CustomStringConvertible {
        public let origin: Origin
        public let first: UInt64
        public let last: UInt64
        public var count: UInt64 { last - first + 1 }
        public var description: String { "\(origin)#\(first)...\(last)" }
    }

    /// What a peer holding `peer` lacks of what self holds, origin by origin
    /// in ascending order.
    public func lacking(in peer: QStateVector) -> [Range] {
        origins.compactMap { o in
            let mine = self[o], theirs = peer[o]
            return mine > theirs ? Range(origin: o, first: theirs + 1, last: mine) : nil
        }
    }

    public var total: UInt64 { entries.values.reduce(0, +) }

    public var description: String {
        "[" + origins.map { "\($0):\(self[$0])" }.joined(separator: ", ") + "]"
    }

    // u32 count, then (u64 origin, u64 seq) in ascending origin order.
    public func encode(into w: inout ByteWriter) {
        w.write(UInt32(entries.count))
        for (o, s) in entries.sorted(by: { $0.key < $1.key }) {
            w.write(o.rawValue)
            w.write(s)
        }
    }

    public static func decode(from r: inout ByteReader) throws -> QStateVector {
        let count = Int(try r.read(UInt32.self, "vector length"))
        guard count <= r.remaining / 16 else {
            throw CoreError(.truncated, "vector of \(count) entries needs \(count * 16) bytes, \(r.remaining) left")
        }
        // Sized once: growing a 1,000-origin dictionary entry by entry was
        // most of an agent's time spent on a daemon's ACKs.
        var entries = [Origin: UInt64](minimumCapacity: count)
        var previous: Origin?
        for _ in 0..<count {
            let o = Origin(try r.read(UInt64.self, "vector origin"))
            let s = try r.read(UInt64.self, "vector seq")
            if let p = previous, p >= o {
                throw CoreError(.malformed, "vector origins are not in ascending order at \(o)")
            }
            previous = o
            if s > 0 { entries[o] = s }
        }
        return QStateVector(validated: entries)
    }
}
