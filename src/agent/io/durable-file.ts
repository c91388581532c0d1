/**
 * Writes that must survive a crash: write to a temporary name, fsync it, rename over the
 * target, fsync the directory. A reader sees the old or the new content, never a mix.
 */
import fs from 'node:fs';
import path from 'node:path';

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function writeFileDurable(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeFileSync(fd, data);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

export function writeJsonDurable(file: string, value: unknown): void {
  writeFileDurable(file, JSON.stringify(value, null, 2) + '\n');
}

export function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

let discarded = 0;

/**
 * Remove a file or directory now as far as readers can tell (renamed into trashDir at
 * once), and free its space in the background: unlinking large files is slow on file
 * systems that discard. Whatever a crash leaves in trashDir is removed by `emptyTrash`.
 */
export function discard(target: string, trashDir: string): void {
  if (!fs.existsSync(target)) return;
  fs.mkdirSync(trashDir, { recursive: true });
  const moved = path.join(trashDir, `${process.pid}-${Date.now()}-${discarded++}-${path.basename(target)}`);
  fs.renameSync(target, moved);
  fs.rm(moved, { recursive: true, force: true }, () => undefined);
}

export function emptyTrash(trashDir: string): void {
  fs.rmSync(trashDir, { recursive: true, force: true });
}
