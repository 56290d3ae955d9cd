// The browser HalfPair's pure parts: frames against docs/protocol.md's
// vectors, and the reconnect backoff against the Swift core's numbers
// (HalfPairTests.backoffVectors).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { frame, unframe, crc32c, backoffMs } from '../halfpair.mjs';
import { hex, unhex } from '../spook-core.mjs';

test('frames are the protocol test vectors', () => {
  const heartbeat = '53500107000000080000018bcfe5680099b4ad9b';
  assert.equal(hex(frame(7, unhex('0000018bcfe56800'))), heartbeat);
  assert.deepEqual(unframe(unhex(heartbeat)).payload, unhex('0000018bcfe56800'));
  const close = '535001090000000f000d7368757474696e6720646f776e67c2b057';
  assert.equal(unframe(unhex(close)).type, 9);
  assert.throws(() => unframe(unhex(close.slice(0, -2) + '58')), /bad-checksum/);
  assert.throws(() => unframe(unhex('5351' + close.slice(4))), /bad-magic/);
  assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
});

test('backoff delays equal the Swift core\'s', () => {
  assert.deepEqual([...Array(8).keys()].map((a) => backoffMs(0x66687aadf862bd77n, a)), [282, 532, 1961, 2844, 5586, 15462, 21989, 21770]);
  assert.deepEqual([...Array(5).keys()].map((a) => backoffMs(0xa1n, a, 50n, 400n)), [48, 81, 132, 348, 361]);
});
