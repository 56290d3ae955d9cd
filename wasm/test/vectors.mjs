// One conformance vector checked against a core: the list of what differs
// (empty when it passes). Shared by the Node test and the browser page, so
// both run exactly the same checks.
import { encodeDelta, encodeSchema, encodeValue, decodeState, stateRecords, hex, unhex } from '../spook-core.mjs';

// Deterministic orders: the given one, reversed, and seeded shuffles with a duplicate.
export function orders(n, seed) {
  const out = [[...Array(n).keys()], [...Array(n).keys()].reverse()];
  let x = BigInt(seed) | 1n;
  const mask = (1n << 64n) - 1n;
  const next = () => { x ^= (x << 13n) & mask; x ^= x >> 7n; x ^= (x << 17n) & mask; return x; };
  for (let k = 0; k < 24 && n > 0; k++) {
    const o = [...Array(n).keys()];
    for (let i = n - 1; i > 0; i--) { const j = Number(next() % BigInt(i + 1)); [o[i], o[j]] = [o[j], o[i]]; }
    o.splice(Number(next() % BigInt(n + 1)), 0, o[Number(next() % BigInt(n))]);
    out.push(o);
  }
  return out;
}

// JSON equality, key order aside.
const canon = (v) => JSON.stringify(v, (_, x) => (x && typeof x === 'object' && !Array.isArray(x)
  ? Object.fromEntries(Object.keys(x).sort().map((k) => [k, x[k]])) : x));

export function checkVector(core, v, seed) {
  const problems = [];
  const expect = (ok, what) => { if (!ok) problems.push(what); };
  for (const e of v.encodings ?? []) {
    expect(hex(encodeValue(e.value)) === e.hex, `JS encoding of ${JSON.stringify(e.value)}`);
    expect(hex(core.roundtripValue(unhex(e.hex))) === e.hex, `core round trip of ${e.hex}`);
  }
  for (const e of v.delta_encodings ?? []) {
    expect(hex(encodeDelta(e.delta)) === e.hex, `JS encoding of delta ${e.hex}`);
    expect(core.decode(unhex(e.hex)) === 'ok', `core decodes ${e.hex}`);
  }
  if (!v.expect) return problems;
  const deltas = (v.deltas ?? []).map(encodeDelta);
  const expectedRefused = (v.expect.refused ?? []).map((r) => `${r.origin}#${r.seq} ${r.code}`).sort();
  for (const order of orders(deltas.length, seed)) {
    core.reset();
    expect(core.loadSchema(encodeSchema(v.schema)) === 'ok', 'schema loads');
    const refused = new Set();
    for (const i of order) {
      const code = core.apply(deltas[i]);
      if (code !== 'ok') refused.add(`${v.deltas[i].origin}#${v.deltas[i].seq} ${code}`);
    }
    const state = core.state();
    expect(canon(decodeState(state)) === canon(v.expect.registers), `registers, order ${order}`);
    expect(canon([...refused].sort()) === canon(expectedRefused), `refusals, order ${order}: ${[...refused]}`);
    if (v.expect.state_hex) expect(hex(state) === v.expect.state_hex, 'state bytes');
  }
  // State transfer: the whole state, as snapshot records, merged into an
  // empty replica gives the same bytes; merged again, nothing changes; merged
  // into a replica that applied only the first half of the deltas, the same.
  const full = core.state();
  const records = stateRecords(full);
  for (const start of [0, Math.floor(deltas.length / 2)]) {
    core.reset();
    core.loadSchema(encodeSchema(v.schema));
    for (const d of deltas.slice(0, start)) core.apply(d);
    for (let pass = 0; pass < 2; pass++) {
      for (const r of records) expect(core.merge(r) === 'ok', `merge of ${hex(r).slice(0, 40)}…`);
    }
    expect(hex(core.state()) === hex(full), `the state through a snapshot (after ${start} deltas)`);
  }
  // ... and an older snapshot (half the deltas) merged into the whole state changes nothing.
  core.reset();
  core.loadSchema(encodeSchema(v.schema));
  for (const d of deltas.slice(0, Math.floor(deltas.length / 2))) core.apply(d);
  const half = stateRecords(core.state());
  core.reset();
  core.loadSchema(encodeSchema(v.schema));
  for (const d of deltas) core.apply(d);
  for (const r of half) core.merge(r);
  expect(hex(core.state()) === hex(full), 'an older snapshot changes nothing');
  for (const bad of v.invalid ?? []) {
    const before = hex(core.state());
    const code = core.apply(encodeDelta(bad.delta));
    expect(code === bad.code, `invalid delta: ${code}, expected ${bad.code}`);
    expect(hex(core.state()) === before, 'a refused delta changes nothing');
  }
  return problems;
}
