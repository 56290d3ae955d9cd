#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookCore
import SpookLink
import SpookNode
import SpookTestSupport
import Testing

/// The browser HalfPair (wasm/halfpair.mjs on the WebAssembly core), run in
/// Node over a real WebSocket to a real spookd, beside a real spook-edge.
@Suite(.serialized) struct BrowserHalfPairTests {
    /// The replica's JSON lines, collected as they come.
    final class Client {
        let child: JSONLineChild

        init(url: String, daemonKey: String, seed: String, publicKey: String, pattern: String) throws {
            child = try JSONLineChild("/usr/bin/node", [
                "--experimental-websocket", "--no-warnings", "\(repositoryRoot)/wasm/test/halfpair-client.mjs", url, daemonKey, seed, publicKey, pattern,
            ])
        }

        func seen(_ key: String) -> [JSONValue] { child.seen(key) }

        /// The replica's registers, read back from its core's state bytes.
        func registers() throws -> JSONValue? {
            let before = seen("state").count
            try child.send(#"{"state": true}"#)
            try waitUntil("the replica's state") { seen("state").count > before }
            return seen("state").last?["registers"]
        }

        func value(_ register: String) throws -> JSONValue? { try registers()?[register]?["value"] }

        func write(_ group: String, _ register: String, int: Int) throws {
            try child.send(#"{"write": {"group": "\#(group)", "writes": [{"register": "\#(register)", "kind": "set", "value": {"int": "\#(int)"}}]}}"#)
        }
    }

    static func seed(_ keyFile: String) throws -> String {
        let text = try String(contentsOfFile: keyFile, encoding: .utf8)
        guard let hex = text.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines), hex.count == 64 else {
            throw ChildProcess.Failure("\(keyFile): not a spook key file")
        }
        return hex
    }

    @Test func aBrowserReplicaReadsWritesAndConvergesWithAnAgent() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(edges: ["gw1", "web"], daemonLink: "ws://127.0.0.1:\(port)/spook")
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.waitFor("gw1 linked") { c.coherent() }
        try c.set("spookd", "site1.l1/m/speed", .int(5))
        let web = try #require(c.edgeKeys["web"])
        let client = try Client(url: "ws://127.0.0.1:\(port)/spook", daemonKey: c.daemonKey.publicKey.hex,
                                seed: try Self.seed(c.dir.file("web.key")), publicKey: web.publicKey.hex, pattern: "site1.*")
        defer { client.child.stop() }
        try c.waitFor("the replica's handshake") { !client.seen("ready").isEmpty || !client.seen("error").isEmpty }
        #expect(client.seen("error").isEmpty, "\(client.seen("error"))")

        // Catch-up, then live changes, decided by the WebAssembly core.
        try c.waitFor("speed 5 in the replica") { try client.value("site1.l1/m/speed") == .object(["int": .string("5")]) }
        try c.set("gw1", "site1.l1/m/speed", .int(6))
        try c.waitFor("speed 6, written on the agent, in the replica") { try client.value("site1.l1/m/speed") == .object(["int": .string("6")]) }

        // A write from the replica: acknowledged by the daemon, on the agent too.
        try client.write("site1.l1/m", "setpoint", int: 42)
        try c.waitFor("the daemon acknowledged the replica's write") { !client.seen("written").isEmpty }
        try c.waitFor("setpoint 42 on the agent") { c.value("gw1", "site1.l1/m/setpoint") == .int(42) }

        // The replica and the agent write one register at once, several times: all converge.
        for i in 0..<10 {
            try client.write("site1.l1/m", "race", int: 100 + i)
            try c.set("gw1", "site1.l1/m/race", .int(Int64(200 + i)))
        }
        try c.waitFor("the replica, the daemon and the agent agree on race") {
            guard let mine = try client.value("site1.l1/m/race"), case .object(let o) = mine, case .string(let text)? = o["int"],
                  let n = Int64(text) else { return false }
            return c.value("spookd", "site1.l1/m/race") == .int(n) && c.value("gw1", "site1.l1/m/race") == .int(n)
        }
        #expect(client.seen("error").isEmpty, "\(client.seen("error"))")
    }

    /// Partitions between the browser replica and the daemon (a TCP proxy
    /// in front of the WebSocket listener): while cut, the replica and the
    /// agent both write one register and the daemon another; after each
    /// heal the replica links again (deterministic backoff), sends what the
    /// daemon lacks of its own, catches up, and all three converge.
    @Test func aBrowserReplicaConvergesWithAnAgentThroughPartitions() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(edges: ["gw1", "web"], daemonLink: "ws://127.0.0.1:\(port)/spook")
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.waitFor("gw1 linked") { c.coherent() }
        let proxy = try CuttableProxy(to: port)
        let web = try #require(c.edgeKeys["web"])
        let client = try Client(url: "ws://127.0.0.1:\(proxy.port)/spook", daemonKey: c.daemonKey.publicKey.hex,
                                seed: try Self.seed(c.dir.file("web.key")), publicKey: web.publicKey.hex, pattern: "site1.*")
        defer { client.child.stop() }
        try c.waitFor("the replica linked") { !client.seen("ready").isEmpty }
        func int(_ j: JSONValue?) -> Int64? {
            if case .object(let o)? = j, case .string(let t)? = o["int"] { return Int64(t) }
            return nil
        }
        for round in 0..<3 {
            let links = client.seen("link").filter { $0["link"] == .string("linked") }.count
            proxy.partition()
            try c.waitFor("the replica saw the cut (round \(round))") { client.seen("link").last?["link"] == .string("closed") }
            for i in 0..<5 {
                try client.write("site1.l1/m", "race", int: 1_000 * round + 100 + i)
                try c.set("gw1", "site1.l1/m/race", .int(Int64(1_000 * round + 200 + i)))
                try c.set("spookd", "site1.l1/m/other", .int(Int64(1_000 * round + i)))
            }
            proxy.heal()
            try c.waitFor("round \(round): linked again, and all three agree", seconds: 30) {
                guard client.seen("link").filter({ $0["link"] == .string("linked") }).count > links,
                      let registers = try client.registers(), let race = int(registers["site1.l1/m/race"]?["value"]),
                      let other = int(registers["site1.l1/m/other"]?["value"]) else { return false }
                return other == Int64(1_000 * round + 4) && c.value("spookd", "site1.l1/m/race") == .int(race)
                    && c.value("gw1", "site1.l1/m/race") == .int(race) && c.value("gw1", "site1.l1/m/other") == .int(other)
            }
        }
        // Every write the replica made while cut was acknowledged by the daemon (durable there) after the heal.
        try c.waitFor("15 writes acknowledged") { client.seen("written").count == 15 }
        #expect(client.seen("error").isEmpty, "\(client.seen("error"))")
    }

    /// A daemon that compacted away the deltas the replica lacks sends it a
    /// snapshot: the replica's core merges it, and later deltas apply on top.
    @Test func aBrowserReplicaCatchesUpFromASnapshot() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(edges: ["gw1", "web"], extraDaemonToml: "[compaction]\ninterval_ms = 100\npeer_retention_s = 1\n",
                            daemonLink: "ws://127.0.0.1:\(port)/spook")
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.waitFor("gw1 linked") { c.coherent() }
        for i in 0..<200 { try c.set("spookd", "site1.l1/snap/r\(i % 10)", .int(Int64(i))) }
        try c.waitFor("the daemon's log compacted", seconds: 15) {
            if case .int(let n)? = try c.status("spookd")["log_deltas"] { return n == 0 }
            return false
        }
        let web = try #require(c.edgeKeys["web"])
        let client = try Client(url: "ws://127.0.0.1:\(port)/spook", daemonKey: c.daemonKey.publicKey.hex,
                                seed: try Self.seed(c.dir.file("web.key")), publicKey: web.publicKey.hex, pattern: "site1.*")
        defer { client.child.stop() }
        try c.waitFor("a snapshot, and r9 = 199 in the replica") {
            try !client.seen("snapshot").isEmpty && client.value("site1.l1/snap/r9") == .object(["int": .string("199")])
        }
        for r in 0..<10 { #expect(try client.value("site1.l1/snap/r\(r)") == .object(["int": .string("\(190 + r)")])) }
        try c.set("spookd", "site1.l1/snap/r0", .int(1_000))
        try c.waitFor("a delta after the snapshot") { try client.value("site1.l1/snap/r0") == .object(["int": .string("1000")]) }
        #expect(client.seen("error").isEmpty, "\(client.seen("error"))")
    }

    /// A write outside the replica's grant is refused by the daemon: the
    /// write fails with `forbidden` (it is not acknowledged), and the
    /// replica links again and goes on.
    @Test func aWriteOutsideTheGrantIsRefused() throws {
        let port = try CuttableProxy.freePort()
        let c = try Cluster(edges: ["gw1", "web"], grants: ["web": ["site2.*"]], daemonLink: "ws://127.0.0.1:\(port)/spook")
        try c.startDaemon()
        let web = try #require(c.edgeKeys["web"])
        let client = try Client(url: "ws://127.0.0.1:\(port)/spook", daemonKey: c.daemonKey.publicKey.hex,
                                seed: try Self.seed(c.dir.file("web.key")), publicKey: web.publicKey.hex, pattern: "*")
        defer { client.child.stop() }
        try c.waitFor("the replica linked") { !client.seen("ready").isEmpty }
        try client.write("site1.l1/m", "x", int: 1)
        try c.waitFor("the write refused as forbidden") { client.seen("error").contains { $0["error"]?.string?.contains("forbidden") == true } }
        #expect(client.seen("written").isEmpty, "a refused write is never reported acknowledged")
        #expect(c.value("spookd", "site1.l1/m/x") == nil)
        try client.write("site2.l1/m", "x", int: 2)
        try c.waitFor("a granted write after it") { !client.seen("written").isEmpty && c.value("spookd", "site2.l1/m/x") == .int(2) }
    }

    /// The conformance vectors against the WebAssembly core in real headless
    /// Chromium (Debian's), from a page served on 127.0.0.1.
    @Test func theConformanceVectorsPassInHeadlessChromium() throws {
        let server = try ChildProcess("/usr/bin/node", ["\(repositoryRoot)/wasm/test/serve.mjs", repositoryRoot])
        defer { server.signal(SIGTERM); _ = server.wait() }
        let ready = try server.readLine(timeoutMs: 20_000) ?? ""
        let port = try #require(ready.split(separator: " ").last.flatMap { Int($0) }, "serve.mjs said \(ready)")
        let profile = TemporaryDirectory()
        let chromium = try ChildProcess("/usr/bin/chromium", [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(profile.path)", "--virtual-time-budget=60000",
            "--dump-dom", "http://127.0.0.1:\(port)/wasm/test/conformance.html",
        ], stderrPath: profile.file("chromium.log"))
        var dom: [String] = []
        while let line = try chromium.readLine(timeoutMs: 120_000) { dom.append(line) }
        #expect(chromium.wait() == 0)
        let files = try FileManager.default.contentsOfDirectory(atPath: "\(repositoryRoot)/Tests/Conformance/vectors").filter { $0.hasSuffix(".json") }
        #expect(files.count >= 52)
        #expect(dom.contains { $0.contains("conformance pass \(files.count) fail 0") }, "\(dom.filter { $0.contains("conformance") })")
    }
}
