#if canImport(Glibc)
import Glibc
#endif
import CModbus

/// A libmodbus connection. Every call blocks (libmodbus has no async API), so
/// it is used only from the device's own thread, never an event loop.
public final class ModbusClient: @unchecked Sendable {
    let ctx: OpaquePointer
    public let endpoint: String
    public private(set) var connected = false
    /// A serial line (RTU) may carry several units: a unit that does not answer
    /// is that unit's problem, not the line's.
    let serialLine: Bool
    var bits: [UInt8] = []

    public init(host: String, port: Int, unit: Int, timeoutMs: Int) throws {
        guard let ctx = modbus_new_tcp_pi(host, String(port)) else {
            throw DeviceError("modbus tcp://\(host):\(port): \(ModbusClient.lastError())")
        }
        self.ctx = ctx
        serialLine = false
        endpoint = "tcp://\(host):\(port)"
        try setup(unit: unit, timeoutMs: timeoutMs)
    }

    public init(rtu s: SerialSettings, unit: Int, timeoutMs: Int) throws {
        let parity: CChar = switch s.parity {
        case .none: CChar(UInt8(ascii: "N"))
        case .even: CChar(UInt8(ascii: "E"))
        case .odd: CChar(UInt8(ascii: "O"))
        }
        guard let ctx = modbus_new_rtu(s.port, Int32(s.baud), parity, Int32(s.dataBits), Int32(s.stopBits)) else {
            throw DeviceError("modbus rtu \(s.port): \(ModbusClient.lastError())")
        }
        self.ctx = ctx
        serialLine = true
        endpoint = "rtu://\(s.port)"
        try setup(unit: unit, timeoutMs: timeoutMs)
    }

    func setup(unit: Int, timeoutMs: Int) throws {
        try address(unit: unit, timeoutMs: timeoutMs)
        // Reconnecting is ours to schedule (with backoff), not libmodbus's.
        modbus_set_error_recovery(ctx, modbus_error_recovery_mode(rawValue: MODBUS_ERROR_RECOVERY_PROTOCOL.rawValue))
    }

    /// The unit (slave id) and response timeout of the requests that follow:
    /// on a multi-drop line, set before each unit's turn.
    public func address(unit: Int, timeoutMs: Int) throws {
        guard modbus_set_slave(ctx, Int32(unit)) == 0 else { throw DeviceError("\(endpoint): unit \(unit): \(ModbusClient.lastError())") }
        modbus_set_response_timeout(ctx, UInt32(timeoutMs / 1000), UInt32(timeoutMs % 1000) * 1000)
    }

    deinit {
        modbus_close(ctx)
        modbus_free(ctx)
    }

    public func connect() throws {
        guard !connected else { return }
        guard modbus_connect(ctx) == 0 else { throw DeviceError("\(endpoint): connect: \(ModbusClient.lastError())") }
        connected = true
        // Bytes left on the line (a reply that came after its timeout, a reply
        // from before a restart) would put every later read one reply behind.
        modbus_flush(ctx)
    }

    public func close() {
        modbus_close(ctx)
        connected = false
    }

    /// Reads one coalesced span. Bits come back as words of 0 or 1.
    public func read(_ r: ModbusRead) throws -> [UInt16] {
        var words = [UInt16](repeating: 0, count: r.count)
        try read(r, into: &words)
        return words
    }

    /// Reads one coalesced span into `words` (resized to the span), allocating
    /// nothing once `words` has the capacity: the polling loop's path.
    /// On a serial line only the master speaks first: bytes waiting before a
    /// request are a reply that came after its timeout (or from before a
    /// restart), and read now they would answer this request, and every
    /// later one would get its predecessor's reply. Drop them.
    func dropStaleReplies() {
        if serialLine { modbus_flush(ctx) }
    }

    public func read(_ r: ModbusRead, into words: inout [UInt16]) throws {
        if words.count != r.count { words = [UInt16](repeating: 0, count: r.count) }
        dropStaleReplies()
        let what = { "read \(r.table) \(r.address)…\(r.address + r.count - 1)" }
        switch r.table {
        case .holding, .input:
            let n = words.withUnsafeMutableBufferPointer { buffer in
                r.table == .holding
                    ? modbus_read_registers(ctx, Int32(r.address), Int32(r.count), buffer.baseAddress)
                    : modbus_read_input_registers(ctx, Int32(r.address), Int32(r.count), buffer.baseAddress)
            }
            try check(n, r.count, what())
        case .coil, .discrete:
            if bits.count < r.count { bits = [UInt8](repeating: 0, count: r.count) }
            let n = bits.withUnsafeMutableBufferPointer { buffer in
                r.table == .coil
                    ? modbus_read_bits(ctx, Int32(r.address), Int32(r.count), buffer.baseAddress)
                    : modbus_read_input_bits(ctx, Int32(r.address), Int32(r.count), buffer.baseAddress)
            }
            try check(n, r.count, what())
            for i in 0..<r.count { words[i] = UInt16(bits[i]) }
        }
    }

    /// Writes a point: one register or coil with the single-write functions
    /// (5, 6), two registers with write-multiple (16).
    public func write(_ p: ModbusPoint, _ words: [UInt16]) throws {
        dropStaleReplies()
        let n: Int32
        switch (p.table, words.count) {
        case (.coil, _): n = modbus_write_bit(ctx, Int32(p.address), Int32(words[0] != 0 ? 1 : 0))
        case (.holding, 1): n = modbus_write_register(ctx, Int32(p.address), words[0])
        case (.holding, _):
            var w = words
            n = modbus_write_registers(ctx, Int32(p.address), Int32(w.count), &w)
        default: throw DeviceError("\(endpoint): \(p.name) is in the \(p.table) table, which is read-only")
        }
        try check(n, p.table == .holding && words.count > 1 ? words.count : 1, "write \(p.name) at \(p.table) \(p.address)")
    }

    func check(_ n: Int32, _ expected: Int, _ what: String) throws {
        guard n == expected else {
            let code = errno
            let message = ModbusClient.lastError()
            // A lost connection means: reconnect. A timeout on a serial line means
            // that unit is away (the others on the line still answer). The rest
            // is one bad transaction.
            let scope: ModbusError.Scope = ModbusClient.keepsConnection(code) ? .transaction
                : serialLine && code == ETIMEDOUT ? .unit : .line
            if scope == .line {
                close()
            } else {
                // A garbled, mismatched or late answer: drop what is left of it on
                // the line, so the next request is answered by its own reply.
                modbus_flush(ctx)
            }
            throw ModbusError(what: "\(endpoint): \(what)", message: message, scope: scope)
        }
    }

    /// The device answered, or a line garbled one answer: a Modbus exception
    /// (illegal address, device failure…), a bad CRC, bad data or a reply from
    /// another unit. Anything else (connection lost, timeout) is the transport.
    static func keepsConnection(_ code: Int32) -> Bool {
        let base = Int32(MODBUS_ENOBASE)
        let exception = code > base && code < base + 12
        return exception || code == base + 12 || code == base + 13 || code == base + 17
    }

    static func lastError() -> String { String(cString: modbus_strerror(errno)) }
}

public struct ModbusError: Error, CustomStringConvertible, Sendable {
    /// What a failed request says about the device and the line.
    public enum Scope: Sendable {
        /// One bad transaction (an exception, a garbled answer): the device stays online.
        case transaction
        /// The unit did not answer in time: it is offline; a serial line stays open for the others.
        case unit
        /// The connection or the port failed: every unit on it is offline.
        case line
    }
    public let what: String
    public let message: String
    public let scope: Scope
    /// True when only this transaction failed.
    public var exception: Bool { scope == .transaction }
    public var description: String { "\(what): \(message)" }
}
