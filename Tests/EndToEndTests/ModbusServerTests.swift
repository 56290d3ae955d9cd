#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookNode
import SpookTestSupport
import Testing

/// The Modbus TCP server façade, read and written by clients nobody here
/// wrote: pymodbus's client and Debian's mbpoll.
@Suite(.serialized) struct ModbusServerTests {
    /// pymodbus's client, one request: the JSON line it prints.
    static func client(_ port: Int, _ arguments: [String]) throws -> JSONValue {
        let p = try ChildProcess("\(repositoryRoot)/.venv/bin/python3", ["\(repositoryRoot)/Tests/Helpers/modbus/modbus-client.py", "\(port)"] + arguments)
        let line = try p.readLine(timeoutMs: 20_000) ?? ""
        _ = p.wait()
        return try JSONValue.parse(Array(line.utf8))
    }

    static func values(_ j: JSONValue) -> [Int64]? {
        guard case .array(let a)? = j["values"] else { return nil }
        return a.compactMap { if case .int(let i) = $0 { i } else { nil } }
    }

    static func exception(_ j: JSONValue) -> Int64? {
        if case .int(let e)? = j["exception"] { return e }
        return nil
    }

    /// A device behind the agent (pymodbus's server), and a façade mapping
    /// its speed, application registers of the node, and its own status.
    static func cluster(devicePort: Int, facade: Int, metrics: Int) throws -> Cluster {
        let device = modbusDevice("[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(devicePort)\"\n")
        let schema = deviceSchema + """
            [[register]]
            domain = "site1.l1"
            group = "m"
            name = "run"
            type = "bool"

            """
        let server = """
            [[modbus_server]]
            listen = "127.0.0.1:\(facade)"
            unit = 1
            clients_max = 12
            write = ["site1.dev", "site1.l1"]
            [[modbus_server.register]]
            name = "site1.dev/plc/speed"
            table = "holding"
            address = 0
            access = "rw"
            [[modbus_server.register]]
            name = "site1.l1/m/setpoint"
            table = "holding"
            address = 10
            type = "i32"
            access = "rw"
            [[modbus_server.register]]
            name = "site1.l1/m/limit"
            table = "holding"
            address = 20
            [[modbus_server.register]]
            name = "site1.l1/m/run"
            table = "holding"
            address = 21
            access = "rw"
            [[modbus_server.register]]
            name = "site1.l1/m/temp"
            table = "input"
            address = 0
            type = "f32"
            [[modbus_server.register]]
            name = "site1.dev/plc/$online"
            table = "discrete"
            address = 0

            """
        return try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: schema,
                           edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n" + schema + device + server)
    }

    @Test func scadaReadsAndWritesThroughTheFacade() throws {
        let devicePort = try CuttableProxy.freePort(), facade = try CuttableProxy.freePort(), metrics = try CuttableProxy.freePort()
        let device = try PymodbusServer(["--tcp", "\(devicePort)"])
        defer { device.stop() }
        let c = try Self.cluster(devicePort: devicePort, facade: facade, metrics: metrics)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("the device's speed on the agent") { c.value("gw1", "site1.dev/plc/speed") == .int(1234) }

        // Reads: the collapsed values, the device's reported speed among them.
        try c.waitFor("holding 0 reads the device's speed") { Self.values(try Self.client(facade, ["read-holding", "0", "1"])) == [1234] }
        #expect(Self.values(try Self.client(facade, ["read-discrete", "0", "1"])) == [1], "$online of the device")
        // A value set upstream reaches the Modbus client.
        try c.set("spookd", "site1.l1/m/temp", .double(21.5))
        try c.waitFor("input 0-1 reads 21.5 as f32") { Self.values(try Self.client(facade, ["read-input", "0", "2"])) == [0x41AC, 0] }

        // Writes: a desired speed reaches the real device and comes back as reported.
        #expect(Self.values(try Self.client(facade, ["write-register", "0", "777"])) != nil)
        try c.waitFor("the device took 777 and reported it") {
            try c.value("spookd", "site1.dev/plc/speed") == .int(777) && Self.values(Self.client(facade, ["read-holding", "0", "1"])) == [777]
        }
        // An i32 application register, both words at once; the value is durable and synced upstream.
        #expect(Self.values(try Self.client(facade, ["write-registers", "10", "65535", "65534"])) != nil)
        try c.waitFor("setpoint -2 upstream") { c.value("spookd", "site1.l1/m/setpoint") == .int(-2) }

        // Refusals, each with its exception code; the server serves on.
        #expect(Self.exception(try Self.client(facade, ["read-holding", "50", "1"])) == 2, "an unmapped address")
        #expect(Self.exception(try Self.client(facade, ["read-holding", "0", "11"])) == 2, "a read across a gap")
        #expect(Self.exception(try Self.client(facade, ["write-register", "20", "5"])) == 1, "a read-only register")
        #expect(Self.exception(try Self.client(facade, ["write-register", "10", "5"])) == 2, "half of a 32-bit register")
        #expect(Self.exception(try Self.client(facade, ["write-register", "21", "5"])) == 3, "5 is not a bool")
        #expect(Self.exception(try Self.client(facade, ["--unit", "7", "read-holding", "0", "1"])) == 11, "another unit")
        #expect(c.value("spookd", "site1.l1/m/run") == nil && c.value("spookd", "site1.l1/m/limit") == nil)
        #expect(Self.values(try Self.client(facade, ["write-register", "21", "1"])) != nil)
        try c.waitFor("run = true upstream") { c.value("spookd", "site1.l1/m/run") == .bool(true) }

        // Hostile input: a request that announces 255 bytes and stops, and one
        // with a bogus protocol id: each closes its own connection only.
        for garbage in [[0x00, 0x01, 0x00, 0x00, 0x00, 0xFF, 0x01, 0x03], [0x00, 0x02, 0x12, 0x34, 0x00, 0x06, 0x01, 0x03, 0x00, 0x00, 0x00, 0x01] as [UInt8]] {
            let fd = try #require(CuttableProxy.connectLoopback(facade))
            _ = garbage.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            #expect(Self.values(try Self.client(facade, ["read-holding", "0", "1"])) == [777], "the server serves on beside a bad client")
            close(fd)
        }

        // A client that trickles a request (a header announcing 200 bytes, then a
        // byte every 100 ms for 8 s): reads from three other clients are answered
        // meanwhile, and the trickler is closed 2 s after its first byte.
        let trickler = try #require(CuttableProxy.connectLoopback(facade))
        defer { close(trickler) }
        let header: [UInt8] = [0x00, 0x09, 0x00, 0x00, 0x00, 0xC8, 0x01]
        _ = header.withUnsafeBytes { send(trickler, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let trickle = Thread {
            var byte: UInt8 = 0x03
            for _ in 0..<80 where send(trickler, &byte, 1, Int32(MSG_NOSIGNAL)) == 1 { usleep(100_000) }
        }
        trickle.start()
        #expect(Self.values(try Self.client(facade, ["concurrent", "3", "10", "0"])) == [30, 0], "answered beside a trickling client")
        try c.waitFor("the trickler closed at its deadline") {
            MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_modbus_server_refused_total{reason=\"malformed\"}") == 3
        }

        // Ten clients at once, twenty reads each.
        #expect(Self.values(try Self.client(facade, ["concurrent", "10", "20", "0"])) == [200, 0])

        // mbpoll (Debian): the same registers, 0-based references, big-endian words.
        let mbpoll = try ChildProcess("/usr/bin/mbpoll", ["-m", "tcp", "-a", "1", "-0", "-r", "0", "-c", "1", "-t", "4", "-1", "-p", "\(facade)", "127.0.0.1"])
        var out: [String] = []
        while let line = try mbpoll.readLine(timeoutMs: 10_000) { out.append(line) }
        #expect(mbpoll.wait() == 0)
        #expect(out.contains { $0.hasPrefix("[0]:") && $0.hasSuffix("777") }, "\(out)")
        let float = try ChildProcess("/usr/bin/mbpoll", ["-m", "tcp", "-a", "1", "-0", "-r", "0", "-c", "1", "-t", "3:float", "-B", "-1", "-p", "\(facade)", "127.0.0.1"])
        var lines: [String] = []
        while let line = try float.readLine(timeoutMs: 10_000) { lines.append(line) }
        #expect(lines.contains { $0.hasPrefix("[0]:") && $0.hasSuffix("21.5") }, "\(lines)")
        // Every refusal counted, by reason.
        let scraped = try MetricsTests.get(metrics, "/metrics")
        for (reason, count) in [("unmapped", 3.0), ("read-only", 1), ("value", 1), ("unit", 1)] {
            #expect(MetricsTests.sample(scraped, "spook_modbus_server_refused_total{reason=\"\(reason)\"}") == count, "\(reason)")
        }
    }
}
