// The conformance vectors (Tests/Conformance/vectors) against the
// WebAssembly core under Node: the same files the Swift core passes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { loadCore } from '../spook-core.mjs';
import { checkVector } from './vectors.mjs';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const core = await loadCore(readFileSync(here('../build/spook_core.wasm')));
const dir = here('../../Tests/Conformance/vectors/');
const files = readdirSync(dir).filter((f) => f.endsWith('.json')).sort();

test('there are vectors to run', () => assert.ok(files.length >= 52, `${files.length} files`));

for (const file of files) {
  const v = JSON.parse(readFileSync(dir + file, 'utf8'));
  test(v.name, () => assert.deepEqual(checkVector(core, v, file.length * 7919), []));
}
