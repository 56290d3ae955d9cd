// libFuzzer target: the first byte picks a frame type, the rest is its
// payload, straight into Message(frame:) (no checksum in the way).
import SpookCore
import SpookWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size >= 1 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let type = FrameType.allCases[Int(bytes[0]) % FrameType.allCases.count]
    do {
        let message = try Message(frame: Frame(type: type, payload: Array(bytes[1...])))
        let again = try Message(frame: message.frame)
        precondition(again == message, "round trip changed \(type)")
    } catch is WireError {
    } catch {
        preconditionFailure("unexpected error type: \(error)")
    }
    return 0
}
