/// QN: the naming rules for QDomains, QGroups and QRegisters.
///
///     domain    site1.line3              labels [a-z0-9][a-z0-9-]{0,62}, joined by ".", ≤ 253 bytes
///     group     site1.line3/pump7        domain "/" [a-z0-9][a-z0-9_-]{0,62}
///     register  site1.line3/pump7/speed  group "/" [a-z0-9_.-]{1,63}, or "$" [a-z][a-z0-9_]{0,61}
///     pattern   site1.*                  domain labels, the last may be "*" (one or more labels)
///
/// Every parser throws `CoreError(.invalidName)` naming the rule that broke.
public enum QN {
    public static let labelLengthMax = 63
    public static let domainLengthMax = 253

    static func isLower(_ c: UInt8) -> Bool { c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z") }
    static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    static func describe(_ c: UInt8) -> String {
        c >= 0x21 && c < 0x7f ? "\"\(Character(Unicode.Scalar(c)))\"" : "byte 0x\([c].hex)"
    }

    static func checkLabel(_ label: Substring.UTF8View, in input: @autoclosure () -> String, what: String) throws {
        var text: String { String(Substring(label)) }
        guard !label.isEmpty else {
            throw CoreError(.invalidName, "\(what) \"\(input())\": empty label (two dots in a row, or a leading or trailing dot)")
        }
        guard label.count <= labelLengthMax else {
            throw CoreError(.invalidName, "\(what) \"\(input())\": label \"\(text)\" is \(label.count) bytes, the limit is \(labelLengthMax)")
        }
        for (i, c) in label.enumerated() {
            if isLower(c) || isDigit(c) { continue }
            if c == UInt8(ascii: "-") && i > 0 { continue }
            let rule = c == UInt8(ascii: "-")
                ? "a label starts with a-z or 0-9"
                : "labels use only a-z, 0-9 and \"-\""
            throw CoreError(.invalidName, "\(what) \"\(input())\": label \"\(text)\" has \(describe(c)) at offset \(i); \(rule)")
        }
    }

    /// - Parameter shown: the text quoted in messages, when it is not `text`
    ///   itself (a pattern shows its wildcard too).
    static func checkDomain(_ text: String, what: String = "domain", shown: String? = nil) throws {
        guard !text.isEmpty else { throw CoreError(.invalidName, "\(what) \"\(shown ?? text)\" is empty") }
        guard text.utf8.count <= domainLengthMax else {
            throw CoreError(.invalidName, "\(what) \"\(text.prefix(32))…\" is \(text.utf8.count) bytes, the limit is \(domainLengthMax)")
        }
        for label in text.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
            try checkLabel(Substring(label).utf8, in: shown ?? text, what: what)
        }
    }

    static func checkGroupLocal(_ name: Substring, in context: @autoclosure () -> String) throws {
        var input: String { context() }
        let utf8 = name.utf8
        guard !utf8.isEmpty else { throw CoreError(.invalidName, "group \"\(input)\": the group name after \"/\" is empty") }
        guard utf8.count <= labelLengthMax else {
            throw CoreError(.invalidName, "group \"\(input)\": group name is \(utf8.count) bytes, the limit is \(labelLengthMax)")
        }
        for (i, c) in utf8.enumerated() {
            if isLower(c) || isDigit(c) { continue }
            if (c == UInt8(ascii: "-") || c == UInt8(ascii: "_")) && i > 0 { continue }
            throw CoreError(.invalidName, "group \"\(input)\": \(describe(c)) at offset \(i) of \"\(name)\"; group names use a-z, 0-9, \"-\", \"_\" and start with a-z or 0-9")
        }
    }

    static func checkRegisterLocal(_ name: Substring, in context: @autoclosure () -> String) throws {
        var input: String { context() }
        let utf8 = name.utf8
        guard !utf8.isEmpty else { throw CoreError(.invalidName, "register \"\(input)\": the register name is empty") }
        guard utf8.count <= labelLengthMax else {
            throw CoreError(.invalidName, "register \"\(input)\": register name is \(utf8.count) bytes, the limit is \(labelLengthMax)")
        }
        if utf8.first == UInt8(ascii: "$") {
            for (i, c) in utf8.enumerated().dropFirst() {
                if isLower(c) || (i > 1 && (isDigit(c) || c == UInt8(ascii: "_"))) { continue }
                throw CoreError(.invalidName, "register \"\(input)\": \(describe(c)) at offset \(i) of system name \"\(name)\"; system names are \"$\" then a-z, then a-z, 0-9, \"_\"")
            }
            guard utf8.count > 1 else { throw CoreError(.invalidName, "register \"\(input)\": \"$\" alone is not a system name") }
            return
        }
        for (i, c) in utf8.enumerated() {
            if isLower(c) || isDigit(c) || c == UInt8(ascii: "_") || c == UInt8(ascii: ".") || c == UInt8(ascii: "-") { continue }
            throw CoreError(.invalidName, "register \"\(input)\": \(describe(c)) at offset \(i) of \"\(name)\"; register names use a-z, 0-9, \"_\", \".\", \"-\"")
        }
    }
}

/// A namespace: the unit of routing and access control, e.g. `site1.line3`.
public struct QDomain: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init(_ text: String) throws {
        try QN.checkDomain(text)
        rawValue = text
    }

    public var labels: [Substring] { rawValue.split(separator: ".") }
    public var description: String { rawValue }
    public static func < (a: QDomain, b: QDomain) -> Bool { Array(a.rawValue.utf8).lexicographicallyPrecedes(b.rawValue.utf8) }
}

/// `domain/group`: a set of registers that change atomically together.
public struct QGroupName: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let domain: QDomain
    public let name: String
    /// `domain/group`, built once: names are hashed and printed far more often than built.
    public let text: String

    public init(domain: QDomain, name: String) throws {
        try QN.checkGroupLocal(Substring(name), in: "\(domain)/\(name)")
        self.domain = domain
        self.name = name
        self.text = "\(domain)/\(name)"
    }

    /// Parses `domain/group`.
    public init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw CoreError(.invalidName, "group \"\(text)\": expected \"domain/group\" (one \"/\"), found \(parts.count - 1)")
        }
        do { domain = try QDomain(String(parts[0])) } catch let e as CoreError {
            throw CoreError(.invalidName, "group \"\(text)\": \(e.message)")
        }
        try QN.checkGroupLocal(parts[1], in: text)
        name = String(parts[1])
        self.text = text
    }

    public var description: String { text }
    public static func == (a: QGroupName, b: QGroupName) -> Bool { a.text == b.text }
    public func hash(into h: inout Hasher) { h.combine(text) }
    public static func < (a: QGroupName, b: QGroupName) -> Bool {
        a.text.utf8.lexicographicallyPrecedes(b.text.utf8)
    }

    /// The register `name` in this group.
    public func register(_ name: String) throws -> QRegisterName { try QRegisterName(group: self, name: name) }
}

/// `domain/group/register`.
public struct QRegisterName: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let group: QGroupName
    public let name: String
    /// `domain/group/register`, built once.
    public let text: String

    public init(group: QGroupName, name: String) throws {
        try QN.checkRegisterLocal(Substring(name), in: "\(group)/\(name)")
        self.group = group
        self.name = name
        self.text = "\(group.text)/\(name)"
    }

    /// Parses `domain/group/register`.
    public init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3 else {
            throw CoreError(.invalidName, "register \"\(text)\": expected \"domain/group/register\" (two \"/\"), found \(parts.count - 1)")
        }
        let g: QGroupName
        do { g = try QGroupName("\(parts[0])/\(parts[1])") } catch let e as CoreError {
            throw CoreError(.invalidName, "register \"\(text)\": \(e.message)")
        }
        try QN.checkRegisterLocal(parts[2], in: text)
        group = g
        name = String(parts[2])
        self.text = text
    }

    /// Names starting with `$` belong to the substrate (`$online`, `$state`, …).
    public var isSystem: Bool { name.utf8.first == UInt8(ascii: "$") }
    public var description: String { text }
    public static func == (a: QRegisterName, b: QRegisterName) -> Bool { a.text == b.text }
    public func hash(into h: inout Hasher) { h.combine(text) }
    public static func < (a: QRegisterName, b: QRegisterName) -> Bool {
        a.text.utf8.lexicographicallyPrecedes(b.text.utf8)
    }
}

/// A domain pattern: `site1.line3` (exactly), `site1.*` (any domain below
/// `site1`, one or more labels deeper, not `site1` itself) or `*` (every domain).
public struct QDomainPattern: Hashable, Sendable, CustomStringConvertible {
    public let prefix: [String]
    public let wildcard: Bool
    /// The prefix labels joined, for matching without splitting the domain.
    private let prefixText: String

    public init(_ text: String) throws {
        if text == "*" {
            prefix = []
            prefixText = ""
            wildcard = true
            return
        }
        var body = Substring(text)
        var wild = false
        if body.hasSuffix(".*") {
            body = body.dropLast(2)
            wild = true
        }
        if body.contains("*") {
            throw CoreError(.invalidPattern, "pattern \"\(text)\": \"*\" may only stand alone or as the last label (\"site1.*\")")
        }
        do { try QN.checkDomain(String(body), what: "pattern", shown: text) } catch let e as CoreError {
            throw CoreError(.invalidPattern, e.message)
        }
        prefix = body.split(separator: ".").map(String.init)
        prefixText = String(body)
        wildcard = wild
    }

    public func matches(_ domain: QDomain) -> Bool {
        if prefixText.isEmpty { return wildcard }
        let text = domain.rawValue.utf8
        if !wildcard { return text.elementsEqual(prefixText.utf8) }
        // "site1.*": "site1." then at least one more label.
        return text.count > prefixText.utf8.count + 1
            && text.starts(with: prefixText.utf8)
            && text[text.index(text.startIndex, offsetBy: prefixText.utf8.count)] == UInt8(ascii: ".")
    }

    public var description: String {
        if prefix.isEmpty { return "*" }
        return prefix.joined(separator: ".") + (wildcard ? ".*" : "")
    }
}
