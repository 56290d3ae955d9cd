#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookNode
import SpookTestSupport
import Testing

/// Debian's mosquitto broker on 127.0.0.1, with its state in a folder so a
/// restart keeps the test host's session (and what was queued for it).
final class MosquittoBroker {
    let port: Int
    let dir: TemporaryDirectory
    var process: ChildProcess?

    /// `listeners`: more listener sections (after the plain, anonymous one on `port`).
    init(port: Int, dir: TemporaryDirectory, listeners: String = "") throws {
        self.port = port
        self.dir = dir
        // As root, mosquitto would switch to user "mosquitto", who cannot write the test's folder.
        let user = getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "root"
        let conf = """
            user \(user)
            per_listener_settings true
            listener \(port) 127.0.0.1
            allow_anonymous true
            \(listeners)
            persistence true
            persistence_location \(dir.path)/
            queue_qos0_messages true
            max_queued_messages 100000
            log_dest file \(dir.file("mosquitto.log"))

            """
        try conf.write(toFile: dir.file("mosquitto.conf"), atomically: true, encoding: .utf8)
        try start()
    }

    func start() throws {
        process = try ChildProcess("/usr/sbin/mosquitto", ["-c", dir.file("mosquitto.conf")])
        try waitUntil("mosquitto listening on \(port)") {
            guard let fd = CuttableProxy.connectLoopback(port) else { return false }
            close(fd)
            return true
        }
    }

    func stop() {
        process?.signal(SIGTERM)
        _ = process?.wait()
        process = nil
    }

    deinit { stop() }
}

/// The test's Sparkplug host application (Tests/Helpers/mqtt/sparkplug-host.py,
/// on pysparkplug): every message it decoded, and every rule it saw broken.
final class SparkplugHost {
    let child: JSONLineChild

    init(port: Int, group: String, node: String) throws {
        child = try JSONLineChild("\(repositoryRoot)/.venv/bin/python3", ["\(repositoryRoot)/Tests/Helpers/mqtt/sparkplug-host.py", "\(port)", group, node])
        try waitUntil("the Sparkplug host subscribed (is pysparkplug in .venv? scripts/install-deps)") { !child.seen("ready").isEmpty }
    }

    func messages(_ filter: (JSONValue) -> Bool = { _ in true }) -> [JSONValue] { child.messages(filter) }

    func of(_ type: String, device: String? = nil) -> [JSONValue] {
        messages { $0["type"] == .string(type) && (device == nil || $0["device"] == .string(device!)) }
    }

    var violations: [String] {
        messages { $0["violation"] != nil }.compactMap { if case .string(let s)? = $0["violation"] { s } else { nil } }
    }

    /// Each violation with the messages the host decoded just before it
    /// (type, device, seq, bdSeq): what a failed run needs to be read.
    var violationReport: String {
        var trail: [String] = [], report: [String] = []
        for m in messages() {
            if case .string(let v)? = m["violation"] {
                report.append("\(v) after [\(trail.suffix(8).joined(separator: ", "))]")
            } else if case .string(let type)? = m["type"] {
                var line = type
                if case .string(let d)? = m["device"] { line += "/\(d)" }
                if let s = m["seq"]?.intValue { line += " seq \(s)" }
                if let b = m["bdSeq"]?.intValue { line += " bdSeq \(b)" }
                trail.append(line)
            } else if m["sent"] != nil {
                trail.append("(command sent)")
            } else if case .string(let h)? = m["host"] {
                trail.append("(host \(h))")
            } else if case .string(let r)? = m["rebirth-requested"] {
                trail.append("(rebirth requested: \(r))")
            }
        }
        return report.joined(separator: "\n")
    }

    func send(_ command: String) throws { try child.send(command) }

    /// Every metric named `name` in the DBIRTH and DDATA (or only the DDATA) of `device`, in order: (value, historical).
    func values(_ device: String, _ name: String, dataOnly: Bool = false) -> [(value: JSONValue, historical: Bool)] {
        messages { ($0["type"] == .string("DDATA") || (!dataOnly && $0["type"] == .string("DBIRTH"))) && $0["device"] == .string(device) }.flatMap { m -> [(value: JSONValue, historical: Bool)] in
            guard case .array(let metrics)? = m["metrics"] else { return [] }
            return metrics.filter { $0["name"] == .string(name) }.map { ($0["value"] ?? .null, $0["historical"] == .bool(true)) }
        }
    }

    func stop() { child.stop() }
}
extension JSONValue {
    var intValue: Int64? { if case .int(let i) = self { i } else { nil } }
}

/// The agent as a Sparkplug B edge node, checked by a host application
/// nobody here wrote (pysparkplug) through a real mosquitto broker.
@Suite(.serialized) struct SparkplugTests {
    static let schema = """
        [[register]]
        domain = "site1.dev"
        group = "app"
        name = "counter"
        type = "int"

        """ + deviceSchema

    static func cluster(devicePort: Int, broker: Int, metrics: Int, keepalive: Int = 5) throws -> Cluster {
        let device = modbusDevice("[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(devicePort)\"\n")
        let mqtt = """
            [mqtt]
            broker = "tcp://127.0.0.1:\(broker)"
            group_id = "plant"
            edge_node_id = "gw1"
            domain = "site1.dev"
            write = ["site1.dev"]
            keepalive_s = \(keepalive)
            reconnect_base_ms = 200
            reconnect_cap_ms = 1000

            """
        return try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: schema,
                           edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n" + schema + mqtt + device)
    }

    static func bdSeq(_ m: JSONValue?) -> Int64? { m?["bdSeq"]?.intValue }

    /// Birth, data, commands, rebirth, a 10 s network cut and a broker
    /// restart: the state machine holds throughout, and no change is lost.
    @Test func anEdgeNodeThroughCommandsCutsAndRestarts() throws {
        let dir = TemporaryDirectory()
        let devicePort = try CuttableProxy.freePort(), brokerPort = try CuttableProxy.freePort(), metrics = try CuttableProxy.freePort()
        let device = try PymodbusServer(["--tcp", "\(devicePort)"])
        defer { device.stop() }
        let broker = try MosquittoBroker(port: brokerPort, dir: dir)
        let proxy = try CuttableProxy(to: brokerPort)
        let host = try SparkplugHost(port: brokerPort, group: "plant", node: "gw1")
        defer { host.stop() }
        let c = try Self.cluster(devicePort: devicePort, broker: proxy.port, metrics: metrics)
        try c.startDaemon()
        try c.startEdge()

        // Birth: NBIRTH (seq 0, bdSeq, the rebirth control), then the device with its values and datatypes.
        try c.waitFor("NBIRTH and plc's DBIRTH with speed 1234") { host.values("plc", "speed").contains { $0.value == .int(1234) } }
        let nbirth = try #require(host.of("NBIRTH").first)
        let firstBdSeq = try #require(Self.bdSeq(nbirth))
        #expect(nbirth["seq"] == .int(0))
        guard case .array(let nodeMetrics)? = nbirth["metrics"] else { Issue.record("NBIRTH has no metrics"); return }
        #expect(nodeMetrics.contains { $0["name"] == .string("Node Control/Rebirth") && $0["datatype"] == .string("BOOLEAN") })
        let dbirth = try #require(host.of("DBIRTH", device: "plc").last)
        guard case .array(let plcMetrics)? = dbirth["metrics"] else { Issue.record("DBIRTH has no metrics"); return }
        let types = Dictionary(plcMetrics.compactMap { m -> (String, String)? in
            guard case .string(let n)? = m["name"], case .string(let t)? = m["datatype"] else { return nil }
            return (n, t)
        }, uniquingKeysWith: { a, _ in a })
        #expect(types["speed"] == "INT64" && types["temp"] == "DOUBLE" && types["$online"] == "BOOLEAN" && types["$state"] == "STRING", "\(types)")

        // A value written on the agent: its device is born, then DDATA on change.
        try c.set("gw1", "site1.dev/app/counter", .int(0))
        try c.set("gw1", "site1.dev/app/counter", .int(1))
        try c.waitFor("counter 1 on the host") { host.values("app", "counter").contains { $0.value == .int(1) } }

        // DCMD: a desired speed reaches the device and comes back as reported (DDATA, not historical).
        try host.send(#"{"dcmd": "plc", "metrics": [{"name": "speed", "datatype": "Int64", "value": 1500}]}"#)
        try c.waitFor("speed 1500 reported by the device and published") {
            host.values("plc", "speed").contains { $0.value == .int(1500) && !$0.historical } && c.value("spookd", "site1.dev/plc/speed") == .int(1500)
        }

        // Hostile commands: each refused, counted by reason; nothing else is affected.
        let speedAlias = plcMetrics.first { $0["name"] == .string("speed") }?["alias"]?.intValue ?? 0
        #expect(speedAlias >= 2, "device metrics have aliases from 2 up")
        for command in [
            #"{"dcmd": "plc", "metrics": [{"name": "nope", "datatype": "Int64", "value": 1}]}"#,
            #"{"dcmd": "plc", "metrics": [{"name": "speed", "datatype": "Double", "value": 2.5}]}"#,
            #"{"dcmd": "plc", "metrics": [{"name": "$online", "datatype": "Boolean", "value": false}]}"#,
            #"{"dcmd": "ghost", "metrics": [{"name": "speed", "datatype": "Int64", "value": 1}]}"#,
            #"{"raw": "spBv1.0/plant/DCMD/gw1/plc", "hex": "ffffffff0a"}"#,
            #"{"dcmd": "plc", "metrics": [{"name": "speed", "datatype": "Int64", "value": 70000}]}"#,
        ] { try host.send(command) }
        try c.waitFor("six refusals counted") {
            let text = try MetricsTests.get(metrics, "/metrics")
            let counts = ["unknown-metric", "datatype", "read-only", "unknown-device", "malformed"].map {
                MetricsTests.sample(text, "spook_mqtt_refused_total{reason=\"\($0)\"}") ?? 0
            }
            return counts == [1, 1, 1, 1, 1]
        }
        // 70000 is a valid Int64, but the device's speed is a u16 holding register: the device refuses it, in $error.
        try c.waitFor("the device refused 70000 ($error)") {
            if case .string(let e)? = c.value("gw1", "site1.dev/plc/$error") { return e.contains("70000") }
            return false
        }
        #expect(c.value("gw1", "site1.dev/plc/speed") == .int(1500), "no refused command changed the speed (speed alias \(speedAlias))")
        #expect((MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_device_errors_total{device=\"plc\"}") ?? 0) >= 1, "the device's refusal is counted")
        // A command by alias (what DBIRTH announced) works like one by name.
        try host.send(#"{"dcmd": "plc", "metrics": [{"alias": \#(speedAlias), "datatype": "Int64", "value": 1600}]}"#)
        try c.waitFor("speed 1600 by alias") { c.value("spookd", "site1.dev/plc/speed") == .int(1600) }

        // NCMD rebirth: NBIRTH again with seq 0 and the same bdSeq, then every device.
        let birthsBefore = host.of("NBIRTH").count
        try host.send(#"{"ncmd": "rebirth"}"#)
        try c.waitFor("a rebirth") { host.of("NBIRTH").count == birthsBefore + 1 && host.of("DBIRTH", device: "app").count >= 2 }
        #expect(Self.bdSeq(host.of("NBIRTH").last) == firstBdSeq, "a rebirth keeps the bdSeq")

        // A 10 s network cut between agent and broker while the counter takes
        // 2 … 51: the broker declares the node dead (its will, the bdSeq of that
        // session); after the cut, a new NBIRTH (a new bdSeq), then every value
        // written meanwhile, in order, flagged historical.
        proxy.blackhole()
        let cutStarted = monotonicMs()
        for i in 2...51 {
            try c.set("gw1", "site1.dev/app/counter", .int(Int64(i)))
            // Paced over the 10 s of the cut (what the cut lasts, not a wait for something to happen).
            let due = cutStarted + UInt64(i - 1) * 200
            let now = monotonicMs()
            if due > now { usleep(UInt32(due - now) * 1_000) }
        }
        try c.waitFor("the broker's NDEATH for the cut session") { host.of("NDEATH").contains { Self.bdSeq($0) == firstBdSeq && $0["current"] == .bool(true) } }
        proxy.heal()
        try c.waitFor("counter 51 after the cut", seconds: 40) { host.values("app", "counter", dataOnly: true).contains { $0.value == .int(51) } }
        let afterCut = try #require(Self.bdSeq(host.of("NBIRTH").last))
        #expect(afterCut != firstBdSeq)
        let seen = host.values("app", "counter")
        for i in 2...51 { #expect(seen.contains { $0.value == .int(Int64(i)) }, "counter \(i) lost in the cut") }
        // The DDATA after the cut (the DBIRTH before them holds 51, the current value).
        let replay = host.values("app", "counter", dataOnly: true).filter { ($0.value.intValue ?? 0) >= 2 }
        #expect(replay.allSatisfy { $0.historical }, "values from the cut are historical")
        let replayed = replay.compactMap { $0.value.intValue }
        #expect(replayed == Array(2...51), "every value once, in order: \(replayed)")

        // The broker restarts (the host's session and queue survive in its
        // persistence folder): the node is born again and 52 … 56, written
        // while the broker was down, arrive.
        broker.stop()
        try c.waitFor("the agent sees the broker gone") {
            MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_mqtt_connected") == 0
        }
        for i in 52...56 { try c.set("gw1", "site1.dev/app/counter", .int(Int64(i))) }
        try broker.start()
        try c.waitFor("counter 56 after the restart", seconds: 40) { host.values("app", "counter", dataOnly: true).contains { $0.value == .int(56) } }
        for i in 52...56 { #expect(host.values("app", "counter").contains { $0.value == .int(Int64(i)) }, "counter \(i) lost in the restart") }
        #expect(Self.bdSeq(host.of("NBIRTH").last) != afterCut)

        // A clean stop: NDEATH with the current bdSeq.
        let lastBdSeq = Self.bdSeq(host.of("NBIRTH").last)
        c.stopEdge()
        try c.waitFor("the agent's own NDEATH") { host.of("NDEATH").contains { Self.bdSeq($0) == lastBdSeq && $0["current"] == .bool(true) } }
        #expect(host.violations.isEmpty, "\(host.violationReport)\nthe broker's log:\n\((try? String(contentsOfFile: dir.file("mosquitto.log"), encoding: .utf8)) ?? "-")")
    }

    /// A network that completes TCP handshakes and then carries nothing:
    /// each attempt ends without CONNACK and is closed with its DISCONNECT
    /// written into the void. Neither holds up the next attempt, the birth
    /// once the broker answers, or the agent's stop (before 2026-12-02 a
    /// close could wait on libmosquitto's reconnecting thread for good).
    @Test func aSilentBrokerHoldsNothingUp() throws {
        let dir = TemporaryDirectory()
        let brokerPort = try CuttableProxy.freePort(), metrics = try CuttableProxy.freePort(), noDevice = try CuttableProxy.freePort()
        let broker = try MosquittoBroker(port: brokerPort, dir: dir)
        defer { broker.stop() }
        let proxy = try CuttableProxy(to: brokerPort)
        proxy.blackhole()
        let host = try SparkplugHost(port: brokerPort, group: "plant", node: "gw1")
        defer { host.stop() }
        let c = try Self.cluster(devicePort: noDevice, broker: proxy.port, metrics: metrics)
        try c.startDaemon()
        try c.startEdge()
        func sample(_ name: String) throws -> Double? { MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), name) }
        try c.waitFor("two attempts given up on the silent broker", seconds: 40) { try sample("spook_mqtt_connections_lost_total") ?? 0 >= 2 }
        #expect(host.of("NBIRTH").isEmpty, "nothing reached the broker through the blackhole")
        #expect(try sample("spook_mqtt_connected") == 0)
        proxy.heal()
        try c.waitFor("born once the broker answers", seconds: 40) { try sample("spook_mqtt_connected") == 1 && !host.of("NBIRTH").isEmpty }
        let bdSeq = Self.bdSeq(host.of("NBIRTH").last)
        c.stopEdge()  // an Issue unless the agent exits within 30 s of SIGTERM
        try c.waitFor("the agent's own NDEATH") { host.of("NDEATH").contains { Self.bdSeq($0) == bdSeq && $0["current"] == .bool(true) } }
        #expect(host.violations.isEmpty, "\(host.violationReport)")
    }

    /// A broker that takes the agent only over TLS, with a user name and
    /// password: the node connects with the CA, the credentials from
    /// password_file, and is born. The host listens on a plain listener.
    @Test func overTLSWithCredentials() throws {
        let dir = TemporaryDirectory()
        try TransportTests.certificates(in: dir)
        let passwd = try ChildProcess("/usr/bin/mosquitto_passwd", ["-b", "-c", dir.file("passwd"), "gw1", "s3cret"])
        #expect(passwd.wait() == 0)
        try "s3cret\n".write(toFile: dir.file("password"), atomically: true, encoding: .utf8)
        let brokerPort = try CuttableProxy.freePort(), tlsPort = try CuttableProxy.freePort(), metrics = try CuttableProxy.freePort()
        let broker = try MosquittoBroker(port: brokerPort, dir: dir, listeners: """
            listener \(tlsPort) 127.0.0.1
            cafile \(dir.file("ca.pem"))
            certfile \(dir.file("server.pem"))
            keyfile \(dir.file("server.key"))
            allow_anonymous false
            password_file \(dir.file("passwd"))
            """)
        defer { broker.stop() }
        let host = try SparkplugHost(port: brokerPort, group: "plant", node: "gw1")
        defer { host.stop() }
        let mqtt = """
            [mqtt]
            broker = "tls://localhost:\(tlsPort)"
            ca = "\(dir.file("ca.pem"))"
            username = "gw1"
            password_file = "\(dir.file("password"))"
            group_id = "plant"
            domain = "site1.dev"

            """
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: Self.schema,
                            edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n" + Self.schema + mqtt)
        try c.startDaemon()
        try c.startEdge()
        try c.set("gw1", "site1.dev/app/counter", .int(7))
        try c.waitFor("NBIRTH over TLS, and counter 7") { !host.of("NBIRTH").isEmpty && host.values("app", "counter").contains { $0.value == .int(7) } }
        #expect(MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_mqtt_connected") == 1)
        #expect(host.violations.isEmpty, "\(host.violationReport)")
    }

    /// Store-and-forward is the store's, not memory's: values written while
    /// the broker is unreachable survive a kill -9 of the agent and are
    /// published, in order and historical, once the restarted agent reaches
    /// the broker; the restarted node uses a bdSeq of its own.
    @Test func theBacklogSurvivesAKilledAgent() throws {
        let dir = TemporaryDirectory()
        let brokerPort = try CuttableProxy.freePort(), metrics = try CuttableProxy.freePort()
        let broker = try MosquittoBroker(port: brokerPort, dir: dir)
        defer { broker.stop() }
        let proxy = try CuttableProxy(to: brokerPort)
        let host = try SparkplugHost(port: brokerPort, group: "plant", node: "gw1")
        defer { host.stop() }
        let mqtt = "[mqtt]\nbroker = \"tcp://127.0.0.1:\(proxy.port)\"\ngroup_id = \"plant\"\ndomain = \"site1.dev\"\nreconnect_base_ms = 200\nreconnect_cap_ms = 1000\n"
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: Self.schema,
                            edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n" + Self.schema + mqtt)
        try c.startDaemon()
        try c.startEdge()
        // Born first: a value written before the agent reaches the broker is
        // in its DBIRTH and again in the replayed backlog (historical), by
        // design; this part checks what a value written again does.
        try c.waitFor("the agent's NBIRTH") { !host.of("NBIRTH").isEmpty }
        try c.set("gw1", "site1.dev/app/counter", .int(1))
        try c.waitFor("counter 1 on the host") { host.values("app", "counter").contains { $0.value == .int(1) } }
        let firstBdSeq = try #require(Self.bdSeq(host.of("NBIRTH").last))
        // Report by exception: 1 written again is no change; 0 is.
        try c.set("gw1", "site1.dev/app/counter", .int(1))
        try c.set("gw1", "site1.dev/app/counter", .int(0))
        try c.waitFor("counter 0 on the host") { host.values("app", "counter", dataOnly: true).contains { $0.value == .int(0) } }
        #expect(host.values("app", "counter").filter { $0.value == .int(1) }.count == 1, "\(host.values("app", "counter"))")

        proxy.partition()
        try c.waitFor("the agent sees the broker gone") { MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_mqtt_connected") == 0 }
        for i in 2...21 { try c.set("gw1", "site1.dev/app/counter", .int(Int64(i))) }
        try c.waitFor("20 rows in the backlog") { (MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_mqtt_backlog_rows") ?? 0) >= 20 }
        c.stopEdge(signal: SIGKILL)
        try c.startEdge()
        proxy.heal()
        try c.waitFor("counter 21 from the restarted agent", seconds: 40) { host.values("app", "counter", dataOnly: true).contains { $0.value == .int(21) } }
        let replay = host.values("app", "counter", dataOnly: true).filter { ($0.value.intValue ?? 0) >= 2 }
        #expect(replay.map { $0.value.intValue ?? 0 } == Array(2...21), "each value once, in order")
        #expect(replay.allSatisfy { $0.historical }, "older than the new birth")
        #expect(Self.bdSeq(host.of("NBIRTH").last) != firstBdSeq)
        #expect(host.violations.isEmpty, "\(host.violationReport)")
    }
}
