import SpookNode
import Testing

/// The TOML reader against the specification's own examples (TOML 1.0.0,
/// toml.io) for the subset the configs use, valid and invalid, and the
/// positions it reports.
@Suite struct TOMLTests {
    func parse(_ text: String) throws -> TOMLDocument { try TOMLDocument(text) }

    /// The error a document must be refused with: where, and what it says.
    func refused(_ text: String, at line: Int, _ column: Int, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try TOMLDocument(text)
            Issue.record("accepted: \(text)", sourceLocation: sourceLocation)
        } catch {
            #expect(error.line == line && error.column == column, "\(error) for \(text)", sourceLocation: sourceLocation)
            #expect(error.message.contains(fragment), "\(error.message) lacks \"\(fragment)\"", sourceLocation: sourceLocation)
        }
    }

    @Test func keysAndStrings() throws {
        let d = try parse(#"""
        # This is a full-line comment
        key = "value"  # This is a comment at the end of a line
        bare_key = "value"
        bare-key = "value"
        1234 = "value"
        "127.0.0.1" = "value"
        "character encoding" = "value"
        'key2' = "value"
        'quoted "value"' = "value"
        str = "I'm a string. \"You can quote me\". Name\tJos\u00E9\nLocation\tSF."
        winpath  = 'C:\Users\nodejs\templates'
        regex    = '<\i\c*\s*>'
        empty = ""
        """#)
        let t = d.root
        #expect(t.keys == ["key", "bare_key", "bare-key", "1234", "127.0.0.1", "character encoding", "key2", "quoted \"value\"", "str", "winpath", "regex", "empty"])
        #expect(t["str"]?.string == "I'm a string. \"You can quote me\". Name\tJos\u{E9}\nLocation\tSF.")
        #expect(t["winpath"]?.string == #"C:\Users\nodejs\templates"#)
        #expect(t["regex"]?.string == #"<\i\c*\s*>"#)
        #expect(t["empty"]?.string == "")
    }

    @Test func multilineStrings() throws {
        let d = try parse(#"""
        str1 = """
        Roses are red
        Violets are blue"""
        str2 = """
        The quick brown \


          fox jumps over \
            the lazy dog."""
        str3 = """Here are two quotation marks: "". Simple enough."""
        str4 = """Here are fifteen quotation marks: ""\"""\"""\"""\"""\"."""
        str5 = """"This," she said, "is just a pointless statement.""""
        lines  = '''
        The first newline is
        trimmed in raw strings.
           All other whitespace
           is preserved.
        '''
        quot15 = '''Here are fifteen quotation marks: """""""""""""""'''
        apos15 = "Here are fifteen apostrophes: '''''''''''''''"
        str = ''''That,' she said, 'is still pointless.''''
        """#)
        let t = d.root
        #expect(t["str1"]?.string == "Roses are red\nViolets are blue")
        #expect(t["str2"]?.string == "The quick brown fox jumps over the lazy dog.")
        #expect(t["str3"]?.string == "Here are two quotation marks: \"\". Simple enough.")
        #expect(t["str4"]?.string == "Here are fifteen quotation marks: \"\"\"\"\"\"\"\"\"\"\"\"\"\"\".")
        #expect(t["str5"]?.string == "\"This,\" she said, \"is just a pointless statement.\"")
        #expect(t["lines"]?.string == "The first newline is\ntrimmed in raw strings.\n   All other whitespace\n   is preserved.\n")
        #expect(t["quot15"]?.string == "Here are fifteen quotation marks: \"\"\"\"\"\"\"\"\"\"\"\"\"\"\"")
        #expect(t["str"]?.string == "'That,' she said, 'is still pointless.'")
        // Lines were counted through the multi-line values: the last key is on line 21.
        #expect(d.positions["str"]?.line == 21)
    }

    @Test func numbersAndBooleans() throws {
        let d = try parse("""
        int1 = +99
        int2 = 42
        int3 = 0
        int4 = -17
        int5 = 1_000
        int6 = 5_349_221
        int7 = 53_49_221
        int8 = 1_2_3_4_5
        hex1 = 0xDEADBEEF
        hex2 = 0xdeadbeef
        hex3 = 0xdead_beef
        oct1 = 0o01234567
        oct2 = 0o755
        bin1 = 0b11010110
        max = 9223372036854775807
        min = -9223372036854775808
        flt1 = +1.0
        flt2 = 3.1415
        flt3 = -0.01
        flt4 = 5e+22
        flt5 = 1e06
        flt6 = -2E-2
        flt7 = 6.626e-34
        flt8 = 224_617.445_991_228
        sf1 = inf
        sf2 = +inf
        sf3 = -inf
        sf4 = nan
        bool1 = true
        bool2 = false
        """)
        let t = d.root
        #expect([t["int1"], t["int2"], t["int3"], t["int4"], t["int5"], t["int6"], t["int7"], t["int8"]].map { $0?.int } == [99, 42, 0, -17, 1000, 5_349_221, 5_349_221, 12345])
        #expect([t["hex1"], t["hex2"], t["hex3"], t["oct1"], t["oct2"], t["bin1"]].map { $0?.int } == [0xDEADBEEF, 0xDEADBEEF, 0xDEADBEEF, 0o1234567, 0o755, 0b11010110])
        #expect(t["max"]?.int == Int.max && t["min"]?.int == Int.min)
        #expect([t["flt1"], t["flt2"], t["flt3"], t["flt4"], t["flt5"], t["flt6"], t["flt7"], t["flt8"]].map { $0?.double } == [1.0, 3.1415, -0.01, 5e22, 1e6, -0.02, 6.626e-34, 224_617.445_991_228])
        #expect(t["sf1"]?.double == .infinity && t["sf2"]?.double == .infinity && t["sf3"]?.double == -.infinity)
        #expect(t["sf4"]?.double?.isNaN == true)
        #expect(t["bool1"]?.bool == true && t["bool2"]?.bool == false)
        #expect(t["int2"]?.type == "integer" && t["flt2"]?.type == "float" && t["bool1"]?.type == "boolean")
    }

    @Test func arraysAndInlineTables() throws {
        let d = try parse("""
        integers = [ 1, 2, 3 ]
        colors = [ "red", "yellow", "green" ]
        nested_arrays_of_ints = [ [ 1, 2 ], [3, 4, 5] ]
        nested_mixed_array = [ [ 1, 2 ], ["a", "b", "c"] ]
        numbers = [ 0.1, 0.2, 0.5, 1, 2, 5 ]
        integers2 = [
          1, 2, 3
        ]
        integers3 = [
          1,
          2, # this is ok
        ]
        name = { first = "Tom", last = "Preston-Werner" }
        point = { x = 1, y = 2 }
        animal = { type.name = "pug" }
        """)
        let t = d.root
        #expect(t["integers"]?.array?.compactMap(\.int) == [1, 2, 3])
        #expect(t["colors"]?.array?.compactMap(\.string) == ["red", "yellow", "green"])
        #expect(t["nested_arrays_of_ints"]?.array?.last?.array?.compactMap(\.int) == [3, 4, 5])
        #expect(t["numbers"]?.array?.count == 6)
        #expect(t["integers2"]?.array?.compactMap(\.int) == [1, 2, 3])
        #expect(t["integers3"]?.array?.compactMap(\.int) == [1, 2])
        #expect(t["name"]?.table?["last"]?.string == "Preston-Werner")
        #expect(t["animal"]?.table?["type"]?.table?["name"]?.string == "pug")
    }

    @Test func tablesAndArraysOfTables() throws {
        let d = try parse("""
        [table-1]
        key1 = "some string"
        key2 = 123

        [dog."tater.man"]
        type.name = "pug"

        [ j . "ʞ" . 'l' ]
        x = 1

        # [x] you
        # [x.y] don't
        # [x.y.z] need these
        [x.y.z.w] # for this to work
        [x] # defining a super-table afterward is ok

        [[products]]
        name = "Hammer"
        sku = 738594937

        [[products]]  # empty table within the array

        [[products]]
        name = "Nail"
        sku = 284758393

        [[fruits]]
        name = "apple"

        [fruits.physical]  # subtable
        color = "red"

        [[fruits.varieties]]  # nested array of tables
        name = "red delicious"

        [[fruits.varieties]]
        name = "granny smith"

        [[fruits]]
        name = "banana"

        [[fruits.varieties]]
        name = "plantain"
        """)
        let t = d.root
        #expect(t["table-1"]?.table?["key2"]?.int == 123)
        #expect(t["dog"]?.table?["tater.man"]?.table?["type"]?.table?["name"]?.string == "pug")
        #expect(t["j"]?.table?["ʞ"]?.table?["l"]?.table?["x"]?.int == 1)
        #expect(t["x"]?.table?["y"]?.table?["z"]?.table?["w"]?.table != nil)
        let products = try #require(t["products"]?.array)
        #expect(products.map { $0.table?["name"]?.string } == ["Hammer", nil, "Nail"])
        let fruits = try #require(t["fruits"]?.array)
        #expect(fruits.count == 2)
        #expect(fruits[0].table?["physical"]?.table?["color"]?.string == "red")
        #expect(fruits[0].table?["varieties"]?.array?.compactMap { $0.table?["name"]?.string } == ["red delicious", "granny smith"])
        #expect(fruits[1].table?["varieties"]?.array?.compactMap { $0.table?["name"]?.string } == ["plantain"])
        // Positions name each element of an array of tables, and keys inside them.
        #expect(d.positions["products[2]"]?.line == 23)
        #expect(d.positions["products[2].sku"]?.line == 25)
        #expect(d.positions["fruits[1].varieties[0].name"]?.line == 43)
        #expect(d.position("fruits[1].varieties[0].missing").line == 42)
        #expect(d.position("nowhere.at.all") == (1, 1))
    }

    @Test func crlfLineEndsAndAByteOrderMark() throws {
        let d = try parse("\u{FEFF}a = 1\r\n[t]\r\nb = \"x\" # c\r\n")
        #expect(d.root["a"]?.int == 1)
        #expect(d.root["t"]?.table?["b"]?.string == "x")
        #expect(d.positions["t.b"]?.line == 3)
    }

    /// The specification's invalid examples for this subset, each refused at its place.
    @Test func invalidDocumentsAreRefusedWhereTheyAreWrong() {
        refused("key = # INVALID", at: 1, 7, "expected a value")
        refused("first = \"Tom\" last = \"Preston-Werner\" # INVALID", at: 1, 15, "expected the end of the line")
        refused("= \"no key name\"", at: 1, 1, "expected a key")
        refused("\"\"\"key\"\"\" = \"not allowed\"", at: 1, 1, "multi-line")
        refused("name = \"Tom\"\nname = \"Pradyun\"", at: 2, 1, "defined twice")
        refused("spelling = \"favorite\"\n\"spelling\" = \"favourite\"", at: 2, 1, "defined twice")
        refused("fruit.apple = 1\nfruit.apple.smooth = true", at: 2, 1, "not a table")
        refused("key = value", at: 1, 7, "needs quotes")
        refused("bad = \"\\x\"", at: 1, 8, "unknown escape")
        refused("s = \"a\nb\"", at: 1, 7, "line break")
        refused("s = \"unclosed", at: 1, 5, "closing quote")
        refused("s = '''never closed", at: 1, 5, "closing '''")
        refused("int = 0123", at: 1, 7, "not a valid number")
        refused("int = 1__2", at: 1, 7, "not a valid number")
        refused("int = _12", at: 1, 7, "not a value")
        refused("int = 12_", at: 1, 7, "not a valid number")
        refused("int = +0x1F", at: 1, 7, "not a valid number")
        refused("int = 9223372036854775808", at: 1, 7, "out of range")
        refused("f = .7", at: 1, 5, "not a value")
        refused("f = 7.", at: 1, 5, "not a valid number")
        refused("f = 3.e+20", at: 1, 5, "not a valid number")
        refused("b = True", at: 1, 5, "needs quotes")
        refused("a = [1, 2", at: 1, 10, "expected \",\" or \"]\"")
        refused("a = [1 2]", at: 1, 8, "expected \",\" or \"]\"")
        refused("t = { a = 1,\n b = 2 }", at: 1, 13, "one line")
        refused("t = { a = 1, }", at: 1, 14, "trailing comma")
        refused("[fruit]\napple = \"red\"\n\n[fruit]\norange = \"orange\"", at: 4, 1, "defined twice")
        refused("[fruit]\napple = \"red\"\n\n[fruit.apple]\ntexture = \"smooth\"", at: 4, 1, "not a table")
        refused("[fruit]\napple.color = \"red\"\napple.taste.sweet = true\n\n[fruit.apple]", at: 5, 1, "dotted keys")
        refused("[product]\ntype = { name = \"Nail\" }\ntype.edible = false", at: 3, 1, "dotted keys cannot add")
        refused("[product]\ntype.name = \"Nail\"\n[product.type]", at: 3, 1, "dotted keys")
        refused("fruits = []\n\n[[fruits]]", at: 3, 1, "static array")
        refused("[[fruits]]\nname = \"apple\"\n[[fruits.varieties]]\nname = \"red delicious\"\n[fruits.varieties]\nname = \"granny smith\"", at: 5, 1, "array of tables")
        refused("[a]\nb = 1\n[a.b]", at: 3, 1, "not a table")
        refused("[table", at: 1, 7, "to close the table header")
        refused("[a]]", at: 1, 4, "expected the end of the line")
        refused("d = 1979-05-27", at: 1, 5, "dates and times")
        refused("t = 07:32:00", at: 1, 5, "dates and times")
        refused("s = \"tab\u{01}\"", at: 1, 9, "control character")
        refused("a = 1 # comment \u{7F}", at: 1, 17, "control character")
        refused("u = \"\\uD800\"", at: 1, 6, "Unicode scalar")
        refused("key = 1\n\nother = \"é\" x", at: 3, 13, "expected the end of the line")
        // Nesting is bounded: a hostile file is an error, not a stack overflow.
        refused("a = " + String(repeating: "[", count: 100_000), at: 1, 37, "nested more than 32 deep")
        refused("t = " + String(repeating: "{ a = ", count: 1_000), at: 1, 197, "nested more than 32 deep")
        #expect((try? TOMLDocument("a = " + String(repeating: "[", count: 32) + String(repeating: "]", count: 32))) != nil, "32 levels are fine")
    }
}
