/**
 * A vault's role and term as it answers them (`GET /api/v1/vault`): what providers and
 * the CLI read to follow the primary vault, and what a vault reads of its peers to learn
 * that it is stale. Everything a peer answers is checked here before it is believed.
 */
import { OsrError } from './errors.js';

export const VaultRole = { Primary: 'primary', Standby: 'standby', Stale: 'stale' } as const;
export type VaultRole = (typeof VaultRole)[keyof typeof VaultRole];

/** The header a provider sends the newest term it was answered with (a vault seeing a newer one checks its peers). */
export const TERM_HEADER = 'osr-vault-term';

/** terms are small whole numbers; a larger one from a peer is not believed */
export const MAX_TERM = 1_000_000;
export const isTerm = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 1 && n <= MAX_TERM;

/** Whether term `a` is newer than `b`: a greater number, or the same number begun later (two restores of one backup). */
export function newerTerm(a: { term: number; since: string }, b: { term: number; since: string }): boolean {
  return a.term > b.term || (a.term === b.term && Date.parse(a.since) > Date.parse(b.since));
}

export interface VaultStatus {
  /** the vault's identity (every process of one vault has the same) */
  id: string;
  name: string;
  role: VaultRole;
  term: number;
  /** when the term began (ISO) */
  since: string;
  /** how it began: the database was made, a standby promoted, a backup restored */
  origin: 'created' | 'promoted' | 'restored';
  /** a stale vault: the newer term that fenced it */
  staleBecause?: { term: number; url: string; at: string };
}

/** A vault's answer, checked: anything malformed is a PROTOCOL_ERROR naming the peer. */
export function parseVaultStatus(v: unknown, from: string): VaultStatus {
  const o = (v ?? {}) as Record<string, unknown>;
  const roles: readonly unknown[] = Object.values(VaultRole);
  if (typeof o.id !== 'string' || o.id.length > 100 || typeof o.name !== 'string' || !roles.includes(o.role) || !isTerm(o.term) || typeof o.since !== 'string') {
    throw new OsrError('PROTOCOL_ERROR', `${from} answered GET /api/v1/vault with something that is not a vault's status`);
  }
  const origin = o.origin === 'promoted' || o.origin === 'restored' ? o.origin : 'created';
  const sb = (o.staleBecause ?? {}) as Record<string, unknown>;
  const staleBecause = isTerm(sb.term) && typeof sb.url === 'string' && typeof sb.at === 'string' ? { term: sb.term, url: sb.url.slice(0, 300), at: sb.at.slice(0, 40) } : undefined;
  return { id: o.id, name: o.name, role: o.role as VaultRole, term: o.term, since: o.since, origin, ...(staleBecause ? { staleBecause } : {}) };
}

/** The URLs of a vault's processes: https, no credentials, at most 16, each once. */
export function checkVaultUrls(urls: readonly string[], what: string): string[] {
  const out: string[] = [];
  for (const raw of urls) {
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      throw new OsrError('INVALID_ARGUMENT', `${what}: ${raw} is not a URL`);
    }
    if (u.protocol !== 'https:' || u.username || u.password || u.search || u.hash) throw new OsrError('INVALID_ARGUMENT', `${what}: ${raw} must be an https:// URL with no credentials, query or fragment`);
    const s = u.origin;
    if (!out.includes(s)) out.push(s);
  }
  if (out.length > 16) throw new OsrError('INVALID_ARGUMENT', `${what}: at most 16 vault URLs, not ${out.length}`);
  return out;
}
