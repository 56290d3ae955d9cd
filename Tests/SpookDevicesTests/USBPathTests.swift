#if canImport(Glibc)
import Glibc
#endif
import CFirmwareBridge
import Foundation
import Logging
import SpookCore
import SpookDevices
import SpookNode
import SpookTestSupport
import Testing

/// The real C device behind a bulk transport, as a USB device's endpoints
/// would carry it: everything above the libusb calls runs for real.
final class SimulatedBulkDevice: BulkTransport, @unchecked Sendable {
    let bench = Bench(seed: 3, noise: 0)
    /// Guards `bench`; signalled when the host writes or the test changes a value.
    let condition = NSCondition()

    /// A bulk IN transfer: what the device sends within `timeoutMs`. The
    /// device's own timers (retransmit, heartbeat) run on its `sfb_poll`, so
    /// the wait wakes at least every `SFB_RETRANSMIT_MS / 2` to poll it.
    func read(timeoutMs: UInt32) throws -> [UInt8] {
        let deadline = monotonicMs() + UInt64(timeoutMs)
        condition.lock()
        defer { condition.unlock() }
        while true {
            bench.now = UInt32(truncatingIfNeeded: monotonicMs())
            sfb_poll(bench.device)
            let out = bench.toHost
            bench.toHost = []
            let now = monotonicMs()
            if !out.isEmpty || now >= deadline { return out }
            let wait = min(deadline - now, UInt64(SFB_RETRANSMIT_MS / 2))
            _ = condition.wait(until: Date(timeIntervalSinceNow: Double(wait) / 1000))
        }
    }

    func write(_ bytes: [UInt8]) throws {
        condition.lock()
        defer { condition.unlock() }
        bench.now = UInt32(truncatingIfNeeded: monotonicMs())
        bytes.withUnsafeBufferPointer { sfb_input(bench.device, $0.baseAddress, $0.count) }
        condition.signal()
    }

    var writes: [(UInt8, UInt32)] {
        condition.lock()
        defer { condition.unlock() }
        return bench.writes
    }

    func set(_ id: UInt8, _ raw: UInt32) {
        condition.lock()
        defer { condition.unlock() }
        sfb_set(bench.device, id, raw)
        condition.signal()
    }
}

@Suite struct USBPathTests {
    /// libusb itself: it initialises, enumerates (this machine has no USB bus,
    /// so the list may be empty), and a device that is not there is refused by name.
    @Test func libusbInitialisesEnumeratesAndRefusesAMissingDevice() throws {
        let usb = try USBContext()
        for d in usb.list() {
            #expect(d.path.hasPrefix("/dev/bus/usb/") && d.vendor?.count == 4 && d.product?.count == 4, "\(d)")
        }
        let error = #expect(throws: DeviceError.self) { try usb.open(DeviceMatch(vendor: "ffff", product: "fffe"), USBSettings()) }
        #expect(error?.description == "no USB device matches vendor ffff product fffe serial *")
    }

    /// An agent (in process) attaches a vendor-class USB device by its udev
    /// identity, learns its registers over the bulk transport, mirrors them,
    /// and drives a desired value into it.
    @Test func anAttachedBulkDeviceIsMirroredAndDriven() throws {
        let dir = TemporaryDirectory()
        let config = try EdgeConfig.parse(file: "edge.toml", text: """
            [node]
            name = "gw"
            key = "\(dir.file("gw.key"))"
            data = "\(dir.file("gw.db"))"
            sync = "normal"
            [api]
            socket = "\(dir.file("gw.sock"))"
            [[upstream]]
            name = "up"
            url = "unix://\(dir.file("nobody-listens.sock"))"
            key = "0000000000000000000000000000000000000000000000000000000000000000"
            [[register]]
            domain = "site1.dev"
            policy = "device"
            [[device]]
            name = "board"
            kind = "usb"
            group = "site1.dev/{serial}"
            [device.match]
            vendor = "0483"
            product = "5750"
            """)
        let device = SimulatedBulkDevice()
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let node = try Node(role: .edge(config), logger: logger)
        node.openBulk = { match, _ in
            guard match.vendor == "0483" else { throw DeviceError("unexpected match \(match)") }
            return device
        }
        try node.start()
        defer { node.shutdown() }
        let api = try APIClient(socket: dir.file("gw.sock"))
        func call(_ request: JSONValue) throws -> JSONValue {
            let a = try api.call(request)
            guard a["ok"] == .bool(true) else { throw DeviceError("\(a)") }
            return a
        }
        func value(_ r: String) -> JSONValue? { (try? call(.object(["op": .string("get"), "register": .string(r)])))?["register"]?["value"] }

        let attached = try call(.object(["op": .string("attach"), "device": .object([
            "DEVNAME": .string("/dev/bus/usb/001/004"), "SUBSYSTEM": .string("usb"),
            "ID_VENDOR_ID": .string("0483"), "ID_MODEL_ID": .string("5750"), "ID_SERIAL_SHORT": .string("B0B"),
        ])]))
        #expect(attached["result"]?.string == "attached /dev/bus/usb/001/004 as device board in site1.dev/b0b")
        try waitUntil("the device is online") { value("site1.dev/b0b/$online") == .bool(true) }
        device.set(0, 41)
        try waitUntil("counter 41 mirrored") { value("site1.dev/b0b/counter") == .int(41) }
        _ = try call(.object(["op": .string("set"), "register": .string("site1.dev/b0b/setpoint"), "value": .int(-7)]))
        try waitUntil("the write reached the device") { device.writes.contains { $0.0 == 1 && Int32(bitPattern: $0.1) == -7 } }
        try waitUntil("the write is reported back") { value("site1.dev/b0b/setpoint") == .int(-7) }
        let detached = try call(.object(["op": .string("detach"), "device": .object(["DEVNAME": .string("/dev/bus/usb/001/004")])]))
        #expect(detached["result"]?.string?.hasPrefix("detached /dev/bus/usb/001/004") == true)
        try waitUntil("offline after detach") { value("site1.dev/b0b/$online") == .bool(false) }
    }
}
