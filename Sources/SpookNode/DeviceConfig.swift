import SpookCore
import SpookDevices

/// `[[device]]` tables of an agent's config (docs/configuration.md, "Devices").
extension ConfigReader {
    static let deviceKinds = ["serial", "usb", "modbus-tcp", "modbus-rtu"]

    func devices(_ doc: Table, schema: Schema) -> [DeviceSpec] {
        var out: [DeviceSpec] = []
        var names = Set<String>(), ports: [String: String] = [:], matches: [DeviceMatch: String] = [:]
        /// The devices on each serial port: one firmware device, or Modbus RTU units sharing an RS-485 line.
        var portUsers: [String: [(name: String, rtu: (unit: Int, serial: SerialSettings)?)]] = [:]
        func claim(_ d: Table, _ s: SerialSettings, name: String, rtu unit: Int?) {
            guard !s.port.isEmpty else { return }
            let users = portUsers[s.port, default: []]
            defer { portUsers[s.port, default: []].append((name, unit.map { ($0, s) })) }
            guard let other = users.first else { return }
            guard let unit, users.allSatisfy({ $0.rtu != nil }) else {
                fail(d.key("port"), "device \"\(name)\": \(s.port) is already device \"\(other.name)\" (only modbus-rtu devices with different units may share a port)")
                return
            }
            if let same = users.first(where: { $0.rtu?.unit == unit }) {
                fail(d.key("unit"), "device \"\(name)\": unit \(unit) on \(s.port) is also device \"\(same.name)\"")
            }
            if let line = other.rtu?.serial, (line.baud, line.parity, line.dataBits, line.stopBits) != (s.baud, s.parity, s.dataBits, s.stopBits) {
                fail(d.key("port"), "device \"\(name)\": \(s.port) is an RS-485 line shared with device \"\(other.name)\", so baud, parity, data_bits and stop_bits must match it (\(other.name): \(ConfigReader.frame(line)), here: \(ConfigReader.frame(s)))")
            }
        }
        for d in doc.tables("device") {
            let name = d.string("name", required: true) ?? ""
            if !name.isEmpty {
                if !names.insert(name).inserted { fail(d.key("name"), "device \"\(name)\" is defined twice") }
                if (try? QGroupName("x/\(name)")) == nil { fail(d.key("name"), "device \"\(name)\": a name is a-z, 0-9, \"-\", \"_\" (it may name the device's group)") }
            }
            guard let kind = d.choice("kind", ConfigReader.deviceKinds.map { ($0, $0) }) else {
                if !d.has("kind") { fail(d.path, "[\(d.path)] needs \"kind\": one of \(ConfigReader.deviceKinds.joined(separator: ", "))") }
                continue
            }
            var known = ["name", "kind", "group", "match", "enabled"]
            switch kind {
            case "serial": known += ["port", "baud", "parity", "data_bits", "stop_bits"]
            case "usb": known += ["interface", "endpoint_in", "endpoint_out"]
            case "modbus-tcp": known += ["url", "unit", "poll_ms", "timeout_ms", "register"]
            default: known += ["port", "baud", "parity", "data_bits", "stop_bits", "unit", "poll_ms", "timeout_ms", "register"]
            }
            d.rejectUnknownKeys(known)
            let template = d.string("group", required: true) ?? ""
            var match: DeviceMatch?
            if let m = d.table("match") {
                m.rejectUnknownKeys(["vendor", "product", "serial"])
                let hex = { (k: String) -> String? in
                    guard let v = m.string(k) else { return nil }
                    if UInt16(v, radix: 16) == nil { self.fail(m.key(k), "\"\(k)\" = \"\(v)\" must be a USB id of up to 4 hex digits, e.g. \"0483\"") }
                    return v
                }
                match = DeviceMatch(vendor: hex("vendor"), product: hex("product"), serial: m.string("serial"))
                if match == DeviceMatch() { fail(m.path, "[\(m.path)] is empty: give vendor, product or serial") }
            }
            if let match {
                if let other = matches[match] { fail(d.key("match"), "device \"\(name)\" matches the same devices as \"\(other)\"") }
                matches[match] = name
            }
            // The group must parse with sample values, and its registers must be device registers.
            if !template.isEmpty {
                let sample = AttachedDevice(path: "/dev/null", subsystem: "tty", vendor: "0000", product: "0000", serial: "sample")
                do {
                    let group = try GroupTemplate.expand(template, name: name.isEmpty ? "device" : name, device: sample)
                    let probe = try QRegisterName(group: group, name: "probe")
                    if schema.spec(for: probe).policy != .device {
                        fail(d.key("group"), "device \"\(name)\": registers in \(group.domain) need policy \"device\" (reported by the device, desired by anyone); add [[register]] domain = \"\(group.domain)\" policy = \"device\"")
                    }
                } catch {
                    fail(d.key("group"), "device \"\(name)\": \(error)")
                }
                let placeholders = template.split(separator: "{").dropFirst().map { "{" + $0.prefix { $0 != "}" } + "}" }
                for p in placeholders where !GroupTemplate.placeholders.contains(p) {
                    fail(d.key("group"), "device \"\(name)\": unknown placeholder \(p); use \(GroupTemplate.placeholders.joined(separator: ", "))")
                }
                if match == nil && placeholders.contains(where: { $0 != "{name}" }) {
                    fail(d.key("group"), "device \"\(name)\": \(template) uses the attached device's identity, so the device needs a [device.match] block")
                }
            }
            let spec: DeviceSpec.Kind?
            switch kind {
            case "serial":
                let settings = serial(d, name: name, match: match)
                if let settings { claim(d, settings, name: name, rtu: nil) }
                spec = settings.map { .serial($0) }
            case "usb":
                if match == nil { fail(d.path, "device \"\(name)\": a usb device needs a [device.match] block (vendor, product, serial)") }
                let endpoint = { (k: String, def: Int) -> UInt8 in UInt8(d.int(k, in: 1...255) ?? def) }
                spec = .usb(USBSettings(interface: d.int("interface", in: 0...255) ?? 0, endpointIn: endpoint("endpoint_in", 0x81), endpointOut: endpoint("endpoint_out", 0x01)))
            case "modbus-tcp":
                let modbus = modbusSettings(d, name: name)
                var target: (String, Int)?
                if let url = d.string("url", required: true) {
                    if case .tcp(let host, let port)? = try? Endpoint.parse(url) {
                        target = (host, port)
                        let id = "\(url)#\(modbus.unit)"
                        if let other = ports[id] { fail(d.key("url"), "device \"\(name)\": \(url) unit \(modbus.unit) is also device \"\(other)\"") }
                        ports[id] = name
                    } else {
                        fail(d.key("url"), "\"url\" = \"\(url)\" must be tcp://HOST:PORT")
                    }
                }
                spec = target.map { .modbusTCP(host: $0.0, port: $0.1, modbus: modbus) }
            default:
                let modbus = modbusSettings(d, name: name)
                let settings = serial(d, name: name, match: match)
                if let settings { claim(d, settings, name: name, rtu: modbus.unit) }
                spec = settings.map { .modbusRTU($0, modbus: modbus) }
            }
            // `enabled = false` keeps a device's table (checked like any other) without starting it.
            let enabled = d.bool("enabled") ?? true
            if enabled, let spec, !name.isEmpty, !template.isEmpty { out.append(DeviceSpec(name: name, kind: spec, groupTemplate: template, match: match)) }
        }
        return out
    }

    /// "19200 8N1"
    static func frame(_ s: SerialSettings) -> String {
        "\(s.baud) \(s.dataBits)\(s.parity.rawValue.prefix(1).uppercased())\(s.stopBits)"
    }

    func serial(_ d: Table, name: String, match: DeviceMatch?) -> SerialSettings? {
        let port = d.string("port")
        if port == nil && match == nil { fail(d.path, "device \"\(name)\" needs \"port\" (e.g. /dev/ttyUSB0) or a [device.match] block") }
        if let port {
            if !port.hasPrefix("/") { fail(d.key("port"), "\"port\" = \"\(port)\" must be an absolute device path") }
        }
        var s = SerialSettings(port: port ?? "")
        if let baud = d.int("baud", in: 1...4_000_000) {
            if SerialPort.supportedBauds.contains(baud) { s.baud = baud } else {
                fail(d.key("baud"), "\"baud\" = \(baud) is not a standard rate: \(SerialPort.supportedBauds.map(String.init).joined(separator: ", "))")
            }
        }
        s.parity = d.choice("parity", [("none", .none), ("even", .even), ("odd", .odd)]) ?? .none
        s.dataBits = d.int("data_bits", in: 5...8) ?? 8
        s.stopBits = d.int("stop_bits", in: 1...2) ?? 1
        return s
    }

    func modbusSettings(_ d: Table, name: String) -> ModbusSettings {
        var m = ModbusSettings()
        m.unit = d.int("unit", in: 0...247) ?? 1
        m.pollMs = d.int("poll_ms", in: 0...3_600_000) ?? 1_000
        m.timeoutMs = d.int("timeout_ms", in: 10...60_000) ?? 1_000
        var seen = Set<String>()
        for r in d.tables("register") {
            let pname = r.string("name", required: true) ?? ""
            if !pname.isEmpty {
                if (try? QRegisterName("x/y/\(pname)")) == nil || pname.hasPrefix("$") {
                    fail(r.key("name"), "\"\(pname)\" is not a register name (a-z, 0-9, \"-\", \"_\")")
                } else if !seen.insert(pname).inserted {
                    fail(r.key("name"), "register \"\(pname)\" is mapped twice in device \"\(name)\"")
                }
            }
            if let point = modbusPoint(r, name: pname), !pname.isEmpty { m.points.append(point) }
        }
        if d.tables("register").isEmpty { fail(d.path, "device \"\(name)\" maps no registers: add [[device.register]] tables") }
        return m
    }

    /// One `[[…register]]` table of a Modbus map (a device's or the server
    /// façade's): table, address, type, word and byte order, scale, access.
    func modbusPoint(_ r: Table, name pname: String) -> ModbusPoint? {
        r.rejectUnknownKeys(["name", "table", "address", "type", "word_order", "byte_order", "scale", "access"])
        guard let table = r.choice("table", ModbusPoint.Table.allCases.map { ($0.rawValue, $0) }) else {
            if !r.has("table") { fail(r.path, "[\(r.path)] needs \"table\": coil, discrete, input or holding") }
            return nil
        }
        let address = r.int("address", in: 0...65535, required: true) ?? 0
        let type = r.choice("type", ModbusPoint.DataType.allCases.map { ($0.rawValue, $0) }) ?? (table.isBits ? .bool : .u16)
        if table.isBits && type != .bool { fail(r.key("type"), "a \(table) is one bit: its type is bool, not \(type)") }
        if !table.isBits && type == .bool { fail(r.key("type"), "type bool belongs to coils and discrete inputs; a \(table) register is u16, i16, u32, i32, f32, u64, i64 or f64") }
        if address + (table.isBits ? 1 : type.words) > 65536 { fail(r.key("address"), "\"\(pname)\" runs past address 65535") }
        let order = r.choice("word_order", [("big", ModbusPoint.WordOrder.big), ("little", .little)]) ?? .big
        let bytes = r.choice("byte_order", [("big", ModbusPoint.ByteOrder.big), ("little", .little)]) ?? .big
        let scale = r.double("scale") ?? 1
        if scale == 0 || !scale.isFinite { fail(r.key("scale"), "\"scale\" must be a finite number other than 0") }
        let access = r.choice("access", [("r", false), ("rw", true)]) ?? false
        if access && !table.isWritable { fail(r.key("access"), "\"\(pname)\": the \(table) table is read-only; access must be \"r\"") }
        return ModbusPoint(name: pname, table: table, address: address, type: type, wordOrder: order, byteOrder: bytes, scale: scale, writable: access)
    }
}
