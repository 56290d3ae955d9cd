import ArgumentParser
import SpookNode

/// What differs between the two daemons' command lines: their name, what
/// they are, and how their config becomes a node role.
public protocol DaemonKind {
    associatedtype Config: WarningConfig
    static var name: String { get }
    static var abstract: String { get }
    static func load(_ path: String) throws -> Config
    static func role(_ config: Config) -> Node.Role
}

/// `NAME run -c FILE [--log-level L]` and `NAME check-config FILE`, for `spookd` and `spook-edge`.
public struct DaemonCommand<Kind: DaemonKind>: ParsableCommand {
    public static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: Kind.name, abstract: Kind.abstract, version: SpookVersion.string, subcommands: [Run.self, CheckConfig.self])
    }

    public init() {}

    /// Parses the command line and runs (the executables need not import ArgumentParser).
    public static func start() { main() }

    public struct Run: ParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(abstract: "Run with a config file (refuses to start on a config check-config rejects).")
        }
        @Option(name: .shortAndLong, help: "The config file (TOML).") var config: String
        @Option(help: "trace, debug, info, notice, warning, error, critical (default: [log] level, else info).") var logLevel: String?

        public init() {}

        public func run() throws {
            do {
                let status = try DaemonMain.run(config: config, logLevel: logLevel, name: Kind.name, Kind.load, role: Kind.role)
                if status != 0 { throw ExitCode(status) }
            } catch let e as ExitStatus {
                throw ExitCode(e.code)
            }
        }
    }

    public struct CheckConfig: ParsableCommand {
        public static var configuration: CommandConfiguration {
            CommandConfiguration(commandName: "check-config", abstract: "Check a config file; print every problem with file:line:column; exit 78 if any.")
        }
        @Argument(help: "The config file (TOML).") var file: String

        public init() {}

        public func run() throws {
            let status = try DaemonMain.checkConfig(file, Kind.load)
            if status != 0 { throw ExitCode(status) }
        }
    }
}
