import Foundation
import SpookCore
import SpookWire
import Testing

@Suite struct ProtocolVectorTests {
    /// The `hex NAME` blocks of docs/protocol.md.
    static let vectors: [String: [UInt8]] = {
        let doc = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/protocol.md")
        let text = (try? String(contentsOf: doc, encoding: .utf8)) ?? ""
        var out: [String: [UInt8]] = [:]
        var name: String?
        var hex = ""
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("```hex ") {
                name = String(line.dropFirst(7))
                hex = ""
            } else if line == "```", let n = name {
                out[n] = [UInt8](hex: hex)
                name = nil
            } else if name != nil {
                hex += line
            }
        }
        return out
    }()

    static let a1 = Origin(0xa1), b2 = Origin(0xb2)

    static let messages: [(String, Message)] = [
        ("heartbeat", .heartbeat(sentMs: 1_700_000_000_000)),
        ("ack", .ack(QStateVector([a1: 5, b2: 17]))),
        ("ack-partial", .ack(QStateVector([a1: 5]), partial: true)),
        ("vector-empty", .vector(QStateVector())),
        ("vector-tip", .vector(QStateVector([a1: 5, b2: 17]), tip: OriginTip(origin: b2, seq: 17, hlc: try! HLCTimestamp(ms: 1000, counter: 3)))),
        ("hello-epoch", .hello(Hello(role: .agent, publicKey: Array(0..<32), nonce: Array(repeating: 0xee, count: 32),
                                     subscriptions: [try! QDomainPattern("site1.*")], node: "gw-17", epoch: 7))),
        ("deltas", .deltas([try! Delta(origin: Origin(0xaa), seq: 1, hlc: HLCTimestamp(ms: 1000, counter: 2),
                                       group: QGroupName("site1.line3/pump7"), writes: [Write("speed", .set, .int(1200))])])),
        ("error", .error(code: .frameTooLarge, message: "frame of 2000000 bytes exceeds the limit of 1048576")),
        ("close", .close(message: "shutting down")),
        ("auth", .auth(signature: Array(0..<64))),
        ("hello", .hello(Hello(role: .agent, publicKey: Array(0..<32), nonce: Array(repeating: 0xee, count: 32),
                               subscriptions: [try! QDomainPattern("site1.*"), try! QDomainPattern("*")], node: "gw-17"))),
        ("snapshot", .snapshot(SnapshotChunk(index: 1, count: 2, vector: QStateVector([a1: 3]), registers: [
            try! QRegisterName("site1.line3/pump7/speed"): .lww(Versioned(.int(7), Stamp(hlc: try! HLCTimestamp(ms: 1000, counter: 0), origin: a1, seq: 3))),
        ]))),
    ]

    @Test func everyMessageTypeHasADocumentedVector() {
        #expect(Set(Self.messages.map(\.1.type)) == Set(FrameType.allCases))
        #expect(Self.vectors.count == Self.messages.count, "vectors in docs/protocol.md: \(Self.vectors.keys.sorted())")
    }

    @Test(arguments: messages.map(\.0))
    func encodesAndDecodesTheDocumentedBytes(_ name: String) throws {
        let message = Self.messages.first { $0.0 == name }!.1
        let expected = try #require(Self.vectors[name], "no vector \(name) in docs/protocol.md")
        #expect(message.frame.encoded.hex == expected.hex)
        var decoder = FrameDecoder()
        decoder.feed(expected)
        let frame = try #require(try decoder.next())
        #expect(try Message(frame: frame) == message)
        #expect(try decoder.next() == nil)
    }
}

@Suite struct FrameDecoderTests {
    static func sample() throws -> [Message] {
        var random = SplitMix64(seed: 3)
        return try (0..<40).map { i in
            switch i % 4 {
            case 0: .heartbeat(sentMs: random.next())
            case 1: .ack(QStateVector([Origin(random.next()): random.next() % 100]))
            case 2: .deltas(try (1...(1 + random.next() % 5)).map { s in
                try Delta(origin: Origin(9), seq: s, hlc: HLCTimestamp(rawValue: random.next() >> 16), group: QGroupName("a/b"),
                          writes: [Write("r", .set, .string(String(repeating: "x", count: Int(random.next() % 300))))])
            })
            default: .close(message: "bye \(i)")
            }
        }
    }

    func decodeAll(_ chunks: [[UInt8]]) throws -> [Message] {
        var decoder = FrameDecoder()
        var out: [Message] = []
        for chunk in chunks {
            decoder.feed(chunk)
            while let frame = try decoder.next() { out.append(try Message(frame: frame)) }
        }
        #expect(decoder.buffered == 0)
        return out
    }

    @Test func dripCoalescedAndRandomlyCutStreamsDecodeTheSame() throws {
        let messages = try Self.sample()
        let stream = messages.flatMap { $0.frame.encoded }
        // Byte by byte.
        #expect(try decodeAll(stream.map { [$0] }) == messages)
        // All at once.
        #expect(try decodeAll([stream]) == messages)
        // Cut at random places, 50 times.
        var random = SplitMix64(seed: 11)
        for _ in 0..<50 {
            var chunks: [[UInt8]] = []
            var i = 0
            while i < stream.count {
                let n = 1 + Int(random.next() % 700)
                chunks.append(Array(stream[i..<min(i + n, stream.count)]))
                i += n
            }
            #expect(try decodeAll(chunks) == messages)
        }
    }

    @Test func garbageIsRefusedAtItsFirstByte() {
        var d = FrameDecoder()
        d.feed([0x47])
        let error = #expect(throws: WireError.self) { try d.next() }
        #expect(error?.code == .badMagic)
        #expect(error?.message.contains("byte 0x47") == true)
        // Sticky: the stream stays refused.
        d.feed(Message.close(message: "x").frame.encoded)
        #expect(throws: WireError.self) { try d.next() }
    }

    @Test func anOversizedFrameIsRefusedFromItsHeaderAlone() {
        var d = FrameDecoder(payloadMax: 1024)
        d.feed([0x53, 0x50, 0x01, 0x04, 0x00, 0x10, 0x00, 0x00])
        let error = #expect(throws: WireError.self) { try d.next() }
        #expect(error?.code == .frameTooLarge)
        #expect(error?.message == "frame of 1048576 bytes exceeds the limit of 1024")
    }

    @Test func versionChecksumAndTypeAreChecked() throws {
        var wrongVersion = Message.close(message: "x").frame.encoded
        wrongVersion[2] = 2
        var d = FrameDecoder()
        d.feed(wrongVersion)
        #expect((#expect(throws: WireError.self) { try d.next() })?.code == .unsupportedVersion)

        var flipped = Message.close(message: "hello").frame.encoded
        flipped[12] ^= 0x01
        d = FrameDecoder()
        d.feed(flipped)
        #expect((#expect(throws: WireError.self) { try d.next() })?.code == .badChecksum)

        let unknown = Frame(type: .close, payload: []).encoded
        var raw = unknown
        raw[3] = 0x7f
        // Re-seal so only the type is wrong.
        let body = Array(raw[2..<(raw.count - 4)])
        let crc = CRC32C.checksum(body)
        raw.replaceSubrange((raw.count - 4)..., with: [UInt8(crc >> 24), UInt8(crc >> 16 & 0xff), UInt8(crc >> 8 & 0xff), UInt8(crc & 0xff)])
        d = FrameDecoder()
        d.feed(raw)
        let error = #expect(throws: WireError.self) { try d.next() }
        #expect(error?.code == .unknownType && error?.message == "unknown frame type 0x7f")
    }

    @Test(arguments: [
        (FrameType.heartbeat, "0102", "HEARTBEAT: heartbeat time: needs 8 bytes"),
        (.heartbeat, "000000000000000001", "HEARTBEAT payload: 1 unexpected trailing bytes"),
        (.auth, "00", "AUTH: signature: needs 64 bytes"),
        (.deltas, "00002711", "10001 deltas in one batch, the limit is 10000"),
        (.deltas, "0000000100000003000102", "DELTAS: delta 0: delta origin: needs 8 bytes"),
        (.close, "0005616263", "close message: needs 5 bytes"),
        (.close, "0002c328", "close message is not valid UTF-8"),
        (.snapshot, "0000000200000002", "chunk 2 of 2"),
        (.snapshot, "0000000000000000", "chunk 0 of 0"),
        (.hello, "00010900", "unknown role 9"),
        (.ack, "0000000002", "ACK flags 0x2: only 0x01 (partial) is defined"),
        (.ack, "000000000100", "ACK payload: 1 unexpected trailing bytes"),
    ])
    func malformedPayloadsSayWhatAndWhere(_ type: FrameType, _ hex: String, _ expected: String) {
        let error = #expect(throws: WireError.self) { try Message(frame: Frame(type: type, payload: [UInt8](hex: hex)!)) }
        #expect(error?.code == .malformed)
        #expect(error?.message.contains(expected) == true, "message was: \(error?.message ?? "-")")
    }

    @Test func randomBytesAndBitFlipsNeverCrashTheDecoders() throws {
        var random = SplitMix64(seed: 0xF422)
        let valid = try Self.sample().map { $0.frame.encoded }
        var accepted = 0
        for _ in 0..<20_000 {
            var bytes = valid[Int(random.next() % UInt64(valid.count))]
            for _ in 0...(random.next() % 3) { bytes[Int(random.next() % UInt64(bytes.count))] ^= UInt8(truncatingIfNeeded: random.next() | 1) }
            var d = FrameDecoder()
            d.feed(bytes)
            // Refused, or waiting for bytes a corrupted length promises: never a wrong frame.
            if let f = try? d.next(), (try? Message(frame: f)) != nil { accepted += 1 }
        }
        // Only two flips of one byte that cancel out can get through.
        #expect(accepted <= 5, "\(accepted) corrupted frames were accepted")
        for _ in 0..<5_000 {
            let junk = (0..<Int(random.next() % 200)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            _ = try? Message(frame: Frame(type: FrameType.allCases[Int(random.next() % 9)], payload: junk))
        }
    }

    @Test func longMessagesAreCutAtACharacterBoundary() throws {
        let long = String(repeating: "é", count: 600)  // 1,200 bytes
        guard case .close(let message) = try Message(frame: Message.close(message: long).frame) else { Issue.record("not a close"); return }
        #expect(message.utf8.count == 1024 && message.allSatisfy { $0 == "é" })
    }
}
