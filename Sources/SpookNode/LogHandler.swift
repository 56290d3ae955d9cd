#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers

/// This build's version, printed by `--version` and in `status`.
public enum SpookVersion {
    public static let string = "0.10.0"
}

/// The daemons' log lines, on stderr. Under systemd (stderr is the journal's
/// stream, `JOURNAL_STREAM` names it) each line starts with its sd-daemon
/// priority (`<4>` for a warning), so `journalctl -p warning` works; on a
/// terminal it is plain text. One line per event: level, label, message,
/// then metadata as key=value.
public struct SpookLogHandler: LogHandler {
    /// The process's level, shared by every logger so that a reload (SIGHUP)
    /// changes it everywhere at once.
    public static let level = NIOLockedValueBox(Logger.Level.info)

    public var logLevel: Logger.Level {
        get { Self.level.withLockedValue { $0 } }
        set { Self.level.withLockedValue { $0 = newValue } }
    }
    public var metadata: Logger.Metadata = [:]
    let label: String
    let journal: Bool

    public init(label: String, journal: Bool = SpookLogHandler.stderrIsJournal()) {
        self.label = label
        self.journal = journal
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// sd-daemon(3) priorities.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// True when stderr is the journal's stream: `JOURNAL_STREAM` is
    /// "device:inode" of it (systemd.exec(5)).
    public static func stderrIsJournal() -> Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        var info = stat()
        guard fstat(2, &info) == 0 else { return false }
        return value == "\(info.st_dev):\(info.st_ino)"
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { _, new in new } }
        var line = journal ? "<\(Self.priority(event.level))>" : ""
        line += "\(event.level) \(label): \(event.message)"
        for key in fields.keys.sorted() { line += " \(key)=\(fields[key]!)" }
        line += "\n"
        // One write per line, so lines of different threads never interleave.
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}

extension Logger.Level {
    /// The level named `text`, or an error that lists the names.
    public static func named(_ text: String) throws -> Logger.Level {
        guard let level = Logger.Level(rawValue: text) else {
            throw LogLevelError("unknown log level \"\(text)\": use one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return level
    }
}

public struct LogLevelError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
