// For bench/run: the register page in headless Chromium; once it is linked,
// every change of REGISTER that reaches the DOM is timed (now − the value,
// which the writer sets to its wall clock in ms mod 10^9) for DURATION_MS.
//   node --experimental-websocket page-latency.mjs CHROMIUM PROFILE URL REGISTER DURATION_MS
// Prints "ready" once linked and observing, then one JSON line of latencies (ms).
import { openTab } from './cdp-lib.mjs';

const [chromium, profile, url, register, duration] = process.argv.slice(2);
const tab = await openTab(chromium, profile, url);
await tab.until("document.getElementById('status')?.textContent === 'linked'", 30000);
await tab.eval(`(() => {
  window.latencies = [];
  let last = null;
  new MutationObserver(() => {
    const cell = document.querySelector('tr[data-register="${register}"] .value');
    if (!cell || cell.textContent === last) return;
    last = cell.textContent;
    window.latencies.push(Date.now() % 1e9 - Number(last));
  }).observe(document.getElementById('registers'), { childList: true, subtree: true, characterData: true });
  return true;
})()`);
console.log('ready');
await new Promise((r) => setTimeout(r, Number(duration)));
console.log(JSON.stringify(await tab.eval('window.latencies')));
await tab.close();
