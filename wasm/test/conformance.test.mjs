// The conformance vectors (Tests/Conformance/vectors) against the
// WebAssembly core under Node: the same files the Swift core passes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadCore, encodeDelta, encodeSchema, encodeValue, decodeState, hex, unhex } from '../spook-core.mjs';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const core = await loadCore(readFileSync(here('../build/spook_core.wasm')));
const dir = here('../../Tests/Conformance/vectors/');
const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();

// Deterministic orders: the given one, reversed, and seeded shuffles with a duplicate.
function orders(n, seed) {
  const out = [[...Array(n).keys()], [...Array(n).keys()].reverse()];
  let x = BigInt(seed) | 1n;
  const next = () => { x ^= x << 13n; x &= (1n << 64n) - 1n; x ^= x >> 7n; x ^= x << 17n; x &= (1n << 64n) - 1n; return x; };
  for (let k = 0; k < 24 && n > 0; k++) {
    const o = [...Array(n).keys()];
    for (let i = n - 1; i > 0; i--) { const j = Number(next() % BigInt(i + 1)); [o[i], o[j]] = [o[j], o[i]]; }
    o.splice(Number(next() % BigInt(n + 1)), 0, o[Number(next() % BigInt(n))]);
    out.push(o);
  }
  return out;
}

test('there are vectors to run', () => assert.ok(files.length >= 52, `${files.length} files`));

for (const file of files) {
  const v = JSON.parse(readFileSync(dir + file, 'utf8'));
  test(v.name, () => {
    for (const e of v.encodings ?? []) {
      assert.equal(hex(encodeValue(e.value)), e.hex, `JS encoding of ${JSON.stringify(e.value)}`);
      assert.equal(hex(core.roundtripValue(unhex(e.hex))), e.hex, `core round trip of ${e.hex}`);
    }
    for (const e of v.delta_encodings ?? []) {
      assert.equal(hex(encodeDelta(e.delta)), e.hex);
      assert.equal(core.decode(unhex(e.hex)), 'ok', `core decodes ${e.hex}`);
    }
    if (!v.expect) return;
    const deltas = (v.deltas ?? []).map(encodeDelta);
    const expectedRefused = new Set((v.expect.refused ?? []).map((r) => `${r.origin}#${r.seq} ${r.code}`));
    for (const order of orders(deltas.length, file.length * 7919)) {
      core.reset();
      assert.equal(core.loadSchema(encodeSchema(v.schema)), 'ok');
      const refused = new Set();
      for (const i of order) {
        const code = core.apply(deltas[i]);
        if (code !== 'ok') refused.add(`${v.deltas[i].origin}#${v.deltas[i].seq} ${code}`);
      }
      const state = core.state();
      assert.deepEqual(decodeState(state), v.expect.registers, `registers, order ${order}`);
      assert.deepEqual(refused, expectedRefused, `refusals, order ${order}`);
      if (v.expect.state_hex) assert.equal(hex(state), v.expect.state_hex, 'state bytes');
    }
    for (const bad of v.invalid ?? []) {
      const before = hex(core.state());
      assert.equal(core.apply(encodeDelta(bad.delta)), bad.code, JSON.stringify(bad.delta).slice(0, 200));
      assert.equal(hex(core.state()), before, 'a refused delta changes nothing');
    }
  });
}
