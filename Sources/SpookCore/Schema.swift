/// How a register collapses (SUBSTRATE.md §3).
public enum Policy: String, Sendable, Hashable, CaseIterable {
    /// Greatest stamp `(hlc, origin, seq)` wins. Accepts `set` writes.
    case lww
    /// Two sides: `reported` (written only by the device's owner, kind
    /// `report`) and `desired` (kind `desire`, `lww` among all writers).
    case device
}

/// What a register declares: its value type (nil: any) and its policy.
public struct RegisterSpec: Hashable, Sendable {
    public var type: ValueType?
    public var policy: Policy

    public init(type: ValueType? = nil, policy: Policy = .lww) {
        self.type = type
        self.policy = policy
    }

    public static let any = RegisterSpec()
}

/// Which registers a spec or an owner applies to: a domain pattern, and a
/// group and register name where `nil` means any.
public struct RegisterSelector: Hashable, Sendable {
    public var domain: QDomainPattern
    public var group: String?
    public var register: String?

    public init(domain: QDomainPattern, group: String? = nil, register: String? = nil) {
        self.domain = domain
        self.group = group
        self.register = register
    }

    public func matches(_ group: QGroupName, register: String?) -> Bool {
        guard domain.matches(group.domain) else { return false }
        if let g = self.group, g != group.name { return false }
        if let r = self.register, let name = register, r != name { return false }
        return true
    }
}

/// The declared types, policies and device owners. Pure data, usually built
/// from config; every replica that shares a group must share its schema, since
/// refusals (wrong type, wrong owner) are part of collapse. First match wins.
public struct Schema: Hashable, Sendable {
    public var registers: [(selector: RegisterSelector, spec: RegisterSpec)] {
        get { rules.map { ($0.selector, $0.spec) } }
        set { rules = newValue.map { Rule(selector: $0.selector, spec: $0.spec) } }
    }
    /// Device owners: the origin allowed to write `report` to a group's `device`
    /// registers. A group with no owner rule accepts reports from any origin.
    public var owners: [(selector: RegisterSelector, origin: Origin)] {
        get { ownerRules.map { ($0.selector, $0.origin) } }
        set { ownerRules = newValue.map { OwnerRule(selector: $0.selector, origin: $0.origin) } }
    }

    private struct Rule: Hashable, Sendable {
        var selector: RegisterSelector
        var spec: RegisterSpec
    }
    private struct OwnerRule: Hashable, Sendable {
        var selector: RegisterSelector
        var origin: Origin
    }
    private var rules: [Rule] = []
    private var ownerRules: [OwnerRule] = []

    public init(
        registers: [(selector: RegisterSelector, spec: RegisterSpec)] = [],
        owners: [(selector: RegisterSelector, origin: Origin)] = []
    ) {
        self.registers = registers
        self.owners = owners
    }

    /// The substrate's own registers have fixed specs.
    public static let systemSpecs: [String: RegisterSpec] = [
        "$online": RegisterSpec(type: .bool),
        "$state": RegisterSpec(type: .string),
        "$error": RegisterSpec(type: .string),
        "$lag": RegisterSpec(type: .int),
    ]

    public func spec(for register: QRegisterName) -> RegisterSpec {
        if register.isSystem { return Schema.systemSpecs[register.name] ?? .any }
        return rules.first { $0.selector.matches(register.group, register: register.name) }?.spec ?? .any
    }

    public func owner(of group: QGroupName) -> Origin? {
        ownerRules.first { $0.selector.matches(group, register: nil) }?.origin
    }

    /// Refuses a delta that breaks a declaration. Refusal is all-or-nothing
    /// (C2): one bad write refuses the whole delta, on every replica alike.
    public func check(_ delta: Delta) throws {
        for (write, name) in zip(delta.writes, delta.names) {
            let spec = spec(for: name)
            var at: String { "delta \(delta.origin)#\(delta.seq): register \(name)" }
            switch (spec.policy, write.kind) {
            case (.lww, .set), (.device, .report), (.device, .desire):
                break
            case (.lww, _):
                throw CoreError(.kindNotAllowed, "\(at) has policy lww and takes \"set\" writes, not \"\(write.kind)\"")
            case (.device, .set):
                throw CoreError(.kindNotAllowed, "\(at) has policy device and takes \"report\" or \"desire\" writes, not \"set\"")
            }
            if let type = spec.type, write.value.type != .null, write.value.type != type {
                throw CoreError(.typeMismatch, "\(at) is declared \(type), the write is \(write.value.type)")
            }
            if write.kind == .report, let owner = owner(of: delta.group), owner != delta.origin {
                throw CoreError(.notOwner, "\(at): only the owner \(owner) may write \"reported\", not \(delta.origin)")
            }
        }
    }

    public static func == (a: Schema, b: Schema) -> Bool { a.rules == b.rules && a.ownerRules == b.ownerRules }
    public func hash(into h: inout Hasher) {
        h.combine(rules)
        h.combine(ownerRules)
    }
}
