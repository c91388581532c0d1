/**
 * A qcow2 file served by `qemu-nbd` on a private Unix socket, for what qemu-img cannot do:
 * write at offsets (a promotion's rollback ranges into its top layer), and read a
 * persistent dirty bitmap of a domain that is off (`--bitmap`, a demote's last writes).
 * The server serves the one connection osr makes and is stopped when it is done.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { NbdClient } from '../nbd/nbd-client.js';
import { changedExtents } from './backup.js';

export interface QemuNbdOptions {
  readOnly?: boolean;
  /** export this persistent bitmap too, as the metadata context `qemu:dirty-bitmap:NAME` */
  bitmap?: string;
}

/** Serve `file` (qcow2) with qemu-nbd while `use` runs with a client connected to it. */
export async function withQemuNbd<T>(file: string, o: QemuNbdOptions, use: (client: NbdClient) => Promise<T>): Promise<T> {
  // a socket path must be short (108 bytes): a private directory of its own under the temporary one
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-qnbd-'));
  const socket = path.join(sockDir, 'nbd.sock');
  const args = ['--socket', socket, '--format', 'qcow2', '--cache', 'none', '--aio', 'threads', ...(o.readOnly ? ['--read-only'] : []), ...(o.bitmap ? ['--bitmap', o.bitmap] : []), '--', path.resolve(file)];
  const server = spawn('qemu-nbd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  server.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => server.on('close', () => resolve()));
  server.on('error', () => undefined);
  try {
    const deadline = Date.now() + 30_000;
    while (!fs.existsSync(socket)) {
      if (server.exitCode !== null || server.signalCode !== null || Date.now() > deadline) {
        throw new OsrError('HYPERVISOR_ERROR', `qemu-nbd did not serve ${path.basename(file)}: ${stderr.trim() || 'no socket'}`, { file: path.basename(file) });
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    // the socket's file is there once qemu-nbd bound it, a moment before it listens: a
    // refused connection in that moment is tried again
    let client: NbdClient;
    for (;;) {
      try {
        client = await NbdClient.connect({ socketPath: socket, exportName: '' }, o.bitmap ? { metaContexts: [`qemu:dirty-bitmap:${o.bitmap}`] } : {});
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code ?? (e as { details?: { errno?: string } }).details?.errno;
        const refused = code === 'ECONNREFUSED' || /ECONNREFUSED/.test((e as Error).message);
        if (!refused || server.exitCode !== null || server.signalCode !== null || Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    try {
      return await use(client);
    } finally {
      await client.close();
    }
  } finally {
    await stopServer(server, exited);
    fs.rmSync(sockDir, { recursive: true, force: true });
  }
}

/**
 * Stop qemu-nbd: it ends by itself when its one client leaves; otherwise SIGTERM, and
 * SIGKILL if it is still there after 10 s (a SIGTERM that came while it was starting can
 * be lost: it would serve forever, and its caller would wait for it forever).
 */
async function stopServer(server: ReturnType<typeof spawn>, exited: Promise<void>): Promise<void> {
  const running = () => server.exitCode === null && server.signalCode === null;
  const within = (ms: number) => Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
  if (running() && !(await within(2000))) {
    server.kill('SIGTERM');
    if (!(await within(10_000))) server.kill('SIGKILL');
  }
  await exited;
}

/**
 * The ranges a persistent bitmap of a qcow2 file marks dirty, read while no QEMU has the
 * file open. A bitmap QEMU did not store cleanly (killed) is refused by qemu-nbd as
 * inconsistent: HYPERVISOR_ERROR, and the caller compares every block instead.
 */
export async function offlineBitmapRanges(file: string, bitmap: string): Promise<[number, number][]> {
  return withQemuNbd(file, { readOnly: true, bitmap }, async (client) => {
    const context = `qemu:dirty-bitmap:${bitmap}`;
    if (!client.contexts.has(context)) throw new OsrError('HYPERVISOR_ERROR', `qemu-nbd did not export bitmap ${bitmap} of ${path.basename(file)}`);
    return (await changedExtents(client, context)).map((e) => [e.offset, e.offset + e.length] as [number, number]);
  });
}
