// The live register page: a HalfPair on the WebAssembly core, linked to the
// daemon that config.json names. Everything shown comes from the replica's
// core (its state bytes); every write is a delta of the page's own origin.
import { loadCore, decodeState, encodeSchema, hex, unhex } from '../spook-core.mjs';
import { HalfPair, importSeed } from '../halfpair.mjs';

const $ = (id) => document.getElementById(id);

/** The page's key: a spook key's seed in the URL fragment (#seed=…&pub=…, never sent to the server),
 * else one kept in this browser's IndexedDB, made on first use. Its public half goes in a daemon's [[peer]]. */
async function pageKey() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get('seed') && fragment.get('pub')) {
    return { privateKey: await importSeed(unhex(fragment.get('seed'))), publicKey: unhex(fragment.get('pub')) };
  }
  const db = await new Promise((resolve, reject) => {
    const open = indexedDB.open('spook-edge', 1);
    open.onupgradeneeded = () => open.result.createObjectStore('keys');
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
  const get = (k) => new Promise((resolve) => { const r = db.transaction('keys').objectStore('keys').get(k); r.onsuccess = () => resolve(r.result); });
  let key = await get('page');
  if (!key) {
    const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    key = { privateKey: pair.privateKey, publicKey: new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey)) };
    await new Promise((resolve) => { const t = db.transaction('keys', 'readwrite'); t.objectStore('keys').put(key, 'page'); t.oncomplete = resolve; });
  }
  return key;
}

function show(v) {
  if (!v) return '';
  const [type] = Object.keys(v);
  switch (type) {
    case 'null': return 'null';
    case 'float': return String(new DataView(unhex(v.float).buffer).getFloat64(0));
    case 'string': return JSON.stringify(v.string);
    case 'bytes': return `0x${v.bytes}`;
    default: return String(v[type]);
  }
}

/** What the user typed, as a value: true/false, an integer, a number, else a string. */
function parse(text) {
  if (text === 'true' || text === 'false') return { bool: text === 'true' };
  if (/^-?\d+$/.test(text)) return { int: text };
  if (text !== '' && !Number.isNaN(Number(text))) {
    const b = new DataView(new ArrayBuffer(8));
    b.setFloat64(0, Number(text));
    return { float: hex(new Uint8Array(b.buffer)) };
  }
  return { string: text };
}

const history = new Map(); // register → [{value, from}], newest first, 20 at most
let selected = null;
let core;

function render() {
  const registers = decodeState(core.state());
  const rows = [];
  let group = null;
  for (const [name, r] of Object.entries(registers)) {
    if (name.startsWith('spook/withheld/')) continue;
    const g = name.slice(0, name.lastIndexOf('/'));
    if (g !== group) {
      group = g;
      const online = registers[`${g}/$online`];
      const offline = online && online.value && online.value.bool === false;
      rows.push(`<tr class="group${offline ? ' offline' : ''}" data-group="${g}"><td colspan="5">${g}${offline ? ' (offline)' : ''}</td></tr>`);
    }
    const value = r.policy === 'device' ? r.reported?.value : r.value;
    const from = r.policy === 'device' ? r.reported?.from ?? r.desired?.from : r.from;
    const list = history.get(name) ?? [];
    if (!list.length || list[0].from !== from) { list.unshift({ value: show(value), from }); list.length = Math.min(list.length, 20); history.set(name, list); }
    rows.push(`<tr data-register="${name}"><td>${name.slice(g.length + 1)}</td><td class="value">${show(value)}</td>`
      + `<td class="desired">${show(r.desired?.value)}</td><td class="pending">${r.pending ? show(r.pending) : ''}</td><td><small>${from ?? ''}</small></td></tr>`);
  }
  $('registers').innerHTML = rows.join('');
  if (selected) showHistory(selected);
}

function showHistory(name) {
  selected = name;
  $('history-of').textContent = name;
  $('history').innerHTML = (history.get(name) ?? []).map((h) => `<li>${h.value} <small>${h.from}</small></li>`).join('');
}

$('registers').addEventListener('click', (e) => {
  const row = e.target.closest('tr[data-register]');
  if (row) showHistory(row.dataset.register);
});

const status = (text, why = '') => {
  $('status').textContent = text;
  $('status').className = text;
  $('why').textContent = why;
};

try {
  const config = await (await fetch('/config.json')).json();
  const key = await pageKey();
  $('key').textContent = hex(key.publicKey);
  core = await loadCore();
  const loaded = core.loadSchema(encodeSchema(config.schema));
  if (loaded !== 'ok') throw new Error(`the daemon's schema does not load: ${loaded}`);
  const pair = new HalfPair({
    url: config.link, core, privateKey: key.privateKey, publicKey: key.publicKey, daemonKey: unhex(config.daemonKey),
    domains: config.domains, name: 'page', onChange: render, heartbeatMs: config.heartbeatMs ?? 1000,
    onState: (state, why) => status(state, why ?? ''),
  });
  window.spookPair = pair;
  $('write').addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = $('reg').value.trim();
    const slash = name.lastIndexOf('/');
    $('written').textContent = 'writing…';
    try {
      await pair.write(name.slice(0, slash), [{ register: name.slice(slash + 1), kind: $('kind').value, value: parse($('val').value.trim()) }]);
      $('written').textContent = 'acknowledged by the daemon';
      render();
    } catch (err) {
      $('written').textContent = `refused: ${err.message}`;
    }
  });
  status('linking');
  await pair.start();
  render();
} catch (err) {
  status('closed', String(err.message ?? err));
}
