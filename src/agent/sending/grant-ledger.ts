/**
 * The newest replication grant this agent took for each VM, in any role — as the primary
 * (replication set up), as the replica (its source named, a demote) — kept on disk and
 * after the replication or replica is removed (agent-channel.md, Replication grants). A
 * grant signed before it is refused, and so is one signed at the same time that names other
 * hosts: an old grant handed in again cannot point a VM's replication, or its replica, back
 * at a host the vault has since moved it from. The same grant delivered twice is taken.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import type { GrantEnd, ReplicationGrant } from '../../pki/index.js';
import { fsyncDir, readJson, writeJsonDurable } from '../io/durable-file.js';

interface LedgerEntry {
  issuedAt: string;
  item: string;
  source: GrantEnd;
  target: GrantEnd;
}

const sameEnd = (a: GrantEnd, b: GrantEnd) => a.fabricId === b.fabricId && a.host === b.host;

export class GrantLedger {
  constructor(private readonly dir: string) {}

  private file(vmId: string): string {
    return path.join(this.dir, `${safeName(vmId, 'VM id', 'INVALID_ARGUMENT')}.json`);
  }

  private last(vmId: string): LedgerEntry | undefined {
    try {
      return readJson<LedgerEntry>(this.file(vmId));
    } catch (e) {
      throw new OsrError('CONFIG_INVALID', `the record of the newest replication grant for VM ${vmId} (${this.file(vmId)}) cannot be read: ${(e as Error).message}; until it is restored or removed, grants for that VM are refused`, { vmId }, { cause: e });
    }
  }

  /** AUTH_FAILED unless `g` is the newest grant for its VM this agent has seen, or that one again. */
  check(g: ReplicationGrant): void {
    const last = this.last(g.replicationId);
    if (last === undefined) return;
    const at = Date.parse(g.issuedAt);
    const lastAt = Date.parse(last.issuedAt);
    const same = at === lastAt && sameEnd(g.source, last.source) && sameEnd(g.target, last.target);
    if (at < lastAt || (at === lastAt && !same)) {
      throw new OsrError('AUTH_FAILED', `the replication grant for VM ${g.replicationId} (${g.source.host} to ${g.target.host}, signed ${g.issuedAt}) is not newer than the one this agent took (${last.source.host} to ${last.target.host}, signed ${last.issuedAt}): an older grant is refused`, { vmId: g.replicationId, issuedAt: g.issuedAt, newest: last.issuedAt });
    }
  }

  /** check, then record `g` as the newest, durably, before anything is done on its word. */
  accept(g: ReplicationGrant): void {
    this.check(g);
    if (!fs.existsSync(this.dir)) {
      fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      fsyncDir(path.dirname(this.dir));
    }
    writeJsonDurable(this.file(g.replicationId), { issuedAt: g.issuedAt, item: g.item, source: g.source, target: g.target } satisfies LedgerEntry);
  }
}
