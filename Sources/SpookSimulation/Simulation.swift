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
        }

        public var description: String {
            "replicas=\(replicas) steps=\(steps) topology=\(topology) drop=\(dropRate) dup=\(duplicateRate) delay≤\(delayStepsMax) partition=\(partitionRate) crash=\(crashRate) write=\(writeRate) lateJoiner=\(lateJoiner.map(String.init) ?? "none")"
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
        /// One encoded frame.
        var bytes: [UInt8]
    }

    final class Replica {
        let index: Int
        let origin: Origin
        let path: String
        var store: (any Store)?
        var joined: Bool
        var downUntil = 0
        var clockSkewMs: Int64
        /// One ESTP session per neighbour, lost with a crash.
        var sessions: [Int: SyncSession] = [:]

        init(index: Int, path: String, joined: Bool, clockSkewMs: Int64) {
            self.index = index
            self.origin = Origin(0x5100_0000_0000_0000 | UInt64(index + 1))
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

    static let domain = try! QDomain("sim")
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
            owners.append((sel, Origin(0x5100_0000_0000_0000 | UInt64(k + 1))))
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
            for suffix in ["", "-wal", "-shm"] { unlink(r.path + suffix) }
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
        let store = try SQLiteStore(path: r.path, options: options())
        r.store = store
        for peer in neighbours[r.index] where replicas[peer].joined {
            if !store.peers.contains("\(peer)") { try store.recordAck(peer: "\(peer)", vector: QStateVector()) }
            startSession(r, with: peer)
        }
        trace("open \(r.index) \(store.vector)")
    }

    private func startSession(_ r: Replica, with peer: Int) {
        var options = SyncSession.Options()
        options.batchDeltasMax = config.batchMax
        options.resendAfterMs = UInt64(config.resendAfterSteps) * Simulation.stepMs
        options.snapshotChunkRegistersMax = config.snapshotChunkRegisters
        var session = SyncSession(peer: "\(peer)", options: options)
        for m in session.start(r.store!, nowMs: nowMs) { post(m, from: r.index, to: peer) }
        r.sessions[peer] = session
    }

    static let stepMs: UInt64 = 10
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
                startSession(replicas[peer], with: late)
            }
        }
        try faults()
        try deliver()
        for r in replicas where r.store != nil {
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
                r.store!.close()
                r.store = nil
                r.sessions = [:]
                r.downUntil = now + 1 + Int(random.next() % 40)
                outcome.crashes += 1
                inFlight.removeAll { $0.to == r.index }
                trace("crash \(r.index)")
            } else if r.store == nil, now >= r.downUntil {
                try open(r)
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
            inFlight.append(InFlight(deliverAt: now + delay, from: from, to: to, bytes: bytes))
        }
    }

    private func deliver() throws {
        let due = inFlight.filter { $0.deliverAt <= now }
        inFlight.removeAll { $0.deliverAt <= now }
        for m in due {
            let r = replicas[m.to]
            guard let store = r.store, var session = r.sessions[m.from] else { continue }
            outcome.delivered += 1
            var decoder = FrameDecoder()
            decoder.feed(m.bytes)
            guard let frame = try decoder.next() else { throw SimulationError("a whole frame did not decode") }
            let message = try Message(frame: frame)
            let applied = session.snapshotsApplied
            let replies = try session.receive(message, store, nowMs: nowMs, physicalMs: physicalMs(r))
            if session.snapshotsApplied > applied {
                outcome.snapshots += 1
                trace("snapshot \(m.to)<-\(m.from) \(store.vector)")
            }
            r.sessions[m.from] = session
            trace("recv \(m.to)<-\(m.from) \(frame.type) vector=\(store.vector)")
            for reply in replies { post(reply, from: m.to, to: m.from) }
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
            if random.chance(0.3) {
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
            let messages = try session.poll(store, nowMs: nowMs)
            r.sessions[peer] = session
            for m in messages { post(m, from: r.index, to: peer) }
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
        // Quiescent: every replica holds the union, nothing is in flight.
        while now - start < config.healStepsMax {
            let union = replicas.reduce(QStateVector()) { $0.merged($1.store!.vector) }
            if inFlight.isEmpty && replicas.allSatisfy({ $0.store!.vector == union }) { break }
            try step()
            now += 1
        }
        outcome.healSteps = now - start
    }

    private func check() throws {
        var failures: [String] = []
        let reference = referenceState()
        let referenceBytes = reference.canonicalBytes()
        for r in replicas {
            let store = r.store!
            let missing = acknowledged.filter { !store.vector.contains($0.id) }
            if let first = missing.first {
                failures.append("replica \(r.index) lacks \(missing.count) acknowledged deltas, first \(first.id) (vector \(store.vector))")
            }
            let bytes = store.state.canonicalBytes()
            if bytes != referenceBytes {
                let diff = reference.registers.keys.sorted().first { store.state.registers[$0] != reference.registers[$0] }
                    ?? store.state.registers.keys.sorted().first { reference.registers[$0] == nil }
                let shown = diff.map { "\($0): has \(store.state.registers[$0].map(\.description) ?? "nothing"), expected \(reference.registers[$0].map(\.description) ?? "nothing")" } ?? "?"
                failures.append("replica \(r.index) diverged from the collapse of all acknowledged deltas; first difference \(shown)")
            }
            do { _ = try store.verify() } catch { failures.append("replica \(r.index) store: \(error)") }
        }
        if outcome.healSteps >= config.healStepsMax { failures.append("not quiescent after \(config.healStepsMax) heal steps") }
        if !failures.isEmpty {
            outcome.failure = "seed \(config.seed) (\(config)): " + failures.joined(separator: "; ") + " — reproduce: \(outcome.reproduce)"
        }
    }

    /// The state every replica must hold: QSCS over the set of acknowledged
    /// deltas, computed without stores, links or the rule under test.
    func referenceState() -> CollapseState {
        var s = CollapseState(schema: schema)
        for d in acknowledged { _ = try? s.apply(d) }
        return s
    }

    private func trace(_ event: String) {
        for b in "\(now) \(event)\n".utf8 {
            outcome.traceDigest = (outcome.traceDigest ^ UInt64(b)) &* 0x100_0000_01B3
        }
    }
}

struct SimulationError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
