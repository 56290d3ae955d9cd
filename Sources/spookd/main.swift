import SpookCommand
import SpookNode

enum Spookd: DaemonKind {
    static let name = "spookd"
    static let abstract = "The upstream daemon: accepts links from spook-edge agents, stores and routes their state."
    static func load(_ path: String) throws -> DaemonConfig { try DaemonConfig.load(path: path) }
    static func role(_ config: DaemonConfig) -> Node.Role { .daemon(config) }
}

DaemonCommand<Spookd>.start()
