import SpookCore

/// A delta a peer may not see still holds its place in its origin's
/// sequence: it travels *withheld*, with its origin, seq and clock, one null
/// write to `spook/withheld/$withheld`, and nothing of its group or values.
/// The receiver's vector stays contiguous (deltas of one origin are applied
/// in order), and the content never leaves the node that may not share it.
///
/// A withheld delta is final for the receiver: it keeps whichever version of
/// an (origin, seq) it got first, so a peer later granted more does not get
/// the content back-filled. Only peers that do not relay others' deltas get
/// withheld ones: agents, which send upstream only their own origin.
public enum Withheld {
    public static let group = try! QGroupName("spook/withheld")
    public static let register = "$withheld"

    public static func redact(_ d: Delta) -> Delta {
        guard d.group != group else { return d }
        return try! Delta(origin: d.origin, seq: d.seq, hlc: d.hlc, group: group, writes: [Write(register, .set, .null)])
    }

    public static func isWithheld(_ d: Delta) -> Bool { d.group == group }
}
