import SpookCommand
import SpookNode
#if MQTT
import SpookSparkplug
#endif

enum SpookEdge: DaemonKind {
    static let name = "spook-edge"
    static let abstract = "The edge agent: keeps this gateway's registers entangled with its upstream daemons."
    static func load(_ path: String) throws -> EdgeConfig { try EdgeConfig.load(path: path) }
    static func role(_ config: EdgeConfig) -> Node.Role { .edge(config) }
}

#if MQTT
// The [mqtt] Sparkplug B edge node (a build without the MQTT trait refuses [mqtt] at start).
Node.makeMQTT = SparkplugEdgeNode.make
#endif
DaemonCommand<SpookEdge>.start()
