/** The handover disk: requests held while its backing changes, in-flight ones finished first, none split between backings. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockDevice, Extent } from '../../src/agent/io/block-device.js';
import { HandoverDisk } from '../../src/agent/replica/handover-disk.js';

/** An in-memory disk whose writes take `delayMs`. */
class MemDisk implements BlockDevice {
  readonly readOnly = false;
  readonly data: Buffer;
  constructor(
    readonly size: number,
    private readonly delayMs = 0,
  ) {
    this.data = Buffer.alloc(size);
  }
  async read(offset: number, length: number): Promise<Buffer> {
    return Buffer.from(this.data.subarray(offset, offset + length));
  }
  async write(offset: number, data: Buffer): Promise<void> {
    await new Promise((r) => setTimeout(r, this.delayMs));
    data.copy(this.data, offset);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async trim(offset: number, length: number): Promise<void> {
    this.data.fill(0, offset, offset + length);
  }
  async flush(): Promise<void> {}
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return [{ offset, length, hole: false, zero: false }];
  }
}

test('a handover waits for requests in flight, holds new ones, and sends them to the new backing', async () => {
  const a = new MemDisk(8192, 30);
  const b = new MemDisk(8192);
  const h = new HandoverDisk(a);
  const inFlight = h.write(0, Buffer.alloc(512, 1), { fua: false });
  const held = h.hold();
  let late = false;
  const after = h.write(512, Buffer.alloc(512, 2), { fua: false }).then(() => (late = true));
  await held;
  assert.equal(a.data[0], 1, 'the request in flight finished before the hold returned');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(late, false, 'a request made during the hold waits');
  // what the old backing holds is carried over, as a commit does
  a.data.copy(b.data);
  h.release(b);
  await Promise.all([inFlight, after]);
  assert.equal(b.data[512], 2, 'the held request went to the new backing');
  assert.equal(a.data[512], 0, 'and not to the old one');
  assert.equal((await h.read(0, 1))[0], 1);
});

test('a handover released without a new backing goes on against the old one', async () => {
  const a = new MemDisk(4096);
  const h = new HandoverDisk(a);
  await h.hold();
  const w = h.write(0, Buffer.alloc(512, 7), { fua: false });
  h.release();
  await w;
  assert.equal(a.data[0], 7);
});
