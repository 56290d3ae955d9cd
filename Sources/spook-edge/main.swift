import ArgumentParser
import Logging
import SpookNode

struct SpookEdge: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spook-edge",
        abstract: "The edge agent: keeps this gateway's registers entangled with its upstream daemons.",
        subcommands: [Run.self, CheckConfig.self]
    )

    struct Run: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run with a config file (refuses to start on a config check-config rejects).")
        @Option(name: .shortAndLong, help: "The config file (TOML).") var config: String
        @Option(help: "trace, debug, info, notice, warning, error, critical.") var logLevel: String = "info"

        func run() throws {
            let config: EdgeConfig
            do { config = try EdgeConfig.load(path: self.config) } catch let e as ConfigError {
                FileOutput.error(e.description)
                throw ExitCode(ConfigError.exitCode)
            }
            try DaemonMain.run(.edge(config), name: "spook-edge", logLevel: Logger.Level(rawValue: logLevel) ?? .info)
        }
    }

    struct CheckConfig: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Check a config file; print every problem with file:line:column; exit 78 if any.")
        @Argument(help: "The config file (TOML).") var file: String

        func run() throws {
            do { _ = try EdgeConfig.load(path: file) } catch let e as ConfigError {
                FileOutput.error(e.description)
                throw ExitCode(ConfigError.exitCode)
            }
            print("\(file): ok")
        }
    }
}

SpookEdge.main()
