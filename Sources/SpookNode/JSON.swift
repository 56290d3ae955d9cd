import SpookCore

/// A JSON value, for the local API's one-object-per-line protocol.
public enum JSONValue: Hashable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public subscript(key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    public var string: String? { if case .string(let s) = self { s } else { nil } }

    public static func parse(_ line: [UInt8]) throws -> JSONValue {
        try JSONParser.parse(line)
    }

    /// One line of JSON (keys sorted), without the newline.
    public var serialized: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        write(into: &out)
        return out
    }
}

extension Value {
    /// API values: JSON null, booleans, integers, numbers with a fraction,
    /// strings; `{"bytes": "hex"}`; `{"float": "nan"|"inf"|"-inf"}` for what JSON cannot write.
    init(json: JSONValue) throws {
        switch json {
        case .null: self = .null
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .float(d)
        case .string(let s): self = .string(s)
        case .object(let o) where o.count == 1:
            if let hex = o["bytes"]?.string, let b = [UInt8](hex: hex) { self = .bytes(b); return }
            switch o["float"] {
            case .string("nan")?: self = .float(.nan)
            case .string("inf")?: self = .float(.infinity)
            case .string("-inf")?: self = .float(-.infinity)
            case .double(let d)?: self = .float(d)
            case .int(let i)?: self = .float(Double(i))
            default: throw APIError("a value object is {\"bytes\": \"hex\"} or {\"float\": number|\"nan\"|\"inf\"|\"-inf\"}")
            }
        default:
            throw APIError("values are null, true/false, numbers, strings, {\"bytes\": \"hex\"} or {\"float\": …}; arrays and other objects are not values")
        }
    }

    var json: JSONValue {
        switch self {
        case .null: .null
        case .bool(let b): .bool(b)
        case .int(let i): .int(i)
        case .float(let d) where d.isNaN: .object(["float": .string("nan")])
        case .float(let d) where d.isInfinite: .object(["float": .string(d > 0 ? "inf" : "-inf")])
        case .float(let d): .object(["float": .double(d)])
        case .string(let s): .string(s)
        case .bytes(let b): .object(["bytes": .string(b.hex)])
        }
    }

    /// Fits a JSON-typed value to a declared type where that loses nothing (an integer for a float register).
    func coerced(to type: ValueType?) -> Value {
        if type == .float, case .int(let i) = self { return .float(Double(i)) }
        return self
    }
}

extension JSONValue {
    /// `text` as JSON when it is JSON, else as a string: how `spookctl set`
    /// and the named pipe read a value typed by a person (`1500`, `true`, `hello world`).
    public static func parseOrString(_ text: String) -> JSONValue {
        (try? parse(Array(text.utf8))) ?? .string(text)
    }
}

package struct APIError: Error, CustomStringConvertible {
    package let description: String
    /// The answer's `"code"` (docs/api.md): bad-request, not-found, busy, refused, invalid, internal.
    package let code: String
    package init(_ description: String, code: String = "bad-request") {
        self.description = description
        self.code = code
    }
}

extension Versioned {
    var json: JSONValue {
        .object(["value": value.json, "stamp": .string(stamp.description)])
    }
}

extension RegisterState {
    /// The API's view of a register.
    func json(_ name: QRegisterName) -> JSONValue {
        switch self {
        case .lww(let v):
            return .object(["register": .string(name.text), "policy": .string("lww"), "value": v.value.json, "stamp": .string(v.stamp.description)])
        case .device(let r, let d):
            return .object([
                "register": .string(name.text), "policy": .string("device"),
                "value": r?.value.json ?? .null,
                "reported": r?.json ?? .null, "desired": d?.json ?? .null,
                "pending": .bool(pendingDesired != nil),
            ])
        }
    }
}
