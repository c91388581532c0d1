/**
 * osr's NBD client against QEMU's NBD server (qemu-nbd), the way a libvirt host reads a
 * pull-mode backup: structured replies, the base:allocation context and a persistent dirty
 * bitmap of a qcow2 image as the qemu:dirty-bitmap context, block status in pieces, reads
 * that mix data and holes. Every answer is checked against what qemu-io wrote.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient, type Extent } from '../../src/agent/nbd/nbd-client.js';
import { OsrError } from '../../src/domain/errors.js';
import { tempDir, waitFor } from '../support/lab.js';
import { skipWithout } from '../support/unit.js';

const skip = skipWithout(['qemu-img', 'qemu-io', 'qemu-nbd'], 'qemu-utils');

const MiB = 1024 * 1024;
const dir = tempDir('osr-nbd-client-');
const image = path.join(dir, 'disk.qcow2');
const socketPath = path.join(dir, 'nbd.sock');
let server: ChildProcess | undefined;

function qemuIo(...cmds: string[]): void {
  execFileSync('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), image], { stdio: 'pipe' });
}

before(async () => {
  if (skip) return;
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']);
  qemuIo('write -P 0x11 1M 64k');
  // the bitmap sees only what is written after it: as a checkpoint does
  execFileSync('qemu-img', ['bitmap', '--add', image, 'cp1']);
  qemuIo('write -P 0x22 8M 128k', 'write -P 0x33 20M 4k', 'write -z 30M 1M');
  server = spawn('qemu-nbd', ['-k', socketPath, '-f', 'qcow2', '-B', 'cp1', '-t', '-e', '8', '-r', image], { stdio: 'ignore' });
  await waitFor('qemu-nbd listening', async () => fs.existsSync(socketPath) || undefined, 10_000, 50);
});
after(() => {
  server?.kill();
});

/** Every extent of the disk in a context, asking from the end of the last answer until the end. */
async function allExtents(c: NbdClient, context: string): Promise<Extent[]> {
  const out: Extent[] = [];
  for (let off = 0; off < c.size; ) {
    const ex = await c.blockStatus(context, off, Math.min(c.size - off, 256 * MiB));
    assert.ok(ex.length > 0, 'an empty block status answer');
    assert.equal(ex[0]!.offset, off);
    out.push(...ex);
    off = ex.at(-1)!.offset + ex.at(-1)!.length;
  }
  return out;
}

test('dirty bitmap and allocation contexts from QEMU: what changed since the bitmap, what is allocated', { skip }, async () => {
  const c = await NbdClient.connect({ socketPath, exportName: '' }, { metaContexts: ['base:allocation', 'qemu:dirty-bitmap:cp1'] });
  try {
    assert.equal(c.size, 64 * MiB);
    assert.deepEqual([...c.contexts.keys()].sort(), ['base:allocation', 'qemu:dirty-bitmap:cp1']);
    const dirty = (await allExtents(c, 'qemu:dirty-bitmap:cp1')).filter((e) => e.flags & 1).map((e) => [e.offset / MiB, e.length]);
    // the bitmap's granularity is 64 KiB: the 4 KiB write marks one whole cluster
    assert.deepEqual(dirty, [
      [8, 128 * 1024],
      [20, 64 * 1024],
      [30, MiB],
    ]);
    const alloc = await allExtents(c, 'base:allocation');
    assert.equal(alloc.reduce((n, e) => n + e.length, 0), c.size, 'the extents cover the disk');
    const dataAt = (off: number) => alloc.find((e) => e.offset <= off && off < e.offset + e.length)!.flags;
    assert.equal(dataAt(1 * MiB), 0, 'written data is allocated');
    assert.equal(dataAt(0) & 1, 1, 'never written is a hole');
    assert.equal(dataAt(30 * MiB) & 2, 2, 'written zeroes read as zero');
  } finally {
    await c.close();
  }
});

test('structured reads: data and holes in one answer, bytes as written', { skip }, async () => {
  const c = await NbdClient.connect({ socketPath, exportName: '' }, { structuredReplies: true });
  try {
    const got = await c.read(8 * MiB - 64 * 1024, 256 * 1024);
    const want = Buffer.alloc(256 * 1024);
    want.fill(0x22, 64 * 1024, 64 * 1024 + 128 * 1024);
    assert.equal(crypto.createHash('sha256').update(got).digest('hex'), crypto.createHash('sha256').update(want).digest('hex'));
    // a plain client reads the same bytes
    const plain = await NbdClient.connect({ socketPath, exportName: '' });
    assert.deepEqual(await plain.read(8 * MiB - 64 * 1024, 256 * 1024), got);
    // into a caller's buffer full of other bytes: the same bytes, holes zeroed, in its first bytes
    for (const client of [c, plain]) {
      const into = Buffer.alloc(300 * 1024, 0x77);
      const read = await client.read(8 * MiB - 64 * 1024, 256 * 1024, into);
      assert.equal(read.buffer, into.buffer);
      assert.equal(read.length, 256 * 1024);
      assert.ok(read.equals(got));
      assert.equal(into[256 * 1024], 0x77);
    }
    await assert.rejects(c.read(0, 1024, Buffer.alloc(512)), (e: OsrError) => e.code === 'INVALID_ARGUMENT');
    await plain.close();
    // a context that was not agreed is refused by the client, not sent
    await assert.rejects(c.blockStatus('qemu:dirty-bitmap:cp1', 0, MiB), (e: OsrError) => e.code === 'INVALID_STATE');
  } finally {
    await c.close();
  }
});

test('a bitmap the image does not have: the server agrees to no such context', { skip }, async () => {
  const c = await NbdClient.connect({ socketPath, exportName: '' }, { metaContexts: ['qemu:dirty-bitmap:nope'] });
  try {
    assert.equal(c.contexts.has('qemu:dirty-bitmap:nope'), false);
  } finally {
    await c.close();
  }
});

test('large reads of random bytes, many in flight, at odd offsets: every byte where it belongs, into new or given buffers', { skip }, async () => {
  // an image of its own: random bytes at 40 MiB, for reads whose data arrives over many socket reads
  const random = crypto.randomBytes(8 * MiB);
  const img = path.join(dir, 'random.qcow2');
  const sock = path.join(dir, 'random.sock');
  fs.writeFileSync(path.join(dir, 'random.bin'), random);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '64M']);
  execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -s ${path.join(dir, 'random.bin')} 40M 8M`, img], { stdio: 'pipe' });
  const srv = spawn('qemu-nbd', ['-k', sock, '-f', 'qcow2', '-t', '-e', '4', '-r', img], { stdio: 'ignore' });
  await waitFor('qemu-nbd listening', async () => fs.existsSync(sock) || undefined, 10_000, 50);
  const c = await NbdClient.connect({ socketPath: sock, exportName: '' }, { structuredReplies: true });
  const plain = await NbdClient.connect({ socketPath: sock, exportName: '' });
  try {
    const reads: { offset: number; length: number }[] = [];
    for (let at = 0; at < 8 * MiB; ) {
      const length = Math.min(8 * MiB - at, [4 * MiB, 65536, 12345, 1, 300 * 1024 + 7][reads.length % 5]!);
      reads.push({ offset: at, length });
      at += length;
    }
    for (const client of [c, plain]) {
      const got = await Promise.all(reads.map((r, i) => client.read(40 * MiB + r.offset, r.length, i % 2 ? Buffer.alloc(r.length + 3, 0x55) : undefined)));
      reads.forEach((r, i) => assert.ok(got[i]!.equals(random.subarray(r.offset, r.offset + r.length)), `read ${i} at ${r.offset} of ${r.length}`));
    }
    // a read across data and a hole, after all that
    const mixed = await c.read(40 * MiB - 64 * 1024, 128 * 1024);
    assert.ok(mixed.subarray(0, 64 * 1024).equals(Buffer.alloc(64 * 1024)));
    assert.ok(mixed.subarray(64 * 1024).equals(random.subarray(0, 64 * 1024)));
  } finally {
    await c.close();
    await plain.close();
    srv.kill();
  }
});

test('a server that ends the connection in the middle of the handshake fails the connect at once (it does not wait forever)', async () => {
  const dir = tempDir('nbd-cut');
  const socketPath = path.join(dir, 'nbd.sock');
  // as qemu-nbd does when it cannot open what it was asked to serve: it accepts, greets, and exits
  const greeting = Buffer.alloc(18);
  greeting.write('NBDMAGIC', 0, 'latin1');
  greeting.write('IHAVEOPT', 8, 'latin1');
  greeting.writeUInt16BE(3, 16);
  const server = net.createServer((s) => s.end(greeting.subarray(0, 10)));
  await new Promise<void>((r) => server.listen(socketPath, r));
  try {
    const started = Date.now();
    await assert.rejects(NbdClient.connect({ socketPath, exportName: '' }), (e: unknown) => e instanceof OsrError && e.code === 'NETWORK_ERROR');
    // the whole greeting, then the end while the client waits for its option's reply
    server.removeAllListeners('connection');
    server.on('connection', (s) => {
      s.write(greeting);
      s.once('data', () => s.destroy());
    });
    await assert.rejects(NbdClient.connect({ socketPath, exportName: '' }), (e: unknown) => e instanceof OsrError && e.code === 'NETWORK_ERROR');
    assert.ok(Date.now() - started < 5000, 'both failed at once');
  } finally {
    await new Promise((r) => server.close(r));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
