/// A hybrid logical clock reading: 48 bits of Unix milliseconds, 16 bits of
/// counter, packed as `ms << 16 | counter` so the packed integer orders the
/// same way as the pair.
public struct HLCTimestamp: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let msMax: UInt64 = (1 << 48) - 1

    public let rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public init(ms: UInt64, counter: UInt16) throws {
        guard ms <= HLCTimestamp.msMax else {
            throw CoreError(.clockOverflow, "clock reading \(ms) ms does not fit in 48 bits (max \(HLCTimestamp.msMax))")
        }
        rawValue = ms << 16 | UInt64(counter)
    }

    public static let zero = HLCTimestamp(rawValue: 0)

    public var ms: UInt64 { rawValue >> 16 }
    public var counter: UInt16 { UInt16(truncatingIfNeeded: rawValue) }
    public var description: String { "\(ms).\(counter)" }
    public static func < (a: HLCTimestamp, b: HLCTimestamp) -> Bool { a.rawValue < b.rawValue }
}

/// The physical clock, injected: production reads the system clock, the
/// simulation and the tests drive a manual one.
public protocol PhysicalClock: Sendable {
    /// Unix time in milliseconds.
    func nowMs() -> UInt64
}

/// Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).
///
/// Pure: every operation takes the physical reading as an argument. When the
/// 16-bit counter would overflow, the logical milliseconds advance by one
/// instead, so readings stay strictly increasing.
public struct HybridLogicalClock: Sendable {
    public private(set) var last: HLCTimestamp
    /// A remote reading more than this far ahead of our physical clock is
    /// refused (`clock-drift`): a peer with a broken clock must not drag every
    /// replica's clock into the future. `nil` accepts any reading.
    public let driftMsMax: UInt64?

    public init(last: HLCTimestamp = .zero, driftMsMax: UInt64? = 60_000) {
        self.last = last
        self.driftMsMax = driftMsMax
    }

    /// A reading for a local event or a send.
    public mutating func tick(physicalMs: UInt64) throws -> HLCTimestamp {
        let pt = try HLCTimestamp(ms: physicalMs, counter: 0)
        if pt.ms > last.ms {
            last = pt
        } else {
            last = try HybridLogicalClock.increment(last)
        }
        return last
    }

    /// Refuses a remote reading more than `driftMsMax` ahead of `physicalMs`
    /// (SUBSTRATE.md §6: time from peers is bounded). A reading behind our
    /// clock is always fine: it is old news, and collapse orders it.
    public static func checkRemote(_ remote: HLCTimestamp, physicalMs: UInt64, driftMsMax: UInt64) throws {
        if remote.ms > physicalMs, remote.ms - physicalMs > driftMsMax {
            throw CoreError(.clockDrift, "remote clock \(remote) is \(remote.ms - physicalMs) ms ahead of the local clock, the limit is \(driftMsMax) ms")
        }
    }

    /// Merges a remote reading on receive; returns the new local reading.
    public mutating func observe(_ remote: HLCTimestamp, physicalMs: UInt64) throws -> HLCTimestamp {
        _ = try HLCTimestamp(ms: physicalMs, counter: 0)
        if let bound = driftMsMax { try HybridLogicalClock.checkRemote(remote, physicalMs: physicalMs, driftMsMax: bound) }
        let ms = max(last.ms, remote.ms, physicalMs)
        let next: HLCTimestamp
        if ms == last.ms && ms == remote.ms {
            next = try HybridLogicalClock.increment(max(last, remote))
        } else if ms == last.ms {
            next = try HybridLogicalClock.increment(last)
        } else if ms == remote.ms {
            next = try HybridLogicalClock.increment(remote)
        } else {
            next = try HLCTimestamp(ms: ms, counter: 0)
        }
        last = next
        return next
    }

    static func increment(_ t: HLCTimestamp) throws -> HLCTimestamp {
        if t.counter == UInt16.max { return try HLCTimestamp(ms: t.ms + 1, counter: 0) }
        return HLCTimestamp(rawValue: t.rawValue + 1)
    }
}
