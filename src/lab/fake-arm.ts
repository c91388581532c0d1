/**
 * A small emulated Azure Resource Manager over HTTPS (the SDKs refuse a bearer token over
 * plain HTTP), for the resource types osr makes: managed disks, NICs, virtual networks and
 * VMs in one resource group — the compute side of the lab's Azure recovery site (`osr lab
 * up --topology to-azure`; the storage side is Azurite), and of the tests. It is driven by
 * the real `@azure/arm-compute` and `@azure/arm-network` clients. It checks the API version
 * of every request and the references between resources (a NIC's subnet, a VM's disks and
 * NICs, a disk's import blob); the tests add a check of every body against the REST
 * specifications' schemas (test/support/arm-spec.ts), so that it cannot drift silently.
 *
 * It signs in a service principal as Microsoft Entra ID does for a client secret (an
 * OpenID configuration and a token endpoint under `/{tenant}`), so that a provider
 * process uses `@azure/identity` against it unchanged.
 *
 * Long-running operations answer 201/202 with an `Azure-AsyncOperation` to poll, as Azure
 * does. Faults can be injected: an HTTP status for the next matching requests (429 with
 * Retry-After, 409, 500) and operations that end in Failed.
 *
 * A disk import reads its blob from the storage emulator (Azurite) and checks its length
 * and fixed-VHD footer, as Azure's import does; the disk's bytes are kept so that a test
 * can compare them with the recovery point they came from.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { BlobClient, BlobSASPermissions, BlobServiceClient, generateBlobSASQueryParameters, type ContainerClient, type PageBlobClient, type StorageSharedKeyCredential } from '@azure/storage-blob';
import type { AccessToken, TokenCredential } from '@azure/identity';
import { createCa, issueCertificate, writeFileAtomic } from '../pki/index.js';
import { readVhdFooter, VHD_FOOTER_BYTES } from '../domain/vhd.js';

/** The API version the SDK of each resource type calls (checked on every request). */
/** the container of the storage account that holds the emulated managed disks' bytes */
const DISKS_CONTAINER = 'fake-managed-disks';

export const API_VERSIONS: Record<string, string> = {
  'Microsoft.Compute/disks': '2026-03-02',
  'Microsoft.Compute/virtualMachines': '2026-04-01',
  'Microsoft.Network/networkInterfaces': '2026-01-01',
  'Microsoft.Network/virtualNetworks': '2026-01-01',
};

/** A check of a request's body: why the real service would refuse it, or undefined. */
export type BodyCheck = (type: string, body: unknown) => string | undefined;

export interface FakeArmOptions {
  storageCredential: StorageSharedKeyCredential;
  /** the storage account's blob endpoint (the emulator's): where the managed disks' page blobs are kept */
  storageBlobEndpoint: string;
  subscriptionId?: string;
  resourceGroup?: string;
  lroMs?: number;
  /** the bodies' check (the tests': the REST specifications' schemas) */
  check?: BodyCheck;
  /** the service principal it signs in (any other client or secret is refused); none: the token endpoint refuses everyone */
  principal?: { tenantId: string; clientId: string; secret: string };
  host?: string;
  port?: number;
  /** where the resources are kept across restarts (the lab's); an operation under way at a stop has ended by the next start */
  stateFile?: string;
}

interface Resource {
  id: string;
  name: string;
  type: string;
  location: string;
  tags?: Record<string, string>;
  properties: Record<string, unknown>;
  sku?: unknown;
}

interface Operation {
  id: string;
  /** when it ends (whether anyone polls it or not, as in Azure) */
  endsAt: number;
  fail?: { code: string; message: string } | undefined;
  /** what happens when it succeeds */
  done: () => void;
  failed: () => void;
  status?: 'InProgress' | 'Succeeded' | 'Failed';
  /** what its Location answers once it succeeded */
  result?: unknown;
}

export interface FaultRule {
  method: string;
  path: RegExp;
  status: number;
  /** how many matching requests get it */
  times: number;
  code?: string;
  retryAfterSeconds?: number;
}

export interface FakeArm {
  /** the endpoint to give the SDK clients */
  endpoint: string;
  /** the CA the server's certificate is from (the clients' tlsOptions.ca) */
  ca: string;
  credential: TokenCredential;
  subscriptionId: string;
  resourceGroup: string;
  /** every request received: method, path, API version, status answered */
  requests: { method: string; path: string; apiVersion: string | null; status: number }[];
  /** requests refused by the body check (a test asserts there are none) */
  violations: { method: string; path: string; errors: string }[];
  resources: Map<string, Resource>;
  /** the bytes a managed disk holds now, by the disk's id (its page blob in the storage emulator) */
  diskBytes(id: string): Promise<Buffer>;
  /** the blob that holds a managed disk's bytes (what a VM in Azure writes to): a test writes into it as the VM would */
  diskBlob(id: string): PageBlobClient;
  /** a VM's power: running, stopped (its disks stay attached and busy) or deallocated */
  powerOf(name: string): 'running' | 'stopped' | 'deallocated' | undefined;
  inject(rule: FaultRule): void;
  /** how long the long-running operations begun from now take */
  setOperationMs(ms: number): void;
  /** the next long-running operation on a path matching `path` ends in Failed */
  failNextOperation(path: RegExp, code: string, message: string): void;
  stop(): Promise<void>;
}


export async function startFakeArm(o: FakeArmOptions): Promise<FakeArm> {
  const ca = await createCa({ commonName: 'fake Resource Manager CA' });
  const cert = await issueCertificate(ca, { commonName: 'management.fake', role: 'vault' });
  const subscriptionId = o.subscriptionId ?? '00000000-0000-0000-0000-00000000a2e0';
  const resourceGroup = o.resourceGroup ?? 'osr-recovery';
  const rgPath = `/subscriptions/${subscriptionId}/resourceGroups/${resourceGroup}`.toLowerCase();
  const resources = new Map<string, Resource>();
  if (o.stateFile !== undefined && fs.existsSync(o.stateFile)) {
    for (const r of JSON.parse(fs.readFileSync(o.stateFile, 'utf8')) as Resource[]) {
      if (r.properties.provisioningState !== 'Failed') r.properties.provisioningState = 'Succeeded';
      resources.set(r.id.toLowerCase(), r);
    }
  }
  let saving: Promise<void> = Promise.resolve();
  const persist = (): Promise<void> => {
    if (o.stateFile === undefined) return Promise.resolve();
    const text = JSON.stringify([...resources.values()]);
    saving = saving.then(() => writeFileAtomic(o.stateFile!, text, 0o600)).catch(() => undefined);
    return saving;
  };
  const operations = new Map<string, Operation>();
  /** each VM's power, by its id (lower case) */
  const power = new Map<string, 'running' | 'stopped' | 'deallocated'>();
  const faults: FaultRule[] = [];
  const failing: { path: RegExp; code: string; message: string }[] = [];
  const requests: FakeArm['requests'] = [];
  const violations: FakeArm['violations'] = [];
  // a managed disk's bytes are a page blob of its own (a fixed VHD, as Azure exports it), so that its access SAS reads them
  const disksContainer: ContainerClient = new BlobServiceClient(o.storageBlobEndpoint, o.storageCredential).getContainerClient(DISKS_CONTAINER);
  const diskBlobName = (id: string): string => `${crypto.createHash('sha256').update(id.toLowerCase()).digest('hex').slice(0, 32)}.vhd`;
  const diskBlob = (id: string) => disksContainer.getPageBlobClient(diskBlobName(id));
  // a token of this start only, handed out for the principal's secret (or to the tests' own credential)
  const TOKEN = crypto.randomBytes(24).toString('base64url');
  let endpoint = '';
  let lroMs = o.lroMs ?? 100;

  const send = (res: import('node:http').ServerResponse, status: number, body?: unknown, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'content-type': 'application/json', 'x-ms-request-id': crypto.randomUUID(), ...headers });
    res.end(body === undefined ? '' : JSON.stringify(body));
  };
  const error = (res: import('node:http').ServerResponse, status: number, code: string, message: string, headers: Record<string, string> = {}): void => send(res, status, { error: { code, message } }, headers);

  const startOperation = (path: string, done: () => void, failed: () => void): Operation => {
    const i = failing.findIndex((f) => f.path.test(path));
    const fail = i >= 0 ? failing.splice(i, 1)[0] : undefined;
    const op: Operation = { id: crypto.randomUUID(), endsAt: Date.now() + lroMs, fail: fail ? { code: fail.code, message: fail.message } : undefined, done, failed };
    operations.set(op.id, op);
    return op;
  };
  const operationHeaders = (op: Operation): Record<string, string> => ({ 'azure-asyncoperation': `${endpoint}/fake/operations/${op.id}?api-version=2024-01-01`, 'retry-after': '0' });

  /** Keep a disk's bytes (the whole VHD, footer included) as its page blob: pages of zeros are not sent. */
  const storeDisk = async (id: string, bytes: Buffer): Promise<void> => {
    await disksContainer.createIfNotExists();
    const blob = diskBlob(id);
    await blob.create(bytes.length);
    const step = 4 * 1024 * 1024;
    for (let at = 0; at < bytes.length; at += step) {
      const piece = bytes.subarray(at, Math.min(bytes.length, at + step));
      if (piece.some((b) => b !== 0)) await blob.uploadPages(piece, at, piece.length);
    }
  };

  /** Why a resource's references do not hold, or undefined. */
  const checkReferences = async (type: string, body: Resource, id: string): Promise<string | undefined> => {
    const props = body.properties;
    if (type === 'Microsoft.Compute/disks') {
      const cd = props.creationData as { createOption: string; sourceUri?: string; storageAccountId?: string };
      if (cd.createOption !== 'Import') return undefined;
      // a disk is imported from the storage account only (the import reads with the account's key), and at most 4 GiB of it here
      const source = new BlobClient(cd.sourceUri!, o.storageCredential);
      if (source.accountName !== o.storageCredential.accountName || !['127.0.0.1', 'localhost'].includes(new URL(source.url).hostname)) return `the blob ${cd.sourceUri} is not in the storage account ${o.storageCredential.accountName}`;
      let bytes: Buffer;
      try {
        const length = (await source.getProperties()).contentLength ?? 0;
        if (length > 4 * 1024 ** 3) return `the blob is ${length} bytes: the emulated import takes at most 4 GiB`;
        bytes = await source.downloadToBuffer();
      } catch (e) {
        return `the blob ${cd.sourceUri} cannot be read: ${(e as Error).message}`;
      }
      try {
        const footer = readVhdFooter(bytes.subarray(bytes.length - VHD_FOOTER_BYTES), 'the imported blob');
        if (bytes.length !== footer.currentSize + VHD_FOOTER_BYTES) return `the blob is ${bytes.length} bytes; its footer says ${footer.currentSize} + ${VHD_FOOTER_BYTES}`;
        props.diskSizeGB = Math.ceil(footer.currentSize / 1024 ** 3);
        props.diskSizeBytes = footer.currentSize;
        props.diskState = 'Unattached';
      } catch (e) {
        return `the blob is not a fixed VHD: ${(e as Error).message}`;
      }
      await storeDisk(id, bytes);
      return undefined;
    }
    if (type === 'Microsoft.Network/networkInterfaces') {
      for (const c of props.ipConfigurations as { properties: { subnet: { id: string } } }[]) {
        const subnet = c.properties.subnet.id.toLowerCase();
        const vnet = resources.get(subnet.replace(/\/subnets\/[^/]+$/, ''));
        const subnets = (vnet?.properties.subnets ?? []) as { id: string }[];
        if (!subnets.some((s) => s.id.toLowerCase() === subnet)) return `subnet ${c.properties.subnet.id} does not exist`;
      }
      return undefined;
    }
    if (type === 'Microsoft.Compute/virtualMachines') {
      const sp = props.storageProfile as { osDisk: { managedDisk?: { id: string } }; dataDisks?: { managedDisk?: { id: string }; lun: number }[] };
      const disks = [sp.osDisk.managedDisk?.id, ...(sp.dataDisks ?? []).map((d) => d.managedDisk?.id)].filter((x): x is string => x !== undefined);
      for (const d of disks) {
        const r = resources.get(d.toLowerCase());
        if (!r) return `disk ${d} does not exist`;
        const by = r.properties.managedBy as string | undefined;
        if (by && by.toLowerCase() !== id.toLowerCase()) return `disk ${d} is attached to ${by}`;
      }
      const luns = (sp.dataDisks ?? []).map((d) => d.lun);
      if (new Set(luns).size !== luns.length) return 'two data disks share a LUN';
      for (const n of (props.networkProfile as { networkInterfaces: { id: string }[] }).networkInterfaces) {
        if (!resources.has(n.id.toLowerCase())) return `NIC ${n.id} does not exist`;
      }
    }
    return undefined;
  };

  /** End the operations whose time has come. */
  const settle = (): void => {
    for (const op of operations.values()) {
      if (op.status !== undefined || op.endsAt > Date.now()) continue;
      op.status = op.fail ? 'Failed' : 'Succeeded';
      if (op.fail) op.failed();
      else op.done();
    }
  };

  /** A POST action on a resource: a VM's power, a disk's access (as Azure answers them). */
  const act = (type: string, action: string, r: Resource, body: unknown, path: string, reply: (status: number, body?: unknown, headers?: Record<string, string>) => void, refuse: (status: number, code: string, message: string) => void): void => {
    const key = r.id.toLowerCase();
    const lroHeaders = (op: Operation) => ({ ...operationHeaders(op), location: `${endpoint}/fake/operations/${op.id}?api-version=2024-01-01` });
    if (type === 'Microsoft.Compute/virtualMachines' && ['start', 'deallocate', 'powerOff'].includes(action)) {
      if (action === 'start') {
        // Azure refuses to start a VM whose disk has an active access SAS
        const busy = vmDisks(r).find((d) => resources.get(d)?.properties.diskState === 'ActiveSAS');
        if (busy) return refuse(409, 'OperationNotAllowed', `disk ${busy} has an active shared access signature: end it first`);
      }
      const op = startOperation(path, () => power.set(key, action === 'start' ? 'running' : action === 'deallocate' ? 'deallocated' : 'stopped'), () => undefined);
      return reply(202, undefined, lroHeaders(op));
    }
    if (type === 'Microsoft.Compute/disks' && action === 'beginGetAccess') {
      const why = o.check?.('Microsoft.Compute/disks/beginGetAccess', body);
      if (why !== undefined) {
        violations.push({ method: 'POST', path, errors: why });
        return refuse(400, 'InvalidRequestContent', why);
      }
      const g = body as { access: string; durationInSeconds: number };
      const owner = r.properties.managedBy as string | undefined;
      if (owner && power.get(owner.toLowerCase()) !== 'deallocated') return refuse(409, 'OperationNotAllowed', `disk ${r.name} is attached to VM ${owner}, which is not deallocated: access is granted to an unattached disk or a deallocated VM's`);
      if (g.access !== 'Read') return refuse(400, 'InvalidParameter', 'the emulated disks grant read access only');
      const expiresOn = new Date(Date.now() + g.durationInSeconds * 1000);
      const sas = generateBlobSASQueryParameters({ containerName: DISKS_CONTAINER, blobName: diskBlobName(key), permissions: BlobSASPermissions.parse('r'), expiresOn }, o.storageCredential).toString();
      const op = startOperation(path, () => {
        r.properties.diskState = 'ActiveSAS';
      }, () => undefined);
      op.result = { accessSAS: `${diskBlob(key).url}?${sas}` };
      return reply(202, undefined, { location: `${endpoint}/fake/results/${op.id}`, 'retry-after': '0' });
    }
    if (type === 'Microsoft.Compute/disks' && action === 'endGetAccess') {
      const op = startOperation(path, () => {
        r.properties.diskState = r.properties.managedBy ? 'Reserved' : 'Unattached';
      }, () => undefined);
      return reply(202, undefined, { location: `${endpoint}/fake/results/${op.id}`, 'retry-after': '0' });
    }
    return refuse(400, 'InvalidResourceType', `the fake has no action ${action} on ${type}`);
  };
  const vmDisks = (vm: Resource): string[] => {
    const sp = vm.properties.storageProfile as { osDisk: { managedDisk?: { id: string } }; dataDisks?: { managedDisk?: { id: string } }[] };
    return [sp.osDisk, ...(sp.dataDisks ?? [])].flatMap((d) => (d.managedDisk ? [d.managedDisk.id.toLowerCase()] : []));
  };

  const handle = async (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', endpoint);
    const method = req.method ?? 'GET';
    const path = url.pathname;
    const apiVersion = url.searchParams.get('api-version');
    const log = { method, path, apiVersion, status: 0 };
    requests.push(log);
    const reply = (status: number, body?: unknown, headers?: Record<string, string>): void => {
      log.status = status;
      send(res, status, body, headers);
    };
    const refuse = (status: number, code: string, message: string, headers?: Record<string, string>): void => {
      log.status = status;
      error(res, status, code, message, headers);
    };
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > 4 * 1024 * 1024) return refuse(413, 'RequestTooLarge', 'a request body is at most 4 MiB');
      chunks.push(c as Buffer);
    }
    // Entra ID's part: the tenant's OpenID configuration and its token endpoint (client credentials)
    const tenant = /^\/([0-9a-f-]{36})\/(v2\.0\/\.well-known\/openid-configuration|oauth2\/v2\.0\/token)$/i.exec(path);
    if (tenant) {
      const base = `${endpoint}/${tenant[1]}`;
      if (method === 'GET' && tenant[2]!.startsWith('v2.0')) {
        return reply(200, { token_endpoint: `${base}/oauth2/v2.0/token`, issuer: `${base}/v2.0`, authorization_endpoint: `${base}/oauth2/v2.0/authorize`, jwks_uri: `${base}/discovery/v2.0/keys`, response_types_supported: ['code', 'id_token', 'token'], subject_types_supported: ['pairwise'], id_token_signing_alg_values_supported: ['RS256'], scopes_supported: ['openid'], token_endpoint_auth_methods_supported: ['client_secret_post'] });
      }
      if (method === 'POST') {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        const p = o.principal;
        const given = Buffer.from(form.get('client_secret') ?? '');
        const ok = p !== undefined && tenant[1]!.toLowerCase() === p.tenantId.toLowerCase() && form.get('client_id') === p.clientId && given.length === Buffer.byteLength(p.secret) && crypto.timingSafeEqual(given, Buffer.from(p.secret));
        if (!ok) return reply(401, { error: 'invalid_client', error_description: 'AADSTS7000215: Invalid client secret provided.' });
        return reply(200, { token_type: 'Bearer', expires_in: 3599, ext_expires_in: 3599, access_token: TOKEN });
      }
    }
    if (req.headers.authorization !== `Bearer ${TOKEN}`) return refuse(401, 'AuthenticationFailed', 'no valid bearer token');
    settle();
    const fault = faults.find((f) => f.times > 0 && f.method === method && f.path.test(path));
    if (fault) {
      fault.times--;
      return refuse(fault.status, fault.code ?? (fault.status === 429 ? 'TooManyRequests' : fault.status === 409 ? 'Conflict' : 'InternalServerError'), 'injected by the test', fault.retryAfterSeconds !== undefined ? { 'retry-after': String(fault.retryAfterSeconds) } : {});
    }
    const opMatch = /^\/fake\/operations\/([0-9a-f-]+)$/.exec(path);
    if (opMatch) {
      const op = operations.get(opMatch[1]!);
      if (!op) return refuse(404, 'NotFound', 'no such operation');
      return reply(200, { id: op.id, status: op.status ?? 'InProgress', ...(op.status === 'Failed' ? { error: op.fail } : {}) }, { 'retry-after': '0' });
    }
    const result = /^\/fake\/results\/([0-9a-f-]+)$/.exec(path);
    if (result) {
      // the Location of an operation whose result is read there (a disk's access): 202 until it ends
      const op = operations.get(result[1]!);
      if (!op) return refuse(404, 'NotFound', 'no such operation');
      if (op.status === undefined) return reply(202, undefined, { location: `${endpoint}/fake/results/${op.id}`, 'retry-after': '0' });
      if (op.status === 'Failed') return refuse(500, op.fail!.code, op.fail!.message);
      return reply(200, op.result);
    }
    const m = /^(\/subscriptions\/[^/]+\/resourcegroups\/[^/]+)\/providers\/(Microsoft\.[A-Za-z]+\/[A-Za-z]+)(?:\/([^/]+))?(?:\/(start|deallocate|powerOff|beginGetAccess|endGetAccess))?$/i.exec(path);
    if (!m || m[1]!.toLowerCase() !== rgPath) return refuse(404, 'ResourceGroupNotFound', `no resource group or route for ${path}`);
    const type = Object.keys(API_VERSIONS).find((t) => t.toLowerCase() === m[2]!.toLowerCase());
    if (!type) return refuse(400, 'InvalidResourceType', `the fake has no resource type ${m[2]}`);
    if (apiVersion !== API_VERSIONS[type]) {
      violations.push({ method, path, errors: `api-version ${apiVersion} is not ${API_VERSIONS[type]}` });
      return refuse(400, 'InvalidApiVersionParameter', `api-version ${apiVersion} is not the one this fake was written from (${API_VERSIONS[type]})`);
    }
    const name = m[3];
    if (!name) {
      if (method !== 'GET') return refuse(405, 'MethodNotAllowed', `${method} on a collection`);
      const prefix = `${rgPath}/providers/${type}/`.toLowerCase();
      return reply(200, { value: [...resources.entries()].filter(([k]) => k.startsWith(prefix)).map(([, r]) => r) });
    }
    const id = `${m[1]}/providers/${type}/${name}`;
    const key = id.toLowerCase();
    const existing = resources.get(key);
    const action = m[4];
    if (action !== undefined) {
      if (method !== 'POST') return refuse(405, 'MethodNotAllowed', `${method} on ${action}`);
      if (!existing) return refuse(404, 'ResourceNotFound', `${type} ${name} not found`);
      const text = Buffer.concat(chunks).toString('utf8');
      let body: unknown;
      try {
        body = text === '' ? undefined : JSON.parse(text);
      } catch {
        return refuse(400, 'InvalidRequestContent', 'the body is not JSON');
      }
      return act(type, action, existing, body, path, reply, refuse);
    }
    if (method === 'GET') return existing ? reply(200, existing) : refuse(404, 'ResourceNotFound', `${type} ${name} not found`);
    if (method === 'DELETE') {
      if (!existing) return reply(204);
      if (existing.properties.managedBy) return refuse(409, 'OperationNotAllowed', `${type} ${name} is attached to ${String(existing.properties.managedBy)}`);
      if (type === 'Microsoft.Network/networkInterfaces' && existing.properties.virtualMachine) return refuse(400, 'NicInUse', `NIC ${name} is used by a VM`);
      const op = startOperation(path, () => {
        resources.delete(key);
        if (type === 'Microsoft.Compute/disks') void diskBlob(key).deleteIfExists().catch(() => undefined);
        power.delete(key);
        if (type === 'Microsoft.Compute/virtualMachines') {
          for (const r of resources.values()) {
            if ((r.properties.managedBy as string | undefined)?.toLowerCase() === key) delete r.properties.managedBy;
            if ((r.properties.virtualMachine as { id: string } | undefined)?.id.toLowerCase() === key) delete r.properties.virtualMachine;
          }
        }
      }, () => undefined);
      return reply(202, undefined, { ...operationHeaders(op), location: `${endpoint}/fake/operations/${op.id}?api-version=2024-01-01` });
    }
    if (method !== 'PUT') return refuse(405, 'MethodNotAllowed', method);
    let body: Resource;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Resource;
    } catch {
      return refuse(400, 'InvalidRequestContent', 'the body is not JSON');
    }
    const errors = o.check?.(type, body);
    if (errors !== undefined) {
      violations.push({ method, path, errors });
      return refuse(400, 'InvalidRequestContent', errors);
    }
    if (existing && existing.properties.provisioningState !== 'Succeeded' && existing.properties.provisioningState !== 'Failed') {
      return refuse(409, 'AnotherOperationInProgress', `${type} ${name} is being changed by another operation`);
    }
    const why = await checkReferences(type, body, id);
    if (why) return refuse(400, 'InvalidParameter', why);
    const made: Resource = { ...body, id, name, type, properties: { ...body.properties, provisioningState: existing ? 'Updating' : 'Creating' } };
    if (type === 'Microsoft.Network/virtualNetworks') {
      made.properties.subnets = ((body.properties.subnets ?? []) as { name: string; properties: object }[]).map((s) => ({ ...s, id: `${id}/subnets/${s.name}` }));
    }
    if (type === 'Microsoft.Network/networkInterfaces') {
      made.properties.ipConfigurations = (body.properties.ipConfigurations as { name: string }[]).map((c) => ({ ...c, id: `${id}/ipConfigurations/${c.name}` }));
    }
    resources.set(key, made);
    const op = startOperation(
      path,
      () => {
        made.properties.provisioningState = 'Succeeded';
        if (type === 'Microsoft.Compute/virtualMachines') {
          if (!existing) power.set(key, 'running');
          const sp = made.properties.storageProfile as { osDisk: { managedDisk?: { id: string } }; dataDisks?: { managedDisk?: { id: string } }[] };
          for (const d of [sp.osDisk, ...(sp.dataDisks ?? [])]) {
            const r = d.managedDisk ? resources.get(d.managedDisk.id.toLowerCase()) : undefined;
            if (r) {
              r.properties.managedBy = id;
              r.properties.diskState = 'Attached';
            }
          }
          for (const n of (made.properties.networkProfile as { networkInterfaces: { id: string }[] }).networkInterfaces) {
            const r = resources.get(n.id.toLowerCase());
            if (r) r.properties.virtualMachine = { id };
          }
        }
      },
      () => {
        made.properties.provisioningState = 'Failed';
      },
    );
    reply(existing ? 200 : 201, made, operationHeaders(op));
  };

  const server = https.createServer({ key: cert.keyPem, cert: cert.certPem }, (req, res) => {
    handle(req, res)
      .catch((e: unknown) => {
        if (!res.headersSent) error(res, 500, 'InternalServerError', String(e));
      })
      .finally(() => void persist());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', resolve);
  });
  endpoint = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const credential: TokenCredential = {
    getToken: async (): Promise<AccessToken> => ({ token: TOKEN, expiresOnTimestamp: Date.now() + 3600_000 }),
  };
  return {
    endpoint,
    ca: ca.certPem,
    credential,
    subscriptionId,
    resourceGroup,
    requests,
    violations,
    resources,
    diskBytes: async (id) => {
      const r = resources.get(id.toLowerCase());
      const size = r?.properties.diskSizeBytes;
      if (typeof size !== 'number') throw new Error(`no managed disk ${id}`);
      return diskBlob(id).downloadToBuffer(0, size);
    },
    diskBlob: (id) => diskBlob(id),
    powerOf: (name) => [...resources.values()].filter((r) => r.type === 'Microsoft.Compute/virtualMachines' && r.name === name).map((r) => power.get(r.id.toLowerCase()))[0],
    inject: (rule) => faults.push({ ...rule }),
    setOperationMs: (ms) => {
      lroMs = ms;
    },
    failNextOperation: (path, code, message) => failing.push({ path, code, message }),
    stop: async () => {
      await new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
      settle();
      await persist();
    },
  };
}
