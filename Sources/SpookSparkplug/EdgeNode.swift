#if canImport(Glibc)
import Glibc
#endif
import CMosquitto
import Logging
import NIOCore
import NIOPosix
import SpookCore
import SpookNode
import SpookStore
import SwiftProtobuf

/// The agent as a Sparkplug B edge node (docs/mqtt.md).
///
/// Everything here runs on the node loop but each connection's network thread,
/// whose callbacks only hop over. What is published comes from the store's
/// register history, read from a cursor that advances only when the broker
/// has acknowledged a DDATA (QoS 1): while the broker is away the history is
/// the buffer (held beyond its per-register bound up to `backlog_rows_max`),
/// and a new connection publishes NBIRTH and DBIRTHs, then every row since
/// the cursor flagged historical, then live changes.
package final class SparkplugEdgeNode: NodeService, @unchecked Sendable {
    let spec: MQTTSpec
    unowned let node: Node
    let logger: Logger
    let backoff: ReconnectBackoff

    /// The connection in use (nil between attempts), and its number: callbacks of older ones are ignored.
    var connection: MosquittoConnection?
    var generation = 0
    var attempt: UInt32 = 0
    var retry: Scheduled<Void>?
    var connackDeadline: Scheduled<Void>?
    var stopped = false
    /// Where a connection is closed (its network thread joined, bounded by
    /// `MosquittoConnection.closeFlushMs`): never on the node loop. Connecting
    /// happens on each connection's own network thread.
    let blocking = NIOThreadPool(numberOfThreads: 1)
    /// CONNACK received and NBIRTH published: DBIRTH, DDATA and DDEATH may follow.
    var born = false

    /// The bdSeq of the current connection (its NDEATH will and its NBIRTH).
    var bdSeq: UInt8 = 0
    /// The next message's seq (0 … 255, wrapping); NBIRTH resets it.
    var seq: UInt8 = 0
    /// Aliases, stable for the life of the process; never reused.
    var aliases: [QRegisterName: UInt64] = [:]
    var nextAlias = NodeMetricName.rebirthAlias + 1
    /// Each born device (by group): the datatype each metric was born with.
    var births: [QGroupName: [QRegisterName: SparkplugType]] = [:]
    /// The value each metric last carried in this session (births included):
    /// a write of the same value again is no change, and sends nothing.
    var lastSent: [QRegisterName: Value] = [:]

    /// History rows through this id are published, or need not be.
    var sentThrough: Int64 = 0
    /// ... and through this id the broker acknowledged them (the durable cursor).
    var ackedThrough: Int64 = 0
    /// Rows through this id are older than the last birth: published with `is_historical`.
    var historicalThrough: Int64 = 0
    /// DDATA sent and not yet acknowledged, oldest first, with the row each covers through (`mid` nil: nothing to wait for).
    var inflight: [(mid: Int32?, through: Int64, acked: Bool)] = []
    var trimmedReported = 0

    static let cursorKey = "mqtt"
    static let bdSeqKey = "mqtt bdseq"
    /// A command payload larger than this is refused unread.
    static let commandBytesMax = 65_536

    init(_ spec: MQTTSpec, node: Node) throws {
        self.spec = spec
        self.node = node
        self.logger = node.logger
        backoff = ReconnectBackoff(baseMs: spec.reconnectBaseMs, capMs: spec.reconnectCapMs)
        MosquittoConnection.initialiseLibrary()
        if let cursor = try node.store.cursor(SparkplugEdgeNode.cursorKey) {
            ackedThrough = cursor
        } else {
            // The first start: what came before is in the births; what comes
            // after is owed to the broker, even if this process dies before
            // it ever connects.
            ackedThrough = try node.store.historyHead()
            try node.store.setCursor(SparkplugEdgeNode.cursorKey, ackedThrough)
        }
        sentThrough = ackedThrough
        // The next connection's bdSeq follows the last one used, across restarts.
        bdSeq = UInt8(truncatingIfNeeded: (try node.store.cursor(SparkplugEdgeNode.bdSeqKey)).map { $0 + 1 } ?? 0)
        node.store.historyHold = (ackedThrough, spec.backlogRowsMax)
        blocking.start()
        report()
        connect()
    }

    /// Makes the service for `Node.makeMQTT` (node loop).
    package static func make(_ spec: MQTTSpec, _ node: Node) throws -> any NodeService {
        try SparkplugEdgeNode(spec, node: node)
    }

    func topic(_ kind: SparkplugTopic.Kind, device: String? = nil) -> String {
        SparkplugTopic(group: spec.groupID, kind: kind, node: spec.edgeNodeID, device: device).description
    }

    var nowMs: UInt64 { node.clock.nowMs() }

    // MARK: connection

    func connect() {
        guard !stopped else { return }
        generation += 1
        born = false
        do {
            try node.store.setCursor(SparkplugEdgeNode.bdSeqKey, Int64(bdSeq))
            let will = SparkplugPayload(timestampMs: nowMs, seq: nil, metrics: [SparkplugPayload.bdSeqMetric(bdSeq, timestampMs: nowMs)])
            let c = try MosquittoConnection(spec: spec, owner: self, generation: generation, will: (topic(.ndeath), will.bytes))
            connection = c
            logger.info("MQTT connecting", metadata: ["broker": "\(spec.host):\(spec.port)", "bdSeq": "\(bdSeq)"])
            try c.start()
            let gen = generation
            // Keepalive and a half: the broker's own deadline for a silent client.
            connackDeadline = node.loop.scheduleTask(in: .milliseconds(Int64(spec.keepaliveS) * 1_500)) { [self] in
                if gen == generation, !born { lost("no CONNACK within \(spec.keepaliveS * 3 / 2) s") }
            }
        } catch {
            lost("\(error)")
        }
    }

    /// The connection is gone (or never came): tear it down, forget what it
    /// had in flight (those rows are read again), retry after the backoff.
    func lost(_ why: String) {
        connackDeadline?.cancel()
        let wasBorn = born
        born = false
        if let old = connection { blocking.submit { _ in old.close() } }
        connection = nil
        inflight = []
        sentThrough = ackedThrough
        births = [:]
        bdSeq &+= 1
        report()
        guard !stopped else { return }
        node.metrics.mqttLost()
        let delay = backoff.delayMs(origin: node.origin, attempt: attempt)
        attempt += 1
        node.limitLog.warning("mqtt-lost", "MQTT connection \(wasBorn ? "lost" : "failed"): \(why); retrying in \(delay) ms", nowMs: nowMs)
        retry = node.loop.scheduleTask(in: .milliseconds(Int64(delay))) { [self] in connect() }
    }

    func connected(_ gen: Int, _ rc: Int32) {
        guard gen == generation, !stopped, let c = connection else { return }
        guard rc == 0 else {
            lost("the broker refused the connection: \(String(cString: mosquitto_connack_string(rc)))")
            return
        }
        connackDeadline?.cancel()
        attempt = 0
        c.subscribe(topic(.ncmd))
        c.subscribe(SparkplugTopic(group: spec.groupID, kind: .dcmd, node: spec.edgeNodeID, device: "+").description)
        logger.notice("MQTT connected", metadata: ["broker": "\(spec.host):\(spec.port)", "bdSeq": "\(bdSeq)"])
        birth()
    }

    /// The connection `gen` is gone. Both the disconnect callback and the
    /// network thread's end report a loss: the first one counts
    /// (`connection` is nil after it).
    func failed(_ gen: Int, _ why: String) {
        guard gen == generation, connection != nil, !stopped else { return }
        lost(why)
    }

    // MARK: births and deaths

    /// NBIRTH, a DBIRTH per online device, then the rows since the cursor as
    /// historical DDATA (Sparkplug 3.0 §5.6 for the order).
    func birth() {
        guard let c = connection else { return }
        seq = 0
        births = [:]
        lastSent = [:]
        let now = nowMs
        let rebirth = SparkplugMetric(name: NodeMetricName.rebirth, alias: NodeMetricName.rebirthAlias, type: .boolean, value: .bool(false), timestampMs: now)
        let nbirth = SparkplugPayload(timestampMs: now, seq: nextSeq(), metrics: [SparkplugPayload.bdSeqMetric(bdSeq, timestampMs: now), rebirth])
        guard c.publish(topic(.nbirth), nbirth.bytes, qos: 0) != nil else { return lost("NBIRTH not sent") }
        node.metrics.mqttPublished("NBIRTH")
        born = true
        for group in devices() where isOnline(group) { deviceBirth(group) }
        do { historicalThrough = try node.store.historyHead() } catch { storeFailed(error) }
        sentThrough = ackedThrough
        inflight = []
        report()
        pump()
    }

    /// The groups of the domain the node holds registers of (the Sparkplug devices).
    func devices() -> [QGroupName] {
        Set(node.store.state.registers.keys.lazy.filter { $0.group.domain == self.spec.domain }.map(\.group)).sorted()
    }

    /// Each group's `$online` name, built once (the forwarder asks for every row).
    var onlineNames: [QGroupName: QRegisterName] = [:]

    func isOnline(_ group: QGroupName) -> Bool {
        let name: QRegisterName
        if let known = onlineNames[group] {
            name = known
        } else {
            guard let built = try? QRegisterName(group: group, name: "$online") else { return true }  // "$online" is a valid name in any group
            onlineNames[group] = built
            name = built
        }
        if case .bool(false)? = node.store.state.registers[name]?.value { return false }
        return true
    }

    func alias(_ name: QRegisterName) -> UInt64 {
        if let a = aliases[name] { return a }
        aliases[name] = nextAlias
        nextAlias += 1
        return nextAlias - 1
    }

    /// The datatype a register is born with: its declared type, else its value's.
    func type(of name: QRegisterName, _ value: Value?) -> SparkplugType? {
        if let t = node.config.schema.spec(for: name).type { return SparkplugType(t) }
        guard let value, value.type != .null else { return nil }
        return SparkplugType(value.type)
    }

    /// DBIRTH with every register of the group and its current value.
    func deviceBirth(_ group: QGroupName) {
        guard born, let c = connection else { return }
        let now = nowMs
        var metrics: [SparkplugMetric] = []
        var types: [QRegisterName: SparkplugType] = [:]
        let registers = node.store.state.registers.filter { $0.key.group == group }.sorted { $0.key < $1.key }
        for (name, state) in registers {
            guard let t = type(of: name, state.value) else { continue }
            guard metrics.count < MQTTSpec.metricsPerDeviceMax else {
                node.metrics.internalError("mqtt-device-metrics")
                node.limitLog.warning("mqtt-metrics-max", "\(group) has more than \(MQTTSpec.metricsPerDeviceMax) registers: its DBIRTH carries the first \(MQTTSpec.metricsPerDeviceMax) (by name)", nowMs: now)
                break
            }
            let value = state.value.flatMap { SparkplugType($0.type) == t ? $0 : nil }
            metrics.append(SparkplugMetric(name: name.name, alias: alias(name), type: t, value: value, timestampMs: state.stamps.map(\.hlc.ms).max() ?? now))
            types[name] = t
            lastSent[name] = value ?? .null
        }
        let payload = SparkplugPayload(timestampMs: now, seq: nextSeq(), metrics: metrics)
        guard c.publish(topic(.dbirth, device: group.name), payload.bytes, qos: 0) != nil else { return lost("DBIRTH not sent") }
        node.metrics.mqttPublished("DBIRTH")
        births[group] = types
    }

    func deviceDeath(_ group: QGroupName) {
        guard born, let c = connection, births[group] != nil else { return }
        births[group] = nil
        let payload = SparkplugPayload(timestampMs: nowMs, seq: nextSeq(), metrics: [])
        guard c.publish(topic(.ddeath, device: group.name), payload.bytes, qos: 0) != nil else { return lost("DDEATH not sent") }
        node.metrics.mqttPublished("DDEATH")
    }

    func nextSeq() -> UInt8 {
        defer { seq &+= 1 }
        return seq
    }

    // MARK: forwarding the history

    /// Registers changed: forward them, or (unlinked) show the backlog growing.
    package func changed() {
        if born { pump() } else { report() }
    }

    /// Publishes history rows after `sentThrough` while the broker keeps up
    /// (at most `inflight_max` DDATA unacknowledged).
    func pump() {
        guard born, !stopped else { return }
        while born, inflight.count < spec.inflightMax {
            let rows: [(id: Int64, change: RegisterChange)]
            do { rows = try node.store.historyRows(after: sentThrough, limit: MQTTSpec.rowsPerStep) } catch { return storeFailed(error) }
            guard !rows.isEmpty else { break }
            var pending: (group: QGroupName, metrics: [SparkplugMetric])?
            func flush(through: Int64) {
                guard let p = pending, let c = connection else { return }
                pending = nil
                let payload = SparkplugPayload(timestampMs: nowMs, seq: nextSeq(), metrics: p.metrics)
                guard let mid = c.publish(topic(.ddata, device: p.group.name), payload.bytes, qos: 1) else { return lost("DDATA not sent") }
                node.metrics.mqttPublished("DDATA")
                inflight.append((mid, through, false))
            }
            for (id, change) in rows {
                let name = change.name, group = name.group
                defer { if born { sentThrough = id } }
                guard born, group.domain == spec.domain, change.entry.side != .desired else { continue }
                if pending?.group != group || (pending?.metrics.count ?? 0) >= MQTTSpec.metricsPerDeviceMax { flush(through: id - 1) }
                guard born else { break }
                if name.name == "$online" {
                    let online = change.entry.versioned.value != .bool(false)
                    // The row is history; act on the register's state now, so an old row never kills a live device.
                    if !online, !isOnline(group) { deviceDeath(group); continue }
                    if online, births[group] == nil, isOnline(group) { deviceBirth(group) }
                }
                guard isOnline(group) else { continue }
                let value = change.entry.versioned.value
                var t = births[group]?[name]
                if t == nil || (value.type != .null && SparkplugType(value.type) != t) {
                    // A register the device was not born with, or of another type now: born again.
                    deviceBirth(group)
                    t = births[group]?[name]
                }
                guard let t, born else { continue }
                // Report by exception: the same value written again is no change
                // (history since the cursor goes out whole: each row was a change then).
                let historical = id <= historicalThrough
                guard historical || lastSent[name] != value else { continue }
                lastSent[name] = value
                let metric = SparkplugMetric(
                    name: nil, alias: alias(name), type: t, value: SparkplugType(value.type) == t ? value : nil,
                    timestampMs: change.entry.versioned.stamp.hlc.ms, historical: historical)
                if pending == nil { pending = (group, []) }
                pending?.metrics.append(metric)
            }
            if born { flush(through: sentThrough) }
            if born, inflight.last.map({ $0.through < sentThrough }) ?? true {
                // Rows that needed no message: nothing to wait for.
                inflight.append((nil, sentThrough, true))
                advance()
            }
        }
        report()
    }

    func published(_ gen: Int, _ mid: Int32) {
        guard gen == generation, let i = inflight.firstIndex(where: { $0.mid == mid }) else { return }
        inflight[i].acked = true
        advance()
        pump()
    }

    /// Moves the durable cursor over the acknowledged prefix.
    func advance() {
        var through = ackedThrough
        while let first = inflight.first, first.acked {
            through = first.through
            inflight.removeFirst()
        }
        guard through > ackedThrough else { return }
        ackedThrough = through
        node.store.setCursorLazily(SparkplugEdgeNode.cursorKey, through)
        node.store.historyHold = (through, spec.backlogRowsMax)
    }

    func storeFailed(_ error: any Error) {
        node.metrics.internalError("mqtt-history")
        node.limitLog.warning("mqtt-store", "MQTT: the history cannot be read (\(error)); trying again at the next change", nowMs: nowMs)
    }

    /// The status gauges: connected, and the rows the broker has not acknowledged.
    func report() {
        let head: Int64
        do { head = try node.store.historyHead() } catch { return storeFailed(error) }
        node.metrics.mqttState(connected: born, backlogRows: max(0, head - ackedThrough))
        let overrun = node.store.historyHoldOverrun
        if overrun > trimmedReported {
            node.metrics.mqttTrimmed(overrun - trimmedReported)
            trimmedReported = overrun
        }
    }

    // MARK: commands

    func received(_ gen: Int, topic text: String, payload: [UInt8]?) {
        guard gen == generation, born else { return }
        guard let topic = SparkplugTopic(text), topic.group == spec.groupID, topic.node == spec.edgeNodeID,
              topic.kind == .ncmd || topic.kind == .dcmd
        else { return refuse("malformed", "MQTT: a message on \(text), which this edge node does not take") }
        guard let payload else { return refuse("malformed", "MQTT \(topic.kind.rawValue) on \(text): larger than \(SparkplugEdgeNode.commandBytesMax) bytes") }
        let message: SparkplugPayload
        do { message = try SparkplugPayload(serializedBytes: payload) } catch {
            return refuse("malformed", "MQTT \(topic.kind.rawValue) on \(text): not a Sparkplug B payload (\(error))")
        }
        if topic.kind == .ncmd { nodeCommand(message, text) } else { deviceCommand(message, device: topic.device ?? "", text) }
    }

    func nodeCommand(_ message: SparkplugPayload, _ text: String) {
        var rebirth = false
        for m in message.metrics {
            if (m.hasName && m.name == NodeMetricName.rebirth) || (!m.hasName && m.alias == NodeMetricName.rebirthAlias) {
                do {
                    if case .bool(true) = try m.commandValue(expected: .boolean) { rebirth = true }
                } catch {
                    refuse(error.reason, "MQTT NCMD on \(text): \(error)")
                }
            } else {
                refuse("unknown-metric", "MQTT NCMD on \(text): unknown metric \(m.hasName ? "\"\(m.name)\"" : "alias \(m.alias)"); the node takes \"\(NodeMetricName.rebirth)\"")
            }
        }
        if rebirth {
            logger.notice("MQTT rebirth requested by NCMD")
            birth()
        }
    }

    func deviceCommand(_ message: SparkplugPayload, device: String, _ text: String) {
        guard let group = try? QGroupName(domain: spec.domain, name: device), let types = births[group] else {
            return refuse("unknown-device", "MQTT DCMD on \(text): no device \"\(device)\" was born by this edge node")
        }
        var writes: [Write] = []
        for m in message.metrics {
            let name: QRegisterName?
            if m.hasName {
                name = try? QRegisterName(group: group, name: m.name)
            } else {
                name = aliases.first(where: { $0.value == m.alias && $0.key.group == group })?.key
            }
            let label = m.hasName ? "\"\(m.name)\"" : "alias \(m.alias)"
            guard let name, let type = types[name] else {
                refuse("unknown-metric", "MQTT DCMD on \(text): \(device) has no metric \(label)")
                continue
            }
            guard !name.isSystem, spec.write.contains(where: { $0.matches(group.domain) }) else {
                refuse("read-only", "MQTT DCMD on \(text): \(name) is read-only to commands (\(name.isSystem ? "a substrate register" : "[mqtt] write does not cover \(group.domain)"))")
                continue
            }
            do {
                let value = try m.commandValue(expected: type)
                writes.append(try node.api.applicationWrite(name, value))
            } catch let e as SparkplugRefusal {
                refuse(e.reason, "MQTT DCMD on \(text): \(e)")
            } catch {
                refuse("value", "MQTT DCMD on \(text): \(name): \(error)")
            }
        }
        guard !writes.isEmpty else { return }
        do {
            try node.api.enqueue(LocalWrite(group: group, writes: writes)) { [self] result in
                if case .failure(let e) = result { refuse("failed", "MQTT DCMD on \(text): not written: \(e)") }
            }
        } catch {
            refuse("busy", "MQTT DCMD on \(text): \(error)")
        }
    }

    func refuse(_ reason: String, _ message: String) {
        node.metrics.mqttRefused(reason)
        node.limitLog.warning("mqtt-refused-\(reason)", message, nowMs: nowMs)
    }

    // MARK: stop

    package func stop() {
        let c: MosquittoConnection? = try? node.loop.submit { [self] in
            stopped = true
            retry?.cancel()
            connackDeadline?.cancel()
            defer { connection = nil }
            guard born, let c = connection else { return connection }
            // A clean goodbye: the NDEATH the will would have sent.
            let now = nowMs
            let death = SparkplugPayload(timestampMs: now, seq: nil, metrics: [SparkplugPayload.bdSeqMetric(bdSeq, timestampMs: now)])
            _ = c.publish(topic(.ndeath), death.bytes, qos: 1)
            node.metrics.mqttPublished("NDEATH")
            return c
        }.wait()
        // Off the node loop, after any connect or close still queued: DISCONNECT
        // follows the NDEATH out, then the network thread ends.
        if let c { blocking.submit { _ in c.close() } }
        try? blocking.syncShutdownGracefully()
    }
}
