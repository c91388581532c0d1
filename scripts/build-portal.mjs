#!/usr/bin/env node
// Builds the portal (portal/ → dist/portal): type-checks it, then bundles it with Vite.
// `--if-stale` builds only when dist/portal is missing or older than a file under portal/
// (what `npm start` does, so a fresh clone gets a portal and a second start is quick).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..');
const src = path.join(root, 'portal');
const out = path.join(root, 'dist', 'portal', 'index.html');

function newest(dir) {
  let t = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : fs.statSync(p).mtimeMs);
  }
  return t;
}

if (process.argv.includes('--if-stale') && fs.existsSync(out) && fs.statSync(out).mtimeMs >= newest(src)) process.exit(0);

const tsc = spawnSync(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(src, 'tsconfig.json')], { stdio: 'inherit' });
if (tsc.status !== 0) process.exit(tsc.status ?? 1);
const { build } = await import('vite');
await build({ configFile: path.join(src, 'vite.config.ts') });
console.log(`portal built into ${path.relative(process.cwd(), path.dirname(out)) || '.'}`);
