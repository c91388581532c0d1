/**
 * The runtime osr is built and tested on: the Node.js of the `node` dependency (24 LTS),
 * which npm puts first on the PATH of every script, and native addons built for it —
 * the project's own (native/), better-sqlite3, zstd-napi and xxhash-addon. An addon built
 * for another Node.js either does not load or is missing, and osr would fall back or fail.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import SQLite from 'better-sqlite3';
import xxhash from 'xxhash-addon';
import { compress, decompress } from 'zstd-napi';
import { addon } from '../../src/agent/io/native.js';
import { runtimeProblem } from '../../src/cli/runtime-check.js';
import { withDir } from '../support/unit.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { engines: { node: string }; dependencies: Record<string, string> };
const major = (v: string) => Number(/(\d+)/.exec(v)?.[1]);

test('runs on the Node.js of the node dependency (24 LTS), which meets engines', () => {
  const wanted = major(pkg.dependencies['node']!);
  assert.equal(wanted, 24);
  assert.equal(major(process.version), wanted, `tests run on Node.js ${process.version} (${process.execPath}), not ${wanted}`);
  assert.ok(major(process.version) >= major(pkg.engines.node), `engines asks for ${pkg.engines.node}`);
  if (process.env['npm_lifecycle_event']) {
    // npm scripts find node in node_modules/.bin: the binary the `node` package installed
    const installed = JSON.parse(fs.readFileSync(path.join(root, 'node_modules', 'node', 'package.json'), 'utf8')) as { version: string };
    assert.equal(process.versions.node, installed.version);
  }
  // child processes (lab processes, tools) are started with process.execPath: the same Node.js
  const child = spawnSync(process.execPath, ['-p', 'process.version'], { encoding: 'utf8' });
  assert.equal(child.stdout.trim(), process.version);
});

test('the project addon (native/) is built for this Node.js and works', withDir(async (dir) => {
  assert.ok(addon, 'native/build/Release/osr_sparse.node is missing: npm ci builds it');
  const file = path.join(dir, 'data.img');
  const block = Buffer.alloc(4096, 0x5a);
  fs.writeFileSync(file, Buffer.alloc(0));
  fs.truncateSync(file, 1 << 20);
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, block, 0, block.length, 65536);
    assert.equal(addon.seekData(fd, 0), 65536);
    const digests = await addon.hashBlocks(fd, 65536, block.length, block.length);
    assert.deepEqual(digests, xxhash.XXHash128.hash(block));
  } finally {
    fs.closeSync(fd);
  }
}));

test('better-sqlite3 opens an in-memory database', () => {
  const db = new SQLite(':memory:');
  try {
    db.exec('create table t (k integer primary key, v text)');
    db.prepare('insert into t (v) values (?)').run('osr');
    assert.deepEqual(db.prepare('select k, v from t').get(), { k: 1, v: 'osr' });
    assert.match(String((db.prepare('select sqlite_version() as v').get() as { v: string }).v), /^3\./);
  } finally {
    db.close();
  }
});

test('zstd-napi compresses and decompresses', () => {
  const data = Buffer.concat([Buffer.alloc(65536, 1), Buffer.from('osr'.repeat(1000))]);
  const packed = compress(data);
  assert.ok(packed.length < data.length / 10);
  assert.deepEqual(decompress(packed), data);
});

test('xxhash-addon hashes with XXH3-128', () => {
  // XXH3_128bits of the empty input, seed 0 (canonical form)
  assert.equal(xxhash.XXHash128.hash(Buffer.alloc(0)).toString('hex'), '99aa06d3014798d86001c324468d497f');
  const h = new xxhash.XXHash128(Buffer.alloc(8));
  h.update(Buffer.from('o'));
  h.update(Buffer.from('sr'));
  assert.deepEqual(h.digest(), xxhash.XXHash128.hash(Buffer.from('osr')));
});

test('the CLI refuses a Node.js its addons were not built for, with what to do', () => {
  const built = JSON.parse(fs.readFileSync(path.join(root, 'native', 'build', 'node.json'), 'utf8')) as { version: string; execPath: string };
  assert.equal(built.version, process.versions.node, 'npm ci built the addons for the Node.js the tests run on');
  assert.equal(runtimeProblem(), undefined);
  assert.equal(runtimeProblem('24.99.0', { version: '24.21.0', execPath: '/x/node' }), undefined);
  assert.match(runtimeProblem('20.20.2', { version: '24.21.0', execPath: '/x/node' })!, /needs Node\.js 22 or newer, and this is v20\.20\.2 .*node_modules\/\.bin\/node dist\/src\/cli\/osr\.js/);
  assert.match(runtimeProblem('22.12.0', { version: '24.21.0', execPath: '/x/node' })!, /built for Node\.js v24\.21\.0 \(\/x\/node\), and this is v22\.12\.0 .*node scripts\/build-native\.mjs/);
  assert.match(runtimeProblem('20.20.2', undefined)!, /needs Node\.js 22 or newer/);
  const osr = spawnSync(process.execPath, [path.join(root, 'dist', 'src', 'cli', 'osr.js'), '--version'], { encoding: 'utf8' });
  assert.equal(osr.status, 0, osr.stderr);
});
