#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookSimulation
import SpookTestSupport
import Testing

/// The broken rule of the canary: last arrival wins. Order-dependent, so it
/// must make replicas that saw the same deltas in different orders diverge.
struct LastArrivalWins: CollapseRule {
    func merge(_ current: RegisterState?, write: Write, stamp: Stamp, policy: Policy) -> RegisterState? {
        let v = Versioned(write.value, stamp)
        let next: RegisterState
        switch (current, write.kind) {
        case (.device(let r, _)?, .desire): next = .device(reported: r, desired: v)
        case (.device(_, let d)?, .report): next = .device(reported: v, desired: d)
        case (nil, .desire): next = .device(reported: nil, desired: v)
        case (nil, .report): next = .device(reported: v, desired: nil)
        default: next = .lww(v)
        }
        return next == current ? nil : next
    }

    func merge(_ current: RegisterState?, snapshot: RegisterState) -> RegisterState? {
        snapshot == current ? nil : snapshot
    }
}

/// A subtler broken rule: compares clocks only and keeps the first arrival
/// on equal HLCs. Never moves a register back (C3 holds), so only the
/// convergence check can catch it.
struct FirstArrivalOnClockTies: CollapseRule {
    func merge(_ current: RegisterState?, write: Write, stamp: Stamp, policy: Policy) -> RegisterState? {
        let incoming = Versioned(write.value, stamp)
        func pick(_ old: Versioned?) -> Versioned { old.map { incoming.stamp.hlc > $0.stamp.hlc ? incoming : $0 } ?? incoming }
        let next: RegisterState
        switch (current, write.kind) {
        case (.lww(let v)?, _): next = .lww(pick(v))
        case (.device(let r, let d)?, .report): next = .device(reported: pick(r), desired: d)
        case (.device(let r, let d)?, _): next = .device(reported: r, desired: pick(d))
        case (nil, .report): next = .device(reported: incoming, desired: nil)
        case (nil, .desire): next = .device(reported: nil, desired: incoming)
        case (nil, _): next = .lww(incoming)
        }
        return next == current ? nil : next
    }

    func merge(_ current: RegisterState?, snapshot: RegisterState) -> RegisterState? {
        QSCS().merge(current, snapshot: snapshot)
    }
}

@Suite struct SimulationTests {
    /// CI runs seeds 1...200 in four chunks (two cores); `spook-sim run --seeds N --first S` runs more.
    static let chunks: [ClosedRange<UInt64>] = [1...50, 51...100, 101...150, 151...200]

    @Test(arguments: chunks)
    func everySeedConvergesWithNothingAcknowledgedLost(_ seeds: ClosedRange<UInt64>) {
        let dir = TemporaryDirectory()
        var acknowledged = 0, crashes = 0, snapshots = 0, dropped = 0
        for seed in seeds {
            let outcome = Simulation(config: .init(seed: seed), directory: dir.path).run()
            // A failing seed prints itself with the command that replays it.
            #expect(outcome.failure == nil, "\(outcome.failure ?? "")")
            acknowledged += outcome.acknowledged
            crashes += outcome.crashes
            snapshots += outcome.snapshots
            dropped += outcome.dropped
        }
        // The runs must really exercise writes and faults.
        #expect(acknowledged > 1_000 * seeds.count / 50)
        #expect(crashes > 0 && dropped > 0)
        print("seeds \(seeds): \(acknowledged) acknowledged deltas, \(crashes) crash-restarts, \(dropped) dropped messages, \(snapshots) snapshots")
    }

    static func firstFailure(_ rule: any CollapseRule) -> Simulation.Outcome? {
        let dir = TemporaryDirectory()
        for seed in UInt64(1)...200 {
            let outcome = Simulation(config: .init(seed: seed), rule: rule, directory: dir.path).run()
            if !outcome.passed { return outcome }
        }
        return nil
    }

    /// The canary: last-arrival-wins must be caught within the CI seeds.
    @Test func theCanaryLastArrivalWinsIsCaughtWithinTheCISeeds() {
        let caught = Self.firstFailure(LastArrivalWins())
        #expect(caught != nil, "last-arrival-wins survived 200 seeds: the simulator cannot fail")
        #expect(caught?.failure?.contains("reproduce: spook-sim --seed \(caught?.seed ?? 0)") == true, "\(caught?.failure ?? "")")
        if let caught { print("canary last-arrival-wins caught at seed \(caught.seed): \(caught.failure ?? "")") }
    }

    /// A monotone but order-dependent rule gets past the store's C3 guard and
    /// must still be caught, by the convergence check.
    @Test func aMonotoneOrderDependentRuleIsCaughtByDivergence() {
        let caught = Self.firstFailure(FirstArrivalOnClockTies())
        #expect(caught?.failure?.contains("diverged") == true, "\(caught?.failure ?? "not caught in 200 seeds")")
        if let caught { print("canary first-arrival-on-ties caught at seed \(caught.seed)") }
    }

    @Test(arguments: [UInt64(7), 123, 4_242])
    func aSeedReplaysExactly(_ seed: UInt64) {
        let dir = TemporaryDirectory()
        let a = Simulation(config: .init(seed: seed), directory: dir.path).run()
        let b = Simulation(config: .init(seed: seed), directory: dir.path).run()
        #expect(a.traceDigest == b.traceDigest)
        #expect(a.acknowledged == b.acknowledged && a.delivered == b.delivered && a.crashes == b.crashes && a.snapshots == b.snapshots)
        let other = Simulation(config: .init(seed: seed + 1), directory: dir.path).run()
        #expect(other.traceDigest != a.traceDigest, "different seeds must give different runs")
    }
}

/// Runs the first `count` seeds whose drawn configuration passes `selected`, each adjusted.
func runSeeds(_ count: Int, where selected: (Simulation.Config) -> Bool, _ adjust: (inout Simulation.Config) -> Void) -> [Simulation.Outcome] {
    let dir = TemporaryDirectory()
    var outcomes: [Simulation.Outcome] = []
    var seed: UInt64 = 1
    while outcomes.count < count && seed < 2_000 {
        var config = Simulation.Config(seed: seed)
        seed += 1
        guard selected(config) else { continue }
        adjust(&config)
        outcomes.append(Simulation(config: config, directory: dir.path).run())
    }
    return outcomes
}

/// Store resets in the simulation: the reset-prone leaf of a star has its
/// store restored from a backup at some crashes; the node's origin check
/// (VECTOR tips, new incarnations, orphans written again) must keep every
/// acknowledged delta that survived somewhere, and every replica converged.
@Suite struct StoreResetSimulationTests {
    static func resetSeeds(_ count: Int, checksOrigins: Bool = true) -> [Simulation.Outcome] {
        runSeeds(count, where: { $0.resetRate > 0 }) { $0.checksOrigins = checksOrigins }
    }

    @Test func restoredStoresLoseNothingThatSurvivedAndConverge() {
        let outcomes = Self.resetSeeds(30)
        for o in outcomes { #expect(o.failure == nil, "\(o.failure ?? "")") }
        let resets = outcomes.map(\.resets).reduce(0, +), incarnations = outcomes.map(\.incarnations).reduce(0, +)
        #expect(resets > 10 && incarnations > 0, "the runs must restore stores and start incarnations: \(resets) resets, \(incarnations) incarnations")
        print("store resets: \(outcomes.count) seeds, \(resets) resets, \(incarnations) new incarnations, \(outcomes.map(\.lostByRestore).reduce(0, +)) deltas lost by restores (held nowhere else)")
    }

    /// The canary: without the origin check a reset store reuses seqs, and
    /// the simulation must catch it within the same seeds.
    @Test func theCanaryNoOriginCheckIsCaught() {
        let caught = Self.resetSeeds(30, checksOrigins: false).first { !$0.passed }
        #expect(caught != nil, "seq reuse after a restore went unnoticed in 30 seeds: the simulation cannot see it")
        if let caught { print("canary no-origin-check caught at seed \(caught.seed): \(caught.failure ?? "")") }
    }
}

/// Grants and agents in the simulation: a star's hub applies the node's own
/// `Grant.check`/`Grant.admit` to what its leaves write; a leaf's write to
/// the hub-only domain is held withheld (by the hub's grant, or already by
/// the leaf's route), so only that leaf keeps its value. Leaves send only
/// their own origin and drive a HalfPair for their hub link, which must end
/// coherent.
@Suite struct GrantSimulationTests {
    static func starSeeds(_ count: Int, canary: Bool = false) -> [Simulation.Outcome] {
        runSeeds(count, where: \.grants) { $0.grantCanary = canary }
    }

    @Test func forbiddenWritesStayWithTheirWriter() {
        let outcomes = Self.starSeeds(20)
        for o in outcomes { #expect(o.failure == nil, "\(o.failure ?? "")") }
        let withheld = outcomes.map(\.withheld).reduce(0, +), pairEvents = outcomes.map(\.pairEvents).reduce(0, +)
        #expect(withheld > 0, "no leaf wrote outside its grant: the runs test nothing")
        #expect(pairEvents > 0, "the leaves' HalfPairs were never driven")
        print("grants and agents: \(outcomes.count) star seeds, \(withheld) writes held withheld (by the hub's grant or the leaf's route), \(pairEvents) HalfPair events")
    }

    /// The canary: a hub that does not check grants lets forbidden values
    /// spread, and the simulation must catch it.
    @Test func theCanaryUncheckedGrantsIsCaught() {
        let caught = Self.starSeeds(20, canary: true).first { !$0.passed }
        #expect(caught != nil, "a hub without grant checks went unnoticed in 20 seeds")
        if let caught { print("canary unchecked grants caught at seed \(caught.seed): \(caught.failure?.prefix(300) ?? "")") }
    }
}

/// Group commit in the simulation: the DELTAS frames a replica receives in
/// one step are committed in one StateBlock and each session acknowledges
/// its own only after it, as `spookd` and `spook-edge` do.
@Suite struct GroupCommitSimulationTests {
    /// With store resets as well: restores, origin checks and new
    /// incarnations while frames are committed together.
    @Test func framesCommittedTogetherSurviveStoreResets() {
        let outcomes = runSeeds(30, where: { $0.resetRate > 0 }) { $0.groupCommit = true }
        for o in outcomes { #expect(o.failure == nil, "\(o.failure ?? "")") }
        let resets = outcomes.map(\.resets).reduce(0, +), incarnations = outcomes.map(\.incarnations).reduce(0, +)
        let commits = outcomes.map(\.groupCommits).reduce(0, +), frames = outcomes.map(\.groupCommitFrames).reduce(0, +)
        #expect(resets > 10 && incarnations > 0, "the runs must restore stores and start incarnations: \(resets) resets, \(incarnations) incarnations")
        #expect(frames > commits, "no StateBlock ever held two frames: the group commit was not exercised")
        print("group commit with store resets: \(outcomes.count) seeds, \(resets) resets, \(incarnations) new incarnations, \(frames) frames in \(commits) group commits")
    }

    @Test func framesCommittedTogetherConvergeWithNothingLost() {
        let outcomes = runSeeds(60, where: { $0.resetRate == 0 }) { $0.groupCommit = true }
        for o in outcomes { #expect(o.failure == nil, "\(o.failure ?? "")") }
        let commits = outcomes.map(\.groupCommits).reduce(0, +), frames = outcomes.map(\.groupCommitFrames).reduce(0, +)
        #expect(frames > commits, "no StateBlock ever held two frames: the group commit was not exercised")
        print("group commit: \(outcomes.count) seeds, \(frames) frames in \(commits) group commits")
    }
}
