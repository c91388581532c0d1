/**
 * `osr agent --host KIND`: the machine the agent runs on, as the agent sees it through the
 * Host port (src/agent/ports/host.ts). The agent makes its host with the factory chosen here.
 */
import path from 'node:path';
import { LabHost } from '../agent/hosts/lab-host.js';
import { LibvirtHost } from '../agent/hosts/libvirt-host.js';
import type { HostFactory } from '../agent/ports/host.js';
import { OsrError } from '../domain/errors.js';

export const HOST_KINDS = ['lab', 'libvirt'] as const;
export type HostKind = (typeof HOST_KINDS)[number];
export const DEFAULT_HOST_KIND: HostKind = 'lab';

export interface HostOptions {
  /** lab: where disk images are made (default DATA/storage) */
  storageDir?: string | undefined;
  /** libvirt: the connection (default qemu:///system) */
  libvirtUri?: string | undefined;
  /** libvirt: the domains that are this agent's, as a regular expression on their names (default all) */
  libvirtDomains?: string | undefined;
  /** libvirt: the directory test domains' direct kernel boot files must be in (default: none allowed) */
  libvirtBootDir?: string | undefined;
}

/** Check a host kind before anything is made (CONFIG_INVALID names the kinds there are). */
export function checkHostKind(kind: string): HostKind {
  if ((HOST_KINDS as readonly string[]).includes(kind)) return kind as HostKind;
  throw new OsrError('CONFIG_INVALID', `--host ${kind} is not a kind of host this agent knows; the kinds are: ${HOST_KINDS.join(', ')}`, { host: kind, kinds: [...HOST_KINDS] });
}

/** How the agent makes a host of that kind. */
export function hostFactory(kind: HostKind, o: HostOptions): HostFactory {
  switch (kind) {
    case 'lab':
      return ({ dataDir, now }) => new LabHost(dataDir, o.storageDir ?? path.join(dataDir, 'storage'), now);
    case 'libvirt': {
      let only: RegExp | undefined;
      try {
        only = o.libvirtDomains !== undefined ? new RegExp(o.libvirtDomains) : undefined;
      } catch (e) {
        throw new OsrError('CONFIG_INVALID', `--libvirt-domains ${o.libvirtDomains} is not a regular expression: ${(e as Error).message}`);
      }
      return ({ dataDir, now }) => new LibvirtHost(dataDir, now, { ...(o.libvirtUri ? { uri: o.libvirtUri } : {}), ...(only ? { domains: (n: string) => only.test(n) } : {}), ...(o.libvirtBootDir ? { bootDir: path.resolve(o.libvirtBootDir) } : {}) });
    }
  }
}
