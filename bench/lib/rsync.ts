/**
 * The peer for copy benchmarks: an rsync daemon on 127.0.0.1 (no chroot, one writable
 * module) and an rsync client copying one file to it with --whole-file --inplace.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, onCleanup, sleep, stopChild, waitForPort } from './lab.js';
import { cpuTimes } from './proc.js';

export interface RsyncDaemon {
  port: number;
  module: string;
  destDir: string;
  url: string;
  child: ChildProcess;
  stop: () => Promise<void>;
}

export async function startRsyncDaemon(dir: string): Promise<RsyncDaemon> {
  const destDir = path.join(dir, 'rsync-dest');
  fs.mkdirSync(destDir, { recursive: true });
  const module = 'bench';
  let lastError: unknown;
  // the free port can be taken between the probe and the daemon's bind: try a few
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const conf = path.join(dir, 'rsyncd.conf');
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    fs.writeFileSync(
      conf,
      [
        `# written by the osr replication benchmark`,
        `use chroot = no`,
        `address = 127.0.0.1`,
        `port = ${port}`,
        `pid file = ${path.join(dir, 'rsyncd.pid')}`,
        `log file = ${path.join(dir, 'rsyncd.log')}`,
        `uid = ${uid}`,
        `gid = ${gid}`,
        ``,
        `[${module}]`,
        `  path = ${destDir}`,
        `  read only = false`,
        ``,
      ].join('\n'),
    );
    const child = spawn('rsync', ['--daemon', '--no-detach', `--config=${conf}`, `--port=${port}`, '--address=127.0.0.1'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    const stop = onCleanup(() => stopChild(child, 5000));
    try {
      await Promise.race([waitForPort(port, 10_000, () => child.exitCode === null && child.signalCode === null), spawnError]);
      return { port, module, destDir, url: `rsync://127.0.0.1:${port}/${module}/`, child, stop };
    } catch (e) {
      lastError = new Error(`rsync daemon did not start: ${(e as Error).message}${stderr ? `: ${stderr.trim()}` : ''}`);
      await stop();
    }
  }
  throw lastError;
}

export interface RsyncCopy {
  seconds: number;
  bytes: number;
  /** CPU seconds of the rsync client (sender) */
  clientCpuSeconds: number | null;
  /** CPU seconds of the daemon's connection process(es) (receiver, generator) */
  serverCpuSeconds: number | null;
  /** what rsync --stats reports: bytes the client sent and received */
  bytesSent: number | null;
  bytesReceived: number | null;
}

function statsNumber(out: string, label: string): number | null {
  const m = new RegExp(`${label}:\\s*([\\d,.]+)`).exec(out);
  return m ? Number(m[1].replace(/[,.]/g, '')) : null;
}

/**
 * Copy one file to the daemon's module; the wall time is from spawn to exit of the client.
 * CPU: the client is our child and the daemon reaps its per-connection children, so both
 * show up in cutime+cstime of the waiting parent once they have exited.
 */
export async function rsyncCopy(daemon: RsyncDaemon, file: string, extraArgs: string[] = [], mode: 'whole-file' | 'delta' = 'whole-file'): Promise<RsyncCopy> {
  const bytes = fs.statSync(file).size;
  const args = [mode === 'whole-file' ? '--whole-file' : '--no-whole-file', '--inplace', '--stats', ...extraArgs, file, daemon.url];
  const selfBefore = cpuTimes('self');
  const daemonBefore = cpuTimes(daemon.child.pid!);
  const t0 = performance.now();
  const child = spawn('rsync', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stop = onCleanup(() => stopChild(child, 2000));
  let stdout = '';
  child.stdout!.on('data', (b: Buffer) => (stdout += b.toString()));
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (c) => resolve(c));
  });
  const seconds = (performance.now() - t0) / 1000;
  await stop();
  if (code !== 0) throw new Error(`rsync ${args.join(' ')} exited with code ${code}: ${stderr.trim()}`);
  const copied = path.join(daemon.destDir, path.basename(file));
  const got = fs.statSync(copied).size;
  if (got !== bytes) throw new Error(`rsync copied ${got} of ${bytes} bytes`);
  // give the daemon a moment to reap its connection process
  await sleep(200);
  const selfAfter = cpuTimes('self');
  const daemonAfter = cpuTimes(daemon.child.pid!);
  return {
    seconds,
    bytes,
    clientCpuSeconds: selfBefore && selfAfter ? selfAfter.children - selfBefore.children : null,
    serverCpuSeconds: daemonBefore && daemonAfter ? daemonAfter.children - daemonBefore.children : null,
    bytesSent: statsNumber(stdout, 'Total bytes sent'),
    bytesReceived: statsNumber(stdout, 'Total bytes received'),
  };
}
