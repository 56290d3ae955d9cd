import ArgumentParser
import SpookCore
import SpookSimulation
import SpookStore

#if canImport(Glibc)
import Glibc
#endif

@main
struct SpookSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spook-sim",
        abstract: "Deterministic simulation of Spook replicas over faulty links, and a short demo.",
        subcommands: [Seeds.self, Demo.self],
        defaultSubcommand: Seeds.self
    )
}

/// Runs many seeds; prints every failing seed with the line that replays it.
struct Seeds: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run simulation seeds and report divergence or lost acknowledged deltas."
    )

    @Option(help: "How many seeds to run, starting at --first.")
    var seeds: UInt64 = 200

    @Option(help: "The first seed.")
    var first: UInt64 = 1

    @Option(help: "Run exactly this one seed and print its details.")
    var seed: UInt64?

    @Option(help: "Folder for the replicas' SQLite files.")
    var directory: String = "/tmp"

    func run() throws {
        let range = seed.map { $0...$0 } ?? first...(first + max(seeds, 1) - 1)
        var failed: [UInt64] = []
        var acknowledged = 0, crashes = 0, snapshots = 0
        for s in range {
            let config = Simulation.Config(seed: s)
            let outcome = Simulation(config: config, directory: directory).run()
            acknowledged += outcome.acknowledged
            crashes += outcome.crashes
            snapshots += outcome.snapshots
            if seed != nil {
                print("seed \(s): \(config)")
                print("  acknowledged=\(outcome.acknowledged) delivered=\(outcome.delivered) dropped=\(outcome.dropped) duplicated=\(outcome.duplicated) crashes=\(outcome.crashes) partitions=\(outcome.partitions) snapshots=\(outcome.snapshots) conflictsRefused=\(outcome.conflictsRefused) healSteps=\(outcome.healSteps) trace=\(String(outcome.traceDigest, radix: 16))")
            }
            if let failure = outcome.failure {
                failed.append(s)
                print("FAIL \(failure)")
            }
        }
        let count = range.count
        print("\(count - failed.count) passed, \(failed.count) failed (seeds \(range.lowerBound)...\(range.upperBound); \(acknowledged) acknowledged deltas, \(crashes) crash-restarts, \(snapshots) snapshots)")
        if !failed.isEmpty { throw ExitCode.failure }
    }
}

/// Two replicas, "edge" and "upstream", each with its own SQLite store, synced
/// in-process: the edge reports a simulated pump, the upstream asks for a new
/// speed, and both end with the same bytes.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A short demo of collapse, the store and catch-up.")

    @Option(help: "Folder for the demo's databases.")
    var directory: String = ".demo"

    @Option(help: "Rounds to run.")
    var rounds: Int = 6

    func run() throws {
        mkdir(directory, 0o755)
        let pump = try QGroupName("site1.line3/pump7")
        let schema = Schema(
            registers: [
                (RegisterSelector(domain: try QDomainPattern("site1.*"), group: "pump7", register: "speed"), RegisterSpec(type: .int, policy: .device)),
                (RegisterSelector(domain: try QDomainPattern("site1.*"), group: "pump7", register: "temperature"), RegisterSpec(type: .float)),
            ],
            owners: [(RegisterSelector(domain: try QDomainPattern("site1.*"), group: "pump7"), Origin(0xED6E))]
        )
        let edgeOrigin = Origin(0xED6E), upstreamOrigin = Origin(0x0095)
        let edge = try SQLStore(path: "\(directory)/edge.db", options: StoreOptions(schema: schema))
        let upstream = try SQLStore(path: "\(directory)/upstream.db", options: StoreOptions(schema: schema))
        print("edge store \(edge.path): vector \(edge.vector); upstream store \(upstream.path): vector \(upstream.vector)")
        // The simulated pump resumes from what it last reported.
        var speed: Int64 = 1200
        if case .int(let last)? = try edge.state.registers[pump.register("speed")]?.value { speed = last }
        for round in 1...rounds {
            let clockMs = wallClockMs()
            // The device reports; upstream occasionally desires a new speed.
            let temperature = 40.0 + Double(round) * 0.5
            _ = try edge.commitLocal([LocalWrite(group: pump, writes: [
                Write("speed", .report, .int(speed)), Write("temperature", .set, .float(temperature)),
            ])], origin: edgeOrigin, physicalMs: clockMs)
            if round == 2 {
                // An operator upstream asks for a new speed, a moment after the report.
                _ = try upstream.commitLocal([LocalWrite(group: pump, writes: [Write("speed", .desire, .int(1500))])], origin: upstreamOrigin, physicalMs: clockMs + 100)
            }
            try sync(edge, upstream)
            // The "device" follows a pending desired value on the next round.
            if let pending = try edge.state.registers[pump.register("speed")]?.pendingDesired, case .int(let target) = pending.value {
                print("  edge sees desired speed \(target): driving the device")
                speed = target
            }
            let register = try upstream.state.registers[pump.register("speed")]
            let t = try upstream.state.registers[pump.register("temperature")]?.value ?? .null
            print("round \(round): upstream sees speed \(register?.description ?? "-"), temperature \(t)")
        }
        let same = edge.state.canonicalBytes() == upstream.state.canonicalBytes()
        print("edge vector \(edge.vector), upstream vector \(upstream.vector), states identical: \(same)")
        if !same { throw ExitCode.failure }
    }

    private func wallClockMs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    /// One round of catch-up both ways, acknowledging after each durable commit.
    private func sync(_ a: SQLStore, _ b: SQLStore) throws {
        for (from, to, name) in [(a, b, "upstream"), (b, a, "edge")] {
            if case .deltas(let deltas) = try from.catchUp(for: from.peerVector(name), limit: 1000), !deltas.isEmpty {
                let result = try to.commit(deltas)
                try from.recordAck(peer: name, vector: to.vector)
                print("  \(deltas.count) delta(s) to \(name): held \(result.held.count), changed \(result.changed.map(\.name))")
            }
        }
    }
}
