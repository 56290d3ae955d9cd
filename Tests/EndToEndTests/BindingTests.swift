#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SpookNode
import SpookTestSupport
import Testing

/// `[api] fifo`: shell scripts write registers with `echo … > fifo`.
@Suite(.serialized) struct FifoTests {
    @Test func shellScriptsWriteThroughTheFifoAndBadLinesAreRefused() throws {
        let metrics = try CuttableProxy.freePort()
        let c = try Cluster(edgeExtra: "[metrics]\nlisten = \"127.0.0.1:\(metrics)\"\n")
        let fifo = c.dir.file("edge.in")
        let socketLine = "socket = \"\(c.dir.file("gw1.sock"))\""
        let config = try String(contentsOfFile: c.dir.file("gw1.toml"), encoding: .utf8)
        #expect(config.contains(socketLine))
        try c.write("gw1.toml", config.replacingOccurrences(of: socketLine, with: socketLine + "\nfifo = \"\(fifo)\""))
        try c.startDaemon()
        try c.startEdge()
        func sh(_ script: String) throws {
            let p = try ChildProcess("/bin/sh", ["-c", script])
            #expect(p.wait() == 0, "\(script)")
        }
        func refused(_ reason: String) throws -> Double? {
            MetricsTests.sample(try MetricsTests.get(metrics, "/metrics"), "spook_fifo_refused_total{reason=\"\(reason)\"}")
        }
        #expect(try refused("syntax") == 0 && refused("too-long") == 0)
        try sh("echo 'set site1.l1/fifo/speed 1500' > '\(fifo)'")
        try c.waitFor("a value written by echo, upstream") { c.value("spookd", "site1.l1/fifo/speed") == .int(1500) }
        // Bad lines between good ones, from one writer: each refused, none stops the reader.
        try sh("printf 'garbage line\\nset site1.l1/fifo/$x 1\\n# a comment\\n\\nset site1.l1/fifo/name hello world\\nset site1.l1/fifo/float {\"float\":2.5}\\n' > '\(fifo)'")
        try c.waitFor("the good lines after the bad ones") {
            c.value("spookd", "site1.l1/fifo/name") == .string("hello world") && c.value("spookd", "site1.l1/fifo/float") == .object(["float": .double(2.5)])
        }
        #expect(try refused("syntax") == 1 && refused("refused") == 1)
        // A line over 64 KiB is skipped to its end; the next line is read.
        try sh("{ head -c 70000 /dev/zero | tr '\\000' x; echo; echo 'set site1.l1/fifo/speed 2'; } > '\(fifo)'")
        try c.waitFor("the line after the long one") { c.value("spookd", "site1.l1/fifo/speed") == .int(2) }
        #expect(try refused("too-long") == 1)
        var info = stat()
        #expect(stat(fifo, &info) == 0 && info.st_mode & S_IFMT == S_IFIFO && info.st_mode & 0o777 == 0o620)
        // A flood: 200,000 lines as fast as the shell writes them. Lines past the
        // bounds are refused as busy; the node keeps answering, and a line
        // written after the flood is taken.
        try sh("yes 'set site1.l1/fifo/flood 1' | head -n 200000 > '\(fifo)'")
        #expect(try c.status("gw1")["node"] == .string("gw1"))
        try c.waitFor("a line after the flood") {
            try sh("echo 'set site1.l1/fifo/after 7' > '\(fifo)'")
            return c.value("gw1", "site1.l1/fifo/after") == .int(7)
        }
        #expect(c.value("gw1", "site1.l1/fifo/flood") == .int(1))
    }
}

/// The C binding (bindings/c), its test program against a real agent.
@Suite struct CBindingTests {
    @Test func theCBindingTalksToARealNode() throws {
        let program = "\(repositoryRoot)/bindings/c/build/test_spook"
        #expect(access(program, X_OK) == 0, "\(program) is built by scripts/test (make -C bindings/c)")
        let c = try Cluster()
        try c.startEdge()
        let p = try ChildProcess(program, [c.socket("gw1")])
        var lines: [String] = []
        while let line = try p.readLine(timeoutMs: 20_000) { lines.append(line) }
        #expect(p.wait() == 0, "\(lines)")
        #expect(lines.last?.hasSuffix(", 0 failed") == true && lines.last?.hasPrefix("c binding: 16 checks") == true, "\(lines)")
        // What the C program wrote is there for everyone else.
        #expect(c.value("gw1", "site1.c/m/speed") == .int(1500))
    }
}
