#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import SpookCore
import SpookLink

/// What `spookd run` and `spook-edge run` share: start the node, say so on
/// stdout (unbuffered, for supervisors and tests), wait for SIGTERM or
/// SIGINT, shut down cleanly.
public enum DaemonMain {
    /// Blocks SIGTERM and SIGINT in this thread before any other starts, so
    /// every thread inherits the mask and only `sigwait` below sees them.
    public static func blockTerminationSignals() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        return set
    }

    public static func run(_ role: Node.Role, name: String, logLevel: Logger.Level) throws {
        var signals = blockTerminationSignals()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = logLevel
            return h
        }
        let logger = Logger(label: name)
        let node = try Node(role: role, logger: logger)
        try node.start()
        let watchdog = SystemdNotify.startWatchdog(on: node.loop)
        SystemdNotify.send("READY=1\nSTATUS=origin \(node.origin), api \(node.config.apiSocket)")
        say("\(name): ready origin=\(node.origin) public_key=\(node.identity.publicKey.hex) api=\(node.config.apiSocket)")
        var caught: Int32 = 0
        sigwait(&signals, &caught)
        logger.notice("stopping", metadata: ["signal": "\(caught)"])
        SystemdNotify.send("STOPPING=1")
        watchdog?.cancel()
        node.shutdown()
        say("\(name): stopped")
    }

    /// `check-config FILE`: every problem on stderr and exit 78, or "FILE: ok".
    public static func checkConfig<C>(_ file: String, _ load: (String) throws -> C) throws -> Int32 {
        do { _ = try load(file) } catch let e as ConfigError {
            FileOutput.error(e.description)
            return ConfigError.exitCode
        }
        say("\(file): ok")
        return 0
    }

    /// `run --config FILE`: refuses (exit 78) a config `check-config` would reject, then runs.
    public static func run<C>(config path: String, logLevel: String, name: String, _ load: (String) throws -> C, role: (C) -> Node.Role) throws -> Int32 {
        let config: C
        do { config = try load(path) } catch let e as ConfigError {
            FileOutput.error(e.description)
            return ConfigError.exitCode
        }
        try run(role(config), name: name, logLevel: Logger.Level(rawValue: logLevel) ?? .info)
        return 0
    }

    public static func say(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(1, $0, strlen($0)) }
    }
}

/// Writes to stderr without buffering.
public enum FileOutput {
    public static func error(_ text: String) {
        let line = text.hasSuffix("\n") ? text : text + "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
