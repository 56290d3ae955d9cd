// Micro-benchmarks of the core and the store. Prints one table; every figure
// has a baseline measured in the same run, because this machine is shared and
// noisy: compare ratios across runs, not absolute numbers.
//
//     bench/run              (release build, then this)
//     bench/run --quick      (smaller counts, for a smoke run)
//     bench/run --only P     one part (bench/run --help lists them)
#if canImport(Glibc)
import Glibc
#endif
import CSQLite
import SpookCore
import SpookStore

let parts = ["core", "store", "wasm", "link", "fleet", "longrun", "devices", "mqtt", "page", "footprint"]
let usage = """
    usage: bench/run [--quick] [--only PART] [--fleet-rate R] [--fleet-sqlite-only] [--fleet-lockstep]
      --quick              a tenth of the counts (a smoke run)
      --only PART          one part: \(parts.joined(separator: ", "))
      --fleet-rate R       the fleet's updates/s per agent (default 100)
      --fleet-sqlite-only  the fleet without its PostgreSQL set-ups
      --fleet-lockstep     the fleet's agents all write in the same instant (default: spread over the interval)

    """
/// The command line, every argument checked before anything runs: a typo
/// must not start a run of many minutes that measures something else.
struct Arguments {
    var quick = false
    var only: String?
    /// The fleet's updates/s per agent (the issue's load; lower shows latency below saturation).
    var fleetRate = 100.0
    var fleetSQLiteOnly = false
    /// Every agent writes at the same instants (a burst of one frame per agent) instead of at its own phase.
    var fleetLockstep = false

    init(_ list: ArraySlice<String>) {
        var args = list
        func refuse(_ why: String) -> Never {
            let text = Array("spook-bench: \(why)\n\(usage)".utf8)
            _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            exit(2)
        }
        while let arg = args.popFirst() {
            switch arg {
            case "--help", "-h":
                print(usage, terminator: "")
                exit(0)
            case "--quick": quick = true
            case "--fleet-sqlite-only": fleetSQLiteOnly = true
            case "--fleet-lockstep": fleetLockstep = true
            case "--only":
                guard let part = args.popFirst() else { refuse("--only needs a part") }
                guard parts.contains(part) else { refuse("--only \(part): no such part") }
                only = part
            case "--fleet-rate":
                guard let r = args.popFirst().flatMap(Double.init), r > 0 else { refuse("--fleet-rate needs a positive number of updates/s") }
                fleetRate = r
            default:
                refuse("unknown argument \(arg)")
            }
        }
    }
}
let arguments = Arguments(CommandLine.arguments.dropFirst())
let quick = arguments.quick
let scale = quick ? 10 : 1
let only = arguments.only
func runs(_ part: String) -> Bool { only == nil || only == part }

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Best of `runs` wall-clock times of `body` (which does `count` operations): ops/s.
func rate(count: Int, runs: Int = 3, _ body: () throws -> Void) rethrows -> Double {
    var best = Double.infinity
    for _ in 0..<runs {
        let start = now()
        try body()
        best = min(best, now() - start)
    }
    return Double(count) / best
}

struct Row {
    var name: String
    var value: Double
    var unit: String
    var baseline: String
    var baselineValue: Double
}
var rows: [Row] = []

func format(_ x: Double) -> String {
    if x >= 1e6 { return String(Int((x / 1e4).rounded())).withDecimal(2) + " M" }
    if x >= 1e3 { return String(Int((x / 10).rounded())).withDecimal(2) + " k" }
    if x < 100 { return String(Int((x * 100).rounded())).withDecimal(2) }
    return String(Int(x.rounded()))
}

extension String {
    func withDecimal(_ places: Int) -> String {
        let padded = count <= places ? String(repeating: "0", count: places - count + 1) + self : self
        return padded.dropLast(places) + "." + padded.suffix(places)
    }
}

// MARK: core apply

let group = (0..<100).map { try! QGroupName("bench.site/g\($0)") }
let registerNames = (0..<10).map { "r\($0)" }

func makeDeltas(_ n: Int, writes: Int) -> [Delta] {
    var random = SplitMix64(seed: 1)
    return (0..<n).map { i in
        let ws = (0..<writes).map { k in Write(registerNames[(i + k) % 10], .set, .int(Int64(random.next() % 1000))) }
        return try! Delta(origin: Origin(1 + UInt64(i % 4)), seq: UInt64(i / 4 + 1),
                          hlc: HLCTimestamp(rawValue: UInt64(i) << 8), group: group[Int(random.next() % 100)], writes: ws)
    }
}

let coreCount = 1_000_000 / scale
for writes in [1, 8] where runs("core") {
    let deltas = makeDeltas(coreCount / writes, writes: writes)
    let names = deltas.map { d in d.writes.map { try! QRegisterName(group: d.group, name: $0.register) } }
    let applied = rate(count: deltas.count) {
        var s = CollapseState()
        for d in deltas { _ = try? s.apply(d) }
    }
    // Baseline: the same writes as plain dictionary upserts, no collapse rules.
    let upserts = rate(count: deltas.count) {
        var map: [QRegisterName: Value] = [:]
        for (d, n) in zip(deltas, names) { for (w, name) in zip(d.writes, n) { map[name] = w.value } }
    }
    rows.append(Row(name: "core apply, \(writes) write(s)/delta", value: applied, unit: "deltas/s", baseline: "dictionary upsert", baselineValue: upserts))
}

if runs("core") {
    let deltas = makeDeltas(200_000 / scale, writes: 4)
    let bodies = deltas.map(\.encoded)
    let decoded = try rate(count: bodies.count) { for b in bodies { _ = try Delta.decode(b) } }
    let checksummed = rate(count: bodies.count) {
        var c: UInt32 = 0
        for b in bodies { c = CRC32C.update(c, b) }
        precondition(c != 1)
    }
    rows.append(Row(name: "delta decode + validate, 4 writes", value: decoded, unit: "deltas/s", baseline: "CRC-32C of the same bytes", baselineValue: checksummed))
}

// MARK: store commit

var template = Array("/tmp/spook-bench-XXXXXX".utf8CString)
let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
defer { _ = system("rm -rf '\(dir)'") }

/// The floor under the store: the same encoded bodies as rows of one plain
/// table, same transaction size and sync level, no collapse, vectors or history.
func rawSQLite(_ bodies: [[UInt8]], batch: Int, sync: SyncLevel, path: String) -> Double {
    var db: OpaquePointer?
    sqlite3_open(path, &db)
    defer { sqlite3_close(db) }
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=\(sync.rawValue.uppercased()); CREATE TABLE t(k INTEGER PRIMARY KEY, body BLOB)", nil, nil, nil)
    var insert: OpaquePointer?
    sqlite3_prepare_v2(db, "INSERT INTO t(k, body) VALUES (?, ?)", -1, &insert, nil)
    defer { sqlite3_finalize(insert) }
    let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
    let start = now()
    var i = 0
    while i < bodies.count {
        sqlite3_exec(db, "BEGIN", nil, nil, nil)
        for k in i..<min(i + batch, bodies.count) {
            sqlite3_reset(insert)
            sqlite3_bind_int64(insert, 1, Int64(k))
            _ = bodies[k].withUnsafeBytes { sqlite3_bind_blob(insert, 2, $0.baseAddress, Int32($0.count), transient) }
            sqlite3_step(insert)
        }
        sqlite3_exec(db, "COMMIT", nil, nil, nil)
        i += batch
    }
    return Double(bodies.count) / (now() - start)
}

var run = 0
for (sync, batch, count) in [(SyncLevel.full, 1, 2_000), (.full, 100, 50_000), (.full, 1_000, 200_000), (.normal, 1_000, 200_000), (.off, 1_000, 200_000)] where runs("store") {
    run += 1
    let n = max(count / scale, batch)
    let deltas = makeDeltas(n, writes: 1).enumerated().map { i, d in
        try! Delta(origin: Origin(1), seq: UInt64(i + 1), hlc: d.hlc, group: d.group, writes: d.writes)
    }
    let store = try SQLStore(path: "\(dir)/store-\(run).db", options: StoreOptions(sync: sync))
    let start = now()
    var i = 0
    while i < deltas.count {
        let result = try store.commit(Array(deltas[i..<min(i + batch, deltas.count)]))
        precondition(result.gaps.isEmpty && result.duplicates == 0)
        i += batch
    }
    let committed = Double(n) / (now() - start)
    store.close()
    let raw = rawSQLite(deltas.map(\.encoded), batch: batch, sync: sync, path: "\(dir)/raw-\(run).db")
    rows.append(Row(name: "store commit, sync=\(sync), \(batch)/block", value: committed, unit: "deltas/s durable", baseline: "raw SQLite insert", baselineValue: raw))
}

// MARK: history trim

/// The trim of a full history: `registers` registers, `historyLength` 32,
/// filled twice over (a trim starts once the rows appended reach
/// registers × 32). Result: the longest extra time of a commit while the
/// trim runs (in steps of `historyTrimRowsPerStep` rows, each inside a
/// commit), over the median commit before it. Baseline: the same with the
/// whole table read in one step, as the store did before.
func trimStall(rowsPerStep: Int, in path: String) throws -> (before: Int, after: Int, stallMs: Double, steps: Int) {
    let registers = 10_000 / scale, length = 32, blockSize = 1_000
    let names = (0..<registers).map { i in (try! QGroupName("bench.h\(i % 1_000)/g"), "r\(i / 1_000)") }
    var options = StoreOptions(sync: .off, historyLength: length)
    options.historyTrimRowsPerStep = rowsPerStep
    let store = try SQLStore(path: path, options: options)
    defer { store.close() }
    var seq: UInt64 = 0
    func block() -> [Delta] {
        (0..<blockSize).map { _ in
            seq += 1
            let (g, r) = names[Int(seq) % registers]
            return try! Delta(origin: Origin(1), seq: seq, hlc: HLCTimestamp(rawValue: seq << 8), group: g, writes: [Write(r, .set, .int(Int64(seq)))])
        }
    }
    // Fill twice, up to one block short of the second trim, timing each commit.
    var times: [Double] = []
    for _ in 0..<(2 * registers * length / blockSize - 1) {
        let b = block()
        let t = now()
        _ = try store.commit(b)
        times.append(now() - t)
    }
    while store.historyTrimming { _ = try store.commit(block()) }
    let median = times.sorted()[times.count / 2]
    let rowsBefore = try store.historyRows(after: 0, limit: Int.max).count
    let trims = store.historyTrims, steps = store.historyTrimSteps
    var longest = 0.0
    repeat {
        let b = block()
        let t = now()
        _ = try store.commit(b)
        longest = max(longest, now() - t)
    } while store.historyTrimming
    precondition(store.historyTrims == trims + 1, "no trim ran")
    let rowsAfter = try store.historyRows(after: 0, limit: Int.max).count
    return (rowsBefore, rowsAfter, (longest - median) * 1000, store.historyTrimSteps - steps)
}

if runs("store") {
    let stepped = try trimStall(rowsPerStep: StoreOptions().historyTrimRowsPerStep, in: "\(dir)/trim.db")
    let whole = try trimStall(rowsPerStep: Int.max, in: "\(dir)/trim-whole.db")
    rows.append(Row(name: "history trim, \(stepped.before) rows of \(10_000 / scale) registers → \(stepped.after): longest commit stall, \(stepped.steps) steps",
                    value: stepped.stallMs, unit: "ms", baseline: "one step (before)", baselineValue: whole.stallMs))
}

// MARK: store conversion, format 1 → 2

/// The first open of a format-1 store by this build converts it (the log
/// copied into the table keyed by StateBlock, the runs built). The store:
/// `origins` origins, each with one delta in each of `blocks` StateBlocks
/// (a fleet daemon's log), written by this build and then laid out as
/// format 1 had it (the log keyed by origin, indexed by block, no runs).
/// Result: that open's time; baseline: opening the converted store again.
func conversionTimes(origins: Int, blocks: Int, in path: String) throws -> (convert: Double, reopen: Double, deltas: Int) {
    let group = try QGroupName("bench.conv/g")
    do {
        let store = try SQLStore(path: path, options: StoreOptions(sync: .off))
        defer { store.close() }
        for b in 1...blocks {
            _ = try store.commit((1...origins).map { o in
                try! Delta(origin: Origin(UInt64(o) &* 0x9E37_79B9_7F4A_7C15), seq: UInt64(b), hlc: HLCTimestamp(ms: 1_700_000_000_000 + UInt64(b), counter: UInt16(o % 1_000)),
                           group: group, writes: [Write("r\(o % 10)", .set, .int(Int64(b)))])
            })
        }
    }
    var db: OpaquePointer?
    guard sqlite3_open(path, &db) == SQLITE_OK else { fatalError("cannot open \(path)") }
    let formatOne = """
        BEGIN;
        CREATE TABLE deltas_by_origin(origin INTEGER NOT NULL, seq INTEGER NOT NULL, block INTEGER NOT NULL,
            body BLOB NOT NULL, refused TEXT, PRIMARY KEY(origin, seq)) WITHOUT ROWID;
        INSERT INTO deltas_by_origin SELECT origin, seq, block, body, refused FROM deltas ORDER BY origin, seq;
        DROP TABLE deltas;
        ALTER TABLE deltas_by_origin RENAME TO deltas;
        CREATE INDEX deltas_block ON deltas(block);
        DROP TABLE runs;
        UPDATE meta SET value = 1 WHERE key = 'format';
        COMMIT;
        PRAGMA wal_checkpoint(TRUNCATE);
        """
    guard sqlite3_exec(db, formatOne, nil, nil, nil) == SQLITE_OK else { fatalError("format 1 layout: \(String(cString: sqlite3_errmsg(db)))") }
    sqlite3_close(db)
    func open() throws -> Double {
        let t = now()
        let store = try SQLStore(path: path, options: StoreOptions(sync: .full))
        let took = now() - t
        let held = try store.verify().deltas
        precondition(held == origins * blocks, "the converted store holds \(held) deltas of \(origins * blocks)")
        store.close()
        return took
    }
    let convert = try open()
    return (convert, try open(), origins * blocks)
}

if runs("store") {
    let (convert, reopen, deltas) = try conversionTimes(origins: 1_000, blocks: 500 / scale, in: "\(dir)/convert.db")
    rows.append(Row(name: "store open converting format 1 → 2, \(deltas) deltas of 1000 origins", value: convert, unit: "s",
                    baseline: "opening it again (format 2), s", baselineValue: reopen))
}

// MARK: the WebAssembly core (wasm/, under Node) against the Swift core, same deltas

if runs("wasm") {
    let n = 200_000 / scale
    let encoded = makeDeltas(n, writes: 1).map(\.encoded)
    var file: [UInt8] = []
    for e in encoded {
        withUnsafeBytes(of: UInt32(e.count).bigEndian) { file += $0 }
        file += e
    }
    let deltaFile = "\(dir)/wasm-deltas.bin", stateFile = "\(dir)/wasm-state.bin"
    guard let f = fopen(deltaFile, "wb"), fwrite(file, 1, file.count, f) == file.count else { fatalError("cannot write \(deltaFile)") }
    fclose(f)
    // What the WebAssembly core does per delta: decode (with validation) and collapse.
    var swiftState = CollapseState()
    let swiftRate = rate(count: n) {
        var s = CollapseState()
        for e in encoded { try! s.apply(Delta.decode(e)) }
        swiftState = s
    }
    guard system("make -s -C wasm") == 0 else { fatalError("make -C wasm failed") }
    let node = try LinkBench.Process("/usr/bin/node", ["wasm/bench.mjs", deltaFile, stateFile], readable: true)
    let fields = (node.line() ?? "").split(separator: " ")
    node.stop()
    guard fields.count == 2, let wasmRate = Double(fields[1]) else { fatalError("wasm/bench.mjs printed \(fields)") }
    var same = false
    if let g = fopen(stateFile, "rb") {
        var bytes = [UInt8](repeating: 0, count: 4 << 20)
        let got = fread(&bytes, 1, bytes.count, g)
        fclose(g)
        same = Array(bytes[..<got]) == swiftState.canonicalBytes()
    }
    guard same else { fatalError("the WebAssembly core's state differs from the Swift core's after the same deltas") }
    rows.append(Row(name: "WebAssembly core (Node), decode + apply, 1 write/delta (same state bytes)", value: wasmRate, unit: "deltas/s",
                    baseline: "Swift core, decode + apply, same deltas", baselineValue: swiftRate))
}

// MARK: link (real processes)

// The release binaries sit next to this one; SPOOK_EDGE may name another
// spook-edge (e.g. a --static-swift-stdlib build) for the footprint rows.
var me = [CChar](repeating: 0, count: 4096)
let selfLength = readlink("/proc/self/exe", &me, me.count - 1)
let binaries = "/" + String(decoding: me[..<max(0, selfLength)].map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/").dropLast().joined(separator: "/")
let edgeBinary = getenv("SPOOK_EDGE").map { String(cString: $0) } ?? "\(binaries)/spook-edge"

if runs("link") {
    let linkDir = "\(dir)/link"
    mkdir(linkDir, 0o700)
    rows += try LinkBench.run(dir: linkDir, binaries: binaries, edgeBinary: edgeBinary, count: 100_000 / scale)
}

// MARK: fleet (1,000 simulated agents into spookd: SQLite, PostgreSQL with 1 and 2 daemons)

if runs("fleet") {
    let fleetDir = "\(dir)/fleet"
    mkdir(fleetDir, 0o700)
    rows += try FleetBench.run(dir: fleetDir, binaries: binaries, agents: quick ? 100 : 1_000, rate: arguments.fleetRate, seconds: quick ? 3 : 10,
                               postgres: !arguments.fleetSQLiteOnly, lockstep: arguments.fleetLockstep)
}

// MARK: the long run (a million writes, a watcher, compaction)

if runs("longrun") {
    let longDir = "\(dir)/longrun"
    mkdir(longDir, 0o700)
    rows += try LongRunBench.run(dir: longDir, binaries: binaries, edgeBinary: edgeBinary, count: 1_000_000 / scale)
}

// MARK: devices (real processes, libmodbus server, firmware simulator)

if runs("devices") {
    let devDir = "\(dir)/devices"
    mkdir(devDir, 0o700)
    // bench/run builds these; the repository root is the working directory.
    var cwd = [CChar](repeating: 0, count: 4096)
    let root = getcwd(&cwd, cwd.count).map { String(cString: $0) } ?? "."
    rows += try DeviceBench.run(dir: devDir, binaries: binaries, edgeBinary: edgeBinary, tools: "\(root)/bench/modbus/build",
                                sim: "\(root)/firmware-bridge/build/sfb-sim", seconds: quick ? 1 : 3)
}

// MARK: mqtt (the Sparkplug DDATA path, a local mosquitto)

if runs("mqtt") {
    let mqttDir = "\(dir)/mqtt"
    mkdir(mqttDir, 0o700)
    var cwd = [CChar](repeating: 0, count: 4096)
    let root = getcwd(&cwd, cwd.count).map { String(cString: $0) } ?? "."
    rows += try SparkplugBench.run(dir: mqttDir, binaries: binaries, edgeBinary: edgeBinary, tools: "\(root)/bench/modbus/build", seconds: quick ? 3 : 10)
}

// MARK: page (the live register page in headless Chromium)

if runs("page") {
    let pageDir = "\(dir)/page"
    mkdir(pageDir, 0o700)
    var cwd = [CChar](repeating: 0, count: 4096)
    let root = getcwd(&cwd, cwd.count).map { String(cString: $0) } ?? "."
    rows += try PageBench.run(dir: pageDir, binaries: binaries, edgeBinary: edgeBinary, root: root, seconds: quick ? 3 : 10)
}

// MARK: footprint (the static agent against the dynamic one)

if runs("footprint") {
    let footDir = "\(dir)/footprint"
    mkdir(footDir, 0o700)
    var cwd = [CChar](repeating: 0, count: 4096)
    let root = getcwd(&cwd, cwd.count).map { String(cString: $0) } ?? "."
    // bench/run builds the shipped agent with scripts/build-release and names it here.
    guard let staticEdge = getenv("SPOOK_EDGE_STATIC").map({ String(cString: $0) }) else {
        fatalError("--only footprint needs SPOOK_EDGE_STATIC (bench/run sets it)")
    }
    let dynamicEdge = "\(footDir)/spook-edge-dynamic"
    guard system("strip -o '\(dynamicEdge)' '\(binaries)/spook-edge'") == 0 else { fatalError("strip failed") }
    rows += try FootprintBench.run(dir: footDir, binaries: binaries, staticEdge: staticEdge, dynamicEdge: dynamicEdge,
                                   tools: "\(root)/bench/modbus/build", seconds: quick ? 2 : 5)
}

// MARK: the table

print("| benchmark | result | baseline (same run) | baseline result | ratio |")
print("|---|---:|---|---:|---:|")
for r in rows {
    let ratio = r.value / r.baselineValue
    let shown = ratio.isFinite ? String(Int((ratio * 100).rounded())).withDecimal(2) : "–"
    print("| \(r.name) | \(format(r.value)) \(r.unit) | \(r.baseline) | \(format(r.baselineValue)) | \(shown) |")
}
