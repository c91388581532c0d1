/**
 * The libvirt fabric's site file (`osr provider --fabric libvirt --config site.yaml`,
 * docs/design/libvirt.md): the fabric's name, its KVM hosts and how the provider reaches
 * each host's agent, clouds and host groups, libvirt networks as VM networks (with subnets
 * and static IP pools), libvirt storage pools as storage classifications, and which
 * domains are protected. Every field is checked here, and a wrong one is refused with
 * CONFIG_INVALID naming it; names that become ids, paths or XML are safe names.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { formatIpv4, parseIpv4 } from '../../domain/ipv4.js';
import { agentHostOf, fail, list, mapping, optionalText, safe, parseSiteYaml, text, unique, type AgentHostConfig } from '../site-fields.js';

export interface LibvirtSubnet {
  name: string;
  cidr: string;
  pool?: { start: string; end: string } | undefined;
}

export interface LibvirtNetworkMapping {
  /** the libvirt network's name at every host of the site */
  libvirt: string;
  vmNetwork: string;
  logicalNetwork: string;
  subnets: LibvirtSubnet[];
}

/** A KVM host of the site: its agent (agent-host fields), and the OS version the inventory reports. */
export interface LibvirtHostConfig extends AgentHostConfig {
  osVersion?: string | undefined;
}

export interface LibvirtSiteConfig {
  name: string;
  /** the management server's friendly name (default: the fabric's name) */
  server?: string | undefined;
  /** the provider's state: its registration, replica and test VM records (absolute) */
  dir: string;
  hosts: LibvirtHostConfig[];
  clouds: { name: string; hostGroups: { name: string; hosts: string[] }[] }[];
  networks: LibvirtNetworkMapping[];
  storage: { pool: string; classification: string }[];
  /** which domains are the fabric's VMs: names or globs (`*`, `?`) */
  domains: { include: string[]; exclude: string[] };
}

export { DEFAULT_REPLICATION_PORT } from '../site-fields.js';

export function ipToInt(ip: string): number {
  const n = parseIpv4(ip);
  if (n === undefined) throw new OsrError('CONFIG_INVALID', `"${ip}" is not an IPv4 address`);
  return n;
}

export const intToIp = formatIpv4;

function ipIn(v: unknown, field: string): number {
  const s = text(v, field);
  try {
    return ipToInt(s);
  } catch {
    throw fail(field, `"${s}" is not an IPv4 address`);
  }
}

function subnetOf(v: unknown, field: string): LibvirtSubnet {
  const s = mapping(v, field);
  const name = safe(s.name, `${field}.name`);
  const cidr = text(s.cidr, `${field}.cidr`);
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr);
  if (!m || Number(m[2]) > 32) throw fail(`${field}.cidr`, `"${cidr}" is not an IPv4 CIDR such as 10.1.0.0/24`);
  const base = ipIn(m[1], `${field}.cidr`);
  const bits = Number(m[2]);
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  if (s.pool === undefined || s.pool === null) return { name, cidr };
  const p = mapping(s.pool, `${field}.pool`);
  const start = ipIn(p.start, `${field}.pool.start`);
  const end = ipIn(p.end, `${field}.pool.end`);
  if (start > end) throw fail(`${field}.pool`, `start ${intToIp(start)} comes after end ${intToIp(end)}`);
  if (((start & mask) >>> 0) !== ((base & mask) >>> 0) || ((end & mask) >>> 0) !== ((base & mask) >>> 0)) throw fail(`${field}.pool`, `${intToIp(start)}–${intToIp(end)} is not inside ${cidr}`);
  return { name, cidr, pool: { start: intToIp(start), end: intToIp(end) } };
}

function hostOf(v: unknown, field: string, base: string): LibvirtHostConfig {
  const h = mapping(v, field);
  const osVersion = optionalText(h.osVersion, `${field}.osVersion`);
  return { ...agentHostOf(h, field, base), ...(osVersion !== undefined ? { osVersion } : {}) };
}

/** Parse and check a site file's text; relative paths are taken from `base` (the file's directory). */
export function parseLibvirtSite(yamlText: string, base: string): LibvirtSiteConfig {
  const doc = parseSiteYaml(yamlText);
  const s = mapping(doc, '(the file)');
  const name = text(s.name, 'name');
  const dir = path.resolve(base, optionalText(s.dir, 'dir') ?? path.join('/var/lib/osr/provider', name.replace(/[^A-Za-z0-9._-]+/g, '-')));
  const hosts = list(s.hosts, 'hosts', true).map((h, i) => hostOf(h, `hosts[${i}]`, base));
  if (hosts.length === 0) throw fail('hosts', 'needs at least one host');
  unique(hosts.map((h) => h.name), 'hosts');
  const hostNames = new Set(hosts.map((h) => h.name));
  const inGroup = new Set<string>();
  const clouds = list(s.clouds, 'clouds', true).map((c, i) => {
    const cm = mapping(c, `clouds[${i}]`);
    const cloud = safe(cm.name, `clouds[${i}].name`);
    const hostGroups = list(cm.hostGroups, `clouds[${i}].hostGroups`, true).map((g, j) => {
      const f = `clouds[${i}].hostGroups[${j}]`;
      const gm = mapping(g, f);
      const members = list(gm.hosts, `${f}.hosts`, true).map((x, k) => {
        const n = text(x, `${f}.hosts[${k}]`);
        if (!hostNames.has(n)) throw fail(`${f}.hosts[${k}]`, `"${n}" is not one of hosts`);
        if (inGroup.has(n)) throw fail(`${f}.hosts[${k}]`, `host ${n} is in another host group already`);
        inGroup.add(n);
        return n;
      });
      return { name: safe(gm.name, `${f}.name`), hosts: members };
    });
    unique(hostGroups.map((g) => g.name), `clouds[${i}].hostGroups`);
    return { name: cloud, hostGroups };
  });
  unique(clouds.map((c) => c.name), 'clouds');
  for (const h of hosts) if (!inGroup.has(h.name)) throw fail('clouds', `put host ${h.name} in a host group`);
  const networks = list(s.networks, 'networks').map((n, i): LibvirtNetworkMapping => {
    const nm = mapping(n, `networks[${i}]`);
    const subnets = list(nm.subnets, `networks[${i}].subnets`).map((x, j) => subnetOf(x, `networks[${i}].subnets[${j}]`));
    unique(subnets.map((x) => x.name), `networks[${i}].subnets`);
    return { libvirt: safe(nm.libvirt, `networks[${i}].libvirt`), vmNetwork: safe(nm.vmNetwork, `networks[${i}].vmNetwork`), logicalNetwork: safe(nm.logicalNetwork ?? nm.vmNetwork, `networks[${i}].logicalNetwork`), subnets };
  });
  unique(networks.map((n) => n.libvirt), 'networks (libvirt)');
  unique(networks.map((n) => n.vmNetwork), 'networks (vmNetwork)');
  for (const n of networks) if (n.libvirt.startsWith('osr-')) throw fail('networks', `libvirt network ${n.libvirt}: names starting with osr- are osr's drill networks`);
  const storage = list(s.storage, 'storage').map((x, i) => {
    const m = mapping(x, `storage[${i}]`);
    return { pool: safe(m.pool, `storage[${i}].pool`), classification: safe(m.classification, `storage[${i}].classification`) };
  });
  unique(storage.map((x) => x.pool), 'storage');
  const d = s.domains === undefined || s.domains === null ? {} : mapping(s.domains, 'domains');
  const globs = (v: unknown, field: string, fallback: string[]) =>
    v === undefined || v === null
      ? fallback
      : list(v, field).map((g, i) => {
          const t = text(g, `${field}[${i}]`);
          if (!/^[A-Za-z0-9._*?-]+$/.test(t)) throw fail(`${field}[${i}]`, `"${t}" is not a domain name or glob (letters, digits, . _ - and * ?)`);
          return t;
        });
  return { name, ...(optionalText(s.server, 'server') !== undefined ? { server: text(s.server, 'server') } : {}), dir, hosts, clouds, networks, storage, domains: { include: globs(d.include, 'domains.include', ['*']), exclude: globs(d.exclude, 'domains.exclude', []) } };
}

/** Read a site file. */
export function loadLibvirtSite(file: string): LibvirtSiteConfig {
  let t: string;
  try {
    t = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `site file ${file} cannot be read: ${(e as Error).message}`);
  }
  try {
    return parseLibvirtSite(t, path.dirname(path.resolve(file)));
  } catch (e) {
    if (e instanceof OsrError) throw new OsrError(e.code, `${file}: ${e.message}`, e.details);
    throw e;
  }
}

/** Whether a glob (`*`, `?`) matches a whole name. */
export function globMatch(glob: string, name: string): boolean {
  const re = new RegExp(`^${glob.replace(/[.+^${}()|[\]\\-]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
  return re.test(name);
}

/** Whether a domain is one of the site's VMs. */
export function domainSelected(site: LibvirtSiteConfig, name: string): boolean {
  return site.domains.include.some((g) => globMatch(g, name)) && !site.domains.exclude.some((g) => globMatch(g, name));
}
