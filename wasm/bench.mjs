// Applies the deltas of FILE (each a u32 big-endian length, then a delta's
// canonical bytes) to the WebAssembly core, best of three runs; prints
// "N deltas/s" and writes the final state's bytes to STATE_FILE.
//   node wasm/bench.mjs FILE STATE_FILE
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadCore } from './spook-core.mjs';

const [file, stateFile] = process.argv.slice(2);
const core = await loadCore(readFileSync(fileURLToPath(new URL('build/spook_core.wasm', import.meta.url))));
const all = readFileSync(file);
const deltas = [];
for (let at = 0; at < all.length;) {
  const n = all.readUInt32BE(at);
  deltas.push(all.subarray(at + 4, at + 4 + n));
  at += 4 + n;
}
let best = Infinity;
for (let run = 0; run < 3; run++) {
  core.reset();
  const t0 = process.hrtime.bigint();
  for (const d of deltas) {
    const code = core.apply(d);
    if (code !== 'ok') throw new Error(`delta refused: ${code}`);
  }
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}
writeFileSync(stateFile, core.state());
console.log(`${deltas.length} ${Math.round(deltas.length / best)}`);
