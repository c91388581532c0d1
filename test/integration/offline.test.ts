/**
 * Offline initial replication with two real agents: the primary writes the initial copy to
 * a directory while the guest writes; copies of it that are unfinished, partial, tampered
 * with or of another VM are refused; the real one is imported and delta replication goes
 * on from it without the disks crossing the network.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createVm, fileDigest, fillRandom, health, pointDigests, startPair, waitFor, waitForPoint, writePattern, type Pair } from '../support/lab.js';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(async () => {
  await pair?.stop();
});

const MiB = 1024 * 1024;

async function refused(dir: string, vm: string | undefined, pattern: RegExp): Promise<void> {
  await assert.rejects(pair.replica.api.post('/v1/replicas/import', { dir, vm }), (e: { code?: string; message?: string }) => {
    assert.equal(e.code, 'EXPORT_INVALID', String(e.message));
    assert.match(String(e.message), pattern);
    return true;
  });
}

test('an offline export is imported at the replica, refused when unfinished, partial, tampered or of another VM, and deltas go on from it', async () => {
  const disks = await createVm(pair.primary, 'off1', ['24M', '8M']);
  fillRandom(disks[0].image, 20 * MiB);
  const exportDir = path.join(pair.dir, 'export-off1');
  await pair.primary.api.post('/v1/replications', { vm: 'off1', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', initialReplication: 'offline', exportDir });
  // the guest writes while the export is written and while it travels
  await writePattern(disks[1].nbd.unix, { writes: 30 });
  const waiting = await waitFor('the export written', async () => {
    const h = await health(pair.primary, 'off1');
    return h.state === 'WaitingForImport' && h.initial?.offline?.exportedAt ? h : undefined;
  });
  assert.equal(waiting.initial!.sentBytes, 0, 'no disk data crossed the network');
  await writePattern(disks[0].nbd.unix, { writes: 50 });
  // "shipping" the directory to the other site, and the ways that can go wrong
  const copy = (name: string) => {
    const to = path.join(pair.dir, name);
    fs.cpSync(exportDir, to, { recursive: true });
    return to;
  };
  const unfinished = copy('unfinished');
  fs.rmSync(path.join(unfinished, 'osr-export.json'));
  await refused(unfinished, undefined, /unfinished/);
  const partial = copy('partial');
  fs.truncateSync(path.join(partial, 'disk1.img'), 4 * MiB);
  await refused(partial, undefined, /partial/);
  const tampered = copy('tampered');
  const fd = fs.openSync(path.join(tampered, 'disk0.img'), 'r+');
  // one byte flipped (a constant written over random data is the same byte once in 256 runs)
  const byte = Buffer.alloc(1);
  fs.readSync(fd, byte, 0, 1, 5 * MiB + 123);
  byte[0] = byte[0]! ^ 0xff;
  fs.writeSync(fd, byte, 0, 1, 5 * MiB + 123);
  fs.closeSync(fd);
  await refused(tampered, undefined, /checksum/);
  await refused(copy('other'), 'some-other-vm', /not some-other-vm/);
  // nothing was left behind by the refused imports
  const replicas = await pair.replica.api.get<{ vm: string; points: number; initialDone: boolean }[]>('/v1/replicas');
  assert.ok(!replicas.some((r) => r.vm === 'off1' && (r.points > 0 || r.initialDone)));
  const good = copy('good');
  const imported = await pair.replica.api.post<{ vm: string; bytes: number }>('/v1/replicas/import', { dir: good, vm: 'off1' });
  assert.equal(imported.vm, 'off1');
  assert.equal(imported.bytes, 32 * MiB);
  await pair.primary.api.post('/v1/replications/off1/retry');
  const first = await waitForPoint(pair.primary, 'off1', null);
  assert.equal(first.initial!.sentBytes, 0, 'the copy came from the export');
  assert.ok(first.bytesShipped < 8 * MiB, `only change logs were shipped: ${first.bytesShipped} bytes`);
  // the first point is the export plus every write since it began
  assert.deepEqual(await pointDigests(pair.replica, 'off1', first.latestPoint!.seq), disks.map((d) => fileDigest(d.image, d.size).digest));
  await writePattern(disks[0].nbd.unix, { writes: 20 });
  await pair.primary.api.post('/v1/replications/off1/cycle');
  const next = await waitForPoint(pair.primary, 'off1', first.latestPoint!.seq + 1);
  assert.deepEqual(await pointDigests(pair.replica, 'off1', next.latestPoint!.seq), disks.map((d) => fileDigest(d.image, d.size).digest));
  // a second import over a replica with data is refused
  await assert.rejects(pair.replica.api.post('/v1/replicas/import', { dir: good }), (e: { code?: string }) => e.code === 'ALREADY_EXISTS');
});
