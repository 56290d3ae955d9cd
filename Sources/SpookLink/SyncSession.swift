import SpookCore
import SpookStore
import SpookWire

/// What a `SyncSession` asks its driver to do. The session never writes:
/// it reads a `StoreView` and returns these, in order.
public enum SyncAction: Hashable, Sendable {
    /// Send this message on the link.
    case send(Message)
    /// Make these deltas of the peer durable (alone, or in one group commit
    /// with other links' frames and local writes), then call `committed`.
    /// Nothing acknowledges them before that.
    case commit([Delta])
    /// Merge what the peer acknowledged into what the store records of it
    /// (the store may persist it lazily: losing it costs only a resend).
    case recordAck(QStateVector)
    /// Set what the store records of the peer to exactly this: its store
    /// went back in time and must be sent again what it lost.
    case replaceAck(QStateVector)
    /// Merge this snapshot into the store, then call `applied`.
    case apply(Snapshot)
}

/// ESTP for one link, after the handshake (docs/protocol.md, "State
/// transfer"), as a state machine: each event (`start`, `receive`, `poll`,
/// and the driver's `committed` and `applied`) reads the store through a
/// `StoreView` and returns `SyncAction`s; the driver performs them in order.
/// Deterministic: time comes in as `nowMs`. `perform(_:on:nowMs:)` is the
/// simplest driver (each commit at once); `spookd` and `spook-edge` batch
/// the commits of all links into group commits instead.
///
/// - Each side opens with VECTOR (what it holds) and answers a VECTOR with
///   an ACK of its own vector, so each learns what the other holds.
/// - A sender sends, per origin in seq order, what the peer lacks beyond
///   what it already sent, in DELTAS frames of bounded count and size,
///   with at most `inFlightMax` unacknowledged frames, of which only the
///   first may be less than full; or a chunked SNAPSHOT when the peer is
///   behind the compaction horizon.
/// - A received DELTAS frame becomes a `commit`; only `committed` answers
///   ACK, so an ACK never covers what is not durable. A snapshot becomes an
///   `apply` when every chunk has arrived.
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
    /// What the peer acknowledged, as this session knows it (read from the
    /// store at the start; each change is also returned as an action).
    public private(set) var acknowledged = QStateVector()
    private var inFlight = 0
    private var lastProgressMs: UInt64 = 0
    private var ourStart: QStateVector?
    private var theirStart: QStateVector?
    private var knowsPeer = false
    private var snapshotVector: QStateVector?
    private var snapshotChunks: [UInt32: [QRegisterName: RegisterState]] = [:]
    private var snapshotBytes = 0
    /// Origins the peer may hold beyond what our last whole ACK told it:
    /// those in its VECTOR, those it sent, those we sent. After a commit the
    /// ACK carries only these (`partial`), since nothing else can make the
    /// peer send. A snapshot either way makes every ACK whole (`wholeAcks`).
    private var linkOrigins: Set<Origin> = []
    private var wholeAcks = false

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

    /// Counters for `$lag`, metrics and tests.
    public private(set) var deltasSent = 0
    public private(set) var deltasReceived = 0
    public private(set) var snapshotsSent = 0
    public private(set) var snapshotsApplied = 0

    public init(peer: String, options: Options = Options()) {
        self.peer = peer
        self.options = options
    }

    /// Whether a store change may give this session something to send: a
    /// publisher, or a paused session, sends no deltas.
    public var sendsDeltas: Bool { !paused && !publishOnly }

    /// Both directions have caught up with what the other side held when the
    /// session started: the HalfPair's `caughtUp` event.
    public func isCaughtUp(_ store: any StoreView) -> Bool {
        guard let ourStart, let theirStart else { return false }
        let received = store.vector.covers(theirStart)
        if publishOnly || !received { return received }
        let acknowledged = recorded(store)
        if let only = onlyOrigin { return acknowledged[only] >= ourStart[only] }
        return acknowledged.covers(ourStart)
    }

    /// What is still unacknowledged, in deltas: what the peer lacks of ours.
    public func lag(_ store: any StoreView) -> UInt64 {
        if publishOnly { return 0 }
        let acknowledged = recorded(store)
        if let only = onlyOrigin { return store.vector[only] - min(store.vector[only], acknowledged[only]) }
        return store.vector.lacking(in: acknowledged).reduce(0) { $0 + $1.count }
    }

    /// What the peer acknowledged, this session's view merged with the
    /// store's record: several links may reach one peer (daemons sharing a
    /// key, an agent's standby upstream), and the store's record holds what
    /// any of them acknowledged.
    func recorded(_ store: any StoreView) -> QStateVector {
        acknowledged.merged(store.peerVector(peer))
    }

    /// Adopts what other links to the same peer got acknowledged (the node
    /// calls it when a standby session takes over).
    public mutating func mergeAcknowledged(_ store: any StoreView) {
        acknowledged.merge(store.peerVector(peer))
    }

    /// `v` as the sender sees it: with `onlyOrigin`, every other origin counts
    /// as held by the peer, so nothing of theirs is sent.
    func sendable(_ v: QStateVector, _ store: any StoreView) -> QStateVector {
        guard let only = onlyOrigin else { return v }
        var view = v
        for o in store.vector.origins where o != only { view[o] = max(view[o], store.vector[o]) }
        return view
    }

    /// Opens the session: VECTOR.
    public mutating func start(_ store: any StoreView, nowMs: UInt64) throws -> [SyncAction] {
        precondition(!started, "session started twice")
        started = true
        ourStart = store.vector
        acknowledged = store.peerVector(peer)
        sent = acknowledged
        lastProgressMs = nowMs
        return [.send(try vectorMessage(store))]
    }

    /// VECTOR, with what we hold of the peer's own origin (a store error is
    /// the caller's: a VECTOR without its tip would skip the peer's origin check).
    func vectorMessage(_ store: any StoreView) throws -> Message {
        guard let peerOrigin else { return .vector(store.vector) }
        let seq = store.vector[peerOrigin]
        guard seq > 0, let hlc = try store.heldHLC(origin: peerOrigin, seq: seq) else { return .vector(store.vector) }
        return .vector(store.vector, tip: OriginTip(origin: peerOrigin, seq: seq, hlc: hlc))
    }

    /// A message from the peer. `nowMs` drives resends; `physicalMs` (the
    /// wall clock, default `nowMs`) bounds the stamps the peer may send.
    public mutating func receive(_ message: Message, _ store: any StoreView, nowMs: UInt64, physicalMs: UInt64? = nil) throws -> [SyncAction] {
        let wallMs = physicalMs ?? nowMs
        precondition(started, "session not started")
        var out: [SyncAction] = []
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
                    throw OriginConflict(origin: own, verdict: verdict, peerHolds: theirs[own], acknowledged: acknowledged[own])
                }
            }
            // A (re)start from the peer: it holds exactly this, which may be
            // less than it once acknowledged (its store went back in time).
            if theirStart == nil { theirStart = theirs }
            out += learn(theirs, current: true)
            sent = theirs
            inFlight = 0
            knowsPeer = true
            lastProgressMs = nowMs
            linkOrigins.formUnion(theirs.entries.keys)
            out.append(.send(.ack(store.vector)))
        case .ack(let theirs, let partial):
            try checkOwnOrigin(theirs, store)
            let before = acknowledged
            if partial {
                // Some origins only: it adds, and says nothing of the rest.
                out += learn(theirs, current: false)
            } else {
                if theirStart == nil { theirStart = theirs }
                // The first ACK of a session (before any VECTOR got through) is as
                // current as a VECTOR: the peer sent it after this session began.
                out += learn(theirs, current: !knowsPeer)
                knowsPeer = true
                linkOrigins.formUnion(theirs.entries.keys)
            }
            if acknowledged != before { lastProgressMs = nowMs }
            inFlight = max(0, inFlight - 1)
        case .deltas(let deltas):
            // Checked now (a stamp too far ahead refuses the frame whole);
            // the ACK waits for `committed`.
            try checkDrift(deltas.lazy.filter { !store.vector.contains($0.id) }.map(\.hlc), nowMs: wallMs, what: "delta")
            // The peer holds what it sends: never echo it back.
            for d in deltas {
                sent[d.origin] = max(sent[d.origin], d.seq)
                linkOrigins.insert(d.origin)
            }
            return [.commit(deltas)]
        case .snapshot(let chunk):
            try checkOwnOrigin(chunk.vector, store)
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
            wholeAcks = true
            if snapshotChunks.count == Int(chunk.count) {
                var registers: [QRegisterName: RegisterState] = [:]
                for part in snapshotChunks.values { registers.merge(part) { a, _ in a } }
                snapshotVector = nil
                snapshotChunks = [:]
                snapshotBytes = 0
                return [.apply(Snapshot(registers: registers, vector: chunk.vector))]
            }
        case .heartbeat:
            break
        case .hello, .auth, .error, .close:
            throw WireError(.unexpected, "\(message.type) is not expected after the handshake")
        }
        return out + (try poll(store, nowMs: nowMs))
    }

    /// The deltas of a `commit` action are durable (`result` covers at least
    /// them): the ACK, then whatever the window lets this session send.
    public mutating func committed(_ result: CommitResult, _ store: any StoreView, nowMs: UInt64) throws -> [SyncAction] {
        deltasReceived += result.held.count
        return [.send(ack(store))] + (try poll(store, nowMs: nowMs))
    }

    /// The snapshot of an `apply` action is merged: the ACK, then whatever
    /// the window allows.
    public mutating func applied(_ store: any StoreView, nowMs: UInt64) throws -> [SyncAction] {
        snapshotsApplied += 1
        return [.send(ack(store))] + (try poll(store, nowMs: nowMs))
    }

    /// The ACK after a commit: partial (the link's origins) unless a
    /// snapshot crossed the link. The answer to a VECTOR is always whole.
    func ack(_ store: any StoreView) -> Message {
        let vector = store.vector
        guard !wholeAcks, linkOrigins.count < vector.entries.count else { return .ack(vector) }
        var entries = [Origin: UInt64](minimumCapacity: linkOrigins.count)
        for o in linkOrigins where vector[o] > 0 { entries[o] = vector[o] }
        return .ack(QStateVector(entries), partial: true)
    }

    /// What the peer holds. A `current` report (a VECTOR, or the first ACK
    /// of the session) replaces what was recorded when it is lower: the
    /// peer's store went back in time and must be sent again what it lost.
    /// Any other ACK only adds (ACKs may arrive out of order, and later ones
    /// carry only what changed).
    mutating func learn(_ theirs: QStateVector, current: Bool) -> [SyncAction] {
        guard !publishOnly else { return [] }
        if current, acknowledged.merged(theirs) != theirs {
            acknowledged = theirs
            return [.replaceAck(theirs)]
        }
        acknowledged.merge(theirs)
        return [.recordAck(theirs)]
    }

    /// An ACK or a snapshot that holds more of our own origin than we do:
    /// our store went back in time, and the peer's VECTOR (with its tip)
    /// has not reached us yet (lost, or still on its way) while we wrote.
    /// Taking the ACK or merging the snapshot would hide it until we reuse
    /// a seq the peer holds; found here, it starts a new incarnation as at
    /// the VECTOR.
    func checkOwnOrigin(_ theirs: QStateVector, _ store: any StoreView) throws {
        guard let own = ownOrigin else { return }
        // No tip here: only the `behind` half of the VECTOR's judgement applies.
        let verdict = OriginCheck.judge(weHold: store.vector[own], horizon: store.horizon[own], ourHLC: { _ in nil },
                                        peerHolds: theirs[own], peerHLC: nil)
        guard verdict != .consistent else { return }
        throw OriginConflict(origin: own, verdict: verdict, peerHolds: theirs[own], acknowledged: acknowledged[own])
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
    /// Returns only `send` actions.
    public mutating func poll(_ store: any StoreView, nowMs: UInt64) throws -> [SyncAction] {
        precondition(started, "session not started")
        var out: [SyncAction] = []
        if nowMs >= lastProgressMs + options.resendAfterMs {
            lastProgressMs = nowMs
            if !knowsPeer {
                return [.send(try vectorMessage(store))]
            }
            if sent != acknowledged {
                sent = acknowledged
                inFlight = 0
            }
        }
        guard knowsPeer, sendsDeltas else { return out }
        sent.merge(acknowledged)
        sending: while inFlight < options.inFlightMax {
            let view = sendable(sent, store)
            let lacking = store.vector.lacking(in: view)
            if lacking.isEmpty {
                // Nothing outstanding counts as progress: the clock restarts.
                if view == sendable(acknowledged, store) { lastProgressMs = nowMs }
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
                guard !batch.isEmpty else { break sending }
                // While a frame is unacknowledged, another goes out only when
                // it is full; a partial one waits for the ACK and then carries
                // everything written meanwhile (Nagle's rule). Small frames
                // would otherwise fill the window, and a daemon's queue with
                // a thousand agents' windows of one-delta frames.
                let full = deltas.count >= options.batchDeltasMax || batch.count < deltas.count
                if inFlight > 0 && !full { break sending }
                for d in batch {
                    sent[d.origin] = max(sent[d.origin], d.seq)
                    linkOrigins.insert(d.origin)
                }
                deltasSent += batch.count
                inFlight += 1
                out.append(.send(.deltas(batch)))
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
                    out.append(.send(.snapshot(SnapshotChunk(index: UInt32(i), count: UInt32(parts.count), vector: snapshot.vector, registers: registers))))
                }
                sent.merge(snapshot.vector)
                wholeAcks = true
                snapshotsSent += 1
                inFlight += 1
            }
        }
        return out
    }
}

extension SyncSession {
    /// The simplest driver: performs `actions` on `store` at once (a commit
    /// per DELTAS frame, `committed` and `applied` called right after) and
    /// returns the messages to send, in order. The simulation and tests use
    /// it; the nodes batch commits across links instead.
    public mutating func perform(_ actions: [SyncAction], on store: any Store, nowMs: UInt64) throws -> [Message] {
        var out: [Message] = []
        for action in actions {
            switch action {
            case .send(let m): out.append(m)
            case .recordAck(let v): try store.recordAck(peer: peer, vector: v)
            case .replaceAck(let v): try store.replaceAck(peer: peer, vector: v)
            case .commit(let deltas):
                let result = try store.commit(deltas)
                out += try perform(committed(result, store, nowMs: nowMs), on: store, nowMs: nowMs)
            case .apply(let snapshot):
                _ = try store.apply(snapshot)
                out += try perform(applied(store, nowMs: nowMs), on: store, nowMs: nowMs)
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
