#if canImport(Glibc)
import Glibc
#endif

/// A child process with its stdout on a pipe, read line by line with a
/// deadline (no fixed sleeps). Spawned with an empty signal mask and default
/// handlers, whatever thread the test runs on.
public final class ChildProcess {
    public let pid: pid_t
    private let stdoutFD: Int32
    /// The write end of the child's stdin, when made `withStdin` (else -1).
    private var stdinFD: Int32 = -1
    private var buffer: [UInt8] = []
    public private(set) var exited = false

    /// - Parameters:
    ///   - environment: variables to add to (or replace in) the test's own environment.
    ///   - stderrPath: a file for the child's stderr (default: the test's own).
    ///   - withStdin: give the child a pipe on stdin for `writeLine` (default: the test's own stdin).
    public init(_ path: String, _ arguments: [String], environment: [String: String] = [:], stderrPath: String? = nil, withStdin: Bool = false) throws {
        // A test that writes to a child's socket after the child died must see
        // EPIPE, not die of SIGPIPE (which would orphan the other children).
        _ = Glibc.signal(SIGPIPE, SIG_IGN)
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw Failure("pipe: \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        var input: [Int32] = [-1, -1]
        if withStdin {
            guard pipe(&input) == 0 else { throw Failure("pipe: \(errno)") }
            // The test keeps the write end: no child may inherit it (EOF must reach this one).
            _ = fcntl(input[1], F_SETFD, FD_CLOEXEC)
            posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        }
        if let stderrPath { posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_APPEND, 0o600) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var variables: [String] = []
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            let name = String(text.prefix { $0 != "=" })
            if environment[name] == nil { variables.append(text) }
            index += 1
        }
        variables += environment.map { "\($0.key)=\($0.value)" }
        let envp = variables.map { strdup($0) } + [nil]
        defer { for p in envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, path, &actions, &attributes, argv, envp)
        close(fds[1])
        if withStdin {
            close(input[0])
            stdinFD = input[1]
        }
        guard rc == 0 else {
            if withStdin { close(input[1]) }
            close(fds[0])
            throw Failure("posix_spawn \(path): \(String(cString: strerror(rc)))")
        }
        pid = child
        stdoutFD = fds[0]
    }

    deinit {
        if !exited { kill(pid, SIGKILL); _ = wait() }
        close(stdoutFD)
        if stdinFD >= 0 { close(stdinFD) }
    }

    /// Writes one line to the child's stdin (made `withStdin`).
    public func writeLine(_ line: String) throws {
        let bytes = Array((line + "\n").utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { write(stdinFD, $0.baseAddress, $0.count) }
            guard n > 0 else { throw Failure("writing to the child's stdin: \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// The next line of stdout, or nil at end of file. Throws past the deadline.
    public func readLine(timeoutMs: Int32 = 30_000) throws -> String? {
        var waitedMs: Int32 = 0
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer.removeSubrange(...newline)
                return line
            }
            var p = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 100)
            if ready == 0 {
                waitedMs += 100
                if waitedMs >= timeoutMs { throw Failure("no line from child \(pid) within \(timeoutMs) ms") }
                continue
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return nil
            }
            buffer += chunk[..<n]
        }
    }

    public func signal(_ signal: Int32) { kill(pid, signal) }

    /// Waits for the child to end; returns its exit code (-1 if a signal ended it).
    public func exitCode() -> Int32 {
        let status = wait()
        return status & 0x7f == 0 ? (status >> 8) & 0xff : -1
    }

    /// Sends `signal` and waits up to `seconds` for the child to end; past
    /// that, SIGKILL. Returns whether it ended in time: a process that does
    /// not stop when asked fails its test instead of hanging the whole run.
    public func stop(_ signal: Int32 = SIGTERM, within seconds: Double = 30) -> Bool {
        guard !exited else { return true }
        kill(pid, signal)
        var status: Int32 = 0
        do {
            try waitUntil("process \(pid) to exit", seconds: seconds) {
                let r = waitpid(pid, &status, WNOHANG)
                return r == pid || (r < 0 && errno == ECHILD)
            }
            exited = true
            return true
        } catch {
            kill(pid, SIGKILL)
            _ = wait()
            return false
        }
    }

    /// Waits for the child to end; returns its wait status.
    @discardableResult
    public func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exited = true
        return status
    }

    /// Where the test's sibling executables were built.
    public static func builtExecutable(_ name: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        let me = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        var directory = me
        while let slash = directory.lastIndex(of: "/") {
            directory = String(directory[..<slash])
            let candidate = directory + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return name
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ description: String) { self.description = description }
    }
}

/// A fresh folder under /tmp, removed with everything in it when the value
/// goes away. Tests run in parallel: each takes its own.
public final class TemporaryDirectory {
    public let path: String

    public init() {
        var template = Array("/tmp/spook-test-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit { _ = system("rm -rf '\(path)'") }

    public func file(_ name: String) -> String { "\(path)/\(name)" }
}
