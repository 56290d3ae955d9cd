#if canImport(Glibc)
import Glibc
#endif
import SpookCore
import SpookLink
import SpookNode

/// The link benchmark: real `spookd` and `spook-edge` processes (the
/// release binaries next to this one) on a Unix socket link, driven
/// through the local API like an application would.
enum LinkBench {
    /// A child process; with `readable`, its stdout is a pipe read by `line()`
    /// (the C helpers print "ready", counts, "pty …"), else /dev/null.
    final class Process {
        let pid: pid_t
        let stdoutFD: Int32?
        var buffer: [UInt8] = []

        init(_ path: String, _ arguments: [String], readable: Bool = false, stderr: String = "/dev/null") throws {
            var child: pid_t = 0
            let argv = ([path] + arguments).map { strdup($0) } + [nil]
            defer { for p in argv { free(p) } }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            var fds: [Int32] = [-1, -1]
            if readable {
                pipe(&fds)
                posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
                posix_spawn_file_actions_addclose(&actions, fds[0])
            } else {
                posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            }
            posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o600)
            guard posix_spawn(&child, path, &actions, nil, argv, environ) == 0 else { throw APIClientError("cannot start \(path)") }
            if readable { close(fds[1]) }
            pid = child
            stdoutFD = readable ? fds[0] : nil
        }

        /// The next line of stdout; nil at its end.
        func line() -> String? {
            guard let fd = stdoutFD else { return nil }
            while true {
                if let nl = buffer.firstIndex(of: 10) {
                    defer { buffer.removeSubrange(...nl) }
                    return String(decoding: buffer[..<nl], as: UTF8.self)
                }
                var chunk = [UInt8](repeating: 0, count: 4096)
                let n = read(fd, &chunk, chunk.count)
                if n <= 0 { return nil }
                buffer += chunk[..<n]
            }
        }

        func stop() {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            if let fd = stdoutFD { close(fd) }
        }
        /// Resident memory, from /proc.
        var rssKiB: Int {
            guard let f = fopen("/proc/\(pid)/status", "r") else { return -1 }
            defer { fclose(f) }
            var line = [CChar](repeating: 0, count: 256)
            while fgets(&line, 256, f) != nil {
                let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if text.hasPrefix("VmRSS:") { return Int(text.split(separator: " ").dropFirst().first ?? "") ?? -1 }
            }
            return -1
        }
        /// User + system CPU time in clock ticks, from /proc.
        var cpuTicks: Int {
            guard let f = fopen("/proc/\(pid)/stat", "r") else { return -1 }
            defer { fclose(f) }
            var line = [CChar](repeating: 0, count: 1024)
            guard fgets(&line, 1024, f) != nil else { return -1 }
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: ")").last?.split(separator: " ") ?? []
            // After ")": state is field 3, utime 14, stime 15 (1-based in proc(5)).
            guard fields.count > 13, let u = Int(fields[11]), let s = Int(fields[12]) else { return -1 }
            return u + s
        }
    }

    static func write(_ path: String, _ text: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = text.withCString { Glibc.write(fd, $0, strlen($0)) }
        close(fd)
    }

    static func waitForSocket(_ path: String) {
        for _ in 0..<500 where access(path, F_OK) != 0 { usleep(10_000) }
    }

    /// A started pair: the daemon, the agent, and API clients to each.
    struct Cluster {
        let daemon: Process, edge: Process
        let edgeAPI: APIClient, upAPI: APIClient
        let edgeOrigin: Origin
        func stop() {
            edge.stop()
            daemon.stop()
        }
    }

    /// Real `spookd` and `spook-edge` in `dir`, linked over a Unix socket;
    /// `daemonExtra` and `edgeExtra` are added to their configs.
    static func cluster(dir: String, binaries: String, edgeBinary: String, daemonExtra: String = "", edgeExtra: String = "") throws -> Cluster {
        let daemonKey = Identity(), edgeKey = Identity()
        try daemonKey.save(path: "\(dir)/d.key")
        try edgeKey.save(path: "\(dir)/e.key")
        write("\(dir)/d.toml", """
            [node]
            name = "up"
            key = "\(dir)/d.key"
            data = "\(dir)/d.db"
            [api]
            socket = "\(dir)/d.sock"
            [[listen]]
            url = "unix://\(dir)/link.sock"
            [[peer]]
            name = "gw"
            key = "\(edgeKey.publicKey.hex)"
            read = ["*"]
            write = ["*"]
            \(daemonExtra)
            """)
        write("\(dir)/e.toml", """
            [node]
            name = "gw"
            key = "\(dir)/e.key"
            data = "\(dir)/e.db"
            [api]
            socket = "\(dir)/e.sock"
            [[upstream]]
            name = "primary"
            url = "unix://\(dir)/link.sock"
            key = "\(daemonKey.publicKey.hex)"
            \(edgeExtra)
            """)
        let daemon = try Process("\(binaries)/spookd", ["run", "-c", "\(dir)/d.toml", "--log-level", "error"])
        waitForSocket("\(dir)/d.sock")
        let edge = try Process(edgeBinary, ["run", "-c", "\(dir)/e.toml", "--log-level", "error"])
        waitForSocket("\(dir)/e.sock")
        return Cluster(daemon: daemon, edge: edge, edgeAPI: try APIClient(socket: "\(dir)/e.sock"),
                       upAPI: try APIClient(socket: "\(dir)/d.sock"), edgeOrigin: edgeKey.origin)
    }

    static func run(dir: String, binaries: String, edgeBinary: String, count: Int) throws -> [Row] {
        let c = try cluster(dir: dir, binaries: binaries, edgeBinary: edgeBinary)
        defer { c.stop() }
        let edge = c.edge, edgeAPI = c.edgeAPI, upAPI = c.upAPI
        func upstreamHolds() throws -> Int {
            let s = try upAPI.call(.object(["op": .string("status")]))
            if case .int(let n)? = s["vector"]?[c.edgeOrigin.description] { return Int(n) }
            return 0
        }
        while try upstreamHolds() == 0 { usleep(10_000) }  // the edge's first $state arrived: linked

        var rows: [Row] = []
        let idleRSS = edge.rssKiB
        let cpu0 = edge.cpuTicks
        let idleStart = now()
        usleep(5_000_000)
        let idleCPU = Double(edge.cpuTicks - cpu0) / Double(sysconf(Int32(_SC_CLK_TCK))) / (now() - idleStart)

        // Throughput: pipelined sets, acknowledged by the edge (durable there), then held upstream.
        let before = try upstreamHolds()
        let start = now()
        let batch = 1_000
        var sent = 0, acked = 0
        while acked < count {
            while sent < count && sent - acked < batch {
                try edgeAPI.send(.object(["op": .string("set"), "register": .string("bench.site/g\(sent % 100)/r\(sent % 10)"), "value": .int(Int64(sent))]))
                sent += 1
            }
            guard case .bool(true)? = try edgeAPI.next(timeoutMs: 60_000)?["ok"] else { throw APIClientError("a write failed") }
            acked += 1
        }
        let ackedAt = now()
        while try upstreamHolds() < before + count { usleep(1_000) }
        let upstreamAt = now()
        let edgeRate = Double(count) / (ackedAt - start)
        let upstreamRate = Double(count) / (upstreamAt - start)
        rows.append(Row(name: "agent→daemon, durable upstream", value: upstreamRate, unit: "updates/s", baseline: "durable on the agent only", baselineValue: edgeRate))

        // Latency at a fixed 1,000 writes/s: write on the edge, seen by a watcher on the daemon.
        let watcher = try APIClient(socket: "\(dir)/d.sock")
        _ = try watcher.call(.object(["op": .string("watch"), "prefix": .string("bench.lat/")]))
        let writer = try APIClient(socket: "\(dir)/e.sock")
        var latencies: [Double] = []
        var sentAt: [Int: Double] = [:]
        let total = 3_000
        let t0 = now()
        var next = 0
        while latencies.count < total {
            let due = t0 + Double(next) / 1_000
            if next < total && now() >= due {
                sentAt[next] = now()
                try writer.send(.object(["op": .string("set"), "register": .string("bench.lat/g/r"), "value": .int(Int64(next))]))
                next += 1
            }
            while let answer = try? writer.next(timeoutMs: 0), answer["ok"] != nil {}
            while let event = try? watcher.next(timeoutMs: 0) {
                if case .int(let i)? = event["register"]?["value"], let t = sentAt[Int(i)] { latencies.append(now() - t) }
            }
            if next >= total && latencies.count < total && now() > t0 + 30 { break }
        }
        // Baseline: an API round trip to the daemon (get).
        var roundTrips: [Double] = []
        for _ in 0..<1_000 {
            let t = now()
            _ = try upAPI.call(.object(["op": .string("get"), "register": .string("bench.lat/g/r")]))
            roundTrips.append(now() - t)
        }
        rows.append(Row(name: "change→upstream visible p50 at 1k/s (\(latencies.count) of \(total))", value: percentile(latencies, 0.5) * 1e6, unit: "µs", baseline: "API get round trip p50", baselineValue: percentile(roundTrips, 0.5) * 1e6))
        rows.append(Row(name: "change→upstream visible p99 at 1k/s", value: percentile(latencies, 0.99) * 1e6, unit: "µs", baseline: "API get round trip p99", baselineValue: percentile(roundTrips, 0.99) * 1e6))

        // Footprint of the agent.
        for i in 0..<1_000 {
            _ = try edgeAPI.call(.object(["op": .string("set"), "register": .string("bench.regs/g\(i / 10)/r\(i % 10)"), "value": .int(Int64(i))]))
        }
        let rss1000 = edge.rssKiB
        var size = stat()
        stat(edgeBinary, &size)
        rows.append(Row(name: "spook-edge idle RSS", value: Double(idleRSS) / 1024, unit: "MiB", baseline: "RSS with 1,000 more registers", baselineValue: Double(rss1000) / 1024))
        rows.append(Row(name: "spook-edge idle CPU (5 s, 1 upstream, 1 s heartbeat)", value: idleCPU * 100, unit: "%", baseline: "binary size (MiB)", baselineValue: Double(size.st_size) / 1_048_576))
        return rows
    }
}

/// The value below which a fraction `p` of `xs` lies (NaN for none).
func percentile(_ xs: [Double], _ p: Double) -> Double {
    let sorted = xs.sorted()
    return sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}
