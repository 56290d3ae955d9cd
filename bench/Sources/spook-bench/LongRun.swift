#if canImport(Glibc)
import Glibc
#endif
import SpookNode

/// The long run: a million writes over a live link, with a `watch` client on
/// the daemon and background compaction on both sides. Bounded means the
/// databases and the resident memory of both daemons end near where they
/// started, and the write rate of the last tenth is that of the first.
enum LongRunBench {
    static func diskBytes(_ path: String) -> Double {
        ["", "-wal"].reduce(0.0) { total, suffix in
            var info = stat()
            return total + (stat(path + suffix, &info) == 0 ? Double(info.st_size) : 0)
        }
    }

    static func run(dir: String, binaries: String, edgeBinary: String, count: Int) throws -> [Row] {
        let compaction = "[compaction]\ninterval_ms = 1000\n"
        let c = try LinkBench.cluster(dir: dir, binaries: binaries, edgeBinary: edgeBinary, daemonExtra: compaction, edgeExtra: compaction)
        defer { c.stop() }
        let watcher = try APIClient(socket: "\(dir)/d.sock")
        _ = try watcher.call(.object(["op": .string("watch"), "prefix": .string("bench.long/")]))
        // The watcher reads on its own thread, as a dashboard would.
        let reading = WatchReader(watcher)
        reading.start()

        let tenth = max(1, count / 10)
        var rates: [Double] = []
        var startRSS = (0, 0), startDisk = (0.0, 0.0)
        var sent = 0, acked = 0
        var tenthStart = now()
        while acked < count {
            while sent < count && sent - acked < 1_000 {
                try c.edgeAPI.send(.object(["op": .string("set"), "register": .string("bench.long/g\(sent % 100)/r\(sent % 10)"),
                                            "value": .int(Int64(sent))]))
                sent += 1
            }
            guard case .bool(true)? = try c.edgeAPI.next(timeoutMs: 60_000)?["ok"] else { throw APIClientError("a write failed") }
            acked += 1
            if acked % tenth == 0 {
                rates.append(Double(tenth) / (now() - tenthStart))
                tenthStart = now()
                if acked == tenth {
                    startRSS = (c.edge.rssKiB, c.daemon.rssKiB)
                    startDisk = (diskBytes("\(dir)/e.db"), diskBytes("\(dir)/d.db"))
                }
            }
        }
        // Let the daemon take the rest and both sides compact.
        usleep(3_000_000)
        let endRSS = (c.edge.rssKiB, c.daemon.rssKiB)
        let endDisk = (diskBytes("\(dir)/e.db"), diskBytes("\(dir)/d.db"))
        reading.stop()
        let n = "\(count / 1000)k writes"
        return [
            Row(name: "long run \(n): agent write rate, last 10 %", value: rates.last ?? 0, unit: "writes/s", baseline: "first 10 %", baselineValue: rates.first ?? 1),
            Row(name: "long run \(n): agent database at the end", value: endDisk.0 / 1_048_576, unit: "MiB", baseline: "after the first 10 %", baselineValue: startDisk.0 / 1_048_576),
            Row(name: "long run \(n): daemon database at the end", value: endDisk.1 / 1_048_576, unit: "MiB", baseline: "after the first 10 %", baselineValue: startDisk.1 / 1_048_576),
            Row(name: "long run \(n): agent RSS at the end", value: Double(endRSS.0) / 1024, unit: "MiB", baseline: "after the first 10 %", baselineValue: Double(startRSS.0) / 1024),
            Row(name: "long run \(n): daemon RSS at the end (1 watcher)", value: Double(endRSS.1) / 1024, unit: "MiB", baseline: "after the first 10 %", baselineValue: Double(startRSS.1) / 1024),
            Row(name: "long run \(n): changes the watcher read", value: Double(reading.events), unit: "events", baseline: "writes", baselineValue: Double(count)),
        ]
    }
}

/// Reads a watch stream on a thread of its own until stopped.
final class WatchReader: @unchecked Sendable {
    let client: APIClient
    private var stopping = false
    private(set) var events = 0
    private var thread = pthread_t()

    init(_ client: APIClient) { self.client = client }

    func start() {
        let box = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { arg in
            let me = Unmanaged<WatchReader>.fromOpaque(arg!).takeRetainedValue()
            while !me.stopping {
                if (try? me.client.next(timeoutMs: 200)) != nil { me.events += 1 }
            }
            return nil
        }, box)
    }

    func stop() {
        stopping = true
        pthread_join(thread, nil)
    }
}
