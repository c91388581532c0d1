/**
 * The registration key's text: the vault's name, the key's id, its secret, and the
 * SHA-256 fingerprint of the vault's CA (the provider pins it before it trusts the vault
 * with the key). Base64url of a small JSON object, one line to copy.
 */
import { OsrError } from './errors.js';

export interface RegistrationKeyText {
  vault: string;
  id: string;
  secret: string;
  ca: string;
}

export function formatRegistrationKey(k: RegistrationKeyText): string {
  return Buffer.from(JSON.stringify({ v: 1, ...k })).toString('base64url');
}

export function parseRegistrationKey(text: string): RegistrationKeyText {
  try {
    const o = JSON.parse(Buffer.from(text.trim(), 'base64url').toString('utf8')) as { v?: number; vault?: unknown; id?: unknown; secret?: unknown; ca?: unknown };
    if (o.v === 1 && typeof o.vault === 'string' && typeof o.id === 'string' && typeof o.secret === 'string' && typeof o.ca === 'string') return { vault: o.vault, id: o.id, secret: o.secret, ca: o.ca };
  } catch {
    // falls through to the error below
  }
  throw new OsrError('REGISTRATION_KEY_INVALID', 'the registration key is malformed: use the whole key as the vault issued it');
}
