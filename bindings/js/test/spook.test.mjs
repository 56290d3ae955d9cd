// The Node binding against a real spook-edge ($SPOOK_EDGE, else the debug build).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { connect, float, SpookError, decodeValue } from "../spook.mjs";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../../..");
const binary = process.env.SPOOK_EDGE ?? path.join(root, ".build/debug/spook-edge");
let node, socket, dir;

before(async () => {
  if (!existsSync(binary)) throw new Error(`${binary} is not built: run swift build, or set SPOOK_EDGE`);
  dir = mkdtempSync(path.join(tmpdir(), "spook-js-"));
  socket = path.join(dir, "edge.sock");
  writeFileSync(path.join(dir, "edge.toml"), `
[node]
name = "js"
key = "${dir}/edge.key"
data = "${dir}/edge.db"
sync = "normal"
[api]
socket = "${socket}"
[[upstream]]
name = "nowhere"
url = "unix://${dir}/nowhere.sock"
key = "${"ab".repeat(32)}"
[[register]]
domain = "site1.js"
name = "count"
type = "int"
`);
  node = spawn(binary, ["run", "-c", path.join(dir, "edge.toml"), "--log-level", "error"], { stdio: ["ignore", "pipe", "inherit"] });
  const ready = createInterface({ input: node.stdout });
  await new Promise((resolve, reject) => {
    ready.once("line", (l) => (l.includes("ready") ? resolve() : reject(new Error(l))));
    node.once("exit", (code) => reject(new Error(`spook-edge exited ${code}`)));
  });
});

after(async () => {
  if (node && node.exitCode === null) {
    const exited = new Promise((resolve) => node.once("exit", resolve));
    node.kill("SIGTERM");
    await exited;
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("set and get every value type", async () => {
  const c = await connect(socket);
  for (const [name, value, expected] of [["i", 1500, 1500], ["f", 21.5, 21.5], ["whole", float(2), 2], ["s", "hello", "hello"], ["b", true, true],
                                          ["raw", new Uint8Array([0, 0xbe, 0xef]), new Uint8Array([0, 0xbe, 0xef])], ["big", 9007199254740993n, 9007199254740992]]) {
    const { origin, seq } = await c.set(`site1.js/values/${name}`, value);
    assert.equal(origin.length, 16);
    assert.ok(seq >= 1);
    assert.deepEqual(await c.value(`site1.js/values/${name}`), expected, name);
  }
  assert.deepEqual((await c.get("site1.js/values/whole")).value, { float: 2 }, "float() makes 2 a float");
  c.close();
});

test("setGroup is one delta; history is newest first", async () => {
  const c = await connect(socket);
  const { origin, seq } = await c.setGroup("site1.js/pump", { speed: 3, mode: "auto" });
  for (const r of ["speed", "mode"]) assert.ok((await c.get(`site1.js/pump/${r}`)).stamp.endsWith(`@${origin}#${seq}`));
  for (const v of [1, 2, 3]) await c.set("site1.js/h/r", v);
  assert.deepEqual((await c.history("site1.js/h/r")).slice(0, 3).map((e) => e.value), [3, 2, 1]);
  c.close();
});

test("watch is an async iterator of changes", async () => {
  const c = await connect(socket);
  const changes = await c.watch("site1.js/w/", { every: true }); // in place once this resolves
  for (const v of [10, 11, 12]) await c.set("site1.js/w/r", v);
  const seen = [];
  for await (const e of changes) {
    seen.push(e.value);
    if (seen.length === 3) break;
  }
  assert.deepEqual(seen, [10, 11, 12]);
  c.close();
});

test("errors carry the API's code, and the connection serves on", async () => {
  const c = await connect(socket);
  for (const [call, code] of [[() => c.get("site1.js/nobody/wrote"), "not-found"], [() => c.set("site1.js/t/count", "NaN?"), "refused"],
                              [() => c.set("site1.js/g/$state", 1), "refused"], [() => c.get("not a name"), "invalid"], [() => c.call({ op: "nonsense" }), "bad-request"]]) {
    await assert.rejects(call, (e) => e instanceof SpookError && e.code === code);
  }
  await c.set("site1.js/after/errors", 1);
  assert.equal(await c.value("site1.js/after/errors"), 1);
  // Requests sent together are answered in order.
  const values = await Promise.all([1, 2, 3].map(async (v) => { await c.set(`site1.js/many/r${v}`, v); return c.value(`site1.js/many/r${v}`); }));
  assert.deepEqual(values, [1, 2, 3]);
  assert.equal((await c.status()).role, "edge");
  c.close();
});

test("tagged values decode", () => {
  assert.equal(decodeValue({ float: "-inf" }), -Infinity);
  assert.ok(Number.isNaN(decodeValue({ float: "nan" })));
});
