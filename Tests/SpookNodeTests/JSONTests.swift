import SpookNode
import Testing

@Suite struct JSONTests {
    static func parse(_ text: String) throws -> JSONValue { try JSONValue.parse(Array(text.utf8)) }

    @Test func parsesEveryKindOfValue() throws {
        let v = try Self.parse(#" {"op":"set","n":-12,"f":2.5e3,"t":true,"z":null,"a":[1,"x"],"s":"é\n\u00e9\ud83d\ude00"} "#)
        #expect(v["op"] == .string("set"))
        #expect(v["n"] == .int(-12) && v["f"] == .double(2500) && v["t"] == .bool(true) && v["z"] == .null)
        #expect(v["a"] == .array([.int(1), .string("x")]))
        #expect(v["s"] == .string("é\né😀"))
    }

    @Test func writesCompactSortedAndReadsItBack() throws {
        let v = JSONValue.object(["b": .string("q\"\\\u{1}"), "a": .array([.double(0.5), .int(Int64.min)])])
        let text = String(decoding: v.serialized, as: UTF8.self)
        #expect(text == #"{"a":[0.5,-9223372036854775808],"b":"q\"\\\u0001"}"#)
        #expect(try Self.parse(text) == v)
    }

    @Test(arguments: [
        ("", "unexpected end"), ("{", "expected a key"), (#"{"a" 1}"#, "expected :"), ("[1,]", "expected a value"),
        ("01", "leading zero"), ("1.", "expected digits"), ("tru", "expected true"), (#""abc"#, "unterminated string"),
        (#""\x""#, "unknown escape"), (#""\ud800""#, "expected \u{5C}u"), ("{} x", "unexpected bytes after the value"),
        (String(repeating: "[", count: 100), "nested deeper than 64"), ("\"a\u{1}\"", "control character"),
        // Hardening 11: never silently a float, never infinity.
        ("9223372036854775808", "outside the 64-bit range"), ("-9223372036854775809", "outside the 64-bit range"),
        ("1e400", "outside the range of a 64-bit float"), ("-1e400", "outside the range of a 64-bit float"),
    ])
    func refusesWhatIsNotJSONAndSaysWhere(_ text: String, _ expected: String) {
        let error = #expect(throws: (any Error).self) { try Self.parse(text) }
        #expect("\(error.map { "\($0)" } ?? "")".contains(expected), "\(error.map { "\($0)" } ?? "no error")")
    }
}
