#if canImport(Glibc)
import Glibc
#endif
import CFirmwareBridge
import SpookCore
import SpookDevices
import Testing

/// The vectors the C library's own tests read (firmware-bridge/tests/vectors.txt),
/// computed by an independent Python encoder.
func firmwareVectors() throws -> [[String]] {
    let path = #filePath.split(separator: "/").dropLast(3).joined(separator: "/")
    guard let f = fopen("/" + path + "/firmware-bridge/tests/vectors.txt", "r") else { throw DeviceError("vectors.txt not found") }
    defer { fclose(f) }
    var lines: [[String]] = []
    var buf = [CChar](repeating: 0, count: 8192)
    while fgets(&buf, Int32(buf.count), f) != nil {
        let line = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        if let first = fields.first, !first.hasPrefix("#") { lines.append(fields) }
    }
    return lines
}

func unhex(_ s: String) -> [UInt8] {
    guard s != "-" else { return [] }
    let u = Array(s.utf8)
    return stride(from: 0, to: u.count, by: 2).map { UInt8(String(decoding: u[$0..<($0 + 2)], as: UTF8.self), radix: 16)! }
}

@Suite struct FirmwareCodecTests {
    @Test func sharedVectors() throws {
        let vectors = try firmwareVectors()
        #expect(vectors.count >= 20)
        for v in vectors {
            switch v[0] {
            case "crc16":
                #expect(FirmwareCodec.crc16(unhex(v[1])) == UInt16(v[2], radix: 16)!, "crc16 \(v[1].prefix(20))")
            case "cobs":
                #expect(FirmwareCodec.cobsEncode(unhex(v[1])) == unhex(v[2]), "cobs encode \(v[1].prefix(20))")
                #expect(FirmwareCodec.cobsDecode(unhex(v[2])[...]) == unhex(v[1]), "cobs decode \(v[2].prefix(20))")
            case "frame":
                let type = FirmwarePacketType(rawValue: UInt8(v[1], radix: 16)!)!
                let packet = FirmwarePacket(type, seq: UInt8(v[2], radix: 16)!, ack: UInt8(v[3], radix: 16)!, payload: unhex(v[4]))
                #expect(FirmwareCodec.frame(packet) == unhex(v[5]), "frame \(v[1...4])")
                var decoder = FirmwareFrameDecoder()
                #expect(decoder.feed(unhex(v[5])) == [packet])
            default:
                Issue.record("unknown vector kind \(v[0])")
            }
        }
    }

    @Test func decoderSurvivesNoiseAndCountsIt() {
        var decoder = FirmwareFrameDecoder()
        let good = FirmwareCodec.frame(FirmwarePacket(.report, seq: 3, ack: 1, payload: [0, 0, 0, 0, 9]))
        var corrupted = good
        corrupted[2] ^= 0x10 // the seq byte: still valid COBS, wrong CRC
        var rng = SplitMix64(seed: 7)
        let garbage = (0..<3000).map { _ in UInt8(truncatingIfNeeded: rng.next() | 1) }
        let packets = decoder.feed(corrupted + garbage + [0] + [0x02, 0x01, 0] + good)
        #expect(packets == [FirmwarePacket(.report, seq: 3, ack: 1, payload: [0, 0, 0, 0, 9])])
        #expect(decoder.badCRC == 1)
        #expect(decoder.badFrames == 2, "the overlong garbage and the truncated frame")
    }

    @Test func valueTypesRoundTrip() {
        #expect(FirmwareValueType.i16.value(0xFFFF_FFD6) == .int(-42))
        #expect(FirmwareValueType.i16.raw(.int(-42)) == 0xFFFF_FFD6)
        #expect(FirmwareValueType.i16.raw(.int(40000)) == nil)
        #expect(FirmwareValueType.u16.raw(.int(-1)) == nil)
        #expect(FirmwareValueType.f32.value(Float(21.5).bitPattern) == .float(21.5))
        #expect(FirmwareValueType.bool.raw(.bool(true)) == 1)
        #expect(FirmwareValueType.bool.raw(.string("yes")) == nil)
        #expect(FirmwareValueType.u32.value(0xFFFF_FFFF) == .int(4_294_967_295))
    }
}

/// The real C device (sfb.c) wired to the Swift host in memory, with a
/// shared fake clock and seeded line noise: deterministic, no threads.
final class Bench: @unchecked Sendable {
    var now: UInt32 = 1_000
    var toHost: [UInt8] = []
    var toDevice: [UInt8] = []
    var rng: SplitMix64
    var noise: Double
    var writes: [(UInt8, UInt32)] = []
    // Stable addresses: sfb_device keeps a pointer to its config, and the
    // write callback reaches the device while sfb_input is running.
    let device = UnsafeMutablePointer<sfb_device>.allocate(capacity: 1)
    let config = UnsafeMutablePointer<sfb_config>.allocate(capacity: 1)
    let registers: UnsafeMutablePointer<sfb_register>
    var names: [UnsafeMutablePointer<CChar>] = []

    init(seed: UInt64, noise: Double) {
        rng = SplitMix64(seed: seed)
        self.noise = noise
        let specs: [(String, Int32, Int32)] = [("counter", Int32(SFB_U32), Int32(SFB_READ)), ("setpoint", Int32(SFB_I16), Int32(SFB_READ_WRITE)),
                                               ("temperature", Int32(SFB_F32), Int32(SFB_READ))]
        registers = .allocate(capacity: specs.count)
        for (i, s) in specs.enumerated() {
            let n = strdup(s.0)!
            names.append(n)
            registers[i] = sfb_register(name: n, type: UInt8(s.1), access: UInt8(s.2))
        }
        let name = strdup("pump")!, serial = strdup("SN0042")!
        names += [name, serial]
        let me = Unmanaged.passUnretained(self).toOpaque()
        config.initialize(to: sfb_config(
            name: name, serial: serial, registers: registers, count: UInt8(specs.count),
            write: { ctx, bytes, len in
                let b = Unmanaged<Bench>.fromOpaque(ctx!).takeUnretainedValue()
                b.toHost += b.corrupt(Array(UnsafeBufferPointer(start: bytes, count: len)))
                return len
            },
            now_ms: { ctx in Unmanaged<Bench>.fromOpaque(ctx!).takeUnretainedValue().now },
            on_write: { ctx, id, raw in
                let b = Unmanaged<Bench>.fromOpaque(ctx!).takeUnretainedValue()
                b.writes.append((id, raw))
                sfb_set(b.device, id, raw)
                return 0
            },
            ctx: me))
        device.initialize(to: sfb_device())
        let rc = sfb_init(device, config)
        precondition(rc == SFB_OK, "sfb_init: \(String(cString: sfb_strerror(rc)))")
    }

    deinit {
        registers.deallocate()
        device.deallocate()
        config.deallocate()
        for n in names { free(n) }
    }

    func corrupt(_ bytes: [UInt8]) -> [UInt8] {
        guard noise > 0 else { return bytes }
        var out: [UInt8] = []
        for b in bytes {
            if Double(rng.next() >> 11) / Double(1 << 53) < noise {
                switch rng.next() % 3 {
                case 0: continue
                case 1: out.append(b ^ UInt8(1 << (rng.next() % 8)))
                default: out += [UInt8(truncatingIfNeeded: rng.next()), b]
                }
            } else {
                out.append(b)
            }
        }
        return out
    }
}

@Suite struct FirmwareSessionTests {
    /// Runs host and device until `done` or a step limit; returns every
    /// committed report in order, as the agent would commit them.
    func run(_ bench: Bench, _ host: inout FirmwareHost, steps: Int, committed: inout [(String, Value)],
             events: inout [FirmwareHost.Event], each: (Int, Bench, inout FirmwareHost) -> Void) {
        bench.toDevice += host.open(nowMs: UInt64(bench.now))
        var current: [String: Value] = [:]
        for step in 0..<steps {
            each(step, bench, &host)
            let incoming = bench.toHost
            bench.toHost = []
            let (evs, out) = host.receive(incoming, nowMs: UInt64(bench.now))
            bench.toDevice += bench.corrupt(out)
            let polled = host.poll(nowMs: UInt64(bench.now))
            bench.toDevice += bench.corrupt(polled.out)
            for e in evs + polled.events {
                events.append(e)
                switch e {
                case .described: bench.toDevice += bench.corrupt(host.welcome(nowMs: UInt64(bench.now)))
                case .reported(let values):
                    // As the agent does: a report that repeats the current value makes no delta.
                    for (r, v) in values where current[r.name] != v {
                        current[r.name] = v
                        committed.append((r.name, v))
                    }
                    bench.toDevice += bench.corrupt(host.acknowledge(nowMs: UInt64(bench.now)))
                default: break
                }
            }
            let down = bench.toDevice
            bench.toDevice = []
            down.withUnsafeBufferPointer { sfb_input(bench.device, $0.baseAddress, $0.count) }
            sfb_poll(bench.device)
            bench.now += 1
        }
    }

    @Test func cleanLineDescribesReportsAndWrites() throws {
        let bench = Bench(seed: 1, noise: 0)
        var host = FirmwareHost()
        var committed: [(String, Value)] = []
        var events: [FirmwareHost.Event] = []
        run(bench, &host, steps: 400, committed: &committed, events: &events) { step, bench, host in
            if step == 50 { sfb_set(bench.device, 0, 7) }
            if step == 100, let r = host.descriptor?.register(named: "setpoint") { host.write(id: r.id, raw: FirmwareValueType.i16.raw(.int(-5))!) }
        }
        let described = events.compactMap { if case .described(let d) = $0 { d } else { nil } }
        #expect(described.count == 1)
        #expect(described.first?.name == "pump" && described.first?.serial == "SN0042")
        #expect(described.first?.registers.map(\.name) == ["counter", "setpoint", "temperature"])
        #expect(described.first?.registers.map(\.writable) == [false, true, false])
        #expect(host.online)
        #expect(bench.writes.count == 1 && bench.writes.first?.0 == 1 && Int32(bitPattern: bench.writes.first!.1) == -5)
        #expect(committed.last { $0.0 == "counter" }?.1 == .int(7))
        #expect(committed.last { $0.0 == "setpoint" }?.1 == .int(-5), "the write is confirmed by a report")
        #expect(host.retransmits == 0 && host.duplicates == 0 && bench.device.pointee.stats.retransmits == 0)
    }

    /// With 3 % of bytes dropped, flipped or padded with garbage in both
    /// directions, every counter value arrives exactly once, in order.
    @Test(arguments: [11, 12, 13] as [UInt64])
    func noisyLineLosesAndDuplicatesNothing(seed: UInt64) throws {
        let bench = Bench(seed: seed, noise: 0.03)
        var host = FirmwareHost()
        var committed: [(String, Value)] = []
        var events: [FirmwareHost.Event] = []
        var counter: UInt32 = 0
        run(bench, &host, steps: 60_000, committed: &committed, events: &events) { _, bench, _ in
            if counter < 300 && sfb_idle(bench.device) != 0 {
                counter += 1
                sfb_set(bench.device, 0, counter)
            }
        }
        let seen = committed.filter { $0.0 == "counter" }.map(\.1)
        #expect(counter == 300)
        #expect(seen == [Value.int(0)] + (1...300).map { Value.int(Int64($0)) }, "got \(seen.count) values")
        #expect(host.badCRC + host.badFrames > 0, "the noise reached the host")
        #expect(bench.device.pointee.stats.rx_bad_crc + bench.device.pointee.stats.rx_bad_frame > 0, "the noise reached the device")
        #expect(host.duplicates + Int(bench.device.pointee.stats.rx_duplicates) > 0, "lost acks caused retransmissions that were recognised")
    }

    @Test func silenceMeansLostThenResync() {
        let bench = Bench(seed: 2, noise: 0)
        var host = FirmwareHost()
        var committed: [(String, Value)] = []
        var events: [FirmwareHost.Event] = []
        var unplugged = false
        run(bench, &host, steps: 8_000, committed: &committed, events: &events) { step, bench, _ in
            if step == 200 { unplugged = true }
            if step == 4_000 { unplugged = false }
            if unplugged {
                bench.toHost = []
                bench.toDevice = []
            }
        }
        #expect(events.filter { if case .lost = $0 { true } else { false } } == [.lost("heard nothing for 3000 ms")])
        #expect(events.filter { if case .described = $0 { true } else { false } }.count == 2, "described again after the line returned")
        #expect(host.online)
    }
}
