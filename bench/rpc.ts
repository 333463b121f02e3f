/**
 * bench:rpc — one unary call with a ~1 KB payload (an order echoed back), four ways:
 *
 *   evolith-tcp    Evolith's TCP RPC as a deployment runs it: both ends hold internal credentials
 *                  (a handshake per connection), each call made by a service acting as itself;
 *                  TcpTransport → RpcServer → kernel host (zod input and output validation)
 *   grpc-js        @grpc/grpc-js unary, service defined in plain JS with custom (de)serialisers (no .proto)
 *   moleculer      Moleculer 0.14, TCP transporter (UDP discovery off, static URL), one broker per process
 *   evolith-http   Evolith's HTTP interop transport: HttpTransport (fetch) → fastify rpcHttpPlugin → kernel host
 *
 * plus a floor that is no contender: raw node:net, the same ~1 KB frame written to a socket and
 * echoed back byte for byte (no codec, no framing work on the server, no handler) — what a round
 * trip costs on this machine before any RPC library does anything;
 *
 * and, reported as their cost over evolith-tcp: evolith-noauth, the same RPC without credentials
 * (anonymous calls on a listener that holds none) — what authentication costs; and evolith-fwd,
 * through the forwarder (TcpTransport → Forwarder → the same RpcServer process as evolith-tcp;
 * the forwarder runs in a process of its own, proves itself to both sides, routes by header and
 * relays the payload bytes without decoding them).
 *
 * Each server runs in its own child process (so it does not share an event loop with the load
 * generator); every client runs in this process. Everything goes over 127.0.0.1. Each client
 * sends with a 10 s deadline (grpc `deadline`, Moleculer `timeout`, Evolith `CallMeta.deadline`);
 * no contender gets any other tuning: library defaults throughout, except the codec, which is
 * the same msgpack library (msgpackr) for all three binary contenders unless told otherwise.
 *
 * Closed loop: N workers each call, await, call again, for a fixed duration; at 1 and 64 calls
 * in flight. Rounds are interleaved (the contender order rotates every round) so machine noise
 * hits all alike. Reported: the median over rounds of requests/s, p50 and p99 latency.
 * Targets: Evolith TCP ≥ 2× grpc-js and ≥ 1.5× Moleculer in requests/s, with a lower p99 than
 * both, and a p50 of at most 0.1 ms at 1 call in flight.
 *
 * Env: BENCH_DURATION (s per run, default 3), BENCH_ROUNDS (3), BENCH_WARMUP (s, 1),
 *      BENCH_GRPC_CODEC (msgpackr | json; default msgpackr),
 *      BENCH_MOLECULER_SERIALIZER (msgpackr | JSON; default msgpackr — Moleculer's own MsgPack
 *      serializer needs msgpack5, which is not installed).
 */
import { spawn } from 'node:child_process';
import { connect } from 'node:net';
import { readFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import Moleculer from 'moleculer';
import { pack } from 'msgpackr';
import pino from 'pino';
import { newTrace } from '../src/kernel/trace.js';
import { DeploymentAuthority } from '../src/auth/credentials.js';
import { InternalPlane } from '../src/auth/internal-plane.js';
import { HttpTransport } from '../src/rpc/http-transport.js';
import { TcpTransport } from '../src/rpc/tcp-transport.js';
import { benchContract, grpcDefinition, moleculerSerializer, payload, type Codec, type MoleculerSerializer } from './support/rpc-echo.js';
import { ChildProcesses } from './support/children.js';
import { median, printTable } from './support/stats.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DURATION = Number(process.env.BENCH_DURATION ?? 3);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 1);
const GRPC_CODEC = (process.env.BENCH_GRPC_CODEC ?? 'msgpackr') as Codec;
const MOLECULER_SERIALIZER = (process.env.BENCH_MOLECULER_SERIALIZER ?? 'msgpackr') as MoleculerSerializer;
const IN_FLIGHT = [1, 64];
const P50_TARGET_MS = 0.1;
const DEADLINE_MS = 10_000;
const REPRODUCE = `BENCH_DURATION=${DURATION} BENCH_ROUNDS=${ROUNDS} BENCH_WARMUP=${WARMUP} BENCH_GRPC_CODEC=${GRPC_CODEC} BENCH_MOLECULER_SERIALIZER=${MOLECULER_SERIALIZER} npm run bench:rpc`;

class BenchError extends Error {}

// ---------------------------------------------------------------------------------------------
// Server processes.

const children = new ChildProcesses();

interface ServerProcess {
  address: string;
  output: string[];
  /** This server's process, and those of the servers it fronts: the CPU a call costs on the server side. */
  pids: number[];
}

/** CPU time a process has used so far, in microseconds (Linux /proc; NaN elsewhere). */
function processCpuMicros(pid: number): number {
  try {
    // Fields after the command name (which is in parentheses and may hold spaces): utime is the 12th, stime the 13th.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}
const CLOCK_TICKS = 100; // USER_HZ on Linux

function startServer(kind: string, args: string[] = [], env: Record<string, string> = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['bin/run-ts.mjs', 'bench/support/rpc-servers.ts', kind, ...args], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.add(child);
  const output: string[] = [];
  return new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(() => rejectStart(new BenchError(`${kind} server did not start within 30 s:\n${output.join('')}`)), 30_000);
    let ready = false;
    const onData = (chunk: Buffer) => {
      output.push(chunk.toString());
      if (output.length > 100) output.splice(0, output.length - 100);
      const m = !ready && /listening on (127\.0\.0\.1:\d+)/.exec(output.join(''));
      if (m) {
        ready = true;
        clearTimeout(timer);
        resolveStart({ address: m[1]!, output, pids: [child.pid!] });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (!ready) rejectStart(new BenchError(`${kind} server exited (${signal ?? code}) before it was ready:\n${output.join('')}`));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Clients.

interface Client {
  call(): Promise<unknown>;
  close(): Promise<void>;
}

interface Contender {
  name: string;
  detail: string;
  server: [kind: string, args?: string[]];
  /** The contender whose server this one's server stands in front of (its address is passed as the last argument). */
  fronts?: string;
  /** Environment of its server process. */
  env?: Record<string, string>;
  connect(address: string): Promise<Client>;
}

const quiet = pino({ level: 'silent' });
const echo = benchContract.methods.echo;

// The bench is the deployment: its authority issues the server's, the forwarder's and the
// client's credentials (the children get theirs in their environment, a bench's shortcut).
const authority = new DeploymentAuthority('bench');
const serverBundle = authority.issue({ sub: 'bench#0', svc: ['bench'] });
const clientPlane = new InternalPlane(authority.issue({ sub: 'bench-client#0', svc: ['bench-client'] }));
const forwarderBundle = authority.issue({ sub: 'bench-client#0 forwarder', svc: ['bench-client'] });
/** The client acting as itself: an identity its credential proves. */
const self = { subject: 'service:bench-client', roles: ['ROLE_SERVICE'], service: 'bench-client' };

async function evolithTcpClient(address: string): Promise<Client> {
  const t = new TcpTransport({ log: quiet, plane: clientPlane });
  return {
    call: () => t.send(address, echo, payload, { deadline: Date.now() + DEADLINE_MS, trace: newTrace(), caller: self, from: 'bench-client' }),
    close: () => t.close(),
  };
}

async function anonymousTcpClient(address: string): Promise<Client> {
  const t = new TcpTransport({ log: quiet });
  return {
    call: () => t.send(address, echo, payload, { deadline: Date.now() + DEADLINE_MS, trace: newTrace() }),
    close: () => t.close(),
  };
}

const contenders: Contender[] = [
  {
    name: 'evolith-tcp',
    detail: 'TcpTransport.send → RpcServer → ServiceHost.handle; credentials on both ends (handshake per connection), calls as a proven service; header + msgpackr payload frames',
    server: ['evolith-tcp'],
    env: { EVOLITH_BENCH_CREDENTIAL: JSON.stringify(serverBundle) },
    connect: evolithTcpClient,
  },
  {
    name: 'evolith-noauth',
    detail: 'the same without credentials: anonymous calls to a listener that holds none',
    server: ['evolith-tcp'],
    connect: anonymousTcpClient,
  },
  {
    name: 'evolith-fwd',
    detail: 'TcpTransport.send → Forwarder (own process, own credentials: routes by header, relays payload bytes undecoded) → the evolith-tcp server process',
    server: ['forwarder'],
    env: { EVOLITH_BENCH_CREDENTIAL: JSON.stringify(forwarderBundle) },
    fronts: 'evolith-tcp',
    connect: evolithTcpClient,
  },
  {
    name: 'grpc-js',
    detail: `@grpc/grpc-js unary, plain-JS service definition, ${GRPC_CODEC} (de)serialisers, insecure channel, default options`,
    server: ['grpc', [GRPC_CODEC]],
    async connect(address) {
      const Ctor = grpc.makeGenericClientConstructor(grpcDefinition(GRPC_CODEC), 'Bench');
      const client = new Ctor(address, grpc.credentials.createInsecure());
      const unary = client.echo!.bind(client) as (arg: unknown, options: grpc.CallOptions, cb: (err: Error | null, v: unknown) => void) => void;
      return {
        call: () => new Promise((res, rej) => unary(payload, { deadline: Date.now() + DEADLINE_MS }, (err, v) => (err ? rej(err) : res(v)))),
        close: async () => client.close(),
      };
    },
  },
  {
    name: 'moleculer',
    detail: `Moleculer 0.14 TCP transporter (udpDiscovery off, static URL), ${MOLECULER_SERIALIZER} serializer, two brokers in two processes, defaults otherwise`,
    server: ['moleculer', [MOLECULER_SERIALIZER]],
    async connect(address) {
      const broker = new Moleculer.ServiceBroker({
        nodeID: 'bench-client',
        transporter: { type: 'TCP', options: { udpDiscovery: false, urls: [`${address}/bench-server`] } },
        serializer: moleculerSerializer(MOLECULER_SERIALIZER),
        logger: false,
      });
      await broker.start();
      await broker.waitForServices(['bench'], 20_000);
      return {
        call: () => broker.call('bench.echo', payload, { timeout: DEADLINE_MS }),
        close: () => broker.stop(),
      };
    },
  },
  {
    name: 'evolith-http',
    detail: 'HttpTransport.send (global fetch, JSON) → fastify + rpcHttpPlugin → ServiceHost.handle',
    server: ['evolith-http'],
    async connect(address) {
      const t = new HttpTransport({ format: 'json' });
      return { call: () => t.send(address, echo, payload, { deadline: Date.now() + DEADLINE_MS, trace: newTrace() }), close: async () => undefined };
    },
  },
  {
    name: 'floor',
    detail: 'not a contender: node:net, the same ~1 KB length-prefixed frame echoed back verbatim (no codec, no server-side work)',
    server: ['raw-echo'],
    connect: rawEchoClient,
  },
];

/** The floor's client: writes a pre-encoded frame per call; the echo keeps order, so answers resolve first-in first-out. */
async function rawEchoClient(address: string): Promise<Client> {
  const [host, port] = address.split(':');
  const body = pack(payload);
  const frame = Buffer.alloc(4 + body.length);
  frame.writeUInt32BE(body.length, 0);
  body.copy(frame, 4);
  const socket = connect({ host, port: Number(port), noDelay: true });
  await new Promise<void>((r, j) => socket.once('connect', r).once('error', j));
  const waiting: ((v: unknown) => void)[] = [];
  let head = 0;
  let buffered = 0;
  socket.on('data', (chunk: Buffer) => {
    buffered += chunk.length;
    while (buffered >= frame.length) {
      buffered -= frame.length;
      waiting[head]!(undefined);
      waiting[head++] = undefined as never;
      if (head > 4096) {
        waiting.splice(0, head);
        head = 0;
      }
    }
  });
  return {
    call: () =>
      new Promise((res) => {
        waiting.push(res);
        socket.write(frame);
      }),
    close: async () => void socket.destroy(),
  };
}

// ---------------------------------------------------------------------------------------------
// Measuring.

interface Sample {
  rps: number;
  p50: number;
  p99: number;
  /** Client plus server CPU time per call, µs: a figure machine load disturbs less than req/s. */
  cpu: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function measure(client: Client, inFlight: number, seconds: number, serverPids: number[]): Promise<Sample> {
  const times: number[] = [];
  let errors = 0;
  let firstError: unknown;
  const cpu0 = process.cpuUsage();
  const serverCpu = () => serverPids.reduce((sum, pid) => sum + processCpuMicros(pid), 0);
  const serverCpu0 = serverCpu();
  const started = performance.now();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        try {
          await client.call();
          times.push(performance.now() - t0);
        } catch (err) {
          errors++;
          firstError ??= err;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const clientCpu = process.cpuUsage(cpu0);
  const cpu = (clientCpu.user + clientCpu.system + serverCpu() - serverCpu0) / times.length;
  if (errors > 0) throw new BenchError(`${errors} calls failed; first: ${(firstError as Error)?.stack ?? String(firstError)}`);
  const sorted = Float64Array.from(times).sort();
  return { rps: times.length / elapsed, p50: percentile(sorted, 50), p99: percentile(sorted, 99), cpu };
}

const ms = (v: number) => v.toFixed(3);
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;

async function main(): Promise<void> {
  const started = Date.now();
  console.log(`bench:rpc — reproduce with: ${REPRODUCE}`);
  console.log(
    `payload: ${pack(payload).length} B as msgpack, ${JSON.stringify(payload).length} B as JSON, echoed back; ${IN_FLIGHT.join(' and ')} calls in flight; ` +
      `${DURATION} s per run, ${ROUNDS} rounds (+ ${WARMUP} s warm-up each); node ${process.version}, ${availableParallelism()} CPUs`,
  );
  console.log(`layout: each server in its own child process, all clients in this process, 127.0.0.1 only; load average before: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  for (const c of contenders) console.log(`  ${c.name.padEnd(13)} ${c.detail}`);

  // Servers that front another start once that one listens.
  const servers: ServerProcess[] = new Array(contenders.length);
  await Promise.all(contenders.map(async (c, i) => !c.fronts && (servers[i] = await startServer(c.server[0], c.server[1], c.env))));
  for (const [i, c] of contenders.entries()) {
    if (!c.fronts) continue;
    const upstream = servers[contenders.findIndex((o) => o.name === c.fronts)]!;
    const own = await startServer(c.server[0], [...(c.server[1] ?? []), upstream.address], c.env);
    servers[i] = { ...own, pids: [...own.pids, ...upstream.pids] };
  }
  const clients: Client[] = [];
  try {
    for (const [i, c] of contenders.entries()) {
      const client = await c.connect(servers[i]!.address);
      clients.push(client);
      const answer = await client.call();
      if (c.name !== 'floor' && !isDeepStrictEqual(JSON.parse(JSON.stringify(answer)), payload)) {
        throw new BenchError(`${c.name} echoed something else: ${JSON.stringify(answer).slice(0, 200)}`);
      }
      console.log(`  ${c.name.padEnd(13)} server on ${servers[i]!.address}: ${c.name === 'floor' ? 'echoing' : 'echo verified'}`);
    }

    if (WARMUP > 0) for (const [i, client] of clients.entries()) await measure(client, 64, WARMUP, servers[i]!.pids);

    const samples = new Map<string, Sample[]>();
    const key = (c: Contender, n: number) => `${c.name}|${n}`;
    for (let r = 0; r < ROUNDS; r++) {
      for (const n of IN_FLIGHT) {
        for (let k = 0; k < contenders.length; k++) {
          const i = (k + r) % contenders.length; // rotate who goes first
          const c = contenders[i]!;
          let s: Sample;
          try {
            s = await measure(clients[i]!, n, DURATION, servers[i]!.pids);
          } catch (err) {
            throw new BenchError(`${c.name} at ${n} in flight: ${(err as Error).message}\nserver output:\n${servers[i]!.output.join('').slice(-3000)}`);
          }
          const list = samples.get(key(c, n)) ?? [];
          list.push(s);
          samples.set(key(c, n), list);
          console.log(
            `  round ${r + 1}  ${c.name.padEnd(13)} ${String(n).padStart(2)} in flight  ${s.rps.toFixed(0).padStart(7)} req/s  p50 ${ms(s.p50)} ms  p99 ${ms(s.p99)} ms  cpu ${s.cpu.toFixed(0)} µs/call`,
          );
        }
      }
    }

    const agg = (c: Contender, n: number) => {
      const list = samples.get(key(c, n))!;
      return { list, rps: median(list.map((x) => x.rps)), p50: median(list.map((x) => x.p50)), p99: median(list.map((x) => x.p99)), cpu: median(list.map((x) => x.cpu)) };
    };
    const rows: string[][] = [['contender', 'in flight', 'req/s', 'p50 ms', 'p99 ms', 'CPU µs/call', 'req/s per round']];
    for (const n of IN_FLIGHT) {
      for (const c of contenders) {
        const a = agg(c, n);
        rows.push([c.name, String(n), a.rps.toFixed(0), ms(a.p50), ms(a.p99), a.cpu.toFixed(0), a.list.map((x) => x.rps.toFixed(0)).join(' / ')]);
      }
    }
    printTable(
      `bench:rpc — median of ${ROUNDS} rounds × ${DURATION} s (latency per call, client side, performance.now(); CPU = client + server process CPU time / calls)`,
      rows,
    );

    const named = (name: string) => contenders.find((c) => c.name === name)!;
    const [tcp, noauth, fwd, grpcC, mol, http, floor] = ['evolith-tcp', 'evolith-noauth', 'evolith-fwd', 'grpc-js', 'moleculer', 'evolith-http', 'floor'].map(named) as Contender[] as [
      Contender,
      Contender,
      Contender,
      Contender,
      Contender,
      Contender,
      Contender,
    ];
    const targets: [Contender, number][] = [
      [grpcC, 2],
      [mol, 1.5],
    ];
    const ratios: string[][] = [['in flight', 'evolith-tcp vs', 'req/s ratio', 'target', 'verdict', 'p99 ratio', 'p99 lower?', 'p50 ratio', 'CPU/call ratio']];
    let met = 0;
    let total = 0;
    for (const n of IN_FLIGHT) {
      const e = agg(tcp, n);
      for (const [other, target] of targets) {
        const o = agg(other, n);
        const rpsOk = e.rps / o.rps >= target;
        const p99Ok = e.p99 < o.p99;
        total += 2;
        met += Number(rpsOk) + Number(p99Ok);
        ratios.push([String(n), other.name, ratio(e.rps, o.rps), `≥ ${target.toFixed(1)}×`, rpsOk ? 'meets' : 'MISSES', ratio(e.p99, o.p99), p99Ok ? 'yes' : 'NO', ratio(e.p50, o.p50), ratio(e.cpu, o.cpu)]);
      }
    }
    printTable('evolith-tcp against its baselines (targets: ≥ 2× grpc-js and ≥ 1.5× Moleculer in req/s; lower p99 than both)', ratios);
    const p50At1 = agg(tcp, 1).p50;
    const p50Ok = p50At1 <= P50_TARGET_MS;
    total += 1;
    met += Number(p50Ok);
    console.log(
      `\nevolith-tcp p50 at 1 call in flight: ${ms(p50At1)} ms (target ≤ ${ms(P50_TARGET_MS)} ms: ${p50Ok ? 'meets' : 'MISSES'}); ` +
        `the floor's in the same run: ${ms(agg(floor, 1).p50)} ms`,
    );

    const authRows: string[][] = [['in flight', 'with credentials req/s', 'without req/s', 'with / without', 'p50 added, ms', 'CPU added, µs/call']];
    for (const n of IN_FLIGHT) {
      const on = agg(tcp, n);
      const off = agg(noauth, n);
      authRows.push([String(n), on.rps.toFixed(0), off.rps.toFixed(0), ratio(on.rps, off.rps), ms(on.p50 - off.p50), (on.cpu - off.cpu).toFixed(0)]);
    }
    printTable('what authentication costs: evolith-tcp (handshake per connection, calls as a proven service) against evolith-noauth (anonymous), same run', authRows);

    const fwdRows: string[][] = [['in flight', 'evolith-fwd req/s', 'share of evolith-tcp', 'p50 added, ms', 'p99 added, ms', 'CPU added, µs/call']];
    for (const n of IN_FLIGHT) {
      const d = agg(tcp, n);
      const f = agg(fwd, n);
      fwdRows.push([String(n), f.rps.toFixed(0), `${((f.rps / d.rps) * 100).toFixed(0)} %`, ms(f.p50 - d.p50), ms(f.p99 - d.p99), (f.cpu - d.cpu).toFixed(0)]);
    }
    printTable('the forwarder: evolith-fwd (client → forwarder → server) against evolith-tcp (client → server), same run', fwdRows);

    const httpRows: string[][] = [['in flight', 'evolith-http vs', 'req/s ratio', 'p99 ratio']];
    for (const n of IN_FLIGHT) {
      for (const other of [tcp, grpcC, mol]) httpRows.push([String(n), other.name, ratio(agg(http, n).rps, agg(other, n).rps), ratio(agg(http, n).p99, agg(other, n).p99)]);
    }
    printTable('evolith-http (interop and debugging; no target)', httpRows);

    const floorRows: string[][] = [['in flight', 'contender', 'req/s as share of the floor', 'p50 minus the floor, ms']];
    for (const n of IN_FLIGHT) {
      const f = agg(floor, n);
      for (const c of [tcp, fwd, grpcC, mol, http]) floorRows.push([String(n), c.name, `${((agg(c, n).rps / f.rps) * 100).toFixed(0)} %`, ms(agg(c, n).p50 - f.p50)]);
    }
    printTable('against the floor (raw socket echo of the same bytes: no RPC library can beat it)', floorRows);
    console.log(`\ntargets met: ${met} of ${total}; load average after: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
    console.log(`total time ${((Date.now() - started) / 1000).toFixed(0)} s; reproduce with: ${REPRODUCE}`);
  } finally {
    for (const client of clients) await client.close().catch(() => undefined);
    await children.stopAll();
  }
}

try {
  await main();
} catch (err) {
  console.error(`\nbench:rpc FAILED: ${err instanceof BenchError ? err.message : ((err as Error)?.stack ?? String(err))}`);
  await children.stopAll();
  process.exitCode = 1;
}
