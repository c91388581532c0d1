/**
 * A queue of received byte chunks from which whole messages are taken. Taking copies only
 * when a message spans chunks, once, so parsing a stream stays linear in its size.
 */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private bytes = 0;

  get length(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** The first n bytes (removed from the queue), or undefined when fewer are queued. */
  take(n: number): Buffer | undefined {
    const parts = this.takeParts(n);
    if (!parts) return undefined;
    return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
  }

  /** The first n bytes as the chunks that hold them (no copy), or undefined when fewer are queued. */
  takeParts(n: number): Buffer[] | undefined {
    if (this.bytes < n) return undefined;
    this.bytes -= n;
    const parts: Buffer[] = [];
    let need = n;
    while (need > 0) {
      const c = this.chunks[0];
      if (c.length <= need) {
        parts.push(c);
        this.chunks.shift();
        need -= c.length;
      } else {
        parts.push(c.subarray(0, need));
        this.chunks[0] = c.subarray(need);
        need = 0;
      }
    }
    return parts;
  }

  /**
   * The first n bytes without removing them, or undefined when fewer are queued. When they
   * span chunks, those chunks are joined once in the queue, so peeking again is free.
   */
  peek(n: number): Buffer | undefined {
    if (this.bytes < n) return undefined;
    if (this.chunks[0].length >= n) return this.chunks[0];
    let count = 0;
    let joined = 0;
    while (joined < n) joined += this.chunks[count++].length;
    const head = Buffer.concat(this.chunks.slice(0, count), joined);
    this.chunks.splice(0, count, head);
    return head;
  }

  /** Copy the queued chunks that are views of `backing` (a buffer about to be reused), so the queue owns its bytes. */
  copyBorrowed(backing: ArrayBufferLike): void {
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i]!;
      if (c.buffer === backing) this.chunks[i] = Buffer.from(c);
    }
  }

  /** Drop the first n bytes (at most what is queued). */
  skip(n: number): void {
    let need = Math.min(n, this.bytes);
    this.bytes -= need;
    while (need > 0) {
      const c = this.chunks[0];
      if (c.length <= need) {
        this.chunks.shift();
        need -= c.length;
      } else {
        this.chunks[0] = c.subarray(need);
        need = 0;
      }
    }
  }

  /** A big-endian u32 at the head of the queue, without removing it. */
  peekUInt32BE(): number | undefined {
    if (this.bytes < 4) return undefined;
    if (this.chunks[0].length >= 4) return this.chunks[0].readUInt32BE(0);
    const head = Buffer.alloc(4);
    let filled = 0;
    for (const c of this.chunks) {
      filled += c.copy(head, filled, 0, Math.min(c.length, 4 - filled));
      if (filled === 4) break;
    }
    return head.readUInt32BE(0);
  }
}
