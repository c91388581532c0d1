/**
 * A page blob that Azure can import as a managed disk is a fixed VHD: the disk's bytes,
 * zeros up to a whole MiB, then a 512-byte footer (the Virtual Hard Disk Image Format
 * Specification, "Hard Disk Footer Format"; every field big-endian). This module makes
 * and checks that footer; docs/design/azure.md says where it goes.
 */
import crypto from 'node:crypto';
import { OsrError } from './errors.js';

export const VHD_FOOTER_BYTES = 512;
/** Azure takes disks whose virtual size is a whole number of MiB */
export const AZURE_DISK_ALIGN = 1024 * 1024;
/** the largest managed disk Azure makes (32 TiB of data) */
export const AZURE_MAX_DISK_BYTES = 32 * 1024 ** 4;

const COOKIE = 'conectix';
/** features: the "reserved" bit, which the specification says is always set */
const FEATURES = 0x00000002;
const VERSION = 0x00010000;
const FIXED_DISK = 2;
/** the footer's time stamp counts seconds from 2000-01-01 00:00:00 UTC */
const EPOCH_2000_MS = Date.UTC(2000, 0, 1);

/** The size of the disk Azure sees for a source disk of `size` bytes: rounded up to a whole MiB. */
export function azureDiskBytes(size: number): number {
  if (!Number.isSafeInteger(size) || size <= 0) throw new OsrError('INVALID_ARGUMENT', `a disk size must be a positive whole number of bytes, not ${size}`);
  const rounded = Math.ceil(size / AZURE_DISK_ALIGN) * AZURE_DISK_ALIGN;
  if (rounded > AZURE_MAX_DISK_BYTES) {
    throw new OsrError('NOT_SUPPORTED', `a disk of ${size} bytes is larger than the largest Azure managed disk (32 TiB)`, { size, max: AZURE_MAX_DISK_BYTES });
  }
  return rounded;
}

/** The length of the page blob that holds a source disk of `size` bytes: the disk rounded up, then the footer. */
export function pageBlobBytes(size: number): number {
  return azureDiskBytes(size) + VHD_FOOTER_BYTES;
}

/** Cylinders, heads and sectors per track for `size` bytes, by the specification's algorithm. */
export function vhdGeometry(size: number): { cylinders: number; heads: number; sectorsPerTrack: number } {
  let total = Math.min(Math.floor(size / 512), 65535 * 16 * 255);
  let spt: number;
  let heads: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(total / spt);
  } else {
    spt = 17;
    cth = Math.floor(total / spt);
    heads = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(total / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(total / spt);
    }
  }
  total = cth;
  return { cylinders: Math.floor(total / heads), heads, sectorsPerTrack: spt };
}

/** The ones' complement of the sum of the footer's bytes, the checksum field counted as zero. */
function footerChecksum(footer: Buffer): number {
  let sum = 0;
  for (let i = 0; i < VHD_FOOTER_BYTES; i++) if (i < 64 || i >= 68) sum = (sum + footer[i]!) >>> 0;
  return ~sum >>> 0;
}

export interface VhdFooterOptions {
  /** the disk's unique id (16 bytes); random by default */
  uniqueId?: Buffer;
  /** when the disk was made (ms since 1970); now by default */
  createdMs?: number;
}

/** The footer of a fixed VHD for a source disk of `size` bytes (Azure's size: azureDiskBytes). */
export function vhdFooter(size: number, o: VhdFooterOptions = {}): Buffer {
  const current = azureDiskBytes(size);
  const uniqueId = o.uniqueId ?? crypto.randomBytes(16);
  if (uniqueId.length !== 16) throw new OsrError('INVALID_ARGUMENT', `a VHD's unique id is 16 bytes, not ${uniqueId.length}`);
  const f = Buffer.alloc(VHD_FOOTER_BYTES);
  f.write(COOKIE, 0, 'latin1');
  f.writeUInt32BE(FEATURES, 8);
  f.writeUInt32BE(VERSION, 12);
  f.writeBigUInt64BE(0xffffffffffffffffn, 16); // data offset: none (a fixed disk)
  f.writeUInt32BE(Math.max(0, Math.floor(((o.createdMs ?? Date.now()) - EPOCH_2000_MS) / 1000)) >>> 0, 24);
  f.write('osr ', 28, 'latin1'); // creator application
  f.writeUInt32BE(0x00010000, 32); // creator version
  f.write('Wi2k', 36, 'latin1'); // creator host OS, as Azure's own tools write
  f.writeBigUInt64BE(BigInt(current), 40); // original size
  f.writeBigUInt64BE(BigInt(current), 48); // current size
  const g = vhdGeometry(current);
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(FIXED_DISK, 60);
  uniqueId.copy(f, 68);
  f.writeUInt8(0, 84); // saved state
  f.writeUInt32BE(footerChecksum(f), 64);
  return f;
}

export interface VhdFooterFacts {
  currentSize: number;
  diskType: number;
  uniqueId: Buffer;
}

/** Check a fixed VHD's footer (cookie, checksum, type, size): what a blob must end in to be imported. */
export function readVhdFooter(footer: Buffer, where = 'the VHD footer'): VhdFooterFacts {
  const bad = (why: string, details?: Record<string, unknown>) => new OsrError('AZURE_DISK_INVALID', `${where} is not a fixed VHD footer: ${why}`, details);
  if (footer.length !== VHD_FOOTER_BYTES) throw bad(`it is ${footer.length} bytes, not ${VHD_FOOTER_BYTES}`);
  if (footer.toString('latin1', 0, 8) !== COOKIE) throw bad('no conectix cookie');
  const sum = footer.readUInt32BE(64);
  if (sum !== footerChecksum(footer)) throw bad('its checksum does not match', { stored: sum, computed: footerChecksum(footer) });
  const diskType = footer.readUInt32BE(60);
  if (diskType !== FIXED_DISK) throw bad(`disk type ${diskType} (a fixed disk is 2)`, { diskType });
  const size = footer.readBigUInt64BE(48);
  if (size === 0n || size % BigInt(AZURE_DISK_ALIGN) !== 0n || size > BigInt(AZURE_MAX_DISK_BYTES)) throw bad(`current size ${size} is not a whole number of MiB up to 32 TiB`, { currentSize: Number(size) });
  return { currentSize: Number(size), diskType, uniqueId: Buffer.from(footer.subarray(68, 84)) };
}
