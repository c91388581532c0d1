/**
 * A provider's own records (a driver's replicas, drills, failovers) in one owner-only JSON
 * file of its data directory: read at start (none yet: the empty records), written whole
 * after each change, one write after another, each made durable before the next.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../domain/errors.js';
import { fsyncDir, writeFileAtomic } from '../pki/index.js';

/** The records kept in `dir/fileName`, or `empty` when there are none yet; a file that is not the provider's records is CONFIG_INVALID. */
export function loadRecords<T extends object>(dir: string, fileName: string, empty: T): T {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = path.join(dir, fileName);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return empty;
    throw new OsrError('CONFIG_INVALID', `${file} cannot be read: ${(e as Error).message}`);
  }
  let saved: unknown;
  try {
    saved = JSON.parse(text);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `${file} is not JSON (${(e as Error).message}); restore it from a backup or move it away to start with no records`);
  }
  if (typeof saved !== 'object' || saved === null || Array.isArray(saved)) throw new OsrError('CONFIG_INVALID', `${file} does not hold the provider's records`);
  // the provider's own file, written by RecordsWriter below
  return { ...empty, ...(saved as Partial<T>) };
}

/** Saves run one after another (a failed one does not stop the next); each writes the whole records as they are then. */
export class RecordsWriter<T> {
  private saving: Promise<void> = Promise.resolve();
  constructor(
    private readonly dir: string,
    private readonly fileName: string,
  ) {}

  save(records: T): Promise<void> {
    const text = `${JSON.stringify(records, null, 2)}\n`;
    const saved = this.saving
      .catch(() => undefined)
      .then(async () => {
        await writeFileAtomic(path.join(this.dir, this.fileName), text, 0o600);
        await fsyncDir(this.dir);
      });
    this.saving = saved;
    return saved;
  }

  settled(): Promise<void> {
    return this.saving.catch(() => undefined);
  }
}
