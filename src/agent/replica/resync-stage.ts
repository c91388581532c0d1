/**
 * The replica side of a resynchronization: blocks that differ from the primary's are not
 * written into the images (that would leave the latest recovery point half overwritten
 * while the resync runs) but staged, one change log per disk, under <store>/resync/. When
 * the primary has compared every disk it ships the change log it kept during the resync;
 * the store applies the staged log and then that log as one delta (undo first, as for
 * every delta), so the resync ends in one new crash-consistent point and every older
 * point stays intact.
 *
 * Staged logs are made durable at each checkpoint the primary asks for, with the offset
 * up to which the disk has been compared; a resync interrupted on either side resumes
 * from there (the log is cut back to the checkpoint).
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { ChangeLogWriter, diskKeyOf, LOG_HEADER_BYTES, scanLogFile } from '../tracking/change-log.js';
import { fsyncDir } from '../io/durable-file.js';
import type { ResyncState } from '../ports/replica-target.js';

export class ResyncStage {
  private readonly writers = new Map<string, ChangeLogWriter>();

  constructor(
    readonly dir: string,
    readonly state: ResyncState,
  ) {}

  file(disk: string): string {
    return path.join(this.dir, `${disk}.osrlog`);
  }

  /** Start a new resync: empty staged logs, durable before the manifest names them. */
  static create(dir: string, state: ResyncState, disks: { id: string; name: string }[], nowMs: number): ResyncStage {
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const stage = new ResyncStage(dir, state);
    for (const d of disks) {
      const w = ChangeLogWriter.create(stage.file(d.name), { seq: state.seq, createdMs: nowMs, diskKey: diskKeyOf(d.id) });
      w.syncSync();
      stage.writers.set(d.name, w);
      state.disks[d.name] = { offset: 0, bytes: LOG_HEADER_BYTES, finished: false };
    }
    fsyncDir(dir);
    return stage;
  }

  /** Reopen after a restart or a new connection: each unfinished log is cut back to its checkpoint. */
  static resume(dir: string, state: ResyncState): ResyncStage {
    const stage = new ResyncStage(dir, state);
    for (const [disk, p] of Object.entries(state.disks)) {
      if (p.finished) continue;
      const file = stage.file(disk);
      if (!fs.existsSync(file)) throw new OsrError('REPLICA_STORE_CORRUPT', `${file}: the staged log of a resync is missing`);
      fs.truncateSync(file, p.bytes);
      stage.writers.set(disk, ChangeLogWriter.reopen(file, scanLogFile(file)));
    }
    return stage;
  }

  private writer(disk: string): ChangeLogWriter {
    const w = this.writers.get(disk);
    if (!w) throw new OsrError('PROTOCOL_ERROR', `disk ${disk} is not being resynchronized (unknown or already finished)`);
    return w;
  }

  stageWrite(disk: string, offset: number, parts: readonly Buffer[]): void {
    this.writer(disk).appendWrite(offset, parts.length === 1 ? parts[0] : Buffer.concat(parts));
  }

  stageZero(disk: string, offset: number, length: number): void {
    this.writer(disk).appendZero(offset, length);
  }

  /** Make the staged log durable up to here; `finished` seals it. The caller saves the manifest. */
  async checkpoint(disk: string, offset: number, finished: boolean, nowMs: number): Promise<void> {
    const w = this.writer(disk);
    if (finished) w.close(nowMs);
    await w.sync();
    this.state.disks[disk] = { offset, bytes: w.bytes, finished };
    if (finished) {
      w.closeFile();
      this.writers.delete(disk);
    }
  }

  get allFinished(): boolean {
    return Object.values(this.state.disks).every((d) => d.finished);
  }

  close(): void {
    for (const w of this.writers.values()) w.closeFile();
    this.writers.clear();
  }
}
