/// The firmware bridge's framing (docs/firmware-bridge.md): the same bytes
/// as `firmware-bridge/src/sfb.c`, checked against the same vectors.
///
///     packet = type u8 | seq u8 | ack u8 | payload | crc16 (CCITT-FALSE, BE)
///     wire   = COBS(packet) 0x00
public enum FirmwareCodec {
    public static func crc16(_ data: some Sequence<UInt8>) -> UInt16 {
        var crc: UInt16 = 0xFFFF
        for byte in data {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    public static func cobsEncode(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0]
        out.reserveCapacity(data.count + data.count / 254 + 2)
        var codeAt = 0
        var code: UInt8 = 1
        for byte in data {
            if byte == 0 {
                out[codeAt] = code
                codeAt = out.count
                out.append(0)
                code = 1
            } else {
                out.append(byte)
                code += 1
                if code == 0xFF {
                    out[codeAt] = code
                    codeAt = out.count
                    out.append(0)
                    code = 1
                }
            }
        }
        out[codeAt] = code
        return out
    }

    /// nil on a malformed encoding.
    public static func cobsDecode(_ data: ArraySlice<UInt8>) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(data.count)
        var i = data.startIndex
        while i < data.endIndex {
            let code = data[i]
            i += 1
            guard code != 0 else { return nil }
            for _ in 1..<Int(code) {
                guard i < data.endIndex, data[i] != 0 else { return nil }
                out.append(data[i])
                i += 1
            }
            if code != 0xFF && i < data.endIndex { out.append(0) }
        }
        return out
    }

    /// Packet bytes with CRC, COBS-encoded, with the 0x00 delimiter.
    public static func frame(_ packet: FirmwarePacket) -> [UInt8] {
        var raw = [packet.type.rawValue, packet.seq, packet.ack] + packet.payload
        let crc = crc16(raw)
        raw.append(UInt8(crc >> 8))
        raw.append(UInt8(crc & 0xFF))
        return cobsEncode(raw) + [0]
    }
}

public enum FirmwarePacketType: UInt8, Sendable {
    case hello = 0x01, welcome = 0x02, report = 0x03, write = 0x04, reject = 0x05
    case heartbeat = 0x06, sync = 0x07, ack = 0x08, describe = 0x09
}

public struct FirmwarePacket: Hashable, Sendable {
    public var type: FirmwarePacketType
    /// 1…255 for packets that must be acknowledged; 0 for control packets.
    public var seq: UInt8
    /// The last in-order seq received from the other side (0: none yet).
    public var ack: UInt8
    public var payload: [UInt8]

    public init(_ type: FirmwarePacketType, seq: UInt8 = 0, ack: UInt8, payload: [UInt8] = []) {
        self.type = type
        self.seq = seq
        self.ack = ack
        self.payload = payload
    }
}

/// Splits a byte stream at 0x00 delimiters into packets; noise costs the
/// frames it touches and nothing else. Counts what it threw away.
public struct FirmwareFrameDecoder: Sendable {
    public static let packetMax = 3 + 240 + 2
    private var buffer: [UInt8] = []
    private var overflow = false
    public private(set) var badCRC = 0
    public private(set) var badFrames = 0

    public init() {}

    public mutating func feed(_ bytes: some Sequence<UInt8>) -> [FirmwarePacket] {
        var packets: [FirmwarePacket] = []
        for byte in bytes {
            guard byte == 0 else {
                if buffer.count < FirmwareFrameDecoder.packetMax + FirmwareFrameDecoder.packetMax / 254 + 1 {
                    buffer.append(byte)
                } else {
                    overflow = true
                }
                continue
            }
            defer {
                buffer.removeAll(keepingCapacity: true)
                overflow = false
            }
            if overflow {
                badFrames += 1
                continue
            }
            guard !buffer.isEmpty else { continue }
            guard let raw = FirmwareCodec.cobsDecode(buffer[...]), raw.count >= 5 else {
                badFrames += 1
                continue
            }
            let crc = UInt16(raw[raw.count - 2]) << 8 | UInt16(raw[raw.count - 1])
            guard FirmwareCodec.crc16(raw[..<(raw.count - 2)]) == crc else {
                badCRC += 1
                continue
            }
            guard let type = FirmwarePacketType(rawValue: raw[0]) else {
                badFrames += 1
                continue
            }
            packets.append(FirmwarePacket(type, seq: raw[1], ack: raw[2], payload: Array(raw[3..<(raw.count - 2)])))
        }
        return packets
    }
}
