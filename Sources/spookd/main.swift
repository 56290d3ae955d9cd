import ArgumentParser
import Logging
import SpookNode

#if canImport(Glibc)
import Glibc
#endif

struct Spookd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spookd",
        abstract: "The upstream daemon: accepts links from spook-edge agents, stores and routes their state.",
        subcommands: [Run.self, CheckConfig.self]
    )

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run with a config file (refuses to start on a config check-config rejects).")
        @Option(name: .shortAndLong, help: "The config file (TOML).") var config: String
        @Option(help: "trace, debug, info, notice, warning, error, critical.") var logLevel: String = "info"

        func run() throws {
            let config: DaemonConfig
            do { config = try DaemonConfig.load(path: self.config) } catch let e as ConfigError {
                FileOutput.error(e.description)
                throw ExitCode(ConfigError.exitCode)
            }
            try DaemonMain.run(.daemon(config), name: "spookd", logLevel: Logger.Level(rawValue: logLevel) ?? .info)
        }
    }

    struct CheckConfig: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Check a config file; print every problem with file:line:column; exit 78 if any.")
        @Argument(help: "The config file (TOML).") var file: String

        func run() throws {
            do { _ = try DaemonConfig.load(path: file) } catch let e as ConfigError {
                FileOutput.error(e.description)
                throw ExitCode(ConfigError.exitCode)
            }
            print("\(file): ok")
        }
    }
}

Spookd.main()
