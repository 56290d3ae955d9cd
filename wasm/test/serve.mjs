// A static file server on 127.0.0.1 for the browser tests: the repository's
// wasm/ and Tests/Conformance/vectors/ folders (GET only), and
// /Tests/Conformance/vectors/index.json listing the vector files.
//   node serve.mjs REPOSITORY_ROOT   (prints "ready PORT")
import { createServer } from 'node:http';
import { readFile, readdir } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';

const root = process.argv[2];
const types = { '.html': 'text/html', '.mjs': 'text/javascript', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json' };
const allowed = ['/wasm/', '/Tests/Conformance/vectors/'];

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname));
  try {
    if (req.method !== 'GET' || !allowed.some((p) => path.startsWith(p))) throw Object.assign(new Error('not here'), { status: 404 });
    if (path === '/Tests/Conformance/vectors/index.json') {
      const files = (await readdir(join(root, 'Tests/Conformance/vectors'))).filter((f) => f.endsWith('.json')).sort();
      res.writeHead(200, { 'content-type': types['.json'] }).end(JSON.stringify(files));
      return;
    }
    const body = await readFile(join(root, path));
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' }).end(body);
  } catch (e) {
    res.writeHead(e.status ?? 404, { 'content-type': 'text/plain' }).end(`${path}: ${e.message}\n`);
  }
});
server.listen(0, '127.0.0.1', () => console.log(`ready ${server.address().port}`));
