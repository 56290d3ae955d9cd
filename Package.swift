// swift-tools-version:6.1
//
// Layout (see docs/architecture.md): imports point one way,
//   executables -> SpookSimulation -> SpookStore -> SpookCore
// SpookCore is pure (no I/O, no clocks, no Foundation networking).
import PackageDescription

let package = Package(
    name: "spook-edge",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "SpookCore", targets: ["SpookCore"]),
        .library(name: "SpookWire", targets: ["SpookWire"]),
        .library(name: "SpookStore", targets: ["SpookStore"]),
        .library(name: "SpookLink", targets: ["SpookLink"]),
        .executable(name: "spookd", targets: ["spookd"]),
        .executable(name: "spook-edge", targets: ["spook-edge"]),
        .executable(name: "spookctl", targets: ["spookctl"]),
        .executable(name: "spook-sim", targets: ["spook-sim"]),
        .executable(name: "spook-bench", targets: ["spook-bench"]),
    ],
    // MQTT (Sparkplug B) in spook-edge: on by default. `--disable-default-traits`
    // builds an agent without it, and without SwiftProtobuf and
    // FoundationEssentials (about 4 MiB less; docs/mqtt.md).
    // PostgreSQL in spookd: on by default. It brings postgres-nio, and with
    // it Foundation, into spookd only (never into spook-edge); a spookd
    // built with `--disable-default-traits` stores in SQLite alone.
    traits: [
        .trait(name: "MQTT", description: "The MQTT Sparkplug B edge node in spook-edge (libmosquitto, swift-protobuf)."),
        .trait(name: "PostgreSQL", description: "spookd's PostgreSQL store ([node] data = \"postgres://…\"; postgres-nio)."),
        .default(enabledTraits: ["MQTT", "PostgreSQL"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.29.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        // Sparkplug B payloads (the generated code is committed: builds never run protoc).
        // No traits: the default ones pull in Foundation's streams.
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0", traits: []),
        // spookd's PostgreSQL store (several daemons on one database).
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
        // Tests only: the WebAssembly core run under WasmKit (no default traits: no file system, no disassembler).
        .package(url: "https://github.com/swiftwasm/WasmKit", .upToNextMinor(from: "0.4.2"), traits: ["MultiThread"]),
    ],
    targets: [
        // System libraries, found through pkg-config (scripts/install-deps installs them).
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CModbus", pkgConfig: "libmodbus", providers: [.apt(["libmodbus-dev"])]),
        .systemLibrary(name: "CSerialPort", pkgConfig: "libserialport", providers: [.apt(["libserialport-dev"])]),
        .systemLibrary(name: "CUSB", pkgConfig: "libusb-1.0", providers: [.apt(["libusb-1.0-0-dev"])]),
        .systemLibrary(name: "CMosquitto", pkgConfig: "libmosquitto", providers: [.apt(["libmosquitto-dev"])]),

        // The pure core: names, values, clocks, deltas, collapse, vectors, HalfPair.
        .target(name: "SpookCore"),
        // ETCP/ESTP frames and messages. Pure: bytes in, messages out.
        .target(name: "SpookWire", dependencies: ["SpookCore"]),
        // Links: identity (Ed25519 from the BoringSSL inside swift-nio-ssl: one crypto library), the ETCP handshake, ESTP sessions; transports follow.
        .target(
            name: "SpookLink",
            dependencies: ["SpookCore", "SpookWire", "SpookStore", .product(name: "NIOSSL", package: "swift-nio-ssl")]
        ),
        // Durable state on SQLite behind the `Store` protocol.
        .target(
            name: "SpookStore",
            dependencies: [
                "SpookCore", "CSQLite",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The store on PostgreSQL: the same store over postgres-nio, for spookd.
        .target(
            name: "SpookPostgres",
            dependencies: [
                "SpookCore", "SpookStore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // One node: config, and (next) the runtime both daemons share.
        .target(
            name: "SpookNode",
            dependencies: [
                "SpookCore", "SpookStore", "SpookLink", "SpookWire", "SpookDevices", "CModbus",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Devices: the firmware bridge host, Modbus (libmodbus), serial ports, USB (libusb), attach matching.
        .target(name: "SpookDevices", dependencies: ["SpookCore", "CModbus", "CSerialPort", "CUSB"]),
        // Deterministic simulation of replicas over faulty links (tests and `spook-sim`).
        .target(name: "SpookSimulation", dependencies: ["SpookCore", "SpookStore", "SpookWire", "SpookLink"]),

        // The MQTT Sparkplug B edge node: payloads (generated from sparkplug_b.proto), topics,
        // and the runtime over libmosquitto. Only spook-edge links it (spookd stays free of Foundation).
        .target(
            name: "SpookSparkplug",
            dependencies: [
                "SpookCore", "SpookNode", "SpookStore", "CMosquitto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["sparkplug_b.proto"]
        ),

        // The two daemons' shared command line (run, check-config).
        .target(name: "SpookCommand", dependencies: ["SpookNode"]),
        .executableTarget(
            name: "spookd",
            dependencies: [
                "SpookCommand", "SpookNode",
                .target(name: "SpookPostgres", condition: .when(traits: ["PostgreSQL"])),
                .target(name: "SpookStore", condition: .when(traits: ["PostgreSQL"])),
            ]
        ),
        .executableTarget(
            name: "spook-edge",
            dependencies: ["SpookCommand", "SpookNode", .target(name: "SpookSparkplug", condition: .when(traits: ["MQTT"]))]
        ),
        .executableTarget(name: "spookctl", dependencies: ["SpookNode", "SpookLink", "SpookCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(
            name: "spook-sim",
            dependencies: [
                "SpookSimulation", "SpookStore", "SpookCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "spook-bench",
            dependencies: [
                "SpookCore", "SpookStore", "SpookLink", "SpookNode", "CSQLite", "SpookSparkplug", "CMosquitto",
                "SpookWire", "SpookPostgres", "SpookTestSupport", .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            path: "bench/Sources/spook-bench"
        ),
        // Child process for the kill -9 crash tests: writes deltas, reports what was acknowledged.
        .executableTarget(
            name: "spook-crash-writer",
            dependencies: ["SpookCore", "SpookStore", "SpookPostgres", .product(name: "Logging", package: "swift-log")],
            path: "Tests/Helpers/spook-crash-writer"
        ),

        // Helpers shared by the test targets: child processes, temporary folders.
        .target(name: "SpookTestSupport", path: "Tests/Support"),

        .testTarget(name: "SpookCoreTests", dependencies: ["SpookCore"]),
        .testTarget(name: "SpookWireTests", dependencies: ["SpookWire", "SpookCore"]),
        .testTarget(name: "SpookNodeTests", dependencies: ["SpookNode", "SpookCore", "SpookLink"]),
        .testTarget(name: "SpookSparkplugTests", dependencies: ["SpookSparkplug", "SpookCore", "SpookNode"]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: ["SpookNode", "SpookLink", "SpookWire", "SpookStore", "SpookCore", "SpookDevices", "SpookTestSupport", "spookd", "spook-edge", "spookctl"]
        ),
        .testTarget(name: "SpookLinkTests", dependencies: ["SpookLink", "SpookWire", "SpookCore", "SpookTestSupport"]),
        // A test-only SQLite VFS that simulates power cuts (unsynced writes undone).
        .target(name: "CPowerCut", dependencies: ["CSQLite"], path: "Tests/Helpers/CPowerCut"),
        // The store tests' engines (SQLite files, databases on a private PostgreSQL server).
        .target(
            name: "SpookStoreTestSupport",
            dependencies: ["SpookStore", "SpookPostgres", "SpookTestSupport", .product(name: "Logging", package: "swift-log")],
            path: "Tests/StoreSupport"
        ),
        .testTarget(
            name: "SpookStoreTests",
            dependencies: [
                "SpookStore", "SpookPostgres", "SpookCore", "CSQLite", "CPowerCut", "SpookTestSupport", "SpookStoreTestSupport", "spook-crash-writer",
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "ConformanceTests",
            dependencies: ["SpookCore", "SpookStore", "SpookStoreTestSupport", .product(name: "WasmKit", package: "WasmKit")],
            path: "Tests/Conformance",
            exclude: ["make-vectors.py"],
            resources: [.copy("vectors")]
        ),
        .testTarget(name: "SimulationTests", dependencies: ["SpookSimulation", "SpookCore", "SpookStore", "SpookTestSupport"]),
        // The firmware bridge's C library, linked into tests only: the Swift host runs against the real device code.
        .target(name: "CFirmwareBridge", path: "firmware-bridge", sources: ["src/sfb.c"], publicHeadersPath: "include"),
        .testTarget(
            name: "SpookDevicesTests",
            dependencies: ["SpookDevices", "SpookCore", "SpookNode", "CFirmwareBridge", "SpookTestSupport", .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CModbus", "CSerialPort", "CUSB", "CSQLite"]),
    ],
    swiftLanguageModes: [.v6]
)

// A call that resolves to an extension from a module this file does not
// import (Foundation's, made visible by a dependency's re-export) is a
// compile error, so Foundation cannot slip into the agent unnoticed.
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + [.enableUpcomingFeature("MemberImportVisibility")]
}
