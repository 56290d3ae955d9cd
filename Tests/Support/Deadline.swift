#if canImport(Glibc)
import Glibc
#endif

/// Milliseconds on the monotonic clock (for deadlines and elapsed times).
public func monotonicMs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}

/// Waits until `condition` holds and fails the test if `seconds` pass first.
/// The condition is state in another process (an API answer, a vector),
/// which nothing can signal to the test, so it is checked every `everyMs`;
/// the deadline, not the pause, decides how long a test may wait.
public func waitUntil(_ what: String, seconds: Double = 20, everyMs: UInt32 = 20, _ condition: () throws -> Bool) throws {
    let deadline = monotonicMs() + UInt64(seconds * 1000)
    while monotonicMs() < deadline {
        if (try? condition()) == true { return }
        usleep(everyMs * 1000)
    }
    throw ChildProcess.Failure("timed out after \(seconds) s waiting for \(what)")
}
