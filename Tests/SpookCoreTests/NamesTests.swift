import SpookCore
import Testing

@Suite struct NamesTests {
    @Test(arguments: ["site1", "site1.line3", "a", "0", "a-b.c-d", String(repeating: "a", count: 63)])
    func validDomains(_ text: String) throws {
        #expect(try QDomain(text).rawValue == text)
    }

    @Test(arguments: [
        ("", "empty"),
        ("Site1", "\"S\" at offset 0"),
        ("site1..line3", "empty label"),
        (".site1", "empty label"),
        ("site1.", "empty label"),
        ("-site", "starts with a-z or 0-9"),
        ("site_1", "\"_\" at offset 4"),
        ("site 1", "byte 0x20"),
        (String(repeating: "a", count: 64), "64 bytes, the limit is 63"),
        (Array(repeating: String(repeating: "a", count: 60), count: 5).joined(separator: "."), "the limit is 253"),
    ])
    func invalidDomainsSayWhichRuleBroke(_ text: String, _ expected: String) {
        let error = #expect(throws: CoreError.self) { try QDomain(text) }
        #expect(error?.code == .invalidName)
        #expect(error?.message.contains(expected) == true, "message was: \(error?.message ?? "-")")
    }

    @Test func groupsAndRegistersParseIntoTheirParts() throws {
        let r = try QRegisterName("site1.line3/pump7/speed.rpm")
        #expect(r.group.domain.rawValue == "site1.line3")
        #expect(r.group.name == "pump7")
        #expect(r.name == "speed.rpm")
        #expect(!r.isSystem)
        #expect(try QRegisterName("site1/pump7/$online").isSystem)
        #expect(try QGroupName("site1/pump_7-b").description == "site1/pump_7-b")
    }

    @Test(arguments: [
        ("site1", "expected \"domain/group\""),
        ("site1/pump7/x", "found 2"),
        ("site1/", "group name after \"/\" is empty"),
        ("site1/Pump", "\"P\" at offset 0"),
        ("site1/_pump", "\"_\" at offset 0"),
        ("Site1/pump", "label \"Site1\""),
    ])
    func invalidGroups(_ text: String, _ expected: String) {
        let error = #expect(throws: CoreError.self) { try QGroupName(text) }
        #expect(error?.message.contains(expected) == true, "message was: \(error?.message ?? "-")")
    }

    @Test(arguments: [
        ("site1/pump7", "expected \"domain/group/register\""),
        ("site1/pump7/", "register name is empty"),
        ("site1/pump7/Speed", "\"S\" at offset 0"),
        ("site1/pump7/sp eed", "byte 0x20 at offset 2"),
        ("site1/pump7/$", "\"$\" alone"),
        ("site1/pump7/$Online", "system name"),
        ("site1/pump7/$on-line", "\"-\" at offset 3"),
        ("site1/pump7/" + String(repeating: "r", count: 64), "64 bytes"),
    ])
    func invalidRegisters(_ text: String, _ expected: String) {
        let error = #expect(throws: CoreError.self) { try QRegisterName(text) }
        #expect(error?.code == .invalidName)
        #expect(error?.message.contains(expected) == true, "message was: \(error?.message ?? "-")")
    }

    @Test func patternsMatchAsDocumented() throws {
        let below = try QDomainPattern("site1.*")
        #expect(below.matches(try QDomain("site1.line3")))
        #expect(below.matches(try QDomain("site1.line3.cell2")))
        #expect(!below.matches(try QDomain("site1")))
        #expect(!below.matches(try QDomain("site10.line3")))
        let exact = try QDomainPattern("site1.line3")
        #expect(exact.matches(try QDomain("site1.line3")))
        #expect(!exact.matches(try QDomain("site1.line3.cell2")))
        let all = try QDomainPattern("*")
        #expect(all.matches(try QDomain("anything.at.all")))
        #expect(below.description == "site1.*" && all.description == "*")
    }

    @Test(arguments: ["site1.*.line", "*.site1", "site*", "site1.**", "Site.*", ""])
    func invalidPatterns(_ text: String) {
        let error = #expect(throws: CoreError.self) { try QDomainPattern(text) }
        #expect(error?.code == .invalidPattern)
        #expect(error?.message.contains("pattern \"\(text)\"") == true)
    }
}
