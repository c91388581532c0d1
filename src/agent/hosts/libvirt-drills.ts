/**
 * A libvirt host's part of a fabric's management (the HostDrills capability,
 * ports/host-drills.ts): its inventory as libvirt has it (only the agent's selected
 * domains), isolated drill networks, and a drill's test domain booted from a test
 * overlay's NBD disks, with its evidence (the console's tail and the guest agent's answer
 * to guest-ping). The agent's API checks every request and prefixes every name first.
 */
import fs from 'node:fs';
import type { MachineSpec } from '../../domain/machine.js';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { domainXml } from '../libvirt/domain-xml.js';
import { imageInfo } from '../libvirt/images.js';
import { ensureIsolatedNetwork, readHostInventory, removeNetwork } from '../libvirt/inventory.js';
import type { Virsh } from '../libvirt/virsh.js';
import type { HostDrills, HostInventoryView, TestDomainEvidence, TestDomainInfo, TestDomainRequest } from '../ports/host-drills.js';

const EVIDENCE_BYTES = 4096;
const DRILL_NAMESPACE = 'https://osr.dev/xmlns/drill';

const names = (out: string) => out.split('\n').map((s) => s.trim()).filter(Boolean);

export class LibvirtDrills implements HostDrills {
  constructor(
    private readonly virsh: Virsh,
    readonly namePrefix: string,
    /** the osr name of a domain of the agent's (its name without the agent's prefix), undefined for any other */
    private readonly vmNameOf: (domain: string) => string | undefined,
    /** the machine with its direct kernel boot files' real paths, where the agent's operator allows them (NOT_SUPPORTED, NOT_FOUND) */
    private readonly checkBootFiles: (machine: MachineSpec) => MachineSpec,
  ) {}

  async inventory(): Promise<HostInventoryView> {
    const inv = await readHostInventory(this.virsh, { domains: (n) => this.vmNameOf(n) !== undefined });
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
      domains.push({ name: this.vmNameOf(d.name) ?? d.name, uuid: d.uuid, state: d.state, running: d.running, disks, nics: d.nics, machine: d.machine });
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
    const bootable = this.checkBootFiles(req.machine);
    if (!(await this.exists(req.name))) {
      const machine = { ...bootable, nics: bootable.nics.map((n) => ({ ...n, network: req.network })) };
      const xml = domainXml({
        name: req.name,
        machine,
        disks: req.disks.map((d, i) => ({ target: `vd${String.fromCharCode(97 + i)}`, nbd: { socket: d.socket, exportName: d.exportName } })),
        consoleLog: req.consoleLog,
        guestAgent: true,
        metadata: [`<osr:drill xmlns:osr='${DRILL_NAMESPACE}'/>`],
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
