/**
 * The Azure fabric's site file (`osr provider --fabric azure --config azure.yaml`,
 * docs/design/azure.md): the subscription, the resource group and region osr makes its
 * resources in, the storage account that holds the replicas, and the service principal
 * the provider signs in as. Secrets are never in the site file: it names files that hold
 * them, and a file that others may read is refused. Every field is checked here; a wrong
 * one is refused with CONFIG_INVALID naming it.
 */
import path from 'node:path';
import { LOOPBACK_HOSTS } from '../../domain/azure-layout.js';
import { agentHostOf, fail, mapping, optionalText, readOwnerOnlyFile, safe, parseSiteYaml, text, type AgentHostConfig, type Node } from '../site-fields.js';

export interface AzureSiteConfig {
  /** the fabric's name */
  name: string;
  /** the provider's state (absolute) */
  dir: string;
  subscriptionId: string;
  resourceGroup: string;
  location: string;
  storageAccount: {
    name: string;
    /** the Blob service's URL (default https://NAME.blob.core.windows.net) */
    blobEndpoint: string;
    /** its Resource Manager id, which a disk import names */
    resourceId: string;
    /** a file holding the account's shared key; without one the service principal's role on the account is used */
    keyFile?: string | undefined;
  };
  credential: {
    tenantId: string;
    clientId: string;
    /** a file holding the client secret, or a PEM file with the certificate and its key */
    clientSecretFile?: string | undefined;
    certificateFile?: string | undefined;
  };
  /**
   * other endpoints than Azure's public cloud (a sovereign cloud, or the lab's emulators);
   * `caFile` is the CA Resource Manager's certificate is checked against (an emulator's)
   */
  endpoints?: { resourceManager?: string | undefined; authorityHost?: string | undefined; caFile?: string | undefined } | undefined;
  /**
   * the osr agent that runs in the region (a small VM or container): failback reads the
   * Azure disks there, next to the storage, and sends home only the blocks that differ.
   * Its name is the region's host, `azure-<location>` (what the vault's grants name).
   * Without one, failback from this site is refused.
   */
  regionAgent?: AgentHostConfig | undefined;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** Azure's rules: a resource group 1–90 of letters, digits, . _ - ( ); a storage account 3–24 lower-case letters and digits; a region's name */
const RESOURCE_GROUP = /^[-\w.()]{1,89}[-\w()]$/;
const STORAGE_ACCOUNT = /^[a-z0-9]{3,24}$/;
const LOCATION = /^[a-z0-9]{2,40}$/;


function uuid(v: unknown, field: string): string {
  const s = text(v, field);
  // (the value is not echoed: a secret pasted into the wrong field must not reach a log)
  if (!UUID.test(s)) throw fail(field, 'is not a GUID');
  return s.toLowerCase();
}

function matching(v: unknown, field: string, re: RegExp, what: string): string {
  const s = text(v, field);
  if (!re.test(s)) throw fail(field, `"${s}" is not ${what}`);
  return s;
}

/** An https URL (plain http only to this machine's loopback: an emulator), with no query or credentials. */
function endpoint(v: unknown, field: string): string {
  const s = text(v, field);
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw fail(field, `"${s}" is not a URL`);
  }
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && LOOPBACK_HOSTS.has(u.hostname))) throw fail(field, 'must be https (plain http only to an emulator on this machine)');
  if (u.username || u.password || u.search || u.hash) throw fail(field, 'carries no credentials, query or fragment');
  return s.replace(/\/+$/, '');
}

/** A file that holds a secret: checked now (readable by its owner only), read again when used. */
function secretFile(v: unknown, field: string, base: string): string | undefined {
  const s = optionalText(v, field);
  if (s === undefined) return undefined;
  const file = path.resolve(base, s);
  readOwnerOnlyFile(file, `site file: ${field}`);
  return file;
}

/** Refuse a field the mapping does not have (a secret written in the file itself, a typo). */
function onlyFields(m: Node, field: string, known: readonly string[]): void {
  for (const k of Object.keys(m)) {
    if (known.includes(k)) continue;
    if (/secret|key|password/i.test(k)) throw fail(`${field}${k}`, 'is not a field: secrets are never in the site file; name a file that holds it (clientSecretFile, keyFile)');
    throw fail(`${field}${k}`, 'is not a field of an Azure site file');
  }
}

export function parseAzureSite(yamlText: string, base: string): AzureSiteConfig {
  const doc = parseSiteYaml(yamlText);
  const root: Node = mapping(doc, 'the site file');
  const name = safe(root.name, 'name');
  const dir = path.resolve(base, text(root.dir ?? `state-${name}`, 'dir'));
  const subscriptionId = uuid(root.subscriptionId, 'subscriptionId');
  const resourceGroup = matching(root.resourceGroup, 'resourceGroup', RESOURCE_GROUP, 'a resource group name');
  const location = matching(root.location, 'location', LOCATION, 'a region name (westeurope, eastus2, …)');
  const sa = mapping(root.storageAccount, 'storageAccount');
  onlyFields(sa, 'storageAccount.', ['name', 'blobEndpoint', 'resourceId', 'keyFile']);
  const saName = matching(sa.name, 'storageAccount.name', STORAGE_ACCOUNT, 'a storage account name (3 to 24 lower-case letters and digits)');
  const storageAccount = {
    name: saName,
    blobEndpoint: sa.blobEndpoint === undefined ? `https://${saName}.blob.core.windows.net` : endpoint(sa.blobEndpoint, 'storageAccount.blobEndpoint'),
    resourceId: sa.resourceId === undefined ? `/subscriptions/${subscriptionId}/resourceGroups/${resourceGroup}/providers/Microsoft.Storage/storageAccounts/${saName}` : text(sa.resourceId, 'storageAccount.resourceId'),
    keyFile: secretFile(sa.keyFile, 'storageAccount.keyFile', base),
  };
  if (!/^\/subscriptions\/[^/]+\/resourceGroups\/[^/]+\/providers\/Microsoft\.Storage\/storageAccounts\/[a-z0-9]{3,24}$/i.test(storageAccount.resourceId)) {
    throw fail('storageAccount.resourceId', 'is not a storage account\'s Resource Manager id');
  }
  // a disk import names this account: it must be the one that holds the replicas
  if (storageAccount.resourceId.split('/').at(-1)!.toLowerCase() !== saName) throw fail('storageAccount.resourceId', `names another storage account than ${saName}`);
  const c = mapping(root.credential, 'credential');
  onlyFields(c, 'credential.', ['tenantId', 'clientId', 'clientSecretFile', 'certificateFile']);
  const credential = {
    tenantId: uuid(c.tenantId, 'credential.tenantId'),
    clientId: uuid(c.clientId, 'credential.clientId'),
    clientSecretFile: secretFile(c.clientSecretFile, 'credential.clientSecretFile', base),
    certificateFile: secretFile(c.certificateFile, 'credential.certificateFile', base),
  };
  if ((credential.clientSecretFile === undefined) === (credential.certificateFile === undefined)) {
    throw fail('credential', 'names one of clientSecretFile and certificateFile (the service principal\'s secret or its certificate)');
  }
  let endpoints: AzureSiteConfig['endpoints'];
  if (root.endpoints !== undefined) {
    const e = mapping(root.endpoints, 'endpoints');
    onlyFields(e, 'endpoints.', ['resourceManager', 'authorityHost', 'caFile']);
    endpoints = {
      resourceManager: e.resourceManager === undefined ? undefined : endpoint(e.resourceManager, 'endpoints.resourceManager'),
      authorityHost: e.authorityHost === undefined ? undefined : endpoint(e.authorityHost, 'endpoints.authorityHost'),
      caFile: optionalText(e.caFile, 'endpoints.caFile') === undefined ? undefined : path.resolve(base, text(e.caFile, 'endpoints.caFile')),
    };
  }
  if (endpoints?.resourceManager !== undefined && sa.blobEndpoint === undefined) throw fail('storageAccount.blobEndpoint', 'is needed with endpoints.resourceManager: the default is the public cloud\'s');
  let regionAgent: AgentHostConfig | undefined;
  if (root.regionAgent !== undefined) {
    const a = mapping(root.regionAgent, 'regionAgent');
    onlyFields(a, 'regionAgent.', ['name', 'agent', 'agentTokenFile', 'agentFingerprint', 'addresses', 'replicationPort']);
    const host = `azure-${location}`;
    if (a.name !== undefined && a.name !== host) throw fail('regionAgent.name', `is the region's host, ${host} (the name the vault's grants give it), or left out`);
    regionAgent = agentHostOf({ ...a, name: host }, 'regionAgent', base);
  }
  onlyFields(root, '', ['name', 'dir', 'subscriptionId', 'resourceGroup', 'location', 'storageAccount', 'credential', 'endpoints', 'regionAgent']);
  return { name, dir, subscriptionId, resourceGroup, location, storageAccount, credential, endpoints, ...(regionAgent ? { regionAgent } : {}) };
}
