/**
 * A compressed DATA frame may not make its receiver decompress past the frame's own limit:
 * a zstd "bomb" (a few hundred KiB that expand to gigabytes) is refused before or while it
 * decompresses, into a buffer no larger than the frame header's size.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { compress, CompressStream } from 'zstd-napi';
import { digest } from '../../src/agent/io/checksum.js';
import { DATA_FRAME_HEAD_BYTES, DATA_HEADER_BYTES, encodeData, encodeDataInPlace, FrameReader, FrameType } from '../../src/agent/wire/wire.js';
import type { OsrError } from '../../src/domain/errors.js';

function frame(body: Buffer, rawLength: number, sumOf: Buffer): Buffer {
  const head = Buffer.alloc(5 + DATA_HEADER_BYTES);
  head.writeUInt32BE(1 + DATA_HEADER_BYTES + body.length, 0);
  head.writeUInt8(FrameType.Data, 4);
  head.writeUInt8(1, 5);
  head.writeUInt32BE(rawLength, 9);
  head.writeBigUInt64BE(0n, 13);
  digest(sumOf).copy(head, 21);
  return Buffer.concat([head, body]);
}

async function receive(bytes: Buffer): Promise<{ error?: OsrError; frames: number }> {
  const stream = new PassThrough();
  let frames = 0;
  return new Promise((resolve) => {
    new FrameReader(
      stream,
      () => undefined,
      () => {
        frames++;
      },
      (error) => resolve({ error, frames }),
    );
    stream.end(bytes);
    setTimeout(() => resolve({ frames }), 2000);
  });
}

async function streamCompressZeroes(totalBytes: number): Promise<Buffer> {
  const out: Buffer[] = [];
  const s = new CompressStream({ compressionLevel: 1 });
  s.on('data', (b: Buffer) => out.push(b));
  const done = new Promise((resolve) => s.on('end', resolve));
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  for (let sent = 0; sent < totalBytes; sent += chunk.length) {
    if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
  }
  s.end();
  await done;
  return Buffer.concat(out);
}

test('a DATA frame whose zstd header declares more than the frame header is refused before decompressing', async () => {
  const raw = Buffer.alloc(4096);
  const bomb = compress(Buffer.alloc(64 * 1024 * 1024));
  assert.ok(bomb.length < 64 * 1024, `the bomb is ${bomb.length} bytes`);
  const r = await receive(frame(bomb, raw.length, raw));
  assert.equal(r.frames, 0);
  assert.equal(r.error?.code, 'PROTOCOL_ERROR');
  assert.match(r.error!.message, /refused before decompressing/);
});

test('a DATA frame of unknown content size that expands to 4 GiB fails inside a buffer of the header\'s size', async () => {
  const bomb = await streamCompressZeroes(4 * 1024 ** 3);
  assert.ok(bomb.length < 1024 * 1024, `the bomb is ${bomb.length} bytes`);
  const raw = Buffer.alloc(4096);
  const rssBefore = process.memoryUsage().rss;
  const r = await receive(frame(bomb, raw.length, raw));
  assert.equal(r.frames, 0);
  assert.equal(r.error?.code, 'CHECKSUM_MISMATCH');
  const grown = process.memoryUsage().rss - rssBefore;
  assert.ok(grown < 256 * 1024 * 1024, `decoding grew the process by ${grown} bytes`);
});

test('an honest compressed DATA frame still decodes', async () => {
  const raw = Buffer.alloc(1024 * 1024, 7);
  const r = await new Promise<{ parts: Buffer[] }>((resolve, reject) => {
    const stream = new PassThrough();
    new FrameReader(stream, () => undefined, (f) => resolve(f), reject);
    stream.end(frame(compress(raw), raw.length, raw));
  });
  assert.deepEqual(Buffer.concat(r.parts), raw);
});

test('a DATA frame built in place is the frame sendData sends: one buffer, decoded to its body and offset', async () => {
  const body = Buffer.alloc(300 * 1024);
  for (let i = 0; i < body.length; i += 4) body.writeUInt32LE(i, i);
  const framed = Buffer.alloc(DATA_FRAME_HEAD_BYTES + body.length, 0xee);
  body.copy(framed, DATA_FRAME_HEAD_BYTES);
  const built = encodeDataInPlace(123 * 4096, framed);
  assert.equal(built, framed);
  assert.ok(built.equals(Buffer.concat(encodeData(123 * 4096, body, false))));
  const r = await new Promise<{ parts: Buffer[]; offset: number }>((resolve, reject) => {
    const stream = new PassThrough();
    new FrameReader(stream, () => undefined, (f) => resolve(f), reject);
    stream.end(built);
  });
  assert.equal(r.offset, 123 * 4096);
  assert.deepEqual(Buffer.concat(r.parts), body);
});
