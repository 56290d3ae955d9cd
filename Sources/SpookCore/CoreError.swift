/// An error from the pure core: a bad name, value, delta, clock reading or
/// state-machine event. `code` is stable and machine-readable (it is what the
/// conformance vectors name); `message` is the sentence a person reads.
public struct CoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Stable error codes. A struct of constants rather than an enum so new
    /// codes do not break callers that switch over them.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        private init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let invalidName = Code("invalid-name")
        public static let invalidPattern = Code("invalid-pattern")
        public static let valueTooLarge = Code("value-too-large")
        public static let invalidValue = Code("invalid-value")
        public static let typeMismatch = Code("type-mismatch")
        public static let kindNotAllowed = Code("kind-not-allowed")
        public static let notOwner = Code("not-owner")
        public static let emptyDelta = Code("empty-delta")
        public static let tooManyWrites = Code("too-many-writes")
        public static let deltaTooLarge = Code("delta-too-large")
        public static let duplicateRegister = Code("duplicate-register")
        public static let invalidSeq = Code("invalid-seq")
        public static let clockOverflow = Code("clock-overflow")
        public static let clockDrift = Code("clock-drift")
        public static let truncated = Code("truncated")
        public static let malformed = Code("malformed")
        public static let illegalTransition = Code("illegal-transition")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
