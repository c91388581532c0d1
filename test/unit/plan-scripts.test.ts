/**
 * Recovery plan scripts at the provider: a path under the scripts directory only, the
 * run's context on standard input and in $OSR_CONTEXT_FILE, a non-zero exit or a timeout
 * fails the action with ACTION_FAILED (the whole process group killed), the end of the
 * output kept.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { runScript } from '../../src/provider/scripts.js';
import { assertRejectsCode, withDir } from '../support/unit.js';

const script = (dir: string, name: string, body: string) => {
  fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
  fs.writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
};

test('a script gets the context on stdin and in OSR_CONTEXT_FILE; its output comes back', withDir(async (dir) => {
  script(dir, 'hooks/echo.sh', 'read -r line; echo "stdin:$line"; grep -q \'"plan"\' "$OSR_CONTEXT_FILE" && echo file-ok; echo warn >&2');
  const r = await runScript(dir, { script: 'hooks/echo.sh', context: { plan: { name: 'p' } }, timeoutSeconds: 10 });
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, 'stdin:{\nfile-ok\n');
  assert.equal(r.stderr, 'warn\n');
}));

test('paths outside the scripts directory, missing and non-executable scripts are refused', withDir(async (dir) => {
  for (const bad of ['/bin/sh', '../x.sh', 'a/../../x.sh', '']) await assertRejectsCode(runScript(dir, { script: bad, context: {}, timeoutSeconds: 1 }), 'INVALID_ARGUMENT', /under the provider's scripts directory/);
  await assertRejectsCode(runScript(dir, { script: 'none.sh', context: {}, timeoutSeconds: 1 }), 'NOT_FOUND', /not in the provider's scripts directory/);
  fs.writeFileSync(path.join(dir, 'plain.sh'), 'echo hi\n', { mode: 0o644 });
  await assertRejectsCode(runScript(dir, { script: 'plain.sh', context: {}, timeoutSeconds: 1 }), 'INVALID_ARGUMENT', /not executable/);
}));

test('a non-zero exit fails the action with the last line of stderr; a long output keeps its end', withDir(async (dir) => {
  script(dir, 'fail.sh', 'echo "first" >&2; echo "database not answering" >&2; exit 3');
  const e = await assertRejectsCode(runScript(dir, { script: 'fail.sh', context: {}, timeoutSeconds: 10 }), 'ACTION_FAILED', /exited with code 3: database not answering/);
  assert.equal((e.details as { exitCode: number }).exitCode, 3);
  script(dir, 'long.sh', 'i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done');
  const r = await runScript(dir, { script: 'long.sh', context: {}, timeoutSeconds: 10 });
  assert.ok(r.stdout.length <= 16 * 1024 && r.stdout.endsWith('line 2999\n'), `${r.stdout.length} bytes kept`);
  assert.ok(!r.stdout.includes('line 0\n'));
}));

test('a script that outlives its timeout is killed with its children', withDir(async (dir) => {
  const marker = path.join(dir, 'child-alive');
  script(dir, 'hang.sh', `(sleep 3; touch "${marker}") & sleep 30`);
  const t0 = Date.now();
  await assertRejectsCode(runScript(dir, { script: 'hang.sh', context: {}, timeoutSeconds: 1 }), 'ACTION_FAILED', /did not finish within 1 s; it was killed/);
  assert.ok(Date.now() - t0 < 5000);
  await new Promise((r) => setTimeout(r, 3500));
  assert.equal(fs.existsSync(marker), false, 'the script\'s background child was killed too');
}));

test('a script that leaves a process running ends when it exits, and that process is left alone', withDir(async (dir) => {
  const marker = path.join(dir, 'left-running');
  script(dir, 'daemon.sh', `(sleep 2; touch "${marker}") & echo started`);
  const t0 = Date.now();
  const r = await runScript(dir, { script: 'daemon.sh', context: {}, timeoutSeconds: 20 });
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, 'started\n');
  assert.ok(Date.now() - t0 < 1900, `answered after ${Date.now() - t0} ms, before the process it left finished`);
  await new Promise((res) => setTimeout(res, 2500));
  assert.ok(fs.existsSync(marker), 'the process the script left running was not killed');
}));
