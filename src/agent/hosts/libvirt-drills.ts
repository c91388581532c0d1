/**
 * A libvirt host's part of a fabric's management (the HostDrills capability,
 * ports/host-drills.ts): its inventory as libvirt has it (only the agent's selected
 * domains), isolated drill networks, and a drill's test domain booted from a test
 * overlay's NBD disks, with its evidence (the console's tail and the guest agent's answer
 * to guest-ping). The agent's API checks every request and prefixes every name first.
 */
import fs from 'node:fs';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { domainXml } from '../libvirt/domain-xml.js';
import { imageInfo } from '../libvirt/images.js';
import { ensureIsolatedNetwork, readHostInventory, removeNetwork } from '../libvirt/inventory.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { HostDrills, HostInventoryView, TestDomainEvidence, TestDomainInfo, TestDomainRequest } from '../ports/host-drills.js';

const EVIDENCE_BYTES = 4096;
const DRILL_NAMESPACE = 'https://osr.dev/xmlns/drill';

const names = (out: string) => out.split('\n').map((s) => s.trim()).filter(Boolean);

/**
 * KVM when this machine can run it — /dev/kvm usable and the CPU's virtualization
 * extensions present (a sandbox may offer the device without them) — else TCG.
 */
function domainType(): 'kvm' | 'qemu' {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return /^flags\s*:.*\b(vmx|svm)\b/m.test(fs.readFileSync('/proc/cpuinfo', 'latin1')) ? 'kvm' : 'qemu';
  } catch {
    return 'qemu';
  }
}

export class LibvirtDrills implements HostDrills {
  constructor(
    private readonly virsh: Virsh,
    private readonly selected: ((name: string) => boolean) | undefined,
    /** the directory direct kernel boot files must be in (undefined: none allowed) */
    private readonly bootDir: string | undefined,
  ) {}

  /**
   * A machine's kernel and initrd are files the host's QEMU reads as root: only ones inside
   * the directory the agent's operator allows (`osr agent --libvirt-boot-dir`).
   */
  private checkBootFiles(req: TestDomainRequest): void {
    const k = req.machine.kernelBoot;
    if (!k) return;
    for (const [field, file] of [['kernel', k.kernel], ['initrd', k.initrd]] as const) {
      if (file === undefined) continue;
      if (this.bootDir === undefined) {
        throw new OsrError('NOT_SUPPORTED', `${req.name} boots a kernel directly (${file}); this agent allows no direct kernel boot: start it with --libvirt-boot-dir DIR and keep the kernel and initrd in DIR`, { field: `machine.kernelBoot.${field}` });
      }
      let real: string;
      try {
        real = fs.realpathSync(file);
      } catch {
        throw new OsrError('NOT_FOUND', `machine.kernelBoot.${field} ${file} is not a file at this host`, { field: `machine.kernelBoot.${field}` });
      }
      const dir = fs.realpathSync(this.bootDir);
      if (!real.startsWith(`${dir}/`)) {
        throw new OsrError('NOT_SUPPORTED', `machine.kernelBoot.${field} ${file} is outside the directory this agent allows direct kernel boot from (${this.bootDir}); put the file there`, { field: `machine.kernelBoot.${field}`, bootDir: this.bootDir });
      }
    }
  }

  async inventory(): Promise<HostInventoryView> {
    const inv = await readHostInventory(this.virsh, this.selected ? { domains: this.selected } : {});
    const domains: HostInventoryView['domains'] = [];
    for (const d of inv.domains) {
      const disks: HostInventoryView['domains'][number]['disks'] = [];
      for (const k of d.disks) {
        let sizeBytes: number | null = null;
        let format = k.format;
        if (k.file && k.device === 'disk') {
          try {
            const info = await imageInfo(k.file);
            sizeBytes = info.virtualSize;
            // a qcow2 v2 cannot carry a bitmap: it counts as raw for replication
            format = info.format === 'qcow2' && info.compat !== '1.1' ? 'raw' : info.format;
          } catch {
            // an image that cannot be read now: its size is unknown
          }
        }
        disks.push({ target: k.target, device: k.device, file: k.file, format, sizeBytes });
      }
      domains.push({ name: d.name, uuid: d.uuid, state: d.state, running: d.running, disks, nics: d.nics, machine: d.machine });
    }
    return { domains, networks: inv.networks, pools: inv.pools };
  }

  ensureNetwork(name: string): Promise<{ name: string; bridge: string }> {
    return ensureIsolatedNetwork(this.virsh, name);
  }

  removeNetwork(name: string): Promise<void> {
    return removeNetwork(this.virsh, name);
  }

  private async exists(name: string): Promise<boolean> {
    return names(await this.virsh.run(['list', '--all', '--name'])).includes(name);
  }

  async listDomains(prefix: string): Promise<string[]> {
    return names(await this.virsh.run(['list', '--all', '--name'])).filter((n) => n.startsWith(prefix));
  }

  private async info(name: string, network: string | null): Promise<TestDomainInfo> {
    const state = (await this.virsh.run(['domstate', name])).trim();
    const uuid = (await this.virsh.run(['domuuid', name])).trim();
    return { name, uuid, running: state === 'running' || state === 'paused', network };
  }

  async startTestDomain(req: TestDomainRequest): Promise<TestDomainInfo> {
    this.checkBootFiles(req);
    if (!(await this.exists(req.name))) {
      const machine = { ...req.machine, nics: req.machine.nics.map((n) => ({ ...n, network: req.network })) };
      const xml = domainXml({
        name: req.name,
        machine,
        disks: req.disks.map((d, i) => ({ target: `vd${String.fromCharCode(97 + i)}`, nbd: { socket: d.socket, exportName: d.exportName } })),
        consoleLog: req.consoleLog,
        guestAgent: true,
        metadata: [`<osr:drill xmlns:osr='${DRILL_NAMESPACE}'/>`],
        type: domainType(),
      });
      fs.rmSync(req.consoleLog, { force: true });
      await this.virsh.withXml(xml, (f) => ['define', f]);
    }
    const state = (await this.virsh.run(['domstate', req.name])).trim();
    if (state !== 'running' && state !== 'paused') await this.virsh.run(['start', req.name]);
    return this.info(req.name, req.network);
  }

  async evidence(name: string, consoleLog: string): Promise<TestDomainEvidence> {
    const state = (await this.virsh.run(['domstate', name])).trim();
    const running = state === 'running' || state === 'paused';
    let console = '';
    try {
      const fd = fs.openSync(consoleLog, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        const buf = Buffer.alloc(Math.min(EVIDENCE_BYTES, size));
        fs.readSync(fd, buf, 0, buf.length, size - buf.length);
        console = buf.toString('latin1');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      // no console yet
    }
    let guestPing: unknown = null;
    if (running) {
      try {
        const out = await this.virsh.run(['qemu-agent-command', name, '{"execute":"guest-ping"}', '--timeout', '5'], { timeoutMs: 15_000 });
        guestPing = JSON.parse(out) as unknown;
      } catch {
        guestPing = null; // no guest agent answering
      }
    }
    return { name, running, console, guestPing };
  }

  async removeTestDomain(name: string): Promise<void> {
    if (!(await this.exists(name))) return;
    await this.virsh.run(['destroy', name]).catch((e: unknown) => {
      // a domain that is off already has nothing to destroy
      if (!/not running|domain is not running/i.test(toOsrError(e).message)) throw e;
    });
    try {
      await this.virsh.run(['undefine', name, '--nvram']);
    } catch (e) {
      const err = toOsrError(e);
      if (err.code === 'VM_NOT_FOUND') return;
      if (/nvram/i.test(err.message)) await this.virsh.run(['undefine', name]);
      else throw new OsrError(err.code, err.message, err.details);
    }
  }
}
