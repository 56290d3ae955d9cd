import SpookCore

/// `[mqtt]`: the agent as a Sparkplug B edge node (docs/mqtt.md). Read by
/// both daemons' config readers; only `spook-edge` runs it.
public struct MQTTSpec: Sendable, Hashable {
    public var host = "127.0.0.1"
    public var port = 1883
    public var tls = false
    /// For tls://: the CA certificate (PEM) the broker's must chain to, and an optional client certificate and key.
    public var ca: String?
    public var cert: String?
    public var key: String?
    public var clientID = ""
    public var username: String?
    /// A file holding the password (first line), read at each connect; never the password itself in the config.
    public var passwordFile: String?
    /// Sparkplug ids: `spBv1.0/GROUP/…/EDGE_NODE[/DEVICE]`.
    public var groupID = ""
    public var edgeNodeID = ""
    /// Each QGroup of this domain is a Sparkplug device (device id: the group's name).
    public var domain: QDomain
    /// Domains NCMD/DCMD writes may change (empty: commands write nothing).
    public var write: [QDomainPattern] = []
    /// MQTT keepalive: the broker declares the node dead (its NDEATH) after 1.5 of these (libmosquitto's minimum is 5).
    public var keepaliveS = 30
    /// Reconnect backoff after a lost or refused connection.
    public var reconnectBaseMs: UInt64 = 500
    public var reconnectCapMs: UInt64 = 30_000
    /// DDATA messages sent and not yet acknowledged by the broker; at the
    /// bound the node stops reading the history until acknowledgements come
    /// (the store is the buffer, not memory).
    public var inflightMax = 256
    /// History rows kept for the broker while it is away (store-and-forward),
    /// beyond the per-register `[node] history` bound; past it the oldest go.
    public var backlogRowsMax = 500_000
    public var path = "mqtt"

    /// Metrics of one device at most: its DBIRTH carries them all in one
    /// message (the specification wants one), so this bounds that message.
    public static let metricsPerDeviceMax = 1_000
    /// The `reason` label of `spook_mqtt_refused_total`.
    public static let refusalReasons = ["malformed", "unknown-device", "unknown-metric", "datatype", "read-only", "value", "busy", "failed"]
    /// The `type` label of `spook_mqtt_published_total`.
    public static let messageTypes = ["NBIRTH", "NDEATH", "DBIRTH", "DDEATH", "DDATA"]
    /// History rows read per step of the forwarder.
    public static let rowsPerStep = 500
}

extension ConfigReader {
    /// `[mqtt]`, when present.
    func mqtt(_ doc: Table, nodeName: String) -> MQTTSpec? {
        guard let t = doc.table("mqtt") else { return nil }
        t.rejectUnknownKeys([
            "broker", "ca", "cert", "key", "client_id", "username", "password_file", "group_id", "edge_node_id",
            "domain", "write", "keepalive_s", "reconnect_base_ms", "reconnect_cap_ms", "inflight_max", "backlog_rows_max",
        ])
        guard let domain = t.name("domain", { try QDomain($0) }, required: true) else { return nil }
        var spec = MQTTSpec(domain: domain)
        spec.path = t.path
        if let text = t.string("broker", required: true) {
            switch try? Endpoint.parse(text) {
            case .tcp(let host, let port)?: (spec.host, spec.port) = (host, port)
            case .tls(let host, let port)?: (spec.host, spec.port, spec.tls) = (host, port, true)
            default: fail(t.key("broker"), "\"broker\" = \"\(text)\" must be tcp://HOST:PORT or tls://HOST:PORT, e.g. tcp://127.0.0.1:1883")
            }
        }
        spec.ca = t.string("ca")
        spec.cert = t.string("cert")
        spec.key = t.string("key")
        if spec.tls && spec.ca == nil { fail(t.key("broker"), "a tls:// broker needs \"ca\" (the CA certificate, PEM) in [\(t.path)]") }
        if !spec.tls, spec.ca != nil || spec.cert != nil { fail(t.key("ca"), "\"ca\" and \"cert\" are for a tls:// broker; \"broker\" is tcp://") }
        if (spec.cert == nil) != (spec.key == nil) { fail(t.key(spec.cert == nil ? "key" : "cert"), "\"cert\" and \"key\" go together (the client certificate and its key)") }
        spec.username = t.string("username")
        spec.passwordFile = t.string("password_file")
        if spec.passwordFile != nil && spec.username == nil { fail(t.key("password_file"), "\"password_file\" needs \"username\"") }
        spec.clientID = t.string("client_id") ?? nodeName
        if spec.clientID.isEmpty || spec.clientID.utf8.count > 128 { fail(t.key("client_id"), "\"client_id\" must be 1 to 128 bytes") }
        spec.groupID = sparkplugID(t, "group_id", required: true) ?? ""
        spec.edgeNodeID = sparkplugID(t, "edge_node_id", required: false) ?? nodeName
        for p in t.strings("write") ?? [] {
            do { spec.write.append(try QDomainPattern(p)) } catch { fail(t.key("write"), "\"write\": \(p): \(error)") }
        }
        spec.keepaliveS = t.int("keepalive_s", in: 5...3600) ?? spec.keepaliveS
        spec.reconnectBaseMs = UInt64(t.int("reconnect_base_ms", in: 10...600_000) ?? Int(spec.reconnectBaseMs))
        spec.reconnectCapMs = UInt64(t.int("reconnect_cap_ms", in: 10...3_600_000) ?? Int(spec.reconnectCapMs))
        if spec.reconnectCapMs < spec.reconnectBaseMs { fail(t.key("reconnect_cap_ms"), "\"reconnect_cap_ms\" is below \"reconnect_base_ms\"") }
        spec.inflightMax = t.int("inflight_max", in: 1...65_535) ?? spec.inflightMax
        spec.backlogRowsMax = t.int("backlog_rows_max", in: 1_000...100_000_000) ?? spec.backlogRowsMax
        return spec
    }

    /// A Sparkplug id: a whole MQTT topic level (no "/", "+" or "#"), 1 to 64 bytes.
    private func sparkplugID(_ t: Table, _ k: String, required: Bool) -> String? {
        guard let s = t.string(k, required: required) else { return nil }
        if s.isEmpty || s.utf8.count > 64 || s.contains(where: { "/+#".contains($0) }) {
            fail(t.key(k), "\"\(k)\" = \"\(s)\" must be 1 to 64 bytes without \"/\", \"+\" or \"#\" (it is an MQTT topic level)")
            return nil
        }
        return s
    }
}
