/** Facts about the machine a benchmark ran on, recorded next to its numbers. */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

export interface MachineFacts {
  date: string;
  hostname: string;
  cpus: number;
  cpuModel: string;
  totalMemoryGiB: number;
  platform: string;
  kernel: string;
  node: string;
  rsync: string | null;
  tmpdir: string;
  tmpFilesystem: string | null;
  gitCommit: string | null;
}

function tryRun(cmd: string, args: string[]): string | null {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return null;
  }
}

export function machineFacts(): MachineFacts {
  const tmp = os.tmpdir();
  let tmpFilesystem: string | null = null;
  const df = tryRun('df', ['-PT', tmp]);
  if (df) {
    const f = df.split('\n')[1]?.split(/\s+/);
    if (f && f.length >= 2) tmpFilesystem = `${f[1]} on ${f[0]}`;
  }
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  if (cpuModel === 'unknown') {
    try {
      cpuModel = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpuModel;
    } catch {
      // not Linux
    }
  }
  return {
    date: new Date().toISOString(),
    hostname: os.hostname(),
    cpus: os.availableParallelism?.() ?? os.cpus().length,
    cpuModel,
    totalMemoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    platform: `${os.platform()} ${os.arch()}`,
    kernel: os.release(),
    node: process.version,
    rsync: tryRun('rsync', ['--version'])?.split('\n')[0] ?? null,
    tmpdir: tmp,
    tmpFilesystem,
    // read-only: which commit the numbers belong to
    gitCommit: tryRun('git', ['rev-parse', '--short', 'HEAD']),
  };
}
