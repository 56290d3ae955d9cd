import Foundation
import SpookCore
import Testing
import WasmKit

/// The WebAssembly core (wasm/spook_core.c, built by `make -C wasm`) run
/// under WasmKit: for every vector, the same deltas give byte for byte the
/// Swift core's collapsed state, and the same refusals.
@Suite struct WasmCoreTests {
    static let wasm = "/" + #filePath.split(separator: "/").dropLast(3).joined(separator: "/") + "/wasm/build/spook_core.wasm"

    /// One instance of the module: a replica.
    final class Core {
        let instance: Instance
        let memory: Memory
        let io: UInt32

        init() throws {
            guard let bytes = FileManager.default.contents(atPath: WasmCoreTests.wasm) else {
                throw Bad(description: "\(WasmCoreTests.wasm) is missing: `make -C wasm` builds it (scripts/test does)")
            }
            let module = try parseWasm(bytes: [UInt8](bytes))
            instance = try module.instantiate(store: Store(engine: Engine()))
            memory = try #require(instance.exports[memory: "memory"])
            io = try Core.u32(instance.exports[function: "sc_io"]!())
        }

        static func u32(_ results: [WasmKit.Value]) throws -> UInt32 {
            guard case .i32(let v)? = results.first else { throw Bad(description: "expected one i32 result, got \(results)") }
            return v
        }

        func call(_ name: String, _ bytes: [UInt8]) throws -> UInt32 {
            memory.withUnsafeMutableBufferPointer(offset: UInt(io), count: bytes.count) { $0.copyBytes(from: bytes) }
            return try Core.u32(instance.exports[function: name]!([.i32(io), .i32(UInt32(bytes.count))]))
        }

        func reset() throws { _ = try instance.exports[function: "sc_reset"]!() }

        func state() throws -> [UInt8] {
            let n = try Core.u32(instance.exports[function: "sc_state"]!([.i32(io), .i32(1 << 20)]))
            return memory.withUnsafeMutableBufferPointer(offset: UInt(io), count: Int(n)) { [UInt8]($0) }
        }
    }

    /// The core's code names (spook_core.h), as the Swift core's error codes.
    static let codes = ["ok", "malformed", "invalid-name", "duplicate-register", "empty-delta", "invalid-seq", "value-too-large",
                        "too-many-writes", "type-mismatch", "kind-not-allowed", "not-owner", "full", "invalid-pattern"]

    /// The schema format of docs/browser.md.
    static func encode(_ s: SchemaJSON) -> [UInt8] {
        var w = ByteWriter()
        func text(_ t: String?) {
            w.write(UInt8(t?.utf8.count ?? 0))
            w.write(contentsOf: (t ?? "").utf8)
        }
        let tags: [String: UInt8] = ["null": 0, "bool": 1, "int": 2, "float": 3, "string": 4, "bytes": 5]
        w.write(UInt16(s.registers.count))
        for r in s.registers {
            text(r.domain); text(r.group); text(r.register)
            w.write(r.type.flatMap { tags[$0] } ?? 0xFF)
            w.write(UInt8(r.policy == "device" ? 1 : 0))
        }
        w.write(UInt16(s.owners.count))
        for o in s.owners {
            text(o.domain); text(o.group); text(o.register)
            w.write((try? parseOrigin(o.origin ?? ""))?.rawValue ?? 0)
        }
        return w.bytes
    }

    @Test(arguments: ConformanceTests.files)
    func vector(_ file: String) throws {
        let v = try JSONDecoder().decode(Vector.self, from: Data(contentsOf: ConformanceTests.directory.appendingPathComponent(file)))
        let core = try Core()
        for e in v.delta_encodings ?? [] {
            #expect(try core.call("sc_decode", e.delta.build().encoded) == 0, "\(v.name): the core decodes \(e.hex)")
        }
        guard v.expect != nil, let schemaJSON = v.schema else { return }
        let schema = try schemaJSON.build()
        let deltas = try v.deltas!.map { try $0.build() }
        var swift = CollapseState(schema: schema)
        var swiftRefused: [String] = [], wasmRefused: [String] = []
        try core.reset()
        #expect(try core.call("sc_schema_load", Self.encode(schemaJSON)) == 0)
        for d in deltas {
            do { try swift.apply(d) } catch let e as CoreError { swiftRefused.append("\(d.id) \(e.code.rawValue)") }
            let code = Int(try core.call("sc_apply", d.encoded))
            if code != 0 { wasmRefused.append("\(d.id) \(Self.codes[code])") }
        }
        #expect(wasmRefused == swiftRefused, "\(v.name): refusals")
        #expect(try core.state().hex == swift.canonicalBytes().hex, "\(v.name): the collapsed state's bytes")
    }
}
