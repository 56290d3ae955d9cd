import ArgumentParser
import SpookNode

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
            let status = try DaemonMain.run(config: config, logLevel: logLevel, name: "spookd", DaemonConfig.load, role: { .daemon($0) })
            if status != 0 { throw ExitCode(status) }
        }
    }

    struct CheckConfig: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Check a config file; print every problem with file:line:column; exit 78 if any.")
        @Argument(help: "The config file (TOML).") var file: String

        func run() throws {
            let status = try DaemonMain.checkConfig(file, DaemonConfig.load)
            if status != 0 { throw ExitCode(status) }
        }
    }
}

Spookd.main()
