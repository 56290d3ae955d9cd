// libFuzzer target: an arbitrary byte stream, cut into chunks by its own
// first byte, through FrameDecoder and Message. Must never crash, hang or
// accept a frame whose checksum does not match.
import SpookCore
import SpookWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    let chunk = 1 + Int(first)
    var decoder = FrameDecoder(payloadMax: 64 * 1024)
    var i = 1
    do {
        while i < bytes.count {
            decoder.feed(bytes[i..<min(i + chunk, bytes.count)])
            i += chunk
            while let frame = try decoder.next() {
                let message = try Message(frame: frame)
                // Round trip: what decodes re-encodes to a frame that decodes the same.
                let again = try Message(frame: message.frame)
                precondition(again == message, "round trip changed \(frame.type)")
            }
        }
    } catch is WireError {
    } catch {
        preconditionFailure("unexpected error type: \(error)")
    }
    return 0
}
