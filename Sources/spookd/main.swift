import SpookCommand
import SpookNode
#if PostgreSQL
import SpookPostgres
import SpookStore
#endif

enum Spookd: DaemonKind {
    static let name = "spookd"
    static let abstract = "The upstream daemon: accepts links from spook-edge agents, stores and routes their state."
    static func load(_ path: String) throws -> DaemonConfig { try DaemonConfig.load(path: path) }
    static func role(_ config: DaemonConfig) -> Node.Role { .daemon(config) }
}

#if PostgreSQL
// [node] data = "postgres://…" (a build without the PostgreSQL trait refuses it at start).
Node.openSharedStore = { data, options, logger in try SQLStore.open(data: data, options: options, logger: logger) }
#endif
DaemonCommand<Spookd>.start()
