/**
 * A tiny Linux guest for the libvirt lab and its tests, built from Debian's packages on
 * the machine that runs it: the cloud kernel (virtio and a serial console, a few seconds
 * to boot under software emulation) and busybox-static, in an initramfs whose /init
 * mounts the guest's first disk (ext4) and writes numbered records, each fsynced, to a
 * file on it and to the raw second disk, printing an acknowledgement of each on the
 * serial console. A test that reads the console knows which records the guest holds as
 * written; a recovered disk must hold every record up to some number and none after.
 *
 * The packages are fetched once with `apt-get download` into a cache directory
 * (OSR_GUEST_CACHE, default ~/.cache/osr/tiny-guest) and the initramfs is rebuilt only
 * when the script changes.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { OsrError } from '../domain/errors.js';

const run = promisify(execFile);

/** Bytes per record in the records file and per record slot on the raw disk. */
export const RECORD_BYTES = 32;
export const RAW_RECORD_BYTES = 4096;

/** The modules the guest loads: the virtio PCI transport, its block and console drivers (with what they depend on, first). */
const MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console'];

/**
 * A clean power-off, as /sbin/shutdown (what the guest agent's guest-shutdown runs: `virsh
 * shutdown --mode agent`) and /sbin/poweroff. Every record is fsynced already; the sync is
 * for the rest. QEMU then quits as a guest's power-off asks, storing its dirty bitmaps. (A
 * guest without the agent does not answer ACPI's power button: nothing in it listens.)
 */
const POWEROFF = `#!/bin/busybox sh
echo "osr-guest: powering off"
/bin/busybox sync
exec /bin/busybox poweroff -f
`;

export interface TinyGuestOptions {
  /** include qemu-guest-agent (Debian's, with the libraries it links): fsfreeze and guest-ping work */
  agent?: boolean;
}

export interface TinyGuest {
  kernel: string;
  initrd: string;
  /** the kernel command line the init expects (add osr.* options to change what it does) */
  cmdline: string;
}

/**
 * The guest's init. Kernel options: `osr.interval=SECONDS` between records (default 0.2),
 * `osr.idle=1` to mount and do nothing (a VM that stays still), `osr.rate=KIB` to write
 * about KIB KiB of random bytes a second to the second disk, a second's worth at a time at
 * a random place, paced to the rate (default 0: none; with or without records).
 */
const INIT = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko || echo "osr-guest: module $m did not load"; done
interval=0.2
idle=0
rate=0
for o in $(cat /proc/cmdline); do
  case "$o" in
    osr.interval=*) interval="\${o#osr.interval=}" ;;
    osr.idle=*) idle="\${o#osr.idle=}" ;;
    osr.rate=*) rate="\${o#osr.rate=}" ;;
  esac
done
if [ -x /usr/sbin/qemu-ga ]; then
  for p in /sys/class/virtio-ports/*; do
    [ -f "$p/name" ] && [ "$(cat "$p/name")" = org.qemu.guest_agent.0 ] && qga="/dev/\${p##*/}"
  done
  if [ -n "$qga" ]; then /usr/sbin/qemu-ga -m virtio-serial -p "$qga" -d -f /tmp/qga.pid -t /tmp && echo "osr-guest: agent on $qga"; fi
fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 -o data=ordered /dev/vda /mnt; then echo "osr-guest: mount failed"; exec sh; fi
size=$(stat -c %s /mnt/records 2>/dev/null || echo 0)
next=$((size / ${RECORD_BYTES}))
echo "osr-guest: mounted next=$next"
if [ "$rate" -gt 0 ] && [ -b /dev/vdb ]; then
  (
    blocks=$(( (rate + 63) / 64 ))
    span=$(( $(blockdev --getsize64 /dev/vdb) / 65536 - blocks ))
    start=$(date +%s)
    written=0
    while true; do
      dd if=/dev/urandom of=/dev/vdb bs=65536 count=$blocks seek=$(( (RANDOM * 32768 + RANDOM) % span )) conv=notrunc,fsync 2>/dev/null
      written=$((written + blocks * 64))
      due=$((start + written / rate))
      now=$(date +%s)
      [ "$now" -lt "$due" ] && sleep $((due - now))
    done
  ) &
  echo "osr-guest: writing $rate KiB/s"
fi
if [ "$idle" = "1" ]; then while true; do sleep 3600; done; fi
while true; do
  rec=$(printf 'rec %08d ' "$next")
  line=$(printf '%-${RECORD_BYTES - 1}s' "$rec")
  printf '%s\\n' "$line" | dd of=/mnt/records bs=${RECORD_BYTES} seek=$next conv=notrunc,fsync 2>/dev/null || { echo "osr-guest: write failed at $next"; sleep 1; continue; }
  if [ -b /dev/vdb ]; then
    printf '%s\\n' "$line" | dd of=/dev/vdb bs=${RAW_RECORD_BYTES} seek=$next conv=notrunc,fsync,sync 2>/dev/null
  fi
  echo "osr-guest: ack $next"
  next=$((next + 1))
  sleep "$interval"
done
`;

function cacheDir(): string {
  return process.env.OSR_GUEST_CACHE ?? path.join(os.homedir(), '.cache', 'osr', 'tiny-guest');
}

async function tool(cmd: string, args: string[], cwd?: string): Promise<string> {
  try {
    const r = await run(cmd, args, { cwd, maxBuffer: 16 * 1024 * 1024 });
    return r.stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw new OsrError('NOT_SUPPORTED', `${cmd} is not installed: the tiny guest is built from Debian's packages with apt-get and dpkg-deb`);
    throw new OsrError('INTERNAL', `${cmd} ${args.join(' ')} failed: ${err.stderr?.trim() || err.message}`);
  }
}

/** Download (once) and unpack a Debian package into dir/<name>; answers that directory. */
async function unpacked(dir: string, pkg: string): Promise<string> {
  const out = path.join(dir, pkg);
  if (fs.existsSync(path.join(out, '.done'))) return out;
  const dl = path.join(dir, 'downloads');
  fs.mkdirSync(dl, { recursive: true });
  await tool('apt-get', ['download', pkg], dl);
  const deb = fs.readdirSync(dl).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (!deb) throw new OsrError('INTERNAL', `apt-get download ${pkg} left no package in ${dl}`);
  fs.rmSync(out, { recursive: true, force: true });
  await tool('dpkg-deb', ['-x', path.join(dl, deb), out]);
  fs.writeFileSync(path.join(out, '.done'), deb);
  return out;
}

/** The kernel package the cloud kernel's meta package points at. */
async function kernelPackage(): Promise<string> {
  const deps = await tool('apt-cache', ['depends', 'linux-image-cloud-amd64']);
  const m = /Depends: (linux-image-[0-9][^\s]*-cloud-amd64)/.exec(deps);
  if (!m) throw new OsrError('NOT_SUPPORTED', 'apt-cache knows no linux-image-cloud-amd64: the tiny guest needs Debian\'s cloud kernel');
  return m[1]!;
}

/** A newc cpio archive of these entries (directories first), as the kernel unpacks an initramfs. */
function cpio(entries: { name: string; mode: number; data?: Buffer }[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const hex = (n: number) => n.toString(16).padStart(8, '0');
  const add = (name: string, mode: number, data: Buffer) => {
    const nameBuf = Buffer.from(`${name}\0`);
    const header = `070701${hex(ino++)}${hex(mode)}${hex(0)}${hex(0)}${hex(1)}${hex(0)}${hex(data.length)}${hex(0)}${hex(0)}${hex(0)}${hex(0)}${hex(nameBuf.length)}${hex(0)}`;
    parts.push(Buffer.from(header), nameBuf, pad4(110 + nameBuf.length), data, pad4(data.length));
  };
  for (const e of entries) add(e.name, e.mode, e.data ?? Buffer.alloc(0));
  add('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

/** qemu-ga from its Debian package, and the libraries it links as this machine has them (the guest runs the same Debian). */
async function guestAgentFiles(dir: string): Promise<{ name: string; data: Buffer; mode: number }[]> {
  const root = await unpacked(dir, 'qemu-guest-agent');
  const bin = path.join(root, 'usr', 'sbin', 'qemu-ga');
  const libs = (await tool('ldd', [bin]))
    .split('\n')
    .map((l) => /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(l)?.[1])
    .filter((f): f is string => f !== undefined);
  if (libs.length === 0) throw new OsrError('INTERNAL', `ldd found no libraries for ${bin}`);
  return [{ name: 'usr/sbin/qemu-ga', data: fs.readFileSync(bin), mode: 0o100755 }, ...libs.map((f) => ({ name: f.slice(1), data: fs.readFileSync(f), mode: 0o100755 }))];
}

/** Every parent directory of these archive paths, parents first. */
function parentDirs(names: string[]): string[] {
  const dirs = new Set<string>();
  for (const n of names) {
    const parts = n.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  return [...dirs].sort((a, b) => a.split('/').length - b.split('/').length || a.localeCompare(b));
}

/** Build (or find in the cache) the tiny guest's kernel and initramfs. */
export async function tinyGuest(o: TinyGuestOptions = {}): Promise<TinyGuest> {
  const dir = cacheDir();
  fs.mkdirSync(dir, { recursive: true });
  const kpkg = await kernelPackage();
  const kroot = await unpacked(dir, kpkg);
  const bbroot = await unpacked(dir, 'busybox-static');
  const kernel = fs.readdirSync(path.join(kroot, 'boot')).find((f) => f.startsWith('vmlinuz-'));
  if (!kernel) throw new OsrError('INTERNAL', `${kpkg} holds no kernel`);
  const release = kernel.slice('vmlinuz-'.length);
  const moduleFiles = withDependencies(path.join(kroot, 'lib', 'modules', release, 'kernel'), MODULES, kpkg);
  const busybox = fs.readFileSync(path.join(bbroot, 'bin', 'busybox'));
  const agentFiles = o.agent ? await guestAgentFiles(dir) : [];
  const hash = crypto.createHash('sha256').update(INIT).update(POWEROFF).update(release).update(busybox).update(moduleFiles.map((m) => m.name).join());
  for (const f of agentFiles) hash.update(f.name).update(f.data);
  const id = hash.digest('hex').slice(0, 16);
  const initrd = path.join(dir, `initrd-${id}.cpio.gz`);
  if (!fs.existsSync(initrd)) {
    const base = ['bin', 'dev', 'lib', 'lib/modules', 'mnt', 'proc', 'sbin', 'sys', 'tmp'];
    const archive = cpio([
      ...[...new Set([...base, ...parentDirs(agentFiles.map((f) => f.name))])].map((d) => ({ name: d, mode: 0o40755 })),
      ...agentFiles.map((f) => ({ name: f.name, mode: f.mode, data: f.data })),
      { name: 'dev/console', mode: 0o20600 },
      { name: 'bin/busybox', mode: 0o100755, data: busybox },
      { name: 'init', mode: 0o100755, data: Buffer.from(INIT) },
      { name: 'sbin/poweroff', mode: 0o100755, data: Buffer.from(POWEROFF) },
      { name: 'sbin/shutdown', mode: 0o100755, data: Buffer.from(POWEROFF) },
      ...moduleFiles.map((m) => ({ name: `lib/modules/${m.name}.ko`, mode: 0o100644, data: fs.readFileSync(m.file) })),
      { name: 'lib/modules/order', mode: 0o100644, data: Buffer.from(`${moduleFiles.map((m) => m.name).join('\n')}\n`) },
    ]);
    const tmp = `${initrd}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, zlib.gzipSync(archive));
    fs.renameSync(tmp, initrd);
  }
  return { kernel: path.join(kroot, 'boot', kernel), initrd, cmdline: 'console=ttyS0 panic=-1 quiet' };
}

/** The modules asked for and every module they depend on (the `depends=` of each module's .modinfo), dependencies first. */
function withDependencies(root: string, names: string[], pkg: string): { name: string; file: string }[] {
  const out: { name: string; file: string }[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const file = findModule(root, `${name}.ko`);
    if (!file) throw new OsrError('INTERNAL', `${pkg} has no module ${name}`);
    const m = /depends=([^\0]*)\0/.exec(fs.readFileSync(file).toString('latin1'));
    for (const dep of (m?.[1] ?? '').split(',').filter(Boolean)) visit(dep);
    out.push({ name, file });
  };
  for (const n of names) visit(n);
  return out;
}

function findModule(dir: string, file: string): string | undefined {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) {
      const found = findModule(p, file);
      if (found) return found;
    } else if (e.name === file) return p;
  }
  return undefined;
}

/** Records read back from a records file's bytes: the numbers of the whole records, in order. */
export function parseRecords(data: Buffer): number[] {
  const out: number[] = [];
  for (let off = 0; off + RECORD_BYTES <= data.length; off += RECORD_BYTES) {
    const m = /^rec (\d{8}) /.exec(data.subarray(off, off + RECORD_BYTES).toString('latin1'));
    if (!m) break;
    out.push(Number(m[1]));
  }
  return out;
}
