// libFuzzer target: the core's canonical decoders (delta, register state,
// vector). Whatever decodes must re-encode to exactly the input bytes.
import SpookCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let body = Array(bytes[1...])
    switch bytes[0] % 3 {
    case 0:
        if let d = try? Delta.decode(body) { precondition(d.encoded == body, "delta is not canonical") }
    case 1:
        if let s = try? RegisterState.decode(body) { precondition(s.encoded == body, "register state is not canonical") }
    default:
        var r = ByteReader(body)
        if let v = try? QStateVector.decode(from: &r), r.isAtEnd {
            var w = ByteWriter()
            v.encode(into: &w)
            // Zero entries are dropped on decode, so compare decoded values.
            var again = ByteReader(w.bytes)
            precondition((try? QStateVector.decode(from: &again)) == v, "vector round trip")
        }
    }
    return 0
}
