// The victim of the kill -9 crash tests: commits batches of deltas (local
// writes of its own origin, and "received" deltas of a foreign origin) to a
// store as fast as it can, and after each commit returns prints
//
//     acked <origin-hex> <seq>
//
// straight to fd 1 (no buffering), so the test knows exactly what was
// acknowledged when it pulled the plug.
#if canImport(Glibc)
import Glibc
#endif
import Logging
import SpookCore
import SpookPostgres
import SpookStore

let arguments = CommandLine.arguments
guard arguments.count == 4, let seed = UInt64(arguments[2]), let sync = SyncLevel(rawValue: arguments[3]) else {
    let message = "usage: spook-crash-writer DB|postgres://URL SEED off|normal|full|extra\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(64)
}

func say(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(1, $0, strlen($0)) }
}

let local = Origin(0xC0DE), foreign = Origin(0xF0F0)
let groups = (0..<8).map { try! QGroupName("crash/g\($0)") }
let schema = Schema(registers: [(RegisterSelector(domain: try! QDomainPattern("crash"), register: "n"), RegisterSpec(type: .int))])
var random = SplitMix64(seed: seed)

do {
    let store = try SQLStore.open(data: arguments[1], options: StoreOptions(sync: sync, historyLength: 8, schema: schema), logger: Logger(label: "crash-writer"))
    say("ready \(store.vector[local]) \(store.vector[foreign])")
    var clockMs: UInt64 = 1_700_000_000_000
    while true {
        clockMs += 1
        let count = 1 + Int(random.next() % 40)
        if random.chance(0.5) {
            let requests = (0..<count).map { _ in
                LocalWrite(group: groups[Int(random.next() % 8)], writes: [
                    Write("n", .set, .int(Int64(random.next() % 1000))),
                    Write("s", .set, .string(String(random.next(), radix: 36))),
                ])
            }
            let results = try store.commitLocal(requests, origin: local, physicalMs: clockMs)
            let last = try results.last!.get()
            say("acked \(local) \(last.seq)")
        } else {
            let first = store.vector[foreign] + 1
            let deltas = try (0..<UInt64(count)).map { i in
                try Delta(origin: foreign, seq: first + i, hlc: HLCTimestamp(ms: clockMs, counter: UInt16(i)),
                          group: groups[Int(random.next() % 8)], writes: [Write("n", .set, .int(Int64(random.next() % 1000)))])
            }
            let result = try store.commit(deltas)
            guard result.held.count == count else { fatalError("held \(result.held.count) of \(count)") }
            say("acked \(foreign) \(first + UInt64(count) - 1)")
        }
    }
} catch {
    let message = "spook-crash-writer: \(error)\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(1)
}
