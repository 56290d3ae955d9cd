#if canImport(Glibc)
import Glibc
import Dispatch
#endif
import CNIOLinux  // epoll (SwiftNIO's shim of the Linux headers)
import Logging
import SpookCore
import SpookLink
import SpookNode
import SpookPostgres
import SpookStore
import SpookTestSupport
import SpookWire

/// The fleet benchmark: many simulated agents, each a real ETCP/ESTP client
/// with its own Ed25519 key (authenticated as a `[[peer]]`), writing into
/// `spookd` at a fixed rate. One thread drives every agent over non-blocking
/// Unix sockets with epoll. An agent sends as a real agent's session does:
/// when no DELTAS frame is unacknowledged, every delta written since its
/// last frame; while some are, only full frames (1,000 deltas), at most
/// `window` unacknowledged. It subscribes to nothing (a publisher: the
/// daemon sends it ACKs only). Agent i of n writes at its own phase, i/n of
/// the interval, as independent agents do; in lockstep all write at once.
///
/// Latency is write → durable at the daemon: from the moment a delta is
/// made to the ACK that covers it (the daemon sends ACK after the commit).
enum FleetBench {
    struct Result {
        var durablePerSecond: Double
        var p50Ms: Double
        var p99Ms: Double
        /// A DELTAS frame's round trip: sent → its ACK (a write's latency
        /// adds the wait for an earlier frame's ACK, by Nagle's rule).
        var frameP50Ms: Double
        var frameP99Ms: Double
        var frameMeanMs: Double
        var cpuPercent: Double
        var rssMiB: Double
        /// The load generator's own CPU (this process), which shares the machine with the daemons.
        var generatorPercent: Double
        var agents: Int
        /// From the daemons' own metrics over the window: group commits/s (all
        /// daemons), DELTAS frames per group commit, and the share of each
        /// daemon's wall time spent in commits (the node loop waits meanwhile).
        var commitsPerSecond: Double?
        var framesPerCommit = 0.0
        var commitShare = 0.0
        /// Means over the window, from the daemons' histograms: a received
        /// DELTAS frame's time from its read to the start of its group commit,
        /// a group commit's time, and a frame's time from its read to its ACK.
        var waitMeanMs = 0.0
        var commitMeanMs = 0.0
        var ackMeanMs = 0.0
    }

    /// The daemons' counters that say where a group commit's time goes.
    static let commitMetrics = ["spook_group_commits_total", "spook_group_commit_frames_total", "spook_commit_seconds_sum", "spook_commit_seconds_count",
                                "spook_frame_wait_seconds_sum", "spook_frame_wait_seconds_count", "spook_frame_ack_seconds_sum", "spook_frame_ack_seconds_count"]

    /// `GET /metrics` from a daemon on 127.0.0.1:`port`: the unlabelled samples named in `commitMetrics`.
    static func scrape(_ port: Int) throws -> [String: Double] {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw APIClientError("socket: errno \(errno)") }
        defer { close(fd) }
        // A daemon's loop may be busy in a commit for seconds (PostgreSQL at saturation).
        var timeout = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = in_port_t(UInt16(port).bigEndian)
        let ok = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard ok else { throw APIClientError("metrics on port \(port): connect failed, errno \(errno)") }
        let request = Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        _ = Glibc.send(fd, request, request.count, Int32(MSG_NOSIGNAL))
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            guard n > 0 else { break }
            response += chunk[..<n]
        }
        var found: [String: Double] = [:]
        for line in String(decoding: response, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, commitMetrics.contains(String(parts[0])), let v = Double(parts[1]) { found[String(parts[0])] = v }
        }
        guard found.count == commitMetrics.count else { throw APIClientError("metrics on port \(port): missing \(commitMetrics.filter { found[$0] == nil })") }
        return found
    }

    final class Agent {
        let identity: Identity
        let origin: Origin
        let group: QGroupName
        var fd: Int32 = -1
        var decoder = FrameDecoder()
        var handshake: Handshake
        var linked = false
        var out: [UInt8] = []
        var seq: UInt64 = 0
        var acked: UInt64 = 0
        var sentThrough: UInt64 = 0
        var inFlight = 0
        /// Creation time of each seq after `acked` (index 0 is acked + 1).
        var made: [Double] = []
        /// When each unacknowledged DELTAS frame was sent, oldest first.
        var framesSent: [Double] = []
        var madeBase: UInt64 = 1
        var due = 0.0
        var lastSent = 0.0

        init(identity: Identity, index: Int, daemonKey: [UInt8]) throws {
            self.identity = identity
            origin = identity.origin
            group = try QGroupName("fleet.a\(index)/g")
            handshake = Handshake(side: .initiator, identity: identity, role: .agent, nonce: (0..<32).map { _ in UInt8.random(in: 0...255) },
                                  subscriptions: [], node: "a\(index)", isAuthorised: { $0 == daemonKey })
        }

        func queue(_ m: Message) { out += m.frame.encoded }
    }

    /// Writes the daemons' configs (one key, `daemons` listeners) and returns the agents' identities.
    static func configure(dir: String, daemons: Int, agents: Int, data: String, metricsPorts: [Int]) throws -> (daemonKey: Identity, agents: [Identity]) {
        let daemonKey = Identity()
        try daemonKey.save(path: "\(dir)/d.key")
        let keys = (0..<agents).map { _ in Identity() }
        var peers = ""
        for (i, k) in keys.enumerated() {
            peers += "[[peer]]\nname = \"a\(i)\"\nkey = \"\(k.publicKey.hex)\"\nwrite = [\"fleet.*\"]\n"
        }
        for d in 0..<daemons {
            LinkBench.write("\(dir)/d\(d).toml", """
                [node]
                name = "d\(d)"
                key = "\(dir)/d.key"
                data = "\(data)"
                [api]
                socket = "\(dir)/d\(d).sock"
                [metrics]
                listen = "127.0.0.1:\(metricsPorts[d])"
                [limits]
                connections_max = \(agents + 100)
                connections_per_source_max = \(agents + 100)
                [[listen]]
                url = "unix://\(dir)/link\(d).sock"
                \(peers)
                """)
        }
        return (daemonKey, keys)
    }

    static func connect(_ path: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        let ok = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
        guard ok else {
            let e = errno
            close(fd)
            errno = e
            return -1
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    /// Runs the load: `agents` agents spread over the daemons' link sockets,
    /// `rate` updates/s each, `warmup` then `seconds` measured.
    static func load(dir: String, daemons: [LinkBench.Process], metricsPorts: [Int], daemonKey: Identity, keys: [Identity], rate: Double, warmup: Double,
                     seconds: Double, lockstep: Bool, window: Int = 8) throws -> Result {
        var agents: [Agent] = []
        for (i, k) in keys.enumerated() {
            let a = try Agent(identity: k, index: i, daemonKey: daemonKey.publicKey)
            // The socket file appears at bind(2), a moment before listen(2):
            // a refusal then is retried, for up to 10 s.
            let path = "\(dir)/link\(i % daemons.count).sock"
            let deadline = now() + 10
            a.fd = connect(path)
            while a.fd < 0 && (errno == ECONNREFUSED || errno == EAGAIN) && now() < deadline {
                usleep(10_000)
                a.fd = connect(path)
            }
            guard a.fd >= 0 else { throw APIClientError("agent \(i) could not connect to \(path): \(String(cString: strerror(errno)))") }
            a.queue(a.handshake.start())
            agents.append(a)
        }
        let interval = 1 / rate
        var latencies: [Double] = []
        var frameTrips: [Double] = []
        latencies.reserveCapacity(Int(rate * Double(keys.count) * seconds))
        var ackedInWindow = 0
        let start = now()
        var measureFrom = Double.infinity, measureTo = Double.infinity
        var cpu0: [Int] = [], cpuStart = 0.0
        // epoll, not poll(2): scanning 1,000 descriptors every millisecond was
        // a third of this thread's time, taken from the daemon it measures.
        let ep = epoll_create1(0)
        guard ep >= 0 else { throw APIClientError("epoll_create1: errno \(errno)") }
        defer { close(ep) }
        for (i, a) in agents.enumerated() {
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue
            ev.data.u64 = UInt64(i)
            guard epoll_ctl(ep, EPOLL_CTL_ADD, a.fd, &ev) == 0 else { throw APIClientError("epoll_ctl: errno \(errno)") }
        }
        var events = [epoll_event](repeating: epoll_event(), count: 1024)
        var usage0 = rusage()
        var chunk = [UInt8](repeating: 0, count: 65536)
        let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
        var cpuPercent = 0.0, rss = 0.0, generatorPercent = 0.0
        // The daemons' counters, read on a thread of their own: a daemon busy
        // in a commit may answer seconds late, and this loop must keep its
        // agents talking meanwhile. Rates use the times the answers came.
        final class Scrape: @unchecked Sendable {
            var result: (at: Double, values: [String: Double])?
            let done = DispatchSemaphore(value: 0)
        }
        func scrapeAll(_ ports: [Int]) -> Scrape {
            let s = Scrape()
            DispatchQueue.global().async {
                do {
                    let values = try ports.map(scrape).reduce(into: [:]) { total, one in total.merge(one, uniquingKeysWith: +) }
                    s.result = (now(), values)
                } catch {
                    // A scrape that fails leaves the commit rows out (said on stderr), not the run.
                    let note = Array("fleet: \(error); the commit rows are left out\n".utf8)
                    _ = write(2, note, note.count)
                }
                s.done.signal()
            }
            return s
        }
        var scrapes: [Scrape] = []
        while true {
            let t = now()
            // Writing starts once every agent is linked (a handshake is not measured against a loaded daemon).
            if measureFrom.isInfinite, agents.allSatisfy(\.linked) {
                measureFrom = t + warmup
                measureTo = measureFrom + seconds
                for (i, a) in agents.enumerated() { a.due = lockstep ? t : t + interval * Double(i) / Double(agents.count) }
            }
            if t >= measureFrom && cpu0.isEmpty {
                cpu0 = daemons.map(\.cpuTicks)
                scrapes.append(scrapeAll(metricsPorts))
                cpuStart = t
                getrusage(RUSAGE_SELF.rawValue, &usage0)
                let note = Array("fleet: \(agents.count) agents linked, measuring for \(Int(seconds)) s\n".utf8)
                _ = write(2, note, note.count)
            }
            if t >= measureTo {
                cpuPercent = Double(zip(daemons, cpu0).reduce(0) { $0 + $1.0.cpuTicks - $1.1 }) / hz / (t - cpuStart) * 100
                var usage1 = rusage()
                getrusage(RUSAGE_SELF.rawValue, &usage1)
                func seconds(_ u: rusage) -> Double {
                    Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
                }
                generatorPercent = (seconds(usage1) - seconds(usage0)) / (t - cpuStart) * 100
                rss = Double(daemons.reduce(0) { $0 + $1.rssKiB }) / 1024
                scrapes.append(scrapeAll(metricsPorts))
                break
            }
            if t - start > 120 { throw APIClientError("the agents did not all link within 120 s") }
            // Writes due, then frames the window allows.
            for a in agents where a.linked && measureFrom.isFinite {
                while a.due <= t {
                    a.seq += 1
                    a.made.append(a.due)
                    a.due += interval
                }
                // As a real agent's session: a partial frame only when none is
                // unacknowledged; more frames only full ones (1,000 deltas).
                if a.inFlight < window && a.sentThrough < a.seq && (a.inFlight == 0 || a.seq - a.sentThrough >= 1_000) {
                    var batch: [Delta] = []
                    let hlcMs = UInt64(SystemClock().nowMs())
                    let last = min(a.seq, a.sentThrough + 1_000)
                    for s in (a.sentThrough + 1)...last {
                        batch.append(try Delta(origin: a.origin, seq: s, hlc: HLCTimestamp(ms: hlcMs, counter: UInt16(truncatingIfNeeded: s)), group: a.group,
                                               writes: [Write("r\(s % 10)", .set, .int(Int64(s)))]))
                    }
                    a.sentThrough = last
                    a.inFlight += 1
                    a.framesSent.append(t)
                    a.queue(.deltas(batch))
                    a.lastSent = t
                } else if t - a.lastSent > 0.5 {
                    // A full window is no reason to fall silent: the daemon ends silent links.
                    a.queue(.heartbeat(sentMs: SystemClock().nowMs()))
                    a.lastSent = t
                }
            }
            // What a full socket buffer kept back is tried again next turn.
            for (i, a) in agents.enumerated() where !a.out.isEmpty {
                let n = a.out.withUnsafeBytes { Glibc.send(a.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n == a.out.count {
                    a.out.removeAll(keepingCapacity: true)
                } else if n > 0 {
                    a.out.removeFirst(n)
                } else if n < 0 && errno != EAGAIN {
                    throw APIClientError("agent \(i): send failed, errno \(errno)")
                }
            }
            let ready = Int(epoll_wait(ep, &events, Int32(events.count), 1))
            for e in events.prefix(max(0, ready)) {
                let i = Int(e.data.u64)
                let a = agents[i]
                let n = read(a.fd, &chunk, chunk.count)
                if n == 0 || (n < 0 && errno != EAGAIN) { throw APIClientError("agent \(i): the daemon closed the link") }
                if n < 0 { continue }
                a.decoder.feed(chunk[..<n])
                while let f = try a.decoder.next() {
                    let m = try Message(frame: f)
                    if !a.linked {
                        for reply in try a.handshake.receive(m) { a.queue(reply) }
                        if a.handshake.peer != nil {
                            a.linked = true
                            a.decoder.payloadMax = Frame.payloadMaxDefault
                            a.queue(.vector(QStateVector()))
                        }
                        continue
                    }
                    switch m {
                    case .ack(let v, _):
                        let through = v[a.origin]
                        guard through >= a.acked else { continue }
                        // Each ACK answers the oldest unacknowledged frame.
                        let at = now()
                        a.inFlight = max(0, a.inFlight - 1)
                        if !a.framesSent.isEmpty {
                            let sent = a.framesSent.removeFirst()
                            if at >= measureFrom && at < measureTo { frameTrips.append(at - sent) }
                        }
                        guard through > a.acked else { continue }
                        let count = Int(through - a.acked)
                        if at >= measureFrom && at < measureTo {
                            ackedInWindow += count
                            for made in a.made.prefix(count) { latencies.append(at - made) }
                        }
                        a.made.removeFirst(min(count, a.made.count))
                        a.acked = through
                    case .error(let code, let text):
                        throw APIClientError("agent \(i): the daemon refused: \(code) \(text)")
                    default:
                        break
                    }
                }
            }
        }
        for a in agents { close(a.fd) }
        var r = Result(durablePerSecond: Double(ackedInWindow) / seconds, p50Ms: percentile(latencies, 0.5) * 1000,
                       p99Ms: percentile(latencies, 0.99) * 1000,
                       frameP50Ms: percentile(frameTrips, 0.5) * 1000, frameP99Ms: percentile(frameTrips, 0.99) * 1000,
                       frameMeanMs: frameTrips.reduce(0, +) / Double(max(1, frameTrips.count)) * 1000, cpuPercent: cpuPercent, rssMiB: rss,
                       generatorPercent: generatorPercent, agents: keys.count)
        for s in scrapes { s.done.wait() }
        guard scrapes.count == 2, let m0 = scrapes[0].result, let m1 = scrapes[1].result, m1.at > m0.at else { return r }
        let span = m1.at - m0.at
        let delta = { (name: String) in m1.values[name, default: 0] - m0.values[name, default: 0] }
        let commits = delta("spook_group_commits_total")
        r.commitsPerSecond = commits / span
        r.framesPerCommit = commits > 0 ? delta("spook_group_commit_frames_total") / commits : 0
        r.commitShare = delta("spook_commit_seconds_sum") / span / Double(daemons.count) * 100
        let mean = { (histogram: String) in delta("\(histogram)_sum") / max(1, delta("\(histogram)_count")) * 1000 }
        r.waitMeanMs = mean("spook_frame_wait_seconds")
        r.commitMeanMs = mean("spook_commit_seconds")
        r.ackMeanMs = mean("spook_frame_ack_seconds")
        return r
    }

    /// The same number of one-write deltas committed in-process to a store on
    /// `data`, 100 per StateBlock (what one agent's frame holds at 100/s and a
    /// 1 s round trip): the store's own ceiling, the row's baseline.
    static func storeCeiling(data: String, count: Int) throws -> Double {
        let store = try SQLStore.open(data: data, options: StoreOptions(sync: .full), logger: Logger(label: "bench"))
        defer { store.close() }
        let origin = Origin(0xBE7C)
        let group = try QGroupName("fleet.ceiling/g")
        let deltas = try (1...UInt64(count)).map { s in
            try Delta(origin: origin, seq: s, hlc: HLCTimestamp(ms: 1_700_000_000_000 + s / 100, counter: UInt16(s % 100)), group: group,
                      writes: [Write("r\(s % 10)", .set, .int(Int64(s)))])
        }
        let t = now()
        var i = 0
        while i < deltas.count {
            _ = try store.commit(Array(deltas[i..<min(i + 100, deltas.count)]))
            i += 100
        }
        return Double(count) / (now() - t)
    }

    static func run(dir: String, binaries: String, agents: Int, rate: Double, seconds: Double, postgres: Bool, lockstep: Bool) throws -> [Row] {
        var rows: [Row] = []
        func scenario(_ name: String, daemons: Int, data: String, ceilingData: String) throws {
            let sub = "\(dir)/\(name)"
            mkdir(sub, 0o700)
            let metricsPorts = (0..<daemons).map { _ in DeviceBench.freePort() }
            let (daemonKey, keys) = try configure(dir: sub, daemons: daemons, agents: agents, data: data, metricsPorts: metricsPorts)
            var procs: [LinkBench.Process] = []
            for d in 0..<daemons {
                procs.append(try LinkBench.Process("\(binaries)/spookd", ["run", "-c", "\(sub)/d\(d).toml", "--log-level", "warning"], stderr: "\(sub)/d\(d).log"))
                LinkBench.waitForSocket("\(sub)/link\(d).sock")
            }
            defer { for p in procs { p.stop() } }
            let r: Result
            do {
                r = try load(dir: sub, daemons: procs, metricsPorts: metricsPorts, daemonKey: daemonKey, keys: keys, rate: rate, warmup: 3, seconds: seconds,
                             lockstep: lockstep)
            } catch {
                for d in 0..<daemons { _ = system("tail -n 5 '\(sub)/d\(d).log' >&2") }
                throw error
            }
            let ceiling = try storeCeiling(data: ceilingData, count: 50_000)
            let label = "\(agents) agents × \(Int(rate))/s\(lockstep ? " in lockstep" : "") → \(daemons) spookd on \(name.hasPrefix("sqlite") ? "SQLite" : "PostgreSQL")"
            rows.append(Row(name: "\(label): durable updates/s", value: r.durablePerSecond, unit: "updates/s",
                            baseline: "the store alone, in-process, 100/block", baselineValue: ceiling))
            rows.append(Row(name: "\(label): write → durable at daemon p50", value: r.p50Ms, unit: "ms", baseline: "p99", baselineValue: r.p99Ms))
            rows.append(Row(name: "\(label): DELTAS frame sent → ACK p50", value: r.frameP50Ms, unit: "ms", baseline: "p99", baselineValue: r.frameP99Ms))
            rows.append(Row(name: "\(label): daemon CPU (sum)", value: r.cpuPercent, unit: "% of a core", baseline: "daemon RSS (sum, MiB)", baselineValue: r.rssMiB))
            rows.append(Row(name: "\(label): load generator CPU", value: r.generatorPercent, unit: "% of a core", baseline: "daemon CPU (sum)", baselineValue: r.cpuPercent))
            guard let commitsPerSecond = r.commitsPerSecond else { return }
            rows.append(Row(name: "\(label): group commits/s (all daemons)", value: commitsPerSecond, unit: "commits/s",
                            baseline: "DELTAS frames per commit", baselineValue: r.framesPerCommit))
            rows.append(Row(name: "\(label): wall time in commits (per daemon)", value: r.commitShare, unit: "%",
                            baseline: "daemon CPU (sum)", baselineValue: r.cpuPercent))
            // Where a frame's round trip goes: inside the daemon (read → ACK handed
            // to the link) against the whole, as the agents saw it.
            rows.append(Row(name: "\(label): DELTAS frame read → ACK in the daemon, mean", value: r.ackMeanMs, unit: "ms",
                            baseline: "sent → ACK at the agent, mean", baselineValue: r.frameMeanMs))
            rows.append(Row(name: "\(label): DELTAS frame read → its commit starts, mean", value: r.waitMeanMs, unit: "ms",
                            baseline: "a group commit, mean", baselineValue: r.commitMeanMs))
        }
        try scenario("sqlite", daemons: 1, data: "\(dir)/fleet.db", ceilingData: "\(dir)/ceiling.db")
        guard postgres else { return rows }
        let pg = try PostgresServer.shared()
        try scenario("postgres-1", daemons: 1, data: try pg.createDatabase("fleet"), ceilingData: try pg.createDatabase("ceiling"))
        try scenario("postgres-2", daemons: 2, data: try pg.createDatabase("fleet"), ceilingData: try pg.createDatabase("ceiling"))
        return rows
    }
}
