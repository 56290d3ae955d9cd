/// A strict TOML 1.0 reader for the part of TOML the configs use: tables,
/// arrays of tables, dotted and quoted keys, inline tables, strings (basic,
/// literal, multi-line), integers (decimal, hex, octal, binary), floats
/// (with `inf` and `nan`), booleans, arrays and comments. Dates and times
/// are refused with a message saying so.
///
/// It is ours, rather than a general TOML library, because a library pulled
/// Foundation, ICU and libstdc++ into a 30 MiB agent (docs/benchmarks.md);
/// this one needs only the standard library. It also records where every
/// key and table header stands, so a semantic error found later is reported
/// at its own line and column.

/// One TOML value.
public enum TOMLValue {
    case string(String)
    case integer(Int)
    case float(Double)
    case boolean(Bool)
    /// A static array, `k = [ … ]`.
    case array([TOMLValue])
    case table(TOMLTable)
    /// An array of tables, `[[k]]`.
    case tableArray(TOMLTableArray)

    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var int: Int? { if case .integer(let i) = self { return i }; return nil }
    public var double: Double? { if case .float(let d) = self { return d }; return nil }
    public var bool: Bool? { if case .boolean(let b) = self { return b }; return nil }
    public var table: TOMLTable? { if case .table(let t) = self { return t }; return nil }

    /// The elements of a static array or of an array of tables.
    public var array: [TOMLValue]? {
        switch self {
        case .array(let a): return a
        case .tableArray(let a): return a.tables.map { .table($0) }
        default: return nil
        }
    }

    /// The type's name as the TOML specification says it, for messages.
    public var type: String {
        switch self {
        case .string: return "string"
        case .integer: return "integer"
        case .float: return "float"
        case .boolean: return "boolean"
        case .array, .tableArray: return "array"
        case .table: return "table"
        }
    }
}

/// A table: its keys in the order they were written.
public final class TOMLTable {
    /// How a table came to exist, which decides what may still add to it.
    enum Origin {
        /// Named on the way to another table (`a` in `[a.b]`): a header may still define it once.
        case implicit
        /// Defined by its own `[header]` (or as an element of `[[header]]`).
        case header
        /// Created by a dotted key (`a.b = 1` creates `a`).
        case dotted
        /// An inline table `{ … }`: complete as written.
        case inline
    }

    public private(set) var keys: [String] = []
    private var values: [String: TOMLValue] = [:]
    var origin: Origin
    /// Where the table is in the document, for messages ("device[1].register[0]").
    let path: String

    init(origin: Origin, path: String) {
        self.origin = origin
        self.path = path
    }

    public subscript(key: String) -> TOMLValue? { values[key] }

    func set(_ key: String, _ value: TOMLValue) {
        if values[key] == nil { keys.append(key) }
        values[key] = value
    }
}

/// The tables of one `[[name]]` array.
public final class TOMLTableArray {
    public private(set) var tables: [TOMLTable] = []
    func append(_ t: TOMLTable) { tables.append(t) }
}

/// A TOML syntax or structure error, at a 1-based line and column.
public struct TOMLError: Error, CustomStringConvertible {
    public var line: Int
    public var column: Int
    public var message: String
    public var description: String { "\(line):\(column): \(message)" }
}

/// A parsed document and where each key and table stands in the text.
public struct TOMLDocument {
    public let root: TOMLTable
    /// "path" -> (line, column): "node.name", "upstream[1]", "device[0].register[2].name".
    public let positions: [String: (line: Int, column: Int)]

    public init(_ text: String) throws(TOMLError) {
        var parser = TOMLParser(Array(text.utf8))
        try parser.parseDocument()
        root = parser.root
        positions = parser.positions
    }

    /// The best position for `path`: itself, else its nearest enclosing table or key.
    public func position(_ path: String) -> (line: Int, column: Int) {
        var p = Substring(path)
        while true {
            if let found = positions[String(p)] { return found }
            guard let cut = p.lastIndex(where: { $0 == "." || $0 == "[" }) else { return (1, 1) }
            p = p[..<cut]
        }
    }
}

struct TOMLParser {
    let bytes: [UInt8]
    var i = 0
    var line = 1
    var lineStart = 0
    let root = TOMLTable(origin: .header, path: "")
    var positions: [String: (line: Int, column: Int)] = [:]
    /// Arrays and inline tables open inside one another; bounded, so a
    /// hostile file is an error rather than a stack overflow.
    var depth = 0
    static let depthMax = 32

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { i = 3; lineStart = 3 }
    }

    // MARK: positions and errors

    /// The 1-based column of byte `at`, counting characters rather than bytes.
    func column(_ at: Int) -> Int {
        var c = 1
        var k = lineStart
        while k < at && k < bytes.count {
            if bytes[k] & 0xC0 != 0x80 { c += 1 }
            k += 1
        }
        return c
    }

    func error(_ message: String, at: Int? = nil) -> TOMLError {
        TOMLError(line: line, column: column(at ?? i), message: message)
    }

    var peek: UInt8? { i < bytes.count ? bytes[i] : nil }
    func peek(_ offset: Int) -> UInt8? { i + offset < bytes.count ? bytes[i + offset] : nil }
    func looking(at s: String) -> Bool {
        let u = Array(s.utf8)
        return i + u.count <= bytes.count && Array(bytes[i..<(i + u.count)]) == u
    }

    static func describe(_ b: UInt8?) -> String {
        guard let b else { return "the end of the file" }
        switch b {
        case 0x0A: return "a line break"
        case 0x0D: return "a carriage return"
        case 0x20...0x7E: return "\"\(Character(Unicode.Scalar(b)))\""
        default: return "byte 0x\(String(b, radix: 16))"
        }
    }

    // MARK: whitespace, comments, line ends

    mutating func skipSpaces() {
        while let b = peek, b == 0x20 || b == 0x09 { i += 1 }
    }

    /// A comment up to (not including) the line end. Control characters are refused, as the spec says.
    mutating func skipComment() throws(TOMLError) {
        guard peek == UInt8(ascii: "#") else { return }
        while let b = peek, b != 0x0A {
            if b == 0x0D && peek(1) == 0x0A { break }
            if (b < 0x20 && b != 0x09) || b == 0x7F { throw error("control character \(TOMLParser.describe(b)) in a comment") }
            i += 1
        }
    }

    /// Consumes one line end (LF or CRLF); false if there is none here.
    mutating func newline() -> Bool {
        if peek == 0x0A { i += 1 } else if peek == 0x0D && peek(1) == 0x0A { i += 2 } else { return false }
        line += 1
        lineStart = i
        return true
    }

    /// After a key/value pair or a header: spaces, a comment, then a line end or the end.
    mutating func endOfLine() throws(TOMLError) {
        skipSpaces()
        try skipComment()
        if peek == nil || newline() { return }
        throw error("expected the end of the line, found \(TOMLParser.describe(peek))")
    }

    /// Inside arrays: spaces, comments and line ends in any number.
    mutating func skipBlank() throws(TOMLError) {
        while true {
            skipSpaces()
            try skipComment()
            if !newline() { return }
        }
    }

    // MARK: document

    mutating func parseDocument() throws(TOMLError) {
        var current = root
        while true {
            skipSpaces()
            guard let b = peek else { return }
            if b == UInt8(ascii: "#") {
                try skipComment()
                try endOfLine()
            } else if newline() {
                continue
            } else if b == UInt8(ascii: "[") {
                let start = i
                let isArray = peek(1) == UInt8(ascii: "[")
                i += isArray ? 2 : 1
                skipSpaces()
                let keys = try parseKey()
                skipSpaces()
                guard looking(at: isArray ? "]]" : "]") else {
                    throw error("expected \(isArray ? "]]" : "]") to close the table header, found \(TOMLParser.describe(peek))")
                }
                i += isArray ? 2 : 1
                current = try isArray ? appendTable(keys, at: start) : defineTable(keys, at: start)
                positions[current.path] = (line, column(start))
                try endOfLine()
            } else {
                try parseKeyValue(into: current)
                try endOfLine()
            }
        }
    }

    // MARK: keys

    static func isBare(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x5F || b == 0x2D
    }

    /// A dotted key: one or more simple keys (bare or quoted) joined by dots.
    mutating func parseKey() throws(TOMLError) -> [String] {
        var parts: [String] = []
        while true {
            guard let b = peek else { throw error("expected a key, found the end of the file") }
            if b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") {
                if peek(1) == b && peek(2) == b { throw error("a key cannot be a multi-line string") }
                parts.append(try parseString())
            } else if TOMLParser.isBare(b) {
                let start = i
                while let c = peek, TOMLParser.isBare(c) { i += 1 }
                parts.append(String(decoding: bytes[start..<i], as: UTF8.self))
            } else {
                throw error("expected a key, found \(TOMLParser.describe(b))")
            }
            skipSpaces()
            guard peek == UInt8(ascii: ".") else { return parts }
            i += 1
            skipSpaces()
        }
    }

    static func join(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
    static func dotted(_ keys: [String]) -> String { keys.joined(separator: ".") }

    /// Walks to the table `keys` names, creating implicit tables on the way.
    mutating func walk(_ keys: ArraySlice<String>, from start: TOMLTable, at: Int) throws(TOMLError) -> TOMLTable {
        var t = start
        for k in keys {
            switch t[k] {
            case nil:
                let next = TOMLTable(origin: .implicit, path: TOMLParser.join(t.path, k))
                t.set(k, .table(next))
                t = next
            case .table(let next):
                if next.origin == .inline { throw error("[\(next.path)] is an inline table and cannot be extended", at: at) }
                t = next
            case .tableArray(let array):
                t = array.tables[array.tables.count - 1]
            case let other?:
                throw error("\"\(TOMLParser.join(t.path, k))\" is already a value (\(other.type)), not a table", at: at)
            }
        }
        return t
    }

    mutating func defineTable(_ keys: [String], at: Int) throws(TOMLError) -> TOMLTable {
        let parent = try walk(keys.dropLast(), from: root, at: at)
        let last = keys[keys.count - 1]
        let name = TOMLParser.dotted(keys)
        switch parent[last] {
        case nil:
            let t = TOMLTable(origin: .header, path: TOMLParser.join(parent.path, last))
            parent.set(last, .table(t))
            return t
        case .table(let t) where t.origin == .implicit:
            t.origin = .header
            return t
        case .table(let t) where t.origin == .dotted:
            throw error("table [\(name)] was already defined by dotted keys", at: at)
        case .table(let t):
            throw error("table [\(name)] is defined twice\(where_(t: t.path))", at: at)
        case .tableArray:
            throw error("[\(name)] is an array of tables ([[\(name)]]), not a table", at: at)
        case let other?:
            throw error("\"\(name)\" is already a value (\(other.type)), not a table", at: at)
        }
    }

    mutating func appendTable(_ keys: [String], at: Int) throws(TOMLError) -> TOMLTable {
        let parent = try walk(keys.dropLast(), from: root, at: at)
        let last = keys[keys.count - 1]
        let name = TOMLParser.dotted(keys)
        let path = TOMLParser.join(parent.path, last)
        switch parent[last] {
        case nil:
            let array = TOMLTableArray()
            let t = TOMLTable(origin: .header, path: "\(path)[0]")
            array.append(t)
            parent.set(last, .tableArray(array))
            return t
        case .tableArray(let array):
            let t = TOMLTable(origin: .header, path: "\(path)[\(array.tables.count)]")
            array.append(t)
            return t
        case .array:
            throw error("\"\(name)\" is a static array and cannot be extended with [[\(name)]]", at: at)
        case let other?:
            throw error("[[\(name)]] names a value (\(other.type)) defined earlier\(where_(t: path))", at: at)
        }
    }

    func where_(t path: String) -> String {
        guard let p = positions[path] else { return "" }
        return " (first at line \(p.line))"
    }

    // MARK: key/value pairs

    mutating func parseKeyValue(into table: TOMLTable) throws(TOMLError) {
        let start = i
        let startLine = line
        let startColumn = column(start)
        let keys = try parseKey()
        guard peek == UInt8(ascii: "=") else {
            throw error("expected \"=\" after the key \"\(TOMLParser.dotted(keys))\", found \(TOMLParser.describe(peek))")
        }
        i += 1
        skipSpaces()
        // Tables created by the dotted key's first parts.
        var t = table
        for k in keys.dropLast() {
            switch t[k] {
            case nil:
                let next = TOMLTable(origin: .dotted, path: TOMLParser.join(t.path, k))
                t.set(k, .table(next))
                t = next
            case .table(let next) where next.origin == .dotted || next.origin == .implicit:
                t = next
            case .table(let next):
                throw error("\"\(next.path)\" is a table defined elsewhere; dotted keys cannot add to it", at: start)
            case let other?:
                throw error("\"\(TOMLParser.join(t.path, k))\" is already a value (\(other.type)), not a table", at: start)
            }
        }
        let last = keys[keys.count - 1]
        let path = TOMLParser.join(t.path, last)
        if t[last] != nil {
            throw error("\"\(path)\" is defined twice\(where_(t: path))", at: start)
        }
        let value = try parseValue(path: path)
        t.set(last, value)
        positions[path] = (startLine, startColumn)
    }

    // MARK: values

    mutating func parseValue(path: String) throws(TOMLError) -> TOMLValue {
        guard let b = peek else { throw error("expected a value, found the end of the file") }
        if b == UInt8(ascii: "[") || b == UInt8(ascii: "{") {
            guard depth < TOMLParser.depthMax else { throw error("arrays and inline tables nested more than \(TOMLParser.depthMax) deep") }
            depth += 1
        }
        defer { if b == UInt8(ascii: "[") || b == UInt8(ascii: "{") { depth -= 1 } }
        switch b {
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            return .string(try parseString())
        case UInt8(ascii: "["):
            return try parseArray(path: path)
        case UInt8(ascii: "{"):
            return try parseInlineTable(path: path)
        case 0x0A, 0x0D, UInt8(ascii: "#"):
            throw error("expected a value after \"=\"")
        default:
            return try parseScalar()
        }
    }

    mutating func parseArray(path: String) throws(TOMLError) -> TOMLValue {
        i += 1
        var items: [TOMLValue] = []
        while true {
            try skipBlank()
            if peek == UInt8(ascii: "]") { i += 1; return .array(items) }
            items.append(try parseValue(path: "\(path)[\(items.count)]"))
            try skipBlank()
            if peek == UInt8(ascii: ",") { i += 1; continue }
            if peek == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw error("expected \",\" or \"]\" in the array, found \(TOMLParser.describe(peek))")
        }
    }

    mutating func parseInlineTable(path: String) throws(TOMLError) -> TOMLValue {
        i += 1
        let t = TOMLTable(origin: .inline, path: path)
        skipSpaces()
        if peek == UInt8(ascii: "}") { i += 1; return .table(t) }
        while true {
            skipSpaces()
            if peek == 0x0A || peek == 0x0D { throw error("an inline table must be on one line") }
            try parseKeyValue(into: t)
            skipSpaces()
            if peek == UInt8(ascii: ",") {
                i += 1
                skipSpaces()
                if peek == UInt8(ascii: "}") { throw error("a trailing comma is not allowed in an inline table") }
                continue
            }
            if peek == UInt8(ascii: "}") { i += 1; break }
            throw error("expected \",\" or \"}\" in the inline table, found \(TOMLParser.describe(peek))")
        }
        // Tables made by dotted keys inside are as closed as the inline table itself.
        func close(_ t: TOMLTable) {
            t.origin = .inline
            for k in t.keys { if case .table(let sub) = t[k]! { close(sub) } }
        }
        close(t)
        return .table(t)
    }

    // MARK: strings

    /// Appends one UTF-8 sequence starting at `i` to `out`, refusing control characters.
    mutating func takeCharacter(into out: inout [UInt8], multiline: Bool) throws(TOMLError) {
        let b = bytes[i]
        if b == 0x0A || (b == 0x0D && peek(1) == 0x0A) {
            guard multiline else { throw error("a line break inside a single-line string (close it with its quote)") }
            if b == 0x0D { i += 1 }
            out.append(0x0A)
            i += 1
            line += 1
            lineStart = i
            return
        }
        if (b < 0x20 && b != 0x09) || b == 0x7F {
            throw error("control character \(TOMLParser.describe(b)) in a string (write it as an escape)")
        }
        out.append(b)
        i += 1
    }

    func decoded(_ raw: [UInt8], from start: Int) throws(TOMLError) -> String {
        guard let s = String(validating: raw, as: UTF8.self) else { throw error("a string that is not valid UTF-8", at: start) }
        return s
    }

    mutating func parseEscape(into out: inout [UInt8]) throws(TOMLError) {
        let at = i
        i += 1  // the backslash
        guard let e = peek else { throw error("an unfinished escape at the end of the file") }
        i += 1
        switch e {
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5C)
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let count = e == UInt8(ascii: "u") ? 4 : 8
            guard i + count <= bytes.count,
                  let code = UInt32(String(decoding: bytes[i..<(i + count)], as: UTF8.self), radix: 16),
                  let scalar = Unicode.Scalar(code)
            else { throw error("\\\(Character(Unicode.Scalar(e))) needs \(count) hex digits naming a Unicode scalar value", at: at) }
            i += count
            out.append(contentsOf: Array(String(Character(scalar)).utf8))
        default:
            throw error("unknown escape \"\\\(Character(Unicode.Scalar(e)))\"", at: at)
        }
    }

    /// A string of any of TOML's four kinds, starting at its opening quote:
    /// `"` basic (escapes), `'` literal (none), and each tripled for multi-line
    /// (the line end right after the opening is dropped; in a basic one, a
    /// backslash ending a line trims the line end and the whitespace after it).
    mutating func parseString() throws(TOMLError) -> String {
        let start = i
        let quote = bytes[i]
        let escapes = quote == UInt8(ascii: "\"")
        let multiline = peek(1) == quote && peek(2) == quote
        i += multiline ? 3 : 1
        if multiline { _ = newline() }
        var out: [UInt8] = []
        while true {
            guard let b = peek else {
                throw error(multiline ? "a multi-line string without its closing \(String(repeating: Character(Unicode.Scalar(quote)), count: 3))"
                                      : "a string without its closing quote", at: start)
            }
            if multiline {
                if closingQuotes(quote, into: &out) { return try decoded(out, from: start) }
            } else if b == quote {
                i += 1
                return try decoded(out, from: start)
            }
            if escapes && b == UInt8(ascii: "\\") {
                if multiline && lineEndingBackslash() { continue }
                try parseEscape(into: &out)
                continue
            }
            try takeCharacter(into: &out, multiline: multiline)
        }
    }

    /// At a backslash with only whitespace before the line end: skips it, the
    /// line end and all whitespace and line ends after it.
    mutating func lineEndingBackslash() -> Bool {
        var k = i + 1
        while k < bytes.count && (bytes[k] == 0x20 || bytes[k] == 0x09) { k += 1 }
        guard k < bytes.count && (bytes[k] == 0x0A || (bytes[k] == 0x0D && k + 1 < bytes.count && bytes[k + 1] == 0x0A)) else { return false }
        i = k
        while true {
            skipSpaces()
            if !newline() { return true }
        }
    }

    /// Up to two quotes may stand right before the closing three ("""" ends with one quote of content).
    mutating func closingQuotes(_ q: UInt8, into out: inout [UInt8]) -> Bool {
        guard peek == q && peek(1) == q && peek(2) == q else { return false }
        var extra = 0
        while extra < 2 && peek(3 + extra) == q { extra += 1 }
        out.append(contentsOf: [UInt8](repeating: q, count: extra))
        i += 3 + extra
        return true
    }

    // MARK: booleans and numbers

    static func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

    mutating func parseScalar() throws(TOMLError) -> TOMLValue {
        let start = i
        while let b = peek, TOMLParser.isBare(b) || b == UInt8(ascii: "+") || b == UInt8(ascii: ".") || b == UInt8(ascii: ":") {
            i += 1
        }
        let token = String(decoding: bytes[start..<i], as: UTF8.self)
        guard !token.isEmpty else { throw error("expected a value, found \(TOMLParser.describe(peek))") }
        switch token {
        case "true": return .boolean(true)
        case "false": return .boolean(false)
        case "inf", "+inf": return .float(.infinity)
        case "-inf": return .float(-.infinity)
        case "nan", "+nan", "-nan": return .float(.nan)
        default: break
        }
        let u = Array(token.utf8)
        // A date (1979-05-27) or a time (07:32:00): TOML has them, the configs do not.
        if token.contains(":") || (u.count >= 7 && u[0..<4].allSatisfy(TOMLParser.isDigit) && u[4] == UInt8(ascii: "-")) {
            throw error("dates and times are not used in these configs; write the value as a string or a number", at: start)
        }
        guard let first = u.first, TOMLParser.isDigit(first) || first == UInt8(ascii: "+") || first == UInt8(ascii: "-") else {
            throw error("\"\(token)\" is not a value (a string needs quotes)", at: start)
        }
        if let v = TOMLParser.integer(u) { return .integer(v) }
        if TOMLParser.isDecimalInteger(u) { throw error("the integer \(token) is out of range for 64 bits", at: start) }
        if let d = TOMLParser.float(u) { return .float(d) }
        throw error("\"\(token)\" is not a valid number", at: start)
    }

    /// Digits of `radix` with single underscores only between digits; nil if malformed.
    static func digits(_ u: ArraySlice<UInt8>, radix: Int) -> [UInt8]? {
        guard let f = u.first, f != UInt8(ascii: "_"), u.last != UInt8(ascii: "_") else { return nil }
        var out: [UInt8] = []
        var previousUnderscore = false
        for b in u {
            if b == UInt8(ascii: "_") {
                if previousUnderscore { return nil }
                previousUnderscore = true
                continue
            }
            previousUnderscore = false
            guard let d = Int(String(Character(Unicode.Scalar(b))), radix: radix), d < radix else { return nil }
            out.append(b)
        }
        return out
    }

    static func isDecimalInteger(_ u: [UInt8]) -> Bool {
        var body = u[...]
        if body.first == UInt8(ascii: "+") || body.first == UInt8(ascii: "-") { body = body.dropFirst() }
        guard let d = digits(body, radix: 10) else { return false }
        return !(d.count > 1 && d[0] == UInt8(ascii: "0"))
    }

    static func integer(_ u: [UInt8]) -> Int? {
        if u.count > 2 && u[0] == UInt8(ascii: "0"), let radix = [UInt8(ascii: "x"): 16, UInt8(ascii: "o"): 8, UInt8(ascii: "b"): 2][u[1]] {
            guard let d = digits(u[2...], radix: radix) else { return nil }
            return Int(String(decoding: d, as: UTF8.self), radix: radix)
        }
        guard isDecimalInteger(u) else { return nil }
        var sign: [UInt8] = []
        var body = u[...]
        if body.first == UInt8(ascii: "+") || body.first == UInt8(ascii: "-") { sign = [body.first!]; body = body.dropFirst() }
        guard let d = digits(body, radix: 10) else { return nil }
        return Int(String(decoding: sign + d, as: UTF8.self))
    }

    /// `[+-] int ( . digits )? ( [eE] [+-]? digits )?` with a fraction or an exponent (or both).
    static func float(_ u: [UInt8]) -> Double? {
        var body = u[...]
        var clean: [UInt8] = []
        if body.first == UInt8(ascii: "+") || body.first == UInt8(ascii: "-") { clean.append(body.first!); body = body.dropFirst() }
        let exponentAt = body.firstIndex { $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }
        let mantissa = body[..<(exponentAt ?? body.endIndex)]
        let dot = mantissa.firstIndex(of: UInt8(ascii: "."))
        let whole = mantissa[..<(dot ?? mantissa.endIndex)]
        guard let w = digits(whole, radix: 10), !(w.count > 1 && w[0] == UInt8(ascii: "0")) else { return nil }
        clean += w
        if let dot {
            guard let f = digits(mantissa[(dot + 1)...], radix: 10) else { return nil }
            clean += [UInt8(ascii: ".")] + f
        }
        if let e = exponentAt {
            var exp = body[(e + 1)...]
            clean.append(UInt8(ascii: "e"))
            if exp.first == UInt8(ascii: "+") || exp.first == UInt8(ascii: "-") { clean.append(exp.first!); exp = exp.dropFirst() }
            guard let x = digits(exp, radix: 10) else { return nil }
            clean += x
        }
        guard dot != nil || exponentAt != nil else { return nil }
        return Double(String(decoding: clean, as: UTF8.self))
    }
}
