/**
 * `osr agent --host KIND`: the machine the agent runs on, as the agent sees it through the
 * Host port (src/agent/ports/host.ts). The agent makes its host with the factory chosen here.
 */
import path from 'node:path';
import { LabHost } from '../agent/hosts/lab-host.js';
import { LibvirtHost } from '../agent/hosts/libvirt-host.js';
import type { HostFactory } from '../agent/ports/host.js';
import { OsrError } from '../domain/errors.js';

import type { HostKind } from './host-kinds.js';
export { checkHostKind, DEFAULT_HOST_KIND, HOST_KINDS, type HostKind } from './host-kinds.js';

export interface HostOptions {
  /** lab: where disk images are made (default DATA/storage) */
  storageDir?: string | undefined;
  /** libvirt: the connection (default qemu:///system) */
  libvirtUri?: string | undefined;
  /** libvirt: the domains that are this agent's, as a regular expression on their names (default all) */
  libvirtDomains?: string | undefined;
  /** libvirt: the agent's domains begin with it; a VM's osr name is the rest */
  libvirtPrefix?: string | undefined;
  /** libvirt: where a promoted VM's direct kernel boot files may be */
  libvirtBootDirs?: string[] | undefined;
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
      if (o.libvirtPrefix !== undefined && !/^[A-Za-z0-9._-]{0,32}$/.test(o.libvirtPrefix)) throw new OsrError('CONFIG_INVALID', `--libvirt-prefix ${o.libvirtPrefix} must be at most 32 letters, digits, dots, dashes or underscores`);
      return ({ dataDir, now, log }) =>
        new LibvirtHost(dataDir, now, {
          ...(log ? { log } : {}),
          ...(o.libvirtUri ? { uri: o.libvirtUri } : {}),
          ...(only ? { domains: (n: string) => only.test(n) } : {}),
          ...(o.libvirtPrefix ? { prefix: o.libvirtPrefix } : {}),
          ...(o.libvirtBootDirs ? { bootDirs: o.libvirtBootDirs } : {}),
        });
    }
  }
}
