/**
 * The simulated cluster's network: a Linux bridge in the root namespace with a private /24 that
 * clashes with nothing on the machine, the host's address `.1` on it (the simulation's name
 * server, kube-proxy and forwarders to outside backends listen there), one network namespace per
 * pod joined to the bridge by a veth pair, and ClusterIPs as extra /32 addresses on the bridge.
 *
 * Every name carries the prefix `evs` and the simulation's 4-hex id; the owner's pid is recorded
 * under the state directory, so a later start removes what a crashed run left behind without
 * touching a simulation that is still running in another process.
 */
import { execFile as execFileCb, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';

const execFile = promisify(execFileCb);

export const NAME_PREFIX = 'evs';
/** Where each simulation keeps its files (pod directories, logs) and its owner's pid. */
export const STATE_ROOT = '/tmp/evolith-cluster-sim';
const NETNS_ETC = '/etc/netns';

/** Runs `ip` with arguments; the error names the command and what it printed. */
export async function ip(...args: string[]): Promise<string> {
  try {
    const { stdout } = await execFile('ip', args, { encoding: 'utf8' });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

/**
 * Why the simulation cannot run here, or undefined when it can: it needs root, the `ip` tool and
 * network namespaces (a container without CAP_SYS_ADMIN / CAP_NET_ADMIN has none).
 */
export async function networkUnavailable(): Promise<string | undefined> {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'the cluster simulation needs root (ip netns, bridges)';
  const probe = `${NAME_PREFIX}probe${randomBytes(3).toString('hex')}`;
  try {
    await ip('netns', 'add', probe);
  } catch (err) {
    return `ip netns does not work here: ${(err as Error).message}`;
  }
  try {
    await execFile('ip', ['netns', 'exec', probe, 'ip', 'link', 'set', 'lo', 'up']);
  } catch (err) {
    return `ip netns exec does not work here: ${(err as Error).message}`;
  } finally {
    await ip('netns', 'del', probe).catch(() => undefined);
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The simulation id a name belongs to (`evs` + 4 hex), or undefined for names that are not ours. */
function idOf(name: string): string | undefined {
  const m = /^evs([0-9a-f]{4})/.exec(name);
  return m?.[1];
}

function ownerAlive(id: string): boolean {
  try {
    const pid = Number(readFileSync(`${STATE_ROOT}/${id}/owner.pid`, 'utf8'));
    return Number.isInteger(pid) && pid > 0 && pidAlive(pid);
  } catch {
    return false;
  }
}

/** Kills every process still running in a network namespace (a crashed run's pods). */
function killNamespaceProcesses(netns: string): void {
  try {
    const out = execFileSync('ip', ['netns', 'pids', netns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    for (const pid of out.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // already gone
      }
    }
  } catch {
    // the namespace is already gone
  }
}

/**
 * Removes what simulations whose owner process no longer runs left behind: their pods' processes,
 * network namespaces, links, `/etc/netns` entries and state directories. Returns what it removed.
 */
export function removeLeftovers(): string[] {
  const removed: string[] = [];
  const dead = (name: string): boolean => {
    const id = idOf(name);
    return id !== undefined && !ownerAlive(id);
  };
  let namespaces: string[] = [];
  try {
    namespaces = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter((n) => n.startsWith(NAME_PREFIX));
  } catch {
    namespaces = [];
  }
  for (const ns of namespaces.filter(dead)) {
    killNamespaceProcesses(ns);
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      removed.push(`netns ${ns}`);
    } catch {
      // raced with its owner's own cleanup
    }
  }
  try {
    const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' })
      .split('\n')
      .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
      .filter((n): n is string => !!n && n.startsWith(NAME_PREFIX));
    for (const link of links.filter(dead)) {
      try {
        execFileSync('ip', ['link', 'del', link], { stdio: 'ignore' });
        removed.push(`link ${link}`);
      } catch {
        // a veth goes with its peer's namespace
      }
    }
  } catch {
    // no links to look at
  }
  for (const dir of safeReaddir(NETNS_ETC).filter((n) => n.startsWith(NAME_PREFIX) && dead(n))) {
    rmSync(`${NETNS_ETC}/${dir}`, { recursive: true, force: true });
    removed.push(`${NETNS_ETC}/${dir}`);
  }
  for (const id of safeReaddir(STATE_ROOT).filter((n) => /^[0-9a-f]{4}$/.test(n) && !ownerAlive(n))) {
    rmSync(`${STATE_ROOT}/${id}`, { recursive: true, force: true });
    removed.push(`${STATE_ROOT}/${id}`);
  }
  return removed;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Every IPv4 network already routed or addressed on the machine, as [network, prefix length]. */
async function usedNetworks(): Promise<[number, number][]> {
  const out: [number, number][] = [];
  const text = (await ip('-4', 'route', 'show', 'table', 'all')) + '\n' + (await ip('-4', '-o', 'addr', 'show'));
  for (const m of text.matchAll(/(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?/g)) {
    out.push([toInt(m[1]!), m[2] === undefined ? 32 : Number(m[2])]);
  }
  return out;
}

export function toInt(addr: string): number {
  return addr.split('.').reduce((n, part) => (n << 8) + Number(part), 0) >>> 0;
}

export function toAddr(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function overlaps(a: number, aLen: number, b: number, bLen: number): boolean {
  const len = Math.min(aLen, bLen);
  if (len === 0) return true;
  const mask = len === 32 ? 0xffffffff : (~((1 << (32 - len)) - 1)) >>> 0;
  return ((a & mask) >>> 0) === ((b & mask) >>> 0);
}

/** One pod's place on the network. */
export interface PodNetwork {
  netns: string;
  ip: string;
  hostVeth: string;
}

/**
 * The bridge and the namespaces on it. Pods take addresses .2–.199 of the /24, ClusterIPs
 * .200–.254.
 */
export class ClusterNetwork {
  readonly id: string;
  readonly bridge: string;
  readonly hostAddress: string;
  readonly stateDir: string;
  readonly subnet: string;
  private readonly base: number;
  private nextPod = 2;
  private nextClusterIp = 200;
  private counter = 0;
  private readonly freedPodIps: number[] = [];
  private readonly namespaces = new Set<string>();
  private readonly veths = new Set<string>();
  private readonly clusterIps = new Set<string>();
  private stopped = false;

  private constructor(id: string, base: number) {
    this.id = id;
    this.base = base;
    this.bridge = `${NAME_PREFIX}${id}br`;
    this.hostAddress = toAddr(base + 1);
    this.subnet = `${toAddr(base)}/24`;
    this.stateDir = `${STATE_ROOT}/${id}`;
  }

  /** Creates the bridge on a free /24 (10.64.0.0–10.127.255.0, picked at random, checked against the machine's routes). */
  static async create(): Promise<ClusterNetwork> {
    removeLeftovers();
    let id = '';
    for (;;) {
      id = randomBytes(2).toString('hex');
      // Again on every attempt: another simulation's stop removes the root when it finds it empty.
      mkdirSync(STATE_ROOT, { recursive: true, mode: 0o755 });
      try {
        mkdirSync(`${STATE_ROOT}/${id}`, { mode: 0o755 });
        break;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    writeFileSync(`${STATE_ROOT}/${id}/owner.pid`, String(process.pid));
    for (let attempt = 0; ; attempt++) {
      const used = await usedNetworks();
      let base = 0;
      for (let i = 0; i < 200; i++) {
        const candidate = toInt(`10.${64 + Math.floor(Math.random() * 64)}.${Math.floor(Math.random() * 256)}.0`);
        if (!used.some(([n, len]) => len > 0 && overlaps(candidate, 24, n, len))) {
          base = candidate;
          break;
        }
      }
      if (base === 0) throw new Error('no free /24 in 10.64.0.0/10 for the simulated cluster');
      const net = new ClusterNetwork(id, base);
      await net.createBridge();
      // Another simulation starting at the same moment may have picked the same /24: then both
      // routes exist, and the one that sees it gives its bridge up and picks again.
      const routes = (await ip('-4', 'route', 'show', net.subnet)).trim().split('\n').filter(Boolean);
      if (routes.length === 1 || attempt >= 5) return net;
      await ip('link', 'del', net.bridge).catch(() => undefined);
    }
  }

  private async createBridge(): Promise<void> {
    try {
      await ip('link', 'add', this.bridge, 'type', 'bridge');
      // A fixed address: without one a bridge takes the lowest MAC of its ports, so removing a pod
      // would change it and every other pod's ARP entry for the host address and ClusterIPs would
      // point nowhere until it expires (connections hang in SYN-SENT meanwhile).
      const mac = randomBytes(6);
      mac[0] = (mac[0]! & 0xfe) | 0x02; // unicast, locally administered
      await ip('link', 'set', this.bridge, 'address', [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':'));
      await ip('addr', 'add', `${this.hostAddress}/24`, 'dev', this.bridge);
      await ip('link', 'set', this.bridge, 'up');
    } catch (err) {
      this.destroySync();
      throw err;
    }
  }

  /** Allocates a ClusterIP and adds it to the bridge. */
  async addClusterIp(): Promise<string> {
    if (this.nextClusterIp > 254) throw new Error('the simulated cluster ran out of ClusterIPs (55)');
    const addr = toAddr(this.base + this.nextClusterIp++);
    await ip('addr', 'add', `${addr}/32`, 'dev', this.bridge);
    this.clusterIps.add(addr);
    return addr;
  }

  /**
   * A network namespace for a pod with its own address on the bridge, loopback up, a default
   * route via the host address, and the `/etc/netns` files `ip netns exec` mounts over
   * `/etc/resolv.conf` and `/etc/hosts`.
   */
  async addPod(podName: string, dns: { searches: string[] }): Promise<PodNetwork> {
    const n = this.counter++;
    // Fresh addresses first: a reused one may still sit in neighbours' ARP caches with the old pod's MAC.
    const offset = this.nextPod <= 199 ? this.nextPod++ : (this.freedPodIps.shift() ?? this.nextPod++);
    if (offset > 199) throw new Error('the simulated cluster ran out of pod addresses (198)');
    const podIp = toAddr(this.base + offset);
    const netns = `${NAME_PREFIX}${this.id}-${n}-${podName}`.slice(0, 200);
    const hostVeth = `${NAME_PREFIX}${this.id}v${n}`;
    const peer = `${NAME_PREFIX}${this.id}p${n}`;
    const etc = `${NETNS_ETC}/${netns}`;
    mkdirSync(etc, { recursive: true });
    writeFileSync(
      `${etc}/resolv.conf`,
      `nameserver ${this.hostAddress}\nsearch ${dns.searches.join(' ')}\noptions ndots:5\n`,
    );
    writeFileSync(`${etc}/hosts`, `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n${podIp}\t${podName}\n`);
    this.namespaces.add(netns);
    await ip('netns', 'add', netns);
    this.veths.add(hostVeth);
    await ip('link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', peer);
    await ip('link', 'set', hostVeth, 'master', this.bridge);
    await ip('link', 'set', hostVeth, 'up');
    await ip('link', 'set', peer, 'netns', netns);
    const inNs = (...args: string[]) => ip('-n', netns, ...args);
    await inNs('link', 'set', peer, 'name', 'eth0');
    await inNs('addr', 'add', `${podIp}/24`, 'dev', 'eth0');
    await inNs('link', 'set', 'eth0', 'up');
    await inNs('link', 'set', 'lo', 'up');
    await inNs('route', 'add', 'default', 'via', this.hostAddress);
    return { netns, ip: podIp, hostVeth };
  }

  /** Removes a pod's namespace (its veth goes with it) and its `/etc/netns` files. */
  async removePod(pod: PodNetwork): Promise<void> {
    killNamespaceProcesses(pod.netns);
    await ip('netns', 'del', pod.netns).catch(() => undefined);
    // Deleted explicitly: the kernel removes a dead namespace's veth pairs only some time later.
    await ip('link', 'del', pod.hostVeth).catch(() => undefined);
    this.veths.delete(pod.hostVeth);
    rmSync(`${NETNS_ETC}/${pod.netns}`, { recursive: true, force: true });
    await ip('neigh', 'flush', 'to', pod.ip, 'dev', this.bridge).catch(() => undefined);
    this.namespaces.delete(pod.netns);
    this.freedPodIps.push(toInt(pod.ip) - this.base);
  }

  /**
   * Removes everything: every pod namespace (killing what still runs there), the bridge (its
   * ClusterIPs go with it), `/etc/netns` entries, the state directory. Synchronous, so it also
   * runs from a process `exit` handler.
   */
  destroySync(): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const ns of this.namespaces) {
      killNamespaceProcesses(ns);
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
      } catch {
        // already gone
      }
      rmSync(`${NETNS_ETC}/${ns}`, { recursive: true, force: true });
    }
    this.namespaces.clear();
    for (const veth of this.veths) {
      try {
        execFileSync('ip', ['link', 'del', veth], { stdio: 'ignore' });
      } catch {
        // went with its namespace
      }
    }
    this.veths.clear();
    try {
      execFileSync('ip', ['link', 'del', this.bridge], { stdio: 'ignore' });
    } catch {
      // never created
    }
    rmSync(this.stateDir, { recursive: true, force: true });
    try {
      // The shared root goes too when no other simulation uses it.
      rmdirSync(STATE_ROOT);
    } catch {
      // not empty, or already gone
    }
  }
}
