/**
 * Calling a webhook (an alert, a recovery plan's webhook action) without letting its URL
 * reach what the vault can reach and the caller cannot: the vault's own loopback services,
 * a cloud's metadata address, the private network it sits on.
 *
 * 1. The URL's host is resolved once, and every address it resolves to is checked: an
 *    address that is not public (loopback, unspecified, link-local, private, unique-local,
 *    shared, multicast, reserved; IPv4-mapped IPv6 addresses are checked as the IPv4
 *    address they carry) refuses the call with WEBHOOK_REFUSED, unless an Owner
 *    allow-listed the host name or a network holding the address (`webhooks` setting).
 * 2. The connection goes to the address that was checked (the request's `lookup` answers
 *    it), so a name that resolves differently a moment later (DNS rebinding) changes
 *    nothing. TLS still checks the certificate against the host name.
 * 3. Redirects are not followed: a 3xx answer is a refusal.
 * 4. At most WEBHOOK_RESPONSE_LIMIT bytes of the answer are read and kept.
 */
import dns from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { OsrError } from '../domain/errors.js';

/** The bytes of a webhook's answer the vault reads and keeps (the rest is dropped). */
export const WEBHOOK_RESPONSE_LIMIT = 4096;

/** The `webhooks` setting: what an Owner allows webhooks to reach although it is not public. */
export interface WebhookSettings {
  /** host names (exact), addresses, or networks in CIDR notation (10.0.0.0/8, fd00::/8) */
  allow: string[];
}

export const DEFAULT_WEBHOOK_SETTINGS: WebhookSettings = { allow: [] };

const NOT_PUBLIC: [string, number, 'ipv4' | 'ipv6', string][] = [
  ['0.0.0.0', 8, 'ipv4', 'unspecified ("this network")'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'shared (carrier-grade NAT)'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.0.0.0', 24, 'ipv4', 'reserved (IETF protocol assignments)'],
  ['192.0.2.0', 24, 'ipv4', 'reserved (documentation)'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['198.18.0.0', 15, 'ipv4', 'reserved (benchmarking)'],
  ['198.51.100.0', 24, 'ipv4', 'reserved (documentation)'],
  ['203.0.113.0', 24, 'ipv4', 'reserved (documentation)'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved (including broadcast)'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['::1', 128, 'ipv6', 'loopback'],
  ['::', 96, 'ipv6', 'reserved (IPv4-compatible)'],
  ['64:ff9b::', 96, 'ipv6', 'NAT64'],
  ['100::', 64, 'ipv6', 'reserved (discard)'],
  ['2001:db8::', 32, 'ipv6', 'reserved (documentation)'],
  ['fc00::', 7, 'ipv6', 'unique-local'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['fec0::', 10, 'ipv6', 'site-local'],
  ['ff00::', 8, 'ipv6', 'multicast'],
];

/** The eight 16-bit groups of an IPv6 address, or undefined when it is not one. */
function ipv6Groups(address: string): number[] | undefined {
  let s = address.replace(/%.*$/, '');
  if (!net.isIPv6(s)) return undefined;
  let tail: number[] = [];
  const dq = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (dq) {
    const [a, b, c, d] = dq.slice(1).map(Number) as [number, number, number, number];
    tail = [(a << 8) | b, (c << 8) | d];
    s = s.slice(0, -dq[0].length);
    if (s.endsWith(':') && !s.endsWith('::')) s = s.slice(0, -1);
  }
  const hex = (part: string) => (part === '' ? [] : part.split(':').map((x) => parseInt(x, 16)));
  const [head, rest] = s.split('::') as [string, string | undefined];
  if (rest === undefined) return [...hex(head), ...tail];
  const h = hex(head);
  const r = [...hex(rest), ...tail];
  return [...h, ...new Array<number>(8 - h.length - r.length).fill(0), ...r];
}

/** The IPv4 address an IPv4-mapped IPv6 address (::ffff:a.b.c.d) carries, or the address itself. */
export function unmapAddress(address: string): string {
  const a = address.toLowerCase().replace(/^\[|\]$/g, '');
  const g = ipv6Groups(a);
  if (!g || g.length !== 8 || g.slice(0, 5).some((x) => x !== 0) || g[5] !== 0xffff) return a.replace(/%.*$/, '');
  return `${g[6]! >> 8}.${g[6]! & 255}.${g[7]! >> 8}.${g[7]! & 255}`;
}

/** Why an address is not public (loopback, private, …), or undefined when it is. */
export function nonPublicReason(address: string): string | undefined {
  const a = unmapAddress(address);
  const family = net.isIPv4(a) ? 'ipv4' : net.isIPv6(a) ? 'ipv6' : undefined;
  if (!family) return 'not an IP address';
  for (const [net0, prefix, fam, why] of NOT_PUBLIC) {
    if (fam !== family) continue;
    const list = new net.BlockList();
    list.addSubnet(net0, prefix, fam);
    if (list.check(a, fam)) return why;
  }
  return undefined;
}

/** Checks the allow-list's entries: host names, addresses, or networks (CIDR). */
export function validateAllowList(entries: string[]): string[] {
  const out: string[] = [];
  for (const raw of entries) {
    const e = raw.trim().toLowerCase();
    const cidr = /^(.+)\/(\d{1,3})$/.exec(e);
    if (cidr) {
      const family = net.isIPv4(cidr[1]!) ? 4 : net.isIPv6(cidr[1]!) ? 6 : 0;
      const bits = Number(cidr[2]);
      if (family === 0 || bits > (family === 4 ? 32 : 128)) throw new OsrError('INVALID_ARGUMENT', `"${raw}" is not a network such as 10.0.0.0/8 or fd00::/8`, { field: 'allow' });
    } else if (net.isIP(e.replace(/^\[|\]$/g, '')) === 0 && !/^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)*$/.test(e)) {
      throw new OsrError('INVALID_ARGUMENT', `"${raw}" is neither a host name, an address nor a network`, { field: 'allow' });
    }
    out.push(e.replace(/^\[|\]$/g, ''));
  }
  return [...new Set(out)];
}

function allowedAddress(address: string, allow: string[]): boolean {
  const a = unmapAddress(address);
  const family = net.isIPv4(a) ? 'ipv4' : 'ipv6';
  for (const e of allow) {
    const cidr = /^(.+)\/(\d{1,3})$/.exec(e);
    const base = cidr ? cidr[1]! : unmapAddress(e);
    const f = net.isIPv4(base) ? 'ipv4' : net.isIPv6(base) ? 'ipv6' : undefined;
    if (!f) continue;
    const list = new net.BlockList();
    if (cidr) list.addSubnet(base, Number(cidr[2]), f);
    else list.addAddress(base, f);
    if (list.check(a, family)) return true;
  }
  return false;
}

/**
 * The addresses a webhook may be called at: every address of its host, each public or
 * allow-listed. Throws WEBHOOK_REFUSED otherwise.
 */
export async function checkWebhookTarget(url: URL, allow: string[]): Promise<{ address: string; family: 4 | 6 }[]> {
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new OsrError('WEBHOOK_REFUSED', `webhook ${url.origin} is not http:// or https://`);
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  const hostAllowed = allow.includes(host);
  let addresses: { address: string; family: number }[];
  if (net.isIP(host) !== 0) addresses = [{ address: host, family: net.isIP(host) }];
  else {
    try {
      addresses = await dns.lookup(host, { all: true, verbatim: true });
    } catch (e) {
      throw new OsrError('ACTION_FAILED', `webhook host ${host} cannot be resolved: ${(e as Error).message}`, { host }, { cause: e });
    }
  }
  if (addresses.length === 0) throw new OsrError('ACTION_FAILED', `webhook host ${host} resolves to no address`, { host });
  if (!hostAllowed) {
    for (const a of addresses) {
      const why = nonPublicReason(a.address);
      if (why !== undefined && !allowedAddress(a.address, allow)) {
        throw new OsrError('WEBHOOK_REFUSED', `webhook ${url.origin} is refused: ${host === a.address ? 'its address' : `${host} resolves to ${a.address}, which`} is ${why}; an Owner may allow-list it (osr webhook allow)`, { host, address: a.address, reason: why });
      }
    }
  }
  return addresses.map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));
}

export interface WebhookCall {
  url: string;
  body: unknown;
  allow: string[];
  signal: AbortSignal;
  /** bytes of the answer kept (default WEBHOOK_RESPONSE_LIMIT) */
  responseLimit?: number;
}

/** POST the body as JSON; answers the status and the start of the answer's text. */
export async function postWebhook(c: WebhookCall): Promise<{ status: number; text: string; truncated: boolean }> {
  const url = new URL(c.url);
  const [target] = await checkWebhookTarget(url, c.allow);
  const limit = c.responseLimit ?? WEBHOOK_RESPONSE_LIMIT;
  const payload = Buffer.from(JSON.stringify(c.body));
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': payload.length, 'user-agent': 'osr-vault' },
        // connect to the address that was checked, whatever the name resolves to now
        lookup: ((_host: string, opts: { all?: boolean }, cb: (...a: unknown[]) => void) => {
          if (opts?.all) cb(null, [{ address: target!.address, family: target!.family }]);
          else cb(null, target!.address, target!.family);
        }) as unknown as net.LookupFunction,
        signal: c.signal,
        agent: false,
      },
      (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 300 && status < 400) {
          res.destroy();
          reject(new OsrError('WEBHOOK_REFUSED', `webhook ${url.origin} answered ${status}, a redirect${res.headers.location ? ` to ${String(res.headers.location).slice(0, 200)}` : ''}; the vault does not follow redirects: use the final address`, { status }));
          return;
        }
        const parts: Buffer[] = [];
        let got = 0;
        let truncated = false;
        res.on('data', (b: Buffer) => {
          if (got < limit) parts.push(b.subarray(0, limit - got));
          got += b.length;
          if (got > limit) {
            truncated = true;
            res.destroy();
            finish();
          }
        });
        res.on('end', finish);
        res.on('error', (e) => (truncated ? undefined : reject(e)));
        let done = false;
        function finish() {
          if (done) return;
          done = true;
          resolve({ status, text: Buffer.concat(parts).toString('utf8'), truncated });
        }
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
