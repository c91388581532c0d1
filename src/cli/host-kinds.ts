/** The kinds of host `osr agent --host` knows, checked before the agent (and its host) is loaded. */
import { OsrError } from '../domain/errors.js';

export const HOST_KINDS = ['lab', 'libvirt'] as const;
export type HostKind = (typeof HOST_KINDS)[number];
export const DEFAULT_HOST_KIND: HostKind = 'lab';

/** Check a host kind before anything is made (CONFIG_INVALID names the kinds there are). */
export function checkHostKind(kind: string): HostKind {
  if ((HOST_KINDS as readonly string[]).includes(kind)) return kind as HostKind;
  throw new OsrError('CONFIG_INVALID', `--host ${kind} is not a kind of host this agent knows; the kinds are: ${HOST_KINDS.join(', ')}`, { host: kind, kinds: [...HOST_KINDS] });
}

