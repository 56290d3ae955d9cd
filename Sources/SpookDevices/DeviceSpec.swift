import SpookCore

/// A device from the agent's config (`[[device]]`, docs/configuration.md).
public struct DeviceSpec: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// Firmware bridge over a serial port (termios).
        case serial(SerialSettings)
        /// Firmware bridge over USB bulk endpoints (libusb).
        case usb(USBSettings)
        case modbusTCP(host: String, port: Int, modbus: ModbusSettings)
        case modbusRTU(SerialSettings, modbus: ModbusSettings)

        public var name: String {
            switch self {
            case .serial: "serial"
            case .usb: "usb"
            case .modbusTCP: "modbus-tcp"
            case .modbusRTU: "modbus-rtu"
            }
        }
    }

    public var name: String
    public var kind: Kind
    /// The QGroup the device's registers live in; may hold `{name}`,
    /// `{serial}`, `{vendor}`, `{product}` (filled in when it attaches).
    public var groupTemplate: String
    /// A device with a match block waits for a matching attach; one without
    /// opens its port at start.
    public var match: DeviceMatch?

    public init(name: String, kind: Kind, groupTemplate: String, match: DeviceMatch? = nil) {
        self.name = name
        self.kind = kind
        self.groupTemplate = groupTemplate
        self.match = match
    }
}

public struct SerialSettings: Hashable, Sendable {
    public enum Parity: String, Sendable { case none, even, odd }
    /// Empty when the port comes from an attach (DEVNAME).
    public var port: String
    public var baud: Int = 115_200
    public var parity: Parity = .none
    public var dataBits: Int = 8
    public var stopBits: Int = 1

    public init(port: String, baud: Int = 115_200, parity: Parity = .none, dataBits: Int = 8, stopBits: Int = 1) {
        self.port = port
        self.baud = baud
        self.parity = parity
        self.dataBits = dataBits
        self.stopBits = stopBits
    }
}

public struct USBSettings: Hashable, Sendable {
    public var interface: Int = 0
    public var endpointIn: UInt8 = 0x81
    public var endpointOut: UInt8 = 0x01
    public init(interface: Int = 0, endpointIn: UInt8 = 0x81, endpointOut: UInt8 = 0x01) {
        self.interface = interface
        self.endpointIn = endpointIn
        self.endpointOut = endpointOut
    }
}

public struct ModbusSettings: Hashable, Sendable {
    public var unit: Int = 1
    public var pollMs: Int = 1_000
    public var timeoutMs: Int = 1_000
    public var points: [ModbusPoint] = []
    public init(unit: Int = 1, pollMs: Int = 1_000, timeoutMs: Int = 1_000, points: [ModbusPoint] = []) {
        self.unit = unit
        self.pollMs = pollMs
        self.timeoutMs = timeoutMs
        self.points = points
    }
}

/// Which physical device a spec is for: each given field must equal the
/// device's (hex ids compare without case and leading zeros).
public struct DeviceMatch: Hashable, Sendable {
    public var vendor: String?
    public var product: String?
    public var serial: String?

    public init(vendor: String? = nil, product: String? = nil, serial: String? = nil) {
        self.vendor = vendor
        self.product = product
        self.serial = serial
    }

    public func matches(_ d: AttachedDevice) -> Bool {
        func hexEqual(_ a: String?, _ b: String?) -> Bool {
            guard let a else { return true }
            guard let b, let x = UInt32(a, radix: 16), let y = UInt32(b, radix: 16) else { return false }
            return x == y
        }
        if let serial, serial != d.serial { return false }
        return hexEqual(vendor, d.vendor) && hexEqual(product, d.product)
    }
}

/// A device as udev (or libserialport enumeration) describes it.
public struct AttachedDevice: Hashable, Sendable, CustomStringConvertible {
    /// The device node: /dev/ttyUSB0, /dev/bus/usb/001/004.
    public var path: String
    public var subsystem: String
    public var vendor: String?
    public var product: String?
    public var serial: String?
    public var model: String?

    public init(path: String, subsystem: String, vendor: String? = nil, product: String? = nil, serial: String? = nil, model: String? = nil) {
        self.path = path
        self.subsystem = subsystem
        self.vendor = vendor
        self.product = product
        self.serial = serial
        self.model = model
    }

    /// From a udev rule's environment (ACTION, DEVNAME, SUBSYSTEM,
    /// ID_VENDOR_ID, ID_MODEL_ID, ID_SERIAL_SHORT, ID_MODEL).
    public init(udev env: [String: String]) throws {
        guard let path = env["DEVNAME"], path.hasPrefix("/") else {
            throw DeviceError("the udev environment has no DEVNAME (an absolute device path)")
        }
        self.path = path
        subsystem = env["SUBSYSTEM"] ?? (path.hasPrefix("/dev/tty") ? "tty" : "usb")
        vendor = env["ID_VENDOR_ID"]
        product = env["ID_MODEL_ID"]
        serial = env["ID_SERIAL_SHORT"]
        model = env["ID_MODEL"]
    }

    public var description: String {
        "\(path) (vendor \(vendor ?? "-"), product \(product ?? "-"), serial \(serial ?? "-"))"
    }
}

public struct DeviceError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public enum GroupTemplate {
    /// Fills `{name}`, `{serial}`, `{vendor}`, `{product}` and parses the result
    /// as a QGroup name; characters a name may not hold become `-`, letters
    /// are lowered.
    public static func expand(_ template: String, name: String, device: AttachedDevice?) throws -> QGroupName {
        func clean(_ s: String?) -> String {
            guard let s, !s.isEmpty else { return "unknown" }
            return String(s.lowercased().map { c -> Character in
                c.isASCII && (c.isLetter || c.isNumber || c == "-" || c == "_") ? c : "-"
            })
        }
        var text = template
        for (key, value) in [("{name}", name), ("{serial}", device?.serial), ("{vendor}", device?.vendor), ("{product}", device?.product)] {
            text = replaceAll(key, in: text, with: clean(value))
        }
        do { return try QGroupName(text) } catch { throw DeviceError("group \"\(text)\" (from \"\(template)\"): \(error)") }
    }

    /// `text` with every `key` replaced (the standard library's `replacing`
    /// links the regex engine, half a megabyte, for this one call).
    static func replaceAll(_ key: String, in text: String, with value: String) -> String {
        var out = "", rest = Substring(text)
        while !rest.isEmpty {
            if rest.hasPrefix(key) {
                out += value
                rest = rest.dropFirst(key.count)
            } else {
                out.append(rest.removeFirst())
            }
        }
        return out
    }

    /// The placeholders a template may use.
    public static let placeholders = ["{name}", "{serial}", "{vendor}", "{product}"]
}
