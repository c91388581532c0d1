/**
 * The provider's loops: heartbeats at the interval the vault asks for (each with the
 * fabric's capabilities, which the vault keeps on the fabric), inventory when it
 * changes, and commands fetched by long-poll and handed to handlers by kind, one run per
 * command id however often it is delivered (a redelivery of a command still running is
 * ignored; of one finished, its result is sent again). A command's body is checked
 * against its kind (src/domain/commands.ts) before its handler sees it: a malformed one is
 * answered INVALID_ARGUMENT, a kind without a handler NOT_SUPPORTED. A handler reports
 * progress and returns a result or throws; the vault hears both. The provider's
 * certificate is renewed with the heartbeats, two thirds into its life.
 */
import { EventEmitter } from 'node:events';
import type { FabricCapabilities } from '../domain/capabilities.js';
import { systemClock, type Clock } from '../domain/clock.js';
import { checkCommandBody, isCommandKind, type CommandKind, type CommandProgress, type CommandResult } from '../domain/commands.js';
import { toOsrError } from '../domain/errors.js';
import type { InventoryDocument } from '../domain/resources.js';
import { ProviderChannel, type VaultCommand, type WireCommand } from './channel.js';

/** The handler of one kind of command: its body checked, its progress reports and its answer the kind's (src/domain/commands.ts). */
export type CommandHandler<K extends CommandKind> = (cmd: VaultCommand<K>, progress: (p: CommandProgress<K>) => Promise<void>) => Promise<CommandResult<K>>;

/** The commands a provider answers, by kind; one without a handler is answered NOT_SUPPORTED. */
export type CommandHandlers = { [K in CommandKind]?: CommandHandler<K> };

export interface ProviderRuntimeOptions {
  handlers: CommandHandlers;
  /** the inventory to report (called at start and by syncInventory()) */
  inventory: () => Promise<InventoryDocument> | InventoryDocument;
  inventoryScope?: 'all' | string[];
  /** what the fabric can do, sent with every heartbeat (the vault refuses what the fabric cannot do) */
  capabilities?: FabricCapabilities;
  /** long-poll wait (default 20 s) */
  pollSeconds?: number;
  /** commands run at once (default 32) */
  concurrency?: number;
  clock?: Clock;
  log?: { warn(o: object, msg?: string): void };
}

const notSupported = (kind: string) => Object.assign(new Error(`this provider does not handle ${kind}`), { code: 'NOT_SUPPORTED' });

type Outcome = { result?: unknown; error?: { code: string; message: string; details?: Record<string, unknown> } };

export class ProviderRuntime extends EventEmitter {
  private readonly stopper = new AbortController();
  private readonly running = new Map<string, Promise<void>>();
  private readonly finished = new Map<string, Outcome>();
  private loops: Promise<void>[] = [];
  private readonly clock: Clock;
  heartbeatMs: number;

  constructor(
    readonly channel: ProviderChannel,
    private readonly o: ProviderRuntimeOptions,
  ) {
    super();
    this.clock = o.clock ?? systemClock;
    this.heartbeatMs = channel.registration.heartbeatIntervalSeconds * 1000;
  }

  async start(): Promise<void> {
    await this.channel.heartbeat(this.heartbeatBody());
    await this.renewCertificate();
    await this.syncInventory();
    this.loops = [this.heartbeats(), this.commandLoop()];
  }

  async syncInventory(): Promise<number> {
    const r = await this.channel.putInventory(await this.o.inventory(), this.o.inventoryScope ?? 'all');
    return r.changes;
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    await Promise.allSettled(this.loops);
    await Promise.allSettled([...this.running.values()]);
    this.channel.close();
  }

  private async heartbeats(): Promise<void> {
    const signal = this.stopper.signal;
    while (!signal.aborted) {
      await this.clock.sleep(this.heartbeatMs, signal);
      if (signal.aborted) break;
      try {
        const r = await this.channel.heartbeat(this.heartbeatBody());
        this.heartbeatMs = r.heartbeatIntervalSeconds * 1000;
      } catch (e) {
        this.o.log?.warn({ err: toOsrError(e).toJSON() }, 'heartbeat failed');
      }
      await this.renewCertificate();
    }
  }

  private heartbeatBody(): { capabilities?: FabricCapabilities } {
    return this.o.capabilities ? { capabilities: this.o.capabilities } : {};
  }

  /** The provider's certificate, renewed two thirds into its life (a failure is tried again at the next heartbeat). */
  private async renewCertificate(): Promise<void> {
    try {
      if (await this.channel.renewIfDue(this.clock.now())) this.emit('certificate-renewed', this.channel.registration.notAfter);
    } catch (e) {
      this.o.log?.warn({ err: toOsrError(e).toJSON() }, 'renewing the provider\'s certificate failed; trying again at the next heartbeat');
    }
  }

  private async commandLoop(): Promise<void> {
    const signal = this.stopper.signal;
    const concurrency = this.o.concurrency ?? 32;
    while (!signal.aborted) {
      if (this.running.size >= concurrency) {
        await Promise.race(this.running.values());
        continue;
      }
      let cmds: WireCommand[];
      try {
        cmds = await this.channel.commands(this.o.pollSeconds ?? 20, signal);
      } catch (e) {
        if (signal.aborted) break;
        this.o.log?.warn({ err: toOsrError(e).toJSON() }, 'fetching commands failed; trying again');
        await this.clock.sleep(1000, signal);
        continue;
      }
      for (const cmd of cmds) this.dispatch(cmd);
    }
  }

  private dispatch(cmd: WireCommand): void {
    if (this.running.has(cmd.id)) return;
    const done = this.finished.get(cmd.id);
    if (done) {
      void this.report(cmd.id, done);
      return;
    }
    this.emit('command', cmd);
    const run = (async () => {
      let outcome: Outcome;
      try {
        if (!isCommandKind(cmd.kind)) throw notSupported(cmd.kind);
        outcome = { result: (await this.handle(cmd.kind, cmd)) ?? null };
      } catch (e) {
        const err = toOsrError(e);
        const code = (e as { code?: string }).code === 'NOT_SUPPORTED' ? 'NOT_SUPPORTED' : err.code;
        outcome = { error: { code, message: err.message, ...(err.details ? { details: err.details } : {}) } };
      }
      this.finished.set(cmd.id, outcome);
      await this.report(cmd.id, outcome);
    })().finally(() => this.running.delete(cmd.id));
    this.running.set(cmd.id, run);
  }

  /** Hand a command to its kind's handler, its body checked first (INVALID_ARGUMENT naming the field that is wrong). */
  private async handle<K extends CommandKind>(kind: K, cmd: WireCommand): Promise<CommandResult<K>> {
    const handler: CommandHandler<K> | undefined = this.o.handlers[kind];
    if (!handler) throw notSupported(kind);
    const checked: VaultCommand<K> = { ...cmd, kind, body: checkCommandBody(kind, cmd.body) };
    return handler(checked, (p) => this.channel.progress(cmd.id, p));
  }

  private async report(id: string, outcome: Outcome): Promise<void> {
    for (let attempt = 0; !this.stopper.signal.aborted; attempt++) {
      try {
        await this.channel.result(id, outcome);
        return;
      } catch (e) {
        this.o.log?.warn({ command: id, err: toOsrError(e).toJSON() }, 'reporting a command result failed; trying again');
        await this.clock.sleep(Math.min(1000 * 2 ** attempt, 30_000), this.stopper.signal);
      }
    }
  }
}
