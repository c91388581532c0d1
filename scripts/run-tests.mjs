#!/usr/bin/env node
// Runs the compiled test files with node's test runner. Arguments narrow the set:
// `node scripts/run-tests.mjs unit` runs test/unit only; a path fragment picks files.
//
// The whole suite (no arguments) runs in two lanes at once: the hypervisor lane (the files
// that drive libvirt and QEMU guests, which share one libvirtd and run one after another)
// and the rest, one file after another. They share no service but the CPU; each line is
// printed with its lane's name, and each lane's summary again at the end.
// OSR_TEST_LANES=1 runs everything in one lane.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const root = path.resolve('dist/test');
const files = [];
(function walk(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name.endsWith('.test.js')) files.push(p);
  }
})(root);
const filters = process.argv.slice(2);
const chosen = files.sort().filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)));
if (chosen.length === 0) {
  console.error(`no test files match ${filters.join(' ')}`);
  process.exit(1);
}
const concurrency = process.env.OSR_TEST_CONCURRENCY ?? '1';

/** the files that drive libvirtd and QEMU guests, and the longest lab runs (to-azure, the site-loss drills): they balance the two lanes' time */
const hypervisor = (f) => /libvirt|kvm|azure-plan|to-azure|site-loss|break-glass/.test(path.basename(f));
const lanes =
  filters.length === 0 && process.env.OSR_TEST_LANES !== '1'
    ? [
        { name: 'hypervisor', files: chosen.filter(hypervisor) },
        { name: 'main', files: chosen.filter((f) => !hypervisor(f)) },
      ].filter((l) => l.files.length > 0)
    : [{ name: '', files: chosen }];

function runLane(lane) {
  const t0 = Date.now();
  const child = spawn(process.execPath, ['--test', `--test-concurrency=${concurrency}`, ...lane.files], { stdio: lanes.length === 1 ? 'inherit' : ['ignore', 'pipe', 'pipe'] });
  const summary = [];
  if (lanes.length > 1) {
    for (const stream of [child.stdout, child.stderr]) {
      readline.createInterface({ input: stream }).on('line', (line) => {
        // the runner's closing summary (ℹ counts, failing tests) is kept to print again at the end
        if (/^ℹ tests \d+/.test(line) || summary.length > 0) summary.push(line);
        console.log(`[${lane.name}] ${line}`);
      });
    }
  }
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ lane, code: code ?? (signal ? 1 : 0), seconds: (Date.now() - t0) / 1000, summary })));
}

const results = await Promise.all(lanes.map(runLane));
if (lanes.length > 1) {
  for (const r of results) {
    console.log(`\n== lane ${r.lane.name}: ${r.lane.files.length} files, ${Math.round(r.seconds)} s, ${r.code === 0 ? 'passed' : `failed (exit ${r.code})`}`);
    for (const l of r.summary) console.log(l);
  }
}
process.exit(results.some((r) => r.code !== 0) ? 1 : 0);
