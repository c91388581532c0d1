/**
 * The lab's own processes, as `osr lab up` records them the moment each is spawned: pid,
 * process group and start time. A pid is reused once its process is gone, so a recorded
 * pid is signalled only while the process that holds it started when the record says
 * (Linux: field 22 of /proc/PID/stat, in clock ticks since boot).
 */
import fs from 'node:fs';
import path from 'node:path';

export interface LabProcess {
  /** agent: a kvm lab's host agent, which the launcher starts itself (a lab fabric's provider starts its own) */
  role: 'vault' | 'provider' | 'agent' | 'emulator';
  /** the vault's name, the provider's fabric or the agent's host */
  name: string;
  pid: number;
  /** its process group: its own (it was spawned detached), which its hosts' agents share */
  pgid: number;
  /** /proc/PID/stat start time; null where /proc is not there */
  startTime: string | null;
  /** the fabric whose site it belongs to (`osr lab site fail NAME` kills it); none: a third site */
  site?: string;
  /** how to start it again from its state (`osr lab site restore`): its arguments, its log, the key of its ready line */
  spawn?: { args: string[]; log: string; ready: string };
}

/** The start time of a process, or undefined when it does not exist. */
export function processStartTime(pid: number): string | null | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') return fs.existsSync('/proc/self/stat') ? undefined : signalAlive(pid) ? null : undefined;
    throw e;
  }
  // the command name (field 2) is in parentheses and may hold spaces: count from the last ')'
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  if (state === 'Z' || state === 'X') return undefined;
  return fields[19] ?? null;
}

function signalAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A record of a process spawned now. */
export function recordProcess(role: LabProcess['role'], name: string, pid: number, more: Pick<LabProcess, 'site' | 'spawn'> = {}): LabProcess {
  return { role, name, pid, pgid: pid, startTime: processStartTime(pid) ?? null, ...more };
}

/** The recorded process still runs (the same one: same start time). */
export function isRunning(p: LabProcess): boolean {
  const now = processStartTime(p.pid);
  if (now === undefined) return false;
  return p.startTime === null || now === null || now === p.startTime;
}

/** The running (not zombie) processes of a process group, from /proc. */
export function groupMembers(pgid: number, o: { zombies?: boolean } = {}): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(fields[2]) === pgid && (o.zombies || (fields[0] !== 'Z' && fields[0] !== 'X'))) out.push(Number(name));
  }
  return out;
}

/** Some process of the group is left (the leader may be gone while its hosts' agents run on). */
function groupAlive(pgid: number): boolean {
  if (fs.existsSync('/proc/self/stat')) return groupMembers(pgid).length > 0;
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // gone meanwhile
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Stop a recorded process and its group: SIGTERM to the process (a provider then stops its
 * hosts itself), SIGKILL to the whole group after the grace period, or at once for what is
 * left of a group whose leader has ended. A pid that now belongs to another process is not
 * touched; its group is signalled only while the leader's record was verified.
 */
export async function stopLabProcess(p: LabProcess, graceMs = 60_000): Promise<'stopped' | 'killed' | 'not running'> {
  const ours = isRunning(p);
  if (!ours) {
    // the leader ended (killed, crashed): agents of its group may remain, in the group it
    // made; a group id is not reused while any member of it runs
    if (processStartTime(p.pid) === undefined && groupAlive(p.pgid)) {
      signalGroup(p.pgid, 'SIGKILL');
      await reaped(p);
      return 'killed';
    }
    return 'not running';
  }
  try {
    process.kill(p.pid, 'SIGTERM');
  } catch {
    return 'not running';
  }
  const deadline = Date.now() + graceMs;
  while (isRunning(p) && Date.now() < deadline) await sleep(100);
  let how: 'stopped' | 'killed' = 'stopped';
  if (isRunning(p) || groupAlive(p.pgid)) {
    signalGroup(p.pgid, 'SIGKILL');
    how = 'killed';
  }
  for (let i = 0; i < 50 && (isRunning(p) || groupAlive(p.pgid)); i++) await sleep(100);
  await reaped(p);
  return how;
}

/**
 * Wait a little for the ended processes of the group to be reaped by their parent: until
 * then their pids still answer signals (as zombies) and could not be told from running ones.
 */
async function reaped(p: LabProcess): Promise<void> {
  if (!fs.existsSync('/proc/self/stat')) return;
  for (let i = 0; i < 100 && groupMembers(p.pgid, { zombies: true }).length > 0; i++) await sleep(100);
}

/**
 * The vault, providers and (kvm lab) agents of the lab in `dir` that run now, found by their
 * command lines (`osr vault --data-dir DIR/vault`, `osr provider --config DIR/sites/…`,
 * `osr agent --data-dir DIR/sites/…` spawned by the launcher, not by a provider): a launcher
 * killed between a spawn and its record leaves a process lab.json does not name.
 */
export function findLabProcesses(dir: string): LabProcess[] {
  if (!fs.existsSync('/proc/self/stat')) return [];
  const vaultDir = path.join(dir, 'vault');
  const sitesDir = path.join(dir, 'sites') + path.sep;
  const out: LabProcess[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    let argv: string[];
    let stat: string;
    try {
      argv = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const at = (flag: string) => {
      const i = argv.indexOf(flag);
      return i >= 0 ? argv[i + 1] : undefined;
    };
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z' || fields[0] === 'X') continue;
    const proc = (role: LabProcess['role'], label: string): LabProcess => ({ role, name: label, pid: Number(name), pgid: Number(fields[2]), startTime: fields[19] ?? null });
    if (argv.includes('vault') && (at('--data-dir') === vaultDir || at('--data-dir')?.startsWith(sitesDir))) out.push(proc('vault', 'vault'));
    else if (argv.includes('azure-emulator') && at('--data-dir') === path.join(dir, 'azure')) out.push(proc('emulator', 'azure'));
    else if (argv.includes('provider') && at('--config')?.startsWith(sitesDir)) out.push(proc('provider', path.basename(at('--config')!, '.yaml')));
    else if (argv.includes('agent') && at('--host') === 'libvirt' && at('--data-dir')?.startsWith(sitesDir) && Number(fields[2]) === Number(name)) out.push(proc('agent', at('--name') ?? 'agent'));
  }
  return out;
}
