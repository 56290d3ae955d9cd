import ArgumentParser
import SpookCore
import SpookLink
import SpookNode

#if canImport(Glibc)
import Glibc
#endif

struct Options: ParsableArguments {
    @Option(help: "The local API socket (default: $SPOOK_SOCKET, else /run/spook-edge/edge.sock).")
    var socket: String?

    @Flag(help: "Print the daemon's JSON answers as they are.")
    var json = false

    var path: String {
        if let socket { return socket }
        if let env = getenv("SPOOK_SOCKET") { return String(cString: env) }
        return "/run/spook-edge/edge.sock"
    }

    func call(_ request: JSONValue) throws -> JSONValue {
        let client = try APIClient(socket: path)
        let answer = try client.call(request)
        guard case .bool(true)? = answer["ok"] else {
            FileOutput.error("spookctl: \(answer["error"]?.string ?? "failed")")
            throw ExitCode(1)
        }
        return answer
    }

    func show(_ value: JSONValue) {
        print(String(decoding: value.serialized, as: UTF8.self))
    }
}

/// A JSON value as a person reads it.
func text(_ v: JSONValue?) -> String {
        guard let v else { return "-" }
        switch v {
        case .null: return "null"
        case .bool(let b): return "\(b)"
        case .int(let i): return "\(i)"
        case .double(let d): return "\(d)"
        case .string(let s): return "\"\(s)\""
        case .object(let o): return o["float"].map { text($0) } ?? o["bytes"].map { "0x" + ($0.string ?? "") } ?? "?"
        case .array: return "?"
        }
}

/// One register as a person reads it.
func describe(_ r: JSONValue) -> String {
    let name = r["register"]?.string ?? "?"
    if r["policy"]?.string == "device" {
        let pending = r["pending"] == .bool(true) ? " (pending)" : ""
        return "\(name) = \(text(r["reported"]?["value"])) desired \(text(r["desired"]?["value"]))\(pending)"
    }
    return "\(name) = \(text(r["value"])) @\(r["stamp"]?.string ?? "-")"
}

struct Spookctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spookctl",
        abstract: "Read and write registers of a running spook-edge or spookd.",
        version: SpookVersion.string,
        subcommands: [Get.self, Set.self, List.self, History.self, Watch.self, Status.self, Peers.self, Attach.self, Detach.self, Keygen.self]
    )

    struct Peers: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List the peers whose acknowledgements hold back compaction, or forget one.",
            discussion: "spookctl peers forget PEER: the peer (an origin, as listed) no longer holds back compaction; if it returns it gets a snapshot.")
        @OptionGroup var options: Options
        @Argument(help: "\"forget\" and a peer, or nothing to list") var words: [String] = []
        func run() throws {
            switch words.first {
            case nil:
                let a = try options.call(.object(["op": .string("peers")]))
                if options.json { return options.show(a) }
                guard case .array(let peers)? = a["peers"] else { return }
                for p in peers {
                    let seen: Int64 = p["last_seen_ms"].flatMap { if case .int(let ms) = $0 { ms } else { nil } } ?? 0
                    print("\(p["peer"]?.string ?? "?")  \(p["linked"] == .bool(true) ? "linked (\(p["link"]?.string ?? "?"))" : "not linked")  last seen \(seen) ms")
                }
            case "forget" where words.count == 2:
                let a = try options.call(.object(["op": .string("forget"), "peer": .string(words[1])]))
                if options.json { options.show(a) } else { print("forgot \(words[1]): it no longer holds back compaction") }
            default:
                throw ValidationError("usage: spookctl peers [forget PEER]")
            }
        }
    }

    struct Get: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print one register.")
        @OptionGroup var options: Options
        @Argument(help: "domain/group/register") var register: String
        func run() throws {
            let a = try options.call(.object(["op": .string("get"), "register": .string(register)]))
            if options.json { options.show(a) } else { print(describe(a["register"] ?? .null)) }
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a register (a device register's desired side); returns once durable.",
            discussion: "VALUE is JSON (5, 2.5, true, null, \"text\", {\"bytes\":\"beef\"}); anything that is not JSON is taken as a string."
        )
        @OptionGroup var options: Options
        @Argument(help: "domain/group/register") var register: String
        @Argument(help: "The value.") var value: String
        func run() throws {
            let v = JSONValue.parseOrString(value)
            let a = try options.call(.object(["op": .string("set"), "register": .string(register), "value": v]))
            if options.json { options.show(a) } else { print("\(register): written as \(a["origin"]?.string ?? "?")#\(text(a["seq"]))") }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print every register whose name starts with PREFIX.")
        @OptionGroup var options: Options
        @Argument(help: "A name prefix, e.g. site1.line3/") var prefix: String = ""
        func run() throws {
            let a = try options.call(.object(["op": .string("list"), "prefix": .string(prefix)]))
            if options.json { options.show(a); return }
            if case .array(let rs)? = a["registers"] { for r in rs { print(describe(r)) } }
        }
    }

    struct History: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a register's past values, newest first (as many as [node] history keeps).")
        @OptionGroup var options: Options
        @Argument(help: "domain/group/register") var register: String
        func run() throws {
            let a = try options.call(.object(["op": .string("history"), "register": .string(register)]))
            if options.json { options.show(a); return }
            if case .array(let entries)? = a["history"] {
                for e in entries { print("\(e["side"]?.string ?? "?") \(text(e["value"])) @\(e["stamp"]?.string ?? "-")") }
            }
        }
    }

    struct Watch: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Stream changes of registers whose name starts with PREFIX, until interrupted.",
            discussion: "Exits 0 after --count changes, 69 if the node closes the connection (it stopped or restarted).")
        @OptionGroup var options: Options
        @Argument(help: "A name prefix.") var prefix: String = ""
        @Option(help: "Stop after this many changes (default: never).") var count: Int?
        @Flag(help: "Every value each register takes, in order, with its stamp (for historians); default: the latest state after each commit.")
        var every = false
        func run() throws {
            let client = try APIClient(socket: options.path)
            let first = try client.call(.object(["op": .string("watch"), "prefix": .string(prefix), "mode": .string(every ? "every" : "latest")]))
            guard case .bool(true)? = first["ok"] else {
                FileOutput.error("spookctl: \(first["error"]?.string ?? "failed")")
                throw ExitCode(1)
            }
            // In --json mode the acknowledgement comes first: a script knows the watch is in place.
            if options.json {
                options.show(first)
                fflush(nil)
            }
            var seen = 0
            while let event = try client.next() {
                if options.json {
                    options.show(event)
                } else if every {
                    print("\(event["register"]?.string ?? "?") \(event["side"]?.string ?? "value") = \(text(event["value"])) @\(event["stamp"]?.string ?? "-")")
                } else {
                    print(describe(event["register"] ?? .null))
                }
                fflush(nil)
                seen += 1
                if let count, seen >= count { return }
            }
            // The node went away (stopped, restarted): a script must not take that for "done".
            FileOutput.error("spookctl: watch: \(options.path): the node closed the connection after \(seen) change\(seen == 1 ? "" : "s") (it stopped or restarted)")
            throw ExitCode(69)  // EX_UNAVAILABLE
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the node, its vector and its links.")
        @OptionGroup var options: Options
        func run() throws {
            let a = try options.call(.object(["op": .string("status")]))
            if options.json { options.show(a); return }
            print("\(a["role"]?.string ?? "?") \(a["node"]?.string ?? "?") origin \(a["origin"]?.string ?? "?"), \(text(a["registers"])) registers")
            if case .array(let links)? = a["links"] {
                for l in links {
                    print("  link \(l["name"]?.string ?? "?"): \(l["state"]?.string ?? "?"), peer \(l["peer"]?.string ?? "-"), lag \(text(l["lag"]))")
                }
            }
            if case .array(let devices)? = a["devices"] {
                for d in devices {
                    let error = d["error"]?.string ?? ""
                    print("  device \(d["name"]?.string ?? "?") (\(d["kind"]?.string ?? "?") \(d["path"]?.string ?? "-")): \(d["state"]?.string ?? "?"), group \(d["group"]?.string ?? "?")\(error.isEmpty ? "" : ", error: \(error)")")
                }
            }
        }
    }

    /// The udev variables a rule's RUN+= program sees.
    static let udevVariables = ["ACTION", "DEVNAME", "SUBSYSTEM", "ID_VENDOR_ID", "ID_MODEL_ID", "ID_SERIAL_SHORT", "ID_MODEL", "ID_VENDOR", "DEVPATH"]

    /// Sends attach/detach with the udev environment and returns at once
    /// (udev kills slow RUN+= programs). DEVNAME may be given as an argument.
    static func udevCall(_ op: String, _ options: Options, _ devname: String?) throws {
        var env: [String: JSONValue] = [:]
        for k in udevVariables { if let v = getenv(k) { env[k] = .string(String(cString: v)) } }
        if let devname { env["DEVNAME"] = .string(devname) }
        guard env["DEVNAME"] != nil else {
            FileOutput.error("spookctl \(op): DEVNAME is not set; run from a udev rule, or give the device path")
            throw ExitCode(64)
        }
        // udev gives a RUN program little time and waits for it: answer or give up fast.
        let answer: JSONValue
        do {
            let client = try APIClient(socket: options.path)
            answer = try client.call(.object(["op": .string(op), "device": .object(env)]), timeoutMs: udevTimeoutMs)
        } catch {
            FileOutput.error("spookctl \(op): no answer from the agent at \(options.path) within \(udevTimeoutMs) ms: \(error)")
            throw ExitCode(75)  // EX_TEMPFAIL
        }
        guard case .bool(true)? = answer["ok"] else {
            FileOutput.error("spookctl: \(answer["error"]?.string ?? "failed")")
            throw ExitCode(1)
        }
        if options.json { options.show(answer) } else { print(answer["result"]?.string ?? "?") }
    }

    /// How long `attach` and `detach` wait for the agent (udev's RUN budget is a few seconds).
    static let udevTimeoutMs: Int32 = 2_000

    struct Attach: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Tell the agent a device appeared (from a udev rule: reads DEVNAME, ID_VENDOR_ID, ID_MODEL_ID, ID_SERIAL_SHORT…).")
        @OptionGroup var options: Options
        @Argument(help: "The device path (default: $DEVNAME).") var devname: String?
        func run() throws { try Spookctl.udevCall("attach", options, devname) }
    }

    struct Detach: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Tell the agent a device went away (from a udev rule: reads DEVNAME).")
        @OptionGroup var options: Options
        @Argument(help: "The device path (default: $DEVNAME).") var devname: String?
        func run() throws { try Spookctl.udevCall("detach", options, devname) }
    }

    struct Keygen: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a node key (mode 0600) and print its public key and origin.")
        @Option(help: "Where to write the key; an existing file is read, never overwritten.") var out: String
        func run() throws {
            let (identity, created) = try Identity.loadOrCreate(path: out)
            print("public_key \(identity.publicKey.hex)")
            print("origin \(identity.origin)")
            if !created { FileOutput.error("spookctl: \(out) already existed; printed its public key") }
        }
    }
}

Spookctl.main()
