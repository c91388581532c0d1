/**
 * The systemd units in deploy/: systemd-analyze verify accepts them without a warning, they
 * restart on failure and keep their hardening, and every flag of their ExecStart is one the
 * osr command has.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { tempDir } from '../support/lab.js';

const DEPLOY = path.resolve('deploy');
const UNITS = ['osr-vault.service', 'osr-provider.service', 'osr-agent.service'];
const INSTALLED_OSR = '/usr/local/bin/osr';

function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of text.split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (m) out.set(m[1]!, [...(out.get(m[1]!) ?? []), m[2]!]);
  }
  return out;
}

const hasAnalyze = spawnSync('systemd-analyze', ['--version']).status === 0;

test('systemd-analyze verify accepts the units, without a warning', { skip: !hasAnalyze && !process.env.CI ? 'systemd-analyze is not installed (.ci/run installs the systemd package)' : false }, () => {
  assert.ok(hasAnalyze, 'systemd-analyze is missing: CI installs the systemd package');
  // verify wants ExecStart's program to exist: the units' /usr/local/bin/osr becomes this checkout's osr
  const dir = tempDir('osr-units-');
  try {
    const osr = path.join(dir, 'osr');
    fs.writeFileSync(osr, `#!/bin/sh\nexec "${process.execPath}" "${OSR_BIN}" "$@"\n`, { mode: 0o755 });
    for (const u of UNITS) fs.writeFileSync(path.join(dir, u), fs.readFileSync(path.join(DEPLOY, u), 'utf8').replaceAll(INSTALLED_OSR, osr));
    const r = spawnSync('systemd-analyze', ['verify', ...UNITS.map((u) => path.join(dir, u))], { encoding: 'utf8', env: { ...process.env, SYSTEMD_LOG_COLOR: '0' } });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '', `systemd-analyze verify warned:\n${r.stderr}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

for (const unit of UNITS) {
  test(`${unit}: restarts on failure, is hardened, and runs a real osr command with real flags`, () => {
    const d = directives(fs.readFileSync(path.join(DEPLOY, unit), 'utf8'));
    assert.deepEqual(d.get('Restart'), ['on-failure']);
    for (const [k, v] of [['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'], ['UMask', '0077']]) assert.deepEqual(d.get(k!), [v], `${unit}: ${k}=${v}`);
    assert.ok(d.has('CapabilityBoundingSet'), `${unit}: CapabilityBoundingSet`);
    const exec = d.get('ExecStart')![0]!.split(/\s+/);
    assert.equal(exec[0], INSTALLED_OSR);
    const command = exec[1]!;
    assert.equal(`osr-${command}.service`, unit);
    const help = execFileSync(process.execPath, [OSR_BIN, command, '--help'], { encoding: 'utf8' });
    for (const flag of exec.filter((a) => a.startsWith('--'))) assert.match(help, new RegExp(`${flag}[ ,<]`), `${unit}: osr ${command} has no ${flag}`);
    // what the process writes is writable under ProtectSystem=strict
    const dataDir = exec[exec.indexOf('--data-dir') + 1]!;
    assert.ok(d.get('ReadWritePaths')!.join(' ').split(/\s+/).includes(dataDir), `${unit}: ${dataDir} is not in ReadWritePaths`);
    assert.ok(d.get('StateDirectory')!.join(' ').split(/\s+/).some((s) => `/var/lib/${s}` === dataDir), `${unit}: ${dataDir} is not a StateDirectory`);
    if (command !== 'agent') assert.deepEqual(d.get('User'), ['osr'], `${unit}: runs as the osr user, not root`);
  });
}
