#if canImport(Glibc)
import Glibc
#endif
import CModbus
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SpookCore
import SpookDevices
import SpookStore

/// One `[[modbus_server]]`: registers the node holds, served to SCADA as
/// Modbus TCP coils, discrete inputs, input and holding registers.
public struct ModbusServerSpec: Sendable {
    public var host: String
    public var port: Int
    /// Only requests to this unit id are answered (nil: any).
    public var unit: Int?
    public var clientsMax: Int
    /// Domains a client may write (desired values of device registers, values of others).
    public var write: [QDomainPattern]
    /// Each mapped point; its `name` is the register's full name.
    public var points: [ModbusPoint]
    public var registers: [QRegisterName]
    /// Where the table sits in the config, for messages.
    public var path: String
}

extension ConfigReader {
    /// `[[modbus_server]]` tables (docs/modbus-server.md).
    func modbusServers(_ doc: Table, schema: Schema) -> [ModbusServerSpec] {
        var out: [ModbusServerSpec] = []
        var listens: [String: String] = [:]
        for t in doc.tables("modbus_server") {
            t.rejectUnknownKeys(["listen", "unit", "clients_max", "write", "register"])
            var spec = ModbusServerSpec(host: "127.0.0.1", port: 502, unit: nil, clientsMax: 16, write: [], points: [], registers: [], path: t.path)
            if let (host, port) = hostPort(t, "listen", example: "127.0.0.1:5020") {
                (spec.host, spec.port) = (host, port)
                if let other = listens["\(host):\(port)"] { fail(t.key("listen"), "\"listen\" = \"\(host):\(port)\" is also [\(other)]'s") }
                listens["\(host):\(port)"] = t.path
            }
            spec.unit = t.int("unit", in: 0...247)
            spec.clientsMax = t.int("clients_max", in: 1...1000) ?? 16
            for p in t.strings("write") ?? [] {
                do { spec.write.append(try QDomainPattern(p)) } catch { fail(t.key("write"), "\"write\": \(p): \(error)") }
            }
            // Per table, which point holds each address: overlaps are refused.
            var taken: [ModbusPoint.Table: [Int: String]] = [:]
            for r in t.tables("register") {
                let text = r.string("name", required: true) ?? ""
                var name: QRegisterName?
                if !text.isEmpty {
                    do { name = try QRegisterName(text) } catch { fail(r.key("name"), "\"name\" = \"\(text)\": \(error)") }
                }
                guard let point = modbusPoint(r, name: text), let name else { continue }
                if name.isSystem, point.writable { fail(r.key("access"), "\(name): registers starting with $ belong to the substrate; map them with access \"r\"") }
                if let type = schema.spec(for: name).type, type == .string || type == .bytes {
                    fail(r.key("name"), "\(name) is declared \(type.rawValue) in [[register]]; only bool, int and float registers map to Modbus")
                }
                if point.writable && !spec.write.contains(where: { $0.matches(name.group.domain) }) {
                    fail(r.key("access"), "\(name) is mapped \"rw\", but [\(t.path)] \"write\" does not cover \(name.group.domain); add it there or map it \"r\"")
                }
                for a in point.address..<(point.address + point.width) {
                    if let other = taken[point.table]?[a] {
                        fail(r.key("address"), "\(name) at \(point.table) \(a) overlaps \(other)")
                        break
                    }
                    taken[point.table, default: [:]][a] = text
                }
                spec.points.append(point)
                spec.registers.append(name)
            }
            if spec.points.isEmpty { fail(t.path, "[\(t.path)] maps no registers: add [[modbus_server.register]] tables") }
            out.append(spec)
        }
        return out
    }
}

/// The Modbus TCP server façade: libmodbus on a thread of its own (never
/// the node loop). Reads answer from a mapping the node loop keeps current
/// as registers change; writes become local writes, committed before the
/// reply, so a SCADA write is acknowledged only once it is durable.
final class ModbusServer: @unchecked Sendable {
    let spec: ModbusServerSpec
    unowned let node: Node
    let ctx: OpaquePointer
    let mapping: UnsafeMutablePointer<modbus_mapping_t>
    /// The first address of each table in `mapping`.
    let firstAddress: [ModbusPoint.Table: Int]
    /// Point index and word offset for every mapped address, per table.
    let index: [ModbusPoint.Table: [Int: (point: Int, offset: Int)]]
    /// Guards `mapping` (the node loop writes it, the server thread reads it).
    let lock = NIOLock()
    let thread = NIOThreadPool(numberOfThreads: 1)
    let stopping = NIOLockedValueBox(false)
    var listenFD: Int32 = -1

    /// Why a request was refused: a fixed set, the label of `spook_modbus_server_refused_total`.
    enum Refusal: String, CaseIterable {
        case unmapped, readOnly = "read-only", value, function, unit, busy, failed, clients, malformed
        /// The Modbus exception code the client gets.
        var exception: UInt32 {
            switch self {
            case .function, .readOnly: 1  // ILLEGAL FUNCTION: not a function this address supports
            case .unmapped: 2  // ILLEGAL DATA ADDRESS
            case .value: 3  // ILLEGAL DATA VALUE
            case .failed, .clients, .malformed: 4  // SERVER DEVICE FAILURE (clients and malformed close instead)
            case .busy: 6  // SERVER DEVICE BUSY
            case .unit: 11  // GATEWAY TARGET DEVICE FAILED TO RESPOND
            }
        }
    }

    init(_ spec: ModbusServerSpec, node: Node) throws {
        self.spec = spec
        self.node = node
        guard let ctx = modbus_new_tcp_pi(spec.host, String(spec.port)) else {
            throw APIError("[\(spec.path)] \(spec.host):\(spec.port): \(String(cString: modbus_strerror(errno)))")
        }
        self.ctx = ctx
        var start: [ModbusPoint.Table: Int] = [:], end: [ModbusPoint.Table: Int] = [:]
        var index: [ModbusPoint.Table: [Int: (point: Int, offset: Int)]] = [:]
        for (i, p) in spec.points.enumerated() {
            start[p.table] = min(start[p.table] ?? p.address, p.address)
            end[p.table] = max(end[p.table] ?? 0, p.address + p.width)
            for k in 0..<p.width { index[p.table, default: [:]][p.address + k] = (i, k) }
        }
        self.firstAddress = start
        self.index = index
        func range(_ t: ModbusPoint.Table) -> (UInt32, UInt32) {
            guard let s = start[t], let e = end[t] else { return (0, 0) }
            return (UInt32(s), UInt32(e - s))
        }
        let (cs, cn) = range(.coil), (ds, dn) = range(.discrete), (hs, hn) = range(.holding), (ins, inn) = range(.input)
        guard let mapping = modbus_mapping_new_start_address(cs, cn, ds, dn, hs, hn, ins, inn) else {
            modbus_free(ctx)
            throw APIError("[\(spec.path)]: cannot allocate the Modbus mapping")
        }
        self.mapping = mapping
    }

    deinit {
        modbus_mapping_free(mapping)
        modbus_free(ctx)
    }

    var logger: Logger { node.logger }

    /// Listens (errors here stop the node's start), then serves on its thread.
    func start() throws {
        listenFD = modbus_tcp_pi_listen(ctx, Int32(spec.clientsMax))
        guard listenFD >= 0 else {
            throw APIError("[\(spec.path)] listen on \(spec.host):\(spec.port): \(String(cString: modbus_strerror(errno)))")
        }
        changed(nil)
        thread.start()
        thread.submit { [self] state in
            guard state == .active else { return }
            serve()
        }
        logger.info("modbus server", metadata: ["listen": "\(spec.host):\(spec.port)", "registers": "\(spec.points.count)"])
    }

    func stop() {
        stopping.withLockedValue { $0 = true }
        try? thread.syncShutdownGracefully()
        if listenFD >= 0 { close(listenFD) }
    }

    // MARK: node loop side

    /// Puts the current values of `names` (nil: all) into the mapping. Node loop.
    func changed(_ names: Set<QRegisterName>?) {
        let registers = node.store.state.registers
        lock.withLock {
            for (i, name) in spec.registers.enumerated() where names?.contains(name) ?? true {
                let p = spec.points[i]
                guard let value = registers[name]?.value else { continue }
                // A bool register in a register table reads as 1 or 0.
                let numeric: Value = if case .bool(let b) = value, !p.table.isBits { .int(b ? 1 : 0) } else { value }
                guard let words = p.encode(numeric) else {
                    node.limitLog.warning("modbus-server-encode", "[\(spec.path)] \(name) = \(value) does not fit \(p.type) (scale \(p.scale)); Modbus clients read its last value",
                                          nowMs: node.clock.nowMs())
                    continue
                }
                let first = p.address - (firstAddress[p.table] ?? 0)
                for (k, w) in words.enumerated() {
                    switch p.table {
                    case .coil: mapping.pointee.tab_bits[first + k] = w != 0 ? 1 : 0
                    case .discrete: mapping.pointee.tab_input_bits[first + k] = w != 0 ? 1 : 0
                    case .holding: mapping.pointee.tab_registers[first + k] = w
                    case .input: mapping.pointee.tab_input_registers[first + k] = w
                    }
                }
            }
        }
    }

    // MARK: server thread

    /// A client's connection and the bytes of the request it is sending.
    struct Connection {
        let fd: Int32
        var buffer: [UInt8] = []
        /// When the request in `buffer` began (ms), nil between requests.
        var startedMs: UInt64?
    }

    /// Once its first byte arrived, a request must be whole within this.
    static let requestDeadlineMs: UInt64 = 2_000

    /// Every client is read without blocking and framed here (MBAP header,
    /// then as many bytes as it announces), so a client that trickles its
    /// bytes, or stops halfway, never holds the others up.
    func serve() {
        var clients: [Connection] = []
        defer { for c in clients { close(c.fd) } }
        func drop(_ i: Int, _ why: Refusal?, _ message: String = "") {
            if let why { refused(why, message) }
            close(clients[i].fd)
            clients.remove(at: i)
        }
        while !stopping.withLockedValue({ $0 }) {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)] + clients.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), 200)
            let now = node.clock.nowMs()
            if ready > 0, fds[0].revents & Int16(POLLIN) != 0 {
                var server = listenFD
                let fd = modbus_tcp_pi_accept(ctx, &server)
                if fd >= 0 {
                    if clients.count >= spec.clientsMax {
                        close(fd)
                        refused(.clients, "a client over clients_max (\(spec.clientsMax)) was closed")
                    } else {
                        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                        clients.append(Connection(fd: fd))
                    }
                }
            }
            // Newest first, so removing one leaves the indices still to visit intact.
            for i in clients.indices.reversed() {
                let revents = i + 1 < fds.count && fds[i + 1].fd == clients[i].fd ? fds[i + 1].revents : 0
                if revents != 0 {
                    var chunk = [UInt8](repeating: 0, count: Int(MODBUS_TCP_MAX_ADU_LENGTH))
                    let n = recv(clients[i].fd, &chunk, chunk.count, 0)
                    if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
                        drop(i, nil)  // closed by the client
                        continue
                    }
                    if n > 0 {
                        if clients[i].startedMs == nil { clients[i].startedMs = now }
                        clients[i].buffer += chunk[..<n]
                    }
                }
                // Whole requests: a 7-byte MBAP header (transaction, protocol 0, length, unit), then length - 1 bytes.
                while clients[i].buffer.count >= 7 {
                    let buffer = clients[i].buffer
                    let protocolID = ModbusServer.u16(buffer, 2), length = ModbusServer.u16(buffer, 4)
                    guard protocolID == 0, length >= 2, length <= Int(MODBUS_TCP_MAX_ADU_LENGTH) - 6 else {
                        drop(i, .malformed, "a request with protocol id \(protocolID) and length \(length): not Modbus TCP; connection closed")
                        break
                    }
                    guard buffer.count >= 6 + length else { break }
                    let query = Array(buffer[..<(6 + length)])
                    clients[i].buffer.removeFirst(6 + length)
                    clients[i].startedMs = clients[i].buffer.isEmpty ? nil : now
                    modbus_set_socket(ctx, clients[i].fd)
                    handle(query, length: Int32(query.count))
                }
                if i < clients.count, let started = clients[i].startedMs, now > started + ModbusServer.requestDeadlineMs {
                    drop(i, .malformed, "a request not whole \(ModbusServer.requestDeadlineMs) ms after its first byte; connection closed")
                }
            }
        }
    }

    func refused(_ why: Refusal, _ message: String) {
        node.metrics.modbusServerRefused(why.rawValue)
        node.limitLog.warning("modbus-server-\(why.rawValue)", "[\(spec.path)] refused: \(message)", nowMs: node.clock.nowMs())
    }

    func reply(exception why: Refusal, _ query: [UInt8], _ message: String) {
        refused(why, message)
        _ = modbus_reply_exception(ctx, query, why.exception)
    }

    static func u16(_ q: [UInt8], _ at: Int) -> Int { Int(q[at]) << 8 | Int(q[at + 1]) }

    /// One request (`query` holds the whole ADU).
    func handle(_ query: [UInt8], length: Int32) {
        let h = Int(modbus_get_header_length(ctx))
        let unit = Int(query[h - 1]), function = query[h]
        if let only = spec.unit, unit != only {
            return reply(exception: .unit, query, "a request to unit \(unit); this server answers unit \(only)")
        }
        let address = ModbusServer.u16(query, h + 1)
        switch function {
        case 0x01, 0x02, 0x03, 0x04:
            let table: ModbusPoint.Table = [0x01: .coil, 0x02: .discrete, 0x03: .holding, 0x04: .input][function]!
            let count = ModbusServer.u16(query, h + 3)
            guard count >= 1, count <= (table.isBits ? 2000 : 125) else {
                return reply(exception: .value, query, "read of \(count) \(table) addresses")
            }
            if let gap = (address..<(address + count)).first(where: { index[table]?[$0] == nil }) {
                return reply(exception: .unmapped, query, "\(table) \(gap) is not mapped")
            }
            lock.withLock { _ = modbus_reply(ctx, query, length, mapping) }
        case 0x05, 0x06, 0x0F, 0x10:
            write(function, address: address, query, length: length, header: h)
        default:
            reply(exception: .function, query, "function \(function) is not served (1-6, 15, 16 are)")
        }
    }

    /// Single and multiple coil and register writes: every point they touch
    /// must be mapped "rw" and written whole; the values become one local
    /// write, committed before the client gets its answer.
    func write(_ function: UInt8, address: Int, _ query: [UInt8], length: Int32, header h: Int) {
        let table: ModbusPoint.Table = function == 0x05 || function == 0x0F ? .coil : .holding
        var words: [UInt16] = []
        switch function {
        case 0x05:
            let v = ModbusServer.u16(query, h + 3)
            guard v == 0xFF00 || v == 0 else { return reply(exception: .value, query, "coil \(address) written with 0x\(String(v, radix: 16)) (0xFF00 or 0)") }
            words = [v == 0xFF00 ? 1 : 0]
        case 0x06:
            words = [UInt16(ModbusServer.u16(query, h + 3))]
        case 0x0F:
            let count = ModbusServer.u16(query, h + 3), bytes = Int(query[h + 5])
            guard count >= 1, count <= 1968, bytes == (count + 7) / 8, h + 6 + bytes <= Int(length) else {
                return reply(exception: .value, query, "a coil write whose count and byte count disagree")
            }
            words = (0..<count).map { UInt16(query[h + 6 + $0 / 8] >> ($0 % 8) & 1) }
        default:
            let count = ModbusServer.u16(query, h + 3), bytes = Int(query[h + 5])
            guard count >= 1, count <= 123, bytes == count * 2, h + 6 + bytes <= Int(length) else {
                return reply(exception: .value, query, "a register write whose count and byte count disagree")
            }
            words = (0..<count).map { UInt16(ModbusServer.u16(query, h + 6 + 2 * $0)) }
        }
        // The points touched, each written whole.
        var touched: [Int: [UInt16]] = [:]
        for (k, w) in words.enumerated() {
            guard let (point, offset) = index[table]?[address + k] else {
                return reply(exception: .unmapped, query, "\(table) \(address + k) is not mapped")
            }
            let p = spec.points[point]
            guard p.writable else { return reply(exception: .readOnly, query, "\(spec.registers[point]) is mapped read-only") }
            touched[point, default: [UInt16](repeating: 0, count: p.width)][offset] = w
        }
        for (point, _) in touched {
            let p = spec.points[point]
            let covered = (p.address..<(p.address + p.width)).allSatisfy { $0 >= address && $0 < address + words.count }
            guard covered else { return reply(exception: .unmapped, query, "\(spec.registers[point]) is \(p.width) registers wide; write all of them at once") }
        }
        // Values, checked against the schema, then one durable local write.
        var writes: [(QRegisterName, Write)] = []
        for (point, w) in touched.sorted(by: { $0.key < $1.key }) {
            let name = spec.registers[point]
            let raw = spec.points[point].decode(w[...])
            let declared = node.config.schema.spec(for: name).type
            guard let value = ModbusServer.typed(raw, declared) else {
                return reply(exception: .value, query, "\(name) is declared \(declared?.rawValue ?? "-"); \(raw) is not one")
            }
            do { writes.append((name, try node.api.applicationWrite(name, value))) } catch {
                return reply(exception: .value, query, "\(name) = \(value): \(error)")
            }
        }
        switch commit(writes) {
        case .success:
            lock.withLock { _ = modbus_reply(ctx, query, length, mapping) }
            // The reply echoed the written words into the mapping; reads show the
            // collapsed value (a device register's reported one) again.
            let names = Set(writes.map(\.0))
            node.loop.execute { self.changed(names) }
        case .failure(let e):
            reply(exception: e.code == "busy" ? .busy : .failed, query, "\(writes.map { "\($0.0)" }.joined(separator: ", ")): \(e.description)")
        }
    }

    /// A decoded Modbus value as the register's declared type: a bool from
    /// 0 or 1, an int from a whole float (a scaled or f32 point), a float
    /// from an int; nil when it is not one (5 for a bool, 2.5 for an int).
    static func typed(_ raw: Value, _ type: ValueType?) -> Value? {
        switch (type, raw) {
        case (nil, _), (.bool?, .bool), (.int?, .int), (.float?, .float): raw
        case (.bool?, .int(let i)) where i == 0 || i == 1: .bool(i == 1)
        case (.int?, .bool(let b)): .int(b ? 1 : 0)
        case (.int?, .float(let d)) where d == d.rounded() && abs(d) < 9.2e18: .int(Int64(d))
        case (.float?, .int(let i)): .float(Double(i))
        case (.float?, .bool(let b)): .float(b ? 1 : 0)
        default: nil
        }
    }

    /// Commits on the node loop and waits for the result (this thread only).
    func commit(_ writes: [(QRegisterName, Write)]) -> Result<Void, APIError> {
        let node = self.node
        let groups = Dictionary(grouping: writes, by: { $0.0.group })
        let future: EventLoopFuture<Void> = node.loop.flatSubmit {
            let promise = node.loop.makePromise(of: Void.self)
            var left = groups.count
            var firstError: Error?
            for (group, ws) in groups {
                let write = LocalWrite(group: group, writes: ws.map(\.1))
                do {
                    try node.api.enqueue(write) { result in
                        if case .failure(let e) = result { firstError = firstError ?? APIError(e.message) }
                        left -= 1
                        if left == 0 { if let firstError { promise.fail(firstError) } else { promise.succeed() } }
                    }
                } catch {
                    firstError = firstError ?? error  // an APIError: busy
                    left -= 1
                    if left == 0 { promise.fail(firstError!) }
                }
            }
            return promise.futureResult
        }
        do {
            try future.wait()
            return .success(())
        } catch let e as APIError {
            return .failure(e)
        } catch {
            return .failure(APIError("\(error)"))
        }
    }
}
