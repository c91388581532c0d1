/** IPv4 addresses as numbers, for the address pools and subnets fabrics report and site files name. */

/** An IPv4 address as a 32-bit number, or undefined when the text is not one. */
export function parseIpv4(ip: unknown): number | undefined {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(String(ip));
  if (!m || m.slice(1).some((x) => Number(x) > 255)) return undefined;
  return ((Number(m[1]) << 24) >>> 0) + (Number(m[2]) << 16) + (Number(m[3]) << 8) + Number(m[4]);
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** Whether an address is in a CIDR block (false when either is not IPv4). */
export function inCidr(ip: string, cidr: string): boolean {
  const [base, bits] = cidr.split('/');
  const a = parseIpv4(ip);
  const b = parseIpv4(base);
  const n = Number(bits);
  if (a === undefined || b === undefined || bits === undefined || !/^\d{1,2}$/.test(bits) || n > 32) return false;
  const mask = n === 0 ? 0 : (~0 << (32 - n)) >>> 0;
  return (a & mask) >>> 0 === (b & mask) >>> 0;
}
