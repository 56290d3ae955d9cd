// A HalfPair over a WebSocket for browsers (and Node ≥ 20 with
// --experimental-websocket): the ETCP handshake with an Ed25519 key held
// by WebCrypto, then ESTP. The WebAssembly core (spook-core.mjs) checks and
// seals every frame, takes every delta in its origin's order, keeps the
// replica's vector and collapses; this file signs, reads message fields,
// and keeps deltas that came before their predecessors.
// Protocol: docs/protocol.md.

import { encodeDelta, registerStateLength, hex, bigEndian, concat, lengthPrefixed } from './spook-core.mjs';

const utf8 = new TextEncoder();
// ERROR codes (docs/protocol.md).
const errorNames = [undefined, 'bad-magic', 'unsupported-version', 'frame-too-large', 'bad-checksum', 'unknown-type', 'malformed',
  'unexpected-frame', 'unauthorised', 'bad-signature', 'replayed-handshake', 'forbidden', 'timeout', 'overloaded', 'internal',
  'seq-conflict', 'clock-drift'];
const waitingMax = 100_000;
const taken = new Set(['ok', 'type-mismatch', 'kind-not-allowed', 'not-owner']);
const T = { HELLO: 1, AUTH: 2, VECTOR: 3, DELTAS: 4, ACK: 5, SNAPSHOT: 6, HEARTBEAT: 7, ERROR: 8, CLOSE: 9 };

const be = bigEndian;
const text16 = (s) => lengthPrefixed(s, 2);

async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)); }

/** A node's origin: the first 8 bytes of SHA-256 of its public key, big-endian. */
export async function originOf(publicKey) {
  const h = await sha256(publicKey);
  return new DataView(h.buffer).getBigUint64(0);
}

const mask64 = (1n << 64n) - 1n;
function mix(x) {
  let z = x & mask64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & mask64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & mask64;
  return z ^ (z >> 31n);
}

/** The deterministic reconnect delay of SUBSTRATE §4, exactly as the Swift
 * core computes it (ReconnectBackoff): min(cap, base·2^attempt)·jitter, the
 * jitter in [0.5, 1) from a hash of (origin, attempt). */
export function backoffMs(origin, attempt, baseMs = 500n, capMs = 30000n) {
  const exp = BigInt(Math.min(attempt, 63));
  const scaled = (baseMs << exp) & mask64;
  const raw = scaled >> exp !== baseMs || scaled > capMs ? capMs : scaled;
  const numerator = (1n << 31n) | (mix(origin ^ mix((BigInt(attempt) + 0x53504f4f4b000000n) & mask64)) >> 33n);
  return Number((raw * numerator) >> 32n);
}

/** Imports a 32-byte Ed25519 private seed (a spook key file's hex) as a WebCrypto key. */
export async function importSeed(seed) {
  const pkcs8 = concat([Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]), seed]);
  return crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, false, ['sign']);
}

export class HalfPair {
  /**
   * @param {object} o
   * @param {string} o.url          ws:// or wss:// address of a daemon's listener
   * @param {import('./spook-core.mjs').Core} o.core   the replica's core
   * @param {CryptoKey} o.privateKey Ed25519 (WebCrypto), whose public half the daemon lists in a [[peer]]
   * @param {Uint8Array} o.publicKey 32 bytes
   * @param {Uint8Array} o.daemonKey the daemon's public key, pinned
   * @param {string[]} o.domains    domain patterns to subscribe to
   * @param {(names: string[]) => void} [o.onChange]
   */
  constructor(o) {
    this.heartbeatMs = 1000;
    this.baseMs = 500;
    this.capMs = 30000;
    Object.assign(this, o);
    // Silent this long (three heartbeats), a link is dead: dial again.
    this.silenceMs = 3 * this.heartbeatMs;
    this.own = new Map();       // own seq → delta bytes the daemon has not acknowledged
    this.waiting = new Map();   // "origin#seq" → delta bytes whose predecessor has not come yet (bounded)
    this.ownSeq = 0n;           // the last seq this replica wrote
    this.lastHlc = 0n;
    this.acked = new Map();     // what the daemon acknowledged holding
    this.waiters = [];
    this.state = 'closed';
  }

  /** Links, and keeps linking: after a lost or refused link it dials again
   * after `backoffMs(origin, attempt)`, as an agent does. Resolves at the first link. */
  async start() {
    this.origin = await originOf(this.publicKey);
    this.running = true;
    this.attempt = 0;
    this.gen = 0;
    return new Promise((resolve) => { this.firstLink = resolve; this.dial(); });
  }

  /** One connection attempt; events of older attempts are ignored (`gen`). */
  dial() {
    const gen = ++this.gen;
    this.nonce = crypto.getRandomValues(new Uint8Array(32));
    this.hello = concat([be(1, 2), Uint8Array.of(1), this.publicKey, this.nonce, be(this.domains.length, 2),
      ...this.domains.map(text16), text16(this.name ?? 'browser')]);
    const ws = new WebSocket(this.url);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.state = 'handshake';
    this.lastHeard = Date.now();
    // One frame at a time, in order: handling one may await WebCrypto.
    let queue = Promise.resolve();
    ws.onopen = () => { if (gen === this.gen) this.send(T.HELLO, this.hello); };
    ws.onmessage = (e) => {
      if (gen !== this.gen) return;
      this.lastHeard = Date.now();
      const bytes = new Uint8Array(e.data);
      queue = queue.then(() => (gen === this.gen ? this.receive(bytes, gen) : undefined)).catch((err) => this.lost(gen, err));
    };
    ws.onclose = () => this.lost(gen, new Error('the link closed'));
    ws.onerror = () => this.lost(gen, new Error(`cannot reach ${this.url}`));
    // The handshake has as long as a silent link.
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = setTimeout(() => { if (gen === this.gen && this.state === 'handshake') this.lost(gen, new Error('no handshake')); }, this.silenceMs);
  }

  /** The link `gen` is gone: forget it, and dial again after the backoff. */
  lost(gen, err) {
    if (gen !== this.gen) return;
    this.gen++;
    this.state = 'closed';
    clearInterval(this.beat);
    try { this.ws.close(); } catch { /* already closed */ }
    this.onState?.('closed', String(err?.message ?? err));
    if (!this.running) return;
    const delay = backoffMs(this.origin, this.attempt++, BigInt(this.baseMs), BigInt(this.capMs));
    this.retry = setTimeout(() => this.dial(), delay);
  }

  send(type, payload) { this.ws.send(this.core.frameSeal(type, payload)); }

  async receive(bytes, gen) {
    const { type, payload } = this.core.frameCheck(bytes);
    const dv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    switch (type) {
      case T.HELLO: {
        if (dv.getUint16(0) !== 1) throw new Error('unsupported-version');
        const key = payload.subarray(3, 35);
        if (key.some((b, i) => b !== this.daemonKey[i])) throw new Error('unauthorised: not the pinned daemon key');
        this.peerKey = key;
        // We opened the connection: we are the initiator.
        const t = await sha256(concat([utf8.encode('spook etcp v1 transcript'), this.hello, payload]));
        this.transcript = t;
        const sig = await crypto.subtle.sign({ name: 'Ed25519' }, this.privateKey, concat([utf8.encode('spook etcp v1 auth initiator'), t]));
        this.send(T.AUTH, new Uint8Array(sig));
        break;
      }
      case T.AUTH: {
        const key = await crypto.subtle.importKey('raw', this.peerKey, { name: 'Ed25519' }, false, ['verify']);
        const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, payload, concat([utf8.encode('spook etcp v1 auth responder'), this.transcript]));
        if (!ok) throw new Error('bad-signature');
        this.state = 'linked';
        this.send(T.VECTOR, this.core.vector());
        clearInterval(this.beat);
        this.beat = setInterval(() => {
          if (Date.now() - this.lastHeard > this.silenceMs) this.lost(gen, new Error('the daemon went silent'));
          else this.send(T.HEARTBEAT, be(Date.now(), 8));
        }, this.heartbeatMs);
        break;
      }
      case T.VECTOR: {
        // What the daemon holds of our origin: what it lacks of ours goes (again).
        let has = 0n;
        for (let i = 0, n = dv.getUint32(0); i < n; i++) {
          if (dv.getBigUint64(4 + 16 * i) === this.origin) has = dv.getBigUint64(12 + 16 * i);
        }
        // A page loaded again under a kept key: its seqs go on after what the daemon holds.
        if (has > this.core.held(this.origin) && this.own.size === 0) this.ownSeq = has;
        const missing = [...this.own].filter(([seq]) => seq > has).sort(([a], [b]) => (a < b ? -1 : 1)).map(([, d]) => d);
        for (let i = 0; i < missing.length; i += 1000) this.sendDeltas(missing.slice(i, i + 1000));
        this.send(T.ACK, this.core.vector());
        this.attempt = 0;
        this.onState?.('linked');
        this.firstLink?.();
        this.firstLink = null;
        break;
      }
      case T.DELTAS: {
        const count = dv.getUint32(0);
        let at = 4;
        const changed = new Set();
        for (let i = 0; i < count; i++) {
          const n = dv.getUint32(at);
          this.take(payload.slice(at + 4, at + 4 + n), changed);
          at += 4 + n;
        }
        this.send(T.ACK, this.core.vector());
        if (changed.size) this.onChange?.([...changed]);
        break;
      }
      case T.ACK: {
        const n = dv.getUint32(0);
        for (let i = 0; i < n; i++) this.acked.set(dv.getBigUint64(4 + 16 * i), dv.getBigUint64(12 + 16 * i));
        const mine = this.acked.get(this.origin) ?? 0n;
        this.waiters = this.waiters.filter((w) => (mine >= w.seq ? (w.resolve(), false) : true));
        for (const seq of this.own.keys()) if (seq <= mine) this.own.delete(seq);
        break;
      }
      case T.HEARTBEAT: break;
      case T.ERROR: {
        const code = dv.getUint16(0), len = dv.getUint16(2);
        const err = new Error(`the daemon refused: ${errorNames[code] ?? code}: ${new TextDecoder().decode(payload.subarray(4, 4 + len))}`);
        if (errorNames[code] === 'forbidden') {
          // Our unacknowledged writes were refused (the daemon keeps their seqs, withheld): say so, send none again.
          for (const w of this.waiters) w.reject(err);
          this.waiters = [];
          this.own.clear();
        }
        throw err;
      }
      case T.CLOSE: this.lost(gen, new Error('the daemon closed the link')); break;
      case T.SNAPSHOT: this.snapshot(payload, dv); break;
      default: throw new Error(`unknown-type ${type}`);
    }
  }

  /** One SNAPSHOT chunk; once every chunk for one vector is here, each
   * register is merged by the core, the vector raised, and ACK sent. */
  snapshot(payload, dv) {
    const index = dv.getUint32(0), count = dv.getUint32(4);
    const vectorAt = 8, entries = dv.getUint32(vectorAt);
    let at = vectorAt + 4 + 16 * entries;
    const key = hex(payload.subarray(vectorAt, at));
    const records = [];
    for (let n = dv.getUint32(at), i = (at += 4, 0); i < n; i++) {
      const start = at;
      at += 2 + dv.getUint16(at);
      at += registerStateLength(payload, at);
      records.push(payload.slice(start, at));
    }
    if (at !== payload.length || index >= count) throw new Error('malformed: snapshot chunk');
    if (this.chunks?.key !== key || this.chunks.count !== count) this.chunks = { key, count, parts: new Map(), registers: 0 };
    if (!this.chunks.parts.has(index)) this.chunks.registers += records.length;
    // Bounded: a replica holds at most the core's registers.
    if (this.chunks.registers > 4096) throw new Error('a snapshot of more registers than this replica holds (4096)');
    this.chunks.parts.set(index, records);
    if (this.chunks.parts.size < count) return;
    const changed = new Set();
    for (const part of this.chunks.parts.values()) {
      for (const r of part) {
        const code = this.core.merge(r);
        if (code !== 'ok') throw new Error(`snapshot register refused: ${code}`);
        const name = new TextDecoder().decode(r.subarray(2, 2 + ((r[0] << 8) | r[1])));
        changed.add(name.slice(0, name.lastIndexOf('/')));
      }
    }
    this.chunks = null;
    const raised = this.core.raiseVector(payload.slice(vectorAt, vectorAt + 4 + 16 * entries));
    if (raised !== 'ok') throw new Error(`snapshot vector refused: ${raised}`);
    // Deltas that waited for what the snapshot covered.
    for (const [k, bytes] of [...this.waiting]) {
      this.waiting.delete(k);
      this.take(bytes, changed);
    }
    this.send(T.ACK, this.core.vector());
    this.onSnapshot?.(count);
    if (changed.size) this.onChange?.([...changed]);
  }

  /** Gives a delta to the core in its origin's order; one that came before
   * its predecessor waits (at most `waitingMax` of them). */
  take(bytes, changed) {
    for (;;) {
      const code = this.core.take(bytes);
      const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      const origin = dv.getBigUint64(0), seq = dv.getBigUint64(8);
      if (code === 'held') return;
      if (code === 'gap') {
        if (this.waiting.size >= waitingMax) throw new Error(`more than ${waitingMax} deltas wait for their predecessors`);
        this.waiting.set(`${origin}#${seq}`, bytes);
        return;
      }
      // Taken: applied, or refused by the schema (it holds its place all the same).
      if (!taken.has(code)) throw new Error(`malformed: a delta the core cannot take (${code})`);
      changed.add(new TextDecoder().decode(bytes.subarray(26, 26 + dv.getUint16(24))));
      const next = this.waiting.get(`${origin}#${seq + 1n}`);
      if (!next) return;
      this.waiting.delete(`${origin}#${seq + 1n}`);
      bytes = next;
    }
  }

  /** Writes registers of one group (a delta of this replica's origin); resolves when the daemon holds it. */
  async write(group, writes) {
    const ms = BigInt(Date.now());
    this.lastHlc = (ms << 16n) > this.lastHlc ? ms << 16n : this.lastHlc + 1n;
    const seq = (this.ownSeq > this.core.held(this.origin) ? this.ownSeq : this.core.held(this.origin)) + 1n;
    const bytes = encodeDelta({
      origin: this.origin.toString(16).padStart(16, '0'), seq,
      hlc: [this.lastHlc >> 16n, this.lastHlc & 0xffffn], group, writes,
    });
    const code = this.core.take(bytes);
    if (code !== 'ok') throw new Error(`refused locally: ${code}`);
    this.ownSeq = seq;
    this.own.set(seq, bytes);
    const done = new Promise((resolve, reject) => this.waiters.push({ seq, resolve, reject }));
    // Unlinked, it waits in `own`: the next link's VECTOR sends it.
    if (this.state === 'linked') this.sendDeltas([bytes]);
    return done;
  }

  sendDeltas(list) {
    this.send(T.DELTAS, concat([be(list.length, 4), ...list.flatMap((d) => [be(d.length, 4), d])]));
  }

  /** Stops for good. */
  close() {
    this.running = false;
    clearTimeout(this.retry);
    clearTimeout(this.handshakeTimer);
    clearInterval(this.beat);
    this.gen++;
    try { this.ws?.close(); } catch { /* already closed */ }
  }
}
