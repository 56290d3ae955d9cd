/// A value with the stamp of the write that put it there.
public struct Versioned: Hashable, Sendable, CustomStringConvertible {
    public let value: Value
    public let stamp: Stamp

    public init(_ value: Value, _ stamp: Stamp) {
        self.value = value
        self.stamp = stamp
    }

    /// True when `self` beats `other`: greater stamp; on an equal stamp (two
    /// different writes claiming one `(origin, seq)`, which only a faulty
    /// origin produces) the greater canonical value, so the choice is still
    /// the same everywhere.
    public func beats(_ other: Versioned) -> Bool {
        if stamp != other.stamp { return stamp > other.stamp }
        return Value.canonicalOrder(other.value, value)
    }

    public var description: String { "\(value) @\(stamp)" }

    func encode(into w: inout ByteWriter) {
        value.encode(into: &w)
        stamp.encode(into: &w)
    }

    static func decode(from r: inout ByteReader) throws -> Versioned {
        let v = try Value.decode(from: &r)
        return Versioned(v, try Stamp.decode(from: &r))
    }
}

/// The collapsed state of one register.
public enum RegisterState: Hashable, Sendable, CustomStringConvertible {
    case lww(Versioned)
    case device(reported: Versioned?, desired: Versioned?)

    /// The value an application reads: for a device register, what the device reported.
    public var value: Value? {
        switch self {
        case .lww(let v): v.value
        case .device(let reported, _): reported?.value
        }
    }

    /// Every stamp the state carries (one, or a device's two sides).
    public var stamps: [Stamp] {
        switch self {
        case .lww(let v): [v.stamp]
        case .device(let r, let d): [r?.stamp, d?.stamp].compactMap { $0 }
        }
    }

    /// The desired value the device must still be driven towards: desired is
    /// newer than reported and differs from it.
    public var pendingDesired: Versioned? {
        guard case .device(let reported, let desired?) = self else { return nil }
        guard let reported else { return desired }
        return desired.stamp > reported.stamp && desired.value != reported.value ? desired : nil
    }

    public var description: String {
        switch self {
        case .lww(let v): "\(v)"
        case .device(let r, let d): "reported=\(r.map(\.description) ?? "-") desired=\(d.map(\.description) ?? "-")"
        }
    }

    // 0x00 versioned                       lww
    // 0x01 u8 flags [versioned] [versioned] device; flag 1 = reported, 2 = desired
    public func encode(into w: inout ByteWriter) {
        switch self {
        case .lww(let v):
            w.write(UInt8(0))
            v.encode(into: &w)
        case .device(let r, let d):
            w.write(UInt8(1))
            w.write(UInt8((r == nil ? 0 : 1) | (d == nil ? 0 : 2)))
            r?.encode(into: &w)
            d?.encode(into: &w)
        }
    }

    public var encoded: [UInt8] {
        var w = ByteWriter(capacity: 40)
        encode(into: &w)
        return w.bytes
    }

    public static func decode(from r: inout ByteReader) throws -> RegisterState {
        switch try r.read(UInt8.self, "register state tag") {
        case 0:
            return .lww(try Versioned.decode(from: &r))
        case 1:
            let flags = try r.read(UInt8.self, "device flags")
            guard flags & ~3 == 0 else { throw CoreError(.malformed, "device register flags 0x\([flags].hex) has unknown bits") }
            let reported = flags & 1 != 0 ? try Versioned.decode(from: &r) : nil
            let desired = flags & 2 != 0 ? try Versioned.decode(from: &r) : nil
            return .device(reported: reported, desired: desired)
        case let tag:
            throw CoreError(.malformed, "unknown register state tag 0x\([tag].hex)")
        }
    }

    public static func decode(_ bytes: [UInt8]) throws -> RegisterState {
        var r = ByteReader(bytes)
        let s = try decode(from: &r)
        try r.expectEnd("register state")
        return s
    }
}

/// The per-register merge rule. `QSCS` is the substrate's; the protocol exists
/// so the simulation can prove it catches a broken rule (the canary).
public protocol CollapseRule: Sendable {
    /// The register's new state after one accepted write, or nil if unchanged.
    func merge(_ current: RegisterState?, write: Write, stamp: Stamp, policy: Policy) -> RegisterState?
    /// The register's new state after merging a snapshot's state for it, or nil if unchanged.
    func merge(_ current: RegisterState?, snapshot: RegisterState) -> RegisterState?
}

/// The collapse semantics of SUBSTRATE.md §3: `lww` and `device`.
public struct QSCS: CollapseRule {
    public init() {}

    static func newer(_ current: Versioned?, _ incoming: Versioned?) -> Versioned? {
        guard let incoming else { return current }
        guard let current else { return incoming }
        return incoming.beats(current) ? incoming : current
    }

    public func merge(_ current: RegisterState?, write: Write, stamp: Stamp, policy: Policy) -> RegisterState? {
        let incoming = Versioned(write.value, stamp)
        let next: RegisterState
        switch (current, write.kind) {
        case (nil, .set):
            next = .lww(incoming)
        case (nil, .report):
            next = .device(reported: incoming, desired: nil)
        case (nil, .desire):
            next = .device(reported: nil, desired: incoming)
        case (.lww(let v)?, .set):
            next = .lww(QSCS.newer(v, incoming)!)
        case (.device(let r, let d)?, .report):
            next = .device(reported: QSCS.newer(r, incoming), desired: d)
        case (.device(let r, let d)?, .desire):
            next = .device(reported: r, desired: QSCS.newer(d, incoming))
        case (.lww?, _), (.device?, .set):
            // A register whose policy changed under existing state: the schema
            // check refuses such writes before they reach the rule.
            return nil
        }
        return next == current ? nil : next
    }

    public func merge(_ current: RegisterState?, snapshot: RegisterState) -> RegisterState? {
        let next: RegisterState
        switch (current, snapshot) {
        case (nil, _):
            next = snapshot
        case (.lww(let a)?, .lww(let b)):
            next = .lww(QSCS.newer(a, b)!)
        case (.device(let r1, let d1)?, .device(let r2, let d2)):
            next = .device(reported: QSCS.newer(r1, r2), desired: QSCS.newer(d1, d2))
        default:
            return nil
        }
        return next == current ? nil : next
    }
}

/// Register state as a pure function of a set of deltas (C1), each applied
/// all-or-nothing (C2), never moving a register to a smaller stamp (C3).
/// Has no notion of order or of which deltas it has seen: idempotence comes
/// from the rule, contiguity from the replica's vector.
public struct CollapseState: Sendable {
    public let schema: Schema
    public let rule: any CollapseRule
    public private(set) var registers: [QRegisterName: RegisterState]

    public init(schema: Schema = Schema(), rule: any CollapseRule = QSCS(), registers: [QRegisterName: RegisterState] = [:]) {
        self.schema = schema
        self.rule = rule
        self.registers = registers
    }

    /// One register's change: its name and the state it had before.
    public struct Change: Sendable {
        public let name: QRegisterName
        public let previous: RegisterState?
    }

    /// Applies one delta; returns the registers whose state changed (with
    /// their previous state), or throws the refusal and changes nothing.
    @discardableResult
    public mutating func apply(_ delta: Delta) throws -> [Change] {
        var changed = [Change]()
        try apply(delta) { name, previous, _ in changed.append(Change(name: name, previous: previous)) }
        return changed
    }

    /// Applies one delta, calling `changed` with each register whose state
    /// changed (its name, previous and new state) as it changes; throws the
    /// refusal and changes nothing. A store applies tens of thousands of
    /// deltas a commit: no array per delta.
    public mutating func apply(_ delta: Delta, changed: (QRegisterName, RegisterState?, RegisterState) -> Void) throws {
        try schema.check(delta)
        let stamp = delta.stamp
        for (write, name) in zip(delta.writes, delta.names) {
            let policy = schema.spec(for: name).policy
            let current = registers[name]
            if let next = rule.merge(current, write: write, stamp: stamp, policy: policy) {
                registers[name] = next
                changed(name, current, next)
            }
        }
    }

    /// Sets registers back to the states they had (`nil`: the register did
    /// not exist): the undo of `apply` calls whose changes a store could not
    /// make durable. O(registers given), not O(state).
    public mutating func restore(_ previous: [QRegisterName: RegisterState?]) {
        for (name, state) in previous { registers[name] = state }
    }

    /// Merges a snapshot (another replica's collapsed registers); returns what changed.
    @discardableResult
    public mutating func merge(snapshot: [QRegisterName: RegisterState]) -> [QRegisterName] {
        var changed = [QRegisterName]()
        for name in snapshot.keys.sorted() {
            if let next = rule.merge(registers[name], snapshot: snapshot[name]!) {
                registers[name] = next
                changed.append(name)
            }
        }
        return changed
    }

    /// The canonical bytes of the whole state: u32 count, then per register in
    /// ascending byte order of its name: u16 length, name, state. Two replicas
    /// converged iff these bytes are equal.
    public func canonicalBytes() -> [UInt8] {
        CollapseState.canonicalBytes(registers)
    }

    public static func canonicalBytes(_ registers: [QRegisterName: RegisterState]) -> [UInt8] {
        var w = ByteWriter(capacity: 64 * registers.count + 4)
        w.write(UInt32(registers.count))
        for name in registers.keys.sorted() {
            let text = name.description.utf8
            w.write(UInt16(text.count))
            w.write(contentsOf: text)
            registers[name]!.encode(into: &w)
        }
        return w.bytes
    }
}
