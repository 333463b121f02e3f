/**
 * What the pod tests need to stand in for a cluster's network on one machine: an address of a
 * pod's own (127.0.0.0/8 is all loopback on Linux, so each pod can bind the ports its manifests
 * give without clashing), and a small DNS server that answers the Service names.
 */
import { randomBytes } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { createRequire } from 'node:module';

/** The part of dns-packet used here (the package ships no types). */
interface DnsPacket {
  decode(buf: Buffer): { id: number; questions: { type: string; name: string }[] };
  encode(packet: object): Buffer;
  AUTHORITATIVE_ANSWER: number;
}
const dnsPacket = createRequire(import.meta.url)('dns-packet') as DnsPacket;

/** A random loopback address, away from 127.0.0.1 and the low subnets other tests use. */
export function podAddress(): string {
  const b = randomBytes(3);
  return `127.${10 + (b[0]! % 200)}.${b[1]!}.${1 + (b[2]! % 250)}`;
}

/**
 * A DNS server on 127.0.0.1 answering A queries from `records` (names in lower case): a known
 * name answers with its addresses (none for another type), any other name is NXDOMAIN.
 */
export async function dnsServer(records: Map<string, string[]>): Promise<{ address: string; close(): void }> {
  const socket = createSocket('udp4');
  socket.on('message', (msg, from) => {
    let query;
    try {
      query = dnsPacket.decode(msg);
    } catch {
      return;
    }
    const q = query.questions[0];
    const known = q !== undefined && records.has(q.name.toLowerCase());
    const ips = q?.type === 'A' ? (records.get(q.name.toLowerCase()) ?? []) : [];
    socket.send(
      dnsPacket.encode({
        type: 'response',
        id: query.id,
        // rcode 3 (NXDOMAIN) in the low bits of the flags.
        flags: dnsPacket.AUTHORITATIVE_ANSWER | (known ? 0 : 3),
        questions: query.questions,
        answers: ips.map((ip) => ({ type: 'A', class: 'IN', name: q!.name, ttl: 1, data: ip })),
      }),
      from.port,
      from.address,
    );
  });
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', r));
  return { address: `127.0.0.1:${socket.address().port}`, close: () => socket.close() };
}
