import SpookCore
import Testing

@Suite struct HalfPairTests {
    typealias S = HalfPair.State
    typealias E = HalfPair.Event
    typealias A = HalfPair.Action

    static let origin = Origin(0x1234)
    static let backoff = ReconnectBackoff(baseMs: 100, capMs: 10_000)
    static func d(_ attempt: UInt32) -> UInt64 { backoff.delayMs(origin: origin, attempt: attempt) }

    /// Event paths from `detached` to every state worth testing.
    static let paths: [(S, [E])] = [
        (.detached, []),
        (.entangling(linkUp: false), [.connect]),
        (.entangling(linkUp: true), [.connect, .linkUp]),
        (.coherent(missed: 0), [.connect, .linkUp, .caughtUp]),
        (.coherent(missed: 2), [.connect, .linkUp, .caughtUp, .heartbeatTimerFired, .heartbeatTimerFired]),
        (.decoherent(attempt: 0), [.connect, .linkDown]),
        (.reentangling(attempt: 0, linkUp: false), [.connect, .linkDown, .reconnectTimerFired]),
        (.reentangling(attempt: 0, linkUp: true), [.connect, .linkDown, .reconnectTimerFired, .linkUp]),
        (.decoherent(attempt: 1), [.connect, .linkDown, .reconnectTimerFired, .linkDown]),
        (.closed, [.dissolve]),
    ]

    static let events: [E] = [.connect, .linkUp, .caughtUp, .linkDown, .heartbeatTimerFired, .peerHeard, .reconnectTimerFired, .dissolve]

    /// Every legal (state, event): the next state and the actions. Anything
    /// not listed must be refused.
    static let legal: [S: [E: (S, [A])]] = [
        .detached: [
            .connect: (.entangling(linkUp: false), [.openLink, .publish(.entangling(linkUp: false))]),
            .dissolve: (.closed, [.publish(.closed)]),
        ],
        .entangling(linkUp: false): [
            .linkUp: (.entangling(linkUp: true), [.startCatchUp, .startHeartbeatTimer, .publish(.entangling(linkUp: true))]),
            .linkDown: (.decoherent(attempt: 0), [.scheduleReconnect(delayMs: d(0)), .publish(.decoherent(attempt: 0))]),
            .dissolve: (.closed, [.closeLink(.dissolved), .publish(.closed)]),
        ],
        .entangling(linkUp: true): [
            .caughtUp: (.coherent(missed: 0), [.publish(.coherent(missed: 0))]),
            .linkDown: (.decoherent(attempt: 0), [.stopHeartbeatTimer, .scheduleReconnect(delayMs: d(0)), .publish(.decoherent(attempt: 0))]),
            .heartbeatTimerFired: (.entangling(linkUp: true), [.sendHeartbeat]),
            .peerHeard: (.entangling(linkUp: true), []),
            .dissolve: (.closed, [.stopHeartbeatTimer, .closeLink(.dissolved), .publish(.closed)]),
        ],
        .coherent(missed: 0): [
            .linkDown: (.decoherent(attempt: 0), [.stopHeartbeatTimer, .scheduleReconnect(delayMs: d(0)), .publish(.decoherent(attempt: 0))]),
            .heartbeatTimerFired: (.coherent(missed: 1), [.sendHeartbeat]),
            .peerHeard: (.coherent(missed: 0), []),
            .dissolve: (.closed, [.stopHeartbeatTimer, .closeLink(.dissolved), .publish(.closed)]),
        ],
        .coherent(missed: 2): [
            .linkDown: (.decoherent(attempt: 0), [.stopHeartbeatTimer, .scheduleReconnect(delayMs: d(0)), .publish(.decoherent(attempt: 0))]),
            .heartbeatTimerFired: (.decoherent(attempt: 0), [.closeLink(.heartbeatTimeout), .stopHeartbeatTimer, .scheduleReconnect(delayMs: d(0)), .publish(.decoherent(attempt: 0))]),
            .peerHeard: (.coherent(missed: 0), []),
            .dissolve: (.closed, [.stopHeartbeatTimer, .closeLink(.dissolved), .publish(.closed)]),
        ],
        .decoherent(attempt: 0): [
            .reconnectTimerFired: (.reentangling(attempt: 0, linkUp: false), [.openLink, .publish(.reentangling(attempt: 0, linkUp: false))]),
            .dissolve: (.closed, [.cancelReconnect, .publish(.closed)]),
        ],
        .reentangling(attempt: 0, linkUp: false): [
            .linkUp: (.reentangling(attempt: 0, linkUp: true), [.startCatchUp, .startHeartbeatTimer, .publish(.reentangling(attempt: 0, linkUp: true))]),
            .linkDown: (.decoherent(attempt: 1), [.scheduleReconnect(delayMs: d(1)), .publish(.decoherent(attempt: 1))]),
            .dissolve: (.closed, [.closeLink(.dissolved), .publish(.closed)]),
        ],
        .reentangling(attempt: 0, linkUp: true): [
            .caughtUp: (.coherent(missed: 0), [.publish(.coherent(missed: 0))]),
            .linkDown: (.decoherent(attempt: 1), [.stopHeartbeatTimer, .scheduleReconnect(delayMs: d(1)), .publish(.decoherent(attempt: 1))]),
            .heartbeatTimerFired: (.reentangling(attempt: 0, linkUp: true), [.sendHeartbeat]),
            .peerHeard: (.reentangling(attempt: 0, linkUp: true), []),
            .dissolve: (.closed, [.stopHeartbeatTimer, .closeLink(.dissolved), .publish(.closed)]),
        ],
        .decoherent(attempt: 1): [
            .reconnectTimerFired: (.reentangling(attempt: 1, linkUp: false), [.openLink, .publish(.reentangling(attempt: 1, linkUp: false))]),
            .dissolve: (.closed, [.cancelReconnect, .publish(.closed)]),
        ],
        .closed: [:],
    ]

    static func reach(_ path: [E]) throws -> HalfPair {
        var pair = HalfPair(origin: origin, backoff: backoff, heartbeatsMissedMax: 3)
        for e in path { _ = try pair.handle(e) }
        return pair
    }

    @Test(arguments: paths.map(\.0))
    func everyEventInEveryState(_ state: S) throws {
        let path = Self.paths.first { $0.0 == state }!.1
        #expect(try Self.reach(path).state == state)
        for event in Self.events {
            var pair = try Self.reach(path)
            if let (next, actions) = Self.legal[state]![event] {
                let got = try pair.handle(event)
                #expect(got == actions, "\(state) --\(event)-->")
                #expect(pair.state == next, "\(state) --\(event)--> \(pair.state), expected \(next)")
            } else {
                let error = #expect(throws: CoreError.self, "\(state) --\(event)--> must be illegal") { try pair.handle(event) }
                #expect(error?.code == .illegalTransition)
                #expect(error?.message.contains("event \(event) is not legal in state \(state.name)") == true)
                #expect(pair.state == state, "an illegal event must not move the state")
            }
        }
    }

    @Test func reconnectAttemptsGrowUntilCoherentThenReset() throws {
        var pair = try Self.reach([.connect, .linkDown])
        var delays: [UInt64] = []
        for attempt in 0..<8 {
            #expect(pair.state == .decoherent(attempt: UInt32(attempt)))
            _ = try pair.handle(.reconnectTimerFired)
            let actions = try pair.handle(.linkDown)
            guard case .scheduleReconnect(let delay)? = actions.first else {
                Issue.record("expected a reconnect, got \(actions)")
                return
            }
            delays.append(delay)
        }
        #expect(delays == (1...8).map { Self.d(UInt32($0)) })
        _ = try pair.handle(.reconnectTimerFired)
        _ = try pair.handle(.linkUp)
        _ = try pair.handle(.caughtUp)
        #expect(try pair.handle(.linkDown).contains(.scheduleReconnect(delayMs: Self.d(0))))
        #expect(pair.state.name == "decoherent" && !pair.state.isOnline)
    }

    @Test func backoffIsBoundedJitteredAndReproducible() {
        let b = ReconnectBackoff(baseMs: 500, capMs: 30_000)
        var distinct = Set<UInt64>()
        for node in 0..<200 {
            let o = Origin(SplitMix64.mix(UInt64(node)))
            for attempt in UInt32(0)..<40 {
                let raw = min(30_000, 500 * (UInt64(1) << min(UInt64(attempt), 62)))
                let delay = b.delayMs(origin: o, attempt: attempt)
                #expect(delay >= raw / 2 && delay < raw, "origin \(o) attempt \(attempt): \(delay) outside [\(raw / 2), \(raw))")
                #expect(delay == b.delayMs(origin: o, attempt: attempt))
                if attempt == 10 { distinct.insert(delay) }
            }
        }
        // A fleet after a daemon restart does not come back in lockstep.
        #expect(distinct.count > 150)
        #expect(b.delayMs(origin: Origin(1), attempt: .max) < 30_000)
    }

    /// Fixed delays every implementation must compute (the browser HalfPair's
    /// `backoffMs` in wasm/halfpair.mjs is checked against the same numbers).
    @Test func backoffVectors() {
        let a = ReconnectBackoff(baseMs: 500, capMs: 30_000), b = ReconnectBackoff(baseMs: 50, capMs: 400)
        #expect((0..<8).map { a.delayMs(origin: Origin(0x6668_7aad_f862_bd77), attempt: $0) } == [282, 532, 1961, 2844, 5586, 15462, 21989, 21770])
        #expect((0..<5).map { b.delayMs(origin: Origin(0xa1), attempt: $0) } == [48, 81, 132, 348, 361])
    }

    /// Hardening defect 2: silence while entangling or reentangling (link
    /// up, catch-up running) ends the link after `heartbeatsMissedMax`
    /// intervals, as in coherent; anything heard resets the count.
    @Test func silenceDuringCatchUpEndsTheLink() throws {
        var pair = HalfPair(origin: Origin(1), heartbeatsMissedMax: 3)
        _ = try pair.handle(.connect)
        _ = try pair.handle(.linkUp)
        #expect(try pair.handle(.heartbeatTimerFired) == [.sendHeartbeat])
        #expect(try pair.handle(.heartbeatTimerFired) == [.sendHeartbeat])
        _ = try pair.handle(.peerHeard)
        #expect(try pair.handle(.heartbeatTimerFired) == [.sendHeartbeat], "heard: the count starts again")
        #expect(try pair.handle(.heartbeatTimerFired) == [.sendHeartbeat])
        let actions = try pair.handle(.heartbeatTimerFired)
        #expect(actions.first == .closeLink(.heartbeatTimeout) && pair.state == .decoherent(attempt: 0), "\(actions)")
        _ = try pair.handle(.reconnectTimerFired)
        _ = try pair.handle(.linkUp)
        for _ in 0..<2 { _ = try pair.handle(.heartbeatTimerFired) }
        #expect(try pair.handle(.heartbeatTimerFired).first == .closeLink(.heartbeatTimeout))
        #expect(pair.state == .decoherent(attempt: 1), "a failed reentangling counts as an attempt")
    }
}
