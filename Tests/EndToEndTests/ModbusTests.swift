#if canImport(Glibc)
import Glibc
#endif
import SpookDevices
import SpookNode
import SpookTestSupport
import Testing

/// pymodbus's server (PyPI, installed by scripts/test), on TCP or on a pty.
final class PymodbusServer {
    let process: ChildProcess

    init(_ arguments: [String]) throws {
        // scripts/install-deps puts pymodbus in the repository's virtual environment.
        process = try ChildProcess("\(repositoryRoot)/.venv/bin/python3", ["\(repositoryRoot)/Tests/Helpers/modbus/pymodbus-server.py"] + arguments)
        guard try process.readLine(timeoutMs: 20_000) == "ready" else {
            throw ChildProcess.Failure("the pymodbus server did not start: is pymodbus in .venv (scripts/install-deps installs it)?")
        }
    }

    func stop() {
        process.signal(SIGTERM)
        process.wait()
    }
}

/// Two linked pseudo-terminals, `ttyA` and `ttyB` in `dir`, made by socat: a serial wire.
func ptyPair(_ dir: TemporaryDirectory) throws -> (socat: ChildProcess, a: String, b: String) {
    let a = dir.file("ttyA"), b = dir.file("ttyB")
    let socat = try ChildProcess("/usr/bin/socat", ["pty,raw,echo=0,link=\(a)", "pty,raw,echo=0,link=\(b)"])
    try waitUntil("socat's ptys") { access(a, F_OK) == 0 && access(b, F_OK) == 0 }
    return (socat, a, b)
}

/// The register map both Modbus tests use (server layout in pymodbus-server.py).
func modbusDevice(_ head: String) -> String {
    head + """
        unit = 1
        poll_ms = 100
        timeout_ms = 300
        group = "site1.dev/plc"
        [[device.register]]
        name = "speed"
        table = "holding"
        address = 0
        access = "rw"
        [[device.register]]
        name = "offset"
        table = "holding"
        address = 1
        type = "i16"
        [[device.register]]
        name = "temp"
        table = "holding"
        address = 2
        type = "f32"
        [[device.register]]
        name = "level"
        table = "input"
        address = 0
        scale = 0.5
        [[device.register]]
        name = "alarm"
        table = "discrete"
        address = 0
        [[device.register]]
        name = "pump_on"
        table = "coil"
        address = 3
        access = "rw"
        [[device.register]]
        name = "ghost"
        table = "holding"
        address = 60

        """
}

@Suite(.serialized) struct ModbusDeviceTests {
    /// Against pymodbus over TCP: values polled and visible upstream, desired
    /// writes reach the server, an illegal address gives `$error`, the server
    /// stopped gives `$online = false`, restarted gives values again.
    @Test func pymodbusOverTCP() throws {
        let port = try CuttableProxy.freePort(), metrics = try CuttableProxy.freePort()
        var server = try PymodbusServer(["--tcp", "\(port)"])
        let device = modbusDevice("[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(port)\"\n")
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema,
                            edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n" + deviceSchema + device)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("polled values upstream") {
            c.value("spookd", "site1.dev/plc/speed") == .int(1234) && c.value("spookd", "site1.dev/plc/offset") == .int(-5)
                && c.value("spookd", "site1.dev/plc/temp") == .object(["float": .double(21.5)])
                && c.value("spookd", "site1.dev/plc/level") == .object(["float": .double(3.5)])
                && c.value("spookd", "site1.dev/plc/alarm") == .bool(true)
        }
        #expect(c.value("spookd", "site1.dev/plc/$online") == .bool(true))
        try c.waitFor("$error names the illegal address") {
            (c.value("spookd", "site1.dev/plc/$error")?.string ?? "").contains("read holding 60…60: Illegal data address")
        }
        #expect(c.value("spookd", "site1.dev/plc/ghost") == nil)
        let scraped = try MetricsTests.get(metrics, "/metrics")
        #expect(scraped.contains("spook_device_online{device=\"plc\"} 1"), "\(scraped)")
        #expect(scraped.contains("spook_device_errors_total{device=\"plc\"} 1"))
        #expect(scraped.contains("# TYPE spook_device_transactions_total counter\nspook_device_transactions_total{device=\"plc\"} "), "\(scraped)")

        // Desired, set upstream, is written to the server (read back here with libmodbus directly).
        let probe = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, timeoutMs: 1000)
        try probe.connect()
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/plc/speed"), "value": .int(777)]))
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/plc/pump_on"), "value": .bool(true)]))
        try c.waitFor("the server holds the desired values") {
            try probe.read(ModbusRead(table: .holding, address: 0, count: 1, points: [])) == [777]
                && probe.read(ModbusRead(table: .coil, address: 3, count: 1, points: [])) == [1]
        }
        try c.waitFor("speed reported upstream") { c.value("spookd", "site1.dev/plc/speed") == .int(777) }
        probe.close()

        // Server hung (SIGSTOP: connection open, no answers): the response timeout takes it offline.
        let hung = monotonicMs()
        server.process.signal(SIGSTOP)
        try c.waitFor("$online false on a hung server", seconds: 10) { c.value("spookd", "site1.dev/plc/$online") == .bool(false) }
        print("modbus: $online false upstream \(monotonicMs() - hung) ms after the server hung (timeout_ms 300, poll_ms 100)")
        server.process.signal(SIGCONT)
        try c.waitFor("online after the server resumed", seconds: 20) { c.value("spookd", "site1.dev/plc/$online") == .bool(true) }

        // Server gone: $online false at once (connection reset); back: values flow again.
        let stopped = monotonicMs()
        server.stop()
        try c.waitFor("$online false", seconds: 10) { c.value("spookd", "site1.dev/plc/$online") == .bool(false) }
        print("modbus: $online false upstream \(monotonicMs() - stopped) ms after the server stopped (timeout_ms 300, poll_ms 100)")
        server = try PymodbusServer(["--tcp", "\(port)"])
        defer { server.stop() }
        try c.waitFor("back online", seconds: 20) { c.value("spookd", "site1.dev/plc/$online") == .bool(true) }
        let again = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, timeoutMs: 1000)
        try again.connect()
        try again.write(ModbusPoint(name: "speed", table: .holding, address: 0, type: .u16), [4321])
        try c.waitFor("a new value flows upstream") { c.value("spookd", "site1.dev/plc/speed") == .int(4321) }
    }

    /// Modbus RTU over a socat pseudo-terminal pair, pymodbus on the far end.
    @Test func pymodbusOverRTU() throws {
        let dir = TemporaryDirectory()
        let (socat, a, b) = try ptyPair(dir)
        defer { socat.signal(SIGTERM); socat.wait() }
        let server = try PymodbusServer(["--rtu", b, "--baud", "19200"])
        defer { server.stop() }
        let device = modbusDevice("[[device]]\nname = \"plc\"\nkind = \"modbus-rtu\"\nport = \"\(a)\"\nbaud = 19200\nparity = \"none\"\n")
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device, directory: dir)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("RTU values upstream") {
            c.value("spookd", "site1.dev/plc/speed") == .int(1234) && c.value("spookd", "site1.dev/plc/temp") == .object(["float": .double(21.5)])
        }
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/plc/speed"), "value": .int(99)]))
        try c.waitFor("RTU write settled") { c.value("spookd", "site1.dev/plc/speed") == .int(99) }
    }
}

@Suite(.serialized) struct ModbusRecoveryTests {
    /// Hardening defect 9: a desired value set while the device was offline
    /// stayed pending for ever once it recovered (the first poll's report,
    /// newer than it, settled it unapplied). Now it is written first.
    @Test func aDesiredValueSetWhileOfflineIsAppliedOnRecovery() throws {
        let port = try CuttableProxy.freePort()
        var server = try PymodbusServer(["--tcp", "\(port)"])
        let device = modbusDevice("[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(port)\"\n")
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("polled values upstream") { c.value("spookd", "site1.dev/plc/speed") == .int(1234) }
        server.stop()
        try c.waitFor("$online false", seconds: 10) { c.value("gw1", "site1.dev/plc/$online") == .bool(false) }
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/plc/speed"), "value": .int(555)]))
        try c.waitFor("the desired value on the agent") {
            try c.call("gw1", .object(["op": .string("get"), "register": .string("site1.dev/plc/speed")]))["register"]?["desired"]?["value"] == .int(555)
        }
        server = try PymodbusServer(["--tcp", "\(port)"])
        defer { server.stop() }
        try c.waitFor("back online", seconds: 20) { c.value("gw1", "site1.dev/plc/$online") == .bool(true) }
        let probe = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, timeoutMs: 1000)
        try probe.connect()
        defer { probe.close() }
        try c.waitFor("the server holds the value desired while it was away") {
            try probe.read(ModbusRead(table: .holding, address: 0, count: 1, points: [])) == [555]
        }
        try c.waitFor("the device reports it upstream") { c.value("spookd", "site1.dev/plc/speed") == .int(555) }
    }
}

@Suite(.serialized) struct ModbusWideValueTests {
    /// 64-bit types and byte order (issue "Ready for a real gateway"),
    /// against pymodbus's server: each register's words laid out by Python's
    /// struct module, read upstream as the values they encode; a desired f64
    /// written back lands as the words Python would write.
    @Test func sixtyFourBitValuesAndByteOrdersAgainstPymodbus() throws {
        let port = try CuttableProxy.freePort()
        let server = try PymodbusServer(["--tcp", "\(port)"])
        defer { server.stop() }
        func reg(_ name: String, _ address: Int, _ type: String, _ extra: String = "") -> String {
            "[[device.register]]\nname = \"\(name)\"\ntable = \"holding\"\naddress = \(address)\ntype = \"\(type)\"\n\(extra)\n"
        }
        let device = "[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(port)\"\nunit = 1\npoll_ms = 100\ntimeout_ms = 300\ngroup = \"site1.dev/plc\"\n"
            + reg("big_u64", 10, "u64") + reg("big_f64", 14, "f64", "access = \"rw\"") + reg("little_i64", 18, "i64", "word_order = \"little\"")
            + reg("swapped_u32", 22, "u32", "byte_order = \"little\"") + reg("dcba_f32", 24, "f32", "word_order = \"little\"\nbyte_order = \"little\"")
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("wide values upstream") {
            c.value("spookd", "site1.dev/plc/big_u64") == .int(0x0102_0304_0506_0708)
                && c.value("spookd", "site1.dev/plc/big_f64") == .object(["float": .double(-2.5)])
                && c.value("spookd", "site1.dev/plc/little_i64") == .int(-42)
                && c.value("spookd", "site1.dev/plc/swapped_u32") == .int(0x1122_3344)
                && c.value("spookd", "site1.dev/plc/dcba_f32") == .object(["float": .double(21.5)])
        }
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/plc/big_f64"), "value": .object(["float": .double(3.25)])]))
        let probe = try ModbusClient(host: "127.0.0.1", port: port, unit: 1, timeoutMs: 1000)
        try probe.connect()
        defer { probe.close() }
        try c.waitFor("the f64 written as four big-endian words") {
            try probe.read(ModbusRead(table: .holding, address: 14, count: 4, points: [])) == [0x400A, 0, 0, 0]
        }
    }
}

/// RS-485: several Modbus RTU units on one serial line, and a line that
/// carries bytes it should not.
@Suite(.serialized) struct SerialLineTests {
    static func unit(_ name: String, _ port: String, unit: Int, access: String = "r") -> String {
        """
        [[device]]
        name = "\(name)"
        kind = "modbus-rtu"
        port = "\(port)"
        baud = 19200
        unit = \(unit)
        poll_ms = 100
        timeout_ms = 200
        group = "site1.dev/\(name)"
        [[device.register]]
        name = "speed"
        table = "holding"
        address = 0
        access = "\(access)"

        """
    }

    /// Three units on one port, pymodbus serving units 1 and 2 behind a socat
    /// pty pair: one libmodbus context for the port, both served units report
    /// their own values, a write reaches unit 2 only, and unit 3, which
    /// nobody answers, goes offline alone while the others keep polling.
    @Test func unitsOnOneRS485LineShareItAndFailAlone() throws {
        let dir = TemporaryDirectory()
        let (socat, a, b) = try ptyPair(dir)
        defer { socat.signal(SIGTERM); socat.wait() }
        let server = try PymodbusServer(["--rtu", b, "--baud", "19200", "--unit", "1", "--unit", "2"])
        defer { server.stop() }
        let devices = SerialLineTests.unit("plc1", a, unit: 1) + SerialLineTests.unit("plc2", a, unit: 2, access: "rw") + SerialLineTests.unit("plc3", a, unit: 3)
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + devices, directory: dir)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("both answering units report their own value") {
            c.value("spookd", "site1.dev/plc1/speed") == .int(1234) && c.value("spookd", "site1.dev/plc2/speed") == .int(2234)
        }
        try c.waitFor("the silent unit is offline with a timeout: \(String(describing: c.value("gw1", "site1.dev/plc3/$online"))) \(String(describing: c.value("gw1", "site1.dev/plc3/$error")))") {
            c.value("gw1", "site1.dev/plc3/$online") == .bool(false)
                && { if case .string(let e)? = c.value("gw1", "site1.dev/plc3/$error") { return e.contains("timed out") }; return false }()
        }
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/plc2/speed"), "value": .int(77)]))
        try c.waitFor("the write settled on unit 2") { c.value("spookd", "site1.dev/plc2/speed") == .int(77) }
        // Unit 1 kept its own value and both answering units stay online while unit 3 keeps timing out.
        let transactions = { () throws -> [String: Int] in
            guard case .array(let ds)? = try c.call("gw1", .object(["op": .string("status")]))["devices"] else { return [:] }
            return Dictionary(uniqueKeysWithValues: ds.compactMap { d -> (String, Int)? in
                guard case .string(let n)? = d["name"], case .int(let t)? = d["transactions"] else { return nil }
                return (n, Int(t))
            })
        }
        let before = try transactions()
        try c.waitFor("units 1 and 2 keep polling beside the silent one") {
            let now = try transactions()
            return (now["plc1"] ?? 0) >= (before["plc1"] ?? 0) + 10 && (now["plc2"] ?? 0) >= (before["plc2"] ?? 0) + 10
        }
        #expect(c.value("spookd", "site1.dev/plc1/speed") == .int(1234))
        // Once online, units 1 and 2 were never taken offline by unit 3's timeouts
        // (history is newest first; a device starts offline).
        for unit in ["plc1", "plc2"] {
            let online = try c.history("gw1", "site1.dev/\(unit)/$online").compactMap { $0["value"] }
            let sinceOnline = online.reversed().drop { $0 != .bool(true) }
            #expect(!sinceOnline.isEmpty && sinceOnline.allSatisfy { $0 == .bool(true) }, "\(unit) $online took \(online), newest first")
        }
    }

    /// A device that answered once too often leaves a reply on the wire. A
    /// client that reads it as the next answer is one reply behind for ever
    /// (here: registers 0 and 10 would swap values). The agent drops what
    /// waits on the line before each request, so no wrong value is ever reported.
    @Test func aStaleReplyLeftOnTheLineIsDropped() throws {
        let device = try ChildProcess("\(repositoryRoot)/.venv/bin/python3", ["\(repositoryRoot)/Tests/Helpers/modbus/stale-rtu-device.py"])
        defer { device.signal(SIGTERM); device.wait() }
        let pty = String(try #require(try device.readLine(timeoutMs: 10_000)).dropFirst(4))
        let config = """
            [[device]]
            name = "plc"
            kind = "modbus-rtu"
            port = "\(pty)"
            unit = 1
            poll_ms = 50
            timeout_ms = 300
            group = "site1.dev/plc"
            [[device.register]]
            name = "a"
            table = "holding"
            address = 0
            [[device.register]]
            name = "b"
            table = "holding"
            address = 10

            """
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + config)
        try c.startDaemon()
        try c.startEdge()
        var line = try device.readLine(timeoutMs: 20_000)
        while let l = line, l != "stale" { line = try device.readLine(timeoutMs: 20_000) }
        #expect(line == "stale")
        // Twenty more requests after the doubled reply.
        var served = 0
        while served < 30, let l = try device.readLine(timeoutMs: 20_000) {
            if l.hasPrefix("served ") { served = Int(l.dropFirst(7)) ?? 0 }
        }
        #expect(served >= 30)
        try c.waitFor("both values upstream") { c.value("spookd", "site1.dev/plc/a") != nil && c.value("spookd", "site1.dev/plc/b") != nil }
        #expect(c.value("gw1", "site1.dev/plc/a") == .int(1111))
        #expect(c.value("gw1", "site1.dev/plc/b") == .int(2222))
        // Every value either register ever took on the agent.
        let seenA = try c.history("gw1", "site1.dev/plc/a").compactMap { $0["value"] }
        let seenB = try c.history("gw1", "site1.dev/plc/b").compactMap { $0["value"] }
        #expect(!seenA.isEmpty && seenA.allSatisfy { $0 == .int(1111) }, "a took \(seenA)")
        #expect(!seenB.isEmpty && seenB.allSatisfy { $0 == .int(2222) }, "b took \(seenB)")
    }
}
