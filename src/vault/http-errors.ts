/**
 * Errors as the API answers them: `{code, message, details?, jobId?}` with an HTTP status
 * chosen by the code. Whatever goes wrong in a request — a body that is not JSON, one that
 * is too large or breaks the schema, a store error — ends here as a coded answer; only an
 * unexpected error is a 500, and its details stay in the log.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ERROR_CODES, OsrError, toOsrError, type ErrorCode } from '../domain/errors.js';
import { isUniqueViolation } from '../store/rows.js';
import './context.js';

const STATUS: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  CONFIG_INVALID: 400,
  POLICY_INVALID: 400,
  REGISTRATION_KEY_INVALID: 400,
  UNAUTHENTICATED: 401,
  REGISTRATION_KEY_EXPIRED: 403,
  REGISTRATION_KEY_REVOKED: 403,
  REGISTRATION_KEY_USED: 403,
  FORBIDDEN: 403,
  AUTH_FAILED: 403,
  HOST_NOT_APPROVED: 403,
  TLS_PEER_CERT_MISSING: 401,
  TLS_PEER_CERT_UNTRUSTED: 401,
  NOT_FOUND: 404,
  POINT_NOT_FOUND: 404,
  VM_NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  INVALID_STATE: 409,
  PROVIDER_VERSION_MISMATCH: 409,
  LEASE_LOST: 409,
  ITEM_NOT_HELD: 409,
  PAYLOAD_TOO_LARGE: 413,
  AUTH_THROTTLED: 429,
  NOT_SUPPORTED: 422,
  STORE_UNAVAILABLE: 503,
  VAULT_STANDBY: 503,
  VAULT_STALE: 409,
  PROVIDER_UNREACHABLE: 503,
};

export function statusFor(code: ErrorCode): number {
  return STATUS[code] ?? (ERROR_CODES[code].class === 'usage' ? 400 : 500);
}

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
  jobId?: string;
}

/** Fastify's own errors (parsing, validation, limits) and everything thrown, as an OsrError. */
export function classify(err: FastifyError | Error): OsrError {
  if (err instanceof OsrError) return err;
  const f = err as FastifyError & { validation?: { instancePath?: string; message?: string; params?: unknown }[]; validationContext?: string };
  if (f.validation) {
    const first = f.validation[0];
    const where = `${f.validationContext ?? 'body'}${first?.instancePath ?? ''}`;
    return new OsrError('INVALID_ARGUMENT', `${where} ${first?.message ?? 'is invalid'}`, { field: where, issues: f.validation.slice(0, 10).map((v) => ({ path: v.instancePath, message: v.message, params: v.params })) });
  }
  switch (f.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new OsrError('PAYLOAD_TOO_LARGE', f.message);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_BAD_URL':
    case 'FST_ERR_ASYNC_CONSTRAINT':
      return new OsrError('INVALID_ARGUMENT', f.message);
  }
  if (isUniqueViolation(err)) return new OsrError('ALREADY_EXISTS', 'an object with that name or id already exists');
  if (isStoreUnreachable(err)) return new OsrError('STORE_UNAVAILABLE', `the vault's database is not reachable: ${err.message}`);
  if (err instanceof SyntaxError || (f.statusCode !== undefined && f.statusCode >= 400 && f.statusCode < 500)) {
    return new OsrError(f.statusCode === 413 ? 'PAYLOAD_TOO_LARGE' : 'INVALID_ARGUMENT', `the request is malformed: ${err.message}`);
  }
  return toOsrError(err);
}

/** SQLite busy or locked past its timeout, or PostgreSQL's connection refused, lost or shutting down. */
function isStoreUnreachable(e: unknown): boolean {
  const code = String((e as { code?: unknown }).code ?? '');
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED' || code === 'ECONNREFUSED' || code === 'ECONNRESET' || code.startsWith('08') || code.startsWith('57P') || /Connection terminated/.test((e as Error).message ?? '');
}

export function sendError(reply: FastifyReply, err: OsrError, jobId?: string): FastifyReply {
  const body: ErrorBody = { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}), ...(jobId ? { jobId } : {}) };
  return reply.status(statusFor(err.code)).type('application/json').send(body);
}

export function errorHandler(err: FastifyError, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  const e = classify(err);
  request.errorCode = e.code;
  const status = statusFor(e.code);
  if (status >= 500) request.log.error({ err, code: e.code }, 'request failed');
  else request.log.info({ code: e.code, message: e.message }, 'request refused');
  // an unexpected error's message may hold internals: the log has them, the answer does not
  const shown = e.code === 'INTERNAL' ? new OsrError('INTERNAL', 'an unexpected error occurred; the vault log has the details') : e;
  return sendError(reply, shown);
}
