/**
 * A source agent survives a replica that refuses its initial copy's checkpoints: the
 * refusal becomes the replication's error, retried on the back-off, while the agent keeps
 * serving its VMs. The replica is a small TLS server speaking the replication protocol
 * (real TLS, certificates of the test CA) that answers every copy-checkpoint with
 * REPLICA_DISK_FULL, as a replica whose storage is full does.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { CHECKPOINT_BYTES } from '../../src/agent/sending/replication.js';
import { FrameReader, FrameWriter, type ControlMessage } from '../../src/agent/wire/wire.js';
import { ensurePki, type RunningAgent } from '../../src/lab/agent-process.js';
import { serverTlsOptions } from '../../src/pki/index.js';
import { createVm, health, startAgentProcess, stopAgentProcess, tempDir, waitFor } from '../support/lab.js';

const MiB = 1024 * 1024;

interface RefusingReplica {
  port: number;
  connections: number;
  checkpointsRefused: number;
  close(): Promise<void>;
}

/** A replica that takes the copy's data and answers each copy-checkpoint with an error. */
async function startRefusingReplica(pkiDir: string): Promise<RefusingReplica> {
  const material = { cert: fs.readFileSync(path.join(pkiDir, 'replica.crt'), 'utf8'), key: fs.readFileSync(path.join(pkiDir, 'replica.key'), 'utf8'), ca: fs.readFileSync(path.join(pkiDir, 'ca.crt'), 'utf8') };
  const sockets = new Set<tls.TLSSocket>();
  const r: RefusingReplica = { port: 0, connections: 0, checkpointsRefused: 0, close: async () => undefined };
  const server = tls.createServer(serverTlsOptions(material), (socket) => {
    r.connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const writer = new FrameWriter(socket);
    const reply = (id: unknown, result: unknown) => writer.sendControl({ type: 'reply', id, ok: true, result });
    const refuse = (id: unknown, code: string, message: string) => writer.sendControl({ type: 'reply', id, ok: false, error: { code, message } });
    new FrameReader(
      socket,
      async (m: ControlMessage) => {
        if (m.type === 'hello') await writer.sendControl({ type: 'welcome', version: 1, agent: 'replica', features: ['zstd'] });
        else if (m.type !== 'request') return;
        else if (m.op === 'open') await reply(m.id, { initialDone: false, copied: {}, finishedDisks: [], latestSeq: null, points: [], divergent: null, seedSeq: null });
        else if (m.op === 'copy-checkpoint') {
          r.checkpointsRefused++;
          await refuse(m.id, 'REPLICA_DISK_FULL', 'no space left on the replica\'s storage');
        } else await refuse(m.id, 'PROTOCOL_ERROR', `unexpected request ${String(m.op)}`);
      },
      () => undefined,
      () => socket.destroy(),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  r.port = (server.address() as { port: number }).port;
  r.close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return r;
}

let dir: string;
let primary: RunningAgent;
let replica: RefusingReplica;
before(async () => {
  dir = tempDir();
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary', 'replica']);
  replica = await startRefusingReplica(pkiDir);
  primary = await startAgentProcess({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, logFile: path.join(dir, 'primary.log') });
});
after(async () => {
  if (primary) await stopAgentProcess(primary, 'SIGKILL');
  await replica?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a replica refusing a checkpoint of the initial copy is a replication error, retried; the source agent goes on serving', async () => {
  // more data than one checkpoint holds: the copy goes on sending while the refusal comes back
  const size = CHECKPOINT_BYTES + 64 * MiB;
  const [disk] = await createVm(primary, 'web1', [`${size / MiB}M`]);
  const fd = fs.openSync(disk!.image, 'r+');
  const chunk = Buffer.alloc(4 * MiB);
  for (let off = 0; off < size; off += chunk.length) {
    chunk.fill((off / chunk.length) % 255 + 1);
    fs.writeSync(fd, chunk, 0, chunk.length, off);
  }
  fs.closeSync(fd);
  await primary.api.post('/v1/replications', { vm: 'web1', peer: `127.0.0.1:${replica.port}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 10, compression: true });

  // the refusal is the replication's error, and the copy is tried again on the back-off
  const exited = () => primary.child.exitCode !== null || primary.child.signalCode !== null;
  const seen = await waitFor('a second attempt after the refused checkpoint', async () => {
    if (exited()) return 'exited' as const;
    const x = await health(primary, 'web1');
    return replica.checkpointsRefused >= 2 && replica.connections >= 2 && x.lastError?.code === 'REPLICA_DISK_FULL' ? x : undefined;
  }, 120_000, 100);
  assert.notEqual(seen, 'exited', `the source agent exited (${primary.child.exitCode ?? primary.child.signalCode}): ${fs.readFileSync(path.join(dir, 'primary.log'), 'utf8').slice(-2000)}`);
  const h = seen as Exclude<typeof seen, 'exited'>;
  assert.equal(h.state, 'InitialReplication');
  assert.ok(h.retry && h.retry.failures >= 1, JSON.stringify(h.retry));
  assert.match(h.lastError!.message, /no space left/);

  // the agent still runs, and still serves its VM's disk
  assert.ok(!exited(), 'the source agent exited');
  const c = await NbdClient.connect(disk!.nbd.unix);
  assert.deepEqual(await c.read(0, 4), Buffer.alloc(4, 1));
  await c.write(4 * MiB, Buffer.alloc(4096, 0xee));
  await c.flush();
  await c.close();
  assert.equal((await primary.api.get<{ name: string; running: boolean }[]>('/v1/vms')).find((v) => v.name === 'web1')?.running, true);

  // handled where it happens, not by the process's last resort
  const log = fs.readFileSync(path.join(dir, 'primary.log'), 'utf8');
  assert.doesNotMatch(log, /UNHANDLED_REJECTION|Unhandled|unhandled/);
});
