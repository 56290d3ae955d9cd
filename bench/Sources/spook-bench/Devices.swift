#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode
import SpookStore

/// The device benchmarks: the agent polling a libmodbus server next to a bare
/// libmodbus C client loop against the same server, a gateway-like load, and
/// the firmware bridge over a pty. Real processes, as in `LinkBench`.
enum DeviceBench {
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: a.sin_port))
    }

    /// Watches `register` on the daemon for `seconds` (after a second of
    /// warm-up); each value is a device's wall clock in ms (low 32 bits) when it
    /// changed, so now − value is that change's latency to upstream, in ms.
    static func clockLatencies(_ up: APIClient, register: String, seconds: Double) throws -> (latencies: [Double], rate: Double) {
        _ = try up.call(.object(["op": .string("watch"), "prefix": .string(register)]))
        let warm = now()
        while now() < warm + 1, (try? up.next(timeoutMs: 200)) != nil {}
        var latencies: [Double] = []
        let clock = SystemClock(), t0 = now()
        while now() < t0 + seconds {
            guard let event = try up.next(timeoutMs: 1000), case .int(let stamp)? = event["register"]?["value"] else { continue }
            latencies.append(Double(((clock.nowMs() & 0xFFFF_FFFF) &- UInt64(stamp)) & 0xFFFF_FFFF))
        }
        return (latencies, Double(latencies.count) / (now() - t0))
    }

    /// spookd + spook-edge with `device` tables in domain bench.dev, which the agent owns.
    static func cluster(dir: String, binaries: String, edgeBinary: String, device: String) throws -> (LinkBench.Process, LinkBench.Process, APIClient, APIClient) {
        let schema = "[[register]]\ndomain = \"bench.dev\"\npolicy = \"device\"\n"
        let c = try LinkBench.cluster(dir: dir, binaries: binaries, edgeBinary: edgeBinary,
                                      daemonExtra: "owns = [\"bench.dev\"]\n" + schema, edgeExtra: schema + device)
        return (c.daemon, c.edge, c.edgeAPI, c.upAPI)
    }

    /// The `[[device]]` table of a Modbus TCP PLC on 127.0.0.1:`port`, group bench.dev/plc, with `map`'s registers.
    static func plc(port: Int, pollMs: Int, map: String) -> String {
        "[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(port)\"\npoll_ms = \(pollMs)\ngroup = \"bench.dev/plc\"\n" + map
    }

    /// What the bridge's stop-and-wait costs at least: one durable commit per change.
    static func singleCommits(dir: String) throws -> Double {
        let store = try SQLStore(path: "\(dir)/single.db", options: StoreOptions(sync: .full))
        defer { store.close() }
        let group = try QGroupName("bench.dev/single")
        let n = 300
        let t0 = now()
        for i in 0..<n {
            _ = try store.commitLocal([LocalWrite(group: group, writes: [Write("r", .set, .int(Int64(i)))])], origin: Origin(1), physicalMs: UInt64(i))
        }
        return Double(n) / (now() - t0)
    }

    static func transactions(_ api: APIClient) throws -> Int {
        let s = try api.call(.object(["op": .string("status")]))
        guard case .array(let devices)? = s["devices"], case .int(let n)? = devices.first?["transactions"] else { return 0 }
        return Int(n)
    }

    /// The gateway load of the footprint goal: a libmodbus server whose holding
    /// registers 100…199 all change every 100 ms, polled every 100 ms by the
    /// agent and forwarded durably to a daemon. The agent's CPU (% of one core)
    /// and RSS over `seconds`, and each clock change's latency to upstream.
    /// `edgeExtra` adds tables to the agent's config; `latencies` measures
    /// (default: each clock change's latency to upstream).
    static func gatewayLoad(
        dir: String, binaries: String, edgeBinary: String, tools: String, seconds: Double, edgeExtra: String = "",
        latencies measure: (APIClient, Double) throws -> [Double] = { up, seconds in try clockLatencies(up, register: "bench.dev/plc/clock", seconds: seconds).latencies }
    ) throws -> (cpuPercent: Double, rssMiB: Double, latencies: [Double]) {
        let port = freePort()
        let ticking = try LinkBench.Process("\(tools)/modbus-server", ["\(port)", "--tick-ms", "100"], readable: true)
        defer { ticking.stop() }
        _ = ticking.line()
        var load = "[[device.register]]\nname = \"clock\"\ntable = \"holding\"\naddress = 98\ntype = \"u32\"\n"
        for i in 100..<200 { load += "[[device.register]]\nname = \"r\(i)\"\ntable = \"holding\"\naddress = \(i)\n" }
        let (daemon, edge, _, up) = try cluster(dir: dir, binaries: binaries, edgeBinary: edgeBinary, device: plc(port: port, pollMs: 100, map: load) + edgeExtra)
        defer { edge.stop(); daemon.stop() }
        let cpu0 = edge.cpuTicks, t0 = now()
        let latencies = try measure(up, seconds)
        let cpu = Double(edge.cpuTicks - cpu0) / Double(sysconf(Int32(_SC_CLK_TCK))) / (now() - t0) * 100
        return (cpu, Double(edge.rssKiB) / 1024, latencies)
    }

    static func run(dir: String, binaries: String, edgeBinary: String, tools: String, sim: String, seconds: Double) throws -> [Row] {
        var rows: [Row] = []
        // 1. Polling throughput: 100 holding registers (one coalesced read), back to back.
        let port = freePort()
        let server = try LinkBench.Process("\(tools)/modbus-server", ["\(port)"], readable: true)
        defer { server.stop() }
        _ = server.line()
        func baseline() throws -> Double {
            let loop = try LinkBench.Process("\(tools)/modbus-client-loop", ["\(port)", "100", "\(seconds)"], readable: true)
            defer { loop.stop() }
            let f = (loop.line() ?? "").split(separator: " ")
            guard f.count == 4, let n = Double(f[1]), let s = Double(f[3]) else { throw APIClientError("modbus-client-loop failed") }
            return n / s
        }
        let before = try baseline()
        var points = ""
        for i in 0..<100 { points += "[[device.register]]\nname = \"r\(i)\"\ntable = \"holding\"\naddress = \(i)\n" }
        var agentRate = 0.0
        do {
            let d = "\(dir)/poll"
            mkdir(d, 0o700)
            let (daemon, edge, api, _) = try cluster(dir: d, binaries: binaries, edgeBinary: edgeBinary, device: plc(port: port, pollMs: 0, map: points))
            defer { edge.stop(); daemon.stop() }
            while try transactions(api) == 0 { usleep(10_000) }
            let t0 = now(), n0 = try transactions(api)
            usleep(UInt32(seconds * 1e6))
            agentRate = Double(try transactions(api) - n0) / (now() - t0)
        }
        let after = try baseline()
        let bare = (before + after) / 2
        rows.append(Row(name: "Modbus reads of 100 registers, agent (poll_ms 0)", value: agentRate, unit: "transactions/s", baseline: "bare libmodbus C loop, same server", baselineValue: bare))
        rows.append(Row(name: "Modbus registers polled, agent", value: agentRate * 100, unit: "registers/s", baseline: "bare libmodbus C loop", baselineValue: bare * 100))

        // 2. Gateway-like load: 100 holding registers changing at 10 Hz, polled at 10 Hz, forwarded upstream.
        do {
            let d = "\(dir)/load"
            mkdir(d, 0o700)
            let load = try gatewayLoad(dir: d, binaries: binaries, edgeBinary: edgeBinary, tools: tools, seconds: seconds * 3)
            rows.append(Row(name: "gateway load (100 regs at 10 Hz): agent CPU", value: load.cpuPercent, unit: "%", baseline: "agent RSS (MiB)", baselineValue: load.rssMiB))
            rows.append(Row(name: "gateway load: device change→upstream p50 (\(load.latencies.count) changes)", value: percentile(load.latencies, 0.5), unit: "ms", baseline: "poll interval (ms)", baselineValue: 100))
            rows.append(Row(name: "gateway load: device change→upstream p99", value: percentile(load.latencies, 0.99), unit: "ms", baseline: "poll interval (ms)", baselineValue: 100))
        }

        // The Modbus server façade: the same client loop against the agent's façade
        // (100 holding registers mapped to registers of the node) and against the libmodbus server.
        do {
            let d = "\(dir)/facade"
            mkdir(d, 0o700)
            let facade = freePort()
            var map = "[[modbus_server]]\nlisten = \"127.0.0.1:\(facade)\"\n"
            for i in 0..<100 { map += "[[modbus_server.register]]\nname = \"bench.app/g/r\(i)\"\ntable = \"holding\"\naddress = \(i)\n" }
            let c = try LinkBench.cluster(dir: d, binaries: binaries, edgeBinary: edgeBinary, edgeExtra: map)
            defer { c.stop() }
            for i in 0..<100 { _ = try c.edgeAPI.call(.object(["op": .string("set"), "register": .string("bench.app/g/r\(i)"), "value": .int(Int64(i))])) }
            let loop = try LinkBench.Process("\(tools)/modbus-client-loop", ["\(facade)", "100", "\(seconds)"], readable: true)
            defer { loop.stop() }
            let f = (loop.line() ?? "").split(separator: " ")
            guard f.count == 4, let n = Double(f[1]), let s = Double(f[3]) else { throw APIClientError("modbus-client-loop against the façade failed") }
            rows.append(Row(name: "Modbus server façade: reads of 100 holding registers", value: n / s, unit: "transactions/s",
                            baseline: "bare libmodbus server (bench/modbus), same client", baselineValue: bare))
        }

        // 3. Firmware bridge over a pty: every report committed (sync=full) before it is acknowledged.
        do {
            let d = "\(dir)/serial"
            mkdir(d, 0o700)
            let count = Int(seconds * 300)
            let device = try LinkBench.Process(sim, ["--pty", "--count", "\(count)"], readable: true)
            defer { device.stop() }
            let pty = String((device.line() ?? "").dropFirst(4))
            let t0 = now()
            let (daemon, edge, _, _) = try cluster(dir: d, binaries: binaries, edgeBinary: edgeBinary, device: """
                [[device]]
                name = "sim"
                kind = "serial"
                port = "\(pty)"
                group = "bench.dev/sim"
                """)
            defer { edge.stop(); daemon.stop() }
            guard device.line() == "counted \(count)" else { throw APIClientError("sfb-sim did not finish") }
            let elapsed = now() - t0
            rows.append(Row(name: "firmware bridge over a pty: acknowledged changes", value: Double(count) / elapsed, unit: "changes/s",
                            baseline: "store commit, 1 delta per block (sync=full)", baselineValue: try singleCommits(dir: d)))
        }

        // 4. A firmware device's change → upstream visible: sfb-sim stamps `clock` with its wall clock 1,000 times a second.
        do {
            let d = "\(dir)/clock"
            mkdir(d, 0o700)
            let device = try LinkBench.Process(sim, ["--pty", "--clock-hz", "1000"], readable: true)
            defer { device.stop() }
            let pty = String((device.line() ?? "").dropFirst(4))
            let (daemon, edge, _, up) = try cluster(dir: d, binaries: binaries, edgeBinary: edgeBinary,
                                                    device: "[[device]]\nname = \"mcu\"\nkind = \"serial\"\nport = \"\(pty)\"\ngroup = \"bench.dev/mcu\"\n")
            defer { edge.stop(); daemon.stop() }
            let (latencies, rate) = try clockLatencies(up, register: "bench.dev/mcu/clock", seconds: seconds * 3)
            rows.append(Row(name: "firmware device change→upstream p50 (\(latencies.count) changes, \(Int(rate))/s seen)", value: percentile(latencies, 0.5), unit: "ms",
                            baseline: "ms between changes seen", baselineValue: 1000 / rate))
            rows.append(Row(name: "firmware device change→upstream p99", value: percentile(latencies, 0.99), unit: "ms", baseline: "ms between changes seen", baselineValue: 1000 / rate))
        }
        return rows
    }
}
