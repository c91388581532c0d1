/**
 * The newest replication grant the primary took for each VM (agent-channel.md, Replication
 * grants), kept on disk beside the agent's replications and after they are removed: a
 * grant signed before it is refused, so an old grant handed in again cannot point a VM's
 * replication back at a host the vault has since moved it from.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import type { GrantEnd, ReplicationGrant } from '../../pki/index.js';
import { readJson, writeJsonDurable } from '../io/durable-file.js';

interface LedgerEntry {
  issuedAt: string;
  item: string;
  target: GrantEnd;
}

export class GrantLedger {
  constructor(private readonly dir: string) {}

  /** Refuse `g` if a newer grant for its VM was taken here (AUTH_FAILED); otherwise it is the newest, durably. */
  accept(g: ReplicationGrant): void {
    const file = path.join(this.dir, `${safeName(g.replicationId, 'VM id', 'INVALID_ARGUMENT')}.json`);
    const last = readJson<LedgerEntry>(file);
    if (last !== undefined && Date.parse(g.issuedAt) < Date.parse(last.issuedAt)) {
      throw new OsrError('AUTH_FAILED', `the replication grant for VM ${g.replicationId} was signed at ${g.issuedAt}, before the one this agent took at ${last.issuedAt} (to ${last.target.host} of fabric ${last.target.fabricId}): an older grant is refused`, { vmId: g.replicationId, issuedAt: g.issuedAt, newest: last.issuedAt });
    }
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    writeJsonDurable(file, { issuedAt: g.issuedAt, item: g.item, target: g.target } satisfies LedgerEntry);
  }
}
