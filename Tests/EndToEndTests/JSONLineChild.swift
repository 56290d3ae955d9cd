import Foundation
import SpookNode
import SpookTestSupport

/// A helper process that speaks JSON lines (the Sparkplug host, the browser
/// replica): a thread keeps every line it prints, commands go to its stdin.
final class JSONLineChild: @unchecked Sendable {
    let process: ChildProcess
    private let lock = NSLock()
    private var lines: [JSONValue] = []

    init(_ path: String, _ arguments: [String]) throws {
        process = try ChildProcess(path, arguments, withStdin: true)
        Thread { [unowned self] in
            while let line = try? self.process.readLine(timeoutMs: 600_000) {
                guard let j = try? JSONValue.parse(Array(line.utf8)) else { continue }
                self.lock.lock()
                self.lines.append(j)
                self.lock.unlock()
            }
        }.start()
    }

    /// The lines so far that pass `filter`, in order.
    func messages(_ filter: (JSONValue) -> Bool = { _ in true }) -> [JSONValue] {
        lock.lock()
        defer { lock.unlock() }
        return lines.filter(filter)
    }

    /// The lines so far that carry `key`.
    func seen(_ key: String) -> [JSONValue] { messages { $0[key] != nil } }

    func send(_ line: String) throws { try process.writeLine(line) }

    func stop() {
        process.signal(SIGTERM)
        _ = process.wait()
    }
}
