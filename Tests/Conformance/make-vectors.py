# Authoring aid for Tests/Conformance/vectors/*.json (the JSON files are the
# authority; see docs/conformance.md). Expectations are written by hand below:
# which delta wins, which is refused. Only byte encodings are computed, by this
# Python encoder, independent of the Swift one. Run: python3 make-vectors.py
import json, os, struct
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")
os.makedirs(OUT, exist_ok=True)
for f in os.listdir(OUT):
    if f.endswith(".json"): os.remove(os.path.join(OUT, f))

A, B, C = "00000000000000a1", "00000000000000b2", "00000000000000c3"
G = "plant.l1/pump"       # lww group
D = "plant.l1/drive"      # device group
def I(v): return {"int": str(v)}
def F(bits): return {"float": bits}
def S(v): return {"string": v}
def BY(h): return {"bytes": h}
def BO(v): return {"bool": v}
NULL = {"null": True}
def w(reg, value, kind="set"): return {"register": reg, "kind": kind, "value": value}
def d(origin, seq, ms, counter=0, group=G, writes=None): return {"origin": origin, "seq": seq, "hlc": [ms, counter], "group": group, "writes": writes}
def lww(value, frm): return {"policy": "lww", "value": value, "from": frm}
def dev(reported=None, desired=None, pending=None):
    return {"policy": "device", "reported": reported, "desired": desired, "pending": pending}
def side(value, frm): return {"value": value, "from": frm}
def ref(origin, seq, code): return {"origin": origin, "seq": seq, "code": code}

BASE_SCHEMA = {
    "registers": [
        {"domain": "plant.*", "group": "drive", "type": "int", "policy": "device"},
        {"domain": "plant.*", "register": "n", "type": "int", "policy": "lww"},
    ],
    "owners": [{"domain": "plant.*", "group": "drive", "origin": A}],
}
cases = []
def case(name, description, deltas, registers, refused=(), schema=BASE_SCHEMA, invalid=(), **extra):
    c = {"format": 1, "name": name, "description": description, "schema": schema, "deltas": deltas}
    if invalid: c["invalid"] = list(invalid)
    c["expect"] = {"registers": registers, "refused": list(refused)}
    c["expect"].update(extra)
    cases.append(c)

# ---- lww
case("lww-single-write", "One write is the register's value.",
     [d(A, 1, 1000, writes=[w("speed", I(1200))])],
     {G + "/speed": lww(I(1200), A + "#1")})
case("lww-greater-ms-wins", "The write with the later clock wins, whatever the origin.",
     [d(B, 1, 2000, writes=[w("speed", I(2))]), d(A, 1, 1000, writes=[w("speed", I(1))])],
     {G + "/speed": lww(I(2), B + "#1")})
case("lww-greater-counter-wins", "Same millisecond: the greater HLC counter wins.",
     [d(A, 1, 1000, 5, writes=[w("speed", I(5))]), d(B, 1, 1000, 4, writes=[w("speed", I(4))])],
     {G + "/speed": lww(I(5), A + "#1")})
case("lww-hlc-tie-greater-origin-wins", "Equal HLC: the greater origin wins.",
     [d(C, 1, 1000, 1, writes=[w("speed", I(3))]), d(A, 1, 1000, 1, writes=[w("speed", I(1))]), d(B, 1, 1000, 1, writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(3), C + "#1")})
case("lww-hlc-and-origin-tie-greater-seq-wins", "A faulty clock gave two deltas of one origin the same HLC: the greater seq wins.",
     [d(A, 2, 1000, writes=[w("speed", I(2))]), d(A, 1, 1000, writes=[w("speed", I(1))])],
     {G + "/speed": lww(I(2), A + "#2")})
case("lww-stamp-orders-by-hlc-before-seq", "A later seq with a smaller HLC loses: the stamp is (hlc, origin, seq).",
     [d(A, 1, 2000, writes=[w("speed", I(1))]), d(A, 2, 1000, writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(1), A + "#1")})
case("lww-duplicate-delta-is-idempotent", "The same delta three times is the same as once.",
     [d(A, 1, 1000, writes=[w("speed", I(7))])] * 3 + [d(B, 1, 999, writes=[w("speed", I(8))])],
     {G + "/speed": lww(I(7), A + "#1")})
case("lww-conflicting-duplicate-greater-bytes-wins", "Two different deltas under one (origin, seq): the greater canonical value bytes win, so every replica picks the same.",
     [d(A, 1, 1000, writes=[w("speed", I(9))]), d(A, 1, 1000, writes=[w("speed", I(10))])],
     {G + "/speed": lww(I(10), A + "#1")})
case("lww-conflicting-duplicate-type-tag-orders", "Equal stamps, different types: compared by canonical bytes, the string tag (0x04) beats the int tag (0x02).",
     [d(A, 1, 1000, writes=[w("mode", S("auto"))]), d(A, 1, 1000, writes=[w("mode", I(99))])],
     {G + "/mode": lww(S("auto"), A + "#1")})
case("lww-null-write-wins-like-any-value", "A later null replaces the value; the register still exists and holds null.",
     [d(A, 1, 1000, writes=[w("speed", I(5))]), d(B, 1, 1001, writes=[w("speed", NULL)])],
     {G + "/speed": lww(NULL, B + "#1")})
case("lww-registers-are-independent", "Each register of a group collapses on its own.",
     [d(A, 1, 1000, writes=[w("speed", I(1)), w("mode", S("a"))]), d(B, 1, 1001, writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(2), B + "#1"), G + "/mode": lww(S("a"), A + "#1")})
case("lww-same-register-name-in-two-groups", "A register is named by its group: plant.l1/pump/speed and plant.l1/fan/speed are different.",
     [d(A, 1, 1000, writes=[w("speed", I(1))]), d(B, 1, 2000, group="plant.l1/fan", writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(1), A + "#1"), "plant.l1/fan/speed": lww(I(2), B + "#1")})
case("lww-same-register-name-in-two-domains", "Domains namespace groups: plant.l1/pump and plant.l2/pump are different.",
     [d(A, 1, 2000, writes=[w("speed", I(1))]), d(B, 1, 1000, group="plant.l2/pump", writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(1), A + "#1"), "plant.l2/pump/speed": lww(I(2), B + "#1")})
case("lww-nan-is-one-value", "Any NaN is stored as the one canonical NaN 7ff8000000000000.",
     [d(A, 1, 1000, writes=[w("t", F("7ff0000000000001"))]), d(B, 1, 1000, writes=[w("u", F("fff8000000000000"))])],
     {G + "/t": lww(F("7ff8000000000000"), A + "#1"), G + "/u": lww(F("7ff8000000000000"), B + "#1")})
case("lww-negative-zero-is-not-zero", "0.0 and -0.0 are different bytes; on equal stamps -0.0 (0x80…) is the greater.",
     [d(A, 1, 1000, writes=[w("t", F("0000000000000000"))]), d(A, 1, 1000, writes=[w("t", F("8000000000000000"))])],
     {G + "/t": lww(F("8000000000000000"), A + "#1")})
case("lww-bool-values", "Booleans collapse like any value.",
     [d(A, 1, 1000, writes=[w("on", BO(True))]), d(B, 1, 1001, writes=[w("on", BO(False))])],
     {G + "/on": lww(BO(False), B + "#1")})
case("lww-bytes-and-strings", "Bytes and strings are kept exactly, including empty ones and multi-byte UTF-8.",
     [d(A, 1, 1000, writes=[w("raw", BY("00ff10")), w("label", S("Pumpe Nr. 7 – süd")), w("empty", S("")), w("none", BY(""))])],
     {G + "/raw": lww(BY("00ff10"), A + "#1"), G + "/label": lww(S("Pumpe Nr. 7 – süd"), A + "#1"),
      G + "/empty": lww(S(""), A + "#1"), G + "/none": lww(BY(""), A + "#1")})
case("lww-int64-extremes", "The full Int64 range round-trips.",
     [d(A, 1, 1000, writes=[w("lo", I(-9223372036854775808)), w("hi", I(9223372036854775807))])],
     {G + "/lo": lww(I(-9223372036854775808), A + "#1"), G + "/hi": lww(I(9223372036854775807), A + "#1")})
case("lww-float-infinities", "Infinities are ordinary values.",
     [d(A, 1, 1000, writes=[w("p", F("7ff0000000000000")), w("m", F("fff0000000000000"))])],
     {G + "/p": lww(F("7ff0000000000000"), A + "#1"), G + "/m": lww(F("fff0000000000000"), A + "#1")})
case("lww-many-origins-interleaved", "Four origins, several deltas each: per register the greatest stamp.",
     [d(A, 1, 10, writes=[w("x", I(1)), w("y", I(1))]), d(B, 1, 11, writes=[w("x", I(2))]), d(C, 1, 9, writes=[w("y", I(3)), w("z", I(3))]),
      d(A, 2, 12, writes=[w("z", I(4))]), d("00000000000000d4", 1, 11, writes=[w("x", I(5)), w("y", I(5))]), d(B, 2, 8, writes=[w("z", I(6))])],
     {G + "/x": lww(I(5), "00000000000000d4#1"), G + "/y": lww(I(5), "00000000000000d4#1"), G + "/z": lww(I(4), A + "#2")})

# ---- clocks
case("clock-max-48-bit-milliseconds", "The largest HLC (2^48-1 ms) beats everything.",
     [d(A, 1, 281474976710655, writes=[w("speed", I(1))]), d(B, 1, 1000, 65535, writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(1), A + "#1")})
case("clock-counter-max-then-next-ms", "Counter 65535 loses to counter 0 of the next millisecond.",
     [d(A, 1, 1000, 65535, writes=[w("speed", I(1))]), d(B, 1, 1001, 0, writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(2), B + "#1")})
case("clock-zero-loses-to-anything", "HLC 0.0 is valid and the smallest.",
     [d(A, 1, 0, 0, writes=[w("speed", I(1))]), d(B, 1, 0, 1, writes=[w("speed", I(2))])],
     {G + "/speed": lww(I(2), B + "#1")})
case("clock-skewed-origin-wins-until-overtaken", "A node whose clock runs ahead wins until a later stamp overtakes it.",
     [d(A, 1, 5000, writes=[w("speed", I(1))]), d(B, 1, 1000, writes=[w("speed", I(2))]), d(B, 2, 5000, 1, writes=[w("speed", I(3))])],
     {G + "/speed": lww(I(3), B + "#2")})

# ---- device
case("device-report-only", "A report from the owner fills the reported side; nothing is pending.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", I(1500), "report")])],
     {D + "/rpm": dev(reported=side(I(1500), A + "#1"))})
case("device-desire-only-is-pending", "A desire with no report yet is pending.",
     [d(B, 1, 1000, group=D, writes=[w("rpm", I(1800), "desire")])],
     {D + "/rpm": dev(desired=side(I(1800), B + "#1"), pending=I(1800))})
case("device-desire-newer-than-report-is-pending", "Desired newer than reported and different: the device must be driven.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", I(1500), "report")]), d(B, 1, 2000, group=D, writes=[w("rpm", I(1800), "desire")])],
     {D + "/rpm": dev(reported=side(I(1500), A + "#1"), desired=side(I(1800), B + "#1"), pending=I(1800))})
case("device-report-settles-desire", "The device's next report of the desired value settles it.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", I(1500), "report")]), d(B, 1, 2000, group=D, writes=[w("rpm", I(1800), "desire")]),
      d(A, 2, 3000, group=D, writes=[w("rpm", I(1800), "report")])],
     {D + "/rpm": dev(reported=side(I(1800), A + "#2"), desired=side(I(1800), B + "#1"))})
case("device-newer-report-ends-pending", "A report newer than the desire ends it being pending even if it differs: the device has spoken last.",
     [d(B, 1, 2000, group=D, writes=[w("rpm", I(1800), "desire")]), d(A, 1, 3000, group=D, writes=[w("rpm", I(1700), "report")])],
     {D + "/rpm": dev(reported=side(I(1700), A + "#1"), desired=side(I(1800), B + "#1"))})
case("device-desire-equal-to-report-not-pending", "Desiring what the device already reports is not pending.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", I(1500), "report")]), d(B, 1, 2000, group=D, writes=[w("rpm", I(1500), "desire")])],
     {D + "/rpm": dev(reported=side(I(1500), A + "#1"), desired=side(I(1500), B + "#1"))})
case("device-desired-is-lww-among-writers", "Two writers desire: the greater stamp wins.",
     [d(B, 1, 2000, group=D, writes=[w("rpm", I(1800), "desire")]), d(C, 1, 2000, group=D, writes=[w("rpm", I(900), "desire")])],
     {D + "/rpm": dev(desired=side(I(900), C + "#1"), pending=I(900))})
case("device-report-from-non-owner-refused", "Only the owning agent may write reported.",
     [d(B, 1, 1000, group=D, writes=[w("rpm", I(1), "report")]), d(A, 1, 900, group=D, writes=[w("rpm", I(2), "report")])],
     {D + "/rpm": dev(reported=side(I(2), A + "#1"))}, refused=[ref(B, 1, "not-owner")])
case("device-no-owner-declared-accepts-any-reporter", "Without an owner rule any origin may report.",
     [d(B, 1, 1000, group=D, writes=[w("rpm", I(1), "report")]), d(C, 1, 1001, group=D, writes=[w("rpm", I(2), "report")])],
     {D + "/rpm": dev(reported=side(I(2), C + "#1"))},
     schema={"registers": [{"domain": "plant.*", "group": "drive", "type": "int", "policy": "device"}], "owners": []})
case("device-set-kind-refused", "A device register takes report or desire, not set.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", I(1), "set")])], {}, refused=[ref(A, 1, "kind-not-allowed")])
case("device-type-mismatch-refused", "A device register declared int refuses a float report.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", F("3ff0000000000000"), "report")])], {}, refused=[ref(A, 1, "type-mismatch")])
case("device-reported-and-desired-collapse-separately", "A later report does not touch desired, a later desire does not touch reported.",
     [d(A, 1, 1000, group=D, writes=[w("rpm", I(1), "report")]), d(B, 1, 1100, group=D, writes=[w("rpm", I(5), "desire")]),
      d(A, 2, 1200, group=D, writes=[w("rpm", I(2), "report")]), d(B, 2, 1300, group=D, writes=[w("rpm", I(6), "desire")])],
     {D + "/rpm": dev(reported=side(I(2), A + "#2"), desired=side(I(6), B + "#2"), pending=I(6))})

# ---- refusals and atomic groups
case("type-mismatch-refused", "A register declared int refuses a string; the refused delta leaves no trace.",
     [d(A, 1, 1000, writes=[w("n", I(4))]), d(B, 1, 2000, writes=[w("n", S("four"))])],
     {G + "/n": lww(I(4), A + "#1")}, refused=[ref(B, 1, "type-mismatch")])
case("type-null-accepted-by-typed-register", "null is accepted by every declared type.",
     [d(A, 1, 1000, writes=[w("n", I(4))]), d(B, 1, 2000, writes=[w("n", NULL)])],
     {G + "/n": lww(NULL, B + "#1")})
case("kind-report-on-lww-refused", "An lww register takes set writes only.",
     [d(A, 1, 1000, writes=[w("speed", I(4), "report")])], {}, refused=[ref(A, 1, "kind-not-allowed")])
case("atomic-one-bad-write-refuses-the-whole-delta", "C2: a delta with one refused write applies none of its writes.",
     [d(A, 1, 1000, writes=[w("speed", I(1)), w("n", BO(True)), w("mode", S("x"))])], {}, refused=[ref(A, 1, "type-mismatch")])
case("atomic-refused-delta-does-not-block-later-ones", "A refused delta is held (its seq counts) and later deltas of the origin apply.",
     [d(A, 1, 1000, writes=[w("n", S("bad"))]), d(A, 2, 1001, writes=[w("n", I(2))])],
     {G + "/n": lww(I(2), A + "#2")}, refused=[ref(A, 1, "type-mismatch")])
case("atomic-group-superseded-register-by-register", "A later single write supersedes one register of an earlier group write; the others keep the group's values.",
     [d(A, 1, 1000, writes=[w("x", I(1)), w("y", I(1)), w("z", I(1))]), d(B, 1, 1001, writes=[w("y", I(2))])],
     {G + "/x": lww(I(1), A + "#1"), G + "/y": lww(I(2), B + "#1"), G + "/z": lww(I(1), A + "#1")})
case("system-registers-have-fixed-types", "$online is bool and $lag int: other types are refused; unknown $ names take any type.",
     [d(A, 1, 1000, writes=[w("$online", BO(True)), w("$lag", I(3))]), d(A, 2, 1001, writes=[w("$online", S("yes"))]),
      d(A, 3, 1002, writes=[w("$custom", S("ok"))])],
     {G + "/$online": lww(BO(True), A + "#1"), G + "/$lag": lww(I(3), A + "#1"), G + "/$custom": lww(S("ok"), A + "#3")},
     refused=[ref(A, 2, "type-mismatch")])
case("schema-first-matching-rule-wins", "Rules are tried in order; the first that matches decides.",
     [d(A, 1, 1000, writes=[w("speed", S("fast"))]), d(B, 1, 1001, writes=[w("temp", S("hot"))])],
     {G + "/temp": lww(S("hot"), B + "#1")}, refused=[ref(A, 1, "type-mismatch")],
     schema={"registers": [{"domain": "plant.l1", "group": "pump", "register": "speed", "type": "int", "policy": "lww"},
                           {"domain": "plant.*", "type": "string", "policy": "lww"}], "owners": []})
case("schema-wildcard-matches-subdomains-only", "plant.* matches plant.l1 but not plant itself.",
     [d(A, 1, 1000, writes=[w("n", S("x"))]), d(A, 2, 1001, group="plant/pump", writes=[w("n", S("x"))])],
     {"plant/pump/n": lww(S("x"), A + "#2")}, refused=[ref(A, 1, "type-mismatch")])

# ---- deltas that must not even be built
inv = lambda delta, code: {"delta": delta, "code": code}
case("invalid-duplicate-register", "A register written twice in one delta is refused when the delta is built.",
     [], {}, invalid=[inv(d(A, 1, 1000, writes=[w("x", I(1)), w("x", I(2))]), "duplicate-register")])
case("invalid-names", "Bad register and group names are refused when the delta is built.",
     [], {}, invalid=[inv(d(A, 1, 1000, writes=[w("Speed", I(1))]), "invalid-name"),
                      inv(d(A, 1, 1000, group="Plant/pump", writes=[w("x", I(1))]), "invalid-name"),
                      inv(d(A, 1, 1000, group="plant/pump/x", writes=[w("x", I(1))]), "invalid-name"),
                      inv(d(A, 1, 1000, writes=[w("$", I(1))]), "invalid-name")])
case("invalid-empty-and-seq-zero", "A delta needs at least one write and a seq of 1 or more.",
     [], {}, invalid=[inv(d(A, 1, 1000, writes=[]), "empty-delta"), inv(d(A, 0, 1000, writes=[w("x", I(1))]), "invalid-seq")])
case("invalid-oversized-values", "Strings and bytes are limited to 65536 bytes.",
     [d(A, 1, 1000, writes=[w("s", S("x" * 65536))])], {G + "/s": lww(S("x" * 65536), A + "#1")},
     invalid=[inv(d(A, 2, 1000, writes=[w("s", S("x" * 65537))]), "value-too-large"),
              inv(d(A, 2, 1000, writes=[w("b", BY("00" * 65537))]), "value-too-large")])

# ---- encodings, computed by this independent encoder
def enc_value(v):
    (k, x), = v.items()
    if k == "null": return b"\x00"
    if k == "bool": return b"\x01" + (b"\x01" if x else b"\x00")
    if k == "int": return b"\x02" + struct.pack(">q", int(x))
    if k == "float":
        bits = int(x, 16)
        if (bits >> 52) & 0x7ff == 0x7ff and bits & ((1 << 52) - 1): bits = 0x7ff8000000000000
        return b"\x03" + struct.pack(">Q", bits)
    if k == "string": b = x.encode(); return b"\x04" + struct.pack(">I", len(b)) + b
    if k == "bytes": b = bytes.fromhex(x); return b"\x05" + struct.pack(">I", len(b)) + b
KIND = {"set": 0, "report": 1, "desire": 2}
def enc_delta(dl):
    out = struct.pack(">QQQ", int(dl["origin"], 16), dl["seq"], dl["hlc"][0] << 16 | dl["hlc"][1])
    g = dl["group"].encode(); out += struct.pack(">H", len(g)) + g + struct.pack(">H", len(dl["writes"]))
    for wr in dl["writes"]:
        r = wr["register"].encode(); out += bytes([len(r)]) + r + bytes([KIND[wr["kind"]]]) + enc_value(wr["value"])
    return out
def enc_stamp(dl): return struct.pack(">QQQ", dl["hlc"][0] << 16 | dl["hlc"][1], int(dl["origin"], 16), dl["seq"])

values = [NULL, BO(False), BO(True), I(0), I(-2), I(1200), F("3ff8000000000000"), F("7ff4000000000000"), S(""), S("süd"), BY("cafe")]
cases.append({"format": 1, "name": "encoding-values", "description": "Canonical value bytes (docs/conformance.md).",
              "encodings": [{"value": v, "hex": enc_value(v).hex()} for v in values]})
ds = [d(A, 1, 1000, 2, writes=[w("speed", I(1200))]),
      d(B, 7, 281474976710655, 65535, group=D, writes=[w("rpm", I(-1), "report"), w("rpm.target", F("4059000000000000"), "desire"), w("$online", BO(True))])]
cases.append({"format": 1, "name": "encoding-deltas", "description": "Canonical delta bytes (docs/conformance.md).",
              "delta_encodings": [{"delta": x, "hex": enc_delta(x).hex()} for x in ds]})

# A whole state, byte for byte: registers sorted by name bytes.
st = [d(A, 1, 1000, writes=[w("speed", I(5))]), d(B, 1, 900, group=D, writes=[w("rpm", I(7), "desire")])]
def enc_state():
    entries = []
    name = (G + "/speed").encode(); entries.append((name, b"\x00" + enc_value(I(5)) + enc_stamp(st[0])))
    name2 = (D + "/rpm").encode(); entries.append((name2, b"\x01\x02" + enc_value(I(7)) + enc_stamp(st[1])))
    out = struct.pack(">I", len(entries))
    for n, body in sorted(entries): out += struct.pack(">H", len(n)) + n + body
    return out.hex()
case("state-canonical-bytes", "The whole collapsed state as canonical bytes: count, then registers in byte order of their names.",
     st, {G + "/speed": lww(I(5), A + "#1"), D + "/rpm": dev(desired=side(I(7), B + "#1"), pending=I(7))}, state_hex=enc_state())

for c in cases:
    with open(os.path.join(OUT, c["name"] + ".json"), "w") as f:
        json.dump(c, f, indent=1, ensure_ascii=False)
        f.write("\n")
print(len(cases), "vectors")
