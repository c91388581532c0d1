/** Command-line flags of the benchmark runner: `--name value` or `--name=value`, and bare `--flag`. */

/** A mistake on the command line: reported with the usage text, exit code 2. */
export class UsageError extends Error {}

export class Flags {
  private readonly values = new Map<string, string | true>();
  private readonly used = new Set<string>();

  constructor(argv: string[]) {
    for (let i = 0; i < argv.length; i++) {
      const a = argv[i];
      if (!a.startsWith('--')) throw new UsageError(`unexpected argument "${a}" (flags look like --vms 4)`);
      const eq = a.indexOf('=');
      if (eq > 0) this.values.set(a.slice(2, eq), a.slice(eq + 1));
      else if (i + 1 < argv.length && !argv[i + 1].startsWith('--')) this.values.set(a.slice(2), argv[++i]);
      else this.values.set(a.slice(2), true);
    }
  }

  string(name: string, fallback: string): string {
    this.used.add(name);
    const v = this.values.get(name);
    if (v === true) throw new UsageError(`--${name} needs a value`);
    return v ?? fallback;
  }

  optionalString(name: string): string | undefined {
    this.used.add(name);
    const v = this.values.get(name);
    if (v === true) throw new UsageError(`--${name} needs a value`);
    return v;
  }

  number(name: string, fallback: number, check: (n: number) => boolean = (n) => n > 0): number {
    const v = this.string(name, String(fallback));
    const n = Number(v);
    if (!Number.isFinite(n) || !check(n)) throw new UsageError(`--${name} ${v} is not a valid number here`);
    return n;
  }

  bool(name: string): boolean {
    this.used.add(name);
    return this.values.get(name) === true || this.values.get(name) === 'true';
  }

  /** Throw on flags nobody asked for (typos). */
  rejectUnknown(): void {
    const unknown = [...this.values.keys()].filter((k) => !this.used.has(k));
    if (unknown.length > 0) throw new UsageError(`unknown flag${unknown.length > 1 ? 's' : ''}: ${unknown.map((k) => `--${k}`).join(', ')}`);
  }
}

/** 512M, 2G, 1.5G, 4096 (bytes); binary units. */
export function parseBytes(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?$/i.exec(text.trim());
  if (!m) throw new UsageError(`size "${text}" is not a size (examples: 512M, 2G)`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  return Math.round(Number(m[1]) * unit);
}

/** 500ms, 30s, 5m, 1h, or seconds as a bare number; returns milliseconds. */
export function parseMs(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`duration "${text}" is not a duration (examples: 500ms, 30s, 5m)`);
  return Math.round(Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h']);
}
