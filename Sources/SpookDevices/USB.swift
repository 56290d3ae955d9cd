#if canImport(Glibc)
import Glibc
#endif
import CUSB

/// libusb, for vendor-class devices that carry the firmware bridge over bulk
/// endpoints. CDC-ACM devices are serial ports and take the serial path.
public final class USBContext: @unchecked Sendable {
    let ctx: OpaquePointer

    public init() throws {
        var ctx: OpaquePointer?
        let rc = libusb_init(&ctx)
        guard rc == 0, let ctx else { throw DeviceError("libusb_init: \(USBContext.message(rc))") }
        self.ctx = ctx
    }

    deinit { libusb_exit(ctx) }

    /// Every USB device on the bus, with its ids and serial where readable.
    public func list() -> [AttachedDevice] {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = libusb_get_device_list(ctx, &list)
        guard n >= 0, let list else { return [] }
        defer { libusb_free_device_list(list, 1) }
        return (0..<Int(n)).compactMap { i in list[i].map(describe) }
    }

    func describe(_ device: OpaquePointer) -> AttachedDevice {
        var d = libusb_device_descriptor()
        libusb_get_device_descriptor(device, &d)
        let bus = libusb_get_bus_number(device), address = libusb_get_device_address(device)
        var out = AttachedDevice(
            path: "/dev/bus/usb/\(USBContext.pad(bus))/\(USBContext.pad(address))", subsystem: "usb",
            vendor: SerialPort.hex4(Int32(d.idVendor)), product: SerialPort.hex4(Int32(d.idProduct)))
        var handle: OpaquePointer?
        if d.iSerialNumber != 0, libusb_open(device, &handle) == 0, let handle {
            var buf = [UInt8](repeating: 0, count: 128)
            let len = libusb_get_string_descriptor_ascii(handle, d.iSerialNumber, &buf, Int32(buf.count))
            if len > 0 { out.serial = String(decoding: buf[0..<Int(len)], as: UTF8.self) }
            libusb_close(handle)
        }
        return out
    }

    /// Opens the first device `match` accepts and claims its interface.
    public func open(_ match: DeviceMatch, _ settings: USBSettings) throws -> USBBulkLink {
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let n = libusb_get_device_list(ctx, &list)
        guard n >= 0, let list else { throw DeviceError("libusb_get_device_list: \(USBContext.message(Int32(n)))") }
        defer { libusb_free_device_list(list, 1) }
        for i in 0..<Int(n) {
            guard let device = list[i], match.matches(describe(device)) else { continue }
            var handle: OpaquePointer?
            let rc = libusb_open(device, &handle)
            guard rc == 0, let handle else { throw DeviceError("libusb_open: \(USBContext.message(rc))") }
            libusb_set_auto_detach_kernel_driver(handle, 1)
            let claim = libusb_claim_interface(handle, Int32(settings.interface))
            guard claim == 0 else {
                libusb_close(handle)
                throw DeviceError("claim interface \(settings.interface): \(USBContext.message(claim))")
            }
            return USBBulkLink(handle: handle, settings: settings)
        }
        throw DeviceError("no USB device matches vendor \(match.vendor ?? "*") product \(match.product ?? "*") serial \(match.serial ?? "*")")
    }

    static func pad(_ v: UInt8) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, 3 - s.count)) + s
    }

    static func message(_ rc: Int32) -> String { String(cString: libusb_strerror(rc)) }
}

/// A blocking byte pipe to a device: a USB bulk endpoint pair in production,
/// anything else in tests. `read` returns what arrived within the timeout
/// (maybe nothing) and throws when the device is gone.
public protocol BulkTransport: AnyObject, Sendable {
    func read(timeoutMs: UInt32) throws -> [UInt8]
    func write(_ bytes: [UInt8]) throws
}

/// Opens the bulk transport of a matched device.
public typealias BulkOpener = @Sendable (DeviceMatch, USBSettings) throws -> any BulkTransport

/// A claimed interface's bulk endpoint pair. Blocking: used from the device's thread.
public final class USBBulkLink: BulkTransport, @unchecked Sendable {
    let handle: OpaquePointer
    let settings: USBSettings

    init(handle: OpaquePointer, settings: USBSettings) {
        self.handle = handle
        self.settings = settings
    }

    deinit {
        libusb_release_interface(handle, Int32(settings.interface))
        libusb_close(handle)
    }

    /// Bytes from the IN endpoint; empty on a timeout. Throws when the device is gone.
    public func read(timeoutMs: UInt32) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: 512)
        var got: Int32 = 0
        let rc = libusb_bulk_transfer(handle, settings.endpointIn, &buf, Int32(buf.count), &got, timeoutMs)
        if rc == LIBUSB_ERROR_TIMEOUT.rawValue { return Array(buf[0..<Int(got)]) }
        guard rc == 0 else { throw DeviceError("usb bulk in: \(USBContext.message(rc))") }
        return Array(buf[0..<Int(got)])
    }

    public func write(_ bytes: [UInt8]) throws {
        var data = bytes
        var sent: Int32 = 0
        let rc = libusb_bulk_transfer(handle, settings.endpointOut, &data, Int32(data.count), &sent, 1000)
        guard rc == 0, Int(sent) == bytes.count else { throw DeviceError("usb bulk out: \(USBContext.message(rc))") }
    }
}
