/**
 * A managed disk brought into the region's agent for a failback (docs/design/azure.md,
 * Failback): its bytes read through the read SAS Azure grants for a deallocated VM's disk,
 * inside the region (no WAN traffic), into a sparse raw image on this host. The agent then
 * replicates that image home like any VM of its own: the resync compares block checksums
 * with the on-premises replica and sends only what differs.
 *
 * The blob must be the fixed VHD Azure exports: the disk rounded up to a MiB, then a
 * 512-byte footer that says so. Each range is read with its MD5 and checked; ranges of
 * zeros stay holes. The image is written as `<file>.part`, synced, then renamed: a file
 * of the final name is a whole disk.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { AnonymousCredential, PageBlobClient } from '@azure/storage-blob';
import { parseReadSasUrl } from '../../domain/azure-layout.js';
import { OsrError } from '../../domain/errors.js';
import { azureDiskBytes, readVhdFooter, VHD_FOOTER_BYTES } from '../../domain/vhd.js';
import { fsyncDir } from '../io/durable-file.js';
import { writeFully } from '../io/io.js';
import { isZero } from '../io/sparse.js';
import { storageError } from './page-blob-disk.js';

/** a range read at once: the most a ranged read may ask an MD5 for */
const RANGE_BYTES = 4 * 1024 * 1024;
const IN_FLIGHT = 8;
/** a range's pieces of zeros this large are left as holes */
const HOLE_GRAIN = 64 * 1024;

export interface DiskSource {
  /** the disk's id at home (its change logs and its replica are keyed by it) */
  id: string;
  name: string;
  /** the disk's size at the source (the Azure disk is this rounded up to a MiB) */
  size: number;
  /** the disk's read SAS URL */
  url: string;
}

async function readAll(stream: NodeJS.ReadableStream | undefined, expect: number, what: string): Promise<Buffer> {
  if (!stream) throw new OsrError('AZURE_STORAGE_ERROR', `${what}: the storage account answered no body`);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of stream as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > expect) throw new OsrError('AZURE_DISK_INVALID', `${what}: more bytes than asked for`);
    chunks.push(c);
  }
  if (n !== expect) throw new OsrError('AZURE_DISK_INVALID', `${what}: ${n} bytes of ${expect} arrived`);
  return Buffer.concat(chunks, n);
}

/** Where a managed disk's ranges go, in any order, each once: a new image, or an existing VM's disk. */
export type RangeSink = (offset: number, data: Buffer) => Promise<void> | void;

/**
 * Read disk `d` through its read URL, range by range (4 MiB, 8 at once, each checked
 * against its MD5), after checking the blob is the fixed VHD of the disk's size; each range
 * goes to `sink`. The first failure stops every reader, and the call returns only once none
 * is left running.
 */
export async function readManagedDisk(d: DiskSource, sink: RangeSink, onBytes: (n: number) => void, signal?: AbortSignal): Promise<void> {
  const url = parseReadSasUrl(d.url);
  const blob = new PageBlobClient(url.toString(), new AnonymousCredential());
  const what = `disk ${d.name} at ${url.host}`;
  let length: number;
  try {
    length = (await blob.getProperties({ abortSignal: signal })).contentLength ?? 0;
  } catch (e) {
    throw storageError(e, `reading the size of ${what}`);
  }
  const rounded = azureDiskBytes(d.size);
  if (length !== rounded + VHD_FOOTER_BYTES) throw new OsrError('AZURE_DISK_INVALID', `${what} is ${length} bytes; a disk of ${d.size} bytes is exported as ${rounded + VHD_FOOTER_BYTES} (the disk to a whole MiB, then the VHD footer)`);
  let footer: Buffer;
  try {
    footer = await readAll((await blob.download(rounded, VHD_FOOTER_BYTES, { abortSignal: signal })).readableStreamBody, VHD_FOOTER_BYTES, `the footer of ${what}`);
  } catch (e) {
    throw storageError(e, `reading the footer of ${what}`);
  }
  const facts = readVhdFooter(footer, `the footer of ${what}`);
  if (facts.currentSize !== rounded) throw new OsrError('AZURE_DISK_INVALID', `the footer of ${what} says ${facts.currentSize} bytes, not ${rounded}`);

  const stop = new AbortController();
  const onAbort = () => stop.abort();
  if (signal?.aborted) stop.abort();
  signal?.addEventListener('abort', onAbort, { once: true });
  const stopped = () => new OsrError('INTERRUPTED', `the reading of ${what} was stopped`);
  try {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < d.size) {
        if (stop.signal.aborted) throw stopped();
        const offset = next;
        const count = Math.min(RANGE_BYTES, d.size - offset);
        next += count;
        let res;
        try {
          res = await blob.download(offset, count, { rangeGetContentMD5: true, abortSignal: stop.signal });
        } catch (e) {
          throw storageError(e, `reading ${count} bytes at ${offset} of ${what}`);
        }
        const buf = await readAll(res.readableStreamBody, count, `${count} bytes at ${offset} of ${what}`);
        // the service's MD5 of the range, where it gave one: a range damaged on the way is refused
        if (res.contentMD5 && !crypto.createHash('md5').update(buf).digest().equals(Buffer.from(res.contentMD5))) {
          throw new OsrError('CHECKSUM_MISMATCH', `${count} bytes at ${offset} of ${what} do not match their MD5`, { disk: d.name, offset });
        }
        if (stop.signal.aborted) throw stopped();
        await sink(offset, buf);
        onBytes(count);
      }
    };
    const settled = await Promise.allSettled(
      Array.from({ length: IN_FLIGHT }, () =>
        worker().catch((e: unknown) => {
          stop.abort();
          throw e;
        }),
      ),
    );
    // the first real failure, not the stops it caused
    const failures = settled.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    const first = failures.find((e) => !(e instanceof OsrError && e.code === 'INTERRUPTED')) ?? failures[0];
    if (first !== undefined) throw first;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

/** A range in 64 KiB pieces, each with its offset on the disk (the unit an import writes, and a refresh compares). */
export function* rangePieces(offset: number, data: Buffer): Generator<{ offset: number; at: number; data: Buffer }> {
  for (let at = 0; at < data.length; at += HOLE_GRAIN) yield { offset: offset + at, at, data: data.subarray(at, Math.min(data.length, at + HOLE_GRAIN)) };
}

/** The pieces of a range that hold more than zeros: a new image writes only those (the rest stay holes). */
export function* dataPieces(offset: number, data: Buffer): Generator<{ offset: number; data: Buffer }> {
  for (const p of rangePieces(offset, data)) if (!isZero(p.data)) yield p;
}

/**
 * Read disk `d` into `file` (made anew; a `.part` left by an earlier try is overwritten):
 * written as `.part`, synced, then renamed, so that a file of the final name is a whole
 * disk. Answers the bytes written (not holes).
 */
export async function importDisk(d: DiskSource, file: string, onBytes: (n: number) => void, signal?: AbortSignal): Promise<number> {
  parseReadSasUrl(d.url);
  const part = `${file}.part`;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const fd = fs.openSync(part, 'w', 0o600);
  let written = 0;
  try {
    fs.ftruncateSync(fd, d.size);
    await readManagedDisk(
      d,
      (offset, data) => {
        for (const p of dataPieces(offset, data)) {
          writeFully(fd, p.data, p.offset);
          written += p.data.length;
        }
      },
      onBytes,
      signal,
    );
    fs.fsyncSync(fd);
  } finally {
    // (readManagedDisk returns only once no reader is left: nothing writes after the close)
    fs.closeSync(fd);
  }
  fs.renameSync(part, file);
  fsyncDir(path.dirname(file));
  return written;
}
