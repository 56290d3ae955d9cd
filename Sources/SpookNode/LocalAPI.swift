#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import NIOPosix
import Prometheus
import SpookCore
import SpookDevices
import SpookLink
import SpookStore

/// The local API (docs/api.md): a Unix socket (mode 0660), one JSON object
/// per line each way. Requests are handled on the node loop; writes that
/// arrive together are committed together (group commit) and answered only
/// once durable.
package final class LocalAPI: @unchecked Sendable {
    static let lineMax = 1 << 20

    /// Confined to the node loop, like everything the API owns.
    final class Client: @unchecked Sendable {
        let channel: Channel
        /// Register-name prefix this client watches, if it asked to.
        var watching: String?
        /// `latest` (the default): one event per changed register per commit,
        /// with its state; `every`: one event per value a register took, in
        /// order, with the stamp of the write that set it.
        var everyChange = false
        init(channel: Channel) { self.channel = channel }
    }

    unowned let node: Node
    var server: Channel?
    var path = ""
    var clients: [ObjectIdentifier: Client] = [:]
    var pending: [(write: LocalWrite, reply: (Result<Delta, CoreError>) -> Void)] = []

    init(node: Node) { self.node = node }

    func listen(path: String, group: EventLoopGroup) throws {
        self.path = path
        unlink(path)
        let node = self.node
        server = try ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: NodeLimits.backlog)
            .childChannelInitializer { channel in
                guard node.budget.admitAPIClient() else {
                    node.metrics.connectionRefused("api-clients")
                    node.limitLog.warning("api clients", "local API connection refused: \(node.config.limits.apiClientsMax) clients already ([limits] api_clients_max)",
                                          nowMs: node.clock.nowMs())
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in node.budget.releaseAPIClient() }
                let budget = OutboundBudget(max: node.config.limits.apiClientBufferBytesMax, budget: node.budget, what: "local API client", api: true) { reason in
                    node.metrics.connectionRefused("slow-reader")
                    node.limitLog.warning("slow api client", "closing a local API client: \(reason) ([limits] api_client_buffer_bytes)", nowMs: node.clock.nowMs())
                }
                return channel.pipeline.addHandlers([budget, APIHandler(api: self)])
            }
            .bind(unixDomainSocketPath: path)
            .wait()
        chmod(path, 0o660)
    }

    func close() {
        try? server?.close().wait()
        unlink(path)
    }

    /// Queues an answer; `flushAll` sends what was queued, one flush per client.
    func reply(_ client: Client, _ value: JSONValue) {
        let bytes = value.serialized + [UInt8(ascii: "\n")]
        client.channel.write(client.channel.allocator.buffer(bytes: bytes), promise: nil)
        unflushed[ObjectIdentifier(client)] = client
    }

    var unflushed: [ObjectIdentifier: Client] = [:]

    func flushAll() {
        for client in unflushed.values { client.channel.flush() }
        unflushed = [:]
    }

    /// The requests of one socket read (parsed on the I/O loop), handled together.
    func handle(_ requests: [Result<JSONValue, any Error>], from client: Client) {
        for r in requests {
            switch r {
            case .success(let request): handle(request, from: client)
            case .failure(let error): fail(client, nil, "not a JSON object: \(error)")
            }
        }
        flushAll()
    }

    /// An error answer: `"error"` says what is wrong, `"code"` is one of a fixed set a program can branch on.
    func fail(_ client: Client, _ id: JSONValue?, _ message: String, code: String = "bad-request") {
        var o: [String: JSONValue] = ["ok": .bool(false), "error": .string(message), "code": .string(code)]
        if let id { o["id"] = id }
        reply(client, .object(o))
    }

    func ok(_ client: Client, _ id: JSONValue?, _ fields: [String: JSONValue] = [:]) {
        var o = fields
        o["ok"] = .bool(true)
        if let id { o["id"] = id }
        reply(client, .object(o))
    }

    /// One request (on the node loop).
    func handle(_ request: JSONValue, from client: Client) {
        let id = request["id"]
        guard case .object = request, let op = request["op"]?.string else {
            fail(client, id, "a request is a JSON object with \"op\": get, set, list, watch or status")
            return
        }
        do {
            switch op {
            case "get":
                let name = try QRegisterName(try field(request, "register"))
                guard let state = node.store.state.registers[name] else { throw APIError("no register \(name)", code: "not-found") }
                ok(client, id, ["register": state.json(name)])
            case "set":
                try set(request, id: id, client: client)
            case "history":
                // Newest first, as many as [node] history keeps.
                let name = try QRegisterName(try field(request, "register"))
                let entries = try node.store.history(name)
                let sides = ["value", "reported", "desired"]
                ok(client, id, ["register": .string(name.text), "history": .array(entries.map { e in
                    .object(["side": .string(sides[Int(e.side.rawValue)]), "value": e.versioned.value.json, "stamp": .string(e.versioned.stamp.description)])
                })])
            case "list":
                let prefix = request["prefix"]?.string ?? ""
                // Withheld deltas' placeholder register is the substrate's bookkeeping, not state.
                let all = node.store.state.registers.filter { $0.key.text.hasPrefix(prefix) && $0.key.group != Withheld.group }
                ok(client, id, ["registers": .array(all.keys.sorted().map { all[$0]!.json($0) })])
            case "watch":
                let mode = request["mode"]?.string ?? "latest"
                guard mode == "latest" || mode == "every" else {
                    throw APIError("\"mode\" is \"latest\" (the state after each commit, for dashboards) or \"every\" (every value in order, for historians)")
                }
                client.watching = request["prefix"]?.string ?? ""
                client.everyChange = mode == "every"
                ok(client, id, ["watching": .string(client.watching!), "mode": .string(mode)])
            case "status":
                ok(client, id, status())
            case "peers":
                ok(client, id, ["peers": .array(try node.peerList())])
            case "forget":
                let peer = try field(request, "peer")
                guard try node.forgetPeer(peer) else { throw APIError("no peer \(peer) (spookctl peers lists them)", code: "not-found") }
                ok(client, id, ["forgotten": .string(peer)])
            case "attach", "detach":
                // A udev rule's environment: DEVNAME, SUBSYSTEM, ID_VENDOR_ID, ID_MODEL_ID, ID_SERIAL_SHORT…
                guard case .object(let o)? = request["device"] else { throw APIError("\"device\" must be an object of udev variables (DEVNAME, ID_VENDOR_ID, …)") }
                var env: [String: String] = [:]
                for (k, v) in o { if let s = v.string { env[k] = s } }
                let device = try AttachedDevice(udev: env)
                guard let host = node.devices else {
                    node.logger.info("\(op) ignored: this node hosts no devices", metadata: ["device": "\(device)"])
                    ok(client, id, ["result": .string("ignored: this node has no [[device]] in its config")])
                    return
                }
                ok(client, id, ["result": .string(op == "attach" ? host.attach(device) : host.detach(path: device.path))])
            default:
                throw APIError("unknown op \"\(op)\": use get, set, list, history, watch, status, peers, forget, attach or detach")
            }
        } catch let e as CoreError {
            fail(client, id, e.message, code: "invalid")
        } catch let e as APIError {
            fail(client, id, e.description, code: e.code)
        } catch {
            fail(client, id, "\(error)", code: "internal")
        }
    }

    func field(_ request: JSONValue, _ key: String) throws -> String {
        guard let s = request[key]?.string else { throw APIError("\"\(key)\" is missing or not a string") }
        return s
    }

    /// `{"op":"set","register":"d/g/r","value":V}` or `{"op":"set","group":"d/g","values":{"r":V,…}}`:
    /// one delta, all its writes visible together.
    func set(_ request: JSONValue, id: JSONValue?, client: Client) throws {
        let group: QGroupName
        var values: [(String, JSONValue)] = []
        if let r = request["register"]?.string {
            let name = try QRegisterName(r)
            group = name.group
            guard let v = request["value"] else { throw APIError("\"value\" is missing") }
            values = [(name.name, v)]
        } else {
            group = try QGroupName(try field(request, "group"))
            guard case .object(let o)? = request["values"], !o.isEmpty else { throw APIError("\"values\" must be an object of register: value") }
            values = o.keys.sorted().map { ($0, o[$0]!) }
        }
        var writes: [Write] = []
        for (register, json) in values {
            writes.append(try applicationWrite(try QRegisterName(group: group, name: register), try Value(json: json)))
        }
        try enqueue(LocalWrite(group: group, writes: writes)) { [self] result in
            switch result {
            case .success(let d): ok(client, id, ["origin": .string(d.origin.description), "seq": .int(Int64(d.seq))])
            case .failure(let e): fail(client, id, e.message, code: "refused")
            }
        }
    }

    /// `value` written to `name` as an application writes it (the socket, the
    /// named pipe, the Modbus server): refused for `$` registers, coerced to
    /// and checked against the register's declaration, on the desired side
    /// of a device register.
    package func applicationWrite(_ name: QRegisterName, _ value: Value) throws -> Write {
        guard !name.isSystem else { throw APIError("\(name): registers starting with $ belong to the substrate", code: "refused") }
        let spec = node.config.schema.spec(for: name)
        let typed = value.coerced(to: spec.type)
        try typed.validate("\(name)")
        return Write(name.name, spec.policy == .device ? .desire : .set, typed)
    }

    /// Queues a local write for the next commit (one StateBlock for all the
    /// writes of a loop turn); `reply` runs once it is durable or refused.
    /// Node loop only. Throws `busy` past `[limits] pending_writes_max`.
    package func enqueue(_ write: LocalWrite, reply: @escaping (Result<Delta, CoreError>) -> Void) throws {
        guard pending.count < node.config.limits.pendingWritesMax else {
            node.metrics.internalError("busy")
            throw APIError("busy: \(pending.count) writes already wait for the next commit ([limits] pending_writes_max); try again", code: "busy")
        }
        pending.append((write, reply))
        node.scheduleGroupCommit()
    }

    /// The writes queued since the last group commit (the node commits them).
    func takePending() -> [(write: LocalWrite, reply: (Result<Delta, CoreError>) -> Void)] {
        defer { pending = [] }
        return pending
    }

    /// Local writes a group commit could not hold, committed on their own.
    func commitApart(_ batch: [(write: LocalWrite, reply: (Result<Delta, CoreError>) -> Void)]) {
        do {
            let results = try node.store.commitLocal(batch.map(\.write), origin: node.origin, physicalMs: node.clock.nowMs())
            for (entry, result) in zip(batch, results) { entry.reply(result) }
        } catch {
            node.logger.error("local commit failed", metadata: ["error": "\(error)"])
            refuse(batch, error)
        }
        flushAll()
    }

    /// Answers each write of `batch` with the store's refusal (nothing of it was committed).
    func refuse(_ batch: [(write: LocalWrite, reply: (Result<Delta, CoreError>) -> Void)], _ error: Error) {
        for entry in batch { entry.reply(.failure(CoreError(.invalidValue, "the store refused the commit: \(error)"))) }
    }

    /// Called by the store after every commit (on the node loop).
    func changed(_ names: [QRegisterName], _ changes: [RegisterChange]) {
        guard clients.values.contains(where: { $0.watching != nil }) else { return }
        let sides = ["value", "reported", "desired"]
        for client in clients.values {
            guard let prefix = client.watching else { continue }
            if client.everyChange {
                for c in changes where c.name.text.hasPrefix(prefix) && c.name.group != Withheld.group {
                    reply(client, .object([
                        "event": .string("change"), "mode": .string("every"), "register": .string(c.name.text),
                        "side": .string(sides[Int(c.entry.side.rawValue)]), "value": c.entry.versioned.value.json,
                        "stamp": .string(c.entry.versioned.stamp.description),
                    ]))
                }
                continue
            }
            for name in names where name.text.hasPrefix(prefix) && name.group != Withheld.group {
                guard let state = node.store.state.registers[name] else { continue }
                reply(client, .object(["event": .string("change"), "register": state.json(name)]))
            }
        }
        flushAll()
    }

    func status() -> [String: JSONValue] {
        var vector: [String: JSONValue] = [:]
        for o in node.store.vector.origins { vector[o.description] = .int(Int64(clamping: node.store.vector[o])) }
        let links: [JSONValue] = node.linkStatus().map { l in
            .object([
                "name": .string(l.name), "state": .string(l.state), "online": .bool(l.online), "peer": .string(l.peer),
                "lag": .int(Int64(clamping: l.lag)), "bytes_sent": .int(Int64(l.bytesSent)), "deltas_sent": .int(Int64(l.deltasSent)),
                "deltas_received": .int(Int64(l.deltasReceived)), "snapshots_sent": .int(Int64(l.snapshotsSent)),
            ])
        }
        let buffered = node.budget.snapshot
        let role: String
        switch node.role {
        case .edge: role = "edge"
        case .daemon: role = "daemon"
        }
        return [
            "node": .string(node.config.name), "role": .string(role), "origin": .string(node.origin.description),
            "version": .string(SpookVersion.string),
            "epoch": .int(Int64(node.store.epoch)),
            "public_key": .string(node.identity.publicKey.hex), "vector": .object(vector),
            "registers": .int(Int64(node.store.state.registers.count)), "links": .array(links),
            "buffered_bytes": .object(["outbound": .int(Int64(buffered.outbound)), "api_outbound": .int(Int64(buffered.apiOutbound)),
                                       "inbound": .int(Int64(buffered.inbound))]),
            "api_clients": .int(Int64(buffered.apiClients)),
            "log_deltas": .int(Int64(clamping: node.store.logDeltas)),
            // Two replicas hold the same state iff these are equal (SHA-256 of the canonical state bytes).
            "state_sha256": .string(SHA256.hash(node.store.state.canonicalBytes()).hex),
            "devices": .array(node.devices?.status() ?? []),
        ]
    }
}

/// Splits a client's bytes into lines (on the I/O loop) and hands the node
/// loop one batch per read; while `apiBatchesQueuedMax` batches wait there,
/// it stops reading, so a client that writes faster than the store commits
/// is slowed by its socket instead of growing the node's queue.
final class APIHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let api: LocalAPI
    var buffer: [UInt8] = []
    var client: LocalAPI.Client?
    var queued = 0
    var readHeld = false
    var context: ChannelHandlerContext?
    var bufferedReported = 0

    init(api: LocalAPI) { self.api = api }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        api.node.budget.inbound(-bufferedReported)
        bufferedReported = 0
        self.context = nil
    }

    func read(context: ChannelHandlerContext) {
        if queued >= NodeLimits.apiBatchesQueuedMax { readHeld = true } else { context.read() }
    }

    func handled() {
        queued -= 1
        if readHeld, queued < NodeLimits.apiBatchesQueuedMax / 2, let context {
            readHeld = false
            context.read()
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        let client = LocalAPI.Client(channel: context.channel)
        self.client = client
        let api = self.api
        api.node.loop.execute { api.clients[ObjectIdentifier(client)] = client }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let client {
            let api = self.api
            api.node.loop.execute {
                api.clients[ObjectIdentifier(client)] = nil
                api.unflushed[ObjectIdentifier(client)] = nil
            }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
        // Parse here, on the I/O loop, and hand the node loop one batch per read.
        var requests: [Result<JSONValue, any Error>] = []
        var start = 0
        while let newline = buffer[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = Array(buffer[start..<newline])
            start = newline + 1
            guard !line.isEmpty else { continue }
            requests.append(Result { try JSONValue.parse(line) })
        }
        buffer.removeFirst(start)
        api.node.budget.inbound(buffer.count - bufferedReported)
        bufferedReported = buffer.count
        if !requests.isEmpty, let client {
            queued += 1
            let (api, batch, loop) = (self.api, requests, context.eventLoop)
            api.node.loop.execute {
                api.handle(batch, from: client)
                loop.execute { self.handled() }
            }
        }
        if buffer.count > LocalAPI.lineMax {
            let message = JSONValue.object(["ok": .bool(false), "error": .string("request line longer than \(LocalAPI.lineMax) bytes")]).serialized + [10]
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: message)), promise: nil)
            context.close(promise: nil)
        }
    }
}
