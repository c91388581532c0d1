/**
 * Who may use an agent's local API, against real agent processes: another Unix user
 * cannot open its socket, the TCP API wants its token, a foreign Host header is refused,
 * and no request names a program for the agent to run.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { parseAgentAddress } from '../../src/cli/agent-client.js';
import { ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { createVm, startPair, tempDir, waitFor, type Pair } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';

let dir: string;
let pkiDir: string;
const started: RunningAgent[] = [];
let pair: Pair | undefined;

before(async () => {
  dir = tempDir('osr-api-');
  // every directory above the agent's data may be entered by anyone: only the agent's own
  // run directory and socket keep other users out
  fs.chmodSync(dir, 0o755);
  pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['a']);
});
after(async () => {
  await pair?.stop();
  for (const a of started) await stopAgentProcess(a, 'SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

async function agent(name: string, extraArgs: string[] = []): Promise<RunningAgent> {
  const a = await startAgentProcess({ name: 'a', dataDir: path.join(dir, name), pkiDir, extraArgs, logFile: path.join(dir, `${name}.log`) });
  started.push(a);
  return a;
}

interface Answer {
  status: number;
  body: { code?: string; message?: string } & Record<string, unknown>;
}

/** One HTTP request with the headers exactly as given (no Host added but what `headers` says). */
function request(address: string, method: string, urlPath: string, headers: Record<string, string>, body?: unknown): Promise<Answer> {
  const payload = body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined;
  return new Promise((resolve, reject) => {
    const req = http.request({ ...parseAgentAddress(address), method, path: urlPath, agent: false, setHost: false, headers: { ...headers, ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, body: text ? (JSON.parse(text) as Answer['body']) : {} });
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}

const isRoot = process.getuid?.() === 0;

test('by default the API is a socket only the agent\'s user can open: user nobody gets EACCES and the VM keeps running', { skip: !isRoot && 'needs root to run a process as user nobody' }, async () => {
  const a = await agent('sock');
  const runDir = path.join(dir, 'sock', 'run');
  const socketPath = path.join(runDir, 'api.sock');
  assert.equal(a.apiUrl, `unix:${socketPath}`);
  const kept = JSON.parse(fs.readFileSync(path.join(runDir, 'agent.json'), 'utf8')) as { api: string };
  assert.equal(kept.api, `unix:${socketPath}`, 'run/agent.json says where the API is');
  assert.ok(fs.lstatSync(socketPath).isSocket());
  assert.equal(fs.statSync(socketPath).mode & 0o777, 0o600);
  assert.equal(fs.statSync(runDir).mode & 0o777, 0o700);
  await createVm(a, 'vm1', ['1M']);

  // a second Unix user tries the address the agent published, and the socket itself
  const script = `
    const http = require('node:http');
    const [address, socketPath] = process.argv.slice(1);
    const target = address.startsWith('unix:') ? { socketPath: address.slice(5) } : { host: new URL(address).hostname, port: Number(new URL(address).port) };
    const tryStop = (t) => new Promise((resolve) => {
      const req = http.request({ ...t, method: 'POST', path: '/v1/vms/vm1/stop', headers: { host: 'localhost', 'content-type': 'application/json' } }, (res) => {
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode }));
      });
      req.on('error', (e) => resolve({ error: e.code }));
      req.end('{}');
    });
    (async () => {
      const published = await tryStop(target);
      const socket = await tryStop({ socketPath });
      console.log(JSON.stringify({ uid: process.getuid(), published, socket }));
    })();`;
  const child = spawn(process.execPath, ['-e', script, a.apiUrl, socketPath], { uid: 65534, gid: 65534, cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as { uid: number; published: { error?: string; status?: number }; socket: { error?: string } };
  assert.equal(r.uid, 65534);
  assert.deepEqual(r.published, { error: 'EACCES' }, 'user nobody reached the API the agent published');
  assert.deepEqual(r.socket, { error: 'EACCES' });
  const vms = await a.api.get<{ name: string; running: boolean }[]>('/v1/vms');
  assert.equal(vms.find((v) => v.name === 'vm1')?.running, true, 'the VM was stopped by another user');
});

test('a socket left by a crash is replaced; anything else at its place, or a linked run directory, is refused', async () => {
  const a = await agent('stale');
  const runDir = path.join(dir, 'stale', 'run');
  const socketPath = path.join(runDir, 'api.sock');
  await stopAgentProcess(a, 'SIGKILL');
  assert.ok(fs.lstatSync(socketPath).isSocket(), 'the killed agent left its socket');
  const again = await agent('stale');
  assert.equal((await again.api.get<{ name: string }>('/v1/status')).name, 'a');
  await stopAgentProcess(again, 'SIGTERM');
  assert.equal(fs.existsSync(socketPath), false, 'a clean stop removes the socket');

  // a regular file where the socket goes is not the agent's to delete
  fs.writeFileSync(socketPath, 'not a socket');
  await assert.rejects(agent('stale'), /exited with code [1-9]/);
  assert.equal(fs.readFileSync(socketPath, 'utf8'), 'not a socket');
  assert.match(fs.readFileSync(path.join(dir, 'stale.log'), 'utf8'), /CONFIG_INVALID.*api\.sock exists and is not a socket/);
  fs.rmSync(socketPath);

  // a run directory that is a link elsewhere is never followed
  const elsewhere = path.join(dir, 'elsewhere');
  fs.mkdirSync(elsewhere, { mode: 0o755 });
  fs.rmSync(runDir, { recursive: true });
  fs.symlinkSync(elsewhere, runDir);
  await assert.rejects(agent('stale'), /exited with code [1-9]/);
  assert.match(fs.readFileSync(path.join(dir, 'stale.log'), 'utf8'), /must be a directory, not a symbolic link/);
  assert.deepEqual(fs.readdirSync(elsewhere), []);
  assert.equal(fs.statSync(elsewhere).mode & 0o777, 0o755);
});

test('the agent runs on the kind of host --host names: lab (the default) or libvirt, or else it does not start (CONFIG_INVALID)', async () => {
  const lab = await agent('host-lab', ['--host', 'lab']);
  await lab.api.post('/v1/vms', { name: 'vm1', disks: ['1M'] });
  assert.deepEqual((await lab.api.get<{ name: string; running: boolean }[]>('/v1/vms')).map((v) => [v.name, v.running]), [['vm1', false]]);
  await stopAgentProcess(lab, 'SIGTERM');

  await assert.rejects(agent('host-other', ['--host', 'hyperv']), /exited with code [1-9]/);
  assert.match(fs.readFileSync(path.join(dir, 'host-other.log'), 'utf8'), /CONFIG_INVALID.*--host hyperv .*the kinds are: lab, libvirt/);
  assert.equal(fs.existsSync(path.join(dir, 'host-other')), false, 'nothing is made for a kind of host the agent does not know');
});

test('on TCP every request needs the token: none or a wrong one is AUTH_FAILED, the right one works', async () => {
  const a = await agent('tcp', ['--api', '127.0.0.1:0']);
  assert.match(a.apiUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
  const tokenFile = path.join(dir, 'tcp', 'api-token');
  assert.equal(a.apiTokenFile, tokenFile);
  assert.equal(fs.statSync(tokenFile).mode & 0o777, 0o600);
  const token = fs.readFileSync(tokenFile, 'utf8').trim();
  assert.ok(token.length >= 32);
  const host = a.apiUrl.slice('http://'.length);

  const none = await request(a.apiUrl, 'GET', '/v1/status', { host });
  assert.equal(none.status, 401);
  assert.equal(none.body.code, 'AUTH_FAILED');
  const wrong = await request(a.apiUrl, 'POST', '/v1/vms', { host, authorization: `Bearer ${token.slice(0, -1)}x` }, { name: 'vm1', disks: ['1M'] });
  assert.equal(wrong.status, 403);
  assert.equal(wrong.body.code, 'AUTH_FAILED');
  assert.deepEqual(await a.api.get('/v1/vms'), [], 'a request without the right token changed something');
  const right = await request(a.apiUrl, 'POST', '/v1/vms', { host, authorization: `Bearer ${token}` }, { name: 'vm1', disks: ['1M'] });
  assert.equal(right.status, 201, JSON.stringify(right.body));
  assert.equal((await a.api.get<{ name: string }[]>('/v1/vms'))[0].name, 'vm1');

  // a restart keeps the token; a token file of one's own is read, and must be private
  await stopAgentProcess(a);
  const b = await agent('tcp', ['--api', '127.0.0.1:0']);
  assert.equal(fs.readFileSync(tokenFile, 'utf8').trim(), token);
  assert.equal((await request(b.apiUrl, 'GET', '/v1/status', { host: b.apiUrl.slice(7), authorization: `Bearer ${token}` })).status, 200);
  await stopAgentProcess(b);
  const own = path.join(dir, 'own-token');
  fs.writeFileSync(own, `${'k'.repeat(40)}\n`, { mode: 0o644 });
  fs.chmodSync(own, 0o644);
  await assert.rejects(agent('tcp', ['--api', '127.0.0.1:0', '--api-token-file', own]), /exited with code [1-9]/);
  assert.match(fs.readFileSync(path.join(dir, 'tcp.log'), 'utf8'), /can be read by other users/);
  fs.chmodSync(own, 0o600);
  const c = await agent('tcp', ['--api', '127.0.0.1:0', '--api-token-file', own]);
  assert.equal((await request(c.apiUrl, 'GET', '/v1/status', { host: c.apiUrl.slice(7), authorization: `Bearer ${'k'.repeat(40)}` })).status, 200);
  assert.equal((await request(c.apiUrl, 'GET', '/v1/status', { host: c.apiUrl.slice(7), authorization: `Bearer ${token}` })).status, 403);

  // the API is local: beyond loopback it does not listen
  await assert.rejects(agent('wide', ['--api', '0.0.0.0:0']), /exited with code [1-9]/);
  assert.match(fs.readFileSync(path.join(dir, 'wide.log'), 'utf8'), /loopback only/);
});

test('a Host header that does not name the agent is refused (DNS rebinding), on TCP and on the socket', async () => {
  const t = await agent('host-tcp', ['--api', '127.0.0.1:0']);
  const token = fs.readFileSync(t.apiTokenFile!, 'utf8').trim();
  const port = Number(new URL(t.apiUrl).port);
  const auth = { authorization: `Bearer ${token}` };
  for (const host of ['evil.example', `evil.example:${port}`, `127.0.0.1:${port + 1}`, '127.0.0.1', `localhost.evil.example:${port}`]) {
    const r = await request(t.apiUrl, 'POST', '/v1/vms', { host, ...auth }, { name: 'x', disks: ['1M'] });
    assert.equal(r.body.code, 'HOST_NOT_ALLOWED', `Host "${host}": ${JSON.stringify(r.body)}`);
    assert.equal(r.status, 403);
  }
  // no Host at all: HTTP/1.1 requires one, and the server refuses the request itself
  assert.equal((await request(t.apiUrl, 'POST', '/v1/vms', auth, { name: 'x', disks: ['1M'] })).status, 400);
  for (const host of ['localhost', `localhost:${port}`, `127.0.0.1:${port}`]) {
    assert.equal((await request(t.apiUrl, 'GET', '/v1/status', { host, ...auth })).status, 200, host);
  }
  assert.deepEqual(await t.api.get('/v1/vms'), []);

  const s = await agent('host-sock');
  assert.equal((await request(s.apiUrl, 'POST', '/v1/vms', { host: 'evil.example' }, { name: 'x', disks: ['1M'] })).body.code, 'HOST_NOT_ALLOWED');
  assert.equal((await request(s.apiUrl, 'GET', '/v1/status', { host: 'localhost' })).status, 200);
  assert.deepEqual(await s.api.get('/v1/vms'), []);
});


test('a quiesce hook kept with a replication from before is never run: it is dropped with a warning', async () => {
  const hookDir = path.join(dir, 'hooks');
  fs.mkdirSync(hookDir, { mode: 0o755 });
  pair = await startPair(path.join(dir, 'pair'), { primaryArgs: ['--quiesce-hook-dir', hookDir] });
  const { primary, replica } = pair;
  await createVm(primary, 'old1', ['1M']);
  await assertRejectsCode(
    primary.api.post('/v1/replications', { vm: 'old1', peer: `127.0.0.1:${replica.replicationPort}`, quiesceHook: '/bin/true' }),
    'INVALID_ARGUMENT',
    /quiesce hooks are the agent's configuration \(osr agent --quiesce-hook-dir DIR runs DIR\/old1/,
  );
  const spec = await primary.api.post<{ id: string }>('/v1/replications', { vm: 'old1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '200ms', appConsistentFrequency: '1s' });
  await stopAgentProcess(primary);
  // a spec written by an older agent, with a path it took from a request
  const marker = path.join(dir, 'old-hook-ran');
  const oldHook = path.join(dir, 'old-hook.sh');
  fs.writeFileSync(oldHook, `#!/bin/sh\necho "$1" >> ${marker}\n`, { mode: 0o755 });
  const specFile = path.join(dir, 'pair', 'primary', 'replications', `${spec.id}.json`);
  fs.writeFileSync(specFile, JSON.stringify({ ...(JSON.parse(fs.readFileSync(specFile, 'utf8')) as object), quiesceHook: oldHook }));
  pair.primary = await startAgentProcess(primary.options);
  await waitFor('two app-consistent points after the restart', async () => {
    const pts = await replica.api.get<{ consistency: string }[]>('/v1/replicas/old1/points');
    return pts.filter((p) => p.consistency === 'app-consistent').length >= 2 || undefined;
  }, 30_000);
  assert.equal(fs.existsSync(marker), false, 'the kept quiesce hook ran');
  assert.equal('quiesceHook' in (JSON.parse(fs.readFileSync(specFile, 'utf8')) as object), false);
  assert.match(fs.readFileSync(path.join(dir, 'pair', 'primary.log'), 'utf8'), /quiesce hook kept with replication .* is ignored and removed/);
});

test('a hook in the hook directory that others could have changed is not run', async () => {
  const hookDir = path.join(dir, 'hooks');
  const { primary, replica } = pair!;
  await createVm(primary, 'loose1', ['1M']);
  const marker = path.join(dir, 'loose-hook-ran');
  const hook = path.join(hookDir, 'loose1');
  fs.writeFileSync(hook, `#!/bin/sh\necho "$1" >> ${marker}\n`, { mode: 0o777 });
  fs.chmodSync(hook, 0o777);
  await primary.api.post('/v1/replications', { vm: 'loose1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '200ms', appConsistentFrequency: '1s' });
  const h = await waitFor('HOOK_FAILED', async () => {
    const r = await primary.api.get<{ lastError: { code: string; message: string } | null }>('/v1/replications/loose1');
    return r.lastError?.code === 'HOOK_FAILED' ? r : undefined;
  }, 30_000);
  assert.match(h.lastError!.message, /is writable by others \(mode 777\); it is not run/);
  assert.equal(fs.existsSync(marker), false);
  const pts = await replica.api.get<{ consistency: string }[]>('/v1/replicas/loose1/points');
  assert.ok(pts.every((p) => p.consistency === 'crash-consistent'));
});
