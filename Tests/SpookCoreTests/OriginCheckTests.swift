import SpookCore
import Testing

@Suite struct OriginCheckTests {
    static let held: [UInt64: HLCTimestamp] = [5: HLCTimestamp(rawValue: 500), 9: HLCTimestamp(rawValue: 900)]
    func judge(weHold: UInt64, horizon: UInt64 = 0, peerHolds: UInt64, peerHLC: UInt64?) -> OriginCheck.Verdict {
        OriginCheck.judge(weHold: weHold, horizon: horizon, ourHLC: { Self.held[$0] }, peerHolds: peerHolds, peerHLC: peerHLC.map(HLCTimestamp.init(rawValue:)))
    }

    @Test func aPeerHoldingAPrefixWithTheSameDeltaIsConsistent() {
        #expect(judge(weHold: 9, peerHolds: 5, peerHLC: 500) == .consistent)
        #expect(judge(weHold: 9, peerHolds: 9, peerHLC: 900) == .consistent)
        #expect(judge(weHold: 9, peerHolds: 0, peerHLC: nil) == .consistent)
    }

    @Test func aPeerHoldingMoreMeansOurStoreIsBehind() {
        #expect(judge(weHold: 9, peerHolds: 12, peerHLC: 1_200) == .behind(peerHolds: 12, weHold: 9))
    }

    @Test func anotherDeltaUnderTheSameSeqIsAFork() {
        #expect(judge(weHold: 9, peerHolds: 5, peerHLC: 777) == .forked(seq: 5))
    }

    @Test func whatCannotBeComparedIsNotAccused() {
        #expect(judge(weHold: 9, peerHolds: 5, peerHLC: nil) == .consistent, "no tip sent")
        #expect(judge(weHold: 9, horizon: 6, peerHolds: 5, peerHLC: 777) == .consistent, "compacted away")
        #expect(judge(weHold: 9, peerHolds: 7, peerHLC: 700) == .consistent, "not held here (a gap cannot happen; nothing to compare)")
    }
}
