#if canImport(Glibc)
import Glibc
#endif
import CMosquitto
import NIOConcurrencyHelpers
import NIOCore
import SpookNode

/// One MQTT 3.1.1 connection through libmosquitto, on a network thread of
/// its own that this type starts, drives and ends: it connects, runs
/// `mosquitto_loop` until the connection is lost or closed, and never
/// reconnects (each attempt gets a new connection, so each carries its own
/// NDEATH will with its own bdSeq, and nothing queued for an old connection
/// is ever sent on a new one). libmosquitto's own thread (`mosquitto_loop_start`)
/// is not used: after a loss it sleeps its reconnect delay in a call that
/// only `pthread_cancel` interrupts, and a cancel that lands in a callback
/// abandons the agent's own code half-way. Callbacks hop to the node loop,
/// tagged with the connection's generation.
final class MosquittoConnection: @unchecked Sendable {
    let mosq: OpaquePointer
    let spec: MQTTSpec
    unowned let owner: SparkplugEdgeNode
    let generation: Int
    /// Set by `close`: the network thread ends once DISCONNECT is out or this deadline passes.
    private let closeBy = NIOLockedValueBox<NIODeadline?>(nil)
    private var closingBy: NIODeadline? { closeBy.withLockedValue { $0 } }
    private var thread: pthread_t?
    private var closed = false

    /// How long a closing connection may take to write what is queued and DISCONNECT.
    static let closeFlushMs: Int64 = 2_000
    /// The network thread's longest wait in `mosquitto_loop` (it is woken at once by anything queued).
    static let loopWaitMs: Int32 = 200

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
        // Publishing (node loop) and the network loop (our thread) run at once: libmosquitto must lock.
        _ = mosquitto_threaded_set(m, true)
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
            c.lost(rc)
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

    /// Starts the network thread, which connects (name resolution and the
    /// TCP connect happen there, never on the node loop; CONNACK arrives
    /// through the connect callback) and then runs the network loop.
    func start() throws {
        precondition(thread == nil, "a connection is started once")
        var tid = pthread_t()
        // The thread holds the connection until it ends: `close` joins it before the client is freed.
        let this = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&tid, nil, { arg in
            let c = Unmanaged<MosquittoConnection>.fromOpaque(arg!).takeRetainedValue()
            c.run()
            return nil
        }, this)
        guard rc == 0 else {
            Unmanaged<MosquittoConnection>.fromOpaque(this).release()
            throw APIError("[mqtt]: cannot start the network thread (\(String(cString: strerror(rc))))")
        }
        thread = tid
    }

    /// The network thread: connect, then loop until lost or closed. A loss
    /// is reported to the owner (which also hears it through the disconnect
    /// callback when libmosquitto saw it; the owner takes the first).
    private func run() {
        let rc = mosquitto_connect_async(mosq, spec.host, Int32(spec.port), Int32(spec.keepaliveS))
        guard rc == MOSQ_ERR_SUCCESS.rawValue else {
            if closingBy == nil {
                let why = "connect to \(spec.host):\(spec.port): \(MosquittoConnection.describe(rc))"
                owner.node.loop.execute { [self] in owner.failed(generation, why) }
            }
            return
        }
        while true {
            if let deadline = closingBy, NIODeadline.now() >= deadline { return }
            let rc = mosquitto_loop(mosq, MosquittoConnection.loopWaitMs, 1)
            guard rc == MOSQ_ERR_SUCCESS.rawValue else {
                // Closing: DISCONNECT went out and the socket is closed (or there never was one).
                guard closingBy == nil else { return }
                lost(rc)
                return
            }
        }
    }

    /// Tells the owner the connection is gone (network thread: errno is this thread's).
    private func lost(_ rc: Int32) {
        let why = rc == 0 ? "disconnected" : MosquittoConnection.describe(rc)
        owner.node.loop.execute { [self] in owner.failed(generation, why) }
    }

    static func describe(_ rc: Int32) -> String {
        rc == MOSQ_ERR_ERRNO.rawValue ? String(cString: strerror(errno)) : String(cString: mosquitto_strerror(rc))
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
    /// thread to end (at most `closeFlushMs` and one loop wait: a broker cut
    /// off mid-write cannot hold it longer), frees the client. Never on the
    /// node loop: the owner closes on its blocking pool.
    func close() {
        guard !closed else { return }
        closed = true
        if let thread {
            closeBy.withLockedValue { $0 = .now() + .milliseconds(MosquittoConnection.closeFlushMs) }
            // Queues DISCONNECT and wakes the loop; with no connection it only marks the client disconnecting.
            _ = mosquitto_disconnect(mosq)
            if pthread_equal(thread, pthread_self()) != 0 {
                pthread_detach(thread)  // the last reference dropped on the thread itself, as it ended
            } else {
                pthread_join(thread, nil)
            }
        }
        mosquitto_destroy(mosq)
    }

    deinit { close() }
}
