#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode

/// The live register page (wasm/web, `[web]` on spookd) in headless
/// Chromium: a register written 100 times a second on the daemon, each
/// change timed from the write to the page's DOM.
enum PageBench {
    static func run(dir: String, binaries: String, edgeBinary: String, root: String, seconds: Double) throws -> [Row] {
        let wsPort = DeviceBench.freePort(), webPort = DeviceBench.freePort()
        let page = Identity()
        try page.save(path: "\(dir)/page.key")
        let extra = """

            [[listen]]
            url = "ws://127.0.0.1:\(wsPort)/spook"
            [[peer]]
            name = "page"
            key = "\(page.publicKey.hex)"
            read = ["*"]
            write = ["*"]
            [web]
            listen = "127.0.0.1:\(webPort)"
            assets = "\(root)/wasm"
            link = "ws://127.0.0.1:\(wsPort)/spook"
            domains = ["bench.*"]

            """
        let c = try LinkBench.cluster(dir: dir, binaries: binaries, edgeBinary: edgeBinary, daemonExtra: extra)
        defer { c.stop() }
        guard system("make -s -C '\(root)/wasm' build/spook_core.wasm") == 0 else { fatalError("make -C wasm failed") }
        let register = "bench.l1/lat/t"
        let url = "http://127.0.0.1:\(webPort)/web/#seed=\(page.privateKey.seed.hex)&pub=\(page.publicKey.hex)"
        let durationMs = Int(seconds * 1000) + 1_000
        let tab = try LinkBench.Process("/usr/bin/node", ["--experimental-websocket", "--no-warnings", "\(root)/wasm/test/page-latency.mjs",
                                                          "/usr/bin/chromium", "\(dir)/profile", url, register, "\(durationMs)"], readable: true)
        defer { tab.stop() }
        guard tab.line() == "ready" else { fatalError("the page did not link") }
        // 100 changes a second; each value is the writer's wall clock (ms mod 10^9).
        let clock = SystemClock()
        var roundTrips: [Double] = []
        let t0 = now()
        var n = 0
        while now() < t0 + seconds {
            let due = t0 + Double(n) / 100
            if due > now() { usleep(UInt32((due - now()) * 1e6)) }
            let start = now()
            _ = try c.upAPI.call(.object(["op": .string("set"), "register": .string(register), "value": .int(Int64(clock.nowMs() % 1_000_000_000))]))
            roundTrips.append((now() - start) * 1000)
            n += 1
        }
        guard let line = tab.line(), case .array(let values)? = try? JSONValue.parse(Array(line.utf8)) else { fatalError("page-latency.mjs printed nothing") }
        let latencies = values.compactMap { v -> Double? in
            switch v {
            case .int(let i): Double(i)
            case .double(let d): d
            default: nil
            }
        }
        return [
            Row(name: "page: change → DOM p50 at 100 changes/s (\(latencies.count) of \(n) seen)", value: percentile(latencies, 0.5), unit: "ms",
                baseline: "API set round trip p50 (durable)", baselineValue: percentile(roundTrips, 0.5)),
            Row(name: "page: change → DOM p99", value: percentile(latencies, 0.99), unit: "ms",
                baseline: "API set round trip p99", baselineValue: percentile(roundTrips, 0.99)),
        ]
    }
}
