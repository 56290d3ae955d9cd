// The Spook Edge core compiled to WebAssembly (spook_core.c), as an ES
// module with no dependencies: the same file runs in Node and in a browser.
// It adds no rule of its own: values, deltas and schemas are encoded here
// into the canonical bytes (docs/conformance.md), and the core decides.

export const codes = [
  'ok', 'malformed', 'invalid-name', 'duplicate-register', 'empty-delta', 'invalid-seq', 'value-too-large',
  'too-many-writes', 'type-mismatch', 'kind-not-allowed', 'not-owner', 'full', 'invalid-pattern', 'held', 'gap',
];

// ETCP error codes (docs/protocol.md), as frameCheck names them.
export const frameErrors = [undefined, 'bad-magic', 'unsupported-version', 'frame-too-large', 'bad-checksum', 'unknown-type', 'malformed'];

const IO_BYTES = 1024 * 1024;

/** Loads the module: `source` is the .wasm bytes, or (in a browser) left out to fetch it beside this file. */
export async function loadCore(source) {
  const bytes = source ?? await (await fetch(new URL('build/spook_core.wasm', import.meta.url))).arrayBuffer();
  const { instance } = await WebAssembly.instantiate(bytes, {});
  return new Core(instance.exports);
}

export class Core {
  constructor(exports) {
    this.x = exports;
    this.io = exports.sc_io();
  }

  view(length) { return new Uint8Array(this.x.memory.buffer, this.io, length); }

  /** Writes bytes into the exchange buffer; throws past its size. */
  put(bytes) {
    if (bytes.length > IO_BYTES) throw new RangeError(`${bytes.length} bytes exceed the core's ${IO_BYTES}-byte buffer`);
    this.view(bytes.length).set(bytes);
  }

  reset() { this.x.sc_reset(); }

  /** The code name of loading a schema (encodeSchema's bytes). */
  loadSchema(bytes) {
    this.put(bytes);
    return codes[this.x.sc_schema_load(this.io, bytes.length)];
  }

  /** The code name of decoding one delta's canonical bytes, without applying it. */
  decode(bytes) {
    this.put(bytes);
    return codes[this.x.sc_decode(this.io, bytes.length)];
  }

  /** The code name of applying one delta's canonical bytes ('ok' when taken). */
  apply(bytes) {
    this.put(bytes);
    return codes[this.x.sc_apply(this.io, bytes.length)];
  }

  /** The canonical bytes of the whole state. */
  state() {
    const n = this.x.sc_state(this.io, IO_BYTES);
    if (n === 0xffffffff) throw new RangeError(`the state needs more than ${IO_BYTES} bytes`);
    return this.view(n).slice();
  }

  /** Takes a delta in its origin's seq order: 'held' (seen), 'gap' (an earlier seq missing), or apply's code. */
  take(bytes) {
    this.put(bytes);
    return codes[this.x.sc_take(this.io, bytes.length)];
  }

  /** What the replica holds of an origin (BigInt). */
  held(origin) { return BigInt.asUintN(64, this.x.sc_held(BigInt.asIntN(64, origin))); }

  /** The replica's QStateVector bytes. */
  vector() {
    const n = this.x.sc_vector(this.io, IO_BYTES);
    return this.view(n).slice();
  }

  /** Raises the vector to cover a QStateVector (a snapshot's); the code name. */
  raiseVector(bytes) {
    this.put(bytes);
    return codes[this.x.sc_vector_raise(this.io, bytes.length)];
  }

  /** Checks a whole ETCP frame: {type, payload}; throws the protocol's error name. */
  frameCheck(bytes, bound = IO_BYTES - 12) {
    this.put(bytes);
    const r = this.x.sc_frame_check(this.io, bytes.length, bound);
    if (r >= 0x100) throw new Error(frameErrors[r - 0x100] ?? 'malformed');
    return { type: r, payload: bytes.subarray(8, bytes.length - 4) };
  }

  /** A frame of `type` around `payload`. */
  frameSeal(type, payload) {
    this.view(payload.length + 8).set(payload, 8);
    const n = this.x.sc_frame_seal(this.io, type, payload.length);
    return this.view(n).slice();
  }

  /** Merges one register of a snapshot (u16 name length, name, register state); the code name. */
  merge(record) {
    this.put(record);
    return codes[this.x.sc_merge(this.io, record.length)];
  }

  /** A value's canonical bytes decoded and written again by the core, or the refusal's code name. */
  roundtripValue(bytes) {
    this.put(bytes);
    const out = this.io + bytes.length;
    const n = this.x.sc_value_roundtrip(this.io, bytes.length, out, IO_BYTES - bytes.length);
    if (n > 0xffffff00) return codes[0xffffffff - n];
    return new Uint8Array(this.x.memory.buffer, out, n).slice();
  }
}

// ---- canonical bytes ---------------------------------------------------------

const utf8 = new TextEncoder();

/** An unsigned integer as `k` big-endian bytes. */
export function bigEndian(v, k) {
  const b = new Uint8Array(k);
  let x = BigInt.asUintN(8 * k, BigInt(v));
  for (let i = k - 1; i >= 0; i--) { b[i] = Number(x & 0xffn); x >>= 8n; }
  return b;
}

/** Byte arrays joined into one. */
export function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/** UTF-8 text after its length as `k` big-endian bytes. */
export function lengthPrefixed(s, k) {
  const b = utf8.encode(s);
  return concat([bigEndian(b.length, k), b]);
}

class Bytes {
  constructor() { this.parts = []; }
  u8(v) { this.parts.push(Uint8Array.of(v)); }
  big(v, k) { this.parts.push(bigEndian(v, k)); }
  raw(b) { this.parts.push(b); }
  text(s, k) { this.parts.push(lengthPrefixed(s, k)); }
  done() { return concat(this.parts); }
}

export const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
export const unhex = (s) => Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));

const tags = { null: 0, bool: 1, int: 2, float: 3, string: 4, bytes: 5 };
const kinds = { set: 0, report: 1, desire: 2 };

function value(w, v) {
  const [type] = Object.keys(v);
  w.u8(tags[type]);
  switch (type) {
    case 'null': break;
    case 'bool': w.u8(v.bool ? 1 : 0); break;
    case 'int': w.big(BigInt(v.int), 8); break;
    case 'float': {
      // Every NaN is written as the one canonical NaN.
      const bits = BigInt('0x' + v.float);
      const nan = (bits & 0x7ff0000000000000n) === 0x7ff0000000000000n && (bits & 0x000fffffffffffffn) !== 0n;
      w.big(nan ? 0x7ff8000000000000n : bits, 8);
      break;
    }
    case 'string': w.text(v.string, 4); break;
    case 'bytes': { const b = unhex(v.bytes); w.big(b.length, 4); w.raw(b); break; }
    default: throw new TypeError(`unknown value ${JSON.stringify(v)}`);
  }
}

/** A value ({"int": "1200"}, …) as canonical bytes. */
export function encodeValue(v) { const w = new Bytes(); value(w, v); return w.done(); }

/** A delta ({origin, seq, hlc: [ms, counter], group, writes}) as canonical bytes. */
export function encodeDelta(d) {
  const w = new Bytes();
  w.big(BigInt('0x' + d.origin), 8);
  w.big(d.seq, 8);
  w.big((BigInt(d.hlc[0]) << 16n) | BigInt(d.hlc[1]), 8);
  w.text(d.group, 2);
  w.big(d.writes.length, 2);
  for (const x of d.writes) {
    w.text(x.register, 1);
    w.u8(kinds[x.kind]);
    value(w, x.value);
  }
  return w.done();
}

/** A schema ({registers: [{domain, group?, register?, type?, policy?}], owners: [{domain, group?, origin}]}) for loadSchema. */
export function encodeSchema(s) {
  const w = new Bytes();
  const selector = (r) => { w.text(r.domain, 1); w.text(r.group ?? '', 1); w.text(r.register ?? '', 1); };
  const rules = s?.registers ?? [], owners = s?.owners ?? [];
  w.big(rules.length, 2);
  for (const r of rules) { selector(r); w.u8(r.type ? tags[r.type] : 0xff); w.u8(r.policy === 'device' ? 1 : 0); }
  w.big(owners.length, 2);
  for (const o of owners) { selector(o); w.big(BigInt('0x' + o.origin), 8); }
  return w.done();
}

// ---- reading the state back ----------------------------------------------------

class Reader {
  constructor(b) { this.b = b; this.at = 0; }
  big(k) { let v = 0n; for (let i = 0; i < k; i++) v = (v << 8n) | BigInt(this.b[this.at++]); return v; }
  bytes(n) { const s = this.b.subarray(this.at, this.at + n); this.at += n; return s; }
}

function readValue(r) {
  const start = r.at;
  const tag = r.b[r.at++];
  let v;
  switch (tag) {
    case 0: v = { null: true }; break;
    case 1: v = { bool: r.b[r.at++] === 1 }; break;
    case 2: v = { int: BigInt.asIntN(64, r.big(8)).toString() }; break;
    case 3: v = { float: hex(r.bytes(8)) }; break;
    case 4: v = { string: new TextDecoder().decode(r.bytes(Number(r.big(4)))) }; break;
    case 5: v = { bytes: hex(r.bytes(Number(r.big(4)))) }; break;
    default: throw new TypeError(`unknown value tag ${tag}`);
  }
  return { v, raw: hex(r.b.subarray(start, r.at)) };
}

function readSide(r) {
  const { v, raw } = readValue(r);
  const hlc = r.big(8), origin = r.big(8), seq = r.big(8);
  return { value: v, raw, stamp: [hlc, origin, seq], from: `${origin.toString(16).padStart(16, '0')}#${seq}` };
}

/** The length of the canonical register state at `at` (for splitting snapshots and states). */
export function registerStateLength(bytes, at) {
  const r = new Reader(bytes);
  r.at = at;
  const tag = r.b[r.at++];
  const flags = tag === 1 ? r.b[r.at++] : 1;
  for (let k = 0; k < 2; k++) {
    if (!(flags & (1 << k))) continue;
    readValue(r);
    r.at += 24;
  }
  if (r.at > bytes.length) throw new RangeError('a register state runs past its bytes');
  return r.at - at;
}

/** A whole state's registers as snapshot records (u16 name length, name, register state). */
export function stateRecords(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = [];
  let at = 4;
  for (let n = dv.getUint32(0); n > 0; n--) {
    const start = at;
    at += 2 + dv.getUint16(at);
    at += registerStateLength(bytes, at);
    out.push(bytes.slice(start, at));
  }
  return out;
}

const later = (a, b) => a[0] !== b[0] ? a[0] > b[0] : a[1] !== b[1] ? a[1] > b[1] : a[2] > b[2];

/** The state's canonical bytes as the vectors' `expect.registers`. */
export function decodeState(bytes) {
  const r = new Reader(bytes);
  const out = {};
  for (let n = Number(r.big(4)); n > 0; n--) {
    const name = new TextDecoder().decode(r.bytes(Number(r.big(2))));
    if (r.b[r.at++] === 0) {
      const s = readSide(r);
      out[name] = { policy: 'lww', value: s.value, from: s.from };
    } else {
      const flags = r.b[r.at++];
      const rep = flags & 1 ? readSide(r) : null, des = flags & 2 ? readSide(r) : null;
      const pending = des && (!rep || (later(des.stamp, rep.stamp) && des.raw !== rep.raw)) ? des.value : null;
      const side = (s) => s && { value: s.value, from: s.from };
      out[name] = { policy: 'device', reported: side(rep), desired: side(des), pending };
    }
  }
  if (r.at !== bytes.length) throw new TypeError('trailing bytes after the state');
  return out;
}
