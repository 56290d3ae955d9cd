import Logging
import SpookPostgres
import SpookStore
import SpookTestSupport

/// The store engines every store test runs against, from the same test code.
public enum Backend: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite, postgres
    public var description: String { rawValue }
}

/// Where a test's stores live: files in a temporary folder (SQLite), or
/// databases on the test process's private PostgreSQL server. Opening a
/// name again opens the same store.
public final class StoreShelf {
    public let backend: Backend
    public let dir = TemporaryDirectory()
    private var databases: [String: String] = [:]

    public init(_ backend: Backend) { self.backend = backend }

    /// What `[node] data` would say: a file path, or a postgres:// URL.
    public func location(_ name: String) throws -> String {
        switch backend {
        case .sqlite:
            return dir.file("\(name).db")
        case .postgres:
            if let url = databases[name] { return url }
            let url = try PostgresServer.shared().createDatabase(name)
            databases[name] = url
            return url
        }
    }

    public func open(_ name: String = "s", _ options: StoreOptions) throws -> SQLStore {
        try SQLStore.open(data: try location(name), options: options, logger: Logger(label: "test.store"))
    }
}
