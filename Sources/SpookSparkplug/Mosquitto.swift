#if canImport(Glibc)
import Glibc
#endif
import CMosquitto
import NIOCore
import SpookNode

/// One MQTT 3.1.1 connection through libmosquitto, with its network loop
/// on a thread of its own. Each connection attempt gets a new one (so each
/// carries its own NDEATH will, with its own bdSeq, and nothing queued for
/// an old connection is ever sent on a new one). Callbacks hop to the node
/// loop, tagged with the connection's generation.
final class MosquittoConnection: @unchecked Sendable {
    let mosq: OpaquePointer
    let spec: MQTTSpec
    unowned let owner: SparkplugEdgeNode
    let generation: Int
    private var closed = false

    private static let library: Int32 = mosquitto_lib_init()
    static func initialiseLibrary() { _ = library }

    init(spec: MQTTSpec, owner: SparkplugEdgeNode, generation: Int, will: (topic: String, payload: [UInt8])) throws {
        self.spec = spec
        self.owner = owner
        self.generation = generation
        // Clean session: Sparkplug 3.0 wants it for MQTT 3.1.1.
        guard let m = mosquitto_new(spec.clientID, true, nil) else { throw APIError("[mqtt]: libmosquitto: cannot create a client (\(String(cString: strerror(errno))))") }
        mosq = m
        mosquitto_user_data_set(m, Unmanaged.passUnretained(self).toOpaque())
        _ = mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311)
        // libmosquitto's own window of unacknowledged QoS 1 messages: ours is the same bound.
        _ = mosquitto_max_inflight_messages_set(m, UInt32(spec.inflightMax))
        // We reconnect ourselves (a new client per attempt): the library's own retry waits for good.
        _ = mosquitto_reconnect_delay_set(m, 3_600, 3_600, false)
        try check(will.payload.withUnsafeBytes { mosquitto_will_set(m, will.topic, Int32($0.count), $0.baseAddress, 1, false) }, "will")
        if let user = spec.username {
            var password: String?
            if let file = spec.passwordFile { password = try MosquittoConnection.readPassword(file) }
            try check(mosquitto_username_pw_set(m, user, password), "credentials")
        }
        if spec.tls {
            try check(mosquitto_tls_set(m, spec.ca, nil, spec.cert, spec.key, nil), "TLS files (ca \(spec.ca ?? "-"), cert \(spec.cert ?? "-"))")
        }
        mosquitto_connect_callback_set(m) { _, obj, rc in
            let c = Unmanaged<MosquittoConnection>.fromOpaque(obj!).takeUnretainedValue()
            c.owner.node.loop.execute { c.owner.connected(c.generation, rc) }
        }
        mosquitto_disconnect_callback_set(m) { _, obj, rc in
            let c = Unmanaged<MosquittoConnection>.fromOpaque(obj!).takeUnretainedValue()
            c.owner.node.loop.execute { c.owner.disconnected(c.generation, rc) }
        }
        mosquitto_publish_callback_set(m) { _, obj, mid in
            let c = Unmanaged<MosquittoConnection>.fromOpaque(obj!).takeUnretainedValue()
            c.owner.node.loop.execute { c.owner.published(c.generation, mid) }
        }
        mosquitto_message_callback_set(m) { _, obj, message in
            guard let obj, let message else { return }
            let c = Unmanaged<MosquittoConnection>.fromOpaque(obj).takeUnretainedValue()
            let topic = String(cString: message.pointee.topic)
            let n = Int(message.pointee.payloadlen)
            // Copied here (libmosquitto frees it after the callback); an oversized one is refused unread.
            let payload: [UInt8]? = n > SparkplugEdgeNode.commandBytesMax ? nil
                : n == 0 ? [] : Array(UnsafeRawBufferPointer(start: message.pointee.payload, count: n))
            c.owner.node.loop.execute { c.owner.received(c.generation, topic: topic, payload: payload) }
        }
    }

    /// The password: the first line of `path`.
    static func readPassword(_ path: String) throws -> String {
        let text = try ConfigFile.read(path)
        let line = String(text.split(maxSplits: 1, omittingEmptySubsequences: false, whereSeparator: \.isNewline).first ?? "")
        guard !line.isEmpty else { throw APIError("[mqtt] password_file \(path): the first line is empty") }
        return line
    }

    private func check(_ rc: Int32, _ what: String) throws {
        guard rc == MOSQ_ERR_SUCCESS.rawValue else { throw APIError("[mqtt] \(what): \(String(cString: mosquitto_strerror(rc)))") }
    }

    /// Starts connecting (CONNACK arrives through the connect callback) and the network thread.
    func connect() throws {
        try check(mosquitto_connect_async(mosq, spec.host, Int32(spec.port), Int32(spec.keepaliveS)), "connect to \(spec.host):\(spec.port)")
        try check(mosquitto_loop_start(mosq), "network thread")
    }

    func subscribe(_ topic: String) {
        _ = mosquitto_subscribe(mosq, nil, topic, 1)
    }

    /// Queues a message; its message id, or nil when libmosquitto refused it (not connected, out of memory).
    func publish(_ topic: String, _ payload: [UInt8], qos: Int32) -> Int32? {
        var mid: Int32 = 0
        let rc = payload.withUnsafeBytes { mosquitto_publish(mosq, &mid, topic, Int32($0.count), $0.baseAddress, qos, false) }
        return rc == MOSQ_ERR_SUCCESS.rawValue ? mid : nil
    }

    /// Sends DISCONNECT after whatever is queued, waits for the network
    /// thread to end, frees the client. The thread ends by itself only once
    /// DISCONNECT is written; when there is no connection to write it on
    /// (libmosquitto between its own reconnect attempts), it is cancelled:
    /// waiting for it hung the agent's MQTT connects and its shutdown for
    /// good when the broker was cut off.
    func close() {
        guard !closed else { return }
        closed = true
        let rc = mosquitto_disconnect(mosq)
        _ = mosquitto_loop_stop(mosq, rc != MOSQ_ERR_SUCCESS.rawValue)
        mosquitto_destroy(mosq)
    }

    deinit { close() }
}
