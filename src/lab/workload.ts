/**
 * A lab VM's guest: random 4–64 KiB writes to every disk through NBD at a steady rate,
 * with a flush every 32 writes, as a busy guest would. It stops on request or when its
 * disks go away (the VM was stopped), and can be started again.
 */
import crypto from 'node:crypto';
import { NbdClient } from '../agent/nbd/nbd-client.js';

export const DEFAULT_WORKLOAD_BYTES_PER_SECOND = 256 * 1024;

export class Workload {
  private stopped = false;
  private readonly done: Promise<void>;
  /** bytes written and acknowledged so far */
  bytesWritten = 0;
  error: Error | undefined;

  constructor(
    readonly uris: string[],
    readonly bytesPerSecond = DEFAULT_WORKLOAD_BYTES_PER_SECOND,
  ) {
    this.done = this.run().catch((e: unknown) => {
      if (!this.stopped) this.error = e as Error;
    });
  }

  private async run(): Promise<void> {
    const clients = await Promise.all(this.uris.map((u) => NbdClient.connect(u)));
    const started = Date.now();
    try {
      let n = 0;
      while (!this.stopped) {
        const c = clients[n % clients.length]!;
        const len = 4096 * (1 + crypto.randomInt(16));
        const off = 4096 * crypto.randomInt(Math.max(1, Math.floor((c.size - len) / 4096)));
        await c.write(off, crypto.randomBytes(len));
        this.bytesWritten += len;
        if (++n % 32 === 0) await c.flush();
        // keep to the rate: sleep until the bytes written so far are due
        const due = (this.bytesWritten / this.bytesPerSecond) * 1000 - (Date.now() - started);
        if (due > 0) await new Promise((r) => setTimeout(r, Math.min(due, 1000)));
      }
      for (const c of clients) await c.flush();
    } finally {
      await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.done;
  }
}
