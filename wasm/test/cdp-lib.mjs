// A headless Chromium tab over the DevTools protocol (Node ≥ 20 with
// --experimental-websocket): open a URL, evaluate expressions, screenshot.
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function openTab(chromium, profile, url) {
  // A process group of its own: Debian's /usr/bin/chromium is a shell script
  // that runs the browser as its child, so killing the script alone would
  // leave the browser running (and writing into its profile).
  const browser = spawn(chromium, ['--headless=new', '--no-sandbox', '--disable-gpu', '--remote-debugging-port=0',
    `--user-data-dir=${profile}`, '--window-size=1200,800', 'about:blank'], { stdio: ['ignore', 'ignore', 'ignore'], detached: true });
  const stop = async () => {
    const alive = () => { try { process.kill(-browser.pid, 0); return true; } catch { return false; } };
    try { process.kill(-browser.pid, 'SIGTERM'); } catch { return; }
    for (let i = 0; i < 100 && alive(); i++) await sleep(50);
    if (alive()) process.kill(-browser.pid, 'SIGKILL');
  };
  let port;
  // The browser writes the file when it listens; it may be seen empty or half written first.
  for (let i = 0; i < 300 && !port; i++) {
    try { port = readFileSync(`${profile}/DevToolsActivePort`, 'utf8').split('\n')[0]; } catch { }
    if (!port) await sleep(100);
  }
  if (!port) { await stop(); throw new Error('chromium did not start'); }
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
  return {
    /** The value of an expression (promises awaited); throws what the page threw. */
    async eval(expression) {
      const r = await call('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true });
      if (r.result?.exceptionDetails) throw new Error(r.result.exceptionDetails.exception?.description ?? 'exception');
      return r.result?.result?.value ?? null;
    },
    /** Polls an expression until it is truthy, for at most timeoutMs. */
    async until(expression, timeoutMs = 20000) {
      const end = Date.now() + timeoutMs;
      while (Date.now() < end) {
        if (await this.eval(expression).catch(() => false)) return;
        await sleep(20);
      }
      throw new Error(`timed out waiting for ${expression}`);
    },
    async screenshot(path) {
      const r = await call('Page.captureScreenshot', { format: 'png' });
      writeFileSync(path, Buffer.from(r.result.data, 'base64'));
    },
    /** Ends the browser; resolves once every process of it has exited (they write the profile until then). */
    async close() {
      ws.close();
      await stop();
    },
  };
}
