#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookCore
import SpookLink
import SpookNode
import SpookTestSupport
import Testing

/// The live register page (`[web]` on spookd, wasm/web/) in real headless
/// Chromium, driven over the DevTools protocol (wasm/test/cdp.mjs).
@Suite(.serialized) struct BrowserPageTests {
    /// One Chromium tab on `url`.
    final class Tab {
        let process: ChildProcess
        let profile = TemporaryDirectory()

        init(_ url: String) throws {
            process = try ChildProcess("/usr/bin/node", ["--experimental-websocket", "--no-warnings", "\(repositoryRoot)/wasm/test/cdp.mjs",
                                                         "/usr/bin/chromium", profile.path, url], withStdin: true)
            let first = try process.readLine(timeoutMs: 60_000) ?? ""
            guard first.contains("ready") else { throw ChildProcess.Failure("cdp.mjs: \(first)") }
        }

        /// The value of a JavaScript expression in the page.
        func eval(_ expression: String) throws -> JSONValue? {
            let request = JSONValue.object(["eval": .string(expression)]).serialized
            try process.writeLine(String(decoding: request, as: UTF8.self))
            let line = try process.readLine(timeoutMs: 30_000) ?? ""
            return try JSONValue.parse(Array(line.utf8))["value"]
        }

        func text(_ selector: String) throws -> String? {
            if case .string(let s)? = try eval("document.querySelector('\(selector)')?.textContent ?? null") { return s }
            return nil
        }

        func screenshot(_ path: String) throws {
            try process.writeLine(String(decoding: JSONValue.object(["screenshot": .string(path)]).serialized, as: UTF8.self))
            _ = try process.readLine(timeoutMs: 30_000)
        }

        deinit {
            process.signal(SIGTERM)
            _ = process.wait()
        }
    }

    @Test func thePageShowsValuesWritesDesiredValuesAndRefusesAnUnknownKey() throws {
        let link = try CuttableProxy.freePort(), webPort = try CuttableProxy.freePort(), devicePort = try CuttableProxy.freePort()
        let device = try PymodbusServer(["--tcp", "\(devicePort)"])
        defer { device.stop() }
        let web = """
            [web]
            listen = "127.0.0.1:\(webPort)"
            assets = "\(repositoryRoot)/wasm"
            link = "ws://127.0.0.1:\(link)/spook"
            domains = ["site1.*"]

            """
        let c = try Cluster(edges: ["gw1", "web"], owns: ["gw1": ["site1.dev"]], extraDaemonToml: deviceSchema + web,
                            daemonLink: "ws://127.0.0.1:\(link)/spook",
                            edgeExtra: deviceSchema + modbusDevice("[[device]]\nname = \"plc\"\nkind = \"modbus-tcp\"\nurl = \"tcp://127.0.0.1:\(devicePort)\"\n"))
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.waitFor("the device's speed upstream") { c.value("spookd", "site1.dev/plc/speed") == .int(1234) }
        try c.set("spookd", "site1.l1/m/speed", .int(5))

        let key = try #require(c.edgeKeys["web"])
        let seed = try BrowserHalfPairTests.seed(c.dir.file("web.key"))
        let tab = try Tab("http://127.0.0.1:\(webPort)/web/#seed=\(seed)&pub=\(key.publicKey.hex)")
        try c.waitFor("the page linked") { try tab.text("#status") == "linked" }
        // A value set upstream with spookctl appears in the page's DOM.
        let ctl = try ChildProcess(Cluster.binary("spookctl"), ["set", "site1.l1/m/speed", "6", "--socket", c.socket("spookd")])
        #expect(ctl.wait() == 0)
        try c.waitFor("speed 6 in the page") { try tab.text("tr[data-register=\"site1.l1/m/speed\"] .value") == "6" }
        try c.waitFor("the device's registers in the page") { try tab.text("tr[data-register=\"site1.dev/plc/speed\"] .value") == "1234" }
        #expect(try tab.text("tr[data-register=\"site1.dev/plc/$online\"] .value") == "true")

        // A desired value set from the page reaches the device and comes back as reported.
        _ = try tab.eval("""
            (() => { document.getElementById('reg').value = 'site1.dev/plc/speed'; document.getElementById('val').value = '777';
                     document.getElementById('kind').value = 'desire'; document.getElementById('set').click(); return true; })()
            """)
        try c.waitFor("the device took 777") { c.value("gw1", "site1.dev/plc/speed") == .int(777) }
        try c.waitFor("reported 777 in the page, nothing pending") {
            try tab.text("tr[data-register=\"site1.dev/plc/speed\"] .value") == "777" && tab.text("tr[data-register=\"site1.dev/plc/speed\"] .pending") == ""
        }
        #expect(try tab.text("#written") == "acknowledged by the daemon")
        // History of a register: what the page saw, newest first.
        _ = try tab.eval("document.querySelector('tr[data-register=\"site1.dev/plc/speed\"]').click()")
        try c.waitFor("the history shows 777 then 1234") {
            guard case .string(let h)? = try tab.eval("document.getElementById('history').textContent") else { return false }
            return h.hasPrefix("777") && h.contains("1234")
        }
        let artifacts = "\(repositoryRoot)/.build/artifacts"
        mkdir(artifacts, 0o755)
        try tab.screenshot("\(artifacts)/browser-page.png")
        let png = try #require(FileManager.default.contents(atPath: "\(artifacts)/browser-page.png"))
        #expect(png.count > 10_000 && Array(png.prefix(4)) == [0x89, 0x50, 0x4E, 0x47], "a PNG screenshot")

        // A page whose key no [[peer]] lists is refused, and says so.
        let stranger = Identity()
        let strangerSeed = stranger.privateKey.seed.hex
        let refused = try Tab("http://127.0.0.1:\(webPort)/web/#seed=\(strangerSeed)&pub=\(stranger.publicKey.hex)")
        try c.waitFor("the stranger's page refused") { (try refused.text("#why"))?.contains("unauthorised") == true }
        #expect(try refused.text("#status") != "linked")
    }

    /// The page in real Chromium and a real agent write one register at once
    /// through partitions between the page and the daemon (a TCP proxy in
    /// front of the WebSocket listener that config.json names); after each
    /// heal the page, the daemon and the agent hold the same value.
    @Test func thePageAndAnAgentConvergeThroughPartitions() throws {
        let link = try CuttableProxy.freePort(), webPort = try CuttableProxy.freePort()
        let proxy = try CuttableProxy(to: link)
        let web = """
            [web]
            listen = "127.0.0.1:\(webPort)"
            assets = "\(repositoryRoot)/wasm"
            link = "ws://127.0.0.1:\(proxy.port)/spook"
            domains = ["site1.*"]

            """
        let c = try Cluster(edges: ["gw1", "web"], extraDaemonToml: web, daemonLink: "ws://127.0.0.1:\(link)/spook")
        try c.startDaemon()
        try c.startEdge("gw1")
        try c.waitFor("gw1 linked") { c.coherent() }
        let key = try #require(c.edgeKeys["web"])
        let tab = try Tab("http://127.0.0.1:\(webPort)/web/#seed=\(try BrowserHalfPairTests.seed(c.dir.file("web.key")))&pub=\(key.publicKey.hex)")
        try c.waitFor("the page linked") { try tab.text("#status") == "linked" }
        let cell = "tr[data-register=\"site1.l1/m/race\"] .value"
        for round in 0..<3 {
            proxy.partition()
            try c.waitFor("round \(round): the page saw the cut") { try tab.text("#status") == "closed" }
            for i in 0..<3 {
                // The page's write waits (unacknowledged) while cut; the agent's goes through.
                _ = try tab.eval("""
                    (() => { document.getElementById('reg').value = 'site1.l1/m/race'; document.getElementById('val').value = '\(1_000 * round + 100 + i)';
                             document.getElementById('kind').value = 'set'; document.getElementById('set').click(); return true; })()
                    """)
                try c.set("gw1", "site1.l1/m/race", .int(Int64(1_000 * round + 200 + i)))
            }
            proxy.heal()
            try c.waitFor("round \(round): linked again, the page's writes acknowledged, all three agree", seconds: 30) {
                guard try tab.text("#status") == "linked", try tab.text("#written") == "acknowledged by the daemon",
                      let shown = try tab.text(cell), let n = Int64(shown) else { return false }
                return c.value("spookd", "site1.l1/m/race") == .int(n) && c.value("gw1", "site1.l1/m/race") == .int(n)
            }
        }
    }

    /// `[web]` with `cert` and `key`: the page's files over HTTPS, the
    /// certificate verified against its CA (openssl s_client).
    @Test func thePageIsServedOverHTTPS() throws {
        let dir = TemporaryDirectory()
        try TransportTests.certificates(in: dir)
        let webPort = try CuttableProxy.freePort(), link = try CuttableProxy.freePort()
        let web = """
            [web]
            listen = "127.0.0.1:\(webPort)"
            assets = "\(repositoryRoot)/wasm"
            link = "wss://localhost:\(link)/spook"
            cert = "\(dir.file("server.pem"))"
            key = "\(dir.file("server.key"))"

            """
        let c = try Cluster(extraDaemonToml: web, directory: dir)
        try c.startDaemon()
        func get(_ path: String) throws -> [String] {
            let request = dir.file("request")
            try "GET \(path) HTTP/1.0\r\nHost: localhost\r\n\r\n".write(toFile: request, atomically: true, encoding: .utf8)
            let p = try ChildProcess("/bin/sh", ["-c", "/usr/bin/openssl s_client -quiet -verify_return_error -connect 127.0.0.1:\(webPort) -servername localhost -CAfile '\(dir.file("ca.pem"))' < '\(request)' 2>/dev/null"])
            var lines: [String] = []
            while let line = try p.readLine(timeoutMs: 20_000) { lines.append(line) }
            _ = p.wait()
            return lines
        }
        var answer: [String] = []
        try c.waitFor("config.json over HTTPS") {
            answer = try get("/config.json")
            return answer.first?.hasPrefix("HTTP/1.0 200") == true
        }
        #expect(answer.contains { $0.contains("\"link\":\"wss://localhost:\(link)/spook\"") }, "\(answer)")
        #expect(try get("/web/index.html").contains { $0.contains("<title>Spook Edge: registers</title>") })
        #expect(try get("/../Package.swift").first?.hasPrefix("HTTP/1.0 404") == true, "nothing outside the assets")
    }
}
