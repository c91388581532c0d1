/**
 * Where the osr CLI finds the vault and its credentials. Each setting is taken from the
 * first of: a global flag (--vault, --token, --vault-ca), the environment (OSR_VAULT,
 * OSR_TOKEN, OSR_VAULT_CA), a config file, a default (the vault URL only).
 *
 * The config file is YAML `{vault: URL, token: TOKEN, ca: PATH-or-PEM}`: the one named by
 * --config, else by OSR_CONFIG (either must exist), else the first that exists of
 * ~/.config/osr/config.yaml and .osr/lab/osr.yaml (relative to the current directory,
 * where the lab writes it). A relative `ca` path is relative to the file's directory.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { OsrError } from '../domain/errors.js';

/** the vault's default HTTPS port (the server's DEFAULT_VAULT_PORT; a test keeps them equal) */
export const DEFAULT_VAULT_PORT = 8443;
export const DEFAULT_VAULT_URL = `https://127.0.0.1:${DEFAULT_VAULT_PORT}`;
export const USER_CONFIG = path.join('.config', 'osr', 'config.yaml');
export const LAB_CONFIG = path.join('.osr', 'lab', 'osr.yaml');

/** The global flags, as commander gives them. */
export interface VaultFlags {
  vault?: string;
  token?: string;
  vaultCa?: string;
  config?: string;
}

export type SettingSource = 'flag' | 'env' | 'file' | 'default';

export interface VaultConnection {
  /** the vault's base URL (https://host:port): the first given */
  url: string;
  /** every URL given (a vault's processes at two sites: the CLI uses the one that answers as the primary of the newest term) */
  urls: string[];
  token: string | undefined;
  /** PEM of the CA to trust; undefined trusts the system's CAs */
  ca: string | undefined;
  /** the file the CA came from, when it came from a file */
  caFile: string | undefined;
  /** the config file read, if any */
  configFile: string | undefined;
  /** where each setting came from */
  sources: { url: SettingSource; token: SettingSource | null; ca: SettingSource | null };
  /** the config files looked for, in order */
  searched: string[];
}

interface ConfigFile {
  vault?: string;
  token?: string;
  ca?: string;
}

const nonEmpty = (s: string | undefined): string | undefined => (s === undefined || s.trim() === '' ? undefined : s.trim());

function readConfig(file: string): ConfigFile {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `cannot read the config file ${file}: ${(e as Error).message}`, { file });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `the config file ${file} is not YAML: ${(e as Error).message}`, { file });
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new OsrError('CONFIG_INVALID', `the config file ${file} must be a mapping like {vault: URL, token: TOKEN, ca: PATH}`, { file });
  const out: ConfigFile = {};
  for (const key of ['vault', 'token', 'ca'] as const) {
    const v = (doc as Record<string, unknown>)[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') throw new OsrError('CONFIG_INVALID', `"${key}" in the config file ${file} must be a string`, { file, field: key });
    out[key] = v;
  }
  return out;
}

const isPem = (s: string) => s.includes('-----BEGIN CERTIFICATE-----');

function readCa(file: string, what: string): string {
  let pem: string;
  try {
    pem = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `cannot read the vault's CA from ${file} (${what}): ${(e as Error).message}`, { file });
  }
  if (!isPem(pem)) throw new OsrError('CONFIG_INVALID', `${file} (${what}) holds no PEM certificate`, { file });
  return pem;
}

/** One vault URL, or several separated by commas (a vault's processes at two sites): the first, and all of them. */
function vaultUrls(text: string, what: string): [string, string[]] {
  const urls = [...new Set(text.split(',').map((u) => u.trim()).filter(Boolean).map((u) => normalizeVaultUrl(u, what)))];
  if (urls.length === 0) throw new OsrError('CONFIG_INVALID', `${what} names no vault URL`);
  if (urls.length > 16) throw new OsrError('CONFIG_INVALID', `${what} names more than 16 vault URLs`);
  return [urls[0]!, urls];
}

export function normalizeVaultUrl(text: string, what: string): string {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw new OsrError('CONFIG_INVALID', `${what} "${text}" is not a URL (e.g. ${DEFAULT_VAULT_URL})`);
  }
  if (u.protocol !== 'https:') throw new OsrError('CONFIG_INVALID', `${what} "${text}" is not an https:// URL: the vault serves HTTPS only`);
  return u.origin;
}

/** Resolve the vault connection from flags, environment and config file, in that order. */
export function resolveVaultConnection(flags: VaultFlags, env: NodeJS.ProcessEnv = process.env, cwd: string = process.cwd(), home: string = os.homedir()): VaultConnection {
  // the config file
  const searched: string[] = [];
  let configFile: string | undefined;
  const explicit = nonEmpty(flags.config) ?? nonEmpty(env.OSR_CONFIG);
  if (explicit !== undefined) {
    configFile = path.resolve(cwd, explicit);
    searched.push(configFile);
    if (!fs.existsSync(configFile)) throw new OsrError('CONFIG_INVALID', `the config file ${configFile} (${flags.config ? '--config' : 'OSR_CONFIG'}) does not exist`, { file: configFile });
  } else {
    for (const candidate of [path.join(home, USER_CONFIG), path.resolve(cwd, LAB_CONFIG)]) {
      searched.push(candidate);
      if (fs.existsSync(candidate)) {
        configFile = candidate;
        break;
      }
    }
  }
  const file = configFile ? readConfig(configFile) : {};

  // the vault URL
  let urlSource: SettingSource;
  let found: [string, string[]];
  if (nonEmpty(flags.vault)) [found, urlSource] = [vaultUrls(flags.vault!, '--vault'), 'flag'];
  else if (nonEmpty(env.OSR_VAULT)) [found, urlSource] = [vaultUrls(env.OSR_VAULT!, 'OSR_VAULT'), 'env'];
  else if (nonEmpty(file.vault)) [found, urlSource] = [vaultUrls(file.vault!, `"vault" in ${configFile}`), 'file'];
  else [found, urlSource] = [[DEFAULT_VAULT_URL, [DEFAULT_VAULT_URL]], 'default'];
  const [url, urls] = found;

  // the token
  let token: string | undefined;
  let tokenSource: SettingSource | null = null;
  if (nonEmpty(flags.token)) [token, tokenSource] = [flags.token!.trim(), 'flag'];
  else if (nonEmpty(env.OSR_TOKEN)) [token, tokenSource] = [env.OSR_TOKEN!.trim(), 'env'];
  else if (nonEmpty(file.token)) [token, tokenSource] = [file.token!.trim(), 'file'];

  // the CA: a file from the flag; a file or PEM text from the environment or the config file
  let ca: string | undefined;
  let caFile: string | undefined;
  let caSource: SettingSource | null = null;
  if (nonEmpty(flags.vaultCa)) {
    caFile = path.resolve(cwd, flags.vaultCa!.trim());
    [ca, caSource] = [readCa(caFile, '--vault-ca'), 'flag'];
  } else if (nonEmpty(env.OSR_VAULT_CA)) {
    const v = env.OSR_VAULT_CA!;
    if (isPem(v)) ca = v;
    else ca = readCa((caFile = path.resolve(cwd, v.trim())), 'OSR_VAULT_CA');
    caSource = 'env';
  } else if (nonEmpty(file.ca)) {
    const v = file.ca!;
    if (isPem(v)) ca = v;
    else ca = readCa((caFile = path.resolve(path.dirname(configFile!), v.trim())), `"ca" in ${configFile}`);
    caSource = 'file';
  }

  return { url, urls, token, ca, caFile, configFile, sources: { url: urlSource, token: tokenSource, ca: caSource }, searched };
}

/** The token shown to people: its id, never its secret. */
export function maskToken(token: string | undefined): string | null {
  if (!token) return null;
  const m = /^(osr_[^_]+)_/.exec(token);
  return m ? `${m[1]}_…` : `${token.slice(0, 4)}…`;
}
