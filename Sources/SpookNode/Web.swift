#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SpookCore
import SpookLink

/// `[web]`: the live register page (docs/browser.md). The node serves the
/// page's static files and a small `config.json`; the page itself is a
/// HalfPair (WebAssembly core) that links to a daemon's WebSocket listener
/// like any peer, under its own key and grants.
public struct WebSpec: Sendable, Hashable {
    public var host = "127.0.0.1"
    public var port = 8080
    /// The folder the page's files are served from (`spook-core.mjs`, `halfpair.mjs`, `build/`, `web/`).
    public var assets = "/usr/share/spook/web"
    /// The ws:// or wss:// listener the page links to, and that daemon's public key (hex; a daemon's own by default).
    public var link = ""
    public var linkKey: String?
    /// Domain patterns the page subscribes to.
    public var domains: [String] = ["*"]
    public var clientsMax = 64
    /// HTTPS: the certificate chain and key (PEM), like a tls:// listener's.
    public var cert: String?
    public var key: String?

    /// Largest file served (the page's files are a few tens of KB).
    public static let fileBytesMax = 8 * 1024 * 1024
}

extension ConfigReader {
    /// `[web]`, when present. `daemon`: a daemon may leave out `link_key` (its own key).
    func web(_ doc: Table, daemon: Bool) -> WebSpec? {
        guard let t = doc.table("web") else { return nil }
        t.rejectUnknownKeys(["listen", "assets", "link", "link_key", "domains", "clients_max", "cert", "key"])
        var spec = WebSpec()
        if let (host, port) = hostPort(t, "listen", example: "127.0.0.1:8080") { (spec.host, spec.port) = (host, port) }
        if let assets = t.string("assets") {
            if !assets.hasPrefix("/") { fail(t.key("assets"), "\"assets\" = \"\(assets)\" must be an absolute path") }
            spec.assets = assets
        }
        if let link = t.string("link", required: true) {
            switch try? Endpoint.parse(link) {
            case .websocket?: spec.link = link
            default: fail(t.key("link"), "\"link\" = \"\(link)\" must be the ws:// or wss:// listener the page links to, e.g. ws://127.0.0.1:7401/spook")
            }
        }
        if t.has("link_key") {
            spec.linkKey = hexKey(t, "link_key").map(\.hex)
        } else if !daemon {
            fail(t.path, "[web] on an agent needs \"link_key\": the public key of the daemon whose listener \"link\" names")
        }
        if let patterns = t.strings("domains") {
            for p in patterns where (try? QDomainPattern(p)) == nil { fail(t.key("domains"), "\"domains\": \"\(p)\" is not a domain pattern") }
            spec.domains = patterns
        }
        spec.clientsMax = t.int("clients_max", in: 1...10_000) ?? spec.clientsMax
        spec.cert = t.string("cert")
        spec.key = t.string("key")
        if (spec.cert == nil) != (spec.key == nil) { fail(t.key(spec.cert == nil ? "key" : "cert"), "\"cert\" and \"key\" go together (HTTPS for the page)") }
        return spec
    }
}

/// Serves `[web]`: GET only, files under `assets` (no `..`, no hidden
/// files), `/config.json`, and `/` → `/web/`. At most `clients_max`
/// connections; more are closed at once and counted.
final class WebServer: @unchecked Sendable {
    let spec: WebSpec
    let config: [UInt8]
    unowned let node: Node
    var channel: Channel?
    let clients = NIOLockedValueBox(0)

    init(_ spec: WebSpec, node: Node) {
        self.spec = spec
        self.node = node
        let key = spec.linkKey ?? node.identity.publicKey.hex
        let json = JSONValue.object([
            "link": .string(spec.link), "daemonKey": .string(key), "domains": .array(spec.domains.map { .string($0) }),
            // The page's core checks deltas against the same declared types and policies.
            "schema": WebServer.schemaJSON(node.config.schema),
            // The page heartbeats as this node's links do ([heartbeat] interval_ms).
            "heartbeatMs": .int(Int64(node.config.heartbeatIntervalMs)),
        ])
        config = json.serialized + [10]
    }

    /// The schema as the page's encodeSchema reads it (docs/browser.md).
    static func schemaJSON(_ schema: Schema) -> JSONValue {
        func selector(_ s: RegisterSelector) -> [String: JSONValue] {
            var o: [String: JSONValue] = ["domain": .string(s.domain.description)]
            if let g = s.group { o["group"] = .string(g) }
            if let r = s.register { o["register"] = .string(r) }
            return o
        }
        return .object([
            "registers": .array(schema.registers.map { rule in
                var o = selector(rule.selector)
                if let t = rule.spec.type { o["type"] = .string(t.rawValue) }
                o["policy"] = .string(rule.spec.policy.rawValue)
                return .object(o)
            }),
            "owners": .array(schema.owners.map { owner in
                var o = selector(owner.selector)
                o["origin"] = .string(owner.origin.description)
                return .object(o)
            }),
        ])
    }

    func start(group: EventLoopGroup) throws {
        let tls = try spec.cert.map { try Node.serverTLS(cert: $0, key: spec.key ?? "") }
        channel = try ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] channel in
                let admitted = clients.withLockedValue { n -> Bool in
                    guard n < spec.clientsMax else { return false }
                    n += 1
                    return true
                }
                guard admitted else {
                    node.metrics.connectionRefused("web-clients")
                    node.limitLog.warning("web-clients", "web: \(spec.clientsMax) connections already open ([web] clients_max); closing a new one", nowMs: node.clock.nowMs())
                    return channel.close()
                }
                channel.closeFuture.whenComplete { [self] _ in clients.withLockedValue { $0 -= 1 } }
                if let tls {
                    do { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) } catch { return channel.close() }
                }
                return channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(WebHandler(server: self))
                }
            }
            .bind(host: spec.host, port: spec.port)
            .wait()
    }

    static let types: [String: String] = [
        "html": "text/html; charset=utf-8", "mjs": "text/javascript", "js": "text/javascript", "wasm": "application/wasm",
        "json": "application/json", "css": "text/css", "png": "image/png", "svg": "image/svg+xml",
    ]

    /// What a GET of `path` answers.
    func respond(_ path: String) -> (HTTPResponseStatus, String, [UInt8], location: String?) {
        let clean = String(path.prefix { $0 != "?" && $0 != "#" })
        if clean == "/" { return (.found, "text/plain", Array("see /web/\n".utf8), "/web/") }
        if clean == "/config.json" { return (.ok, "application/json", config, nil) }
        let parts = clean.split(separator: "/", omittingEmptySubsequences: true)
        guard !parts.isEmpty, !parts.contains(where: { $0.hasPrefix(".") }) else { return (.notFound, "text/plain", Array("not found\n".utf8), nil) }
        var file = spec.assets + "/" + parts.joined(separator: "/")
        if clean.hasSuffix("/") { file += "/index.html" }
        let ext = String(file.split(separator: ".").last ?? "")
        guard let bytes = WebServer.read(file) else { return (.notFound, "text/plain", Array("not found: \(clean)\n".utf8), nil) }
        return (.ok, WebServer.types[ext] ?? "application/octet-stream", bytes, nil)
    }

    /// A regular file's bytes, up to `fileBytesMax`; nil otherwise.
    static func read(_ path: String) -> [UInt8]? {
        var st = stat()
        guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) <= WebSpec.fileBytesMax, let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        guard fread(&bytes, 1, bytes.count, f) == bytes.count else { return nil }
        return bytes
    }

    func stop() { try? channel?.close().wait() }
}

final class WebHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    let server: WebServer
    var head: HTTPRequestHead?

    init(server: WebServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            let (status, type, body, location) = head.method == .GET || head.method == .HEAD
                ? server.respond(head.uri) : (.methodNotAllowed, "text/plain", Array("GET only\n".utf8), nil)
            var extra = [
                ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-cache"),
                ("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; script-src 'self' 'wasm-unsafe-eval'"),
            ]
            if let location { extra.append(("Location", location)) }
            context.channel.sendHTTP(status: status, type: type, body: body, headers: extra, version: head.version,
                                     keepAlive: head.isKeepAlive, withBody: head.method == .GET)
            self.head = nil
        }
    }
}
