/**
 * The one registry of error codes. Every error osr reports carries one of these codes,
 * a class (recoverable errors are retried, non-recoverable ones need someone to act) and
 * a hint that says what to do next. docs/errors.md is kept in step by a test.
 */
export const ErrorClass = {
  Recoverable: 'recoverable',
  NonRecoverable: 'non-recoverable',
  Usage: 'usage',
} as const;
export type ErrorClass = (typeof ErrorClass)[keyof typeof ErrorClass];

interface ErrorDef {
  readonly class: ErrorClass;
  readonly meaning: string;
  readonly fix: string;
}

export const ERROR_CODES = {
  // usage and input
  INVALID_ARGUMENT: { class: 'usage', meaning: 'A request or command argument is malformed or out of range.', fix: 'Correct the argument named in the message and try again.' },
  NOT_FOUND: { class: 'usage', meaning: 'The named object (disk, VM, replication, recovery point, overlay) does not exist.', fix: 'List the objects (e.g. `osr status`) and use an existing name.' },
  ALREADY_EXISTS: { class: 'usage', meaning: 'An object with that name already exists.', fix: 'Choose another name or remove the existing object first.' },
  INVALID_STATE: { class: 'usage', meaning: 'The operation is not allowed in the object\'s current state.', fix: 'Check the state with `osr status` and wait for or finish the running operation.' },
  CONFIG_INVALID: { class: 'usage', meaning: 'A configuration file or flag is invalid.', fix: 'Fix the setting named in the message; `osr --help` lists the valid values.' },
  HOST_NOT_ALLOWED: { class: 'usage', meaning: 'A request to the agent\'s local API named another host in its Host header (as a web page reaching loopback through a rebound DNS name would).', fix: 'Address the agent as `localhost` (or the loopback address and port it listens on); `osr` does so.' },
  PORT_IN_USE: { class: 'usage', meaning: 'The address a vault, agent or lab was told to listen on is taken by another process.', fix: 'If it is a lab left running, `osr lab down` (with its --dir) stops it; otherwise stop what listens there or choose another port (`osr lab up --port`, `--listen` of the vault and the agent).' },
  INTERRUPTED: { class: 'usage', meaning: 'The command was interrupted (Ctrl-C, SIGTERM, SIGHUP) before it finished; what it had started is stopped.', fix: 'Run it again when you are ready.' },
  UNHANDLED_REJECTION: { class: 'non-recoverable', meaning: 'A promise failed and nothing was waiting for it: a bug. The process logs it and goes on serving.', fix: 'Report it with the process\'s log (the message holds the error and its stack).' },

  // lab disks and change tracking
  DISK_TOO_LARGE: { class: 'usage', meaning: 'A lab disk larger than 4 TiB was requested.', fix: 'Use a virtual size of at most 4 TiB.' },
  DISK_COUNT_LIMIT: { class: 'usage', meaning: 'A lab VM must have between 1 and 16 disks.', fix: 'Give the VM 1 to 16 disks.' },
  DISK_CHANGE_UNCONFIRMED: { class: 'non-recoverable', meaning: 'A disk of a protected VM shrank or was removed. The replica keeps the older points with the disk as it was, but the VM\'s next points would lose the removed disk or the bytes past the new end; replication of the VM waits until someone confirms.', fix: 'If the change was meant, confirm it on the primary\'s agent: `osr replication confirm-disks ID` (or `POST /v1/replications/ID/confirm-disks`); replication goes on and the next points have the disks as they are now. If it was not, put the disk back as it was, and replication goes on by itself.' },
  DISK_CHANGE_UNSUPPORTED: { class: 'non-recoverable', meaning: 'The disks of a protected VM changed, and its replica cannot take the change (a disk renamed in place, a replica in Azure storage, or an initial copy still running).', fix: 'Put the disk back as it was, or disable protection and enable it again (a new initial copy).' },
  DISK_IO_ERROR: { class: 'recoverable', meaning: 'Reading or writing a disk image failed.', fix: 'Check the storage location (space, permissions, health); replication retries on the back-off.' },
  AZURE_DISK_INVALID: { class: 'non-recoverable', meaning: 'A blob meant to become an Azure disk does not end in a valid fixed-VHD footer (cookie, checksum, disk type, a size in whole MiB), or its length does not match the footer.', fix: 'The blob was not written by osr or was damaged: resynchronize the replica (`osr item resync ITEM`), which rewrites every disk and its footer.' },
  AZURE_CONFLICT: { class: 'non-recoverable', meaning: 'A resource osr was about to make in Azure exists already and was not made by this job (its osr-job tag names another job, or none): osr does not overwrite it.', fix: 'Remove or rename that resource in the resource group (or clean up the drill or failover that made it), then run the step again.' },
  AZURE_OPERATION_FAILED: { class: 'recoverable', meaning: 'Azure Resource Manager refused a request or a long-running operation ended in Failed (its error code is in the details), after the SDK\'s retries of throttling and server errors.', fix: 'Read the Azure error code in the details (quota, size not available in the region, a policy); fix its cause and run the step again: each step takes up what an earlier try made.' },
  AZURE_STORAGE_ERROR: { class: 'recoverable', meaning: 'A call to the Azure storage account failed (its HTTP status and the service\'s error code are in the details) after the SDK\'s own retries.', fix: 'Check that the storage account is reachable from the host and not throttled; replication retries on its back-off.' },
  CHANGE_LOG_CORRUPT: { class: 'non-recoverable', meaning: 'A change log failed verification (bad checksum, broken sequence).', fix: 'The disk is marked resync required; run a resynchronization.' },
  RESYNC_REQUIRED: { class: 'non-recoverable', meaning: 'Change tracking cannot be trusted (host crash, log corruption, a disk changed outside replication, pending logs at half a disk); the replica would diverge if replication went on.', fix: 'Wait for the resync window, or run a resynchronization now (`osr item resync ITEM` through the vault, `osr replication resync VM` at the host).' },
  VM_NOT_FOUND: { class: 'non-recoverable', meaning: 'The VM named by a replication does not exist on its host.', fix: 'Check the VM name, or remove the replication.' },
  DOMAIN_BUSY: { class: 'recoverable', meaning: 'The libvirt domain is held by another job (another backup tool\'s, a migration) for longer than osr waits.', fix: 'Let the other job finish (`virsh domjobinfo DOMAIN` names it); the cycle is retried on the back-off.' },
  HYPERVISOR_ERROR: { class: 'recoverable', meaning: 'libvirt refused or failed a call; the message is libvirt\'s own.', fix: 'Read the message and the domain\'s log (/var/log/libvirt/qemu/DOMAIN.log); check that libvirtd runs (`virsh version`).' },

  // transport
  NETWORK_ERROR: { class: 'recoverable', meaning: 'The connection to the peer agent failed or broke.', fix: 'Check that the peer agent runs and is reachable on its replication port; replication retries on the back-off.' },
  TLS_PEER_CERT_MISSING: { class: 'non-recoverable', meaning: 'The peer did not present a client or server certificate.', fix: 'Give the agent its certificate and key (--cert, --key) issued by the CA.' },
  TLS_PEER_CERT_UNTRUSTED: { class: 'non-recoverable', meaning: 'The peer\'s certificate is not issued by the trusted CA, has expired, or is not valid for this use.', fix: 'Issue the peer a certificate from the same CA (`osr pki issue`) and restart it.' },
  TLS_HANDSHAKE_FAILED: { class: 'non-recoverable', meaning: 'The TLS handshake failed for another reason (protocol version, name mismatch).', fix: 'Use TLS 1.3 on both sides and make the certificate name match the address used.' },
  PROTOCOL_VERSION_UNSUPPORTED: { class: 'non-recoverable', meaning: 'The peer agent speaks no protocol version this agent supports.', fix: 'Upgrade the older agent so both share a protocol version.' },
  PROTOCOL_ERROR: { class: 'recoverable', meaning: 'The peer sent a malformed or unexpected frame.', fix: 'The connection is dropped and retried; if it persists, check both agents run matching versions.' },
  CHECKSUM_MISMATCH: { class: 'recoverable', meaning: 'Data arrived with a checksum that does not match; it was discarded.', fix: 'Nothing: the transfer is retried. If it repeats, check memory and network hardware.' },
  EPOCH_STALE: { class: 'non-recoverable', meaning: 'Another site was promoted with a newer replication epoch; this one may no longer act as primary (its VM is fenced: writes are refused).', fix: 'Reverse replication: demote this copy (`osr vm demote VM`) so it becomes the replica of the promoted one.' },
  NOT_IN_INVENTORY: { class: 'usage', meaning: 'A provider asked for a certificate of a host its fabric has not reported, or for names the inventory does not list for that host.', fix: 'Report the host (and the addresses its agent is reached at) in the fabric\'s inventory; the provider does so before it enrols an agent.' },
  HOST_NOT_APPROVED: { class: 'usage', meaning: 'A provider asked for a certificate of a host the vault has not admitted: the host appeared in its fabric\'s inventory after the first one, and waits for an Owner\'s approval (a stolen provider key cannot have a host of its own certified).', fix: 'Check that the host is yours, then approve it (`osr host approve FABRIC HOST`, an Owner); the provider enrols its agent at its next inventory. `osr host admissions --pending` lists the hosts waiting.' },
  AUTH_FAILED: { class: 'non-recoverable', meaning: 'The peer is not allowed to perform this operation.', fix: 'Use a certificate with the right role, or the right API token.' },

  // replica side
  EXPORT_INVALID: { class: 'usage', meaning: 'An offline export is unfinished, partial, damaged, changed after it was written, or of another VM; nothing was imported.', fix: 'Export again at the primary (`osr replication enable --initial offline`), copy the whole directory, and import that.' },
  REPLICA_STORE_CORRUPT: { class: 'non-recoverable', meaning: 'The replica store failed verification on open.', fix: 'Restore the store from its peer by a resynchronization; keep the directory for analysis.' },
  REPLICA_CHAIN_BROKEN: { class: 'non-recoverable', meaning: 'A delta does not follow the replica\'s latest recovery point (broken chain).', fix: 'Run a resynchronization.' },
  REPLICA_DISK_FULL: { class: 'recoverable', meaning: 'The replica\'s storage location has no space left.', fix: 'Free space or move the replica; replication retries on its own.' },
  LOW_MEMORY: { class: 'recoverable', meaning: 'The agent is short of memory.', fix: 'Free memory on the host; replication retries on its own.' },
  CUT_EXPIRED: { class: 'recoverable', meaning: 'A consistency group\'s cut was not swapped within its hold: the agent let the guests\' writes go on (a guest never waits longer than the hold), so the cut is no instant of the group and makes no point.', fix: 'Nothing to do: the next cut is taken at the group\'s next interval. If it keeps happening, the coordinator is too slow to reach the group\'s agents within the hold; check their load and the network between them.' },
  POINT_NOT_FOUND: { class: 'usage', meaning: 'The recovery point does not exist (pruned or never made).', fix: 'List the recovery points and choose an existing one.' },
  OVERLAY_IN_USE: { class: 'usage', meaning: 'An overlay is open on the replica, so the operation cannot run.', fix: 'Close or commit the overlay first.' },
  HOOK_FAILED: { class: 'recoverable', meaning: 'The quiesce hook for an app-consistent point failed or timed out; a crash-consistent point was taken instead.', fix: 'Check the hook script and its output in the agent log.' },

  // vault storage and jobs
  CA_KEY_UNAVAILABLE: { class: 'non-recoverable', meaning: 'The vault cannot read its CA\'s private key file, or the file holds another key than the CA in the database\'s.', fix: 'Give the vault the key file the first vault process wrote (`--ca-key-file`; by default DATA_DIR/ca.key, or the path that process recorded), readable by the vault only (mode 0600).' },
  STORE_UNAVAILABLE: { class: 'recoverable', meaning: 'The vault cannot open or reach its database (SQLite file or PostgreSQL server).', fix: 'Check the --database URL or the data directory (permissions, space), and that PostgreSQL accepts connections; the vault retries its work once it is reachable.' },
  STORE_SCHEMA_NEWER: { class: 'non-recoverable', meaning: 'The database was migrated by a newer osr than this one; this vault will not write to tables it does not know.', fix: 'Run the newer osr version against this database, or point this vault at another database.' },
  VAULT_STANDBY: { class: 'recoverable', meaning: 'This vault runs on a read-only standby of the vault\'s database (a PostgreSQL hot standby): it serves reads and refuses every change, and providers do not use it.', fix: 'Use the primary vault (`GET /api/v1/vault` names this one\'s role and term; providers and the CLI follow the primary on their own). If the primary\'s site is lost, promote this one: `osr vault promote` (docs/deployment.md).' },
  VAULT_STALE: { class: 'non-recoverable', meaning: 'Another vault of the same identity was promoted or restored with a newer term after this one: this one is fenced. It serves reads and refuses every change, runs no jobs, and providers do not follow it.', fix: 'Work with the vault of the newest term (`details.term`, `details.url`). To bring this site back, rebuild its database as a standby of the new primary (PostgreSQL) or restore it from the new vault\'s backup (SQLite): docs/deployment.md.' },
  BACKUP_INVALID: { class: 'non-recoverable', meaning: 'A vault backup cannot be restored: its manifest is missing or malformed, its checksum does not match, SQLite finds it damaged, it belongs to another vault, or it was made by a newer osr.', fix: 'Restore another backup (`osr vault backups DIR` lists them); keep the damaged one for analysis.' },
  LEASE_LOST: { class: 'recoverable', meaning: 'Another vault process took over a job whose lease this one let run out; this one stops working on it.', fix: 'Nothing: the job goes on in the vault that holds it. If it happens often, the vault is overloaded or its clock is off.' },
  ITEM_NOT_HELD: { class: 'non-recoverable', meaning: 'A job tried to change a protected item it no longer holds: another job is the item\'s active job now (or none is), so this job changes nothing of it and stops.', fix: 'Look at the item\'s jobs (`osr job list --target ITEM`): the job that holds the item decides its state. Restart this job only once the item is back in a state it starts from.' },

  // vault API, registration and providers
  UNAUTHENTICATED: { class: 'usage', meaning: 'The request carries no API token, or one the vault does not know or has revoked.', fix: 'Send `Authorization: Bearer <token>` with a valid token (`osr --token`, or OSR_TOKEN); an Owner creates tokens with `POST /api/v1/tokens`.' },
  FORBIDDEN: { class: 'usage', meaning: 'The token\'s role does not allow this call (Reader reads; Operator also runs operations; Contributor also changes configuration; Owner also manages tokens and keys).', fix: 'Use a token with a role that allows the call, or ask an Owner for one.' },
  AUTH_THROTTLED: { class: 'usage', meaning: 'Too many requests from this address failed to authenticate (a token the vault never issued, a registration key with a wrong secret) within the window; the vault answers 429 with Retry-After until the window has passed.', fix: 'Wait the seconds in `Retry-After`, then send a valid token or key; look for a client with an old token (the vault\'s log and `osr_vault_unauthenticated_requests_total` in /metrics).' },
  PAYLOAD_TOO_LARGE: { class: 'usage', meaning: 'The request body is larger than the vault accepts.', fix: 'Send a smaller body; the limit is in the message.' },
  NOT_SUPPORTED: { class: 'usage', meaning: 'The setting or operation is one osr does not offer (for example Kerberos authentication for replication), or one the fabric it concerns cannot do (its driver\'s capabilities, shown with the fabric: offline initial replication on the lab, raw disks on libvirt).', fix: 'Choose a supported value, or another fabric; the message names the fabric and the option.' },
  POLICY_INVALID: { class: 'usage', meaning: 'A replication policy breaks a rule: copy frequency 30, 300 or 900 s; retention at most 24 h; app-consistent frequency 1 to 12 h and fewer than the points kept; scheduled initial replication at most 24 h ahead; offline replication with both paths.', fix: 'Correct the field named in `details.field`.' },
  REGISTRATION_KEY_INVALID: { class: 'usage', meaning: 'The registration key is malformed, unknown, or belongs to another vault.', fix: 'Download a new key from this vault (`POST /api/v1/registration-keys`) and register with it.' },
  REGISTRATION_KEY_EXPIRED: { class: 'usage', meaning: 'The registration key is older than its 5 days of validity.', fix: 'Create a new registration key and register with it.' },
  REGISTRATION_KEY_REVOKED: { class: 'usage', meaning: 'The registration key was revoked.', fix: 'Create a new registration key and register with it.' },
  REGISTRATION_KEY_USED: { class: 'usage', meaning: 'The registration key was already exchanged for a certificate; a key registers one provider once.', fix: 'Create a new registration key for each provider.' },
  PROVIDER_VERSION_MISMATCH: { class: 'usage', meaning: 'A provider joining a fabric runs another version than the providers already registered for it; the nodes of one fabric must run the same version.', fix: 'Install the same osr version on every node of the fabric, then register again.' },
  PROVIDER_UNREACHABLE: { class: 'recoverable', meaning: 'The fabric\'s provider has not fetched or answered a command in time (its heartbeat is lost, or it is busy).', fix: 'Check that the provider runs and reaches the vault; the job goes on when it answers, or cancel it.' },
  JOB_FAILED: { class: 'non-recoverable', meaning: 'A job step failed; the job\'s error names the step and the cause.', fix: 'Read the job\'s tasks (`GET /api/v1/jobs/{id}`), correct the cause, and restart the job.' },
  WEBHOOK_REFUSED: { class: 'non-recoverable', meaning: 'The vault did not call a webhook: its address is loopback, link-local, private or otherwise not public (or its name resolves to one), or it answered with a redirect, which the vault does not follow.', fix: 'Use a public https:// address that answers itself, or have an Owner allow-list the host or network (`osr webhook allow`, `PUT /api/v1/webhook-settings`).' },
  ACTION_FAILED: { class: 'recoverable', meaning: 'A recovery plan\'s script or webhook action failed, timed out, or answered an error on every try.', fix: 'Read the action\'s output in the plan run\'s task (`osr job show ID`), fix the script or the endpoint, and restart the run: it goes on at that action.' },

  INTERNAL: { class: 'non-recoverable', meaning: 'An unexpected internal error.', fix: 'Report it with the agent log; the message holds the details.' },
} as const satisfies Record<string, ErrorDef>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Whether a text from elsewhere (a peer's answer, a file) is a code of this registry. */
export function isErrorCode(c: unknown): c is ErrorCode {
  return typeof c === 'string' && Object.hasOwn(ERROR_CODES, c);
}

export class OsrError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown> | undefined;
  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'OsrError';
    this.code = code;
    this.details = details;
  }
  get errorClass(): ErrorClass {
    return ERROR_CODES[this.code].class;
  }
  get recoverable(): boolean {
    return this.errorClass === ErrorClass.Recoverable;
  }
  get hint(): string {
    return ERROR_CODES[this.code].fix;
  }
  toJSON(): { code: ErrorCode; message: string; details?: Record<string, unknown> } {
    return this.details ? { code: this.code, message: this.message, details: this.details } : { code: this.code, message: this.message };
  }
}

export function isOsrError(e: unknown): e is OsrError {
  return e instanceof OsrError;
}

/** Maps any thrown value to an OsrError, classifying common system errors. */
export function toOsrError(e: unknown, fallback: ErrorCode = 'INTERNAL'): OsrError {
  if (e instanceof OsrError) return e;
  const err = e as NodeJS.ErrnoException | undefined;
  const message = err?.message ?? String(e);
  switch (err?.code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return new OsrError('REPLICA_DISK_FULL', message, undefined, { cause: e });
    case 'ENOMEM':
      return new OsrError('LOW_MEMORY', message, undefined, { cause: e });
    case 'ECONNREFUSED':
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ETIMEDOUT':
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ERR_STREAM_PREMATURE_CLOSE':
    case 'ERR_SOCKET_CLOSED':
      return new OsrError('NETWORK_ERROR', message, undefined, { cause: e });
    case 'EIO':
      return new OsrError('DISK_IO_ERROR', message, undefined, { cause: e });
    case 'ENOENT':
      return new OsrError('NOT_FOUND', message, undefined, { cause: e });
    case 'EADDRINUSE':
      return new OsrError('PORT_IN_USE', message, undefined, { cause: e });
    default:
      return new OsrError(fallback, message, undefined, { cause: e });
  }
}
