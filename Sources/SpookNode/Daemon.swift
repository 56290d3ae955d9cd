#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore
import SpookCore
import SpookLink

/// What `spookd run` and `spook-edge run` share: start the node, say so on
/// stdout (unbuffered, for supervisors and tests), wait for SIGTERM or
/// SIGINT, shut down cleanly.
public enum DaemonMain {
    /// Blocks SIGTERM, SIGINT and SIGHUP in this thread before any other
    /// starts, so every thread inherits the mask and only `sigwait` below sees them.
    public static func blockSignals() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        return set
    }

    /// Runs a node until SIGTERM or SIGINT; SIGHUP reloads the config file
    /// through `reload` (nil: the file no longer loads; the reason was logged).
    public static func run(_ role: Node.Role, name: String, logLevel: Logger.Level, reload: @escaping () -> Node.Role?) throws {
        var signals = blockSignals()
        SpookLogHandler.level.withLockedValue { $0 = logLevel }
        LoggingSystem.bootstrap { label in SpookLogHandler(label: label) }
        let logger = Logger(label: name)
        let node: Node
        do { node = try Node(role: role, logger: logger) } catch let e as StoreLockError {
            logger.error("\(e.description)")
            FileOutput.error("\(name): \(e.description)")
            throw ExitStatus(73)  // EX_CANTCREAT: the store is taken
        }
        try node.start()
        let watchdog = SystemdNotify.startWatchdog(on: node.loop)
        SystemdNotify.send("READY=1\nSTATUS=origin \(node.origin), api \(node.config.apiSocket)")
        say("\(name): ready origin=\(node.origin) public_key=\(node.identity.publicKey.hex) api=\(node.config.apiSocket) version=\(SpookVersion.string)")
        var caught: Int32 = 0
        while true {
            sigwait(&signals, &caught)
            guard caught == SIGHUP else { break }
            SystemdNotify.send("RELOADING=1")
            if let next = reload() {
                node.reload(next)
            } else {
                logger.error("reload refused: the config file has errors (above); the running config stays")
            }
            SystemdNotify.send("READY=1")
        }
        logger.notice("stopping", metadata: ["signal": "\(caught)"])
        SystemdNotify.send("STOPPING=1")
        watchdog?.cancel()
        node.shutdown()
        say("\(name): stopped")
    }

    /// `check-config FILE`: every problem on stderr and exit 78, or "FILE: ok".
    public static func checkConfig<C: WarningConfig>(_ file: String, _ load: (String) throws -> C) throws -> Int32 {
        let config: C
        do { config = try load(file) } catch let e as ConfigError {
            FileOutput.error(e.description)
            return ConfigError.exitCode
        }
        for w in config.warnings { FileOutput.error(w) }
        say("\(file): ok\(config.warnings.isEmpty ? "" : " (\(config.warnings.count) warning\(config.warnings.count == 1 ? "" : "s"))")")
        return 0
    }

    /// `run --config FILE`: refuses (exit 78) a config `check-config` would
    /// reject, or an unknown `--log-level`, then runs. The level on the
    /// command line wins over `[log] level`.
    public static func run<C: WarningConfig>(config path: String, logLevel: String?, name: String, _ load: @escaping (String) throws -> C,
                              role: @escaping (C) -> Node.Role) throws -> Int32 {
        let config: C
        do { config = try load(path) } catch let e as ConfigError {
            FileOutput.error(e.description)
            return ConfigError.exitCode
        }
        for w in config.warnings { FileOutput.error(w) }
        let first = role(config)
        var level = first.node.logLevel
        if let logLevel {
            do { level = try Logger.Level.named(logLevel) } catch {
                FileOutput.error("\(name): --log-level: \(error)")
                return ConfigError.exitCode
            }
        }
        try run(first, name: name, logLevel: level) {
            do { return role(try load(path)) } catch {
                FileOutput.error("\(error)")
                return nil
            }
        }
        return 0
    }

    public static func say(_ line: String) {
        let text = line + "\n"
        _ = text.withCString { write(1, $0, strlen($0)) }
    }
}

/// A status the command line exits with.
public struct ExitStatus: Error {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
}

/// Writes to stderr without buffering.
public enum FileOutput {
    public static func error(_ text: String) {
        let line = text.hasSuffix("\n") ? text : text + "\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
