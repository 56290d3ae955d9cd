// A HalfPair over a WebSocket for browsers (and Node ≥ 20 with
// --experimental-websocket): the ETCP handshake with an Ed25519 key held
// by WebCrypto, then ESTP, with every delta decided by the WebAssembly
// core (spook-core.mjs). No synchronisation rule lives here: this file
// only frames, signs, and keeps the per-origin vector of what it holds.
// Protocol: docs/protocol.md. Not yet: snapshots, reconnection.

import { encodeDelta } from './spook-core.mjs';

const utf8 = new TextEncoder();
const T = { HELLO: 1, AUTH: 2, VECTOR: 3, DELTAS: 4, ACK: 5, SNAPSHOT: 6, HEARTBEAT: 7, ERROR: 8, CLOSE: 9 };

// CRC-32C (Castagnoli), reflected, as the frames carry it.
const crcTable = new Uint32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
export function crc32c(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}
function be(v, k) {
  const b = new Uint8Array(k);
  let x = BigInt.asUintN(8 * k, BigInt(v));
  for (let i = k - 1; i >= 0; i--) { b[i] = Number(x & 0xffn); x >>= 8n; }
  return b;
}
const text16 = (s) => { const b = utf8.encode(s); return concat([be(b.length, 2), b]); };

/** One ETCP frame: "SP", version 1, type, u32 length, payload, CRC-32C of bytes 2 …. */
export function frame(type, payload) {
  const head = concat([Uint8Array.of(0x53, 0x50, 1, type), be(payload.length, 4), payload]);
  return concat([head, be(crc32c(head.subarray(2)), 4)]);
}

/** Reads one whole frame (a WebSocket message carries exactly one); throws on anything wrong. */
export function unframe(bytes) {
  if (bytes.length < 12 || bytes[0] !== 0x53 || bytes[1] !== 0x50) throw new Error('bad-magic');
  if (bytes[2] !== 1) throw new Error('unsupported-version');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = dv.getUint32(4);
  if (bytes.length !== 12 + n) throw new Error('malformed: frame length');
  if (dv.getUint32(8 + n) !== crc32c(bytes.subarray(2, 8 + n))) throw new Error('bad-checksum');
  return { type: bytes[3], payload: bytes.subarray(8, 8 + n) };
}

/** A QStateVector (Map origin BigInt → seq BigInt) as bytes: ascending origins, zeros left out. */
function vectorBytes(vector) {
  const entries = [...vector].filter(([, s]) => s > 0n).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return concat([be(entries.length, 4), ...entries.flatMap(([o, s]) => [be(o, 8), be(s, 8)])]);
}

async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)); }

/** A node's origin: the first 8 bytes of SHA-256 of its public key, big-endian. */
export async function originOf(publicKey) {
  const h = await sha256(publicKey);
  return new DataView(h.buffer).getBigUint64(0);
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
    Object.assign(this, o);
    this.held = new Map();      // origin → highest contiguous seq applied
    this.waiting = new Map();   // "origin#seq" → delta bytes whose predecessor has not come yet
    this.ownSeq = 0n;
    this.lastHlc = 0n;
    this.acked = new Map();     // what the daemon acknowledged holding
    this.waiters = [];
    this.state = 'closed';
  }

  /** Connects and completes the handshake; resolves once the daemon's VECTOR was answered. */
  async connect() {
    this.origin = await originOf(this.publicKey);
    this.nonce = crypto.getRandomValues(new Uint8Array(32));
    this.hello = concat([be(1, 2), Uint8Array.of(1), this.publicKey, this.nonce, be(this.domains.length, 2),
      ...this.domains.map(text16), text16(this.name ?? 'browser')]);
    this.ws = new WebSocket(this.url);
    this.ws.binaryType = 'arraybuffer';
    this.state = 'handshake';
    return new Promise((resolve, reject) => {
      this.ready = { resolve, reject };
      this.ws.onopen = () => this.send(T.HELLO, this.hello);
      // One frame at a time, in order: handling one may await WebCrypto.
      let queue = Promise.resolve();
      this.ws.onmessage = (e) => {
        const bytes = new Uint8Array(e.data);
        queue = queue.then(() => this.receive(bytes)).catch((err) => this.fail(err));
      };
      this.ws.onclose = () => { this.state = 'closed'; clearInterval(this.beat); reject(new Error('closed')); };
      this.ws.onerror = () => reject(new Error(`cannot reach ${this.url}`));
    });
  }

  send(type, payload) { this.ws.send(frame(type, payload)); }

  fail(err) {
    this.error = err;
    try { this.ws.close(); } catch { /* already closed */ }
    this.ready?.reject(err);
  }

  async receive(bytes) {
    const { type, payload } = unframe(bytes);
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
        this.send(T.VECTOR, vectorBytes(this.held));
        this.beat = setInterval(() => this.send(T.HEARTBEAT, be(Date.now(), 8)), 200);
        break;
      }
      case T.VECTOR:
        this.send(T.ACK, vectorBytes(this.held));
        this.ready?.resolve();
        this.ready = null;
        break;
      case T.DELTAS: {
        const count = dv.getUint32(0);
        let at = 4;
        const changed = new Set();
        for (let i = 0; i < count; i++) {
          const n = dv.getUint32(at);
          this.take(payload.slice(at + 4, at + 4 + n), changed);
          at += 4 + n;
        }
        this.send(T.ACK, vectorBytes(this.held));
        if (changed.size) this.onChange?.([...changed]);
        break;
      }
      case T.ACK: {
        const n = dv.getUint32(0);
        for (let i = 0; i < n; i++) this.acked.set(dv.getBigUint64(4 + 16 * i), dv.getBigUint64(12 + 16 * i));
        this.waiters = this.waiters.filter((w) => ((this.acked.get(this.origin) ?? 0n) >= w.seq ? (w.resolve(), false) : true));
        break;
      }
      case T.HEARTBEAT: break;
      case T.ERROR: {
        const code = dv.getUint16(0), len = dv.getUint16(2);
        throw new Error(`daemon: error ${code}: ${new TextDecoder().decode(payload.subarray(4, 4 + len))}`);
      }
      case T.CLOSE: this.ws.close(); break;
      case T.SNAPSHOT: throw new Error('snapshots are not implemented in this HalfPair yet');
      default: throw new Error(`unknown-type ${type}`);
    }
  }

  /** Applies a delta once its origin's previous seqs are held; later ones wait for it. */
  take(bytes, changed) {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let origin = dv.getBigUint64(0), seq = dv.getBigUint64(8);
    const have = this.held.get(origin) ?? 0n;
    if (seq <= have) return;
    if (seq > have + 1n) { this.waiting.set(`${origin}#${seq}`, bytes); return; }
    for (;;) {
      this.core.apply(bytes); // a delta the schema refuses is held all the same (its place in the origin's seqs)
      const groupLen = new DataView(bytes.buffer, bytes.byteOffset).getUint16(24);
      changed.add(new TextDecoder().decode(bytes.subarray(26, 26 + groupLen)));
      this.held.set(origin, seq);
      seq += 1n;
      const next = this.waiting.get(`${origin}#${seq}`);
      if (!next) return;
      this.waiting.delete(`${origin}#${seq}`);
      bytes = next;
    }
  }

  /** Writes registers of one group (a delta of this replica's origin); resolves when the daemon holds it. */
  async write(group, writes) {
    const ms = BigInt(Date.now());
    this.lastHlc = (ms << 16n) > this.lastHlc ? ms << 16n : this.lastHlc + 1n;
    this.ownSeq += 1n;
    const bytes = encodeDelta({
      origin: this.origin.toString(16).padStart(16, '0'), seq: this.ownSeq,
      hlc: [this.lastHlc >> 16n, this.lastHlc & 0xffffn], group, writes,
    });
    const code = this.core.apply(bytes);
    if (code !== 'ok') throw new Error(`refused locally: ${code}`);
    this.held.set(this.origin, this.ownSeq);
    const seq = this.ownSeq;
    const done = new Promise((resolve) => this.waiters.push({ seq, resolve }));
    this.send(T.DELTAS, concat([be(1, 4), be(bytes.length, 4), bytes]));
    return done;
  }

  close() {
    clearInterval(this.beat);
    this.ws?.close();
  }
}
