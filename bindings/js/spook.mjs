// A thin client for the Spook Edge local API from Node: one JSON object per
// line over the node's Unix socket (docs/api.md). No retries, no caching, no
// conflict resolution: the node does that.
//
//   import { connect } from "./spook.mjs";
//   const c = await connect("/run/spook-edge/edge.sock");
//   await c.set("site1.line3/pump7/speed", 1500);        // resolves once durable
//   for await (const e of await c.watch("site1.line3/")) console.log(e.register);
import net from "node:net";

export const DEFAULT_SOCKET = "/run/spook-edge/edge.sock";

/** An answer with "ok": false: `code` (bad-request, invalid, not-found, refused, busy, internal) and `message`. */
export class SpookError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
    this.message = message;
  }
}

/** Marks a number as a float register value (JSON cannot tell 2 from 2.0). */
export const float = (x) => ({ float: Number.isFinite(x) ? x : Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf" });

/** A JS value as the API writes it: integers as numbers (or BigInt), other numbers and bytes tagged. */
export function encodeValue(v) {
  if (v === null || typeof v === "boolean" || typeof v === "string") return v;
  if (typeof v === "bigint") return v; // written exactly by `serialize`
  if (typeof v === "number") return Number.isInteger(v) ? v : float(v);
  if (v instanceof Uint8Array) return { bytes: Buffer.from(v).toString("hex") };
  if (typeof v === "object" && ("float" in v || "bytes" in v)) return v;
  throw new TypeError(`a register holds null, boolean, number, bigint, string or Uint8Array, not ${typeof v}`);
}

/** The API's JSON for a value, as a JS value (floats as numbers, bytes as Uint8Array). */
export function decodeValue(v) {
  if (v && typeof v === "object") {
    if ("float" in v) return typeof v.float === "number" ? v.float : { nan: NaN, inf: Infinity, "-inf": -Infinity }[v.float];
    if ("bytes" in v) return new Uint8Array(Buffer.from(v.bytes, "hex"));
  }
  return v;
}

const serialize = (request) => JSON.stringify(request, (_, v) => (typeof v === "bigint" ? `__bigint__${v}` : v)).replace(/"__bigint__(-?\d+)"/g, "$1");

/** Lines from a socket, as an async queue of parsed JSON (null once closed). */
function lines(socket) {
  let buffer = "";
  const ready = [];
  const waiting = [];
  let closed = false;
  const push = (item) => (waiting.length ? waiting.shift()(item) : ready.push(item));
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    buffer += chunk;
    let i;
    while ((i = buffer.indexOf("\n")) >= 0) {
      push(JSON.parse(buffer.slice(0, i)));
      buffer = buffer.slice(i + 1);
    }
  });
  const end = () => {
    if (!closed) { closed = true; push(null); }
  };
  socket.on("close", end);
  socket.on("error", end);
  return () => (ready.length ? Promise.resolve(ready.shift()) : closed ? Promise.resolve(null) : new Promise((r) => waiting.push(r)));
}

function open(path) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(path);
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
  });
}

export class Client {
  constructor(path, socket) {
    this.path = path;
    this.socket = socket;
    this.next = lines(socket);
    this.id = 0;
    this.queue = Promise.resolve();
  }

  /** Sends one request, resolves with its answer; rejects with SpookError if it failed. Requests are serialised. */
  call(request) {
    const run = async () => {
      this.socket.write(serialize({ ...request, id: ++this.id }) + "\n");
      const answer = await this.next();
      if (answer === null) throw new Error(`${this.path}: the node closed the connection`);
      if (!answer.ok) throw new SpookError(answer.code ?? "bad-request", answer.error ?? "failed");
      return answer;
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => {});
    return result;
  }

  async get(register) { return (await this.call({ op: "get", register })).register; }
  async value(register) { return decodeValue((await this.get(register)).value); }
  async set(register, value) {
    const a = await this.call({ op: "set", register, value: encodeValue(value) });
    return { origin: a.origin, seq: a.seq };
  }
  async setGroup(group, values) {
    const encoded = Object.fromEntries(Object.entries(values).map(([k, v]) => [k, encodeValue(v)]));
    const a = await this.call({ op: "set", group, values: encoded });
    return { origin: a.origin, seq: a.seq };
  }
  async list(prefix = "") { return (await this.call({ op: "list", prefix })).registers; }
  async history(register) {
    return (await this.call({ op: "history", register })).history.map((e) => ({ ...e, value: decodeValue(e.value) }));
  }
  async status() { return this.call({ op: "status" }); }

  /**
   * Watches registers under `prefix` on a connection of its own. Resolves once
   * the watch is in place, with an async iterator of changes that ends when
   * the node closes the connection; `close()` stops it.
   */
  async watch(prefix = "", { every = false } = {}) {
    const socket = await open(this.path);
    const next = lines(socket);
    socket.write(JSON.stringify({ op: "watch", prefix, mode: every ? "every" : "latest" }) + "\n");
    const first = await next();
    if (!first || !first.ok) {
      socket.destroy();
      throw new SpookError(first?.code ?? "internal", first?.error ?? "the node closed the connection");
    }
    return {
      async *[Symbol.asyncIterator]() {
        try {
          for (let e = await next(); e !== null; e = await next()) {
            if ("value" in e) e.value = decodeValue(e.value);
            yield e;
          }
        } finally {
          socket.destroy();
        }
      },
      close: () => socket.destroy(),
    };
  }

  close() { this.socket.end(); }
}

/** Connects to a node's API socket (default: $SPOOK_SOCKET, else /run/spook-edge/edge.sock). */
export async function connect(path = process.env.SPOOK_SOCKET ?? DEFAULT_SOCKET) {
  return new Client(path, await open(path));
}
