// A browser-like replica in Node, for the end-to-end test
// (Tests/EndToEndTests/BrowserHalfPairTests.swift): the WebAssembly core
// and halfpair.mjs over a real WebSocket to a real spookd.
//   node --experimental-websocket halfpair-client.mjs URL DAEMON_KEY_HEX SEED_HEX PUBLIC_KEY_HEX DOMAIN_PATTERN
// Prints JSON lines; takes commands on stdin:
//   {"write": {"group": G, "writes": [{"register": R, "kind": "set", "value": {"int": "7"}}]}}
//   {"state": true}
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { loadCore, decodeState, hex, unhex } from '../spook-core.mjs';
import { HalfPair, importSeed } from '../halfpair.mjs';

const [url, daemonKey, seed, publicKey, pattern] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o, (_, v) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
const core = await loadCore(readFileSync(fileURLToPath(new URL('../build/spook_core.wasm', import.meta.url))));
const pair = new HalfPair({
  url, core, privateKey: await importSeed(unhex(seed)), publicKey: unhex(publicKey), daemonKey: unhex(daemonKey),
  domains: [pattern], name: 'browser-test', onChange: (groups) => say({ changed: groups }),
  onState: (state, why) => say({ link: state, why }),
  onSnapshot: (chunks) => say({ snapshot: chunks }),
  // The test daemon's heartbeat (200 ms, 3 missed) and the agents' fast reconnects.
  heartbeatMs: 100, baseMs: 50, capMs: 400,
});
await pair.start();
say({ ready: true, origin: pair.origin.toString(16).padStart(16, '0') });
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.write) {
      // Not awaited: writes made while unlinked wait together for the next link.
      pair.write(cmd.write.group, cmd.write.writes).then(() => say({ written: cmd.write.group }), (e) => say({ error: String(e.message ?? e) }));
    } else if (cmd.state) {
      const state = core.state();
      say({ state: hex(state), registers: decodeState(state) });
    }
  } catch (e) {
    say({ error: String(e.message ?? e) });
  }
}
pair.close();
