import SpookCore
import SpookStore
import SpookWire

/// ESTP for one link, after the handshake (docs/protocol.md, "State
/// transfer"). It decides what to send and what to do with what arrives;
/// the driver moves the messages and calls `poll` when local deltas were
/// committed or a timer fired. Deterministic: time comes in as `nowMs`.
///
/// - Each side opens with VECTOR (what it holds) and answers a VECTOR with
///   an ACK of its own vector, so each learns what the other holds.
/// - A sender sends, per origin in seq order, what the peer lacks beyond
///   what it already sent, in DELTAS frames of bounded count and size,
///   with at most `inFlightMax` unacknowledged frames; or a chunked
///   SNAPSHOT when the peer is behind the compaction horizon.
/// - A receiver commits each DELTAS frame and only then answers ACK with
///   its vector: `receive` does both; a node that commits many links'
///   frames together (group commit) calls `take`, commits, then
///   `committed`. A snapshot is applied when every chunk has arrived.
/// - A sender that sees no progress for `resendAfterMs` goes back to what
///   the peer acknowledged and sends again (lost frames on lossy links, or
///   a receiver that refused a gap).
public struct SyncSession: Sendable {
    public struct Options: Sendable {
        public var batchDeltasMax = 1_000
        /// Bytes of delta encodings per DELTAS frame (frames are bounded at 1 MiB).
        public var batchBytesMax = 512 * 1024
        public var inFlightMax = 8
        public var resendAfterMs: UInt64 = 3_000
        public var snapshotChunkRegistersMax = 5_000
        /// Bytes of register encodings per SNAPSHOT chunk: with the vector it
        /// stays well inside a frame however large the values are.
        public var snapshotChunkBytesMax = 512 * 1024
        /// Bytes of register encodings a snapshot being received may hold
        /// before it is complete; past it the link is refused (`overloaded`).
        public var snapshotBytesMax = 256 << 20
        /// A received delta or snapshot stamp more than this ahead of our clock
        /// is refused before it is stored (`clock-drift`); nil accepts any.
        public var remoteDriftMsMax: UInt64? = 60_000
        public init() {}
    }

    /// The peer's name in the store (its acknowledged vector is kept under it).
    public let peer: String
    public let options: Options

    private var started = false
    private var sent = QStateVector()
    private var inFlight = 0
    private var lastProgressMs: UInt64 = 0
    private var ourStart: QStateVector?
    private var theirStart: QStateVector?
    private var knowsPeer = false
    private var snapshotVector: QStateVector?
    private var snapshotChunks: [UInt32: [QRegisterName: RegisterState]] = [:]
    private var snapshotBytes = 0

    /// A paused session still answers (ACK, VECTOR) and receives, but sends
    /// no deltas: a standby link in a QRoute, ready to take over.
    public var paused = false

    /// What the peer may see (its read grant, its subscriptions, a route's
    /// domains); nil: everything. Deltas of other groups go `Withheld`.
    public var visible: (@Sendable (QGroupName) -> Bool)?

    /// Send only this origin's deltas: an agent sends upstream what it wrote
    /// (applications, devices, its own registers), not what it received.
    public var onlyOrigin: Origin?

    /// The peer subscribed to nothing (its HELLO named no domain): a
    /// publisher. It is sent no deltas, and what it holds is not recorded,
    /// so it holds back no compaction; it still gets ACKs for what it sends.
    public var publishOnly = false

    /// Our own origin, and the peer's: a VECTOR carries what each side holds of
    /// the other's origin (an `OriginTip`), so a store that went back in time
    /// is found before it reuses a seq (`OriginConflict`).
    public var ownOrigin: Origin?
    public var peerOrigin: Origin?

    /// Deltas the peer sent whose (origin, seq) we hold with other content.
    public private(set) var conflicts: [DeltaID] = []

    /// Counters for `$lag`, metrics and tests.
    public private(set) var deltasSent = 0
    public private(set) var deltasReceived = 0
    public private(set) var snapshotsSent = 0
    public private(set) var snapshotsApplied = 0

    public init(peer: String, options: Options = Options()) {
        self.peer = peer
        self.options = options
    }

    /// Both directions have caught up with what the other side held when the
    /// session started: the HalfPair's `caughtUp` event.
    public func isCaughtUp(_ store: any Store) -> Bool {
        guard let ourStart, let theirStart else { return false }
        let acked = store.peerVector(peer)
        let received = store.vector.compare(theirStart) != .behind && store.vector.compare(theirStart) != .concurrent
        if publishOnly { return received }
        if let only = onlyOrigin { return received && acked[only] >= ourStart[only] }
        return received && acked.compare(ourStart) != .behind && acked.compare(ourStart) != .concurrent
    }

    /// What is still unacknowledged, in deltas: what the peer lacks of ours.
    public func lag(_ store: any Store) -> UInt64 {
        if publishOnly { return 0 }
        let acked = store.peerVector(peer)
        if let only = onlyOrigin { return store.vector[only] - min(store.vector[only], acked[only]) }
        return store.vector.lacking(in: acked).reduce(0) { $0 + $1.count }
    }

    /// `v` as the sender sees it: with `onlyOrigin`, every other origin counts
    /// as held by the peer, so nothing of theirs is sent.
    func sendable(_ v: QStateVector, _ store: any Store) -> QStateVector {
        guard let only = onlyOrigin else { return v }
        var view = v
        for o in store.vector.origins where o != only { view[o] = max(view[o], store.vector[o]) }
        return view
    }

    public mutating func start(_ store: any Store, nowMs: UInt64) throws -> [Message] {
        precondition(!started, "session started twice")
        started = true
        ourStart = store.vector
        sent = store.peerVector(peer)
        lastProgressMs = nowMs
        return [try vectorMessage(store)]
    }

    /// VECTOR, with what we hold of the peer's own origin (a store error is
    /// the caller's: a VECTOR without its tip would skip the peer's origin check).
    func vectorMessage(_ store: any Store) throws -> Message {
        guard let peerOrigin else { return .vector(store.vector) }
        let seq = store.vector[peerOrigin]
        guard seq > 0, let hlc = try store.heldHLC(origin: peerOrigin, seq: seq) else { return .vector(store.vector) }
        return .vector(store.vector, tip: OriginTip(origin: peerOrigin, seq: seq, hlc: hlc))
    }

    /// `nowMs` drives resends; `physicalMs` (the wall clock, default `nowMs`)
    /// bounds the stamps the peer may send.
    public mutating func receive(_ message: Message, _ store: any Store, nowMs: UInt64, physicalMs: UInt64? = nil) throws -> [Message] {
        let wallMs = physicalMs ?? nowMs
        precondition(started, "session not started")
        var out: [Message] = []
        switch message {
        case .vector(let theirs, let tip):
            // Before anything of theirs is recorded: does the peer hold more
            // of our origin than we do, or something else under one of its seqs?
            if let own = ownOrigin {
                // The one delta the check may compare, read here so a store error is thrown, not taken for "not held".
                let ours = theirs[own] > 0 && theirs[own] <= store.vector[own] ? try store.heldHLC(origin: own, seq: theirs[own]) : nil
                let verdict = OriginCheck.judge(
                    weHold: store.vector[own], horizon: store.horizon[own],
                    ourHLC: { $0 == theirs[own] ? ours : nil },
                    peerHolds: theirs[own], peerHLC: tip.flatMap { $0.origin == own && $0.seq == theirs[own] ? $0.hlc : nil })
                if verdict != .consistent {
                    throw OriginConflict(origin: own, verdict: verdict, peerHolds: theirs[own], acknowledged: store.peerVector(peer)[own])
                }
            }
            // A (re)start from the peer: it holds exactly this, which may be
            // less than it once acknowledged (its store went back in time).
            if theirStart == nil { theirStart = theirs }
            try learn(theirs, store, current: true)
            sent = theirs
            inFlight = 0
            knowsPeer = true
            lastProgressMs = nowMs
            out.append(.ack(store.vector))
        case .ack(let theirs):
            if theirStart == nil { theirStart = theirs }
            let before = store.peerVector(peer)
            // The first ACK of a session (before any VECTOR got through) is as
            // current as a VECTOR: the peer sent it after this session began.
            try learn(theirs, store, current: !knowsPeer)
            knowsPeer = true
            if store.peerVector(peer) != before { lastProgressMs = nowMs }
            inFlight = max(0, inFlight - 1)
        case .deltas(let deltas):
            let taken = try take(deltas, store, physicalMs: wallMs)
            // The driver in one step: commit now, then acknowledge.
            return try committed(try store.commit(taken), store, nowMs: nowMs)
        case .snapshot(let chunk):
            try checkDrift(chunk.registers.values.lazy.flatMap(\.stamps).map(\.hlc), nowMs: wallMs, what: "snapshot stamp")
            if snapshotVector != chunk.vector || snapshotChunks.keys.contains(where: { $0 >= chunk.count }) {
                snapshotVector = chunk.vector
                snapshotChunks = [:]
                snapshotBytes = 0
            }
            if snapshotChunks[chunk.index] == nil {
                snapshotBytes += chunk.registers.reduce(0) { $0 + 2 + $1.key.text.utf8.count + $1.value.encoded.count }
            }
            guard snapshotBytes <= options.snapshotBytesMax else {
                let held = snapshotChunks.count
                snapshotChunks = [:]
                snapshotVector = nil
                throw WireError(.overloaded, "a snapshot of more than \(options.snapshotBytesMax) bytes (\(held) of \(chunk.count) chunks held)")
            }
            snapshotChunks[chunk.index] = chunk.registers
            sent.merge(chunk.vector)
            if snapshotChunks.count == Int(chunk.count) {
                var registers: [QRegisterName: RegisterState] = [:]
                for part in snapshotChunks.values { registers.merge(part) { a, _ in a } }
                _ = try store.apply(Snapshot(registers: registers, vector: chunk.vector))
                snapshotsApplied += 1
                snapshotVector = nil
                snapshotChunks = [:]
                snapshotBytes = 0
                out.append(.ack(store.vector))
            }
        case .heartbeat:
            break
        case .hello, .auth, .error, .close:
            throw WireError(.unexpected, "\(message.type) is not expected after the handshake")
        }
        return out + (try poll(store, nowMs: nowMs))
    }

    /// DELTAS, first step: checks the frame (a stamp too far ahead refuses it
    /// whole) and returns the deltas to commit, without writing anything, so
    /// the driver may commit them together with other links' frames (group
    /// commit). The driver then calls `committed` with what the commit held;
    /// the ACK goes out only then, so it never covers what is not durable.
    public mutating func take(_ deltas: [Delta], _ store: any Store, physicalMs: UInt64) throws -> [Delta] {
        precondition(started, "session not started")
        try checkDrift(deltas.lazy.filter { !store.vector.contains($0.id) }.map(\.hlc), nowMs: physicalMs, what: "delta")
        // The peer holds what it sends: never echo it back.
        for d in deltas { sent[d.origin] = max(sent[d.origin], d.seq) }
        return deltas
    }

    /// DELTAS, second step: the deltas `take` returned are committed (`result`
    /// covers at least them); returns the ACK of what the store now holds,
    /// then whatever the window lets this session send.
    public mutating func committed(_ result: CommitResult, _ store: any Store, nowMs: UInt64) throws -> [Message] {
        deltasReceived += result.held.count
        conflicts += result.conflicts
        return [.ack(store.vector)] + (try poll(store, nowMs: nowMs))
    }

    /// Records what the peer holds. A `current` report (a VECTOR, or the
    /// first ACK of the session) replaces what the store recorded when it is
    /// lower: the peer's store went back in time and must be sent again what
    /// it lost. Any other ACK only adds (ACKs may arrive out of order).
    mutating func learn(_ theirs: QStateVector, _ store: any Store, current: Bool) throws {
        guard !publishOnly else { return }
        if current, store.peerVector(peer).merged(theirs) != theirs {
            try store.replaceAck(peer: peer, vector: theirs)
        } else {
            try store.recordAck(peer: peer, vector: theirs)
        }
    }

    /// Refuses the frame when any stamp is too far ahead of our clock: nothing
    /// of it is stored or relayed, and one bad clock cannot end everyone's.
    func checkDrift(_ stamps: some Sequence<HLCTimestamp>, nowMs: UInt64, what: String) throws {
        guard let bound = options.remoteDriftMsMax else { return }
        for hlc in stamps {
            do { try HybridLogicalClock.checkRemote(hlc, physicalMs: nowMs, driftMsMax: bound) } catch let e as CoreError {
                throw WireError(.clockDrift, "\(what): \(e.message)")
            }
        }
    }

    /// Sends what the window allows; goes back and resends after a stall.
    public mutating func poll(_ store: any Store, nowMs: UInt64) throws -> [Message] {
        precondition(started, "session not started")
        var out: [Message] = []
        let acked = store.peerVector(peer)
        if nowMs >= lastProgressMs + options.resendAfterMs {
            lastProgressMs = nowMs
            if !knowsPeer {
                return [try vectorMessage(store)]
            }
            if sent != acked {
                sent = acked
                inFlight = 0
            }
        }
        guard knowsPeer, !paused, !publishOnly else { return out }
        sent.merge(acked)
        while inFlight < options.inFlightMax {
            let view = sendable(sent, store)
            let lacking = store.vector.lacking(in: view)
            if lacking.isEmpty {
                // Nothing outstanding counts as progress: the clock restarts.
                if view == sendable(acked, store) { lastProgressMs = nowMs }
                break
            }
            switch try store.catchUp(for: view, limit: options.batchDeltasMax) {
            case .deltas(let deltas):
                var batch: [Delta] = []
                var bytes = 0
                for original in deltas {
                    let d = visible.map { $0(original.group) } == false ? Withheld.redact(original) : original
                    let size = d.encoded.count + 4
                    if !batch.isEmpty && bytes + size > options.batchBytesMax { break }
                    batch.append(d)
                    bytes += size
                }
                guard !batch.isEmpty else { break }
                for d in batch { sent[d.origin] = max(sent[d.origin], d.seq) }
                deltasSent += batch.count
                inFlight += 1
                out.append(.deltas(batch))
            case .snapshot(let snapshot):
                // Chunks bounded by register count and by bytes, decided before
                // sending, since every chunk carries the count.
                var parts: [[QRegisterName: RegisterState]] = [[:]]
                var bytes = 0
                for name in snapshot.registers.keys.sorted() where visible.map({ $0(name.group) }) != false {
                    let state = snapshot.registers[name]!
                    let size = 2 + name.text.utf8.count + state.encoded.count
                    if !parts[parts.count - 1].isEmpty
                        && (bytes + size > options.snapshotChunkBytesMax || parts[parts.count - 1].count >= max(1, options.snapshotChunkRegistersMax)) {
                        parts.append([:])
                        bytes = 0
                    }
                    parts[parts.count - 1][name] = state
                    bytes += size
                }
                for (i, registers) in parts.enumerated() {
                    out.append(.snapshot(SnapshotChunk(index: UInt32(i), count: UInt32(parts.count), vector: snapshot.vector, registers: registers)))
                }
                sent.merge(snapshot.vector)
                snapshotsSent += 1
                inFlight += 1
            }
        }
        return out
    }
}

/// Our store is behind what a peer holds of our own origin, or holds other
/// deltas under the same seqs: writing on would reuse seqs. The node starts a
/// new incarnation (`Store.reincarnate`) before it writes again.
public struct OriginConflict: Error, Hashable, Sendable, CustomStringConvertible {
    public let origin: Origin
    public let verdict: OriginCheck.Verdict
    /// The peer's vector entry for our origin.
    public let peerHolds: UInt64
    /// What our store recorded the peer as having acknowledged of our origin.
    public let acknowledged: UInt64

    public var description: String { "origin \(origin): \(verdict)" }
}
