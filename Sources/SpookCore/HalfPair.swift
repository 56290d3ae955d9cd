/// One end of a Pair: the state machine that keeps one replica entangled with
/// one peer over one link (SUBSTRATE.md §4).
///
///     detached --connect--> entangling --caught up--> coherent
///     coherent --link down / heartbeats missed--> decoherent
///     decoherent --reconnect timer--> reentangling --caught up--> coherent
///     any --dissolve--> closed
///
/// Pure: `handle(_:)` maps (state, event) to a new state and the actions the
/// driver must carry out (open a link, arm a timer, publish `$state`). Events
/// that make no sense in the current state throw `illegal-transition` and
/// leave the state untouched, so a confused driver is a logged error, never a
/// corrupted pair.
public struct HalfPair: Sendable {
    public enum State: Hashable, Sendable, CustomStringConvertible {
        case detached
        /// First connection: link being opened, handshake or catch-up running.
        case entangling(linkUp: Bool)
        /// Caught up; `missed` heartbeats in a row so far.
        case coherent(missed: UInt32)
        /// Link lost; waiting for reconnect `attempt`.
        case decoherent(attempt: UInt32)
        /// Reconnect `attempt` in progress.
        case reentangling(attempt: UInt32, linkUp: Bool)
        case closed

        /// The name published in the `$state` register.
        public var name: String {
            switch self {
            case .detached: "detached"
            case .entangling: "entangling"
            case .coherent: "coherent"
            case .decoherent: "decoherent"
            case .reentangling: "reentangling"
            case .closed: "closed"
            }
        }

        public var isOnline: Bool { if case .coherent = self { true } else { false } }
        public var description: String { name }
    }

    public enum Event: Hashable, Sendable, CustomStringConvertible {
        /// Start: open the link for the first time.
        case connect
        /// The link is open and the handshake succeeded.
        case linkUp
        /// Catch-up finished: each side holds what the other had.
        case caughtUp
        /// The link failed or closed (transport error, ERROR frame, handshake failure).
        case linkDown
        /// The heartbeat interval elapsed with nothing heard from the peer.
        case heartbeatTimerFired
        /// Anything arrived from the peer (a heartbeat or any other frame).
        case peerHeard
        /// The reconnect delay elapsed.
        case reconnectTimerFired
        /// The device or config went away: end this HalfPair for good.
        case dissolve

        public var description: String {
            switch self {
            case .connect: "connect"
            case .linkUp: "linkUp"
            case .caughtUp: "caughtUp"
            case .linkDown: "linkDown"
            case .heartbeatTimerFired: "heartbeatTimerFired"
            case .peerHeard: "peerHeard"
            case .reconnectTimerFired: "reconnectTimerFired"
            case .dissolve: "dissolve"
            }
        }
    }

    public enum CloseReason: Hashable, Sendable {
        case heartbeatTimeout, dissolved
    }

    public enum Action: Hashable, Sendable {
        case openLink
        case closeLink(CloseReason)
        /// Exchange vectors and send the peer what it lacks.
        case startCatchUp
        case sendHeartbeat
        case startHeartbeatTimer
        case stopHeartbeatTimer
        case scheduleReconnect(delayMs: UInt64)
        case cancelReconnect
        /// Write `$state` / `$online` for this HalfPair.
        case publish(State)
    }

    public let origin: Origin
    public let backoff: ReconnectBackoff
    /// Decoherent after this many heartbeat intervals in a row with nothing heard.
    public let heartbeatsMissedMax: UInt32
    public private(set) var state: State = .detached
    /// Heartbeat intervals in a row with nothing heard while entangling or
    /// reentangling with the link up: a peer that goes silent during the
    /// catch-up is as dead as one that goes silent when coherent.
    public private(set) var silentIntervals: UInt32 = 0

    public init(origin: Origin, backoff: ReconnectBackoff = ReconnectBackoff(), heartbeatsMissedMax: UInt32 = 3) {
        precondition(heartbeatsMissedMax >= 1, "heartbeatsMissedMax must be at least 1")
        self.origin = origin
        self.backoff = backoff
        self.heartbeatsMissedMax = heartbeatsMissedMax
    }

    /// Applies one event. Throws `illegal-transition` (state unchanged) when
    /// the event cannot happen in the current state.
    public mutating func handle(_ event: Event) throws -> [Action] {
        switch (state, event) {
        case (.detached, .connect):
            return move(to: .entangling(linkUp: false), [.openLink])

        case (.entangling(linkUp: false), .linkUp):
            silentIntervals = 0
            return move(to: .entangling(linkUp: true), [.startCatchUp, .startHeartbeatTimer])
        case (.reentangling(let attempt, linkUp: false), .linkUp):
            silentIntervals = 0
            return move(to: .reentangling(attempt: attempt, linkUp: true), [.startCatchUp, .startHeartbeatTimer])

        case (.entangling(linkUp: true), .caughtUp), (.reentangling(_, linkUp: true), .caughtUp):
            return move(to: .coherent(missed: 0), [])

        case (.entangling(let linkUp), .linkDown):
            return decohere(attempt: 0, stopHeartbeats: linkUp)
        case (.reentangling(let attempt, let linkUp), .linkDown):
            return decohere(attempt: attempt &+ 1, stopHeartbeats: linkUp)
        case (.coherent, .linkDown):
            return decohere(attempt: 0, stopHeartbeats: true)

        case (.coherent(let missed), .heartbeatTimerFired):
            if missed + 1 >= heartbeatsMissedMax {
                var actions: [Action] = [.closeLink(.heartbeatTimeout)]
                actions += decohere(attempt: 0, stopHeartbeats: true)
                return actions
            }
            state = .coherent(missed: missed + 1)
            return [.sendHeartbeat]
        case (.entangling(linkUp: true), .heartbeatTimerFired), (.reentangling(_, linkUp: true), .heartbeatTimerFired):
            // Catch-up can take many intervals; keep the peer's detector fed,
            // and give up on a peer that stopped answering.
            if silentIntervals + 1 >= heartbeatsMissedMax {
                silentIntervals = 0
                var actions: [Action] = [.closeLink(.heartbeatTimeout)]
                if case .reentangling(let attempt, _) = state {
                    actions += decohere(attempt: attempt &+ 1, stopHeartbeats: true)
                } else {
                    actions += decohere(attempt: 0, stopHeartbeats: true)
                }
                return actions
            }
            silentIntervals += 1
            return [.sendHeartbeat]

        case (.coherent, .peerHeard):
            state = .coherent(missed: 0)
            return []
        case (.entangling(linkUp: true), .peerHeard), (.reentangling(_, linkUp: true), .peerHeard):
            silentIntervals = 0
            return []

        case (.decoherent(let attempt), .reconnectTimerFired):
            return move(to: .reentangling(attempt: attempt, linkUp: false), [.openLink])

        case (.closed, .dissolve):
            break
        case (let current, .dissolve):
            var actions: [Action] = []
            switch current {
            case .entangling(linkUp: true), .reentangling(_, linkUp: true), .coherent:
                actions = [.stopHeartbeatTimer, .closeLink(.dissolved)]
            case .entangling(linkUp: false), .reentangling(_, linkUp: false):
                actions = [.closeLink(.dissolved)]
            case .decoherent:
                actions = [.cancelReconnect]
            case .detached, .closed:
                break
            }
            return move(to: .closed, actions)

        default:
            break
        }
        throw CoreError(.illegalTransition, "HalfPair \(origin): event \(event) is not legal in state \(state.name)")
    }

    private mutating func move(to next: State, _ actions: [Action]) -> [Action] {
        state = next
        return actions + [.publish(next)]
    }

    private mutating func decohere(attempt: UInt32, stopHeartbeats: Bool) -> [Action] {
        let delay = backoff.delayMs(origin: origin, attempt: attempt)
        var actions: [Action] = stopHeartbeats ? [.stopHeartbeatTimer] : []
        actions.append(.scheduleReconnect(delayMs: delay))
        return move(to: .decoherent(attempt: attempt), actions)
    }
}
