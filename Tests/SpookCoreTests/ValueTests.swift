import SpookCore
import Testing

@Suite struct ValueTests {
    /// Byte-level vectors, worked out by hand from docs/conformance.md.
    @Test(arguments: [
        (Value.null, "00"),
        (.bool(false), "0100"),
        (.bool(true), "0101"),
        (.int(5), "020000000000000005"),
        (.int(-1), "02ffffffffffffffff"),
        (.float(1.5), "033ff8000000000000"),
        (.float(-0.0), "038000000000000000"),
        (.float(.nan), "037ff8000000000000"),
        (.float(-.nan), "037ff8000000000000"),
        (.float(Double(bitPattern: 0x7FF0_0000_0000_0001)), "037ff8000000000000"),
        (.string("hé"), "0400000003" + "68c3a9"),
        (.bytes([0xde, 0xad]), "0500000002dead"),
    ])
    func canonicalEncoding(_ value: Value, _ hex: String) throws {
        #expect(value.canonicalBytes.hex == hex)
        var r = ByteReader(value.canonicalBytes)
        #expect(try Value.decode(from: &r) == value)
        #expect(r.isAtEnd)
    }

    @Test func nanIsOneValueAndSignedZerosAreTwo() {
        #expect(Value.float(.nan) == .float(-.nan))
        #expect(Value.float(.nan).hashValue == Value.float(.signalingNaN).hashValue)
        #expect(Value.float(0.0) != .float(-0.0))
        #expect(Value.int(1) != .float(1))
    }

    @Test func oversizedValuesAreRefusedWithTheirSize() {
        let big = Value.string(String(repeating: "x", count: Value.sizeMax + 1))
        let error = #expect(throws: CoreError.self) { try big.validate("register r") }
        #expect(error?.code == .valueTooLarge)
        #expect(error?.message.contains("65537 bytes exceeds the limit of 65536") == true)
        #expect(throws: CoreError.self) { try Value.bytes(Array(repeating: 0, count: Value.sizeMax + 1)).validate("r") }
        #expect(throws: Never.self) { try Value.bytes(Array(repeating: 0, count: Value.sizeMax)).validate("r") }
    }

    @Test(arguments: [
        ("", "truncated"),
        ("09", "malformed"),
        ("0102", "malformed"),
        ("0200", "truncated"),
        ("037ff8000000000001", "malformed"),
        ("0400000005616263", "truncated"),
        ("0400000002c328", "malformed"),
        ("0500010001", "value-too-large"),
    ])
    func badEncodingsAreRefused(_ hex: String, _ code: String) {
        var r = ByteReader([UInt8](hex: hex)!)
        let error = #expect(throws: CoreError.self) { try Value.decode(from: &r) }
        #expect(error?.code.rawValue == code, "\(error?.description ?? "-")")
    }

    @Test func crc32cCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.update(CRC32C.checksum(Array("1234".utf8)), Array("56789".utf8)) == 0xE306_9283)
        // RFC 3720, B.4: inputs long enough for the eight-byte steps.
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E)
    }

    /// The eight-bytes-at-a-time checksum equals the bit-by-bit definition
    /// at every length and split (the tail and a running update included).
    @Test func crc32cMatchesTheBitwiseDefinition() {
        func bitwise(_ bytes: [UInt8]) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                c ^= UInt32(b)
                for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            return ~c
        }
        var rng = SplitMix64(seed: 7)
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            #expect(CRC32C.checksum(bytes) == bitwise(bytes), "length \(length)")
            let cut = length / 3
            #expect(CRC32C.update(CRC32C.checksum(Array(bytes[..<cut])), Array(bytes[cut...])) == bitwise(bytes), "length \(length) cut at \(cut)")
        }
    }
}
