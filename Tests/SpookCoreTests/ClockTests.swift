import SpookCore
import Testing

@Suite struct ClockTests {
    func t(_ ms: UInt64, _ counter: UInt16) -> HLCTimestamp { try! HLCTimestamp(ms: ms, counter: counter) }

    @Test func tickFollowsPhysicalTimeAndCountsWithinAMillisecond() throws {
        var c = HybridLogicalClock()
        #expect(try c.tick(physicalMs: 1000) == t(1000, 0))
        #expect(try c.tick(physicalMs: 1000) == t(1000, 1))
        #expect(try c.tick(physicalMs: 1001) == t(1001, 0))
    }

    @Test func aPhysicalClockGoingBackwardsNeverMovesTheReadingBack() throws {
        var c = HybridLogicalClock()
        _ = try c.tick(physicalMs: 5000)
        let reading = try c.tick(physicalMs: 4000)
        #expect(reading == t(5000, 1))
    }

    @Test func counterOverflowAdvancesTheMillisecond() throws {
        var c = HybridLogicalClock(last: try HLCTimestamp(ms: 7, counter: .max))
        #expect(try c.tick(physicalMs: 7) == t(8, 0))
    }

    @Test func observeFollowsKulkarni() throws {
        var c = HybridLogicalClock(last: try HLCTimestamp(ms: 100, counter: 3))
        // Remote ahead of both: take its ms, counter + 1.
        #expect(try c.observe(t(200, 5), physicalMs: 150) == t(200, 6))
        // Physical ahead of both: counter resets.
        #expect(try c.observe(t(100, 9), physicalMs: 300) == t(300, 0))
        // All equal: max counter + 1.
        #expect(try c.observe(t(300, 7), physicalMs: 300) == t(300, 8))
        // Local ahead: local counter + 1.
        #expect(try c.observe(t(10, 0), physicalMs: 10) == t(300, 9))
    }

    @Test func aRemoteClockTooFarAheadIsRefusedAndChangesNothing() throws {
        var c = HybridLogicalClock(last: .zero, driftMsMax: 1000)
        let error = #expect(throws: CoreError.self) { try c.observe(t(5001, 0), physicalMs: 4000) }
        #expect(error?.code == .clockDrift)
        #expect(error?.message.contains("1001 ms ahead") == true)
        #expect(c.last == .zero)
        #expect(try c.observe(t(5000, 0), physicalMs: 4000) == t(5000, 1))
    }

    @Test func readingsBeyond48BitsAreRefused() throws {
        var c = HybridLogicalClock()
        #expect(throws: CoreError.self) { try c.tick(physicalMs: HLCTimestamp.msMax + 1) }
        var top = HybridLogicalClock(last: try HLCTimestamp(ms: HLCTimestamp.msMax, counter: .max))
        let error = #expect(throws: CoreError.self) { try top.tick(physicalMs: 0) }
        #expect(error?.code == .clockOverflow)
    }

    @Test func ticksAreStrictlyIncreasingUnderAnyPhysicalClock() throws {
        var random = SplitMix64(seed: 42)
        var c = HybridLogicalClock(driftMsMax: nil)
        var previous = HLCTimestamp.zero
        for _ in 0..<20_000 {
            let physical = 1_000_000 + random.next() % 50
            let next = random.chance(0.3)
                ? try c.observe(HLCTimestamp(rawValue: (1_000_000 + random.next() % 60) << 16), physicalMs: physical)
                : try c.tick(physicalMs: physical)
            #expect(next > previous)
            previous = next
        }
    }
}
