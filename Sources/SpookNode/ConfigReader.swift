import SpookCore

/// One problem in a config file, with where it is.
public struct ConfigDiagnostic: Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Every problem found in a config file. A daemon never starts on a config
/// that has any; `check-config` prints them all and exits 78 (EX_CONFIG).
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public static let exitCode: Int32 = 78
    public var diagnostics: [ConfigDiagnostic]
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// Reads a TOML config with every check a daemon needs, collecting every
/// problem (not just the first) with its file:line:column.
public final class ConfigReader {
    public let file: String
    let document_: TOMLDocument?
    public private(set) var diagnostics: [ConfigDiagnostic] = []
    /// Whether paths are checked against this machine's files (what `run` will open).
    public let checkFiles: Bool

    public init(file: String, text: String, checkFiles: Bool = true) {
        self.file = file
        self.checkFiles = checkFiles
        do {
            document_ = try TOMLDocument(text)
        } catch {
            document_ = nil
            diagnostics.append(ConfigDiagnostic(file: file, line: error.line, column: error.column, message: "TOML syntax: \(error.message)"))
        }
    }

    /// Problems that do not stop a daemon (check-config prints them, run logs them).
    public private(set) var warnings: [ConfigDiagnostic] = []

    public func warn(_ path: String, _ message: String) {
        let (line, column) = document_?.position(path) ?? (1, 1)
        warnings.append(ConfigDiagnostic(file: file, line: line, column: column, message: "warning: " + message))
    }

    public func fail(_ path: String, _ message: String) {
        let (line, column) = document_?.position(path) ?? (1, 1)
        diagnostics.append(ConfigDiagnostic(file: file, line: line, column: column, message: message))
    }

    /// Throws every diagnostic collected, if there is any.
    public func finish() throws {
        guard diagnostics.isEmpty else { throw ConfigError(diagnostics: diagnostics.sorted { ($0.line, $0.column) < ($1.line, $1.column) }) }
    }

    // MARK: tables

    /// A table of the document, or a position-aware view of one.
    public struct Table {
        let reader: ConfigReader
        let table: TOMLTable
        /// The path of this table, for messages and positions ("node", "upstream[0]").
        public let path: String

        func key(_ k: String) -> String { path.isEmpty ? k : "\(path).\(k)" }

        /// Reports keys nobody asked for: typos should not be ignored silently.
        public func rejectUnknownKeys(_ known: [String]) {
            for k in table.keys.sorted() where !known.contains(k) {
                reader.fail(key(k), "unknown key \"\(k)\"\(path.isEmpty ? "" : " in [\(path)]"); known keys: \(known.joined(separator: ", "))")
            }
        }

        public func has(_ k: String) -> Bool { table[k] != nil }

        public func string(_ k: String, required: Bool = false) -> String? {
            guard let v = table[k] else {
                if required { reader.fail(path, "[\(path)] needs \"\(k)\"") }
                return nil
            }
            guard let s = v.string else {
                reader.fail(key(k), "\"\(k)\" must be a string, not \(v.type)")
                return nil
            }
            return s
        }

        public func int(_ k: String, in range: ClosedRange<Int>, required: Bool = false) -> Int? {
            guard let v = table[k] else {
                if required { reader.fail(path, "[\(path)] needs \"\(k)\"") }
                return nil
            }
            guard let i = v.int else {
                reader.fail(key(k), "\"\(k)\" must be an integer, not \(v.type)")
                return nil
            }
            guard range.contains(i) else {
                reader.fail(key(k), "\"\(k)\" = \(i) is out of range \(range.lowerBound)…\(range.upperBound)")
                return nil
            }
            return i
        }

        public func bool(_ k: String) -> Bool? {
            guard let v = table[k] else { return nil }
            guard let b = v.bool else {
                reader.fail(key(k), "\"\(k)\" must be true or false, not \(v.type)")
                return nil
            }
            return b
        }

        /// A number written as an integer or a float.
        public func double(_ k: String) -> Double? {
            guard let v = table[k] else { return nil }
            if let d = v.double { return d }
            if let i = v.int { return Double(i) }
            reader.fail(key(k), "\"\(k)\" must be a number, not \(v.type)")
            return nil
        }

        public func strings(_ k: String) -> [String]? {
            guard let v = table[k] else { return nil }
            guard let array = v.array else {
                reader.fail(key(k), "\"\(k)\" must be an array of strings, not \(v.type)")
                return nil
            }
            var out: [String] = []
            for (i, item) in array.enumerated() {
                guard let s = item.string else {
                    reader.fail(key(k), "\"\(k)\"[\(i)] must be a string, not \(item.type)")
                    continue
                }
                out.append(s)
            }
            return out
        }

        public func choice<T>(_ k: String, _ choices: [(String, T)]) -> T? {
            guard let s = string(k) else { return nil }
            guard let found = choices.first(where: { $0.0 == s }) else {
                reader.fail(key(k), "\"\(k)\" = \"\(s)\" is not one of \(choices.map { "\"\($0.0)\"" }.joined(separator: ", "))")
                return nil
            }
            return found.1
        }

        public func table(_ k: String) -> Table? {
            guard let v = table[k] else { return nil }
            guard let t = v.table else {
                reader.fail(key(k), "\"\(k)\" must be a table, not \(v.type)")
                return nil
            }
            return Table(reader: reader, table: t, path: key(k))
        }

        /// `[[k]]` entries.
        public func tables(_ k: String) -> [Table] {
            guard let v = table[k] else { return [] }
            guard let array = v.array else {
                reader.fail(key(k), "\"\(k)\" must be written as [[\(k)]] tables")
                return []
            }
            var out: [Table] = []
            for (i, item) in array.enumerated() {
                guard let t = item.table else {
                    reader.fail(key(k), "\(k)[\(i)] must be a table")
                    continue
                }
                out.append(Table(reader: reader, table: t, path: "\(key(k))[\(i)]"))
            }
            return out
        }

        /// Runs a QN parser and reports its message at this key.
        public func name<T>(_ k: String, _ parse: (String) throws -> T, required: Bool = false) -> T? {
            guard let s = string(k, required: required) else { return nil }
            do { return try parse(s) } catch let e as CoreError {
                reader.fail(key(k), e.message)
            } catch {
                reader.fail(key(k), "\(error)")
            }
            return nil
        }
    }

    public var document: Table? { document_.map { Table(reader: self, table: $0.root, path: "") } }
}
