// Drives a real headless Chromium over the DevTools protocol, for the page
// tests: JSON commands on stdin, one JSON answer line each on stdout.
//   node --experimental-websocket cdp.mjs CHROMIUM PROFILE_DIR URL
//   {"eval": "expression"}        → {"value": …} (promises awaited) or {"error": …}
//   {"screenshot": "/path.png"}   → {"saved": "/path.png"}
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

const [chromium, profile, url] = process.argv.slice(2);
const browser = spawn(chromium, ['--headless=new', '--no-sandbox', '--disable-gpu', '--remote-debugging-port=0',
  `--user-data-dir=${profile}`, '--window-size=1200,800', 'about:blank'], { stdio: ['ignore', 'ignore', 'ignore'] });
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let port;
for (let i = 0; i < 300 && !port; i++) {
  try { port = readFileSync(`${profile}/DevToolsActivePort`, 'utf8').split('\n')[0]; } catch { await sleep(100); }
}
if (!port) { say({ error: 'chromium did not start' }); process.exit(1); }
const pages = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const ws = new WebSocket(pages.find((p) => p.type === 'page').webSocketDebuggerUrl);
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
let id = 0;
const pending = new Map();
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
};
const call = (method, params = {}) => new Promise((resolve) => { const n = ++id; pending.set(n, resolve); ws.send(JSON.stringify({ id: n, method, params })); });

await call('Page.enable');
await call('Page.navigate', { url });
say({ ready: true });
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  if (cmd.eval) {
    const r = await call('Runtime.evaluate', { expression: cmd.eval, returnByValue: true, awaitPromise: true });
    if (r.result?.exceptionDetails) say({ error: r.result.exceptionDetails.exception?.description ?? 'exception' });
    else say({ value: r.result?.result?.value ?? null });
  } else if (cmd.screenshot) {
    const r = await call('Page.captureScreenshot', { format: 'png' });
    writeFileSync(cmd.screenshot, Buffer.from(r.result.data, 'base64'));
    say({ saved: cmd.screenshot });
  }
}
ws.close();
browser.kill();
