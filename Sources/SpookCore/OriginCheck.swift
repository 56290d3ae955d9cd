/// Whether a replica may go on writing under its origin, judged from what a
/// peer holds of that origin (SUBSTRATE.md §6: an origin never reuses a seq).
///
/// A store can go back in time (a restored backup, a lost or emptied file)
/// while its peers remember more of its origin. The handshake's VECTOR tells
/// how far a peer holds our origin and the HLC of the delta it holds at that
/// seq; this compares both with what we hold. Pure.
///
/// The HLC is the witness of a delta's identity: a store that went back in
/// time stamps its next writes from a later physical clock, so two different
/// deltas under one seq carry different HLCs. (A withheld placeholder keeps
/// its delta's HLC, so it counts as the same delta.)
public enum OriginCheck {
    public enum Verdict: Hashable, Sendable, CustomStringConvertible {
        /// The peer holds a prefix of what we hold, identical where we can tell.
        case consistent
        /// The peer holds seqs of our origin that we do not: our store is stale,
        /// and our next write would reuse a seq.
        case behind(peerHolds: UInt64, weHold: UInt64)
        /// We both hold `seq`, but different deltas under it: our store went
        /// back and was written again.
        case forked(seq: UInt64)

        public var description: String {
            switch self {
            case .consistent: "consistent"
            case .behind(let p, let w): "the peer holds this origin up to seq \(p), this store only up to \(w)"
            case .forked(let seq): "the peer holds a different delta under seq \(seq) of this origin"
            }
        }
    }

    /// - Parameters:
    ///   - weHold: our vector entry for our own origin.
    ///   - horizon: our compaction horizon for it (deltas at or below it can no longer be compared).
    ///   - ourHLC: the HLC of the delta we hold at a seq (nil when not held).
    ///   - peerHolds: the peer's vector entry for our origin.
    ///   - peerHLC: the HLC of the delta the peer holds at `peerHolds` (nil: not sent).
    public static func judge(weHold: UInt64, horizon: UInt64, ourHLC: (UInt64) -> HLCTimestamp?,
                             peerHolds: UInt64, peerHLC: HLCTimestamp?) -> Verdict {
        if peerHolds > weHold { return .behind(peerHolds: peerHolds, weHold: weHold) }
        guard peerHolds > horizon, peerHolds > 0, let peerHLC, let ours = ourHLC(peerHolds) else { return .consistent }
        return ours == peerHLC ? .consistent : .forked(seq: peerHolds)
    }
}
