/** Guest writes of one cycle as a closed change log, as a primary ships a delta (for tests of replica targets). */
import fs from 'node:fs';
import path from 'node:path';
import type { ReplicaDiskSpec } from '../../src/agent/ports/replica-target.js';
import { ChangeLogWriter, diskKeyOf } from '../../src/agent/tracking/change-log.js';

export type Op = { kind: 'write'; offset: number; data: Buffer } | { kind: 'zero'; offset: number; length: number };

/** A closed and synced change log of delta `seq` holding `ops`, in their order. */
export function writeDeltaLog(file: string, seq: number, disk: ReplicaDiskSpec, ops: Op[]): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.rmSync(file, { force: true });
  const w = ChangeLogWriter.create(file, { seq, createdMs: 1, diskKey: diskKeyOf(disk.id) });
  for (const op of ops) {
    if (op.kind === 'write') w.appendWrite(op.offset, op.data);
    else w.appendZero(op.offset, op.length);
  }
  w.close(2);
  w.syncSync();
  w.closeFile();
}
