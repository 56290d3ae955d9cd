// The parts of the browser replica below the HalfPair: ETCP frames as the
// core checks and seals them (against docs/protocol.md's vectors), the
// core's vector and its order of deltas, and the reconnect backoff against
// the Swift core's numbers (HalfPairTests.backoffVectors).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { backoffMs } from '../halfpair.mjs';
import { loadCore, encodeDelta, hex, unhex } from '../spook-core.mjs';

const core = await loadCore(readFileSync(fileURLToPath(new URL('../build/spook_core.wasm', import.meta.url))));

test('frames are the protocol test vectors', () => {
  const heartbeat = '53500107000000080000018bcfe5680099b4ad9b';
  assert.equal(hex(core.frameSeal(7, unhex('0000018bcfe56800'))), heartbeat);
  const f = core.frameCheck(unhex(heartbeat));
  assert.equal(f.type, 7);
  assert.equal(hex(f.payload), '0000018bcfe56800');
  const deltas = '5350010400000045000000010000003d00000000000000aa0000000000000001'
    + '0000000003e80002001173697465312e6c696e65332f70756d70370001057370656564000200000000000004b01ed68aec';
  assert.equal(core.frameCheck(unhex(deltas)).type, 4);
  const close = '535001090000000f000d7368757474696e6720646f776e67c2b057';
  assert.throws(() => core.frameCheck(unhex(close.slice(0, -2) + '58')), /bad-checksum/);
  assert.throws(() => core.frameCheck(unhex('5351' + close.slice(4))), /bad-magic/);
  assert.throws(() => core.frameCheck(unhex('5350' + '02' + close.slice(6))), /unsupported-version/);
  assert.throws(() => core.frameCheck(unhex(close), 4), /frame-too-large/);
  assert.throws(() => core.frameCheck(unhex(close + '00')), /malformed/);
});

test('the vector takes deltas in each origin\'s order', () => {
  core.reset();
  const d = (origin, seq, v) => encodeDelta({ origin, seq, hlc: [1000 + seq, 0], group: 'site1.l1/m', writes: [{ register: 'r', kind: 'set', value: { int: String(v) } }] });
  assert.equal(core.take(d('00000000000000a1', 2, 2)), 'gap');
  assert.equal(core.take(d('00000000000000a1', 1, 1)), 'ok');
  assert.equal(core.take(d('00000000000000a1', 2, 2)), 'ok');
  assert.equal(core.take(d('00000000000000a1', 1, 1)), 'held');
  assert.equal(core.take(d('00000000000000b2', 1, 9)), 'ok');
  assert.equal(core.held(0xa1n), 2n);
  // {a1: 2, b2: 1}, ascending origins.
  assert.equal(hex(core.vector()), '00000002' + '00000000000000a1' + '0000000000000002' + '00000000000000b2' + '0000000000000001');
  assert.equal(core.raiseVector(unhex('00000001' + '00000000000000a1' + '0000000000000007')), 'ok');
  assert.equal(core.held(0xa1n), 7n);
  assert.equal(core.take(d('00000000000000a1', 7, 7)), 'held');
  assert.equal(core.raiseVector(unhex('0000000100')), 'malformed');
});

test('backoff delays equal the Swift core\'s', () => {
  assert.deepEqual([...Array(8).keys()].map((a) => backoffMs(0x66687aadf862bd77n, a)), [282, 532, 1961, 2844, 5586, 15462, 21989, 21770]);
  assert.deepEqual([...Array(5).keys()].map((a) => backoffMs(0xa1n, a, 50n, 400n)), [48, 81, 132, 348, 361]);
});
