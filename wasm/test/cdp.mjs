// Drives a real headless Chromium over the DevTools protocol, for the page
// tests: JSON commands on stdin, one JSON answer line each on stdout.
//   node --experimental-websocket cdp.mjs CHROMIUM PROFILE_DIR URL
//   {"eval": "expression"}        → {"value": …} (promises awaited) or {"error": …}
//   {"screenshot": "/path.png"}   → {"saved": "/path.png"}
import { createInterface } from 'node:readline';
import { openTab } from './cdp-lib.mjs';

const [chromium, profile, url] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let tab;
try { tab = await openTab(chromium, profile, url); } catch (e) { say({ error: String(e.message) }); process.exit(1); }
say({ ready: true });
// Stopped (SIGTERM) or at the end of stdin: the browser goes first, so
// nothing writes into its profile once this process has exited.
process.once('SIGTERM', async () => { await tab.close(); process.exit(0); });
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.eval) say({ value: await tab.eval(cmd.eval) });
    else if (cmd.screenshot) { await tab.screenshot(cmd.screenshot); say({ saved: cmd.screenshot }); }
  } catch (e) {
    say({ error: String(e.message) });
  }
}
await tab.close();
