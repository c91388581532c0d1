/**
 * The NBD server against real clients (qemu-io, qemu-img, nbdinfo, nbdcopy) and against a
 * small raw client for what those tools never send: malformed input, pipelined requests,
 * clients that stop reading. Data is always checked byte for byte on the device side.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import type { BlockDevice, Extent, WriteOptions } from '../../src/agent/io/block-device.js';
import { OsrError } from '../../src/domain/errors.js';
import { onPath, skipWithout } from '../support/unit.js';
import { NbdServer, type NbdExportResolver, type NbdServerOptions } from '../../src/agent/nbd/nbd-server.js';
import {
  AllocationState,
  BASE_ALLOCATION,
  BASE_NAMESPACE,
  ClientFlag,
  CmdFlag,
  HandshakeFlag,
  NBD_INIT_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NbdCmd,
  NbdErrno,
  NbdInfo,
  NbdOpt,
  NbdRep,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
} from '../../src/agent/nbd/protocol.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;

// ---------------------------------------------------------------------------------------
// A sparse in-memory disk: 4 KiB clusters, allocated on write, dropped on trim.

const CLUSTER = 4 * KiB;

interface DeviceOp {
  readonly op: 'write' | 'writeZeroes' | 'trim' | 'flush';
  readonly offset: number;
  readonly length: number;
  readonly fua: boolean;
  readonly mayTrim?: boolean;
}

class MemoryDevice implements BlockDevice {
  readonly ops: DeviceOp[] = [];
  readCalls = 0;
  active = 0;
  maxActive = 0;
  /** every operation waits this long first, so that requests overlap */
  delayMs = 0;
  /** reads touching this range fail as a broken disk would */
  failReads: { offset: number; length: number } | undefined;
  /** writes throw this */
  failWrites: Error | undefined;
  private readonly clusters = new Map<number, Buffer>();

  constructor(
    readonly size: number,
    readonly readOnly = false,
  ) {}

  read(offset: number, length: number): Promise<Buffer> {
    return this.op(() => {
      this.readCalls++;
      const f = this.failReads;
      if (f && offset < f.offset + f.length && f.offset < offset + length) {
        throw new OsrError('DISK_IO_ERROR', `simulated media error at ${f.offset}`);
      }
      return this.peek(offset, length);
    });
  }

  write(offset: number, data: Buffer, opts: WriteOptions): Promise<void> {
    return this.op(() => {
      if (this.failWrites) throw this.failWrites;
      this.ops.push({ op: 'write', offset, length: data.length, fua: opts.fua });
      this.poke(offset, data);
    });
  }

  writeZeroes(offset: number, length: number, opts: WriteOptions & { readonly mayTrim: boolean }): Promise<void> {
    return this.op(() => {
      this.ops.push({ op: 'writeZeroes', offset, length, fua: opts.fua, mayTrim: opts.mayTrim });
      if (opts.mayTrim) this.deallocate(offset, length);
      else this.zeroAllocated(offset, length);
    });
  }

  trim(offset: number, length: number, opts: WriteOptions): Promise<void> {
    return this.op(() => {
      this.ops.push({ op: 'trim', offset, length, fua: opts.fua });
      this.deallocate(offset, length);
    });
  }

  flush(): Promise<void> {
    return this.op(() => {
      this.ops.push({ op: 'flush', offset: 0, length: 0, fua: false });
    });
  }

  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.op(() => {
      const end = offset + length;
      const first = Math.floor(offset / CLUSTER);
      const last = Math.ceil(end / CLUSTER);
      const keys = [...this.clusters.keys()].filter((k) => k >= first && k < last).sort((a, b) => a - b);
      const extents: Extent[] = [];
      const add = (start: number, stop: number, hole: boolean): void => {
        if (stop <= start) return;
        const prev = extents[extents.length - 1];
        if (prev && prev.hole === hole && prev.offset + prev.length === start) {
          extents[extents.length - 1] = { ...prev, length: prev.length + stop - start };
        } else {
          extents.push({ offset: start, length: stop - start, hole, zero: hole });
        }
      };
      let pos = offset;
      for (const k of keys) {
        const start = Math.max(k * CLUSTER, offset);
        const stop = Math.min((k + 1) * CLUSTER, end);
        add(pos, start, true);
        add(start, stop, false);
        pos = stop;
      }
      add(pos, end, true);
      return extents;
    });
  }

  // -- direct access for assertions, bypassing the server

  peek(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    this.eachCluster(offset, length, (index, within, at, n) => {
      this.clusters.get(index)?.copy(out, at, within, within + n);
    });
    return out;
  }

  poke(offset: number, data: Buffer): void {
    this.eachCluster(offset, data.length, (index, within, at, n) => {
      data.copy(this.cluster(index), within, at, at + n);
    });
  }

  isAllocated(offset: number): boolean {
    return this.clusters.has(Math.floor(offset / CLUSTER));
  }

  private deallocate(offset: number, length: number): void {
    this.eachCluster(offset, length, (index, within, _at, n) => {
      if (n === CLUSTER) this.clusters.delete(index);
      else this.clusters.get(index)?.fill(0, within, within + n);
    });
  }

  private zeroAllocated(offset: number, length: number): void {
    this.eachCluster(offset, length, (index, within, _at, n) => this.cluster(index).fill(0, within, within + n));
  }

  private cluster(index: number): Buffer {
    let c = this.clusters.get(index);
    if (!c) {
      c = Buffer.alloc(CLUSTER);
      this.clusters.set(index, c);
    }
    return c;
  }

  private eachCluster(offset: number, length: number, fn: (index: number, within: number, at: number, n: number) => void): void {
    let pos = offset;
    while (pos < offset + length) {
      const index = Math.floor(pos / CLUSTER);
      const within = pos - index * CLUSTER;
      const n = Math.min(CLUSTER - within, offset + length - pos);
      fn(index, within, pos - offset, n);
      pos += n;
    }
  }

  private async op<T>(fn: () => T): Promise<T> {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.delayMs > 0) await sleep(this.delayMs);
      return fn();
    } finally {
      this.active--;
    }
  }
}

class Exports implements NbdExportResolver {
  private readonly entries = new Map<string, { device: MemoryDevice; description?: string }>();

  add(name: string, device: MemoryDevice, description?: string): MemoryDevice {
    this.entries.set(name, { device, description });
    return device;
  }

  get(name: string): BlockDevice | undefined {
    return this.entries.get(name)?.device;
  }

  list(): string[] {
    return [...this.entries.keys()];
  }

  description(name: string): string | undefined {
    return this.entries.get(name)?.description;
  }
}

// ---------------------------------------------------------------------------------------
// Server fixture

interface LogEntry {
  readonly level: 'info' | 'warn';
  readonly message: string;
}

interface Harness {
  readonly server: NbdServer;
  readonly exports: Exports;
  readonly dir: string;
  readonly socketPath: string;
  readonly port: number;
  readonly logs: LogEntry[];
  unixUri(name: string): string;
  tcpUri(name: string): string;
}

async function startServer(t: TestContext, opts: NbdServerOptions = {}): Promise<Harness> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-nbd-'));
  const socketPath = path.join(dir, 'nbd.sock');
  const exports = new Exports();
  const logs: LogEntry[] = [];
  const logger = {
    info: (_ctx: unknown, message: unknown) => logs.push({ level: 'info', message: String(message) }),
    warn: (_ctx: unknown, message: unknown) => logs.push({ level: 'warn', message: String(message) }),
  };
  const server = new NbdServer(exports, { logger, ...opts });
  t.after(async () => {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  await server.listenUnix(socketPath);
  const { port } = await server.listenTcp(0);
  return {
    server,
    exports,
    dir,
    socketPath,
    port,
    logs,
    unixUri: (name) => `nbd+unix:///${name}?socket=${socketPath}`,
    tcpUri: (name) => `nbd://127.0.0.1:${port}/${name}`,
  };
}

function warnings(h: Harness): string[] {
  return h.logs.filter((l) => l.level === 'warn').map((l) => l.message);
}

async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
    await sleep(10);
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------
// External tools (always run asynchronously: the server lives in this process)

interface ToolResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function runTool(cmd: string, args: string[], timeoutMs = 120_000): Promise<ToolResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * MiB, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function qemuIo(uri: string, commands: string[], options: string[] = []): Promise<ToolResult> {
  return runTool('qemu-io', ['-f', 'raw', ...options, uri, ...commands.flatMap((c) => ['-c', c])]);
}

function assertSucceeded(r: ToolResult, what: string): void {
  assert.equal(r.code, 0, `${what} failed (exit ${r.code}): ${r.stdout}${r.stderr}`);
  assert.doesNotMatch(r.stdout, /fail/i, `${what}: ${r.stdout}`);
}

/** Skips the test (and says why) unless every tool is installed. */
function needTools(t: TestContext, ...tools: string[]): boolean {
  const reason = skipWithout(tools, 'qemu-utils, libnbd-bin');
  if (reason === false) return true;
  t.skip(reason);
  return false;
}

interface MapEntry {
  readonly offset: number;
  readonly length: number;
  readonly description: string;
}

/** Parses `nbdinfo --map` text: offset, length, type number, description. */
function parseNbdinfoMap(stdout: string): MapEntry[] {
  return stdout
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .map(([offset, length, _type, ...description]) => ({
      offset: Number(offset),
      length: Number(length),
      description: description.join(' '),
    }));
}

// ---------------------------------------------------------------------------------------
// A raw NBD client for what the real tools do not send

interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

interface Reply {
  readonly structured: boolean;
  readonly handle: bigint;
  readonly error: number;
  readonly flags: number;
  readonly type: number;
  /** simple reply: read data; chunk: the payload */
  readonly data: Buffer;
}

interface RequestSpec {
  readonly handle: number | bigint;
  readonly offset?: number | bigint;
  readonly length?: number;
  readonly flags?: number;
  readonly payload?: Buffer;
}

class RawClient {
  readonly closed: Promise<void>;
  private readonly chunks: Buffer[] = [];
  private queued = 0;
  private ended = false;
  private notify: (() => void) | undefined;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.queued += chunk.length;
      this.wake();
    });
    socket.on('end', () => this.finish());
    socket.on('close', () => this.finish());
    socket.on('error', () => this.finish());
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static connect(to: { path: string } | { port: number }): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = 'path' in to ? net.connect(to.path) : net.connect(to.port, '127.0.0.1');
      socket.once('connect', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  /** Connects and completes the greeting; returns the server's handshake flags. */
  static async greeted(
    h: Harness,
    clientFlags = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes,
  ): Promise<{ client: RawClient; flags: number }> {
    const client = await RawClient.connect({ path: h.socketPath });
    const greeting = await client.read(18);
    assert.equal(greeting.readBigUInt64BE(0), NBD_INIT_MAGIC);
    assert.equal(greeting.readBigUInt64BE(8), NBD_OPTS_MAGIC);
    client.write(u32(clientFlags));
    return { client, flags: greeting.readUInt16BE(16) };
  }

  /** Connects, negotiates and enters transmission on `name`. */
  static async open(h: Harness, name: string, opts: { structured?: boolean; contexts?: string[] } = {}): Promise<RawClient> {
    const { client } = await RawClient.greeted(h);
    await client.go(name, opts);
    return client;
  }

  write(...parts: Buffer[]): void {
    for (const p of parts) this.socket.write(p);
  }

  async read(length: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.queued < length) {
      if (this.ended) throw new Error(`connection closed with ${this.queued} of ${length} bytes read`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out reading ${length} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.notify = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.take(length);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.write(header, data);
  }

  async optionReply(): Promise<OptionReply> {
    const header = await this.read(20);
    assert.equal(header.readBigUInt64BE(0), NBD_REP_MAGIC, 'option reply magic');
    const data = await this.read(header.readUInt32BE(16));
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
  }

  /** Sends an option and collects replies up to the final one (ACK or an error). */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      assert.equal(r.option, option, 'reply names the option it answers');
      replies.push(r);
      if (r.type !== NbdRep.Server && r.type !== NbdRep.Info && r.type !== NbdRep.MetaContext) return replies;
    }
  }

  async go(name: string, opts: { structured?: boolean; contexts?: string[] } = {}): Promise<{ size: bigint; flags: number }> {
    const structured = opts.structured ?? true;
    if (structured) assert.equal((await this.option(NbdOpt.StructuredReply)).at(-1)?.type, NbdRep.Ack);
    const contexts = opts.contexts ?? (structured ? [BASE_ALLOCATION] : []);
    if (contexts.length > 0) {
      assert.equal((await this.option(NbdOpt.SetMetaContext, metaContextData(name, contexts))).at(-1)?.type, NbdRep.Ack);
    }
    const replies = await this.option(NbdOpt.Go, infoRequestData(name, []));
    assert.equal(replies.at(-1)?.type, NbdRep.Ack, `NBD_OPT_GO ${name}`);
    const info = exportInfo(replies);
    assert.ok(info, 'NBD_INFO_EXPORT was sent');
    return info;
  }

  request(type: number, spec: RequestSpec): void {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    header.writeUInt16BE(spec.flags ?? 0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(BigInt(spec.handle), 8);
    header.writeBigUInt64BE(BigInt(spec.offset ?? 0), 16);
    header.writeUInt32BE(spec.length ?? spec.payload?.length ?? 0, 24);
    this.write(header, ...(spec.payload ? [spec.payload] : []));
  }

  /** Reads one reply or chunk; simple replies to reads need the data length by handle. */
  async reply(readLength: (handle: bigint) => number = () => 0): Promise<Reply> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      const error = rest.readUInt32BE(0);
      const handle = rest.readBigUInt64BE(4);
      const length = error === 0 ? readLength(handle) : 0;
      return { structured: false, handle, error, flags: 0, type: 0, data: await this.read(length) };
    }
    assert.equal(magic, NBD_STRUCTURED_REPLY_MAGIC, `reply magic 0x${magic.toString(16)}`);
    const rest = await this.read(16);
    const type = rest.readUInt16BE(2);
    const data = await this.read(rest.readUInt32BE(12));
    const error = type & 0x8000 ? data.readUInt32BE(0) : 0;
    return { structured: true, handle: rest.readBigUInt64BE(4), error, flags: rest.readUInt16BE(0), type, data };
  }

  /** One request, one reply (for requests answered by a single message). */
  async call(type: number, spec: RequestSpec): Promise<Reply> {
    this.request(type, spec);
    const r = await this.reply(() => spec.length ?? 0);
    assert.equal(r.handle, BigInt(spec.handle));
    return r;
  }

  close(): void {
    this.socket.destroy();
  }

  private take(length: number): Buffer {
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const c = this.chunks[0];
      const n = Math.min(c.length, length - done);
      c.copy(out, done, 0, n);
      done += n;
      if (n === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(n);
    }
    this.queued -= length;
    return out;
  }

  private finish(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const notify = this.notify;
    this.notify = undefined;
    notify?.();
  }
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v, 0);
  return b;
}

function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v, 0);
  return b;
}

function lengthPrefixed(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  return Buffer.concat([u32(bytes.length), bytes]);
}

function infoRequestData(name: string, infos: number[]): Buffer {
  return Buffer.concat([lengthPrefixed(name), u16(infos.length), ...infos.map(u16)]);
}

function metaContextData(name: string, queries: string[]): Buffer {
  return Buffer.concat([lengthPrefixed(name), u32(queries.length), ...queries.map(lengthPrefixed)]);
}

function exportInfo(replies: OptionReply[]): { size: bigint; flags: number } | undefined {
  const r = replies.find((x) => x.type === NbdRep.Info && x.data.readUInt16BE(0) === NbdInfo.Export);
  return r && { size: r.data.readBigUInt64BE(2), flags: r.data.readUInt16BE(10) };
}

function errorMessage(r: Reply): string {
  return r.data.toString('utf8', 6, 6 + r.data.readUInt16BE(4));
}

/** base:allocation descriptors from a BLOCK_STATUS chunk. */
function descriptors(r: Reply): Array<{ length: number; flags: number }> {
  assert.equal(r.type, ReplyType.BlockStatus);
  const out: Array<{ length: number; flags: number }> = [];
  for (let at = 4; at < r.data.length; at += 8) out.push({ length: r.data.readUInt32BE(at), flags: r.data.readUInt32BE(at + 4) });
  return out;
}

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

// ---------------------------------------------------------------------------------------
// Real clients

test('qemu-io writes, reads, flushes, zeroes and discards over a Unix socket', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(8 * MiB));
  disk.poke(1 * MiB, Buffer.alloc(64 * KiB, 0xcd));
  disk.poke(2 * MiB, Buffer.alloc(64 * KiB, 0xef));
  disk.poke(3 * MiB, Buffer.alloc(64 * KiB, 0x11));

  const r = await qemuIo(h.unixUri('disk'), [
    'write -P 0xab 0 64k',
    'read -P 0xab 0 64k',
    'flush',
    'write -z 1M 64k',
    'write -z -u 2M 64k',
    'discard 3M 64k',
    'read -P 0 1M 64k',
    'read -P 0 3M 64k',
  ]);
  assertSucceeded(r, 'qemu-io');

  assert.deepEqual(disk.peek(0, 64 * KiB), Buffer.alloc(64 * KiB, 0xab));
  for (const at of [1 * MiB, 2 * MiB, 3 * MiB]) assert.deepEqual(disk.peek(at, 64 * KiB), Buffer.alloc(64 * KiB));
  assert.ok(disk.ops.some((o) => o.op === 'flush'), 'flush reached the device');
  const zeroes = disk.ops.filter((o) => o.op === 'writeZeroes');
  assert.deepEqual(
    zeroes.map((o) => [o.offset, o.length, o.mayTrim]),
    [
      [1 * MiB, 64 * KiB, false], // plain `write -z` sends NBD_CMD_FLAG_NO_HOLE
      [2 * MiB, 64 * KiB, true], // `-u` allows unmapping
    ],
  );
  assert.ok(disk.isAllocated(1 * MiB), 'NO_HOLE zeroes stay allocated');
  assert.ok(!disk.isAllocated(2 * MiB), 'zeroes that may trim are deallocated');
  assert.ok(disk.ops.some((o) => o.op === 'trim' && o.offset === 3 * MiB && o.length === 64 * KiB));
  assert.ok(!disk.isAllocated(3 * MiB), 'discarded range is a hole');

  // a mismatching pattern must fail, or the checks above would prove nothing
  const wrong = await qemuIo(h.unixUri('disk'), ['read -P 0xac 0 64k']);
  assert.notEqual(wrong.code, 0);
  assert.match(wrong.stdout, /Pattern verification failed/);
});

test('FUA reaches the device only on writes that ask for it', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(1 * MiB));
  // writeback caching: otherwise qemu sets FUA on every write
  const commands = ['write -P 0x01 0 4k', 'write -f -P 0x02 4k 4k', 'write -z -f 8k 4k'];
  const r = await qemuIo(h.tcpUri('disk'), commands, ['-t', 'writeback']);
  assertSucceeded(r, 'qemu-io');
  const byOffset = new Map(disk.ops.filter((o) => o.op !== 'flush').map((o) => [o.offset, o]));
  assert.equal(byOffset.get(0)?.fua, false);
  assert.equal(byOffset.get(4 * KiB)?.fua, true);
  assert.equal(byOffset.get(8 * KiB)?.op, 'writeZeroes');
  assert.equal(byOffset.get(8 * KiB)?.fua, true);
  assert.deepEqual(disk.peek(0, 4 * KiB), Buffer.alloc(4 * KiB, 0x01));
  assert.deepEqual(disk.peek(4 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0x02));
});

test('nbdinfo --map and qemu-img map report holes and data from block status', async (t) => {
  if (!needTools(t, 'nbdinfo', 'qemu-img')) return;
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(8 * MiB));
  disk.poke(0, pattern(64 * KiB, 1));
  disk.poke(1 * MiB, pattern(192 * KiB, 2));
  disk.poke(4 * MiB, Buffer.alloc(64 * KiB)); // allocated zeroes are data, not a hole

  const map = await runTool('nbdinfo', ['--map', h.unixUri('disk')]);
  assertSucceeded(map, 'nbdinfo --map');
  assert.deepEqual(parseNbdinfoMap(map.stdout), [
    { offset: 0, length: 64 * KiB, description: 'data' },
    { offset: 64 * KiB, length: 1 * MiB - 64 * KiB, description: 'hole,zero' },
    { offset: 1 * MiB, length: 192 * KiB, description: 'data' },
    { offset: 1 * MiB + 192 * KiB, length: 3 * MiB - 192 * KiB, description: 'hole,zero' },
    { offset: 4 * MiB, length: 64 * KiB, description: 'data' },
    { offset: 4 * MiB + 64 * KiB, length: 4 * MiB - 64 * KiB, description: 'hole,zero' },
  ]);

  // qemu asks with NBD_CMD_FLAG_REQ_ONE, one extent per request
  const qmap = await runTool('qemu-img', ['map', '--output=json', '-f', 'raw', h.unixUri('disk')]);
  assertSucceeded(qmap, 'qemu-img map');
  const entries = JSON.parse(qmap.stdout) as Array<{ start: number; length: number; data: boolean; zero: boolean }>;
  const dataRanges = entries.filter((e) => e.data).map((e) => [e.start, e.length]);
  assert.deepEqual(dataRanges, [
    [0, 64 * KiB],
    [1 * MiB, 192 * KiB],
    [4 * MiB, 64 * KiB],
  ]);
  assert.ok(entries.filter((e) => !e.data).every((e) => e.zero), 'holes read as zeroes');
});

test('nbdinfo lists exports with descriptions, sizes and flags over TCP', async (t) => {
  if (!needTools(t, 'nbdinfo')) return;
  const h = await startServer(t);
  h.exports.add('disk', new MemoryDevice(8 * MiB), 'primary test disk');
  h.exports.add('ro', new MemoryDevice(2 * MiB, true), 'read-only point');
  h.exports.add('big', new MemoryDevice(4 * TiB));

  const r = await runTool('nbdinfo', ['--list', '--json', h.tcpUri('')]);
  assertSucceeded(r, 'nbdinfo --list');
  const listing = JSON.parse(r.stdout) as {
    protocol: string;
    structured: boolean;
    exports: Array<Record<string, unknown>>;
  };
  assert.equal(listing.protocol, 'newstyle-fixed');
  assert.equal(listing.structured, true);
  const byName = new Map(listing.exports.map((e) => [e['export-name'], e]));
  assert.deepEqual([...byName.keys()].sort(), ['big', 'disk', 'ro']);
  assert.equal(byName.get('disk')?.description, 'primary test disk');
  assert.equal(byName.get('ro')?.description, 'read-only point');
  assert.equal(byName.get('big')?.description, undefined);
  assert.equal(byName.get('disk')?.['export-size'], 8 * MiB);
  assert.equal(byName.get('big')?.['export-size'], 4 * TiB);
  assert.equal(byName.get('ro')?.is_read_only, true);
  assert.equal(byName.get('disk')?.is_read_only, false);
  for (const e of byName.values()) {
    assert.deepEqual(e.contexts, [BASE_ALLOCATION]);
    assert.equal(e.block_size_minimum, 1);
    assert.equal(e.block_size_preferred, 4096);
    assert.equal(e.block_size_maximum, 32 * MiB);
    assert.equal(e.can_multi_conn, true);
    assert.equal(e.can_fua, true);
    assert.equal(e.can_flush, true);
    assert.equal(e.can_zero, true);
    assert.equal(e.can_trim, true);
  }

  const size = await runTool('nbdinfo', ['--size', h.tcpUri('big')]);
  assertSucceeded(size, 'nbdinfo --size');
  assert.equal(size.stdout.trim(), String(4 * TiB));
});

test('nbdcopy copies exports both ways and qemu-img compare agrees', async (t) => {
  if (!needTools(t, 'nbdcopy', 'qemu-img')) return;
  const h = await startServer(t);
  const source = h.exports.add('source', new MemoryDevice(16 * MiB));
  source.poke(0, crypto.randomBytes(3 * MiB + 123));
  source.poke(9 * MiB + 7, crypto.randomBytes(2 * MiB));
  source.poke(16 * MiB - 4 * KiB, crypto.randomBytes(4 * KiB));

  // export -> file (nbdcopy opens several connections: multi-conn is advertised)
  const out = path.join(h.dir, 'out.img');
  assertSucceeded(await runTool('nbdcopy', [h.unixUri('source'), out]), 'nbdcopy export to file');
  assert.deepEqual(fs.readFileSync(out), source.peek(0, 16 * MiB));

  // file -> export
  const input = path.join(h.dir, 'in.img');
  const content = Buffer.alloc(16 * MiB);
  crypto.randomBytes(5 * MiB).copy(content, 1 * MiB);
  crypto.randomBytes(1 * MiB).copy(content, 12 * MiB);
  fs.writeFileSync(input, content);
  const target = h.exports.add('target', new MemoryDevice(16 * MiB));
  target.poke(8 * MiB, Buffer.alloc(1 * MiB, 0x77)); // stale data that must be zeroed
  assertSucceeded(await runTool('nbdcopy', [input, h.tcpUri('target')]), 'nbdcopy file to export');
  assert.deepEqual(target.peek(0, 16 * MiB), content);

  const same = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', input, h.unixUri('target')]);
  assert.equal(same.code, 0, same.stdout + same.stderr);
  assert.match(same.stdout, /Images are identical/);

  target.poke(12 * MiB + 5, Buffer.from([content[12 * MiB + 5] ^ 0xff]));
  const differs = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', input, h.unixUri('target')]);
  assert.equal(differs.code, 1, differs.stdout + differs.stderr);
  // qemu-img reports the start of the first differing 512-byte sector
  assert.match(differs.stdout, new RegExp(`Content mismatch at offset ${12 * MiB}!`));
});

test('a read-only export serves reads and refuses every write with EPERM', async (t) => {
  const h = await startServer(t);
  const ro = h.exports.add('ro', new MemoryDevice(1 * MiB, true));
  const original = pattern(1 * MiB, 9);
  ro.poke(0, original);

  if (onPath('qemu-io')) {
    const read = await qemuIo(h.unixUri('ro'), ['read -P 0x09 0 1'], ['-r']);
    assertSucceeded(read, 'qemu-io read-only read');
    const write = await qemuIo(h.unixUri('ro'), ['write -P 0x01 0 4k']);
    assert.notEqual(write.code, 0, 'qemu refuses to write a read-only export');
  }

  // qemu and libnbd refuse writes client-side, so the server's own check needs a raw client
  for (const structured of [true, false]) {
    const c = await RawClient.open(h, 'ro', { structured });
    const writes: Array<[number, RequestSpec]> = [
      [NbdCmd.Write, { handle: 1, offset: 0, payload: Buffer.alloc(4096, 1) }],
      [NbdCmd.WriteZeroes, { handle: 2, offset: 0, length: 4096 }],
      [NbdCmd.Trim, { handle: 3, offset: 0, length: 4096 }],
    ];
    for (const [type, spec] of writes) {
      const r = await c.call(type, spec);
      assert.equal(r.error, NbdErrno.EPERM, `command ${type}`);
      assert.equal(r.structured, structured);
      if (structured) {
        assert.equal(r.type, ReplyType.Error);
        assert.equal(r.flags & ReplyFlag.Done, ReplyFlag.Done);
        assert.match(errorMessage(r), /read-only/);
      }
    }
    const read = await c.call(NbdCmd.Read, { handle: 4, offset: 4096, length: 8192 });
    assert.equal(read.error, 0);
    const data = structured ? read.data.subarray(8) : read.data;
    assert.deepEqual(data, original.subarray(4096, 4096 + 8192));
    c.close();
  }
  assert.deepEqual(ro.peek(0, 1 * MiB), original, 'the export is unchanged');
  assert.equal(ro.ops.filter((o) => o.op !== 'flush').length, 0);
});

test('a 4 TiB export handles offsets near the end and refuses ranges past it', async (t) => {
  const h = await startServer(t);
  const big = h.exports.add('big', new MemoryDevice(4 * TiB));
  const tailOffset = 4 * TiB - 64 * KiB;

  if (onPath('qemu-io')) {
    const r = await qemuIo(h.unixUri('big'), [`write -P 0x5a ${tailOffset} 64k`, `read -P 0x5a ${tailOffset} 64k`]);
    assertSucceeded(r, 'qemu-io');
    assert.deepEqual(big.peek(tailOffset, 64 * KiB), Buffer.alloc(64 * KiB, 0x5a));
  } else {
    big.poke(tailOffset, Buffer.alloc(64 * KiB, 0x5a));
  }
  if (onPath('nbdinfo')) {
    const map = await runTool('nbdinfo', ['--map', h.unixUri('big')]);
    assertSucceeded(map, 'nbdinfo --map');
    assert.deepEqual(parseNbdinfoMap(map.stdout), [
      { offset: 0, length: tailOffset, description: 'hole,zero' },
      { offset: tailOffset, length: 64 * KiB, description: 'data' },
    ]);
  }

  const c = await RawClient.open(h, 'big');
  const tail = await c.call(NbdCmd.Read, { handle: 1, offset: tailOffset, length: 64 * KiB });
  assert.equal(tail.type, ReplyType.OffsetData);
  assert.equal(tail.data.readBigUInt64BE(0), BigInt(tailOffset));
  assert.deepEqual(tail.data.subarray(8), Buffer.alloc(64 * KiB, 0x5a));

  const past: Array<[string, number, RequestSpec, number]> = [
    ['read across the end', NbdCmd.Read, { handle: 2, offset: 4 * TiB - 4096, length: 8192 }, NbdErrno.EINVAL],
    ['read at 2^63', NbdCmd.Read, { handle: 3, offset: 1n << 63n, length: 512 }, NbdErrno.EINVAL],
    ['write across the end', NbdCmd.Write, { handle: 4, offset: 4 * TiB - 4096, payload: Buffer.alloc(8192) }, NbdErrno.ENOSPC],
    ['write zeroes past the end', NbdCmd.WriteZeroes, { handle: 5, offset: 4 * TiB, length: 1 }, NbdErrno.ENOSPC],
    ['trim past the end', NbdCmd.Trim, { handle: 6, offset: 4 * TiB, length: 4096 }, NbdErrno.EINVAL],
    ['block status past the end', NbdCmd.BlockStatus, { handle: 7, offset: 4 * TiB - 1, length: 2 }, NbdErrno.EINVAL],
  ];
  for (const [what, type, spec, errno] of past) {
    const r = await c.call(type, spec);
    assert.equal(r.error, errno, what);
  }
  assert.ok(
    big.ops.every((o) => o.offset + o.length <= 4 * TiB),
    'nothing past the end reached the device',
  );
  c.close();
});

test('device failures map to EIO and ENOSPC and are logged', async (t) => {
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(4 * MiB));
  disk.failReads = { offset: 1 * MiB, length: 4 * KiB };

  if (onPath('qemu-io')) {
    const r = await qemuIo(h.unixUri('disk'), ['read 1M 4k']);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /Input\/output error/);
  }

  const c = await RawClient.open(h, 'disk');
  const read = await c.call(NbdCmd.Read, { handle: 1, offset: 1 * MiB - 512, length: 1024 });
  assert.equal(read.type, ReplyType.Error);
  assert.equal(read.error, NbdErrno.EIO);
  assert.match(errorMessage(read), /simulated media error/);

  disk.failWrites = Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
  const write = await c.call(NbdCmd.Write, { handle: 2, offset: 0, payload: Buffer.alloc(512, 1) });
  assert.equal(write.error, NbdErrno.ENOSPC);

  // the connection survives device errors
  const ok = await c.call(NbdCmd.Read, { handle: 3, offset: 0, length: 512 });
  assert.equal(ok.error, 0);
  assert.ok(warnings(h).some((m) => /NBD_CMD_READ failed on export "disk"/.test(m)));
  assert.ok(warnings(h).some((m) => /NBD_CMD_WRITE failed on export "disk"/.test(m)));
  c.close();
});

// ---------------------------------------------------------------------------------------
// Handshake details

test('option haggling follows the fixed newstyle rules', async (t) => {
  const h = await startServer(t);
  h.exports.add('disk', new MemoryDevice(8 * MiB), 'primary test disk');
  h.exports.add('other', new MemoryDevice(1 * MiB));

  const { client: c, flags } = await RawClient.greeted(h);
  assert.equal(flags, HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes);

  assert.equal((await c.option(NbdOpt.StartTls))[0].type, NbdRep.ErrPolicy);
  assert.equal((await c.option(99, Buffer.from('whatever')))[0].type, NbdRep.ErrUnsup);
  assert.equal((await c.option(NbdOpt.List, Buffer.from('x')))[0].type, NbdRep.ErrInvalid);

  const list = await c.option(NbdOpt.List);
  assert.equal(list.at(-1)?.type, NbdRep.Ack);
  const servers = list.filter((r) => r.type === NbdRep.Server).map((r) => {
    const nameLength = r.data.readUInt32BE(0);
    return [r.data.toString('utf8', 4, 4 + nameLength), r.data.toString('utf8', 4 + nameLength)];
  });
  assert.deepEqual(servers, [
    ['disk', 'primary test disk'],
    ['other', ''],
  ]);

  const unknown = await c.option(NbdOpt.Info, infoRequestData('nope', []));
  assert.deepEqual(unknown.map((r) => r.type), [NbdRep.ErrUnknown]);
  assert.match(unknown[0].data.toString(), /nope/);
  const truncated = infoRequestData('disk', []).subarray(0, 6);
  assert.equal((await c.option(NbdOpt.Info, truncated))[0].type, NbdRep.ErrInvalid);

  // metadata contexts need structured replies first
  assert.equal((await c.option(NbdOpt.ListMetaContext, metaContextData('disk', [])))[0].type, NbdRep.ErrInvalid);
  assert.equal((await c.option(NbdOpt.StructuredReply))[0].type, NbdRep.Ack);

  const contextNames = (replies: OptionReply[]): string[] =>
    replies.filter((r) => r.type === NbdRep.MetaContext).map((r) => r.data.toString('utf8', 4));
  const listed = await c.option(NbdOpt.ListMetaContext, metaContextData('disk', [BASE_NAMESPACE]));
  assert.deepEqual(contextNames(listed), [BASE_ALLOCATION]);
  assert.equal(listed.at(-1)?.type, NbdRep.Ack);
  assert.deepEqual(contextNames(await c.option(NbdOpt.ListMetaContext, metaContextData('disk', []))), [BASE_ALLOCATION]);
  assert.deepEqual(contextNames(await c.option(NbdOpt.ListMetaContext, metaContextData('disk', ['qemu:dirty-bitmap:x']))), []);
  // `base:` lists the namespace but selects nothing
  const none = await c.option(NbdOpt.SetMetaContext, metaContextData('disk', [BASE_NAMESPACE]));
  assert.deepEqual(none.map((r) => r.type), [NbdRep.Ack]);
  const selected = await c.option(NbdOpt.SetMetaContext, metaContextData('disk', [BASE_ALLOCATION, 'x-other:thing']));
  assert.deepEqual(contextNames(selected), [BASE_ALLOCATION]);
  const contextId = selected[0].data.readUInt32BE(0);
  assert.notEqual(contextId, 0);

  const info = await c.option(NbdOpt.Info, infoRequestData('disk', [NbdInfo.Name, NbdInfo.Description, NbdInfo.BlockSize]));
  assert.equal(info.at(-1)?.type, NbdRep.Ack);
  const byType = new Map(info.filter((r) => r.type === NbdRep.Info).map((r) => [r.data.readUInt16BE(0), r.data]));
  const exportData = byType.get(NbdInfo.Export);
  assert.ok(exportData);
  assert.equal(exportData.readBigUInt64BE(2), BigInt(8 * MiB));
  const tflags = exportData.readUInt16BE(10);
  const expected =
    TransmissionFlag.HasFlags |
    TransmissionFlag.SendFlush |
    TransmissionFlag.SendFua |
    TransmissionFlag.SendTrim |
    TransmissionFlag.SendWriteZeroes |
    TransmissionFlag.SendDf |
    TransmissionFlag.CanMultiConn;
  assert.equal(tflags, expected);
  const blockSize = byType.get(NbdInfo.BlockSize);
  assert.ok(blockSize);
  assert.deepEqual([blockSize.readUInt32BE(2), blockSize.readUInt32BE(6), blockSize.readUInt32BE(10)], [1, 4096, 32 * MiB]);
  assert.equal(byType.get(NbdInfo.Name)?.toString('utf8', 2), 'disk');
  assert.equal(byType.get(NbdInfo.Description)?.toString('utf8', 2), 'primary test disk');

  // INFO left the negotiation open; GO enters transmission with base:allocation selected
  const go = await c.option(NbdOpt.Go, infoRequestData('disk', []));
  assert.equal(go.at(-1)?.type, NbdRep.Ack);
  const status = await c.call(NbdCmd.BlockStatus, { handle: 7, offset: 0, length: 1 * MiB, flags: CmdFlag.ReqOne });
  assert.equal(status.data.readUInt32BE(0), contextId);
  assert.deepEqual(descriptors(status), [{ length: 1 * MiB, flags: AllocationState.Hole | AllocationState.Zero }]);
  c.close();
});

test('NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT and bad client flags', async (t) => {
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(1 * MiB, true));
  disk.poke(0, Buffer.from('hello'));

  // without NO_ZEROES the reply carries 124 bytes of padding
  const { client: old } = await RawClient.greeted(h, ClientFlag.FixedNewstyle);
  old.sendOption(NbdOpt.ExportName, Buffer.from('disk'));
  const reply = await old.read(8 + 2 + 124);
  assert.equal(reply.readBigUInt64BE(0), BigInt(1 * MiB));
  assert.equal(reply.readUInt16BE(8) & TransmissionFlag.ReadOnly, TransmissionFlag.ReadOnly);
  assert.equal(reply.readUInt16BE(8) & TransmissionFlag.SendDf, 0, 'no DF without structured replies');
  assert.deepEqual(reply.subarray(10), Buffer.alloc(124));
  const read = await old.call(NbdCmd.Read, { handle: 1, offset: 0, length: 5 });
  assert.equal(read.structured, false);
  assert.equal(read.data.toString(), 'hello');
  old.request(NbdCmd.Disc, { handle: 2 });
  await withTimeout(old.closed, 5000, 'close after NBD_CMD_DISC');

  const { client: quitter } = await RawClient.greeted(h);
  assert.deepEqual((await quitter.option(NbdOpt.Abort)).map((r) => r.type), [NbdRep.Ack]);
  await withTimeout(quitter.closed, 5000, 'close after NBD_OPT_ABORT');

  const { client: unknown } = await RawClient.greeted(h);
  unknown.sendOption(NbdOpt.ExportName, Buffer.from('nope'));
  await withTimeout(unknown.closed, 5000, 'close after EXPORT_NAME of an unknown export');

  const { client: weird } = await RawClient.greeted(h, 0x80);
  await withTimeout(weird.closed, 5000, 'close after unknown client flags');

  assert.ok(warnings(h).some((m) => /unknown export "nope"/.test(m)));
  assert.ok(warnings(h).some((m) => /unknown client flags 0x80/.test(m)));
  await until(() => h.server.connectionCount === 0, 'all connections closed');
});

// ---------------------------------------------------------------------------------------
// Transmission details

test('pipelined requests are all answered, each reply whole and matched by handle', async (t) => {
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(8 * MiB));
  disk.delayMs = 2; // let requests overlap and complete out of order
  const c = await RawClient.open(h, 'disk');

  const blocks = 64;
  const size = 64 * KiB;
  const expected = new Map<number, Buffer>();
  for (let i = 0; i < blocks; i++) {
    const data = pattern(size, i);
    expected.set(i, data);
    c.request(NbdCmd.Write, { handle: i, offset: i * size, payload: data, flags: i % 2 ? CmdFlag.Fua : 0 });
  }
  const writeReplies = new Set<bigint>();
  for (let i = 0; i < blocks; i++) {
    const r = await c.reply();
    assert.equal(r.error, 0);
    writeReplies.add(r.handle);
  }
  assert.equal(writeReplies.size, blocks);

  // odd lengths and offsets, all in flight together
  const reads = new Map<bigint, { offset: number; length: number }>();
  for (let i = 0; i < 200; i++) {
    const offset = (i * 40_961) % (blocks * size - 70_000);
    reads.set(BigInt(1000 + i), { offset, length: 1 + ((i * 7919) % 69_999) });
  }
  for (const [handle, r] of reads) c.request(NbdCmd.Read, { handle, ...r });
  const whole = Buffer.concat([...expected.values()]);
  const readCount = reads.size;
  for (let i = 0; i < readCount; i++) {
    const reply = await c.reply();
    const want = reads.get(reply.handle);
    assert.ok(want, `unexpected handle ${reply.handle}`);
    reads.delete(reply.handle);
    assert.equal(reply.type, ReplyType.OffsetData);
    assert.equal(reply.flags & ReplyFlag.Done, ReplyFlag.Done);
    assert.equal(reply.data.readBigUInt64BE(0), BigInt(want.offset));
    assert.ok(reply.data.subarray(8).equals(whole.subarray(want.offset, want.offset + want.length)), `data of ${reply.handle}`);
  }
  assert.equal(reads.size, 0);
  assert.ok(disk.maxActive > 1, 'requests ran concurrently');
  assert.deepEqual(disk.peek(0, blocks * size), whole);
  assert.equal(disk.ops.filter((o) => o.op === 'write' && o.fua).length, blocks / 2);
  c.close();
});

test('invalid requests get errors and the connection carries on', async (t) => {
  const h = await startServer(t);
  h.exports.add('disk', new MemoryDevice(8 * MiB));

  const plain = await RawClient.open(h, 'disk', { structured: true, contexts: [] });
  const cases: Array<[string, number, RequestSpec]> = [
    ['block status without a context', NbdCmd.BlockStatus, { handle: 1, offset: 0, length: 4096 }],
    ['unknown command', 42, { handle: 2 }],
    ['NO_HOLE on a read', NbdCmd.Read, { handle: 3, offset: 0, length: 512, flags: CmdFlag.NoHole }],
    ['FAST_ZERO (not advertised)', NbdCmd.WriteZeroes, { handle: 4, offset: 0, length: 512, flags: CmdFlag.FastZero }],
    ['read larger than 32 MiB', NbdCmd.Read, { handle: 5, offset: 0, length: 32 * MiB + 1 }],
  ];
  for (const [what, type, spec] of cases) {
    const r = await plain.call(type, spec);
    assert.equal(r.error, NbdErrno.EINVAL, what);
    assert.equal(r.type, ReplyType.Error, what);
  }
  const empty = await plain.call(NbdCmd.Read, { handle: 6, offset: 0, length: 0 });
  assert.deepEqual([empty.type, empty.flags, empty.data.length], [ReplyType.None, ReplyFlag.Done, 0]);
  const df = await plain.call(NbdCmd.Read, { handle: 7, offset: 0, length: 4096, flags: CmdFlag.Df });
  assert.equal(df.type, ReplyType.OffsetData);
  plain.close();

  // without structured replies, DF is not valid and errors come as simple replies
  const simple = await RawClient.open(h, 'disk', { structured: false });
  const r = await simple.call(NbdCmd.Read, { handle: 8, offset: 0, length: 512, flags: CmdFlag.Df });
  assert.deepEqual([r.structured, r.error, r.data.length], [false, NbdErrno.EINVAL, 0]);
  const ok = await simple.call(NbdCmd.Read, { handle: 9, offset: 0, length: 512 });
  assert.deepEqual([ok.error, ok.data.length], [0, 512]);
  simple.close();
});

test('block status honours REQ_ONE and describes holes and data', async (t) => {
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(8 * MiB));
  disk.poke(64 * KiB, Buffer.alloc(64 * KiB, 1));
  disk.poke(256 * KiB, Buffer.alloc(4 * KiB, 1));
  const c = await RawClient.open(h, 'disk');
  const hole = AllocationState.Hole | AllocationState.Zero;

  const all = await c.call(NbdCmd.BlockStatus, { handle: 1, offset: 0, length: 512 * KiB });
  assert.deepEqual(descriptors(all), [
    { length: 64 * KiB, flags: hole },
    { length: 64 * KiB, flags: 0 },
    { length: 128 * KiB, flags: hole },
    { length: 4 * KiB, flags: 0 },
    { length: 252 * KiB, flags: hole },
  ]);
  const one = await c.call(NbdCmd.BlockStatus, { handle: 2, offset: 100 * KiB, length: 512 * KiB, flags: CmdFlag.ReqOne });
  assert.deepEqual(descriptors(one), [{ length: 28 * KiB, flags: 0 }]);
  const unaligned = await c.call(NbdCmd.BlockStatus, { handle: 3, offset: 1, length: 10 });
  assert.deepEqual(descriptors(unaligned), [{ length: 10, flags: hole }]);
  const zeroLength = await c.call(NbdCmd.BlockStatus, { handle: 4, offset: 0, length: 0 });
  assert.equal(zeroLength.error, NbdErrno.EINVAL);
  c.close();
});

// ---------------------------------------------------------------------------------------
// Hostile and broken clients

test('malformed clients lose their connection while other connections keep working', async (t) => {
  const h = await startServer(t, { handshakeTimeoutMs: 500 });
  const disk = h.exports.add('disk', new MemoryDevice(1 * MiB));
  disk.poke(0, Buffer.alloc(4096, 0x42));
  const healthy = await RawClient.open(h, 'disk');

  const connect = (): Promise<RawClient> => RawClient.connect({ path: h.socketPath });
  const cases: Array<{ name: string; warning: RegExp; act: () => Promise<RawClient> }> = [
    {
      name: 'an HTTP request instead of NBD',
      warning: /unknown client flags/,
      act: async () => {
        const c = await connect();
        c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
        return c;
      },
    },
    {
      name: 'random bytes after valid client flags',
      warning: /bad option magic/,
      act: async () => {
        const c = await connect();
        c.write(u32(ClientFlag.FixedNewstyle), crypto.randomBytes(64 * KiB));
        return c;
      },
    },
    {
      name: 'a handshake cut short by EOF',
      warning: /middle of a message/,
      act: async () => {
        const c = await connect();
        c.socket.end(Buffer.from([0, 0]));
        return c;
      },
    },
    {
      name: 'a handshake that never completes',
      warning: /handshake not completed within 500 ms/,
      act: async () => {
        const c = await connect();
        c.write(u32(ClientFlag.FixedNewstyle), Buffer.from('IHAVE'));
        return c;
      },
    },
    {
      name: 'an option claiming 1 GiB of data',
      warning: /carries 1073741824 bytes/,
      act: async () => {
        const { client } = await RawClient.greeted(h);
        const header = Buffer.alloc(16);
        header.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
        header.writeUInt32BE(NbdOpt.Go, 8);
        header.writeUInt32BE(1 << 30, 12);
        client.write(header);
        return client;
      },
    },
    {
      name: 'a write larger than 32 MiB',
      warning: /write of 67108864 bytes exceeds the maximum block size/,
      act: async () => {
        const c = await RawClient.open(h, 'disk');
        c.request(NbdCmd.Write, { handle: 99, offset: 0, length: 64 * MiB });
        c.write(Buffer.alloc(64 * KiB)); // a little of the payload, never all of it
        const r = await c.reply();
        assert.deepEqual([r.handle, r.error], [99n, NbdErrno.EINVAL]);
        return c;
      },
    },
    {
      name: 'garbage instead of a request',
      warning: /bad request magic/,
      act: async () => {
        const c = await RawClient.open(h, 'disk');
        c.write(Buffer.alloc(28, 0xee));
        return c;
      },
    },
  ];

  for (const [i, testCase] of cases.entries()) {
    const before = warnings(h).length;
    const client = await testCase.act();
    await withTimeout(client.closed, 5000, `server closes ${testCase.name}`);
    await until(() => warnings(h).length > before, `a warning about ${testCase.name}`);
    assert.match(warnings(h).slice(before).join('\n'), testCase.warning, testCase.name);

    const r = await healthy.call(NbdCmd.Read, { handle: 1000 + i, offset: 0, length: 4096 });
    assert.deepEqual(r.data.subarray(8), Buffer.alloc(4096, 0x42), `healthy connection after ${testCase.name}`);
  }
  assert.equal(disk.ops.filter((o) => o.op === 'write').length, 0, 'no malformed write reached the device');
  await until(() => h.server.connectionCount === 1, 'only the healthy connection is left');

  if (onPath('qemu-io')) assertSucceeded(await qemuIo(h.unixUri('disk'), ['read -P 0x42 0 4k']), 'qemu-io after the attacks');
  healthy.request(NbdCmd.Disc, { handle: 0 });
  await withTimeout(healthy.closed, 5000, 'healthy client disconnects');
  await until(() => h.server.connectionCount === 0, 'no connections left');
});

test('flow control bounds concurrent requests and replies a client does not read', async (t) => {
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(64 * MiB));
  for (let i = 0; i < 64; i++) disk.poke(i * MiB, Buffer.from([i, 0xa5]));

  const c = await RawClient.open(h, 'disk', { structured: false });
  c.socket.pause(); // stop reading: replies back up into the kernel and the server
  const count = 200;
  for (let i = 0; i < count; i++) c.request(NbdCmd.Read, { handle: i, offset: (i % 64) * MiB, length: 1 * MiB });
  await sleep(500);
  const startedWhileBlocked = disk.readCalls;
  assert.ok(startedWhileBlocked <= 70, `server kept reading requests: ${startedWhileBlocked} reads started`);
  assert.ok(startedWhileBlocked < count);

  c.socket.resume();
  const seen = new Set<bigint>();
  for (let i = 0; i < count; i++) {
    const r = await c.reply(() => 1 * MiB);
    assert.equal(r.error, 0);
    const block = Number(r.handle) % 64;
    assert.deepEqual([...r.data.subarray(0, 2)], [block, 0xa5]);
    seen.add(r.handle);
  }
  assert.equal(seen.size, count);
  assert.equal(disk.readCalls, count);
  c.close();

  // a slow device: many small requests, at most the in-flight limit run at once
  disk.delayMs = 5;
  const d = await RawClient.open(h, 'disk');
  for (let i = 0; i < 300; i++) d.request(NbdCmd.Read, { handle: i, offset: i * 4096, length: 4096 });
  for (let i = 0; i < 300; i++) assert.equal((await d.reply()).error, 0);
  assert.ok(disk.maxActive > 1 && disk.maxActive <= 64, `max concurrent device calls ${disk.maxActive}`);
  d.close();
});

// ---------------------------------------------------------------------------------------
// Lifecycle

test('close() answers in-flight requests, then closes connections and listeners', async (t) => {
  const h = await startServer(t);
  const disk = h.exports.add('disk', new MemoryDevice(1 * MiB));
  disk.poke(0, Buffer.alloc(4096, 0x33));
  const c = await RawClient.open(h, 'disk');
  const idle = await RawClient.greeted(h);
  disk.delayMs = 300;
  c.request(NbdCmd.Read, { handle: 1, offset: 0, length: 4096 });
  await until(() => disk.active === 1, 'the read is running');

  const closing = h.server.close();
  const r = await c.reply();
  assert.deepEqual(r.data.subarray(8), Buffer.alloc(4096, 0x33), 'in-flight read answered during shutdown');
  await withTimeout(Promise.all([c.closed, idle.client.closed, closing]), 5000, 'server close');
  assert.equal(h.server.connectionCount, 0);
  assert.equal(fs.existsSync(h.socketPath), false, 'socket file removed');
  await assert.rejects(RawClient.connect({ path: h.socketPath }));
  await assert.rejects(RawClient.connect({ port: h.port }));
});

test('listenUnix replaces a stale socket file but not a live socket or another file', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-nbd-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const socketPath = path.join(dir, 'stale.sock');
  // a process killed while listening leaves its socket file behind
  const script = `require('net').createServer()
    .listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`;
  await runTool(process.execPath, ['-e', script]);
  assert.ok(fs.lstatSync(socketPath).isSocket());

  const exports = new Exports();
  exports.add('disk', new MemoryDevice(1 * MiB));
  const quiet = { info: () => {}, warn: () => {} };
  const first = new NbdServer(exports, { logger: quiet });
  const second = new NbdServer(exports, { logger: quiet });
  t.after(() => Promise.all([first.close(), second.close()]));
  await first.listenUnix(socketPath);
  const c = await RawClient.connect({ path: socketPath });
  assert.equal((await c.read(18)).readBigUInt64BE(0), NBD_INIT_MAGIC);
  c.close();

  const isConfigError = (e: unknown): boolean => e instanceof OsrError && e.code === 'CONFIG_INVALID';
  await assert.rejects(second.listenUnix(socketPath), isConfigError);
  const plainFile = path.join(dir, 'not-a-socket');
  fs.writeFileSync(plainFile, 'keep me');
  await assert.rejects(second.listenUnix(plainFile), isConfigError);
  assert.equal(fs.readFileSync(plainFile, 'utf8'), 'keep me');
});
