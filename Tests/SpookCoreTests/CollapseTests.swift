import SpookCore
import Testing

/// Random delta sets for the property tests: few origins, clocks and
/// registers, so ties, conflicts and refusals are common.
struct DeltaSetGenerator {
    var random: SplitMix64
    static let domain = try! QDomain("plant")
    static let groups = [try! QGroupName("plant/g1"), try! QGroupName("plant/g2")]
    static let device = try! QGroupName("plant/dev")
    static let owner = Origin(1)
    static let schema = Schema(
        registers: [
            (RegisterSelector(domain: try! QDomainPattern("plant"), group: "dev"), RegisterSpec(type: .int, policy: .device)),
            (RegisterSelector(domain: try! QDomainPattern("plant"), register: "n"), RegisterSpec(type: .int)),
        ],
        owners: [(RegisterSelector(domain: try! QDomainPattern("plant"), group: "dev"), owner)]
    )

    mutating func value() -> Value {
        switch random.next() % 9 {
        case 0: .null
        case 1: .bool(random.chance(0.5))
        case 2, 3: .int(Int64(random.next() % 5))
        case 4: .float([0.0, -0.0, 1.5, .nan, -.nan, .infinity][Int(random.next() % 6)])
        case 5: .string(["", "a", "b", "é"][Int(random.next() % 4)])
        case 6: .bytes([UInt8](repeating: 7, count: Int(random.next() % 3)))
        default: .int(Int64(bitPattern: random.next()))
        }
    }

    mutating func deltaSet() throws -> [Delta] {
        var out: [Delta] = []
        for o in 1...(1 + random.next() % 4) {
            let origin = Origin(o)
            for seq in 1...(1 + random.next() % 8) {
                let hlc = try HLCTimestamp(ms: random.next() % 4, counter: UInt16(random.next() % 3))
                if random.chance(0.3) {
                    let kind: WriteKind = random.chance(0.5) ? .report : .desire
                    let v: Value = random.chance(0.9) ? .int(Int64(random.next() % 4)) : .string("x")
                    out.append(try Delta(origin: origin, seq: seq, hlc: hlc, group: Self.device, writes: [Write("v", kind, v)]))
                } else {
                    var writes: [Write] = []
                    for name in ["a", "b", "c", "n"] where random.chance(0.45) {
                        writes.append(Write(name, random.chance(0.97) ? .set : .desire, value()))
                    }
                    if writes.isEmpty { writes = [Write("a", .set, value())] }
                    out.append(try Delta(origin: origin, seq: seq, hlc: hlc, group: Self.groups[Int(random.next() % 2)], writes: writes))
                }
                // A faulty origin: a different delta under the same (origin, seq).
                if random.chance(0.03) {
                    out.append(try Delta(origin: origin, seq: seq, hlc: hlc, group: Self.groups[0], writes: [Write("a", .set, value())]))
                }
            }
        }
        return out
    }
}

@Suite struct CollapseTests {
    static let cases = 3_000

    static func collapse(_ deltas: [Delta]) -> CollapseState {
        var s = CollapseState(schema: DeltaSetGenerator.schema)
        for d in deltas { _ = try? s.apply(d) }
        return s
    }

    @Test func c1OrderDuplicationAndBatchingGiveByteIdenticalState() throws {
        var gen = DeltaSetGenerator(random: SplitMix64(seed: 0xC1))
        for n in 0..<Self.cases {
            let deltas = try gen.deltaSet()
            let expected = Self.collapse(deltas).canonicalBytes()
            for _ in 0..<4 {
                var shuffled = deltas.shuffled(using: &gen.random)
                // Duplicate some, at random places.
                for _ in 0..<(gen.random.next() % 4) {
                    shuffled.insert(deltas[Int(gen.random.next() % UInt64(deltas.count))], at: Int(gen.random.next() % UInt64(shuffled.count + 1)))
                }
                // Apply in batches of random size: a batch is just its deltas in order.
                var s = CollapseState(schema: DeltaSetGenerator.schema)
                var i = 0
                while i < shuffled.count {
                    let size = 1 + Int(gen.random.next() % 5)
                    for d in shuffled[i..<min(i + size, shuffled.count)] { _ = try? s.apply(d) }
                    i += size
                }
                #expect(s.canonicalBytes() == expected, "case \(n) (seed 0xC1): order changed the state")
            }
        }
    }

    /// An oracle written differently: per register side, the maximum over all
    /// accepted writes, computed in one pass with no incremental merging.
    @Test func stateEqualsTheMaximumOfAllAcceptedWrites() throws {
        var gen = DeltaSetGenerator(random: SplitMix64(seed: 0x0AC1E))
        for n in 0..<Self.cases {
            let deltas = try gen.deltaSet()
            var winners: [String: Versioned] = [:]
            for d in deltas {
                guard (try? DeltaSetGenerator.schema.check(d)) != nil else { continue }
                for w in d.writes {
                    let key = "\(d.group)/\(w.register)|\(w.kind == .desire ? "desired" : w.kind == .report ? "reported" : "value")"
                    let v = Versioned(w.value, d.stamp)
                    if let current = winners[key], !v.beats(current) { continue }
                    winners[key] = v
                }
            }
            var expected: [QRegisterName: RegisterState] = [:]
            for key in winners.keys {
                let parts = key.split(separator: "|")
                let name = try QRegisterName(String(parts[0]))
                switch parts[1] {
                case "value": expected[name] = .lww(winners[key]!)
                default: expected[name] = .device(reported: winners["\(parts[0])|reported"], desired: winners["\(parts[0])|desired"])
                }
            }
            #expect(Self.collapse(deltas).registers == expected, "case \(n)")
        }
    }

    @Test func c2AppliedDeltasAreVisibleWholeAndRefusedOnesNotAtAll() throws {
        var gen = DeltaSetGenerator(random: SplitMix64(seed: 0xC2))
        var refusals = 0
        for _ in 0..<Self.cases {
            var s = CollapseState(schema: DeltaSetGenerator.schema)
            for d in try gen.deltaSet().shuffled(using: &gen.random) {
                let before = s.canonicalBytes()
                do {
                    try s.apply(d)
                } catch {
                    refusals += 1
                    #expect(s.canonicalBytes() == before, "refused \(d) changed the state")
                    continue
                }
                // Every write of d is now visible or superseded by a greater stamp.
                for w in d.writes {
                    let state = s.registers[try d.group.register(w.register)]
                    let side: Versioned?
                    switch (state, w.kind) {
                    case (.lww(let v)?, .set): side = v
                    case (.device(let r, _)?, .report): side = r
                    case (.device(_, let v)?, .desire): side = v
                    default: side = nil
                    }
                    #expect(side.map { $0.stamp >= d.stamp } == true, "\(d): register \(w.register) shows \(String(describing: state))")
                }
            }
        }
        #expect(refusals > 100, "the generator must exercise refusals")
    }

    @Test func c3NoRegisterEverMovesToASmallerStamp() throws {
        var gen = DeltaSetGenerator(random: SplitMix64(seed: 0xC3))
        for _ in 0..<Self.cases {
            var s = CollapseState(schema: DeltaSetGenerator.schema)
            var seen: [String: Stamp] = [:]
            for d in try gen.deltaSet().shuffled(using: &gen.random) {
                for name in ((try? s.apply(d)) ?? []).map(\.name) {
                    let sides: [(String, Versioned?)]
                    switch s.registers[name]! {
                    case .lww(let v): sides = [("v", v)]
                    case .device(let r, let de): sides = [("r", r), ("d", de)]
                    }
                    for (side, v) in sides {
                        guard let v else { continue }
                        let key = "\(name)|\(side)"
                        if let old = seen[key] { #expect(v.stamp >= old, "\(key) moved back from \(old) to \(v.stamp)") }
                        seen[key] = v.stamp
                    }
                }
            }
        }
    }

    @Test func schemaRefusalsNameTheRegisterAndTheRule() throws {
        let s = DeltaSetGenerator.schema
        let hlc = try HLCTimestamp(ms: 1, counter: 0)
        func refusal(_ group: QGroupName, _ write: Write, origin: Origin = Origin(9)) throws -> CoreError? {
            #expect(throws: CoreError.self) { try s.check(try Delta(origin: origin, seq: 1, hlc: hlc, group: group, writes: [write])) }
        }
        let type = try refusal(DeltaSetGenerator.groups[0], Write("n", .set, .string("five")))
        #expect(type?.code == .typeMismatch)
        #expect(type?.message.contains("register plant/g1/n is declared int, the write is string") == true)
        let kind = try refusal(DeltaSetGenerator.device, Write("v", .set, .int(1)))
        #expect(kind?.code == .kindNotAllowed)
        #expect(kind?.message.contains("policy device") == true)
        let lwwKind = try refusal(DeltaSetGenerator.groups[0], Write("a", .report, .int(1)))
        #expect(lwwKind?.code == .kindNotAllowed)
        let owner = try refusal(DeltaSetGenerator.device, Write("v", .report, .int(1)))
        #expect(owner?.code == .notOwner)
        #expect(owner?.message.contains("only the owner 0000000000000001") == true)
        // null is accepted by a typed register; the owner may report; anyone may desire.
        try s.check(try Delta(origin: Origin(9), seq: 1, hlc: hlc, group: DeltaSetGenerator.groups[0], writes: [Write("n", .set, .null)]))
        try s.check(try Delta(origin: DeltaSetGenerator.owner, seq: 1, hlc: hlc, group: DeltaSetGenerator.device, writes: [Write("v", .report, .int(1))]))
        try s.check(try Delta(origin: Origin(9), seq: 1, hlc: hlc, group: DeltaSetGenerator.device, writes: [Write("v", .desire, .int(1))]))
    }

    @Test func oneBadWriteRefusesTheWholeDelta() throws {
        var s = CollapseState(schema: DeltaSetGenerator.schema)
        let d = try Delta(origin: Origin(2), seq: 1, hlc: HLCTimestamp(ms: 5, counter: 0), group: DeltaSetGenerator.groups[0],
                          writes: [Write("a", .set, .int(1)), Write("n", .set, .bool(true))])
        #expect(throws: CoreError.self) { try s.apply(d) }
        #expect(s.registers.isEmpty)
    }

    @Test func desiredIsPendingWhileNewerThanReportedAndDifferent() throws {
        var s = CollapseState(schema: DeltaSetGenerator.schema)
        let name = try DeltaSetGenerator.device.register("v")
        func write(_ origin: UInt64, _ seq: UInt64, _ ms: UInt64, _ kind: WriteKind, _ v: Int64) throws {
            try s.apply(try Delta(origin: Origin(origin), seq: seq, hlc: HLCTimestamp(ms: ms, counter: 0), group: DeltaSetGenerator.device, writes: [Write("v", kind, .int(v))]))
        }
        try write(1, 1, 10, .report, 5)
        #expect(s.registers[name]?.pendingDesired == nil)
        try write(2, 1, 20, .desire, 7)
        #expect(s.registers[name]?.pendingDesired?.value == .int(7))
        #expect(s.registers[name]?.value == .int(5), "applications read what the device reported")
        try write(1, 2, 30, .report, 7)
        #expect(s.registers[name]?.pendingDesired == nil, "the report settled it")
        try write(2, 2, 40, .desire, 7)
        #expect(s.registers[name]?.pendingDesired == nil, "desired equal to reported is not pending")
    }

    @Test func registerStateEncodingRoundTripsAndRefusesUnknownTags() throws {
        let stamp = Stamp(hlc: try HLCTimestamp(ms: 1, counter: 2), origin: Origin(3), seq: 4)
        let states: [RegisterState] = [
            .lww(Versioned(.int(1), stamp)),
            .device(reported: nil, desired: Versioned(.float(.nan), stamp)),
            .device(reported: Versioned(.null, stamp), desired: nil),
        ]
        for state in states { #expect(try RegisterState.decode(state.encoded) == state) }
        #expect(states[1].encoded.hex == "0102" + "037ff8000000000000" + "0000000000010002" + "0000000000000003" + "0000000000000004")
        #expect(throws: CoreError.self) { try RegisterState.decode([2]) }
        #expect(throws: CoreError.self) { try RegisterState.decode([1, 4]) }
    }
}
