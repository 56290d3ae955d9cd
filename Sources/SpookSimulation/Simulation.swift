#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import SpookCore
import SpookLink
import SpookStore
import SpookWire

/// One seeded run of N replicas exchanging deltas over links that drop,
/// duplicate, reorder and partition, with replicas that crash and restart
/// from their stores. Everything random comes from one `SplitMix64` seeded by
/// `seed`, and nothing iterates a dictionary in hash order, so a seed replays
/// the same run exactly (`traceDigest` proves it).
///
/// The replicas speak ESTP through the real `SyncSession`, and every
/// message crosses the simulated link as frame bytes through `FrameDecoder`:
/// a sender keeps every delta until the peer acknowledged it, the receiver
/// acknowledges with its vector only after the commit returned (durable),
/// and a sender that sees no progress goes back and resends.
public final class Simulation {
    public struct Config: Sendable, CustomStringConvertible {
        public var seed: UInt64
        public var replicas: Int
        public var steps: Int
        public var dropRate: Double
        public var duplicateRate: Double
        public var delayStepsMax: Int
        public var partitionRate: Double
        public var crashRate: Double
        public var writeRate: Double
        /// Replica index that joins only after the hub may have compacted (nil: none).
        public var lateJoiner: Int?
        public var topology: Topology
        public var batchMax: Int = 64
        public var resendAfterSteps: Int = 6
        public var snapshotChunkRegisters = 7
        public var compactEverySteps: Int = 25
        public var healStepsMax: Int = 4_000
        /// Chance that a crash of the reset-prone replica comes back with its
        /// store restored from its last backup (a store that went back in
        /// time). Only star topologies, for the last leaf, which has no device
        /// owner rule (a new incarnation is a new origin).
        public var resetRate: Double = 0
        public var backupEverySteps = 30
        /// The canary for seq reuse: a node that never compares what a peer
        /// holds of its origin (no VECTOR tips, no new incarnation).
        public var checksOrigins = true
        /// The DELTAS frames a replica receives in one step are committed
        /// together (one StateBlock), as the nodes' group commit does; off,
        /// each frame is committed on arrival.
        public var groupCommit = false
        /// Write grants at a star's hub: leaves may write domain `sim` (and
        /// report there), not `simr`, which only the hub writes. A leaf's
        /// write to `simr` is held withheld at the hub (the node's own
        /// `Grant.check`), so only the leaf itself keeps its value.
        /// (Not with store resets: a reset leaf writes under several
        /// incarnations, which one grant per link does not describe.)
        public var grants: Bool { topology == .star && resetRate == 0 }
        /// The canary for grants: a hub that does not check them.
        public var grantCanary = false
        /// Star leaves behave as agents towards the hub: they send only their
        /// own origin (`onlyOrigin`), odd leaves route only domain `sim` (their
        /// `simr` writes travel withheld), and each keeps a HalfPair for its
        /// hub link, driven by the link's fate. (Not with store resets, like grants.)
        public var agents: Bool { topology == .star && resetRate == 0 }

        public enum Topology: String, Sendable { case star, ring, mesh }

        /// Draws a configuration from the seed: every run explores a different
        /// mix of faults, sizes and topologies.
        public init(seed: UInt64) {
            var r = SplitMix64(seed: seed ^ 0xC0FF_EE00_5EED)
            self.seed = seed
            replicas = 3 + Int(r.next() % 3)
            steps = 200 + Int(r.next() % 200)
            dropRate = Double(r.next() % 30) / 100
            duplicateRate = Double(r.next() % 20) / 100
            delayStepsMax = 1 + Int(r.next() % 6)
            partitionRate = Double(r.next() % 20) / 1000
            crashRate = Double(r.next() % 10) / 1000
            writeRate = 0.05 + Double(r.next() % 20) / 100
            topology = [Topology.star, .ring, .mesh][Int(r.next() % 3)]
            lateJoiner = r.next() % 3 == 0 ? replicas - 1 : nil
            if topology == .star, lateJoiner == nil, r.next() % 2 == 0 {
                resetRate = 0.5
                crashRate = max(crashRate, 0.02)
            }
        }

        /// The replica whose store may be reset (see `resetRate`).
        public var resetProne: Int? { resetRate > 0 ? replicas - 1 : nil }

        public var description: String {
            "replicas=\(replicas) steps=\(steps) topology=\(topology) drop=\(dropRate) dup=\(duplicateRate) delay≤\(delayStepsMax) partition=\(partitionRate) crash=\(crashRate) write=\(writeRate) lateJoiner=\(lateJoiner.map(String.init) ?? "none") reset=\(resetRate)"
        }
    }

    public struct Outcome: Sendable {
        public var seed: UInt64
        /// nil when converged with nothing lost; otherwise what went wrong.
        public var failure: String?
        public var acknowledged = 0
        public var delivered = 0
        public var dropped = 0
        public var duplicated = 0
        public var crashes = 0
        public var partitions = 0
        public var snapshots = 0
        /// Stores restored from a backup, new incarnations started, and
        /// acknowledged deltas the restore lost (held by no other replica).
        public var resets = 0
        public var incarnations = 0
        public var lostByRestore = 0
        /// Leaf writes the hub held withheld (outside the leaf's grant).
        public var withheld = 0
        /// Events the leaves' HalfPairs took (star seeds).
        public var pairEvents = 0
        /// Links ended because a frame held another delta under a held (origin, seq).
        public var conflictsRefused = 0
        /// Group commits, and the DELTAS frames they held: more frames than
        /// commits means frames of several links shared a StateBlock.
        public var groupCommits = 0
        public var groupCommitFrames = 0
        public var bytesSent = 0
        public var healSteps = 0
        /// FNV-1a over every event in order: equal digests mean identical runs.
        public var traceDigest: UInt64 = 0xCBF2_9CE4_8422_2325

        public var passed: Bool { failure == nil }
        public var reproduce: String { "spook-sim --seed \(seed)" }
    }

    struct InFlight {
        var deliverAt: Int
        var from: Int
        var to: Int
        /// The ends' generations when sent: a message from or to a session
        /// that ended (a crash, a new incarnation) is never delivered, as a
        /// closed connection delivers nothing.
        var generations: (from: Int, to: Int)
        /// One encoded frame.
        var bytes: [UInt8]
    }

    final class Replica {
        let index: Int
        let path: String
        var store: (any Store)?
        var joined: Bool
        var downUntil = 0
        var clockSkewMs: Int64
        /// One ESTP session per neighbour, lost with a crash.
        var sessions: [Int: SyncSession] = [:]
        /// The store's incarnation, kept across crashes (read when the store reopens).
        var epoch: UInt32 = 0
        /// The vector when the store last closed (what a down replica holds).
        var lastVector = QStateVector()
        var hasBackup = false
        /// The vector and the highest epoch when the backup was taken.
        var backupVector = QStateVector()
        /// Every epoch this replica has used (its origins).
        var epochsUsed: Set<UInt32> = [0]
        /// The neighbour whose copies orphans wait for.
        var orphanSource: Int?
        /// Bumped at every crash and new incarnation: its sessions end.
        var generation = 0
        /// A leaf's HalfPair for its link to the hub (star seeds), not durable.
        var pair: HalfPair?

        var origin: Origin { Simulation.origin(index, epoch: epoch) }

        init(index: Int, path: String, joined: Bool, clockSkewMs: Int64) {
            self.index = index
            self.path = path
            self.joined = joined
            self.clockSkewMs = clockSkewMs
        }
    }

    public let config: Config
    let rule: any CollapseRule
    let directory: String
    let schema: Schema
    var random: SplitMix64
    var replicas: [Replica] = []
    var neighbours: [[Int]] = []
    var partitionedUntil: [Int: Int] = [:]
    var inFlight: [InFlight] = []
    var acknowledged: [Delta] = []
    var outcome: Outcome
    var now = 0
    var healing = false

    /// A replica's origin in incarnation `epoch` (the node derives it from its key; the simulation from its index).
    static func origin(_ index: Int, epoch: UInt32) -> Origin {
        Origin(0x5100_0000_0000_0000 | UInt64(epoch) << 32 | UInt64(index + 1))
    }

    static let domain = try! QDomain("sim")
    static let restricted = try! QGroupName("simr/x")
    static let hubGrant = Authorisation.Grant(read: [try! QDomainPattern("*")], write: [try! QDomainPattern("sim")], owns: [try! QDomainPattern("sim")])

    /// The replica an origin belongs to (any incarnation).
    static func index(of origin: Origin) -> Int { Int(origin.rawValue & 0xffff_ffff) - 1 }

    /// A leaf's write to the hub-only domain: refused by the hub's grant.
    static func forbidden(_ d: Delta) -> Bool { d.group == restricted && index(of: d.origin) != 0 }
    static let registerNames = ["a", "b", "c"]
    static let lwwGroups = (0..<4).map { try! QGroupName(domain: domain, name: "g\($0)") }

    /// - Parameters:
    ///   - rule: the collapse rule under test; the canary passes a broken one.
    ///   - directory: where the replicas' SQLite files go (removed afterwards).
    public init(config: Config, rule: any CollapseRule = QSCS(), directory: String) {
        self.config = config
        self.rule = rule
        self.directory = directory
        self.random = SplitMix64(seed: config.seed)
        self.outcome = Outcome(seed: config.seed)
        // Registers "n" are typed int; "dev<k>" groups are device registers owned by replica k.
        var registers: [(selector: RegisterSelector, spec: RegisterSpec)] = [
            (RegisterSelector(domain: try! QDomainPattern("sim"), group: nil, register: "n"), RegisterSpec(type: .int, policy: .lww))
        ]
        var owners: [(selector: RegisterSelector, origin: Origin)] = []
        for k in 0..<config.replicas {
            let sel = RegisterSelector(domain: try! QDomainPattern("sim"), group: "dev\(k)")
            registers.insert((sel, RegisterSpec(type: .int, policy: .device)), at: 0)
            if k != config.resetProne { owners.append((sel, Simulation.origin(k, epoch: 0))) }
        }
        self.schema = Schema(registers: registers, owners: owners)
    }

    /// Runs the whole scenario and checks convergence and durability.
    public func run() -> Outcome {
        do {
            try setUp()
            while now < config.steps {
                try step()
                now += 1
            }
            try heal()
            try check()
        } catch {
            if outcome.failure == nil {
                outcome.failure = "seed \(config.seed) (\(config)): error at step \(now): \(error) — reproduce: \(outcome.reproduce)"
            }
        }
        for r in replicas { r.store?.close() }
        for r in replicas {
            for suffix in ["", "-wal", "-shm", ".backup"] { unlink(r.path + suffix) }
        }
        return outcome
    }

    // MARK: set-up

    private func setUp() throws {
        for i in 0..<config.replicas {
            let skew = Int64(random.next() % 1_001) - 500
            let r = Replica(index: i, path: "\(directory)/sim-\(config.seed)-\(i).db", joined: i != config.lateJoiner, clockSkewMs: skew)
            for suffix in ["", "-wal", "-shm"] { unlink(r.path + suffix) }
            replicas.append(r)
        }
        neighbours = Array(repeating: [], count: config.replicas)
        func connect(_ a: Int, _ b: Int) {
            guard a != b, !neighbours[a].contains(b) else { return }
            neighbours[a].append(b)
            neighbours[b].append(a)
        }
        let n = config.replicas
        switch config.topology {
        case .star: for i in 1..<n { connect(0, i) }
        case .ring: for i in 0..<n { connect(i, (i + 1) % n) }
        case .mesh: for i in 0..<n { for j in (i + 1)..<n { connect(i, j) } }
        }
        for r in replicas where r.joined { try open(r) }
    }

    private func options() -> StoreOptions {
        var o = StoreOptions(sync: .off, historyLength: 4, schema: schema)
        o.rule = rule
        return o
    }

    private func open(_ r: Replica) throws {
        let store = try SQLStore(path: r.path, options: options())
        r.store = store
        r.epoch = store.epoch
        if config.agents, r.index != 0 {
            r.pair = HalfPair(origin: r.origin)
            try drivePair(r, .connect)
            if replicas[0].store != nil && linkUp(0, r.index) { try drivePair(r, .linkUp) }
        }
        for peer in neighbours[r.index] where replicas[peer].joined {
            if !store.peers.contains("\(peer)") { try store.recordAck(peer: "\(peer)", vector: QStateVector()) }
            try startSession(r, with: peer)
        }
        trace("open \(r.index) \(store.vector)")
    }

    private func startSession(_ r: Replica, with peer: Int) throws {
        var options = SyncSession.Options()
        options.batchDeltasMax = config.batchMax
        options.resendAfterMs = UInt64(config.resendAfterSteps) * Simulation.stepMs
        options.snapshotChunkRegistersMax = config.snapshotChunkRegisters
        var session = SyncSession(peer: "\(peer)", options: options)
        if config.checksOrigins {
            session.ownOrigin = r.origin
            session.peerOrigin = replicas[peer].origin
        }
        if config.agents, r.index != 0 {
            // An agent sends upstream only its own origin, and only its route's domains.
            session.onlyOrigin = r.origin
            if r.index % 2 == 1 { session.visible = { $0.domain == Simulation.domain } }
        }
        for m in try session.perform(session.start(r.store!, nowMs: nowMs), on: r.store!, nowMs: nowMs) { post(m, from: r.index, to: peer) }
        r.sessions[peer] = session
    }

    static let stepMs: UInt64 = 10
    /// SPOOK_SIM_TRACE=1 prints every traced event (for replaying a failing seed by hand).
    static let printTrace = getenv("SPOOK_SIM_TRACE") != nil
    var nowMs: UInt64 { UInt64(now) * Simulation.stepMs }

    // MARK: one step

    private func step() throws {
        // Late joiner arrives half-way: its neighbours learn of it only now.
        if let late = config.lateJoiner, now == config.steps / 2 {
            let r = replicas[late]
            r.joined = true
            try open(r)
            for peer in neighbours[late] {
                guard let store = replicas[peer].store else { continue }
                try store.recordAck(peer: "\(late)", vector: QStateVector())
                try startSession(replicas[peer], with: late)
            }
        }
        try faults()
        try deliver()
        if config.agents { try stepPairs() }
        for r in replicas where r.store != nil {
            if r.index == config.resetProne, now % config.backupEverySteps == 0 { try backup(r) }
            if r.store!.orphanCount > 0 { try settle(r) }
            if !healing, random.chance(config.writeRate) { try write(r) }
            try send(r)
            if now % config.compactEverySteps == r.index {
                let report = try r.store!.compact()
                if report.blocksRemoved > 0 { trace("compact \(r.index) \(report.horizon)") }
            }
        }
    }

    private func faults() throws {
        guard !healing else { return }
        for r in replicas where r.joined {
            if r.store != nil, random.chance(config.crashRate) {
                r.lastVector = r.store!.vector
                r.generation += 1
                r.store!.close()
                r.store = nil
                if r.index == config.resetProne, r.hasBackup, random.chance(config.resetRate) { try restoreBackup(r) }
                r.sessions = [:]
                r.downUntil = now + 1 + Int(random.next() % 40)
                outcome.crashes += 1
                inFlight.removeAll { $0.to == r.index }
                trace("crash \(r.index)")
            } else if r.store == nil, now >= r.downUntil {
                try open(r)
                // A restarted node reconnects: its neighbours' sessions with it are new
                // too (their VECTOR, with the tip of its origin, comes first).
                for n in neighbours[r.index] where replicas[n].store != nil { try startSession(replicas[n], with: r.index) }
            }
        }
        for a in 0..<config.replicas {
            for b in neighbours[a] where a < b && random.chance(config.partitionRate) {
                partitionedUntil[a * 64 + b] = now + 5 + Int(random.next() % 60)
                outcome.partitions += 1
                trace("partition \(a)-\(b)")
            }
        }
    }

    private func linkUp(_ a: Int, _ b: Int) -> Bool {
        (partitionedUntil[min(a, b) * 64 + max(a, b)] ?? 0) <= now
    }

    private func post(_ message: Message, from: Int, to: Int) {
        let bytes = message.frame.encoded
        outcome.bytesSent += bytes.count
        guard linkUp(from, to), !(!healing && random.chance(config.dropRate)) else {
            outcome.dropped += 1
            return
        }
        let copies = !healing && random.chance(config.duplicateRate) ? 2 : 1
        if copies == 2 { outcome.duplicated += 1 }
        for _ in 0..<copies {
            let delay = 1 + Int(random.next() % UInt64(healing ? 1 : config.delayStepsMax))
            inFlight.append(InFlight(deliverAt: now + delay, from: from, to: to,
                                     generations: (replicas[from].generation, replicas[to].generation), bytes: bytes))
        }
    }

    /// A DELTAS frame delivered this step, waiting for its replica's group commit.
    private struct ReceivedFrame {
        let to: Int
        let from: Int
        let generation: Int
        let deltas: [Delta]
    }

    private func deliver() throws {
        let due = inFlight.filter { $0.deliverAt <= now }
        inFlight.removeAll { $0.deliverAt <= now }
        var frames: [ReceivedFrame] = []
        for m in due where m.generations == (replicas[m.from].generation, replicas[m.to].generation) {
            let r = replicas[m.to]
            guard let store = r.store, var session = r.sessions[m.from] else { continue }
            outcome.delivered += 1
            var decoder = FrameDecoder()
            decoder.feed(m.bytes)
            guard let frame = try decoder.next() else { throw SimulationError("a whole frame did not decode") }
            var message = try Message(frame: frame)
            let applied = session.snapshotsApplied
            if config.grants, !config.grantCanary, m.to == 0, m.from != 0, case .deltas(let deltas) = message {
                // The hub's grant for the leaf, as spookd applies it, to the leaf's own deltas (others are relays).
                message = .deltas(try deltas.map { d in
                    guard Simulation.index(of: d.origin) == m.from else { return d }
                    let (checked, refusals) = try Simulation.hubGrant.check([d], from: d.origin, holds: { store.vector.contains($0) })
                    if !refusals.isEmpty {
                        outcome.withheld += 1
                        trace("withheld \(d.id)")
                    }
                    return checked[0]
                })
            }
            if config.grants, !config.grantCanary, m.to == 0, m.from != 0, case .snapshot(let chunk) = message {
                // A leaf's snapshot passes the same grant: only its own origin's stamps and vector entry.
                let (admitted, refused) = Simulation.hubGrant.admit(chunk, from: replicas[m.from].origin)
                outcome.withheld += refused.count
                message = .snapshot(admitted)
            }
            let replies: [Message]
            do {
                let actions = try session.receive(message, store, nowMs: nowMs, physicalMs: physicalMs(r))
                if config.groupCommit, case .deltas(let deltas) = message {
                    // As the nodes do: every frame a replica receives in a step goes into one group commit.
                    r.sessions[m.from] = session
                    frames.append(ReceivedFrame(to: m.to, from: m.from, generation: r.generation, deltas: deltas))
                    trace("recv \(m.to)<-\(m.from) \(frame.type) queued")
                    continue
                }
                replies = try session.perform(actions, on: store, nowMs: nowMs)
            } catch let conflict as OriginConflict {
                try reincarnate(r, conflict, found: m.from)
                continue
            }
            if session.snapshotsApplied > applied {
                outcome.snapshots += 1
                trace("snapshot \(m.to)<-\(m.from) \(store.vector)")
            }
            r.sessions[m.from] = session
            trace("recv \(m.to)<-\(m.from) \(frame.type) vector=\(store.vector)")
            for reply in replies { post(reply, from: m.to, to: m.from) }
        }
        try groupCommit(frames)
    }

    /// Commits each replica's frames of this step in one StateBlock, then
    /// lets each session acknowledge its own (a session ended meanwhile,
    /// by a new incarnation, acknowledges nothing: its peer sends again).
    private func groupCommit(_ frames: [ReceivedFrame]) throws {
        var seen = Set<Int>()
        for to in frames.map(\.to) where seen.insert(to).inserted {
            let r = replicas[to], mine = frames.filter { $0.to == to }
            guard let store = r.store else { continue }
            let result = try store.commit(mine.flatMap(\.deltas))
            outcome.groupCommits += 1
            outcome.groupCommitFrames += mine.count
            for (frame, part) in zip(mine, result.shares(of: mine.map(\.deltas))) {
                guard frame.generation == r.generation, var session = r.sessions[frame.from] else { continue }
                if let first = part.conflicts.first {
                    // As a node does: ERROR `seq-conflict` ends the link; the new
                    // sessions' VECTORs let the sender find its store went back.
                    trace("conflict \(to)<-\(frame.from) \(first)")
                    outcome.conflictsRefused += 1
                    try restartLink(to, frame.from)
                    continue
                }
                let replies = try session.perform(session.committed(part, store, nowMs: nowMs), on: store, nowMs: nowMs)
                r.sessions[frame.from] = session
                trace("commit \(to)<-\(frame.from) \(part.held.count) held vector=\(store.vector)")
                for reply in replies { post(reply, from: to, to: frame.from) }
            }
        }
    }

    /// The replica's wall clock (skewed): what its HLC readings and drift checks use.
    private func physicalMs(_ r: Replica) -> UInt64 {
        UInt64(max(0, 1_700_000_000_000 + Int64(now) * 10 + r.clockSkewMs))
    }

    private func write(_ r: Replica) throws {
        let physical = physicalMs(r)
        var requests: [LocalWrite] = []
        for _ in 0..<(1 + Int(random.next() % 3)) {
            if config.grants, random.chance(0.05) {
                // The hub-only domain: allowed for the hub, withheld for a leaf.
                requests.append(LocalWrite(group: Simulation.restricted, writes: [Write("a", .set, randomValue())]))
            } else if random.chance(0.3) {
                // A device group: its owner reports, anyone may desire.
                let k = Int(random.next() % UInt64(config.replicas))
                let group = try QGroupName(domain: Simulation.domain, name: "dev\(k)")
                let kind: WriteKind = k == r.index && random.chance(0.6) ? .report : .desire
                requests.append(LocalWrite(group: group, writes: [Write("v", kind, .int(Int64(random.next() % 50)))]))
            } else {
                let group = Simulation.lwwGroups[Int(random.next() % UInt64(Simulation.lwwGroups.count))]
                var writes = [Write]()
                for name in Simulation.registerNames where random.chance(0.5) { writes.append(Write(name, .set, randomValue())) }
                if random.chance(0.3) { writes.append(Write("n", .set, .int(Int64(bitPattern: random.next() % 1000)))) }
                if writes.isEmpty { writes.append(Write("a", .set, randomValue())) }
                requests.append(LocalWrite(group: group, writes: writes))
            }
        }
        for result in try r.store!.commitLocal(requests, origin: r.origin, physicalMs: physical) {
            let delta = try result.get()
            acknowledged.append(delta)
            outcome.acknowledged += 1
            trace("write \(r.index) \(delta.id) \(delta.hlc)")
        }
    }

    private func randomValue() -> Value {
        switch random.next() % 6 {
        case 0: .null
        case 1: .bool(random.chance(0.5))
        case 2: .int(Int64(bitPattern: random.next()))
        case 3: random.chance(0.1) ? .float(.nan) : .float(Double(Int64(random.next() % 1000)) / 8)
        case 4: .string(String(random.next() % 10_000, radix: 36))
        default: .bytes((0..<Int(random.next() % 5)).map { _ in UInt8(truncatingIfNeeded: random.next()) })
        }
    }

    private func send(_ r: Replica) throws {
        let store = r.store!
        for peer in r.sessions.keys.sorted() {
            var session = r.sessions[peer]!
            let messages = try session.perform(session.poll(store, nowMs: nowMs), on: store, nowMs: nowMs)
            r.sessions[peer] = session
            for m in messages { post(m, from: r.index, to: peer) }
        }
    }

    // MARK: agents' HalfPairs (star seeds)

    /// Applies one event to a leaf's HalfPair; an illegal transition fails the run.
    private func drivePair(_ r: Replica, _ event: HalfPair.Event) throws {
        guard var pair = r.pair else { return }
        _ = try pair.handle(event)
        r.pair = pair
        outcome.pairEvents += 1
        trace("pair \(r.index) \(event) -> \(pair.state)")
    }

    /// Each step: a link that went down decoheres the leaf's HalfPair; a link
    /// back up reconnects it (new sessions both ways, as a reconnect makes);
    /// a session caught up makes it coherent.
    private func stepPairs() throws {
        for r in replicas where r.pair != nil && r.store != nil {
            let up = replicas[0].store != nil && linkUp(0, r.index)
            switch r.pair!.state {
            case .entangling(linkUp: true), .reentangling(_, linkUp: true), .coherent:
                if !up {
                    try drivePair(r, .linkDown)
                } else if case .coherent = r.pair!.state {
                } else if r.sessions[0]?.isCaughtUp(r.store!) == true {
                    try drivePair(r, .caughtUp)
                }
            case .decoherent:
                if up {
                    try drivePair(r, .reconnectTimerFired)
                    try drivePair(r, .linkUp)
                    try startSession(r, with: 0)
                    try startSession(replicas[0], with: r.index)
                }
            case .entangling(linkUp: false), .reentangling(_, linkUp: false):
                if up { try drivePair(r, .linkUp) }
            case .detached, .closed:
                break
            }
        }
    }

    // MARK: store resets

    /// A backup: the store's files as they are after a checkpoint.
    private func backup(_ r: Replica) throws {
        guard let store = r.store as? SQLStore else { return }
        try store.checkpoint()
        try Simulation.copyFile(r.path, r.path + ".backup")
        r.hasBackup = true
        r.backupVector = store.vector
    }

    /// The store goes back to its backup. Deltas of its origin that no other
    /// replica holds are lost with it: the restore is the operator's doing,
    /// and the check no longer expects them.
    private func restoreBackup(_ r: Replica) throws {
        for suffix in ["-wal", "-shm"] { unlink(r.path + suffix) }
        try Simulation.copyFile(r.path + ".backup", r.path)
        let before = acknowledged.count
        // A delta of this replica that no other replica holds (the same
        // delta: origin, seq and HLC) went with the restore.
        var others: [(any Store, Bool)] = []
        for other in replicas where other.index != r.index && other.joined {
            if let store = other.store {
                others.append((store, false))
            } else if let store = try? SQLStore(path: other.path, options: options()) {
                others.append((store, true))
            }
        }
        defer { for (store, opened) in others where opened { store.close() } }
        acknowledged.removeAll { d in
            guard Simulation.index(of: d.origin) == r.index, d.seq > r.backupVector[d.origin] else { return false }
            return !others.contains { (try? $0.0.heldHLC(origin: d.origin, seq: d.seq)) == d.hlc }
        }
        outcome.lostByRestore += before - acknowledged.count
        outcome.resets += 1
        trace("reset \(r.index) lost \(before - acknowledged.count)")
    }

    /// A link ends (a refusal) and is made again: what was in flight on it is
    /// lost, and both sides start new sessions.
    private func restartLink(_ a: Int, _ b: Int) throws {
        inFlight.removeAll { ($0.from == a && $0.to == b) || ($0.from == b && $0.to == a) }
        for (x, y) in [(a, b), (b, a)] where replicas[x].store != nil {
            replicas[x].sessions[y] = nil
            try startSession(replicas[x], with: y)
        }
    }

    /// A peer holds more of our origin than we do, or another delta under one
    /// of its seqs: a new incarnation, our unconfirmed deltas set aside, every
    /// session of ours restarted under the new origin.
    private func reincarnate(_ r: Replica, _ conflict: OriginConflict, found peer: Int) throws {
        _ = try r.store!.reincarnate(origin: conflict.origin, keepThrough: conflict.acknowledged, waitThrough: conflict.peerHolds)
        r.epoch = r.store!.epoch
        r.epochsUsed.insert(r.epoch)
        r.orphanSource = peer
        r.generation += 1
        outcome.incarnations += 1
        trace("reincarnate \(r.index) epoch \(r.epoch) \(conflict.verdict)")
        inFlight.removeAll { $0.to == r.index || $0.from == r.index }
        r.sessions = [:]
        for n in neighbours[r.index] {
            try startSession(r, with: n)
            if replicas[n].store != nil { try startSession(replicas[n], with: r.index) }
        }
        try settle(r)
    }

    /// Settles set-aside deltas: those the peer sent back are dropped, the
    /// others are written again under the new origin (the check follows).
    private func settle(_ r: Replica) throws {
        let store = r.store!
        let force = r.orphanSource.map { r.sessions[$0]?.isCaughtUp(store) == true } ?? true
        let settled = try store.settleOrphans(newOrigin: r.origin, physicalMs: physicalMs(r), force: force)
        for (orphan, delta) in settled.rewritten {
            // A write made after the restore, under a seq the peers held for
            // another delta: it lives on as the rewrite. (An orphan that was
            // the real delta stays acknowledged as it is, and gains a copy.)
            let heldElsewhere = replicas.contains { other in
                other.index != r.index && (try? other.store?.heldHLC(origin: orphan.origin, seq: orphan.seq)) == orphan.hlc
            }
            if !heldElsewhere { acknowledged.removeAll { $0.id == orphan.id && $0.hlc == orphan.hlc } }
            acknowledged.append(delta)
            trace("rewrite \(orphan.id) as \(delta.id)")
        }
        if let first = settled.refused.first { throw SimulationError("orphan \(first.id) refused by the schema: \(first.error)") }
    }

    static func copyFile(_ from: String, _ to: String) throws {
        let input = Glibc.open(from, O_RDONLY)
        guard input >= 0 else { throw SimulationError("open \(from): errno \(errno)") }
        defer { Glibc.close(input) }
        let output = Glibc.open(to, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard output >= 0 else { throw SimulationError("open \(to): errno \(errno)") }
        defer { Glibc.close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = Glibc.read(input, &buffer, buffer.count)
            guard n >= 0 else { throw SimulationError("read \(from): errno \(errno)") }
            if n == 0 { return }
            guard Glibc.write(output, buffer, n) == n else { throw SimulationError("write \(to): errno \(errno)") }
        }
    }

    // MARK: heal and check

    private func heal() throws {
        healing = true
        partitionedUntil = [:]
        let start = now
        for r in replicas where r.store == nil {
            r.joined = true
            try open(r)
        }
        // Quiescent: every replica holds the union, nothing is in flight, and
        // every HalfPair is back online (a link cut just before the heal
        // reconnects on its own timer, after the vectors may already agree).
        while now - start < config.healStepsMax {
            let union = replicas.reduce(QStateVector()) { $0.merged($1.store!.vector) }
            if inFlight.isEmpty && replicas.allSatisfy({ $0.store!.vector == union && $0.pair?.state.isOnline != false }) { break }
            try step()
            now += 1
        }
        outcome.healSteps = now - start
    }

    private func check() throws {
        var failures: [String] = []
        for r in replicas {
            let store = r.store!
            var reference = referenceState(for: r.index) { d in
                // The writer keeps its forbidden value, unless a restore lost it and
                // the hub's placeholder came back instead.
                guard let held = try? store.deltas(origin: d.origin, seqs: d.seq...d.seq).first else { return true }
                return !Withheld.isWithheld(held)
            }
            // The placeholders' own register is bookkeeping (the local API hides it), not state.
            var actual = store.state
            if config.grants {
                reference = CollapseState(schema: schema, registers: reference.registers.filter { $0.key.group != Withheld.group })
                actual = CollapseState(schema: schema, registers: actual.registers.filter { $0.key.group != Withheld.group })
            }
            let referenceBytes = reference.canonicalBytes()
            let missing = acknowledged.filter { !store.vector.contains($0.id) }
            if let first = missing.first {
                failures.append("replica \(r.index) lacks \(missing.count) acknowledged deltas, first \(first.id) (vector \(store.vector))")
            }
            let bytes = actual.canonicalBytes()
            if bytes != referenceBytes {
                let diff = reference.registers.keys.sorted().first { actual.registers[$0] != reference.registers[$0] }
                    ?? actual.registers.keys.sorted().first { reference.registers[$0] == nil }
                let shown = diff.map { "\($0): has \(actual.registers[$0].map(\.description) ?? "nothing"), expected \(reference.registers[$0].map(\.description) ?? "nothing")" } ?? "?"
                failures.append("replica \(r.index) diverged from the collapse of all acknowledged deltas; first difference \(shown)")
            }
            do { _ = try store.verify() } catch { failures.append("replica \(r.index) store: \(error)") }
        }
        if outcome.healSteps >= config.healStepsMax { failures.append("not quiescent after \(config.healStepsMax) heal steps") }
        for r in replicas where r.pair != nil && r.pair?.state.isOnline != true {
            failures.append("replica \(r.index)'s HalfPair ended \(r.pair!.state), not coherent")
        }
        if !failures.isEmpty {
            outcome.failure = "seed \(config.seed) (\(config)): " + failures.joined(separator: "; ") + " — reproduce: \(outcome.reproduce)"
        }
    }

    /// The state every replica must hold: QSCS over the set of acknowledged
    /// deltas, computed without stores, links or the rule under test.
    /// With grants, a leaf's forbidden write counts as itself only on that
    /// leaf; everywhere else as its withheld placeholder.
    func referenceState(for index: Int, writerKeeps: (Delta) -> Bool = { _ in true }) -> CollapseState {
        var s = CollapseState(schema: schema)
        for d in acknowledged {
            let withheld = config.grants && Simulation.forbidden(d) && (Simulation.index(of: d.origin) != index || !writerKeeps(d))
            _ = try? s.apply(withheld ? Withheld.redact(d) : d)
        }
        return s
    }

    private func trace(_ event: String) {
        if Simulation.printTrace { print("\(now) \(event)") }
        for b in "\(now) \(event)\n".utf8 {
            outcome.traceDigest = (outcome.traceDigest ^ UInt64(b)) &* 0x100_0000_01B3
        }
    }
}

struct SimulationError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
