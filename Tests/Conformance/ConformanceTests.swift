import Foundation
import SpookCore
import SpookStore
import SpookStoreTestSupport
import Testing

/// Runs every file in vectors/ (format: docs/conformance.md). The same files
/// are meant for the C firmware core and a browser client.
@Suite struct ConformanceTests {
    static let directory = Bundle.module.url(forResource: "vectors", withExtension: nil)!

    static let files: [String] = {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted()
    }()

    @Test func thereAreAtLeastFortyVectors() {
        #expect(Self.files.count >= 40, "found \(Self.files.count)")
    }

    @Test(arguments: files)
    func vector(_ file: String) throws {
        let data = try Data(contentsOf: Self.directory.appendingPathComponent(file))
        let v = try JSONDecoder().decode(Vector.self, from: data)
        #expect(v.format == 1)
        #expect(file == v.name + ".json")
        try Self.checkEncodings(v)
        try Self.checkInvalid(v)
        guard let expect = v.expect else { return }
        let schema = try v.schema!.build()
        let deltas = try v.deltas!.map { try $0.build() }

        // In the order given.
        var state = CollapseState(schema: schema)
        var refused: Set<Refusal> = []
        for d in deltas {
            do { try state.apply(d) } catch let e as CoreError { refused.insert(Refusal(origin: d.origin.description, seq: d.seq, code: e.code.rawValue)) }
        }
        #expect(refused == Set(expect.refused), "\(v.name): refusals")
        let expected = try expect.registers.reduce(into: [QRegisterName: RegisterState]()) { out, entry in
            out[try QRegisterName(entry.key)] = try entry.value.build(deltas)
        }
        #expect(state.registers == expected, "\(v.name): collapsed state")
        for (name, e) in expect.registers {
            let pending = state.registers[try QRegisterName(name)]?.pendingDesired?.value
            #expect(pending == (try e.pending.map { try $0.build() }), "\(v.name): pending desired of \(name)")
        }
        if let hex = expect.state_hex { #expect(state.canonicalBytes().hex == hex, "\(v.name): state bytes") }

        // C1: any order, with duplicates, gives the same bytes.
        let bytes = state.canonicalBytes()
        var random = SplitMix64(seed: UInt64(truncatingIfNeeded: v.name.utf8.reduce(5381) { $0 &* 33 &+ Int($1) }))
        for _ in 0..<24 where !deltas.isEmpty {
            var shuffled = deltas.shuffled(using: &random)
            shuffled.append(shuffled[Int(random.next() % UInt64(shuffled.count))])
            var s = CollapseState(schema: schema)
            for d in shuffled { _ = try? s.apply(d) }
            #expect(s.canonicalBytes() == bytes, "\(v.name): order changed the state")
        }

        // Through the store too (SQLite and PostgreSQL), where the vector's deltas
        // form contiguous runs; and the same bytes once the store is opened again.
        if Self.contiguous(deltas) {
            for backend in Backend.allCases {
                let shelf = StoreShelf(backend)
                let options = StoreOptions(sync: .off, schema: schema)
                let store = try shelf.open("v", options)
                let result = try store.commit(deltas.sorted { $0.id < $1.id })
                #expect(Set(result.refused.map { Refusal(origin: $0.id.origin.description, seq: $0.id.seq, code: $0.error.code.rawValue) }) == Set(expect.refused))
                #expect(store.state.canonicalBytes() == bytes, "\(v.name): the \(backend) store collapsed differently")
                store.close()
                #expect(try shelf.open("v", options).state.canonicalBytes() == bytes, "\(v.name): the \(backend) store read back differently")
            }
        }
    }

    /// Every origin's seqs are 1...n, each (origin, seq) one delta.
    static func contiguous(_ deltas: [Delta]) -> Bool {
        var byID: [DeltaID: Delta] = [:]
        for d in deltas {
            if let other = byID[d.id], other != d { return false }
            byID[d.id] = d
        }
        let origins = Set(byID.keys.map(\.origin))
        return origins.allSatisfy { o in
            let seqs = byID.keys.filter { $0.origin == o }.map(\.seq).sorted()
            return seqs == Array(1...UInt64(seqs.count))
        }
    }

    static func checkEncodings(_ v: Vector) throws {
        for e in v.encodings ?? [] {
            let value = try e.value.build()
            #expect(value.canonicalBytes.hex == e.hex, "\(v.name): encoding of \(value)")
            var r = ByteReader([UInt8](hex: e.hex)!)
            #expect(try Value.decode(from: &r) == value)
        }
        for e in v.delta_encodings ?? [] {
            let d = try e.delta.build()
            #expect(d.encoded.hex == e.hex, "\(v.name): encoding of \(d)")
            #expect(try Delta.decode([UInt8](hex: e.hex)!) == d)
        }
    }

    static func checkInvalid(_ v: Vector) throws {
        for i in v.invalid ?? [] {
            let error = #expect(throws: CoreError.self, "\(v.name): must be refused") { _ = try i.delta.build() }
            #expect(error?.code.rawValue == i.code, "\(v.name): \(error?.description ?? "-")")
        }
    }
}

// MARK: the file format

struct Vector: Decodable {
    var format: Int
    var name: String
    var description: String
    var schema: SchemaJSON?
    var deltas: [DeltaJSON]?
    var invalid: [Invalid]?
    var expect: Expect?
    var encodings: [ValueEncoding]?
    var delta_encodings: [DeltaEncoding]?

    struct Invalid: Decodable {
        var delta: DeltaJSON
        var code: String
    }
    struct Expect: Decodable {
        var registers: [String: RegisterJSON]
        var refused: [Refusal]
        var state_hex: String?
    }
    struct ValueEncoding: Decodable {
        var value: ValueJSON
        var hex: String
    }
    struct DeltaEncoding: Decodable {
        var delta: DeltaJSON
        var hex: String
    }
}

struct Refusal: Decodable, Hashable {
    var origin: String
    var seq: UInt64
    var code: String
}

struct Bad: Error, CustomStringConvertible {
    var description: String
}

struct SchemaJSON: Decodable {
    struct Rule: Decodable {
        var domain: String
        var group: String?
        var register: String?
        var type: String?
        var policy: String?
        var origin: String?
    }
    var registers: [Rule]
    var owners: [Rule]

    func build() throws -> Schema {
        func selector(_ r: Rule) throws -> RegisterSelector {
            RegisterSelector(domain: try QDomainPattern(r.domain), group: r.group, register: r.register)
        }
        return Schema(
            registers: try registers.map { r in
                let type = try r.type.map { t in try ValueType(rawValue: t) ?? { throw Bad(description: "type \(t)") }() }
                let policy = try Policy(rawValue: r.policy ?? "lww") ?? { throw Bad(description: "policy \(r.policy!)") }()
                return (try selector(r), RegisterSpec(type: type, policy: policy))
            },
            owners: try owners.map { r in (try selector(r), try parseOrigin(r.origin ?? "")) }
        )
    }
}

func parseOrigin(_ hex: String) throws -> Origin {
    guard let o = Origin(hex: hex) else { throw Bad(description: "origin \"\(hex)\" is not 16 hex digits") }
    return o
}

struct ValueJSON: Decodable {
    var null: Bool?
    var bool: Bool?
    var int: String?
    var float: String?
    var string: String?
    var bytes: String?

    func build() throws -> Value {
        if null == true { return .null }
        if let bool { return .bool(bool) }
        if let int { return .int(try Int64(int) ?? { throw Bad(description: "int \(int)") }()) }
        if let float, let bits = UInt64(float, radix: 16) { return .float(Double(bitPattern: bits)) }
        if let string { return .string(string) }
        if let bytes, let b = [UInt8](hex: bytes) { return .bytes(b) }
        throw Bad(description: "value has no known type")
    }
}

struct DeltaJSON: Decodable {
    struct WriteJSON: Decodable {
        var register: String
        var kind: String
        var value: ValueJSON
    }
    var origin: String
    var seq: UInt64
    var hlc: [UInt64]
    var group: String
    var writes: [WriteJSON]

    func build() throws -> Delta {
        let writes = try self.writes.map { w in
            Write(w.register, try WriteKind(name: w.kind) ?? { throw Bad(description: "kind \(w.kind)") }(), try w.value.build())
        }
        return try Delta(origin: try parseOrigin(self.origin), seq: seq, hlc: HLCTimestamp(ms: hlc[0], counter: UInt16(hlc[1])),
                         group: try QGroupName(group), writes: writes)
    }
}

struct RegisterJSON: Decodable {
    struct Side: Decodable {
        var value: ValueJSON
        var from: String
    }
    var policy: String
    var value: ValueJSON?
    var from: String?
    var reported: Side?
    var desired: Side?
    var pending: ValueJSON?

    /// Resolves "from": "<origin>#<seq>" to that delta's stamp.
    static func versioned(_ value: ValueJSON, _ from: String, _ deltas: [Delta]) throws -> Versioned {
        let parts = from.split(separator: "#")
        let o = try parseOrigin(String(parts[0])), seq = UInt64(parts[1])
        guard let d = deltas.first(where: { $0.origin == o && $0.seq == seq }) else { throw Bad(description: "no delta \(from)") }
        return Versioned(try value.build(), d.stamp)
    }

    func build(_ deltas: [Delta]) throws -> RegisterState {
        switch policy {
        case "lww":
            return .lww(try Self.versioned(value!, from!, deltas))
        case "device":
            return .device(reported: try reported.map { try Self.versioned($0.value, $0.from, deltas) },
                           desired: try desired.map { try Self.versioned($0.value, $0.from, deltas) })
        default:
            throw Bad(description: "policy \(policy)")
        }
    }
}
