import FoundationEssentials
import SpookCore
import SwiftProtobuf

/// The generated Sparkplug B payload types (sparkplug_b.pb.swift).
package typealias SparkplugPayload = Org_Eclipse_Tahu_Protobuf_Payload
package typealias SparkplugMetric = Org_Eclipse_Tahu_Protobuf_Payload.Metric

/// A Sparkplug topic: `spBv1.0/GROUP/TYPE/EDGE_NODE[/DEVICE]` (Sparkplug 3.0 §4.1).
package struct SparkplugTopic: Hashable, Sendable, CustomStringConvertible {
    package enum Kind: String, Sendable, CaseIterable {
        case nbirth = "NBIRTH", ndeath = "NDEATH", dbirth = "DBIRTH", ddeath = "DDEATH"
        case ndata = "NDATA", ddata = "DDATA", ncmd = "NCMD", dcmd = "DCMD"
        /// Messages about a device carry its id as a fifth level.
        var isDevice: Bool { [.dbirth, .ddeath, .ddata, .dcmd].contains(self) }
    }

    package static let namespace = "spBv1.0"
    package var group: String
    package var kind: Kind
    package var node: String
    package var device: String?

    package init(group: String, kind: Kind, node: String, device: String? = nil) {
        self.group = group
        self.kind = kind
        self.node = node
        self.device = device
    }

    /// Parses a topic; nil for one that is not a Sparkplug B node or device topic.
    package init?(_ text: String) {
        let levels = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard levels.count >= 4, levels[0] == SparkplugTopic.namespace, let kind = Kind(rawValue: levels[2]),
              levels.count == (kind.isDevice ? 5 : 4), !levels.contains(where: \.isEmpty)
        else { return nil }
        self.init(group: levels[1], kind: kind, node: levels[3], device: kind.isDevice ? levels[4] : nil)
    }

    package var description: String {
        "\(SparkplugTopic.namespace)/\(group)/\(kind.rawValue)/\(node)" + (device.map { "/\($0)" } ?? "")
    }
}

/// The Sparkplug datatypes registers map to (and the only ones a command may use for them).
package enum SparkplugType: UInt32, Sendable, CustomStringConvertible {
    case int64 = 4, double = 10, boolean = 11, string = 12, bytes = 17

    package init(_ type: ValueType) {
        switch type {
        case .bool: self = .boolean
        case .int: self = .int64
        case .float: self = .double
        case .string, .null: self = .string
        case .bytes: self = .bytes
        }
    }

    package var description: String {
        switch self {
        case .int64: "Int64"
        case .double: "Double"
        case .boolean: "Boolean"
        case .string: "String"
        case .bytes: "Bytes"
        }
    }
}

/// Why a command's metric was refused; the raw value is the metric label.
package struct SparkplugRefusal: Error, CustomStringConvertible {
    package var reason: String
    package var description: String
    package init(_ reason: String, _ description: String) {
        self.reason = reason
        self.description = description
    }
}

/// Well-known metric names of the edge node itself.
package enum NodeMetricName {
    package static let bdSeq = "bdSeq"
    package static let rebirth = "Node Control/Rebirth"
    /// Rebirth's alias; device metrics get aliases from 2 up.
    package static let rebirthAlias: UInt64 = 1
}

extension SparkplugMetric {
    /// A metric carrying `value` (null: `is_null`) as `type`; `value` must be of `type`'s kind or null.
    package init(name: String?, alias: UInt64?, type: SparkplugType, value: Value?, timestampMs: UInt64, historical: Bool = false) {
        self.init()
        if let name { self.name = name }
        if let alias { self.alias = alias }
        self.timestamp = timestampMs
        self.datatype = type.rawValue
        if historical { isHistorical = true }
        switch value {
        case .bool(let b)?: booleanValue = b
        case .int(let i)?: longValue = UInt64(bitPattern: i)
        case .float(let d)?: doubleValue = d
        case .string(let s)?: stringValue = s
        case .bytes(let b)?: bytesValue = Data(b)
        case .null?, nil: isNull = true
        }
    }

    /// The value a command's metric carries, read as `expected` (the
    /// datatype the metric was born with). A datatype other than the birth's,
    /// or a value field that does not match it, is refused; so is null.
    package func commandValue(expected: SparkplugType) throws(SparkplugRefusal) -> Value {
        let label = hasName ? "\"\(name)\"" : "alias \(alias)"
        if hasDatatype, datatype != expected.rawValue {
            throw SparkplugRefusal("datatype", "metric \(label) has datatype \(datatype), the metric was born \(expected) (\(expected.rawValue))")
        }
        if isNull { throw SparkplugRefusal("value", "metric \(label) is null; a command must carry a value") }
        switch (expected, value) {
        case (.boolean, .booleanValue(let b)?): return .bool(b)
        case (.int64, .longValue(let u)?): return .int(Int64(bitPattern: u))
        case (.double, .doubleValue(let d)?): return .float(d)
        case (.string, .stringValue(let s)?): return .string(s)
        case (.bytes, .bytesValue(let d)?): return .bytes([UInt8](d))
        case (_, nil): throw SparkplugRefusal("value", "metric \(label) carries no value")
        default: throw SparkplugRefusal("datatype", "metric \(label) carries a value field other than the \(expected) it was born with")
        }
    }
}

extension SparkplugPayload {
    /// A payload of `metrics`, stamped `timestampMs`, with `seq` unless it is an NDEATH.
    package init(timestampMs: UInt64, seq: UInt8?, metrics: [SparkplugMetric]) {
        self.init()
        timestamp = timestampMs
        if let seq { self.seq = UInt64(seq) }
        self.metrics = metrics
    }

    /// The NBIRTH's and NDEATH's `bdSeq` metric (Int64, no alias).
    package static func bdSeqMetric(_ bdSeq: UInt8, timestampMs: UInt64) -> SparkplugMetric {
        SparkplugMetric(name: NodeMetricName.bdSeq, alias: nil, type: .int64, value: .int(Int64(bdSeq)), timestampMs: timestampMs)
    }

    /// The encoded bytes (encoding a message we built cannot fail).
    package var bytes: [UInt8] {
        (try? serializedBytes()) ?? []
    }
}
