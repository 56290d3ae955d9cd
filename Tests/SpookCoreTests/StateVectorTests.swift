import SpookCore
import Testing

@Suite struct StateVectorTests {
    let a = Origin(1), b = Origin(2), c = Origin(3)

    @Test func mergeIsPointwiseMaximumAndMeetPointwiseMinimum() {
        let x = QStateVector([a: 5, b: 1])
        let y = QStateVector([b: 4, c: 2])
        #expect(x.merged(y) == QStateVector([a: 5, b: 4, c: 2]))
        #expect(x.meet(y) == QStateVector([b: 1]))
        #expect(x.merged(y) == y.merged(x))
    }

    @Test func compareIsAPartialOrder() {
        let x = QStateVector([a: 5, b: 1])
        #expect(x.compare(x) == .equal)
        #expect(x.compare(QStateVector([a: 4])) == .ahead)
        #expect(QStateVector([a: 4]).compare(x) == .behind)
        #expect(x.compare(QStateVector([a: 4, b: 2])) == .concurrent)
        #expect(QStateVector().compare(QStateVector([a: 0])) == .equal)
        // Origins only one side holds.
        #expect(x.compare(QStateVector([a: 5, b: 1, c: 1])) == .behind)
        #expect(QStateVector([a: 5, b: 1, c: 1]).compare(x) == .ahead)
        #expect(x.compare(QStateVector([a: 6, c: 1])) == .concurrent)
        #expect(QStateVector([c: 1]).compare(QStateVector([b: 1])) == .concurrent)
        #expect(QStateVector().compare(x) == .behind && x.compare(QStateVector()) == .ahead)
    }

    @Test func coversIsEqualOrAhead() {
        let vectors = [QStateVector(), QStateVector([a: 5, b: 1]), QStateVector([a: 4]), QStateVector([a: 5, b: 1, c: 1]), QStateVector([a: 6, c: 1])]
        for x in vectors {
            for y in vectors { #expect(x.covers(y) == [.equal, .ahead].contains(x.compare(y)), "\(x) covers \(y)") }
        }
    }

    @Test func lackingNamesExactlyTheMissingRuns() {
        let mine = QStateVector([a: 10, b: 3, c: 1])
        let peer = QStateVector([a: 4, b: 3, c: 7])
        let lacking = mine.lacking(in: peer)
        #expect(lacking.map(\.description) == ["\(a)#5...10"])
        #expect(lacking.first?.count == 6)
        #expect(QStateVector().lacking(in: mine).isEmpty)
        #expect(mine.contains(DeltaID(origin: a, seq: 10)) && !mine.contains(DeltaID(origin: a, seq: 11)))
    }

    @Test func encodingRoundTripsAndRefusesUnorderedOrigins() throws {
        let v = QStateVector([b: 9, a: 1])
        var w = ByteWriter()
        v.encode(into: &w)
        #expect(w.bytes.hex == "00000002" + "0000000000000001" + "0000000000000001" + "0000000000000002" + "0000000000000009")
        var r = ByteReader(w.bytes)
        #expect(try QStateVector.decode(from: &r) == v)
        var bad = ByteReader([UInt8](hex: "00000002" + "0000000000000002" + "0000000000000001" + "0000000000000001" + "0000000000000009")!)
        #expect(throws: CoreError.self) { try QStateVector.decode(from: &bad) }
        var huge = ByteReader([UInt8](hex: "ffffffff")!)
        let error = #expect(throws: CoreError.self) { try QStateVector.decode(from: &huge) }
        #expect(error?.code == .truncated)
    }
}
