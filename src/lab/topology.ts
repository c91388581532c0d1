/**
 * Lab topologies: a whole lab on one machine described in YAML — the vault's name and one
 * entry per fabric (a management server) with its networks, storage, clouds, host groups,
 * hosts and demo VMs. `osr lab up` reads one and gives each fabric's provider its own
 * part (a site file, `osr provider --fabric lab --config SITE.yaml`).
 *
 * Ids are made from names (lowercase, other characters as '-'), so a topology names
 * things once, the way an admin would.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { OsrError } from '../domain/errors.js';
import { formatIpv4, parseIpv4 } from '../domain/ipv4.js';
import type { AzureLabSpec } from './azure-emulator.js';


/** Where `osr lab` keeps a lab unless told otherwise. */
export const DEFAULT_LAB_DIR = '.osr/lab';
export interface WorkloadSpec {
  /** bytes written per second, in 4–64 KiB random writes (default 256 KiB/s) */
  bytesPerSecond?: number;
}

export interface LabVmSpec {
  name: string;
  host: string;
  disks: { name: string; size: string; storage?: string }[];
  /** a NIC on a VM network, on its subnet of this name (default: the network's first) */
  nics: { network?: string; subnet?: string }[];
  /** powered on at lab start (default true) */
  running?: boolean;
  /** a guest writing to the disks through NBD while it runs; false for none */
  workload?: WorkloadSpec | false;
}

export interface LabHostSpec {
  name: string;
  osVersion?: string;
  logicalNetworks: string[];
  storageLocations: string[];
}

export interface FabricSpec {
  name: string;
  /** the management server's friendly name (default: the fabric's name) */
  server?: string;
  osVersion?: string;
  logicalNetworks: string[];
  vmNetworks: { name: string; logicalNetwork: string; subnets: { name: string; cidr: string; pool?: { start: string; end: string } }[] }[];
  storage: { classifications: string[]; locations: { name: string; classification: string; kind: 'share' | 'volume' }[] };
  clouds: { name: string; hostGroups: { name: string; hosts: LabHostSpec[] }[] }[];
  vms: LabVmSpec[];
}

export interface TopologySpec {
  name: string;
  description?: string;
  /**
   * what runs the hosts and VMs: lab (default: osr agents serving raw disk images, a
   * workload writing through NBD) or libvirt (this machine's libvirtd: `osr agent --host
   * libvirt` per host, each VM a tiny Linux guest under QEMU; kvm-lab.ts)
   */
  hypervisor?: 'lab' | 'libvirt';
  vault?: VaultPlacement;
  fabrics: FabricSpec[];
  /** an Azure recovery site, emulated on this machine (Azurite and the lab's Resource Manager; azure-emulator.ts) */
  azure?: AzureLabSpec;
}

/**
 * Where the lab's vault runs (docs/deployment.md): at one fabric's site (`site`; `osr lab
 * site fail` of that site takes the vault down too) or at a third site (no `site`); and, with
 * `standby`, a second vault process at another site: on `database: postgres` a standby
 * vault on a streaming PostgreSQL standby (two clusters the lab makes), on SQLite (the
 * default) backups the vault takes into that site, restored there by `osr lab vault
 * promote`.
 */
export interface VaultPlacement {
  name?: string;
  site?: string;
  standby?: string;
  database?: 'sqlite' | 'postgres';
}

/** What one provider reads: its fabric, and where the lab keeps that fabric's hosts. */
export interface SiteConfig extends FabricSpec {
  lab: { dir: string };
}

export const TOPOLOGY_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../src/lab/topologies');

export function slug(name: string): string {
  const s = name
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[-.]+|-+$/g, '');
  if (s === '') throw new OsrError('CONFIG_INVALID', `"${name}" gives no usable id: use letters or digits in names`);
  return s.slice(0, 120);
}

/** The built-in topologies, by name. */
export function builtInTopologies(): string[] {
  return fs
    .readdirSync(TOPOLOGY_DIR)
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => f.slice(0, -'.yaml'.length))
    .sort();
}

/** A built-in topology by name, or a YAML file by path. */
export function loadTopology(nameOrFile: string): { spec: TopologySpec; file: string } {
  const builtIn = path.join(TOPOLOGY_DIR, `${nameOrFile}.yaml`);
  const file = fs.existsSync(builtIn) && !nameOrFile.includes('/') ? builtIn : path.resolve(nameOrFile);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new OsrError('NOT_FOUND', `no topology "${nameOrFile}": give a built-in one (${builtInTopologies().join(', ')}) or a YAML file`);
  }
  return { spec: parseTopology(text, file), file };
}

const fail = (where: string, message: string) => new OsrError('CONFIG_INVALID', `${where}: ${message}`, { where });

function list<T>(v: unknown, where: string): T[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw fail(where, 'must be a list');
  return v as T[];
}

function str(v: unknown, where: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw fail(where, 'must be a non-empty string');
  return v;
}

/** Parse and check a topology: every reference resolves, every name is unique where it must be. */
export function parseTopology(text: string, source = 'topology'): TopologySpec {
  let doc: unknown;
  try {
    doc = YAML.parse(text);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `${source} is not valid YAML: ${(e as Error).message}`);
  }
  const t = doc as Partial<TopologySpec> | null;
  if (!t || typeof t !== 'object') throw fail(source, 'must be a mapping with name and fabrics');
  str(t.name, `${source}: name`);
  if (t.hypervisor !== undefined && t.hypervisor !== 'lab' && t.hypervisor !== 'libvirt') throw fail(`${source}: hypervisor`, `is lab or libvirt, not ${String(t.hypervisor)}`);
  const fabrics = list<FabricSpec>(t.fabrics, `${source}: fabrics`);
  if (fabrics.length === 0) throw fail(source, 'needs at least one fabric');
  const fabricIds = new Set<string>();
  const vmNames = new Set<string>();
  const hostNames = new Set<string>();
  for (const [i, f] of fabrics.entries()) {
    const w = `${source}: fabrics[${i}]`;
    str(f.name, `${w}.name`);
    if (fabricIds.has(slug(f.name))) throw fail(w, `fabric ${f.name} appears twice`);
    fabricIds.add(slug(f.name));
    checkFabric(f, `${source}: fabric ${f.name}`, vmNames, hostNames);
  }
  if (t.azure !== undefined) checkAzure(t.azure, `${source}: azure`, fabricIds);
  if (t.vault !== undefined && t.vault !== null) checkVaultPlacement(t.vault, `${source}: vault`, fabrics);
  return t as TopologySpec;
}

function checkVaultPlacement(v: VaultPlacement, w: string, fabrics: FabricSpec[]): void {
  if (typeof v !== 'object') throw fail(w, 'must be a mapping like {name, site, standby, database}');
  const known = new Set(['name', 'site', 'standby', 'database']);
  for (const k of Object.keys(v)) if (!known.has(k)) throw fail(w, `has no field ${k} (it takes ${[...known].join(', ')})`);
  if (v.name !== undefined) str(v.name, `${w}.name`);
  const names = fabrics.map((f) => f.name);
  for (const k of ['site', 'standby'] as const) {
    if (v[k] !== undefined && !names.includes(str(v[k], `${w}.${k}`))) throw fail(`${w}.${k}`, `names no fabric of the topology (${names.join(', ')})`);
  }
  if (v.standby !== undefined && v.standby === v.site) throw fail(`${w}.standby`, 'must be another site than the vault\'s');
  if (v.database !== undefined && v.database !== 'sqlite' && v.database !== 'postgres') throw fail(`${w}.database`, `is sqlite or postgres, not ${String(v.database)}`);
  if (v.database === 'postgres' && v.standby === undefined) throw fail(`${w}.database`, 'postgres in the lab is for a standby vault: give standby too');
}

const CIDR = /^\d+\.\d+\.\d+\.\d+\/\d+$/;

function checkAzure(a: AzureLabSpec, w: string, fabricIds: Set<string>): void {
  if (typeof a !== 'object' || a === null) throw fail(w, 'must be a mapping with name, location, resourceGroup and virtualNetworks');
  str(a.name, `${w}.name`);
  if (fabricIds.has(slug(a.name))) throw fail(w, `fabric ${a.name} appears twice`);
  if (!/^[a-z0-9]{2,40}$/.test(str(a.location, `${w}.location`))) throw fail(`${w}.location`, 'is a region\'s name such as westeurope');
  if (!/^[-\w.()]{1,89}[-\w()]$/.test(str(a.resourceGroup, `${w}.resourceGroup`))) throw fail(`${w}.resourceGroup`, 'is a resource group\'s name');
  a.virtualNetworks = list(a.virtualNetworks, `${w}.virtualNetworks`);
  for (const v of a.virtualNetworks) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(str(v.name, `${w}.virtualNetworks[].name`))) throw fail(`${w}: virtual network ${v.name}`, 'use 1 to 63 of A-Z a-z 0-9 . _ -');
    if (!CIDR.test(String(v.addressPrefix))) throw fail(`${w}: virtual network ${v.name}`, `addressPrefix "${v.addressPrefix}" is not an IPv4 CIDR`);
    v.subnets = list(v.subnets, `${w}: virtual network ${v.name}.subnets`);
    if (v.subnets.length === 0) throw fail(`${w}: virtual network ${v.name}`, 'needs a subnet');
    for (const s of v.subnets) {
      str(s.name, `${w}: virtual network ${v.name} subnet name`);
      if (!CIDR.test(String(s.addressPrefix))) throw fail(`${w}: subnet ${s.name}`, `addressPrefix "${s.addressPrefix}" is not an IPv4 CIDR`);
    }
  }
}

function checkFabric(f: FabricSpec, w: string, vmNames: Set<string>, hostNames: Set<string>): void {
  f.logicalNetworks = list<string>(f.logicalNetworks, `${w}.logicalNetworks`);
  f.vmNetworks = list(f.vmNetworks, `${w}.vmNetworks`);
  f.storage = f.storage ?? { classifications: [], locations: [] };
  f.storage.classifications = list<string>(f.storage.classifications, `${w}.storage.classifications`);
  f.storage.locations = list(f.storage.locations, `${w}.storage.locations`);
  f.clouds = list(f.clouds, `${w}.clouds`);
  f.vms = list(f.vms, `${w}.vms`);
  const logical = new Set(f.logicalNetworks.map((n) => str(n, `${w}.logicalNetworks`)));
  const vmNets = new Set<string>();
  for (const n of f.vmNetworks) {
    str(n.name, `${w}.vmNetworks[].name`);
    if (!logical.has(n.logicalNetwork)) throw fail(`${w}: VM network ${n.name}`, `logical network "${n.logicalNetwork}" is not in logicalNetworks`);
    n.subnets = list(n.subnets, `${w}: VM network ${n.name}.subnets`);
    for (const s of n.subnets) {
      str(s.name, `${w}: VM network ${n.name} subnet name`);
      if (!/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(String(s.cidr))) throw fail(`${w}: subnet ${s.name}`, `"${s.cidr}" is not an IPv4 CIDR such as 10.0.1.0/24`);
      if (s.pool && (ipToInt(s.pool.start) > ipToInt(s.pool.end))) throw fail(`${w}: subnet ${s.name} pool`, `start ${s.pool.start} comes after end ${s.pool.end}`);
    }
    vmNets.add(n.name);
  }
  const classes = new Set(f.storage.classifications);
  const locations = new Set<string>();
  for (const l of f.storage.locations) {
    str(l.name, `${w}.storage.locations[].name`);
    if (!classes.has(l.classification)) throw fail(`${w}: storage location ${l.name}`, `classification "${l.classification}" is not in storage.classifications`);
    if (l.kind !== 'share' && l.kind !== 'volume') throw fail(`${w}: storage location ${l.name}`, 'kind is share or volume');
    locations.add(l.name);
  }
  const hosts = new Set<string>();
  for (const c of f.clouds) {
    str(c.name, `${w}.clouds[].name`);
    c.hostGroups = list(c.hostGroups, `${w}: cloud ${c.name}.hostGroups`);
    for (const hg of c.hostGroups) {
      str(hg.name, `${w}: cloud ${c.name} host group name`);
      hg.hosts = list(hg.hosts, `${w}: host group ${hg.name}.hosts`);
      for (const h of hg.hosts) {
        str(h.name, `${w}: host name`);
        if (hostNames.has(h.name)) throw fail(`${w}: host ${h.name}`, 'host names are unique in a lab (each runs an agent)');
        if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(h.name)) throw fail(`${w}: host ${h.name}`, 'use 1 to 63 of A-Z a-z 0-9 . _ - (it names the host\'s agent)');
        hostNames.add(h.name);
        hosts.add(h.name);
        h.logicalNetworks = list<string>(h.logicalNetworks, `${w}: host ${h.name}.logicalNetworks`);
        h.storageLocations = list<string>(h.storageLocations, `${w}: host ${h.name}.storageLocations`);
        for (const n of h.logicalNetworks) if (!logical.has(n)) throw fail(`${w}: host ${h.name}`, `logical network "${n}" is not in logicalNetworks`);
        for (const l of h.storageLocations) if (!locations.has(l)) throw fail(`${w}: host ${h.name}`, `storage location "${l}" is not in storage.locations`);
      }
    }
  }
  for (const v of f.vms) {
    str(v.name, `${w}.vms[].name`);
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(v.name)) throw fail(`${w}: VM ${v.name}`, 'use 1 to 63 of A-Z a-z 0-9 . _ -');
    if (vmNames.has(v.name)) throw fail(`${w}: VM ${v.name}`, 'VM names are unique in a lab');
    vmNames.add(v.name);
    if (!hosts.has(v.host)) throw fail(`${w}: VM ${v.name}`, `host "${v.host}" is not a host of this fabric`);
    v.disks = list(v.disks, `${w}: VM ${v.name}.disks`);
    if (v.disks.length === 0 || v.disks.length > 16) throw fail(`${w}: VM ${v.name}`, 'needs 1 to 16 disks');
    for (const d of v.disks) {
      str(d.name, `${w}: VM ${v.name} disk name`);
      if (!/^\d+(\.\d+)?[KMGT]?$/i.test(String(d.size))) throw fail(`${w}: VM ${v.name} disk ${d.name}`, `size "${d.size}" is not a size such as 256M or 1G`);
      if (d.storage !== undefined && !locations.has(d.storage)) throw fail(`${w}: VM ${v.name} disk ${d.name}`, `storage location "${d.storage}" is not in storage.locations`);
    }
    v.nics = list(v.nics, `${w}: VM ${v.name}.nics`);
    for (const n of v.nics) {
      if (n.network !== undefined && !vmNets.has(n.network)) throw fail(`${w}: VM ${v.name}`, `VM network "${n.network}" is not in vmNetworks`);
      if (n.subnet !== undefined && !f.vmNetworks.find((x) => x.name === n.network)?.subnets.some((x) => x.name === n.subnet)) throw fail(`${w}: VM ${v.name}`, `subnet "${n.subnet}" is not a subnet of VM network "${n.network ?? '(none)'}"`);
    }
  }
}

export function ipToInt(ip: string): number {
  const n = parseIpv4(ip);
  if (n === undefined) throw new OsrError('CONFIG_INVALID', `"${ip}" is not an IPv4 address`);
  return n;
}

export const intToIp = formatIpv4;

/** Read a site file (what `osr provider --fabric lab --config` takes). */
export function loadSiteConfig(file: string): SiteConfig {
  let doc: unknown;
  try {
    doc = YAML.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `${file} cannot be read as YAML: ${(e as Error).message}`);
  }
  const site = doc as SiteConfig;
  if (!site || typeof site !== 'object' || !site.lab || typeof site.lab.dir !== 'string') throw new OsrError('CONFIG_INVALID', `${file}: a lab site file needs name, the fabric's inventory and lab.dir (where its hosts keep their data)`);
  str(site.name, `${file}: name`);
  checkFabric(site, `${file}`, new Set(), new Set());
  return { ...site, lab: { dir: path.resolve(path.dirname(file), site.lab.dir) } };
}
