#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookNode

/// The agent's footprint, the static build against the dynamic one in the
/// same run: stripped size, idle RSS, and RSS and CPU under the gateway load
/// (100 Modbus holding registers changing at 10 Hz, every change forwarded
/// durably). Goals: static stripped ≤ 16 MiB, idle ≤ 10 MiB, loaded ≤ 14 MiB
/// and ≤ 1 % of a core (docs/benchmarks.md).
enum FootprintBench {
    struct Measured {
        var sizeMiB = 0.0, idleRSSMiB = 0.0, idleCPUPercent = 0.0, loadRSSMiB = 0.0, loadCPUPercent = 0.0
    }

    static func measure(_ edgeBinary: String, dir: String, binaries: String, tools: String, seconds: Double) throws -> Measured {
        var m = Measured()
        var info = stat()
        guard stat(edgeBinary, &info) == 0 else { throw APIClientError("\(edgeBinary): no such binary (bench/run builds it)") }
        m.sizeMiB = Double(info.st_size) / 1_048_576
        do {
            let d = "\(dir)/idle"
            mkdir(d, 0o700)
            let c = try LinkBench.cluster(dir: d, binaries: binaries, edgeBinary: edgeBinary)
            defer { c.stop() }
            // Linked (the agent's first $state is upstream), then settled for a while.
            while c.upAPI.holds(c.edgeOrigin) == 0 { usleep(10_000) }
            usleep(UInt32(seconds * 1e6))
            let cpu0 = c.edge.cpuTicks, t0 = now()
            usleep(UInt32(seconds * 1e6))
            m.idleCPUPercent = Double(c.edge.cpuTicks - cpu0) / Double(sysconf(Int32(_SC_CLK_TCK))) / (now() - t0) * 100
            m.idleRSSMiB = Double(c.edge.rssKiB) / 1024
        }
        let d = "\(dir)/load"
        mkdir(d, 0o700)
        let load = try DeviceBench.gatewayLoad(dir: d, binaries: binaries, edgeBinary: edgeBinary, tools: tools, seconds: seconds * 4)
        m.loadCPUPercent = load.cpuPercent
        m.loadRSSMiB = load.rssMiB
        return m
    }

    static func run(dir: String, binaries: String, staticEdge: String, dynamicEdge: String, tools: String, seconds: Double) throws -> [Row] {
        mkdir("\(dir)/static", 0o700)
        mkdir("\(dir)/dynamic", 0o700)
        let s = try measure(staticEdge, dir: "\(dir)/static", binaries: binaries, tools: tools, seconds: seconds)
        let d = try measure(dynamicEdge, dir: "\(dir)/dynamic", binaries: binaries, tools: tools, seconds: seconds)
        return [
            Row(name: "spook-edge stripped size, static stdlib (goal ≤ 16)", value: s.sizeMiB, unit: "MiB", baseline: "dynamic build, stripped (+ libswift*.so)", baselineValue: d.sizeMiB),
            Row(name: "spook-edge idle RSS, static (goal ≤ 10)", value: s.idleRSSMiB, unit: "MiB", baseline: "dynamic build", baselineValue: d.idleRSSMiB),
            Row(name: "spook-edge idle CPU, static", value: s.idleCPUPercent, unit: "%", baseline: "dynamic build", baselineValue: d.idleCPUPercent),
            Row(name: "100 regs at 10 Hz: RSS, static (goal ≤ 14)", value: s.loadRSSMiB, unit: "MiB", baseline: "dynamic build", baselineValue: d.loadRSSMiB),
            Row(name: "100 regs at 10 Hz: CPU of one core, static (goal ≤ 1)", value: s.loadCPUPercent, unit: "%", baseline: "dynamic build", baselineValue: d.loadCPUPercent),
        ]
    }
}

extension APIClient {
    /// How much of `origin` this node holds (its vector entry), 0 on any error.
    func holds(_ origin: Origin) -> Int {
        guard let s = try? call(.object(["op": .string("status")])), case .int(let n)? = s["vector"]?[origin.description] else { return 0 }
        return Int(n)
    }
}
