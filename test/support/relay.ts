/**
 * A TCP relay on 127.0.0.1 between two agents, for cutting their connections in the
 * middle of a transfer without either process dying.
 */
import net from 'node:net';

export interface Relay {
  port: number;
  /** connections accepted so far */
  readonly accepted: number;
  /** bytes relayed towards the target so far */
  readonly bytesToTarget: number;
  /** reset every open connection (both sides see it drop); returns how many were cut */
  cut(): number;
  close(): Promise<void>;
}

export async function startRelay(targetPort: number): Promise<Relay> {
  const pairs = new Set<[net.Socket, net.Socket]>();
  let accepted = 0;
  let bytesToTarget = 0;
  const server = net.createServer((inbound) => {
    accepted++;
    const outbound = net.connect(targetPort, '127.0.0.1');
    const pair: [net.Socket, net.Socket] = [inbound, outbound];
    pairs.add(pair);
    inbound.on('data', (b: Buffer) => {
      bytesToTarget += b.length;
    });
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    const end = () => {
      pairs.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', end).on('close', end);
    outbound.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    get accepted() {
      return accepted;
    },
    get bytesToTarget() {
      return bytesToTarget;
    },
    cut() {
      const n = pairs.size;
      for (const [a, b] of [...pairs]) {
        a.resetAndDestroy();
        b.resetAndDestroy();
      }
      pairs.clear();
      return n;
    },
    async close() {
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
