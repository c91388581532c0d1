/**
 * The sealed channel (src/agent/wire/sealed.ts) over real mutual TLS and TCP on loopback:
 * records sealed on the thread pool are AES-256-GCM as Node's own crypto makes them, bytes
 * cross both ways unchanged through many key epochs, and a peer without the TLS session's
 * secrets, or one that alters a record, gets nothing in.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import { addon } from '../../src/agent/io/native.js';
import { openRecord, openSealed, routeConnection, SealedAttachments, sealedSecrets, sealRecord, SEALED_MAGIC, type SealedStream } from '../../src/agent/wire/sealed.js';
import { OsrError } from '../../src/domain/errors.js';
import { ensurePki } from '../../src/lab/agent-process.js';
import { clientTlsOptions, loadTlsMaterial, serverTlsOptions, type TlsMaterial } from '../../src/pki/index.js';
import { prng, randomBytes } from '../support/unit.js';

let dir: string;
let server: { port: number; close(): Promise<void>; next(): Promise<{ tls: tls.TLSSocket; sealed: () => Promise<Duplex> }>; refused: string[] };
let client: TlsMaterial;
let unregistered = 0;
const lonely: tls.TLSSocket[] = [];

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-sealed-'));
  await ensurePki(dir, ['replica', 'primary']);
  const files = (name: string) => ({ certFile: path.join(dir, `${name}.crt`), keyFile: path.join(dir, `${name}.key`), caFile: path.join(dir, 'ca.crt') });
  client = await loadTlsMaterial(files('primary'));
  const attachments = new SealedAttachments();
  const arrived: { tls: tls.TLSSocket; sealed: () => Promise<Duplex> }[] = [];
  const waiters: ((c: { tls: tls.TLSSocket; sealed: () => Promise<Duplex> }) => void)[] = [];
  const refused: string[] = [];
  const tlsServer = tls.createServer(serverTlsOptions(await loadTlsMaterial(files('replica'))), (socket) => {
    socket.on('error', () => undefined);
    if (unregistered > 0) {
      // a session that never agreed on the channel: its token is never listened for
      unregistered--;
      attachments.expect(socket);
      lonely.push(socket);
      return;
    }
    // as a session does once the hello agreed on the channel: its token is listened for from here
    const attached = attachments.expect(socket)();
    const c = { tls: socket, sealed: () => attached };
    const w = waiters.shift();
    if (w) w(c);
    else arrived.push(c);
  });
  const raw = new Set<net.Socket>();
  const listener = net.createServer({ pauseOnConnect: true }, (socket) => {
    raw.add(socket);
    socket.once('close', () => raw.delete(socket));
    routeConnection(socket, { onTls: (s) => tlsServer.emit('connection', s), onSealed: (s, token) => attachments.accept(s, token), onRefused: (reason) => refused.push(reason) });
  });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  server = {
    port: (listener.address() as net.AddressInfo).port,
    refused,
    close: () =>
      new Promise((resolve) => {
        listener.close(() => resolve());
        // (a sealed channel's socket is a duplicate of its accepted one: the test's clients close those)
        for (const s of raw) s.destroy();
        for (const s of clients) s.destroy();
      }),
    next: () => {
      const c = arrived.shift();
      return c ? Promise.resolve(c) : new Promise((resolve) => waiters.push(resolve));
    },
  };
});

after(async () => {
  await server?.close();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const clients = new Set<tls.TLSSocket>();

async function connectTls(): Promise<tls.TLSSocket> {
  const socket = tls.connect({ host: '127.0.0.1', port: server.port, ...clientTlsOptions(client, { servername: 'localhost' }) });
  clients.add(socket);
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
  return socket;
}

function collect(stream: Duplex, bytes: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let got = 0;
  return new Promise((resolve, reject) => {
    stream.on('data', (b: Buffer) => {
      parts.push(Buffer.from(b));
      got += b.length;
      if (got >= bytes) resolve(Buffer.concat(parts));
    });
    stream.once('error', reject);
  });
}

function closedWith(stream: Duplex): Promise<Error | undefined> {
  return new Promise((resolve) => {
    let error: Error | undefined;
    stream.on('error', (e) => (error = e));
    stream.once('close', () => resolve(error));
  });
}

test('a record sealed on the thread pool is AES-256-GCM as Node makes it, and opens as Node seals it; an altered one does not open', async () => {
  assert.ok(addon, 'the native addon is built');
  const key = crypto.randomBytes(32);
  const plain = crypto.randomBytes(300 * 1024 + 7);
  const out = Buffer.alloc(4 + plain.length + 16);
  await sealRecord(key, 5, plain, out);
  const nonce = Buffer.alloc(12);
  nonce.writeBigUInt64BE(5n, 4);
  const c = crypto.createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(out.subarray(0, 4));
  assert.deepEqual(out.subarray(4), Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]));
  const small = Buffer.from('a short control frame');
  const smallOut = Buffer.alloc(4 + small.length + 16);
  await sealRecord(key, 6, small, smallOut);
  const sealed = Buffer.from(out.subarray(4));
  assert.equal(await openRecord(key, 5, out.subarray(0, 4), sealed), true);
  assert.deepEqual(sealed.subarray(0, plain.length), plain);
  const smallSealed = Buffer.from(smallOut.subarray(4));
  assert.equal(await openRecord(key, 6, smallOut.subarray(0, 4), smallSealed), true);
  assert.deepEqual(smallSealed.subarray(0, small.length), small);
  // another index (a replayed or reordered record), an altered byte, an altered length field
  for (const [index, mutate] of [[6, () => undefined], [5, (b: Buffer) => (b[1000] ^= 1)], [5, (b: Buffer) => (b[b.length - 1] ^= 0x80)]] as const) {
    const b = Buffer.from(out.subarray(4));
    mutate(b);
    assert.equal(await openRecord(key, index, out.subarray(0, 4), b), false);
    assert.ok(b.subarray(0, plain.length).every((x) => x === 0), 'nothing unauthenticated is left behind');
  }
  assert.equal(await openRecord(key, 5, Buffer.from([0, 0, 0, 1]), Buffer.from(out.subarray(4))), false);
});

test('bytes cross a sealed channel both ways unchanged, in many records and across key epochs', async () => {
  const first = await connectTls();
  const [opened, theirs] = await Promise.all([openSealed(first, (onread) => net.connect({ host: '127.0.0.1', port: server.port, onread }), 5000), server.next()]);
  const accepted = (await theirs.sealed()) as SealedStream;
  const rnd = prng(7);
  // 6,000 small records (past the 4,096 of one key) and some large ones
  const writes: Buffer[] = [];
  for (let i = 0; i < 6000; i++) writes.push(randomBytes(rnd, 1 + Math.floor(rnd() * 200)));
  for (let i = 0; i < 6; i++) writes.push(crypto.randomBytes(Math.floor(rnd() * 9 * 1024 * 1024) + 1));
  const total = writes.reduce((n, b) => n + b.length, 0);
  const there = collect(accepted, total);
  for (const w of writes) if (!opened.write(w)) await new Promise((r) => opened.once('drain', r));
  assert.deepEqual(await there, Buffer.concat(writes));
  const back = crypto.randomBytes(5 * 1024 * 1024);
  const here = collect(opened, back.length);
  accepted.write(back);
  assert.deepEqual(await here, back);
  // the two connections close together
  const tlsClosed = new Promise((r) => first.once('close', r));
  accepted.destroy();
  await tlsClosed;
});

test('a connection with an unknown or used token is refused; a record altered on the way, or out of bounds, closes the channel with PROTOCOL_ERROR', async () => {
  // an unknown token
  const stranger = net.connect(server.port, '127.0.0.1');
  stranger.on('error', () => undefined);
  stranger.write(Buffer.concat([SEALED_MAGIC, crypto.randomBytes(32)]));
  await new Promise((r) => stranger.once('close', r));
  assert.ok(server.refused.some((r) => r.includes('names no TLS session')), server.refused.join('; '));

  // the right token, used twice
  const first = await connectTls();
  const theirs = server.next();
  const opened = await openSealed(first, (onread) => net.connect({ host: '127.0.0.1', port: server.port, onread }), 5000);
  const again = net.connect(server.port, '127.0.0.1');
  again.on('error', () => undefined);
  again.write(Buffer.concat([SEALED_MAGIC, sealedSecrets(first).token]));
  await new Promise((r) => again.once('close', r));

  // a record whose ciphertext was altered: sealed with the right key, one bit flipped
  const accepted = (await (await theirs).sealed()) as SealedStream;
  const closed = closedWith(accepted);
  const { master } = sealedSecrets(first);
  const key = Buffer.from(crypto.hkdfSync('sha256', master, Buffer.alloc(0), 'osr sealed c2s 0', 32));
  const record = Buffer.alloc(4 + 100 + 16);
  await sealRecord(key, 0, crypto.randomBytes(100), record);
  record[50] ^= 1;
  opened.socket.write(record);
  const e = await closed;
  assert.ok(e instanceof OsrError && e.code === 'PROTOCOL_ERROR' && /authentication tag/.test(e.message), String(e));

  // a length field past the bound: refused before anything is allocated
  const second = await connectTls();
  const theirs2 = server.next();
  const opened2 = await openSealed(second, (onread) => net.connect({ host: '127.0.0.1', port: server.port, onread }), 5000);
  const accepted2 = (await (await theirs2).sealed()) as SealedStream;
  const closed2 = closedWith(accepted2);
  opened2.socket.write(Buffer.from([0xff, 0xff, 0xff, 0xf0]));
  const e2 = await closed2;
  assert.ok(e2 instanceof OsrError && e2.code === 'PROTOCOL_ERROR' && /out of bounds/.test(e2.message), String(e2));
});

test('a session that did not agree on the channel has no token listened for; an orderly close still delivers the last records', async () => {
  unregistered = 1;
  const first = await connectTls();
  await assert.rejects(openSealed(first, (onread) => net.connect({ host: '127.0.0.1', port: server.port, onread }), 3000), (e: OsrError) => e.code === 'NETWORK_ERROR');
  assert.ok(server.refused.some((r) => r.includes('names no TLS session')));
  lonely.shift()?.destroy();

  // the server's last words, then an orderly close: the client reads them all, then the end
  const second = await connectTls();
  const theirs = server.next();
  const opened = await openSealed(second, (onread) => net.connect({ host: '127.0.0.1', port: server.port, onread }), 5000);
  const accepted = (await (await theirs).sealed()) as SealedStream;
  const last = Buffer.concat([crypto.randomBytes(8 * 1024 * 1024), Buffer.from('{"type":"error","code":"EPOCH_STALE"}')]);
  const got: Buffer[] = [];
  const ended = new Promise<void>((resolve) => opened.on('end', () => resolve()));
  opened.on('data', (b: Buffer) => got.push(Buffer.from(b)));
  accepted.write(last.subarray(0, 8 * 1024 * 1024));
  accepted.end(last.subarray(8 * 1024 * 1024));
  await ended;
  assert.deepEqual(Buffer.concat(got), last);
});
