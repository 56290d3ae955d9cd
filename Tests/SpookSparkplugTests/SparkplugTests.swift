import SpookCore
import SpookNode
import SwiftProtobuf
@testable import SpookSparkplug
import Testing

@Suite struct SparkplugTests {
    @Test func topicsParseAndPrint() throws {
        let t = try #require(SparkplugTopic("spBv1.0/plant/DCMD/gw-17/pump7"))
        #expect(t == SparkplugTopic(group: "plant", kind: .dcmd, node: "gw-17", device: "pump7"))
        #expect(t.description == "spBv1.0/plant/DCMD/gw-17/pump7")
        #expect(SparkplugTopic("spBv1.0/plant/NCMD/gw-17")?.device == nil)
        // A node message with a device level, a device message without, an unknown type, another namespace, empty levels.
        for bad in ["spBv1.0/plant/NCMD/gw-17/x", "spBv1.0/plant/DCMD/gw-17", "spBv1.0/plant/XCMD/gw-17", "spAv1.0/plant/NCMD/gw-17", "spBv1.0//NCMD/gw-17", ""] {
            #expect(SparkplugTopic(bad) == nil, "\(bad)")
        }
    }

    /// What we encode decodes to the same metric, for every type; the
    /// bytes of one metric are checked against the protobuf wire format by
    /// hand (field numbers of the Sparkplug 3.0 specification).
    @Test func metricsRoundTripAndUseTheSpecificationsFieldNumbers() throws {
        let values: [(SparkplugType, Value)] = [(.int64, .int(-5)), (.double, .float(2.5)), (.boolean, .bool(true)), (.string, .string("ok")), (.bytes, .bytes([1, 2]))]
        for (type, value) in values {
            let m = SparkplugMetric(name: "x", alias: 7, type: type, value: value, timestampMs: 1_000)
            let payload = SparkplugPayload(timestampMs: 2_000, seq: 255, metrics: [m])
            let back = try SparkplugPayload(serializedBytes: payload.bytes)
            #expect(back.seq == 255 && back.timestamp == 2_000)
            #expect(try back.metrics[0].commandValue(expected: type) == value)
        }
        let m = SparkplugMetric(name: nil, alias: 3, type: .boolean, value: .bool(true), timestampMs: 1, historical: true)
        // alias (2) = 3, timestamp (3) = 1, datatype (4) = 11, is_historical (5) = true, boolean_value (14) = true.
        #expect(try m.serializedBytes() as [UInt8] == [0x10, 3, 0x18, 1, 0x20, 11, 0x28, 1, 0x70, 1])
        let null = SparkplugMetric(name: "n", alias: nil, type: .string, value: nil, timestampMs: 0)
        #expect(null.isNull && null.value == nil)
        // NDEATH: no seq, the bdSeq metric only.
        let death = SparkplugPayload(timestampMs: 5, seq: nil, metrics: [SparkplugPayload.bdSeqMetric(9, timestampMs: 5)])
        #expect(!death.hasSeq && death.metrics[0].name == "bdSeq" && death.metrics[0].longValue == 9 && death.metrics[0].datatype == 4)
    }

    /// A command's metric must carry the datatype and value field it was born with.
    @Test func commandValuesAreCheckedAgainstTheBirthDatatype() throws {
        var m = SparkplugMetric(name: "speed", alias: nil, type: .int64, value: .int(1500), timestampMs: 0)
        #expect(try m.commandValue(expected: .int64) == .int(1500))
        #expect(throws: SparkplugRefusal.self) { try m.commandValue(expected: .double) }
        m.datatype = 3  // Int32: not what speed was born with
        let wrongType = #expect(throws: SparkplugRefusal.self) { try m.commandValue(expected: .int64) }
        #expect(wrongType?.reason == "datatype" && wrongType?.description.contains("born Int64") == true)
        var noType = SparkplugMetric()
        noType.name = "speed"
        noType.doubleValue = 1
        #expect((#expect(throws: SparkplugRefusal.self) { try noType.commandValue(expected: .int64) })?.reason == "datatype")
        let null = SparkplugMetric(name: "speed", alias: nil, type: .int64, value: nil, timestampMs: 0)
        #expect((#expect(throws: SparkplugRefusal.self) { try null.commandValue(expected: .int64) })?.reason == "value")
        #expect(throws: (any Error).self) { try SparkplugPayload(serializedBytes: [0xff, 0xff, 0xff] as [UInt8]) }
    }

    static let head = "[node]\nname = \"gw\"\nkey = \"/tmp/k\"\ndata = \"/tmp/d\"\n[api]\nsocket = \"/tmp/s\"\n"
        + "[[upstream]]\nname = \"u\"\nurl = \"unix:///tmp/l\"\nkey = \"\(String(repeating: "ab", count: 32))\"\n"  // lines 1-10

    static func refusal(_ text: String) -> String {
        do { _ = try EdgeConfig.parse(file: "e.toml", text: head + text) } catch { return "\(error)" }
        return "accepted"
    }

    @Test func mqttConfigIsReadAndChecked() throws {
        let c = try EdgeConfig.parse(file: "e.toml", text: Self.head + "[mqtt]\nbroker = \"tcp://127.0.0.1:1883\"\ngroup_id = \"plant\"\ndomain = \"site1.line3\"\nwrite = [\"site1.*\"]\n")
        let m = try #require(c.node.mqtt)
        #expect(m.host == "127.0.0.1" && m.port == 1883 && !m.tls && m.groupID == "plant" && m.edgeNodeID == "gw" && m.clientID == "gw")
        #expect(m.domain.description == "site1.line3" && m.write.map(\.description) == ["site1.*"] && m.keepaliveS == 30 && m.inflightMax == 256)
        // Lines 11 on: [mqtt] at 11, broker 12, group_id 13, domain 14.
        #expect(Self.refusal("[mqtt]\nbroker = \"http://x:1\"\ngroup_id = \"p\"\ndomain = \"a\"\n").hasPrefix("e.toml:12:1: \"broker\" = \"http://x:1\" must be tcp://HOST:PORT or tls://HOST:PORT"))
        #expect(Self.refusal("[mqtt]\nbroker = \"tcp://x:1\"\ngroup_id = \"a/b\"\ndomain = \"a\"\n").hasPrefix("e.toml:13:1: \"group_id\" = \"a/b\" must be 1 to 64 bytes without \"/\""))
        #expect(Self.refusal("[mqtt]\nbroker = \"tls://x:1\"\ngroup_id = \"p\"\ndomain = \"a\"\n").contains("a tls:// broker needs \"ca\""))
        #expect(Self.refusal("[mqtt]\nbroker = \"tcp://x:1\"\ngroup_id = \"p\"\n").contains("[mqtt] needs \"domain\""))
        #expect(Self.refusal("[mqtt]\nbroker = \"tcp://x:1\"\ngroup_id = \"p\"\ndomain = \"a\"\nqos = 2\n").contains("unknown key \"qos\" in [mqtt]"))
        let daemon = "[node]\nname = \"d\"\nkey = \"/tmp/k\"\ndata = \"/tmp/d\"\n[api]\nsocket = \"/tmp/s\"\n[[listen]]\nurl = \"tcp://127.0.0.1:1\"\n[mqtt]\nbroker = \"tcp://x:1\"\n"
        #expect(throws: (any Error).self) { try DaemonConfig.parse(file: "d.toml", text: daemon) }
    }
}
