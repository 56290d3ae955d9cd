#if canImport(Glibc)
import Glibc
#endif
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

/// `NAME run -c FILE [--log-level L]` and `NAME check-config FILE`, for
/// `spookd` and `spook-edge`. Two commands and three options: read by hand
/// rather than with a parser library, which linked FoundationEssentials into
/// the agent (docs/benchmarks.md, footprint).
public enum DaemonCommand<Kind: DaemonKind> {
    /// Exit status for a command line that cannot be used (sysexits EX_USAGE).
    static var usageExit: Int32 { 64 }

    static var usage: String {
        """
        \(Kind.name): \(Kind.abstract)

        usage: \(Kind.name) run -c FILE [--log-level LEVEL]
               \(Kind.name) check-config FILE
               \(Kind.name) --version | --help

          run            Run with a config file (refuses to start on a config check-config rejects).
            -c, --config FILE    The config file (TOML).
            --log-level LEVEL    trace, debug, info, notice, warning, error, critical
                                 (default: [log] level, else info).
          check-config   Check a config file; print every problem with file:line:column; exit 78 if any.
          --version      Print the version.

        """
    }

    /// Parses the command line, runs, and exits with the command's status.
    public static func start() -> Never {
        exit(main(Array(CommandLine.arguments.dropFirst())))
    }

    static func main(_ args: [String]) -> Int32 {
        if args.contains("--help") || args.contains("-h") || args.first == "help" {
            DaemonMain.say(usage)
            return 0
        }
        if args.first == "--version" {
            DaemonMain.say(SpookVersion.string)
            return 0
        }
        do {
            switch args.first {
            case "run":
                let (config, logLevel) = try runOptions(Array(args.dropFirst()))
                return try DaemonMain.run(config: config, logLevel: logLevel, name: Kind.name, Kind.load, role: Kind.role)
            case "check-config":
                guard args.count == 2, !args[1].hasPrefix("-") else { throw UsageError("check-config takes one argument: the config file") }
                return try DaemonMain.checkConfig(args[1], Kind.load)
            case nil:
                throw UsageError("missing command (run or check-config)")
            case let other?:
                throw UsageError("unknown command \"\(other)\" (run or check-config)")
            }
        } catch let e as UsageError {
            FileOutput.error("\(Kind.name): \(e.message)\n\n" + usage)
            return usageExit
        } catch let e as ExitStatus {
            return e.code
        } catch {
            FileOutput.error("\(Kind.name): \(error)")
            return 1
        }
    }

    /// `-c FILE`, `--config FILE`, `--config=FILE`, `--log-level L`, `--log-level=L`.
    static func runOptions(_ args: [String]) throws -> (config: String, logLevel: String?) {
        var config: String?, logLevel: String?
        var i = 0
        func value(_ option: String, _ inline: String?) throws -> String {
            if let inline { return inline }
            i += 1
            guard i < args.count else { throw UsageError("\(option) needs a value") }
            return args[i]
        }
        while i < args.count {
            let arg = args[i]
            let (option, inline): (String, String?) = {
                guard arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") else { return (arg, nil) }
                return (String(arg[..<eq]), String(arg[arg.index(after: eq)...]))
            }()
            switch option {
            case "-c", "--config": config = try value(option, inline)
            case "--log-level": logLevel = try value(option, inline)
            default: throw UsageError("unknown option \"\(arg)\" for run")
            }
            i += 1
        }
        guard let config else { throw UsageError("run needs -c FILE") }
        return (config, logLevel)
    }
}

struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}
