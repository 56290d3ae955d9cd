/// Deterministic reconnect backoff (SUBSTRATE.md §4):
///
///     delay = min(cap, base · 2^attempt) · jitter,  jitter ∈ [0.5, 1)
///
/// with jitter taken from a hash of `(origin, attempt)`: a fleet restarting
/// together spreads out, yet one node's delays are the same on every run.
public struct ReconnectBackoff: Hashable, Sendable {
    public var baseMs: UInt64
    public var capMs: UInt64

    public init(baseMs: UInt64 = 500, capMs: UInt64 = 30_000) {
        precondition(baseMs > 0 && capMs >= baseMs, "backoff needs 0 < base ≤ cap")
        self.baseMs = baseMs
        self.capMs = capMs
    }

    /// The jitter for `(origin, attempt)` as a fraction of 2^32 in [2^31, 2^32):
    /// integer arithmetic, so every implementation gets the same delay.
    public static func jitterNumerator(origin: Origin, attempt: UInt32) -> UInt64 {
        let h = SplitMix64.mix(origin.rawValue ^ SplitMix64.mix(UInt64(attempt) &+ 0x5350_4F4F_4B00_0000))
        return (1 << 31) | (h >> 33)
    }

    public func delayMs(origin: Origin, attempt: UInt32) -> UInt64 {
        let exponent = min(UInt64(attempt), 63)
        let (scaled, overflow) = baseMs.multipliedReportingOverflow(by: 1 << exponent)
        let raw = overflow ? capMs : min(capMs, scaled)
        // raw · numerator / 2^32, in 128 bits so no cap can overflow it.
        let product = raw.multipliedFullWidth(by: ReconnectBackoff.jitterNumerator(origin: origin, attempt: attempt))
        return product.high << 32 | product.low >> 32
    }
}
