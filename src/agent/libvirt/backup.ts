/**
 * One copy cycle of a libvirt domain: a pull-mode backup that creates the next osr
 * checkpoint, incremental from the previous one (or full, for the initial copy), its
 * disks exported over NBD on a Unix socket, read with osr's NBD client, then ended with
 * `domjobabort`. The backup's view is one instant across every disk of the domain.
 *
 * osr's checkpoints are named `osr-<n>`; checkpoints of other tools are never touched.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NbdClient, type Extent } from '../nbd/nbd-client.js';
import { OsrError } from '../../domain/errors.js';
import { xmlText, type Virsh } from './virsh.js';

export const CHECKPOINT_PREFIX = 'osr-';

/** What libvirt says of a checkpoint whose bitmap is gone or cannot be trusted. */
const INCONSISTENT = /checkpoint inconsistent|missing or broken bitmap|bitmap .* (is inconsistent|in use|not found)|Checkpoint not found|no domain checkpoint/i;

/** The export's extents that hold what the cycle must read: dirty ones, or (full) allocated ones. */
export interface ChangedExtent {
  offset: number;
  length: number;
}

export interface BackupBeginOptions {
  /** the disks to back up (targets: vda, vdb), every disk of the domain for a consistent point */
  disks: string[];
  /** the checkpoint this backup creates (none: a view of the disks now, no new checkpoint) */
  checkpoint?: string;
  /** the checkpoint to be incremental from; omitted: a full backup */
  incremental?: string;
  /** where the NBD socket and the scratch files go (created 0700) */
  workDir: string;
}

/** The osr checkpoints of a domain, oldest first, and the others (left alone). */
export async function listCheckpoints(virsh: Virsh, domain: string): Promise<{ ours: string[]; foreign: string[] }> {
  const names = (await virsh.run(['checkpoint-list', domain, '--name', '--topological'])).split('\n').map((s) => s.trim()).filter(Boolean);
  return { ours: names.filter((n) => n.startsWith(CHECKPOINT_PREFIX)), foreign: names.filter((n) => !n.startsWith(CHECKPOINT_PREFIX)) };
}

/** Delete one of osr's checkpoints (its bitmap is merged into its parent's by libvirt). */
export async function deleteCheckpoint(virsh: Virsh, domain: string, name: string): Promise<void> {
  if (!name.startsWith(CHECKPOINT_PREFIX)) throw new OsrError('INVALID_ARGUMENT', `osr deletes only its own checkpoints, not ${name}`);
  await virsh.run(['checkpoint-delete', domain, name]);
}

/**
 * Forget every osr checkpoint of a domain, for a resynchronization: deleted with their
 * bitmaps where libvirt can, else their metadata only (a broken bitmap left in an image is
 * removed by QEMU when the domain runs, or stays unused: osr's names never repeat).
 * Other tools' checkpoints are left as they are. Answers the names dropped.
 */
export async function dropCheckpoints(virsh: Virsh, domain: string): Promise<string[]> {
  const { ours } = await listCheckpoints(virsh, domain);
  for (const name of [...ours].reverse()) {
    try {
      await virsh.run(['checkpoint-delete', domain, name]);
    } catch (e) {
      if (!(e instanceof OsrError) || e.code === 'DOMAIN_BUSY') throw e;
      await virsh.run(['checkpoint-delete', domain, name, '--metadata']);
      await removeStaleBitmap(virsh, domain, name);
    }
  }
  return ours;
}

/** A running domain's bitmap of that name, removed from every disk that has it (best effort). */
async function removeStaleBitmap(virsh: Virsh, domain: string, name: string): Promise<void> {
  let blocks: { inserted?: { 'node-name'?: string }; 'dirty-bitmaps'?: { name: string }[] }[] = [];
  try {
    blocks = (JSON.parse(await virsh.run(['qemu-monitor-command', domain, '{"execute":"query-block"}'])) as { return: typeof blocks }).return;
  } catch {
    return; // not running: nothing to remove now
  }
  for (const b of blocks) {
    const node = b.inserted?.['node-name'];
    if (!node || !(b['dirty-bitmaps'] ?? []).some((m) => m.name === name)) continue;
    await virsh.run(['qemu-monitor-command', domain, JSON.stringify({ execute: 'block-dirty-bitmap-remove', arguments: { node, name } })]).catch(() => undefined);
  }
}

export class PullBackup {
  private ended = false;

  private constructor(
    private readonly virsh: Virsh,
    readonly domain: string,
    readonly socketPath: string,
    readonly o: BackupBeginOptions,
  ) {}

  /** Begin the backup: the checkpoint is made and the disks are exported at this instant. */
  static async begin(virsh: Virsh, domain: string, o: BackupBeginOptions): Promise<PullBackup> {
    fs.mkdirSync(o.workDir, { recursive: true, mode: 0o700 });
    const socketPath = backupSocketPath(o.workDir);
    fs.rmSync(socketPath, { force: true });
    const scratch = (disk: string) => path.join(o.workDir, `scratch-${disk}.qcow2`);
    for (const d of o.disks) fs.rmSync(scratch(d), { force: true });
    const backupXml = [
      `<domainbackup mode='pull'>`,
      o.incremental ? `<incremental>${xmlText(o.incremental)}</incremental>` : '',
      `<server transport='unix' socket='${xmlText(socketPath)}'/>`,
      '<disks>',
      ...o.disks.map((d) => `<disk name='${xmlText(d)}' backup='yes' type='file'><scratch file='${xmlText(scratch(d))}'/></disk>`),
      '</disks></domainbackup>',
    ].join('');
    const checkpointXml = o.checkpoint === undefined ? undefined : `<domaincheckpoint><name>${xmlText(o.checkpoint)}</name><disks>${o.disks.map((d) => `<disk name='${xmlText(d)}' checkpoint='bitmap'/>`).join('')}</disks></domaincheckpoint>`;
    const dir = fs.mkdtempSync(path.join(o.workDir, 'xml-'));
    try {
      fs.writeFileSync(path.join(dir, 'backup.xml'), backupXml, { mode: 0o600 });
      if (checkpointXml !== undefined) fs.writeFileSync(path.join(dir, 'checkpoint.xml'), checkpointXml, { mode: 0o600 });
      await virsh.run(['backup-begin', domain, path.join(dir, 'backup.xml'), ...(checkpointXml !== undefined ? [path.join(dir, 'checkpoint.xml')] : [])]);
    } catch (e) {
      // a bitmap lost or left in use (QEMU killed, a migration or restore without it): the changes since cannot be known
      if (o.incremental && e instanceof OsrError && INCONSISTENT.test(e.message)) {
        throw new OsrError('RESYNC_REQUIRED', `the changes of ${domain} since checkpoint ${o.incremental} cannot be read (${e.message}); osr drops its checkpoints and compares the disks with the replica by checksums`, { domain, checkpoint: o.incremental }, { cause: e });
      }
      throw e;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    return new PullBackup(virsh, domain, socketPath, o);
  }

  /** Connect to one disk's export, with the context that says what to read. */
  async open(disk: string): Promise<{ client: NbdClient; context: string }> {
    const context = this.o.incremental ? `qemu:dirty-bitmap:backup-${disk}` : 'base:allocation';
    const client = await NbdClient.connect({ socketPath: this.socketPath, exportName: disk }, { metaContexts: [context] });
    if (!client.contexts.has(context)) {
      await client.close();
      throw new OsrError('RESYNC_REQUIRED', `the backup of ${this.domain} exports ${disk} without ${context}: its change tracking cannot be read`, { disk });
    }
    return { client, context };
  }

  /** End the backup job (the export goes away; the checkpoint stays). Safe to call twice. */
  async end(): Promise<void> {
    if (this.ended) return;
    try {
      await this.virsh.run(['domjobabort', this.domain]);
    } catch (e) {
      // a job that ended already (the domain stopped) has nothing to abort
      if (!(e instanceof OsrError) || !/no job is active|not active/i.test(e.message)) throw e;
    }
    this.ended = true;
    for (const d of this.o.disks) fs.rmSync(path.join(this.o.workDir, `scratch-${d}.qcow2`), { force: true });
    fs.rmSync(this.socketPath, { force: true });
    if (path.dirname(this.socketPath) !== this.o.workDir) fs.rmSync(path.dirname(this.socketPath), { recursive: true, force: true });
  }
}

/** The longest path a Unix socket may have (sun_path holds 108 bytes with its terminating NUL). */
const MAX_SOCKET_PATH = 107;

/**
 * Where QEMU serves a backup: in the VM's work directory, or, where that path would be too
 * long for a Unix socket (an agent whose data directory is deep), in a private directory of
 * its own under the temporary one.
 */
export function backupSocketPath(workDir: string): string {
  const inWorkDir = path.join(workDir, 'backup.sock');
  if (Buffer.byteLength(inWorkDir) <= MAX_SOCKET_PATH) return inWorkDir;
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'osr-backup-')), 'backup.sock');
}

/**
 * The extents of a disk to read this cycle: dirty since the previous checkpoint
 * (incremental) or allocated (full), merged where they touch, walked to the disk's end.
 */
export async function changedExtents(client: NbdClient, context: string): Promise<ChangedExtent[]> {
  const dirty = context.startsWith('qemu:dirty-bitmap:');
  const out: ChangedExtent[] = [];
  const MAX_ASK = 1024 * 1024 * 1024;
  for (let offset = 0; offset < client.size; ) {
    const extents: Extent[] = await client.blockStatus(context, offset, Math.min(client.size - offset, MAX_ASK));
    if (extents.length === 0) throw new OsrError('PROTOCOL_ERROR', `block status of ${context} answered nothing at ${offset}`);
    for (const e of extents) {
      const wanted = dirty ? (e.flags & 1) === 1 : (e.flags & 1) === 0;
      if (!wanted || e.length === 0) continue;
      const end = Math.min(e.offset + e.length, client.size);
      const last = out.at(-1);
      if (last && last.offset + last.length === e.offset) last.length = end - last.offset;
      else out.push({ offset: e.offset, length: end - e.offset });
    }
    const last = extents.at(-1)!;
    offset = last.offset + last.length;
  }
  return out;
}
