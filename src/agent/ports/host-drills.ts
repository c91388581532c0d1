/**
 * An optional capability of the Host port (host.ts): what a fabric's management part asks
 * of a hypervisor host through its agent — the host's own inventory, isolated networks
 * for drills, and a drill's test domain booted from a test overlay's NBD disks with its
 * evidence. The libvirt host has it (hosts/libvirt-drills.ts); the lab host does not, and
 * the local API answers NOT_SUPPORTED there.
 *
 * Names here are osr's own: the agent prefixes every network and domain it makes, and
 * removes only names with that prefix (docs/agent-api.md).
 */
import type { MachineSpec } from '../../domain/machine.js';

/** The prefix (after the host's own) of every libvirt network the agent makes for drills. */
export const DRILL_NETWORK_PREFIX = 'osr-net-';
/** The prefix (after the host's own) of every test domain the agent defines: never one of the host's VMs. */
export const TEST_DOMAIN_PREFIX = 'osr-test-';

/** What a hypervisor host has, restricted to the agent's selected domains. */
export interface HostInventoryView {
  domains: {
    name: string;
    uuid: string;
    state: string;
    running: boolean;
    disks: { target: string; device: string; file?: string | undefined; format?: string | undefined; sizeBytes: number | null }[];
    nics: { mac?: string | undefined; network?: string | undefined; bridge?: string | undefined; model?: string | undefined }[];
    /** what a recovery host needs to define the domain anew (its NICs on this host's networks) */
    machine: MachineSpec;
  }[];
  networks: { name: string; bridge?: string | undefined; forward?: string | undefined; active: boolean }[];
  pools: { name: string; type: string; path?: string | undefined; capacityBytes: number; availableBytes: number; active: boolean }[];
}

/** A drill's test domain, as the agent's API asked for it (every field checked there). */
export interface TestDomainRequest {
  /** the domain's name (prefixed by the caller) */
  name: string;
  /** the machine; each NIC goes on `network` (null: not connected) */
  machine: MachineSpec;
  /** the drill's network (its full, prefixed name), or null */
  network: string | null;
  /** the disks, in order: NBD exports of the agent's own server */
  disks: { socket: string; exportName: string }[];
  /** the serial console's file */
  consoleLog: string;
}

export interface TestDomainInfo {
  name: string;
  uuid: string;
  running: boolean;
  network: string | null;
}

export interface TestDomainEvidence {
  name: string;
  running: boolean;
  /** the last 4 KiB of the serial console ('' before the guest wrote anything) */
  console: string;
  /** the answer of the guest agent to guest-ping; null when the guest has no agent answering */
  guestPing: unknown;
}

export interface HostDrills {
  /**
   * what every libvirt name the agent sees and makes begins with (its --libvirt-prefix, or
   * ''): drill networks and test domains get it before osr's own prefix, so that hosts
   * sharing one libvirtd, or two labs, never meet
   */
  readonly namePrefix: string;
  inventory(): Promise<HostInventoryView>;
  /** an isolated network (no forward, no address): made once per name, started */
  ensureNetwork(name: string): Promise<{ name: string; bridge: string }>;
  /** remove a network (idempotent) */
  removeNetwork(name: string): Promise<void>;
  /** define and start a test domain; one of that name already there is started if it is off */
  startTestDomain(req: TestDomainRequest): Promise<TestDomainInfo>;
  /** the domain's evidence (VM_NOT_FOUND when there is no such domain) */
  evidence(name: string, consoleLog: string): Promise<TestDomainEvidence>;
  /** destroy and undefine (idempotent) */
  removeTestDomain(name: string): Promise<void>;
  /** the domain names of a kind osr made here (by prefix) */
  listDomains(prefix: string): Promise<string[]>;
}
