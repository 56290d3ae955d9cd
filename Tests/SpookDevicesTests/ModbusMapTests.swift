import SpookCore
import SpookDevices
import Testing

@Suite struct ModbusMapTests {
    func point(_ name: String, _ table: ModbusPoint.Table, _ address: Int, _ type: ModbusPoint.DataType = .u16) -> ModbusPoint {
        ModbusPoint(name: name, table: table, address: address, type: type)
    }

    @Test func adjacentAddressesShareOneRead() {
        let reads = ModbusPlan.reads([
            point("a", .holding, 0), point("b", .holding, 1), point("c", .holding, 2, .f32),
            point("d", .holding, 10), point("e", .input, 0), point("f", .coil, 3), point("g", .coil, 4),
        ])
        #expect(reads.map { "\($0.table) \($0.address)+\($0.count)" } == ["coil 3+2", "input 0+1", "holding 0+4", "holding 10+1"])
        #expect(reads.first { $0.table == .holding && $0.address == 0 }?.points.map(\.name) == ["a", "b", "c"])
    }

    @Test func readsRespectTheProtocolLimits() {
        let registers = (0..<300).map { point("r\($0)", .holding, $0) }
        let reads = ModbusPlan.reads(registers)
        #expect(reads.map(\.count) == [125, 125, 50])
        #expect(reads.allSatisfy { $0.count <= ModbusPlan.registersMax })
        // A two-word value is never split across reads.
        let wide = (0..<100).map { point("w\($0)", .holding, $0 * 2, .u32) }
        let wideReads = ModbusPlan.reads(wide)
        #expect(wideReads.allSatisfy { r in r.points.allSatisfy { $0.address + 2 <= r.address + r.count } })
        #expect(wideReads.map(\.count) == [124, 76])
        let bits = (0..<4500).map { point("b\($0)", .discrete, $0) }
        #expect(ModbusPlan.reads(bits).map(\.count) == [2000, 2000, 500])
    }

    @Test func gapsAreNotReadAcross() {
        #expect(ModbusPlan.reads([point("a", .holding, 0), point("b", .holding, 2)]).count == 2)
    }

    @Test func decodeAndEncodeWithScaleAndWordOrder() {
        var p = ModbusPoint(name: "t", table: .holding, address: 0, type: .i16, scale: 0.1)
        #expect(p.decode([0xFF9C][...]) == .float(-10.0))
        #expect(p.encode(.float(-10.0)) == [0xFF9C])
        #expect(p.encode(.float(4000)) == nil, "40000 does not fit i16")
        #expect(p.decode([259][...]) == .float(25.9), "259 · 0.1 reads 25.9")
        #expect(p.encode(.float(25.9)) == [259])
        let f = ModbusPoint(name: "f", table: .holding, address: 0, type: .f32)
        let bits21_3 = Float(21.3).bitPattern
        #expect(f.decode([UInt16(bits21_3 >> 16), UInt16(bits21_3 & 0xFFFF)][...]) == .float(21.3), "an f32 reads as the number it prints as")
        p = ModbusPoint(name: "n", table: .holding, address: 0, type: .u32, wordOrder: .little)
        #expect(p.decode([0x5678, 0x1234][...]) == .int(0x1234_5678))
        #expect(p.encode(.int(0x1234_5678)) == [0x5678, 0x1234])
        p = ModbusPoint(name: "f", table: .input, address: 0, type: .f32)
        let bits = Float(3.5).bitPattern
        #expect(p.decode([UInt16(bits >> 16), UInt16(bits & 0xFFFF)][...]) == .float(3.5))
        p = ModbusPoint(name: "c", table: .coil, address: 0, type: .u16)
        #expect(p.type == .bool)
        #expect(p.decode([1][...]) == .bool(true))
        #expect(p.encode(.bool(false)) == [0])
        #expect(p.encode(.string("on")) == nil)
    }

    @Test func valuesComeFromTheirOffsets() {
        let reads = ModbusPlan.reads([point("a", .holding, 5), point("b", .holding, 6, .i32)])
        let values = ModbusPlan.values(reads[0], [7, 0xFFFF, 0xFFFE])
        #expect(values.map(\.1) == [.int(7), .int(-2)])
    }
}

@Suite struct AttachTests {
    @Test func udevEnvironmentAndMatching() throws {
        let d = try AttachedDevice(udev: ["ACTION": "add", "DEVNAME": "/dev/ttyUSB3", "SUBSYSTEM": "tty",
                                          "ID_VENDOR_ID": "0483", "ID_MODEL_ID": "5740", "ID_SERIAL_SHORT": "A1B2"])
        #expect(DeviceMatch(vendor: "483", product: "5740").matches(d))
        #expect(DeviceMatch(vendor: "0483", product: "5740", serial: "A1B2").matches(d))
        #expect(!DeviceMatch(vendor: "0483", product: "5740", serial: "other").matches(d))
        #expect(!DeviceMatch(vendor: "1a86").matches(d))
        #expect(throws: DeviceError.self) { try AttachedDevice(udev: ["ACTION": "add"]) }
    }

    @Test func groupTemplates() throws {
        let d = AttachedDevice(path: "/dev/ttyUSB0", subsystem: "tty", vendor: "0483", product: "5740", serial: "AB:12 x")
        #expect(try GroupTemplate.expand("site1.devices/{serial}", name: "pump", device: d).text == "site1.devices/ab-12-x")
        #expect(try GroupTemplate.expand("site1.devices/{name}-{vendor}", name: "pump", device: nil).text == "site1.devices/pump-unknown")
        #expect(throws: DeviceError.self) { try GroupTemplate.expand("no-domain-here", name: "x", device: d) }
    }

    @Test func wideTypesAndByteOrdersRoundTrip() {
        let cases: [(ModbusPoint, Value, [UInt16])] = [
            (ModbusPoint(name: "a", table: .holding, address: 0, type: .u64), .int(0x0102_0304_0506_0708), [0x0102, 0x0304, 0x0506, 0x0708]),
            (ModbusPoint(name: "b", table: .holding, address: 0, type: .i64, wordOrder: .little), .int(-2), [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF]),
            (ModbusPoint(name: "c", table: .holding, address: 0, type: .f64), .float(-2.5), [0xC004, 0, 0, 0]),
            (ModbusPoint(name: "d", table: .holding, address: 0, type: .u32, byteOrder: .little), .int(0x1122_3344), [0x2211, 0x4433]),
            (ModbusPoint(name: "e", table: .holding, address: 0, type: .u16, byteOrder: .little), .int(0x1234), [0x3412]),
        ]
        for (point, value, words) in cases {
            #expect(point.decode(words[...]) == value, "\(point.name) decodes \(words)")
            #expect(point.encode(value) == words, "\(point.name) encodes \(value)")
        }
        let huge = ModbusPoint(name: "h", table: .holding, address: 0, type: .u64)
        #expect(huge.decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF][...]) == .float(18_446_744_073_709_551_615), "above Int64.max a u64 is a float")
        #expect(huge.encode(.int(-1)) == nil, "a negative value does not fit a u64")
    }
}
