import CModbus
import CSQLite
import CSerialPort
import CUSB
import Testing

/// The system libraries scripts/install-deps installs are found, link and
/// initialise. What this machine can and cannot do with devices is in
/// ../shared/design/PLATFORM.md (no USB bus; ptys are not serial ports to
/// libserialport).
@Suite struct SystemLibraryTests {
    @Test func sqliteIsRecentEnoughForWALAndUpsert() {
        // UPSERT needs 3.24; the store relies on it.
        #expect(sqlite3_libversion_number() >= 3_024_000)
        #expect(sqlite3_threadsafe() != 0)
    }

    @Test func libmodbusCreatesAndFreesAContext() throws {
        #expect(libmodbus_version_major == 3)
        let ctx = modbus_new_tcp("127.0.0.1", 1502)
        #expect(ctx != nil)
        #expect(modbus_set_slave(ctx, 17) == 0)
        modbus_free(ctx)
    }

    @Test func libserialportEnumeratesWithoutError() {
        #expect(sp_get_major_package_version() == 0)
        var ports: UnsafeMutablePointer<OpaquePointer?>?
        let rc = sp_list_ports(&ports)
        // SP_OK, or SP_ERR_FAIL on a machine whose /sys has no tty class.
        #expect(rc == SP_OK || rc == SP_ERR_FAIL)
        if rc == SP_OK { sp_free_port_list(ports) }
    }

    @Test func libusbInitialisesAndEnumerates() throws {
        var ctx: OpaquePointer?
        #expect(libusb_init(&ctx) == 0)
        defer { libusb_exit(ctx) }
        let version = libusb_get_version().pointee
        #expect(version.major == 1)
        var list: UnsafeMutablePointer<OpaquePointer?>?
        let count = libusb_get_device_list(ctx, &list)
        #expect(count >= 0, "libusb_get_device_list failed: \(count)")
        libusb_free_device_list(list, 1)
    }
}
