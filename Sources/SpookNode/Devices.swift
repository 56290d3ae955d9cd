#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import SpookCore
import SpookDevices
import SpookStore

/// The agent's device HalfPairs (SUBSTRATE.md §7): one per attached device.
/// A device's state lives in its group: the registers it reports, plus
/// `$state`, `$online` and `$error`. Confined to the node loop; blocking
/// device calls (libmodbus, libusb) run on each device's own thread and hand
/// their results to the loop.
final class DeviceHost: @unchecked Sendable {
    unowned let node: Node
    var specs: [DeviceSpec]
    var devices: [Device] = []

    init(node: Node, specs: [DeviceSpec]) {
        self.node = node
        self.specs = specs
    }

    var logger: Logger { node.logger }

    /// Opens devices with a fixed port; attaches matched ones already plugged in.
    func start() {
        for spec in specs where spec.match == nil {
            do {
                start(try Device(spec: spec, group: try GroupTemplate.expand(spec.groupTemplate, name: spec.name, device: nil), attached: nil, host: self))
            } catch {
                logger.error("device not started", metadata: ["device": "\(spec.name)", "error": "\(error)"])
            }
        }
        for found in SerialPort.list() { _ = attach(found) }
    }

    /// A reload: devices whose `[[device]]` is gone or changed are dissolved
    /// (their groups keep their values, `$state` "closed"); new and changed
    /// fixed-port devices start; matched ones attach on the next udev event
    /// (an attached device whose table changed is re-attached now).
    func reload(_ next: [DeviceSpec]) -> [String] {
        var changes: [String] = []
        let old = specs
        specs = next
        var reattach: [AttachedDevice] = []
        for device in devices where !next.contains(device.spec) {
            device.drive(.dissolve)
            changes.append(next.contains { $0.name == device.spec.name } ? "device \(device.spec.name) changed" : "device \(device.spec.name) removed")
            if let a = device.attached { reattach.append(a) }
        }
        devices.removeAll { !next.contains($0.spec) }
        for spec in next where spec.match == nil && !devices.contains(where: { $0.spec == spec }) {
            do {
                start(try Device(spec: spec, group: try GroupTemplate.expand(spec.groupTemplate, name: spec.name, device: nil), attached: nil, host: self))
                if !old.contains(where: { $0.name == spec.name }) { changes.append("device \(spec.name) added") }
            } catch {
                logger.error("device not started", metadata: ["device": "\(spec.name)", "error": "\(error)"])
            }
        }
        for a in reattach { _ = attach(a) }
        return changes
    }

    /// Serial lines with Modbus units on them, by port path (node loop only).
    var modbusLines: [String: ModbusLine] = [:]

    /// A worker for a Modbus device, on its own connection (TCP) or on the
    /// shared line of its serial port (RTU: several units may share one).
    func modbusWorker(for device: Device, settings: ModbusSettings, generation: Int) throws -> ModbusWorker {
        let loop = node.loop
        switch device.spec.kind {
        case .modbusTCP(let host, let port, _):
            let client = try ModbusClient(host: host, port: port, unit: settings.unit, timeoutMs: settings.timeoutMs)
            return ModbusWorker(settings: settings, line: ModbusLine(client: client, loop: loop, onClosed: { _ in }), device: device, generation: generation)
        case .modbusRTU(var serial, _):
            if let path = device.attached?.path { serial.port = path }
            if let line = modbusLines[serial.port], line.isOpen {
                return ModbusWorker(settings: settings, line: line, device: device, generation: generation)
            }
            let client = try ModbusClient(rtu: serial, unit: settings.unit, timeoutMs: settings.timeoutMs)
            let key = serial.port
            let line = ModbusLine(client: client, loop: loop) { [weak self] closed in
                if let self, self.modbusLines[key] === closed { self.modbusLines[key] = nil }
            }
            modbusLines[key] = line
            return ModbusWorker(settings: settings, line: line, device: device, generation: generation)
        default:
            throw DeviceError("\(device.spec.name) is not a Modbus device")
        }
    }

    func start(_ device: Device) {
        devices.append(device)
        logger.info("device HalfPair", metadata: ["device": "\(device.spec.name)", "group": "\(device.group)", "kind": "\(device.spec.kind.name)"])
        device.drive(.connect)
    }

    /// udev add: the first matching `[[device]]` gets a HalfPair for it.
    func attach(_ found: AttachedDevice) -> String {
        if let existing = devices.first(where: { $0.attached?.path == found.path }) {
            return "\(found.path) is already attached as device \(existing.spec.name) (\(existing.group))"
        }
        let fits: (DeviceSpec) -> Bool = { spec in
            switch spec.kind {
            case .serial, .modbusRTU: found.subsystem == "tty"
            case .usb: found.subsystem == "usb"
            case .modbusTCP: false
            }
        }
        guard let spec = specs.first(where: { $0.match?.matches(found) == true && fits($0) }) else {
            logger.info("attach ignored: no [[device]] matches", metadata: ["device": "\(found)"])
            return "ignored: no [[device]] matches \(found)"
        }
        do {
            let group = try GroupTemplate.expand(spec.groupTemplate, name: spec.name, device: found)
            if let clash = devices.first(where: { $0.group == group }) {
                logger.warning("attach refused: group taken", metadata: ["device": "\(found)", "group": "\(group)", "by": "\(clash.attached?.path ?? clash.spec.name)"])
                return "refused: group \(group) is already device \(clash.attached?.path ?? clash.spec.name)"
            }
            start(try Device(spec: spec, group: group, attached: found, host: self))
            return "attached \(found.path) as device \(spec.name) in \(group)"
        } catch {
            logger.error("attach failed", metadata: ["device": "\(found)", "error": "\(error)"])
            return "refused: \(error)"
        }
    }

    /// udev remove: dissolves the HalfPair; the group keeps its last values
    /// with `$online = false`.
    func detach(path: String) -> String {
        guard let i = devices.firstIndex(where: { $0.attached?.path == path }) else {
            logger.info("detach ignored: not attached", metadata: ["path": "\(path)"])
            return "ignored: \(path) is not attached"
        }
        let device = devices.remove(at: i)
        device.drive(.dissolve)
        return "detached \(path) (device \(device.spec.name), \(device.group))"
    }

    /// After every commit: drive devices towards newer `desired` values.
    func changed(_ names: [QRegisterName]) {
        guard !devices.isEmpty else { return }
        for device in devices where names.contains(where: { $0.group == device.group }) {
            device.pushDesired(names.filter { $0.group == device.group })
        }
    }

    func shutdown() {
        for d in devices { d.close() }
    }

    func status() -> [JSONValue] {
        devices.map { d in
            .object([
                "name": .string(d.spec.name), "kind": .string(d.spec.kind.name), "group": .string(d.group.text),
                "state": .string(d.pair.state.name), "online": .bool(d.pair.state.isOnline),
                "path": .string(d.attached?.path ?? d.portPath ?? "-"), "error": .string(d.lastError ?? ""),
                "transactions": .int(Int64(d.transactionCount)),
            ])
        }
    }
}

/// One device HalfPair and its connection.
final class Device: @unchecked Sendable {
    let spec: DeviceSpec
    let group: QGroupName
    let attached: AttachedDevice?
    unowned let host: DeviceHost
    var pair: HalfPair
    var reconnect: Scheduled<Void>?
    var lastError: String?
    /// The `desired` stamp last sent to the device, per register.
    var sentDesired: [String: Stamp] = [:]
    var transactions = 0
    /// A connection counts only while it is this one (stale callbacks are dropped).
    var generation = 0

    // Firmware bridge (serial and USB).
    var firmware = FirmwareHost()
    var channel: Channel?
    var usb: USBWorker?
    var tick: RepeatedTask?
    // Modbus.
    var modbus: ModbusWorker?

    init(spec: DeviceSpec, group: QGroupName, attached: AttachedDevice?, host: DeviceHost) throws {
        self.spec = spec
        self.group = group
        self.attached = attached
        self.host = host
        let c = host.node.config
        pair = HalfPair(origin: host.node.origin, backoff: ReconnectBackoff(baseMs: c.reconnectBaseMs, capMs: c.reconnectCapMs))
    }

    var node: Node { host.node }

    /// Modbus requests or firmware reports, over every connection so far.
    var transactionCount: Int { transactions + (modbus?.counter.withLockedValue { $0 } ?? 0) }
    var logger: Logger { host.node.logger }

    var portPath: String? {
        switch spec.kind {
        case .serial(let s), .modbusRTU(let s, _): attached?.path ?? s.port
        case .modbusTCP(let h, let p, _): "tcp://\(h):\(p)"
        case .usb: attached?.path
        }
    }

    /// Events raised while the actions of another are carried out (a port that
    /// fails to open inside `openLink`) wait their turn, so `$state` is
    /// published in the order the HalfPair moved.
    var driving = false
    var queuedEvents: [HalfPair.Event] = []

    func drive(_ event: HalfPair.Event) {
        queuedEvents.append(event)
        guard !driving else { return }
        driving = true
        defer { driving = false }
        while !queuedEvents.isEmpty { carryOut(queuedEvents.removeFirst()) }
    }

    private func carryOut(_ event: HalfPair.Event) {
        let actions: [HalfPair.Action]
        do { actions = try pair.handle(event) } catch {
            logger.debug("device HalfPair ignored an event", metadata: ["device": "\(spec.name)", "event": "\(event)", "state": "\(pair.state)"])
            return
        }
        for action in actions {
            switch action {
            case .openLink: open()
            case .closeLink: close()
            case .scheduleReconnect(let delayMs):
                node.metrics.reconnects.increment()
                reconnect = node.loop.scheduleTask(in: .milliseconds(Int64(delayMs))) { [weak self] in self?.drive(.reconnectTimerFired) }
            case .cancelReconnect: reconnect?.cancel()
            case .publish(let state):
                logger.info("device", metadata: ["device": "\(spec.name)", "group": "\(group)", "state": "\(state.name)"])
                commit([Write("$state", .set, .string(state.name)), Write("$online", .set, .bool(state.isOnline))])
            case .startCatchUp, .sendHeartbeat, .startHeartbeatTimer, .stopHeartbeatTimer:
                break // devices have their own liveness: bridge heartbeats, Modbus polls
            }
        }
    }

    // MARK: connection

    func open() {
        generation += 1
        let gen = generation
        firmware = FirmwareHost()
        sentDesired = [:]
        switch spec.kind {
        case .serial(var settings):
            if let attached { settings.port = attached.path }
            let port = settings.port
            let fd: Int32
            do { fd = try SerialPort.open(settings) } catch {
                failed("\(error)")
                return
            }
            NIOPipeBootstrap(group: node.ioGroup)
                .channelInitializer { [ref = WeakDevice(self), nodeLoop = node.loop] channel in
                    channel.pipeline.addHandler(DeviceBytesHandler(
                        onBytes: { bytes in nodeLoop.execute { ref.device?.received(bytes, gen) } },
                        onClose: { reason in nodeLoop.execute { ref.device?.lost(reason, gen) } }))
                }
                .takingOwnershipOfDescriptor(inputOutput: fd)
                .hop(to: node.loop)
                .whenComplete { [weak self] result in
                    guard let self, gen == self.generation else { return }
                    switch result {
                    case .success(let channel):
                        self.channel = channel
                        self.linkOpened(gen)
                    case .failure(let error):
                        self.failed("\(port): \(error)")
                    }
                }
        case .usb(let settings):
            guard let match = spec.match else { return failed("a usb device needs a match block") }
            let worker = USBWorker(match: match, settings: settings, open: node.openBulk, loop: node.loop,
                                   onBytes: { [weak self] bytes in self?.received(bytes, gen) },
                                   onClose: { [weak self] reason in self?.lost(reason, gen) })
            usb = worker
            worker.start { [weak self] error in
                guard let self, gen == self.generation else { return }
                if let error { self.failed(error) } else { self.linkOpened(gen) }
            }
        case .modbusTCP(_, _, let settings), .modbusRTU(_, let settings):
            let worker: ModbusWorker
            do { worker = try host.modbusWorker(for: self, settings: settings, generation: gen) } catch {
                failed("\(error)")
                return
            }
            modbus = worker
            // Desired values set while the device was away go out before the
            // first poll: otherwise that poll's report, newer than them, would
            // settle them unapplied. Joining the line starts the unit's turns.
            pushDesired(nil, connecting: true)
            worker.join()
        }
    }

    /// A bridge link is open: ask the device to describe itself.
    func linkOpened(_ gen: Int) {
        guard gen == generation else { return }
        drive(.linkUp)
        let now = node.clock.nowMs()
        send(firmware.open(nowMs: now))
        let interval = TimeAmount.milliseconds(Int64(firmware.options.retransmitMs / 2))
        tick = node.loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in self?.pollFirmware(gen) }
    }

    func send(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        if let channel {
            var buffer = channel.allocator.buffer(capacity: bytes.count)
            buffer.writeBytes(bytes)
            channel.writeAndFlush(buffer, promise: nil)
        } else {
            usb?.send(bytes)
        }
    }

    func failed(_ message: String) {
        setError(message)
        logger.warning("device link failed", metadata: ["device": "\(spec.name)", "error": "\(message)"])
        close()
        drive(.linkDown)
    }

    func lost(_ reason: String, _ gen: Int) {
        guard gen == generation else { return }
        failed(reason)
    }

    /// Closes the connection (the HalfPair decides what comes next).
    func close() {
        generation += 1
        tick?.cancel()
        tick = nil
        channel?.close(promise: nil)
        channel = nil
        usb?.stop()
        usb = nil
        if let modbus {
            transactions += modbus.counter.withLockedValue { $0 }
            modbus.stop()
        }
        modbus = nil
    }

    // MARK: firmware bridge

    func received(_ bytes: [UInt8], _ gen: Int) {
        guard gen == generation else { return }
        let now = node.clock.nowMs()
        let (events, out) = firmware.receive(bytes, nowMs: now)
        send(out)
        handle(events)
    }

    func pollFirmware(_ gen: Int) {
        guard gen == generation else { return }
        let (events, out) = firmware.poll(nowMs: node.clock.nowMs())
        send(out)
        handle(events)
    }

    func handle(_ events: [FirmwareHost.Event]) {
        let now = node.clock.nowMs()
        for event in events {
            switch event {
            case .described(let d):
                let bad = d.registers.filter { (try? QRegisterName(group: group, name: $0.name)) == nil || $0.name.hasPrefix("$") }
                if let first = bad.first {
                    setError("the device describes register \"\(first.name)\", which is not a register name (a-z, 0-9, \"-\", \"_\")")
                    firmware.refuse()
                    continue
                }
                logger.info("device described itself", metadata: ["device": "\(spec.name)", "name": "\(d.name)", "serial": "\(d.serial)",
                                                                  "registers": "\(d.registers.map { "\($0.name):\($0.type)\($0.writable ? ":rw" : "")" })"])
                send(firmware.welcome(nowMs: now))
                setError("") // connected and described: an earlier connection error no longer holds
                drive(.caughtUp)
                pushDesired(nil)
            case .reported(let values):
                transactions += 1
                if report(values.map { ($0.0.name, $0.1) }) {
                    send(firmware.acknowledge(nowMs: node.clock.nowMs()))
                } else {
                    firmware.forgetReport()
                }
            case .rejected(let register, let id, let reason):
                let why = [1: "unknown register", 2: "read-only", 3: "out of range", 4: "refused by the device"][Int(reason)] ?? "reason \(reason)"
                setError("\(register?.name ?? "register #\(id)"): the device refused the write (\(why))")
            case .lost(let reason):
                failed(reason)
            case .protocolError(let message):
                logger.debug("device protocol", metadata: ["device": "\(spec.name)", "message": "\(message)"])
            }
        }
    }

    // MARK: state

    /// Commits the values that changed as `reported`; false if the store refused.
    /// "Changed" is judged against the store, not a cache: a report the device
    /// sends again (its ack was lost when the agent died after the commit)
    /// makes no second delta, so the device's ack and the commit are idempotent.
    @discardableResult
    func report(_ values: [(String, Value)]) -> Bool {
        var writes: [Write] = []
        for (name, value) in values {
            guard let register = try? QRegisterName(group: group, name: name) else { continue }
            writes.removeAll { $0.register == name }  // the latest value of a register in one report wins
            if node.store.state.registers[register]?.value == value { continue }
            writes.append(Write(name, node.config.schema.spec(for: register).policy == .device ? .report : .set, value))
        }
        guard !writes.isEmpty else { return true }
        return commit(writes)
    }

    /// `$error`: the latest problem, or "" once it no longer holds.
    func setError(_ message: String) {
        guard (lastError ?? "") != message else { return }
        lastError = message
        if !message.isEmpty {
            node.metrics.deviceError(spec.name)
            node.limitLog.warning("device-error:\(spec.name)", "device \(spec.name): \(message)", nowMs: node.clock.nowMs())
        }
        commit([Write("$error", .set, .string(message))])
    }

    @discardableResult
    func commit(_ writes: [Write]) -> Bool {
        do {
            let results = try node.store.commitLocal([LocalWrite(group: group, writes: writes)], origin: node.origin, physicalMs: node.clock.nowMs())
            if case .failure(let e)? = results.first {
                logger.error("device write refused", metadata: ["device": "\(spec.name)", "error": "\(e.message)"])
                return false
            }
            node.afterStoreChange(except: nil)
            return true
        } catch {
            logger.error("device commit failed", metadata: ["device": "\(spec.name)", "error": "\(error)"])
            return false
        }
    }

    /// Sends the device every `desired` value newer than what it reported
    /// and not sent yet (`names` nil: all of the group's registers), while
    /// online or while a new connection is being set up.
    func pushDesired(_ names: [QRegisterName]?, connecting: Bool = false) {
        guard pair.state.isOnline || connecting else { return }
        let candidates = names ?? node.store.state.registers.keys.filter { $0.group == group }
        for name in candidates where !name.isSystem {
            guard let desired = node.store.state.registers[name]?.pendingDesired, sentDesired[name.name] != desired.stamp else { continue }
            sentDesired[name.name] = desired.stamp
            switch spec.kind {
            case .serial, .usb:
                guard let r = firmware.descriptor?.register(named: name.name) else {
                    setError("\(name.name): the device has no such register"); continue
                }
                guard r.writable else { setError("\(name.name): the device's register is read-only"); continue }
                guard let raw = r.type.raw(desired.value) else { setError("\(name.name): desired \(desired.value) does not fit \(r.type)"); continue }
                firmware.write(id: r.id, raw: raw)
                pollFirmware(generation)
            case .modbusTCP(_, _, let m), .modbusRTU(_, let m):
                guard let p = m.points.first(where: { $0.name == name.name }) else { setError("\(name.name): not in the device's register map"); continue }
                guard p.writable else { setError("\(name.name): mapped with access \"r\""); continue }
                guard let words = p.encode(desired.value) else { setError("\(name.name): desired \(desired.value) does not fit \(p.type) (scale \(p.scale))"); continue }
                modbus?.enqueue(p, words)
            }
        }
    }
}

/// Lets I/O-loop callbacks reach a device that may be gone.
final class WeakDevice: @unchecked Sendable {
    weak var device: Device?
    init(_ device: Device) { self.device = device }
}

/// Bytes in from a serial port (on the I/O loop); closing reported once.
final class DeviceBytesHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let onBytes: ([UInt8]) -> Void
    let onClose: (String) -> Void
    var closed = false

    init(onBytes: @escaping ([UInt8]) -> Void, onClose: @escaping (String) -> Void) {
        self.onBytes = onBytes
        self.onClose = onClose
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        onBytes(buffer.readBytes(length: buffer.readableBytes) ?? [])
    }

    func channelInactive(context: ChannelHandlerContext) {
        report("the port closed (device unplugged?)")
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        report("port error: \(error)")
        context.close(promise: nil)
    }

    func report(_ reason: String) {
        guard !closed else { return }
        closed = true
        onClose(reason)
    }
}

/// A Modbus device's polling thread: connects, reads the coalesced spans every
/// `poll_ms`, performs queued writes, and hands results to the node loop.
/// One Modbus connection (a TCP socket or a serial port) and the one thread
/// that makes every libmodbus call on it. On an RS-485 line several
/// `modbus-rtu` devices (units) share the port: one libmodbus context, one
/// thread, and turns in a fixed order, each unit polling when its `poll_ms`
/// is due (or at once when a write is queued for it). A unit that does not
/// answer goes offline alone; a port that fails takes every unit with it.
final class ModbusLine: @unchecked Sendable {
    let client: ModbusClient
    let pool = NIOThreadPool(numberOfThreads: 1)
    /// True when the thread should look again (a member joined or left, a write was queued).
    let wake = ConditionLock(value: false)
    var members: [ModbusWorker] = []  // guarded by `wake`
    var closed = false  // guarded by `wake`; a closed line takes no new members
    var started = false  // guarded by `wake`
    /// Called on the node loop once the line is closed and has no members.
    let onClosed: @Sendable (ModbusLine) -> Void
    let loop: EventLoop

    init(client: ModbusClient, loop: EventLoop, onClosed: @escaping @Sendable (ModbusLine) -> Void) {
        self.client = client
        self.loop = loop
        self.onClosed = onClosed
    }

    /// Adds a unit; false if the line has closed (its port failed): open a new one.
    func join(_ worker: ModbusWorker) -> Bool {
        wake.lock()
        guard !closed else {
            wake.unlock()
            return false
        }
        members.append(worker)
        let first = !started
        started = true
        wake.unlock(withValue: true)
        if first {
            pool.start()
            pool.submit { [self] state in
                guard state == .active else { return }
                run()
            }
        }
        return true
    }

    /// Removes a unit (its device closed); the last one out closes the line.
    func leave(_ worker: ModbusWorker) {
        wake.lock()
        members.removeAll { $0 === worker }
        let last = members.isEmpty
        if last { closed = true }
        wake.unlock(withValue: true)
        guard last else { return }
        let pool = self.pool, onClosed = self.onClosed
        loop.execute { onClosed(self) }
        // Never block the node loop on a Modbus timeout: end the thread on the side.
        DispatchlessThread.detach { try? pool.syncShutdownGracefully() }
    }

    var isOpen: Bool {
        wake.lock()
        defer { wake.unlock() }
        return !closed
    }

    func poke() {
        wake.lock()
        wake.unlock(withValue: true)
    }

    /// The thread's loop; every libmodbus call happens here.
    func run() {
        do {
            try client.connect()
        } catch {
            return down("\(error)")
        }
        while true {
            wake.lock()
            let current = members
            let stop = closed
            wake.unlock(withValue: false)
            if stop {
                client.close()
                return
            }
            var nextDue = ContinuousClock.now + .seconds(1)
            for worker in current {
                switch worker.turn(client) {
                case .ok: break
                case .unitDown(let message): worker.down(message)
                case .lineDown(let message): return down(message)
                }
                nextDue = min(nextDue, worker.nextPoll)
            }
            // Sleep until the next unit is due, or until something changes.
            let remainingMs = ContinuousClock.now.duration(to: nextDue) / .milliseconds(1)
            if remainingMs > 0, wake.lock(whenValue: true, timeoutSeconds: remainingMs / 1000) {
                wake.unlock(withValue: true)
            }
        }
    }

    /// The port or connection failed: close it, and every unit on it is offline.
    func down(_ message: String) {
        wake.lock()
        closed = true
        let all = members
        wake.unlock(withValue: true)
        client.close()
        for worker in all { worker.down(message) }
    }
}

/// One Modbus device (a unit) on a `ModbusLine`: its reads, its queued
/// writes, and what it last reported. Everything but the queue is touched by
/// the line's thread only.
final class ModbusWorker: @unchecked Sendable {
    let reads: [ModbusRead]
    let settings: ModbusSettings
    let line: ModbusLine
    /// Writes queued by the node loop, and whether to send every value again.
    let queue = NIOLockedValueBox((writes: [(ModbusPoint, [UInt16])](), forget: false))
    /// Values and error last handed to the node loop (line thread only).
    var sent: [String: Value] = [:]
    var sentError = ""
    var lastWords: [[UInt16]?]
    var scratch: [UInt16] = []
    var first = true
    var nextPoll = ContinuousClock.now
    /// Transactions done, read by `status`.
    let counter = NIOLockedValueBox(0)
    weak var device: Device?
    let loop: EventLoop
    let generation: Int

    enum Outcome { case ok, unitDown(String), lineDown(String) }

    init(settings: ModbusSettings, line: ModbusLine, device: Device, generation: Int) {
        self.settings = settings
        self.line = line
        reads = ModbusPlan.reads(settings.points)
        lastWords = Array(repeating: nil, count: reads.count)
        self.device = device
        loop = device.node.loop
        self.generation = generation
    }

    /// Takes this unit's turns on the line from now on.
    func join() {
        if !line.join(self) { down("\(line.client.endpoint): the line closed as the device opened; opening it again") }
    }

    func stop() { line.leave(self) }

    /// The node could not commit what it was handed: send everything again next poll.
    func forget() {
        queue.withLockedValue { $0.forget = true }
        line.poke()
    }

    func enqueue(_ point: ModbusPoint, _ words: [UInt16]) {
        queue.withLockedValue { $0.writes.append((point, words)) }
        line.poke()
    }

    func onLoop(_ body: @escaping @Sendable (Device) -> Void) {
        let gen = generation
        loop.execute { [weak self] in
            guard let device = self?.device, device.generation == gen else { return }
            body(device)
        }
    }

    func down(_ message: String) { onLoop { $0.failed(message) } }

    /// This unit's turn on the line: queued writes, then a poll if one is due
    /// (every poll_ms from the start of the last; a write makes one due at once).
    func turn(_ client: ModbusClient) -> Outcome {
        let (pending, forgetSent) = queue.withLockedValue { q in
            defer { q = (writes: [], forget: false) }
            return (q.writes, q.forget)
        }
        let start = ContinuousClock.now
        guard first || !pending.isEmpty || forgetSent || start >= nextPoll else { return .ok }
        nextPoll = start + .milliseconds(settings.pollMs)
        if forgetSent {
            sent = [:]
            lastWords = Array(repeating: nil, count: reads.count)
        }
        do { try client.address(unit: settings.unit, timeoutMs: settings.timeoutMs) } catch { return .lineDown("\(error)") }
        if first { onLoop { $0.drive(.linkUp) } }
        var errors: [String] = []
        var transactions = 0
        defer {
            let count = transactions
            counter.withLockedValue { $0 += count }
        }
        // One transaction: nil when it went through or only it failed (its
        // error joins `$error`); the outcome when the unit or the line is down.
        func transaction(_ body: () throws -> Void) -> Outcome? {
            do {
                try body()
                transactions += 1
            } catch let e as ModbusError {
                switch e.scope {
                case .transaction: errors.append(e.description)
                case .unit: return .unitDown(e.description)
                case .line: return .lineDown(e.description)
                }
            } catch {
                errors.append("\(error)")
            }
            return nil
        }
        for (point, words) in pending {
            if let down = transaction({ try client.write(point, words) }) { return down }
        }
        var changed: [(String, Value)] = []
        for (i, read) in reads.enumerated() {
            var ok = false
            if let down = transaction({ try client.read(read, into: &scratch); ok = true }) { return down }
            // Unchanged words: nothing to decode, nothing to say.
            guard ok, lastWords[i] != scratch else { continue }
            let words = scratch
            lastWords[i] = words
            for (point, value) in ModbusPlan.values(read, words) where sent[point.name] != value {
                sent[point.name] = value
                changed.append((point.name, value))
            }
        }
        // Only news crosses to the node loop: a steady device costs the loop nothing.
        let error = errors.joined(separator: "; ")
        if first || !changed.isEmpty || error != sentError {
            let firstPoll = first
            first = false
            sentError = error
            let news = changed
            onLoop { device in
                if !device.report(news) { self.forget() }
                device.setError(error)
                if firstPoll { device.drive(.caughtUp) }
            }
        }
        return .ok
    }
}

/// A bulk-endpoint firmware bridge link: a thread reads IN, another writes OUT.
final class USBWorker: @unchecked Sendable {
    let match: DeviceMatch
    let settings: USBSettings
    let open: BulkOpener
    let loop: EventLoop
    let onBytes: @Sendable ([UInt8]) -> Void
    let onClose: @Sendable (String) -> Void
    let pool = NIOThreadPool(numberOfThreads: 1)
    /// Bulk OUT transfers block (up to a second): never on the node loop.
    let writer = NIOThreadPool(numberOfThreads: 1)
    let state = NIOLockedValueBox<(stopping: Bool, link: (any BulkTransport)?)>((false, nil))

    init(match: DeviceMatch, settings: USBSettings, open: @escaping BulkOpener, loop: EventLoop,
         onBytes: @escaping @Sendable ([UInt8]) -> Void, onClose: @escaping @Sendable (String) -> Void) {
        self.match = match
        self.settings = settings
        self.open = open
        self.loop = loop
        self.onBytes = onBytes
        self.onClose = onClose
    }

    func start(_ opened: @escaping @Sendable (String?) -> Void) {
        pool.start()
        writer.start()
        pool.submit { [self] _ in
            let link: any BulkTransport
            do {
                link = try open(match, settings)
            } catch {
                loop.execute { opened("\(error)") }
                return
            }
            state.withLockedValue { $0.link = link }
            loop.execute { opened(nil) }
            while !state.withLockedValue({ $0.stopping }) {
                do {
                    let bytes = try link.read(timeoutMs: 100)
                    if !bytes.isEmpty { loop.execute { self.onBytes(bytes) } }
                } catch {
                    loop.execute { self.onClose("\(error)") }
                    return
                }
            }
        }
    }

    func send(_ bytes: [UInt8]) {
        guard let link = state.withLockedValue({ $0.link }) else { return }
        writer.submit { [self] _ in
            do { try link.write(bytes) } catch { loop.execute { self.onClose("\(error)") } }
        }
    }

    func stop() {
        state.withLockedValue { $0.stopping = true }
        let pool = self.pool, writer = self.writer
        DispatchlessThread.detach {
            try? pool.syncShutdownGracefully()
            try? writer.syncShutdownGracefully()
        }
    }
}

/// A detached POSIX thread for the rare job that must not block a loop.
enum DispatchlessThread {
    static func detach(_ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        pthread_create(&thread, nil, { arg in
            let box = Unmanaged<AnyObject>.fromOpaque(arg!).takeRetainedValue() as! Box
            box.body()
            return nil
        }, box)
        pthread_detach(thread)
    }
}
