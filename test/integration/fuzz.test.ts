/**
 * Thousands of malformed, truncated and oversized frames at a live replica agent's
 * replication port, and malformed NBD handshakes and requests at a live primary's NBD
 * socket: neither agent crashes, no replica point and no disk changes, and replication goes
 * on afterwards. The generator is seeded (OSR_FUZZ_SEED) so a failure can be replayed.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { NBD_REQUEST_MAGIC } from '../../src/agent/nbd/protocol.js';
import { DATA_HEADER_BYTES, FrameType, PROTOCOL_NAME } from '../../src/agent/wire/wire.js';
import { ensurePki } from '../../src/lab/agent-process.js';
import { createVm, fileDigest, pointDigests, startPair, waitForPoint, writePattern, type DiskInfo, type Pair } from '../support/lab.js';
import { RawPeer } from '../support/raw-peer.js';
import { prng, randomBytes } from '../support/unit.js';

const seed = Number(process.env.OSR_FUZZ_SEED ?? Date.now() % 1_000_000);

const rand = prng(seed);
const int = (n: number) => Math.floor(rand() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
const bytes = (n: number) => randomBytes(rand, n);

let pair: Pair;
let disks: DiskInfo[];
let vmId: string;
let latestSeq: number;
before(async () => {
  pair = await startPair();
  await ensurePki(pair.pkiDir, ['fuzzer']);
  disks = await createVm(pair.primary, 'target', ['4M', '1M']);
  await writePattern(disks[0].nbd.unix, { writes: 40 });
  await pair.primary.api.post('/v1/replications', { vm: 'target', peer: `127.0.0.1:${pair.replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50, compression: true });
  latestSeq = (await waitForPoint(pair.primary, 'target', null)).latestPoint!.seq;
  vmId = (await pair.replica.api.get<{ vmId: string; vm: string }[]>('/v1/replicas')).find((r) => r.vm === 'target')!.vmId;
});
after(async () => {
  await pair?.stop();
});

const names = () => pick(['disk0', 'disk1', '../disk0', '', '.x', 'a'.repeat(300), 7, null, { a: 1 }, ['disk0']]);
const numbers = () => pick([0, -1, 1.5, 2 ** 53, 2 ** 64, Number.MAX_SAFE_INTEGER, 4096, 4 * 1024 * 1024, '12', null, NaN, {}]);
const ops = ['open', 'copy-checkpoint', 'resync-begin', 'resync-hashes', 'resync-checkpoint', 'resync-ranges', 'delta-begin', 'delta-end', 'status', 'nonsense', '__proto__', 'constructor'];
const notices = ['copy-begin', 'copy-zero', 'resync-disk', 'resync-zero', 'delta-disk', 'hello', 'welcome', 'ping', 'toString'];

function controlFrame(msg: unknown): Buffer {
  const body = Buffer.from(typeof msg === 'string' ? msg : JSON.stringify(msg));
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1, 0);
  head.writeUInt8(FrameType.Control, 4);
  return Buffer.concat([head, body]);
}

function randomFrame(): Buffer {
  switch (int(9)) {
    case 0: // a request with random arguments, now and then for the real VM's id
      return controlFrame({ type: 'request', id: int(10), op: pick(ops), args: { vmId: pick([vmId, 'fuzz-vm', '../../etc', 5]), vmName: names(), disks: pick([[], [{ id: 'd', name: names(), size: numbers() }], 'x']), retention: { hours: numbers(), maxPoints: numbers() }, epoch: numbers(), reset: pick([true, 'yes']), disk: names(), offset: numbers(), length: numbers(), blockSize: numbers(), seq: numbers(), id: names(), finished: true, ranges: pick([{ disk0: [[numbers(), numbers()]] }, [], 'x']), point: pick([{ seq: numbers(), timeMs: numbers(), consistency: 'crash-consistent', deltaBytes: numbers() }, null]) } });
    case 1: // a notice
      return controlFrame({ type: pick(notices), disk: names(), offset: numbers(), length: numbers() });
    case 2: // not JSON, or JSON without a type
      return controlFrame(pick(['{', 'null', '[]', '"x"', '{"type":7}', bytes(int(64)).toString('latin1')]));
    case 3: { // a DATA frame with a random header
      const body = bytes(int(512));
      const head = Buffer.alloc(5 + DATA_HEADER_BYTES);
      head.writeUInt32BE(1 + DATA_HEADER_BYTES + body.length, 0);
      head.writeUInt8(FrameType.Data, 4);
      head.writeUInt8(int(4), 5);
      head.writeUInt32BE(pick([body.length, int(2 ** 32), 0]), 9);
      head.writeBigUInt64BE(BigInt(pick([0, int(2 ** 31), 2 ** 53 - 1])), 13);
      bytes(16).copy(head, 21);
      return Buffer.concat([head, body]);
    }
    case 4: { // an oversized length
      const head = Buffer.alloc(5);
      head.writeUInt32BE(pick([0, 0xffffffff, 9 * 1024 * 1024, 64 * 1024 * 1024]), 0);
      head.writeUInt8(pick([FrameType.Control, FrameType.Data, 0, 255]), 4);
      return head;
    }
    case 5: // an unknown frame type
      return Buffer.concat([Buffer.from([0, 0, 0, 9, pick([0, 3, 200])]), bytes(8)]);
    case 6: // a DATA frame shorter than its header
      return Buffer.concat([Buffer.from([0, 0, 0, 5, FrameType.Data]), bytes(4)]);
    default: // a valid frame cut short
      return controlFrame({ type: 'request', id: 1, op: 'status', args: {} }).subarray(0, 1 + int(12));
  }
}

test(`malformed, truncated and oversized frames at the replication port change nothing (seed ${seed})`, async () => {
  const before = await pointDigests(pair.replica, 'target', latestSeq);
  let frames = 0;
  for (let c = 0; c < 150; c++) {
    let peer: RawPeer;
    try {
      peer = await RawPeer.connect(pair.replica.replicationPort!, pair.pkiDir, 'fuzzer');
    } catch (e) {
      assert.fail(`connection ${c} failed: ${String(e)} (seed ${seed})`);
    }
    if (rand() < 0.8) await peer.send({ type: 'hello', protocol: PROTOCOL_NAME, versions: [1], features: ['zstd'] });
    const n = 5 + int(30);
    for (let i = 0; i < n && !peer.socket.destroyed; i++, frames++) peer.socket.write(randomFrame());
    await Promise.race([peer.closed, new Promise((r) => setTimeout(r, 20))]);
    peer.close();
  }
  assert.ok(frames > 2000, `${frames} frames sent`);
  assert.equal(pair.replica.child.exitCode, null, 'the replica agent died');
  const status = await pair.replica.api.get<{ replicas: { vmId: string; points: number }[] }>('/v1/status');
  assert.ok(status.replicas.some((r) => r.vmId === vmId));
  assert.deepEqual(await pointDigests(pair.replica, 'target', latestSeq), before, 'a point changed');
});

test(`malformed NBD handshakes and requests at the NBD socket change no disk (seed ${seed})`, async () => {
  const before = disks.map((d) => fileDigest(d.image, d.size).digest);
  const socketPath = pair.primary.nbdSocket;
  let requests = 0;
  for (let c = 0; c < 450; c++) {
    if (rand() < 0.3) {
      // garbage instead of a handshake
      const s = net.connect(socketPath);
      await new Promise<void>((resolve) => {
        s.once('connect', () => {
          s.write(bytes(int(200)));
          setTimeout(() => s.destroy(), 5);
        });
        s.once('close', () => resolve());
        s.once('error', () => resolve());
      });
      continue;
    }
    const client = await NbdClient.connect(disks[int(2)]!.nbd.unix);
    const sock = (client as unknown as { socket: net.Socket }).socket;
    sock.on('error', () => undefined);
    for (let i = 0; i < 10; i++, requests++) {
      const type = pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 99, 0xffff]);
      const size = client.size;
      // writes only outside the disk or with a bad length: every one must be refused
      const writes = type === 1 || type === 4 || type === 6;
      const offset = writes ? BigInt(pick([size, size + 4096, 2 ** 62])) : BigInt(pick([0, size - 1, size, 2 ** 62, int(size)]));
      const length = pick([0, 1, 4096, 0xffffffff, 33 * 1024 * 1024]);
      const head = Buffer.alloc(28);
      head.writeUInt32BE(rand() < 0.9 ? NBD_REQUEST_MAGIC : int(2 ** 32), 0);
      head.writeUInt16BE(int(0x10000), 4);
      head.writeUInt16BE(type, 6);
      head.writeBigUInt64BE(BigInt(int(2 ** 31)), 8);
      head.writeBigUInt64BE(offset & 0xffffffffffffffffn, 16);
      head.writeUInt32BE(length, 24);
      const body = type === 1 ? bytes(int(64)) : Buffer.alloc(0);
      if (sock.destroyed) break;
      sock.write(rand() < 0.9 ? Buffer.concat([head, body]) : head.subarray(0, int(28)));
    }
    await new Promise((r) => setTimeout(r, 5));
    sock.destroy();
  }
  assert.ok(requests > 2000, `${requests} requests sent`);
  assert.equal(pair.primary.child.exitCode, null, 'the primary agent died');
  assert.deepEqual(disks.map((d) => fileDigest(d.image, d.size).digest), before, 'a disk changed');
  // replication goes on: a write, a cycle, a point
  await writePattern(disks[0].nbd.unix, { writes: 5 });
  await pair.primary.api.post('/v1/replications/target/cycle');
  await waitForPoint(pair.primary, 'target', latestSeq + 1);
});
