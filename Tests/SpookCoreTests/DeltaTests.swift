import SpookCore
import Testing

@Suite struct DeltaTests {
    static let group = try! QGroupName("site1.line3/pump7")

    static func delta(_ writes: [Write], seq: UInt64 = 1) throws -> Delta {
        try Delta(origin: Origin(0xAA), seq: seq, hlc: HLCTimestamp(ms: 1000, counter: 2), group: group, writes: writes)
    }

    @Test func encodingMatchesTheDocumentedVector() throws {
        let d = try Self.delta([Write("speed", .set, .int(1200))])
        // origin, seq, hlc (1000 << 16 | 2), group, 1 write: "speed", set, int 1200
        let expected = "00000000000000aa" + "0000000000000001" + "0000000003e80002"
            + "0011" + Array("site1.line3/pump7".utf8).hex + "0001"
            + "05" + Array("speed".utf8).hex + "00" + "0200000000000004b0"
        #expect(d.encoded.hex == expected)
        #expect(try Delta.decode(d.encoded) == d)
    }

    @Test(arguments: [
        ([Write](), CoreError.Code.emptyDelta, "at least one write"),
        ([Write("a", .set, .int(1)), Write("a", .set, .int(2))], .duplicateRegister, "\"a\" is written twice"),
        ([Write("Bad", .set, .int(1))], .invalidName, "\"B\" at offset 0"),
        ([Write("s", .set, .string(String(repeating: "x", count: 70_000)))], .valueTooLarge, "register \"s\": string of 70000 bytes"),
    ])
    func invalidDeltasAreRefusedWithTheReason(_ writes: [Write], _ code: CoreError.Code, _ expected: String) {
        let error = #expect(throws: CoreError.self) { try Self.delta(writes) }
        #expect(error?.code == code)
        #expect(error?.message.contains(expected) == true, "message was: \(error?.message ?? "-")")
    }

    @Test func seqZeroAndTooManyWritesAreRefused() {
        #expect(throws: CoreError.self) { try Self.delta([Write("a", .set, .null)], seq: 0) }
        let many = (0...Delta.writesMax).map { Write("r\($0)", .set, .null) }
        let error = #expect(throws: CoreError.self) { try Self.delta(many) }
        #expect(error?.code == .tooManyWrites)
    }

    @Test func everyTruncationOfAnEncodingIsRefusedNeverCrashes() throws {
        let d = try Self.delta([Write("speed", .set, .int(1200)), Write("name", .set, .string("pump")), Write("raw", .set, .bytes([1, 2, 3]))])
        let bytes = d.encoded
        for cut in 0..<bytes.count {
            #expect(throws: CoreError.self) { try Delta.decode(Array(bytes[..<cut])) }
        }
        let error = #expect(throws: CoreError.self) { try Delta.decode(bytes + [0]) }
        #expect(error?.message.contains("trailing") == true)
    }

    @Test func randomGarbageAndBitFlipsNeverCrashTheDecoder() throws {
        var random = SplitMix64(seed: 7)
        let valid = try Self.delta([Write("speed", .set, .int(1200)), Write("t", .set, .float(2.5))]).encoded
        var decoded = 0
        for _ in 0..<20_000 {
            var bytes = valid
            for _ in 0...(random.next() % 4) {
                let i = Int(random.next() % UInt64(bytes.count))
                bytes[i] = UInt8(truncatingIfNeeded: random.next())
            }
            if let d = try? Delta.decode(bytes) {
                // Whatever decodes must re-encode to the same bytes (canonical).
                #expect(d.encoded == bytes)
                decoded += 1
            }
        }
        for _ in 0..<5_000 {
            let garbage = (0..<Int(random.next() % 80)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            _ = try? Delta.decode(garbage)
        }
        #expect(decoded < 20_000)
    }
}
