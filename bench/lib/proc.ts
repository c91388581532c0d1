/**
 * CPU and memory of a process from /proc (Linux): CPU time is utime + stime from
 * /proc/<pid>/stat (clock ticks), RSS is VmRSS and VmHWM from /proc/<pid>/status.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { MB, max, mean } from './stats.js';

let clkTck: number | undefined;
/** Clock ticks per second (getconf CLK_TCK, 100 on practically every Linux). */
export function clockTicks(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/**
 * CPU seconds (user + system) the process has used so far (`self`), and those of its
 * children it has waited for (`children`, cutime + cstime); null when it is gone.
 */
export function cpuTimes(pid: number | 'self'): { self: number; children: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // the command name (field 2) may hold spaces and parentheses: parse after the last ')'
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17
  const f = (n: number) => Number(fields[n - 3]);
  return { self: (f(14) + f(15)) / clockTicks(), children: (f(16) + f(17)) / clockTicks() };
}

/** CPU seconds (user + system) the process has used so far; null when it is gone. */
export function cpuSeconds(pid: number): number | null {
  return cpuTimes(pid)?.self ?? null;
}

/** Resident set size and its peak (high-water mark) in bytes; null when the process is gone. */
export function memory(pid: number): { rssBytes: number; hwmBytes: number } | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kb = (key: string) => {
    const m = new RegExp(`^${key}:\\s+(\\d+)\\s+kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : 0;
  };
  return { rssBytes: kb('VmRSS'), hwmBytes: kb('VmHWM') };
}

export interface ProcessUsage {
  /** samples taken */
  samples: number;
  /** mean CPU over the whole window: CPU seconds / wall seconds × 100 (100 = one core busy) */
  cpuPercentMean: number;
  /** the busiest sampling interval */
  cpuPercentMax: number;
  rssMBMean: number;
  rssMBMax: number;
  /** VmHWM at the end: the peak RSS the kernel saw, between samples included */
  peakRssMB: number;
  cpuSeconds: number;
  wallSeconds: number;
  /** per-interval series, one value per sample */
  cpuPercentSeries: number[];
  rssMBSeries: number[];
}

/** Samples one process's CPU % and RSS at a fixed interval. */
export class ProcessSampler {
  private timer: NodeJS.Timeout | undefined;
  private startCpu = 0;
  private startWall = 0;
  private lastCpu = 0;
  private lastWall = 0;
  private readonly cpuSeries: number[] = [];
  private readonly rssSeries: number[] = [];
  private hwm = 0;

  constructor(
    readonly pid: number,
    private readonly intervalMs = 1000,
  ) {}

  start(): this {
    this.startCpu = this.lastCpu = cpuSeconds(this.pid) ?? 0;
    this.startWall = this.lastWall = performance.now();
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    return this;
  }

  sample(): void {
    const cpu = cpuSeconds(this.pid);
    const mem = memory(this.pid);
    const now = performance.now();
    if (cpu === null || mem === null) return;
    const wall = (now - this.lastWall) / 1000;
    if (wall > 0) this.cpuSeries.push(((cpu - this.lastCpu) / wall) * 100);
    this.rssSeries.push(mem.rssBytes / MB);
    this.hwm = Math.max(this.hwm, mem.hwmBytes);
    this.lastCpu = cpu;
    this.lastWall = now;
  }

  private peekIndex = 0;
  /** Mean CPU % of the intervals since the last peek, and the latest RSS. */
  peek(): { cpuPercent: number; rssMB: number } {
    const s = this.cpuSeries.slice(this.peekIndex);
    this.peekIndex = this.cpuSeries.length;
    return { cpuPercent: mean(s), rssMB: this.rssSeries.at(-1) ?? NaN };
  }

  stop(): ProcessUsage {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.sample();
    const wallSeconds = (this.lastWall - this.startWall) / 1000;
    const used = this.lastCpu - this.startCpu;
    return {
      samples: this.rssSeries.length,
      cpuPercentMean: wallSeconds > 0 ? (used / wallSeconds) * 100 : NaN,
      cpuPercentMax: max(this.cpuSeries),
      rssMBMean: mean(this.rssSeries),
      rssMBMax: max(this.rssSeries),
      peakRssMB: this.hwm / MB,
      cpuSeconds: used,
      wallSeconds,
      cpuPercentSeries: this.cpuSeries,
      rssMBSeries: this.rssSeries,
    };
  }
}

/** Busy and total jiffies of all CPUs together, from the first line of /proc/stat. */
function systemTicks(): { busy: number; total: number } | null {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0];
    const v = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    const idle = (v[3] ?? 0) + (v[4] ?? 0);
    const total = v.slice(0, 8).reduce((a, b) => a + (b || 0), 0);
    return { busy: total - idle, total };
  } catch {
    return null;
  }
}

/**
 * How busy the whole machine was over a window, in % of one core (200 = two cores busy),
 * to tell how much CPU other processes took from a benchmark on a shared machine.
 */
export class MachineCpuMeter {
  private start0 = systemTicks();
  private readonly cpus: number;
  constructor(cpus: number) {
    this.cpus = cpus;
  }
  restart(): this {
    this.start0 = systemTicks();
    return this;
  }
  /** % of one core used by all processes since the start */
  busyPercent(): number {
    const now = systemTicks();
    if (!this.start0 || !now || now.total === this.start0.total) return NaN;
    return ((now.busy - this.start0.busy) / (now.total - this.start0.total)) * this.cpus * 100;
  }
}

/** CPU seconds of this process (user + system) since `from` (a process.cpuUsage() value). */
export function ownCpuSeconds(from?: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(from);
  return (u.user + u.system) / 1e6;
}

/**
 * CPU seconds per kind of thread of a process (threads grouped by name: node's main
 * thread, the libuv thread pool, V8's workers...), user and system apart.
 */
export function threadCpu(pid: number): Map<string, { user: number; system: number }> {
  const out = new Map<string, { user: number; system: number }>();
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue;
    }
    const name = tid === String(pid) ? 'main' : text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')).replace(/[0-9]+$/, '').trim();
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const f = (n: number) => Number(fields[n - 3]) / clockTicks();
    const t = out.get(name) ?? { user: 0, system: 0 };
    t.user += f(14);
    t.system += f(15);
    out.set(name, t);
  }
  return out;
}

/** The CPU seconds per thread kind spent between two `threadCpu` snapshots, as "name u/s" text. */
export function threadCpuSince(before: Map<string, { user: number; system: number }>, after: Map<string, { user: number; system: number }>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, a] of after) {
    const b = before.get(name) ?? { user: 0, system: 0 };
    const u = a.user - b.user;
    const s = a.system - b.system;
    if (u + s >= 0.01) out[name] = `${u.toFixed(2)} user + ${s.toFixed(2)} sys`;
  }
  return out;
}
