/**
 * The simulated cluster's name server (what CoreDNS is in a cluster), on UDP and TCP port 53 of
 * the host address. It answers from the simulation's live state on every query, with TTL 1, so
 * a pod that turns unready leaves a headless Service's answer at once.
 *
 * A name the cluster knows but that has no address now (a headless Service with no ready pod)
 * answers NOERROR with no records; a name in the cluster's domain it does not know answers
 * NXDOMAIN; a name outside it is asked of the machine's own resolver. AAAA and other
 * types of a known name answer NOERROR with no records, so a resolver asking A and AAAA together
 * (getaddrinfo) keeps the A answer.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import { Resolver } from 'node:dns/promises';
import dnsPacket from 'dns-packet';

/**
 * What a name is: unknown, known with these IPv4 addresses (possibly none), or outside the
 * cluster's domain (then the machine's own resolver answers, as CoreDNS forwards such names).
 */
export type Lookup = { known: false } | { known: true; addresses: string[] } | { outside: true };

/** The machine's resolver, for names outside the cluster (the default `forward . /etc/resolv.conf`). */
const upstream = new Resolver({ timeout: 2000, tries: 1 });

async function resolveOutside(name: string): Promise<Exclude<Lookup, { outside: true }>> {
  try {
    return { known: true, addresses: await upstream.resolve4(name) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENODATA') return { known: true, addresses: [] };
    return { known: false };
  }
}

const NXDOMAIN = 3;
const SERVFAIL = 2;

export class ClusterDns {
  private constructor(
    private readonly udp: UdpSocket,
    private readonly tcp: Server,
    private readonly sockets: Set<Socket>,
  ) {}

  static async start(host: string, lookup: (name: string) => Lookup, port = 53): Promise<ClusterDns> {
    const answer = async (query: Buffer): Promise<Buffer | undefined> => {
      let packet: dnsPacket.DecodedPacket;
      try {
        packet = dnsPacket.decode(query);
      } catch {
        return undefined;
      }
      const question = packet.questions?.[0];
      const base = {
        type: 'response' as const,
        id: packet.id ?? 0,
        questions: packet.questions ?? [],
      };
      if (!question) return dnsPacket.encode({ ...base, flags: dnsPacket.AUTHORITATIVE_ANSWER | SERVFAIL });
      const name = question.name.toLowerCase().replace(/\.$/, '');
      const asked = lookup(name);
      const found: Exclude<Lookup, { outside: true }> =
        'outside' in asked ? (question.type === 'A' ? await resolveOutside(name) : { known: true, addresses: [] }) : asked;
      // Recursion desired is echoed and available claimed: resolvers (c-ares, glibc) take the answer as final.
      const flags = dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE;
      if (!found.known) return dnsPacket.encode({ ...base, flags: flags | NXDOMAIN });
      const answers: dnsPacket.Answer[] =
        question.type === 'A'
          ? found.addresses.map((data) => ({ type: 'A' as const, name: question.name, ttl: 1, class: 'IN' as const, data }))
          : [];
      return dnsPacket.encode({ ...base, flags, answers });
    };

    const udp = createSocket('udp4');
    udp.on('message', (msg, rinfo) => {
      void answer(msg).then((reply) => {
        if (reply) udp.send(reply, rinfo.port, rinfo.address);
      });
    });
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(port, host, () => {
        udp.off('error', reject);
        resolve();
      });
    });

    const sockets = new Set<Socket>();
    const tcp = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket)).on('error', () => socket.destroy());
      let buffered = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        // DNS over TCP: each message is prefixed with its 2-byte length.
        while (buffered.length >= 2) {
          const len = buffered.readUInt16BE(0);
          if (buffered.length < 2 + len) break;
          const query = buffered.subarray(2, 2 + len);
          buffered = buffered.subarray(2 + len);
          void answer(query).then((reply) => {
            if (!reply || socket.destroyed) return;
            const head = Buffer.alloc(2);
            head.writeUInt16BE(reply.length, 0);
            socket.write(Buffer.concat([head, reply]));
          });
        }
      });
    });
    await new Promise<void>((resolve, reject) => {
      tcp.once('error', reject);
      tcp.listen(port, host, () => {
        tcp.off('error', reject);
        resolve();
      });
    }).catch((err) => {
      udp.close();
      throw err;
    });
    return new ClusterDns(udp, tcp, sockets);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.tcp.close(() => resolve()));
    await new Promise<void>((resolve) => this.udp.close(() => resolve()));
  }
}
