#if canImport(Glibc)
import Glibc
#endif
import CMosquitto
import NIOConcurrencyHelpers
import SpookNode
import SpookSparkplug
import SwiftProtobuf

/// The Sparkplug DDATA path: the gateway load of `DeviceBench.gatewayLoad`
/// (100 Modbus registers changing at 10 Hz, polled at 10 Hz) with `[mqtt]`
/// publishing them to a local mosquitto, against the same load without it.
enum SparkplugBench {
    /// A subscriber on libmosquitto that learns the clock metric's alias from
    /// DBIRTH and, for each live DDATA that carries it, records now − the
    /// device's clock (ms, low 32 bits).
    final class Consumer: @unchecked Sendable {
        let mosq: OpaquePointer
        let state = NIOLockedValueBox<(alias: UInt64?, latencies: [Double], recording: Bool)>((nil, [], false))

        init(port: Int) throws {
            mosquitto_lib_init()
            guard let m = mosquitto_new("bench-consumer", true, nil) else { throw APIClientError("mosquitto_new failed") }
            mosq = m
            mosquitto_user_data_set(m, Unmanaged.passUnretained(self).toOpaque())
            mosquitto_message_callback_set(m) { _, obj, message in
                guard let obj, let message else { return }
                let c = Unmanaged<Consumer>.fromOpaque(obj).takeUnretainedValue()
                let bytes = Array(UnsafeRawBufferPointer(start: message.pointee.payload, count: Int(message.pointee.payloadlen)))
                c.received(String(cString: message.pointee.topic), bytes)
            }
            guard mosquitto_connect(m, "127.0.0.1", Int32(port), 60) == 0,
                  mosquitto_subscribe(m, nil, "spBv1.0/bench/+/gw/#", 0) == 0, mosquitto_loop_start(m) == 0
            else { throw APIClientError("cannot subscribe at 127.0.0.1:\(port)") }
        }

        func received(_ topic: String, _ bytes: [UInt8]) {
            guard let payload = try? SparkplugPayload(serializedBytes: bytes) else { return }
            let nowLow = SystemClock().nowMs() & 0xFFFF_FFFF
            state.withLockedValue { s in
                if topic.contains("/DBIRTH/"), let m = payload.metrics.first(where: { $0.name == "clock" }) { s.alias = m.alias }
                guard topic.contains("/DDATA/"), s.recording, let alias = s.alias else { return }
                for m in payload.metrics where m.alias == alias && !m.isHistorical {
                    s.latencies.append(Double((nowLow &- (m.longValue & 0xFFFF_FFFF)) & 0xFFFF_FFFF))
                }
            }
        }

        /// Records for `seconds` after a second of warm-up; the latencies seen.
        func measure(seconds: Double) -> [Double] {
            usleep(1_000_000)
            state.withLockedValue { $0.recording = true }
            usleep(UInt32(seconds * 1e6))
            return state.withLockedValue { s in
                s.recording = false
                return s.latencies
            }
        }

        deinit {
            mosquitto_disconnect(mosq)
            mosquitto_loop_stop(mosq, false)
            mosquitto_destroy(mosq)
        }
    }

    static func run(dir: String, binaries: String, edgeBinary: String, tools: String, seconds: Double) throws -> [Row] {
        let port = DeviceBench.freePort()
        let user = getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "root"
        LinkBench.write("\(dir)/mosquitto.conf", "user \(user)\nlistener \(port) 127.0.0.1\nallow_anonymous true\n")
        let broker = try LinkBench.Process("/usr/sbin/mosquitto", ["-c", "\(dir)/mosquitto.conf"])
        defer { broker.stop() }
        var consumer: Consumer?
        for _ in 0..<100 where consumer == nil {
            consumer = try? Consumer(port: port)
            if consumer == nil { usleep(50_000) }
        }
        guard let consumer else { throw APIClientError("mosquitto did not start on \(port)") }
        let mqtt = "[mqtt]\nbroker = \"tcp://127.0.0.1:\(port)\"\ngroup_id = \"bench\"\nedge_node_id = \"gw\"\ndomain = \"bench.dev\"\n"
        mkdir("\(dir)/with", 0o700)
        mkdir("\(dir)/without", 0o700)
        let without = try DeviceBench.gatewayLoad(dir: "\(dir)/without", binaries: binaries, edgeBinary: edgeBinary, tools: tools, seconds: seconds)
        let with = try DeviceBench.gatewayLoad(dir: "\(dir)/with", binaries: binaries, edgeBinary: edgeBinary, tools: tools, seconds: seconds, edgeExtra: mqtt) { _, s in
            consumer.measure(seconds: s)
        }
        return [
            Row(name: "Sparkplug (100 regs at 10 Hz → MQTT): agent CPU", value: with.cpuPercent, unit: "%", baseline: "same load, no [mqtt]", baselineValue: without.cpuPercent),
            Row(name: "Sparkplug: agent RSS", value: with.rssMiB, unit: "MiB", baseline: "same load, no [mqtt]", baselineValue: without.rssMiB),
            Row(name: "Sparkplug: device change→consumer p50 (\(with.latencies.count) changes)", value: percentile(with.latencies, 0.5), unit: "ms", baseline: "poll interval (ms)", baselineValue: 100),
            Row(name: "Sparkplug: device change→consumer p99", value: percentile(with.latencies, 0.99), unit: "ms", baseline: "poll interval (ms)", baselineValue: 100),
        ]
    }
}
