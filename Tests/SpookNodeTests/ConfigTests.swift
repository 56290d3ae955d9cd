import Foundation
import SpookCore
import SpookDevices
import SpookLink
import SpookStore
import SpookNode
import Testing

@Suite struct ConfigTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func theShippedExamplesAreValid() throws {
        let edge = try EdgeConfig.load(path: Self.repo.appendingPathComponent("configs/edge.toml").path, checkFiles: false)
        #expect(edge.node.name == "gw-17" && edge.node.sync == .full && edge.node.historyLength == 32 && edge.node.logMiB == 8)
        #expect(edge.upstreams.map(\.endpoint) == [.tcp(host: "127.0.0.1", port: 7400)])
        #expect(edge.upstreams.first?.domains.map(\.description) == ["site1.*"])
        #expect(edge.node.schema.spec(for: try QRegisterName("site1.line3/pump7/speed")) == RegisterSpec(type: .int, policy: .device))
        #expect(edge.devices.map(\.name) == ["plc1", "drive", "sensors"])
        #expect(edge.devices.map(\.kind.name) == ["modbus-tcp", "modbus-rtu", "serial"])
        if case .modbusTCP(let host, let port, let m)? = edge.devices.first?.kind {
            #expect(host == "192.168.10.20" && port == 502 && m.pollMs == 500 && m.points.count == 4)
            #expect(m.points.first { $0.name == "oil_temp" }?.scale == 0.1)
            #expect(m.points.first { $0.name == "running" }?.writable == true)
        } else {
            Issue.record("plc1 is not a modbus-tcp device")
        }
        #expect(edge.devices.last?.match?.vendor == "0483")
        #expect(edge.node.mqtt?.groupID == "plant-a" && edge.node.mqtt?.domain.description == "site1.line1" && edge.node.mqtt?.backlogRowsMax == 500_000)
        let daemon = try DaemonConfig.load(path: Self.repo.appendingPathComponent("configs/spookd.toml").path, checkFiles: false)
        #expect(daemon.listen.map(\.endpoint) == [.tcp(host: "127.0.0.1", port: 7400), .unix(path: "/run/spookd/spookd.link")])
        #expect(edge.node.schema == daemon.node.schema, "replicas that share groups must declare them alike")
        #expect(daemon.peers.first?.grant.mayWrite(try QDomain("site1.l3")) == true)
        #expect(daemon.peers.first?.grant.mayWrite(try QDomain("site2")) == false)
    }

    @Test func everyProblemIsReportedWithFileLineAndColumn() throws {
        let text = """
            [node]
            name = "GW"
            key = "/k"
            data = "/d"
            sync = "sometimes"
            history = 0
            colour = "blue"

            [api]
            socket = 7

            [[register]]
            domain = "Site1.*"
            type = "integer"

            [[upstream]]
            name = "a"
            url = "tcp://host:70000"
            key = "abc"

            [[upstream]]
            name = "a"
            url = "http://x"
            key = "0000000000000000000000000000000000000000000000000000000000000000"
            domains = ["site1.*.x"]
            """
        let error = #expect(throws: ConfigError.self) { try EdgeConfig.parse(file: "edge.toml", text: text) }
        let lines = error?.diagnostics.map(\.description) ?? []
        let expected = [
            "edge.toml:2:1: with [[upstream]], \"name\" must be a domain label (a-z, 0-9, \"-\"): the links' own registers live in spook.<name>",
            "edge.toml:5:1: \"sync\" = \"sometimes\" is not one of \"off\", \"normal\", \"full\", \"extra\"",
            "edge.toml:6:1: \"history\" = 0 is out of range 1…4096",
            "edge.toml:7:1: unknown key \"colour\" in [node]; known keys: name, key, data, sync, history, log_mib",
            "edge.toml:10:1: \"socket\" must be a string, not integer",
            "edge.toml:13:1: pattern \"Site1.*\": label \"Site1\" has \"S\" at offset 0; labels use only a-z, 0-9 and \"-\"",
            "edge.toml:14:1: \"type\" = \"integer\" is not one of \"bool\", \"int\", \"float\", \"string\", \"bytes\"",
            "edge.toml:18:1: \"tcp://host:70000\": port 70000 is out of range 1…65535",
            "edge.toml:19:1: \"key\" must be a public key of 64 hex digits (spookctl keygen prints it), got 3 characters",
            "edge.toml:22:1: upstream \"a\" is defined twice",
            "edge.toml:23:1: \"http://x\": unknown scheme; use unix:///path, tcp://host:port, tls://host:port, ws://host:port/path or wss://host:port/path",
            "edge.toml:25:1: domains[0]: pattern \"site1.*.x\": \"*\" may only stand alone or as the last label (\"site1.*\")",
        ]
        #expect(lines == expected, "got:\n\(lines.joined(separator: "\n"))")
    }

    /// `[node] log_mib` bounds the SQLite log: 32 MiB unless set, 1 … 1024.
    @Test func theLogBoundIsAChoiceWithinLimits() throws {
        let text = try String(contentsOf: Self.repo.appendingPathComponent("configs/edge.toml"), encoding: .utf8)
        #expect(text.contains("log_mib = 8\n"))
        #expect(try EdgeConfig.parse(file: "e.toml", text: text.replacingOccurrences(of: "log_mib = 8\n", with: "")).node.logMiB == 32)
        for bad in ["0", "1025", "\"big\""] {
            let error = #expect(throws: ConfigError.self) {
                try EdgeConfig.parse(file: "e.toml", text: text.replacingOccurrences(of: "log_mib = 8\n", with: "log_mib = \(bad)\n"))
            }
            let lines = error?.diagnostics.map(\.description) ?? []
            #expect(lines.count == 1 && lines[0].contains("\"log_mib\""), "log_mib = \(bad): \(lines)")
        }
    }

    @Test func deviceProblemsAreReportedWithTheirPositions() throws {
        let head = """
            [node]
            name = "gw"
            key = "/k"
            data = "/d"
            [api]
            socket = "/s"
            [[upstream]]
            name = "a"
            url = "unix:///l"
            key = "0000000000000000000000000000000000000000000000000000000000000000"
            [[register]]
            domain = "site1.dev"
            policy = "device"

            """
        let text = head + """
            [[device]]
            name = "p"
            kind = "modbus-tcp"
            url = "udp://x"
            group = "site1.other/p"
            [[device.register]]
            name = "a"
            table = "input"
            address = 70000
            access = "rw"
            [[device.register]]
            name = "a"
            table = "coil"
            type = "u16"
            address = 1
            [[device]]
            name = "s"
            kind = "serial"
            baud = 12345
            group = "site1.dev/{serial}"
            [[device]]
            name = "s"
            kind = "teleport"
            group = "site1.dev/x"
            """
        let error = #expect(throws: ConfigError.self) { try EdgeConfig.parse(file: "edge.toml", text: text) }
        let lines = error?.diagnostics.map(\.description) ?? []
        let expected = [
            "edge.toml:17:1: \"url\" = \"udp://x\" must be tcp://HOST:PORT",
            "edge.toml:18:1: device \"p\": registers in site1.other need policy \"device\" (reported by the device, desired by anyone); add [[register]] domain = \"site1.other\" policy = \"device\"",
            "edge.toml:22:1: \"address\" = 70000 is out of range 0…65535",
            "edge.toml:23:1: \"a\": the input table is read-only; access must be \"r\"",
            "edge.toml:25:1: register \"a\" is mapped twice in device \"p\"",
            "edge.toml:27:1: a coil is one bit: its type is bool, not u16",
            "edge.toml:29:1: device \"s\" needs \"port\" (e.g. /dev/ttyUSB0) or a [device.match] block",
            "edge.toml:32:1: \"baud\" = 12345 is not a standard rate: 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600",
            "edge.toml:33:1: device \"s\": site1.dev/{serial} uses the attached device's identity, so the device needs a [device.match] block",
            "edge.toml:35:1: device \"s\" is defined twice",
            "edge.toml:36:1: \"kind\" = \"teleport\" is not one of \"serial\", \"usb\", \"modbus-tcp\", \"modbus-rtu\"",
        ]
        #expect(lines.sorted() == expected.sorted(), "got:\n\(lines.joined(separator: "\n"))")
    }

    /// Hardening 11: check-config accepted a data path that run could not
    /// open. Both now refuse it at the line of `data`.
    @Test func aStorePathRunCannotOpenIsAConfigError() throws {
        let text = "[node]\nname = \"gw\"\nkey = \"/tmp/k\"\ndata = \"/nonexistent-spook/dir/edge.db\"\n[api]\nsocket = \"/tmp/s\"\n"
            + "[[upstream]]\nname = \"u\"\nurl = \"unix:///tmp/l\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n"
        let error = #expect(throws: ConfigError.self) { try EdgeConfig.parse(file: "e.toml", text: text, checkFiles: true) }
        #expect(error?.description.contains("e.toml:4:") == true && error?.description.contains("/nonexistent-spook/dir does not exist") == true,
                "\(error?.description ?? "-")")
        _ = try EdgeConfig.parse(file: "e.toml", text: text, checkFiles: false)
    }

    /// `enabled = false` keeps a device's table, checked, without starting it.
    @Test func aDisabledDeviceIsCheckedButNotStarted() throws {
        let head = "[node]\nname = \"gw\"\nkey = \"/tmp/k\"\ndata = \"/tmp/d\"\n[api]\nsocket = \"/tmp/s\"\n"
            + "[[upstream]]\nname = \"u\"\nurl = \"unix:///tmp/l\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n"
        let devices = "[[register]]\ndomain = \"site1\"\npolicy = \"device\"\n[[device]]\nname = \"on\"\nkind = \"serial\"\nport = \"/dev/ttyS1\"\ngroup = \"site1/on\"\n"
            + "[[device]]\nname = \"off\"\nkind = \"serial\"\nport = \"/dev/ttyS2\"\ngroup = \"site1/off\"\nenabled = false\n"
        #expect(try EdgeConfig.parse(file: "e.toml", text: head + devices).devices.map(\.name) == ["on"])
        let error = #expect(throws: ConfigError.self) {
            try EdgeConfig.parse(file: "e.toml", text: head + devices.replacingOccurrences(of: "enabled = false", with: "enabled = \"no\""))
        }
        #expect(error?.description.contains("\"enabled\" must be true or false") == true, "\(error?.description ?? "-")")
    }

    /// RS-485 multi-drop: Modbus RTU units may share a port when their units
    /// differ and their line settings match; nothing else may share one.
    @Test func modbusUnitsMayShareASerialLine() throws {
        let head = "[node]\nname = \"gw\"\nkey = \"/tmp/k\"\ndata = \"/tmp/d\"\n[api]\nsocket = \"/tmp/s\"\n"
            + "[[upstream]]\nname = \"u\"\nurl = \"unix:///tmp/l\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n"
            + "[[register]]\ndomain = \"site1\"\npolicy = \"device\"\n"   // lines 1-13
        func rtu(_ name: String, unit: Int, baud: Int = 19200) -> String {
            "[[device]]\nname = \"\(name)\"\nkind = \"modbus-rtu\"\nport = \"/dev/ttyS1\"\nbaud = \(baud)\nunit = \(unit)\ngroup = \"site1/\(name)\"\n"
                + "[[device.register]]\nname = \"r\"\ntable = \"holding\"\naddress = 0\n"
        }
        let shared = try EdgeConfig.parse(file: "e.toml", text: head + rtu("a", unit: 1) + rtu("b", unit: 2))
        #expect(shared.devices.map(\.name) == ["a", "b"])
        func refusal(_ text: String) -> String {
            do { _ = try EdgeConfig.parse(file: "e.toml", text: head + text) } catch { return "\(error)" }
            return "accepted"
        }
        // Lines: the first device is 14-24, the second 25-35 (port at 28, unit at 30).
        #expect(refusal(rtu("a", unit: 1) + rtu("b", unit: 1)) == "e.toml:30:1: device \"b\": unit 1 on /dev/ttyS1 is also device \"a\"")
        #expect(refusal(rtu("a", unit: 1) + rtu("b", unit: 2, baud: 9600))
                == "e.toml:28:1: device \"b\": /dev/ttyS1 is an RS-485 line shared with device \"a\", so baud, parity, data_bits and stop_bits must match it (a: 19200 8N1, here: 9600 8N1)")
        let serial = "[[device]]\nname = \"mcu\"\nkind = \"serial\"\nport = \"/dev/ttyS1\"\ngroup = \"site1/mcu\"\n"
        #expect(refusal(rtu("a", unit: 1) + serial) == "e.toml:28:1: device \"mcu\": /dev/ttyS1 is already device \"a\" (only modbus-rtu devices with different units may share a port)")
        #expect(refusal(serial + rtu("a", unit: 1)).contains("e.toml:22:1: device \"a\": /dev/ttyS1 is already device \"mcu\""))
    }

    /// [[modbus_server]]: overlapping addresses, "rw" outside `write`, and
    /// string registers are refused with their positions.
    @Test func modbusServerMapsAreChecked() throws {
        let head = "[node]\nname = \"gw\"\nkey = \"/tmp/k\"\ndata = \"/tmp/d\"\n[api]\nsocket = \"/tmp/s\"\n"
            + "[[upstream]]\nname = \"u\"\nurl = \"unix:///tmp/l\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n"
            + "[[register]]\ndomain = \"site1\"\nname = \"label\"\ntype = \"string\"\n"                   // lines 1-14
            + "[[modbus_server]]\nlisten = \"127.0.0.1:5020\"\nwrite = [\"site1\"]\n"                      // 15-17
        func point(_ name: String, _ address: Int, type: String = "u16", access: String = "r") -> String {
            "[[modbus_server.register]]\nname = \"\(name)\"\ntable = \"holding\"\naddress = \(address)\ntype = \"\(type)\"\naccess = \"\(access)\"\n"
        }
        let ok = try EdgeConfig.parse(file: "e.toml", text: head + point("site1/a/x", 0, type: "u32", access: "rw") + point("site1/a/y", 2))
        #expect(ok.node.modbusServers.first?.points.map(\.address) == [0, 2])
        func refusal(_ text: String) -> String {
            do { _ = try EdgeConfig.parse(file: "e.toml", text: head + text) } catch { return "\(error)" }
            return "accepted"
        }
        // Points: the first is lines 18-23, the second 24-29 (address at 27).
        #expect(refusal(point("site1/a/x", 0, type: "u32") + point("site1/a/y", 1)) == "e.toml:27:1: site1/a/y at holding 1 overlaps site1/a/x")
        #expect(refusal(point("site2/a/x", 0, access: "rw"))
                == "e.toml:23:1: site2/a/x is mapped \"rw\", but [modbus_server[0]] \"write\" does not cover site2; add it there or map it \"r\"")
        #expect(refusal(point("site1/a/label", 0)) == "e.toml:19:1: site1/a/label is declared string in [[register]]; only bool, int and float registers map to Modbus")
        #expect(refusal("[[modbus_server.register]]\nname = \"site1/a/x\"\ntable = \"input\"\naddress = 0\naccess = \"rw\"\n")
                .contains("the input table is read-only"))
    }

    /// An earlier [[register]] rule that takes registers a later, more
    /// specific one was meant for is a check-config warning naming both
    /// lines; the shipped examples have none.
    @Test func aShadowedRegisterRuleIsAWarningNamingBothLines() throws {
        let text = "[node]\nname = \"gw\"\nkey = \"/tmp/k\"\ndata = \"/tmp/d\"\n[api]\nsocket = \"/tmp/s\"\n"
            + "[[upstream]]\nname = \"u\"\nurl = \"unix:///tmp/l\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n"
            + "[[register]]\ndomain = \"site1.*\"\nname = \"temperature\"\ntype = \"float\"\n"   // lines 11-14
            + "[[register]]\ndomain = \"site1.line1\"\npolicy = \"device\"\n"                      // lines 15-17
        let c = try EdgeConfig.parse(file: "e.toml", text: text)
        #expect(c.warnings.count == 1)
        #expect(c.warnings.first?.hasPrefix("e.toml:11:") == true && c.warnings.first?.contains("at line 15") == true, "\(c.warnings)")
        let edge = try EdgeConfig.load(path: Self.repo.appendingPathComponent("configs/edge.toml").path, checkFiles: false)
        let daemon = try DaemonConfig.load(path: Self.repo.appendingPathComponent("configs/spookd.toml").path, checkFiles: false)
        #expect(edge.warnings.isEmpty && daemon.warnings.isEmpty, "\(edge.warnings) \(daemon.warnings)")
    }

    @Test func aSyntaxErrorNamesItsPosition() {
        let error = #expect(throws: ConfigError.self) { try DaemonConfig.parse(file: "d.toml", text: "[node]\nname = \"x\nkey = 1\n") }
        let d = error?.diagnostics.first
        #expect(d?.line == 2 && d?.file == "d.toml")
        #expect(d?.message.hasPrefix("TOML syntax:") == true)
    }

    @Test func missingTablesAndDuplicatesAreRefused() {
        let error = #expect(throws: ConfigError.self) {
            try DaemonConfig.parse(file: "d.toml", text: """
                [[peer]]
                name = "a"
                key = "0000000000000000000000000000000000000000000000000000000000000001"
                [[peer]]
                name = "b"
                key = "0000000000000000000000000000000000000000000000000000000000000001"
                """)
        }
        let text = error?.description ?? ""
        #expect(text.contains("d.toml:1:1: the [node] table is missing"))
        #expect(text.contains("the [api] table is missing"))
        #expect(text.contains("no [[listen]]"))
        #expect(text.contains("d.toml:6:1: this key is already given to another peer"))
    }

    /// A site daemon in a hierarchy: `[[upstream]]` tables as an agent's,
    /// checked the same way; `relay` on a `[[peer]]` lets it forward others' deltas.
    @Test func aDaemonMayHaveUpstreamsAndRelayPeers() throws {
        let head = "[node]\nname = \"site1\"\nkey = \"k\"\ndata = \"d.db\"\n[api]\nsocket = \"a.sock\"\n[[listen]]\nurl = \"tcp://127.0.0.1:7400\"\n"
        let c = try DaemonConfig.parse(file: "d.toml", text: head + """
            [[peer]]
            name = "site2"
            key = "0000000000000000000000000000000000000000000000000000000000000001"
            relay = true
            write = ["site2.*"]
            [[upstream]]
            name = "central"
            url = "tls://central.example:7400"
            key = "0000000000000000000000000000000000000000000000000000000000000002"
            ca = "/etc/spook/ca.pem"
            domains = ["site1.*"]
            """)
        #expect(c.peers.first?.grant.relay == true)
        #expect(c.upstreams.map(\.name) == ["central"] && c.upstreams.first?.domains.map(\.description) == ["site1.*"])
        let error = #expect(throws: ConfigError.self) {
            try DaemonConfig.parse(file: "d.toml", text: head.replacingOccurrences(of: "site1", with: "Site_1") + """
                [[upstream]]
                name = "central"
                url = "tcp://127.0.0.1:7401"
                key = "00"
                [[peer]]
                name = "x"
                key = "0000000000000000000000000000000000000000000000000000000000000001"
                relay = "yes"
                """)
        }
        let lines = error?.diagnostics.map(\.description) ?? []
        #expect(lines.contains { $0.hasPrefix("d.toml:2:1: with [[upstream]], \"name\" must be a domain label") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("d.toml:12:1: \"key\" must be a public key") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("d.toml:16:1: \"relay\"") }, "\(lines)")
    }

    /// `[node] data = "postgres://…"`: the forms spookd takes, the password
    /// never shown, a malformed URL refused at its position, and refused by spook-edge.
    @Test func aPostgresStoreURLIsCheckedAndItsPasswordHidden() throws {
        let tcp = try PostgresURL("postgres://spook:s3cret@db.example:6543/fleet?sslmode=require")
        #expect(tcp.user == "spook" && tcp.password == "s3cret" && tcp.host == "db.example" && tcp.port == 6543 && tcp.database == "fleet" && tcp.tls == .require)
        let verified = try PostgresURL("postgres://spook@db.example/fleet?sslmode=verify-full&sslrootcert=/etc/spook/db-ca.pem")
        #expect(verified.tls == .verifyFull && verified.rootCertificate == "/etc/spook/db-ca.pem")
        #expect(verified.description == "postgres://spook@db.example:5432/fleet?sslmode=verify-full&sslrootcert=/etc/spook/db-ca.pem")
        #expect(!tcp.description.contains("s3cret"))
        let client = try PostgresURL("postgres://spook@db.example/fleet?sslmode=verify-ca&sslrootcert=/etc/spook/db-ca.pem&sslcert=/etc/spook/db.pem&sslkey=/etc/spook/db.key")
        #expect(client.tls == .verifyCA && client.clientCertificate == "/etc/spook/db.pem" && client.clientKey == "/etc/spook/db.key")
        #expect(try PostgresURL(client.description) == client)
        let socket = try PostgresURL("postgresql://spook@/fleet?host=/run/postgresql&port=5433")
        #expect(socket.socketDirectory == "/run/postgresql" && socket.port == 5433 && socket.host == nil)
        #expect(PostgresURL.redacted("postgres://u:pw@h/d") == "postgres://u:***@h/d")
        #expect(PostgresURL.redacted("/var/lib/spook/d.db") == "/var/lib/spook/d.db")
        for bad in ["postgres://nouser", "postgres://u@h:99999/d", "postgres://u@h/", "postgres://u@/d", "postgres://u:pw@h/d?colour=red",
                    "postgres://u@h/d?sslmode=prefer", "postgres://u@h/d?sslmode=require&sslrootcert=/ca.pem",
                    "postgres://u@h/d?sslmode=verify-full&sslrootcert=ca.pem", "postgres://u@/d?host=/run/postgresql&sslmode=require",
                    "postgres://u@h/d?sslmode=require&sslcert=/c.pem", "postgres://u@h/d?sslmode=require&sslkey=/c.key",
                    "postgres://u@h/d?sslcert=/c.pem&sslkey=/c.key", "postgres://u@h/d?sslmode=require&sslcert=c.pem&sslkey=/c.key"] {
            #expect(throws: CoreError.self, "\(bad)") { try PostgresURL(bad) }
        }
        let head = "[node]\nname = \"up\"\nkey = \"k\"\ndata = \"postgres://u:pw@h:0/d\"\n[api]\nsocket = \"a.sock\"\n"
        let error = #expect(throws: ConfigError.self) { try DaemonConfig.parse(file: "d.toml", text: head + "[[listen]]\nurl = \"tcp://127.0.0.1:7400\"\n") }
        let lines = error?.diagnostics.map(\.description) ?? []
        #expect(lines.count == 1 && lines[0].hasPrefix("d.toml:4:1: \"data\" = ") && lines[0].contains("the port is not 1…65535") && !lines[0].contains("pw@"), "\(lines)")
        let edge = #expect(throws: ConfigError.self) {
            try EdgeConfig.parse(file: "e.toml", text: head.replacingOccurrences(of: "h:0", with: "h") + "[[upstream]]\nname = \"u\"\nurl = \"tcp://127.0.0.1:7400\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n")
        }
        #expect(edge?.diagnostics.contains { $0.description.contains("spook-edge keeps its store in an SQLite file") } == true, "\(edge?.diagnostics ?? [])")
    }

    @Test func endpointsParse() throws {
        #expect(try Endpoint.parse("tcp://[::1]:7400") == .tcp(host: "::1", port: 7400))
        #expect(try Endpoint.parse("unix:///run/x.sock") == .unix(path: "/run/x.sock"))
        #expect(throws: (any Error).self) { try Endpoint.parse("unix://relative") }
        #expect(try Endpoint.parse("tls://h:1") == .tls(host: "h", port: 1))
        #expect(try Endpoint.parse("wss://h:1/spook") == .websocket(host: "h", port: 1, path: "/spook", tls: true))
        #expect(try Endpoint.parse("ws://h:2") == .websocket(host: "h", port: 2, path: "/", tls: false))
    }
}
