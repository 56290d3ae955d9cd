#if canImport(Glibc)
import Glibc
#endif
import SpookLink
import SpookNode
import SpookTestSupport
import Testing

/// The repository's root, from this file's path.
let repositoryRoot = "/" + #filePath.split(separator: "/").dropLast(3).joined(separator: "/")

/// The firmware bridge simulator (the real C library on a pty), built by its Makefile.
func firmwareSimulator() throws -> String {
    let make = try ChildProcess("/usr/bin/make", ["-s", "-C", "\(repositoryRoot)/firmware-bridge", "sim"])
    while try make.readLine(timeoutMs: 120_000) != nil {}
    let status = make.wait()
    guard status == 0 else { throw ChildProcess.Failure("make -C firmware-bridge sim failed (status \(status))") }
    return "\(repositoryRoot)/firmware-bridge/build/sfb-sim"
}

/// A simulator on a fresh pty; `link` (a symlink) points at it, like a udev alias.
final class FirmwareSim {
    let process: ChildProcess
    let pty: String

    init(link: String?, _ arguments: [String]) throws {
        process = try ChildProcess(try firmwareSimulator(), ["--pty"] + arguments)
        guard let first = try process.readLine(timeoutMs: 10_000), first.hasPrefix("pty ") else { throw ChildProcess.Failure("sfb-sim did not report its pty") }
        pty = String(first.dropFirst(4))
        if let link {
            unlink(link)
            guard symlink(pty, link) == 0 else { throw ChildProcess.Failure("symlink \(link): \(errno)") }
        }
    }

    /// Reads stdout until a line equal to `line`.
    func expect(_ line: String, timeoutMs: Int32 = 30_000) throws {
        while let got = try process.readLine(timeoutMs: timeoutMs) {
            if got == line { return }
        }
        throw ChildProcess.Failure("sfb-sim ended before printing \"\(line)\"")
    }

    func stop() {
        process.signal(SIGTERM)
        process.wait()
    }
}

/// [[register]] rules for device groups: the agent and the daemon share them.
let deviceSchema = """
    [[register]]
    domain = "site1.dev"
    policy = "device"

    """

extension Cluster {
    func history(_ who: String, _ register: String) throws -> [JSONValue] {
        let a = try call(who, .object(["op": .string("history"), "register": .string(register)]))
        guard case .array(let entries)? = a["history"] else { return [] }
        return entries
    }

    func attach(_ op: String, _ env: [String: String]) throws -> String {
        let ctl = try ChildProcess(Cluster.binary("spookctl"), [op, "--socket", socket("gw1")], environment: env)
        let line = try ctl.readLine(timeoutMs: 10_000) ?? ""
        let status = ctl.wait()
        guard status == 0 else { throw ChildProcess.Failure("spookctl \(op) exited with \(status): \(line)") }
        return line
    }
}

@Suite(.serialized) struct FirmwareDeviceTests {
    /// sfb-sim ↔ pty ↔ spook-edge ↔ spookd with 2 % line noise both ways:
    /// 300 counter changes arrive upstream exactly once each, in order; a
    /// desired value set upstream reaches the device and comes back reported.
    @Test func noisyPtyBothDirectionsNothingLostOrDuplicated() throws {
        let dir = TemporaryDirectory()
        let link = dir.file("ttySIM0")
        let sim = try FirmwareSim(link: link, ["--name", "pump", "--serial", "SIM42", "--count", "300", "--noise", "0.02", "--seed", "5"])
        defer { sim.stop() }
        let device = """
            [[device]]
            name = "pump"
            kind = "serial"
            port = "\(link)"
            baud = 115200
            group = "site1.dev/pump"

            """
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device, directory: dir, history: 4096)
        try c.startDaemon()
        try c.startEdge()
        try sim.expect("counted 300", timeoutMs: 60_000)
        try c.waitFor("counter 300 upstream", seconds: 30) { c.value("spookd", "site1.dev/pump/counter") == .int(300) }
        // History is newest first; [node] history = 4096 keeps them all.
        let values = try c.history("spookd", "site1.dev/pump/counter").filter { $0["side"]?.string == "reported" }.compactMap { $0["value"] }
        #expect(Array(values.reversed()) == (0...300).map { JSONValue.int(Int64($0)) }, "\(values.count) values upstream")
        #expect(c.value("spookd", "site1.dev/pump/$online") == .bool(true))

        // Desired, set upstream, reaches the device; its report settles it.
        _ = try c.call("spookd", .object(["op": .string("set"), "register": .string("site1.dev/pump/setpoint"), "value": .int(-42)]))
        try sim.expect("write setpoint=-42")
        try c.waitFor("setpoint reported upstream") { c.value("spookd", "site1.dev/pump/setpoint") == .int(-42) }
        let reg = try c.call("spookd", .object(["op": .string("get"), "register": .string("site1.dev/pump/setpoint")]))["register"]
        #expect(reg?["pending"] == .bool(false))
        // A read-only register refuses a desired value: `$error` says so, nothing crashes.
        _ = try c.call("gw1", .object(["op": .string("set"), "register": .string("site1.dev/pump/counter"), "value": .int(5)]))
        try c.waitFor("$error for a read-only register") {
            (c.value("spookd", "site1.dev/pump/$error")?.string ?? "").contains("counter: the device's register is read-only")
        }
    }

    /// The device vanishes (its pty closes): `$online` goes false upstream,
    /// its values stay; it returns on a new pty behind the same path, and values flow again.
    @Test func unpluggedThenBack() throws {
        let dir = TemporaryDirectory()
        let link = dir.file("ttySIM0")
        var sim = try FirmwareSim(link: link, ["--count", "3"])
        let device = "[[device]]\nname = \"s\"\nkind = \"serial\"\nport = \"\(link)\"\ngroup = \"site1.dev/s\"\n"
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device, directory: dir)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("counter 3 upstream") { c.value("spookd", "site1.dev/s/counter") == .int(3) }
        sim.stop()
        try c.waitFor("$online false upstream") { c.value("spookd", "site1.dev/s/$online") == .bool(false) }
        #expect(c.value("spookd", "site1.dev/s/counter") == .int(3), "a vanished device keeps its last values")
        sim = try FirmwareSim(link: link, ["--count", "7"])
        defer { sim.stop() }
        try c.waitFor("back online") { c.value("spookd", "site1.dev/s/$online") == .bool(true) }
        try c.waitFor("counter 7 upstream") { c.value("spookd", "site1.dev/s/counter") == .int(7) }
    }

    /// Hardening 11: after `kill -9` the device's values, sent again when it
    /// re-synchronises (an ack may have been lost with the agent), used to be
    /// committed a second time. The commit is now judged against the store,
    /// so a value the store holds makes no second delta.
    @Test func aReportSentAgainAfterKillNineIsNotCommittedTwice() throws {
        let dir = TemporaryDirectory()
        let link = dir.file("ttySIM0")
        let sim = try FirmwareSim(link: link, ["--count", "3"])
        defer { sim.stop() }
        let device = "[[device]]\nname = \"s\"\nkind = \"serial\"\nport = \"\(link)\"\ngroup = \"site1.dev/s\"\n"
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device, directory: dir)
        try c.startDaemon()
        try c.startEdge()
        try c.waitFor("counter 3 on the agent") { c.value("gw1", "site1.dev/s/counter") == .int(3) }
        func reported() throws -> [JSONValue] {
            try c.history("gw1", "site1.dev/s/counter").filter { $0["side"]?.string == "reported" }.compactMap { $0["value"] }
        }
        #expect(try Array(reported().reversed()) == [0, 1, 2, 3].map { JSONValue.int($0) })
        c.edges["gw1"]?.signal(SIGKILL)
        c.edges["gw1"]?.wait()
        try c.startEdge()
        try c.waitFor("the device online again") { c.value("gw1", "site1.dev/s/$online") == .bool(true) }
        // The device re-sent its state on the new session; nothing new was committed.
        #expect(try Array(reported().reversed()) == [0, 1, 2, 3].map { JSONValue.int($0) })
    }

    /// `spookctl attach` / `detach` with a udev environment create and dissolve the HalfPair.
    @Test func udevAttachAndDetach() throws {
        let dir = TemporaryDirectory()
        let sim = try FirmwareSim(link: nil, ["--serial", "SIMA1", "--count", "2"])
        defer { sim.stop() }
        let device = """
            [[device]]
            name = "sensor"
            kind = "serial"
            group = "site1.dev/{serial}"
            [device.match]
            vendor = "0483"
            product = "5740"

            """
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device, directory: dir)
        try c.startDaemon()
        try c.startEdge()
        let udev = ["ACTION": "add", "DEVNAME": sim.pty, "SUBSYSTEM": "tty", "ID_VENDOR_ID": "0483", "ID_MODEL_ID": "5740", "ID_SERIAL_SHORT": "SIMA1"]
        #expect(try c.attach("attach", udev).hasPrefix("attached \(sim.pty) as device sensor in site1.dev/sima1"))
        try c.waitFor("counter 2 upstream") { c.value("spookd", "site1.dev/sima1/counter") == .int(2) }
        #expect(try c.attach("attach", udev).contains("already attached"))
        let unknown = ["ACTION": "add", "DEVNAME": "/dev/ttyUSB9", "SUBSYSTEM": "tty", "ID_VENDOR_ID": "1a86", "ID_MODEL_ID": "7523"]
        #expect(try c.attach("attach", unknown).hasPrefix("ignored: no [[device]] matches /dev/ttyUSB9"))
        #expect(try c.attach("detach", ["ACTION": "remove", "DEVNAME": sim.pty]).hasPrefix("detached \(sim.pty)"))
        try c.waitFor("$online false after detach") { c.value("spookd", "site1.dev/sima1/$online") == .bool(false) }
        #expect(c.value("spookd", "site1.dev/sima1/$state") == .string("closed"))
        #expect(c.value("spookd", "site1.dev/sima1/counter") == .int(2))
        guard case .array(let devices)? = try c.status("gw1")["devices"] else { throw ChildProcess.Failure("no devices in status") }
        #expect(devices.isEmpty, "the dissolved HalfPair is gone: \(devices)")
        #expect(try c.attach("detach", ["ACTION": "remove", "DEVNAME": sim.pty]).hasPrefix("ignored"))
    }
}

@Suite struct DeviceStateTests {
    /// A port that cannot be opened fails inside the HalfPair's `openLink`:
    /// the device is decoherent between reconnect attempts, and `$state`
    /// says so (it is published in the order the HalfPair moved).
    @Test func aPortThatCannotOpenIsDecoherent() throws {
        let dir = TemporaryDirectory()
        let device = "[[device]]\nname = \"gone\"\nkind = \"serial\"\nport = \"\(dir.file("no-such-tty"))\"\ngroup = \"site1.dev/gone\"\n"
        let c = try Cluster(owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema, edgeExtra: deviceSchema + device, directory: dir)
        try c.startDaemon()
        try c.startEdge()
        // Several reconnect attempts (backoff 50…400 ms), each opening and failing.
        try c.waitFor("reconnect attempts") { try c.history("gw1", "site1.dev/gone/$state").count >= 6 }
        let states = try c.history("gw1", "site1.dev/gone/$state").compactMap { $0["value"]?.string }
        #expect(states.first == "decoherent", "newest first: \(states)")
        #expect(states.contains("reentangling"))
        #expect(c.value("gw1", "site1.dev/gone/$online") == .bool(false))
        let error = c.value("gw1", "site1.dev/gone/$error")?.string ?? ""
        #expect(error.contains("no-such-tty: No such file or directory"), "\(error)")
    }
}
