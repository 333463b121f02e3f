/**
 * A mesh proxy process: the sidecar of one app instance, or (node mode) the one proxy of every
 * instance on this machine. It is started by the control plane, which sends it everything it
 * needs over its private IPC channel (see messages.ts) and keeps it running: it serves one
 * Sidecar per app instance, all sharing one registry watch, one policy and one metrics page.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { InternalPlane } from '../auth/internal-plane.js';
import { RegistryClient } from '../discovery/registry-client.js';
import { exitWithSupervisor, stopOnSignals } from '../deploy/process-signals.js';
import { onRenewal } from '../deploy/microservices/credentials-channel.js';
import { createLogger } from '../observe/logger.js';
import {
  MESH_ACK,
  MESH_CONFIG,
  MESH_IDENTITY,
  MESH_INSTANCES,
  MESH_NACK,
  MESH_START,
  MESH_STATUS,
  type FromProxy,
  type MeshIdentity,
  type MeshStartMessage,
  type PolicySnapshot,
  type ToProxy,
} from './messages.js';
import { parseMeshPolicy, type MeshPolicy } from './policy.js';
import { Sidecar, type ProxiedInstance } from './sidecar.js';
import { MeshTelemetry } from './telemetry.js';

export class MeshProxy {
  private readonly sidecars = new Map<string, Sidecar>();
  private readonly registry: RegistryClient;
  private readonly telemetry: MeshTelemetry;
  private readonly plane: InternalPlane;
  private policy: MeshPolicy;
  private configVersion: number;
  private identity: MeshIdentity;
  private metricsServer: Server | undefined;
  private metricsUrl = '';
  private changes: Promise<void> = Promise.resolve();

  constructor(
    private readonly start: MeshStartMessage,
    private readonly log: Logger,
    private readonly report: (message: FromProxy) => void,
  ) {
    this.plane = new InternalPlane(start.credentials);
    this.identity = start.identity;
    this.policy = parseMeshPolicy(start.config.document, start.config.shape, `policy version ${start.config.version}`);
    this.configVersion = start.config.version;
    this.telemetry = new MeshTelemetry({ proxy: this.plane.claims.sub });
    this.registry = new RegistryClient({ url: start.registryUrl, token: () => this.plane.credential.token, log }).start();
  }

  get credentials(): InternalPlane {
    return this.plane;
  }

  /** Starts serving; messages received meanwhile apply after it, in order. */
  run(): Promise<void> {
    const started = this.startUp();
    this.changes = started.catch(() => undefined);
    return started;
  }

  private async startUp(): Promise<void> {
    await this.registry.whenSynced(10_000);
    this.metricsServer = createServer((req, res) => void this.serveMetrics(req.url ?? '/', req.headers.authorization, res));
    await new Promise<void>((resolve) => this.metricsServer!.listen(0, this.start.internalHost, resolve));
    const a = this.metricsServer.address() as AddressInfo;
    this.metricsUrl = `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics`;
    await this.setInstances(this.start.instances);
    this.report({ type: MESH_ACK, version: this.configVersion });
  }

  /** One message from the control plane; changes apply one at a time, in order. */
  receive(message: ToProxy): void {
    this.changes = this.changes.then(async () => {
      switch (message.type) {
        case MESH_CONFIG:
          return this.applyConfig(message.config);
        case MESH_IDENTITY:
          this.identity = message.identity;
          for (const s of this.sidecars.values()) {
            const cert = this.identity.certificates[s.instance.instance];
            if (cert) s.rotate(cert);
          }
          this.log.info({ serials: Object.fromEntries(Object.entries(this.identity.certificates).map(([k, c]) => [k, c.serial])) }, 'certificates rotated');
          return this.reportStatus();
        case MESH_INSTANCES:
          this.identity = message.identity;
          return this.setInstances(message.instances);
        default:
          return;
      }
    }).catch((err) => this.log.error({ err }, 'a control plane message could not be applied'));
  }

  private applyConfig(config: PolicySnapshot): void {
    let policy: MeshPolicy;
    try {
      policy = parseMeshPolicy(config.document, config.shape, `policy version ${config.version}`);
    } catch (err) {
      this.log.error({ version: config.version, reason: (err as Error).message }, 'policy snapshot refused; the previous one stays');
      this.report({ type: MESH_NACK, version: config.version, reason: (err as Error).message });
      return;
    }
    this.policy = policy;
    this.configVersion = config.version;
    for (const s of this.sidecars.values()) s.setPolicy(policy);
    this.log.info({ version: config.version }, 'policy snapshot applied');
    this.report({ type: MESH_ACK, version: config.version });
    this.reportStatus();
  }

  private async setInstances(instances: readonly ProxiedInstance[]): Promise<void> {
    const wanted = new Map(instances.map((i) => [i.instance, i]));
    for (const [key, sidecar] of this.sidecars) {
      if (!wanted.has(key)) {
        this.sidecars.delete(key);
        await sidecar.close();
      }
    }
    for (const instance of instances) {
      if (this.sidecars.has(instance.instance)) continue;
      const certificate = this.identity.certificates[instance.instance];
      if (!certificate) {
        this.log.error({ instance: instance.instance }, 'no certificate for an instance; its proxy is not started');
        continue;
      }
      const sidecar = new Sidecar({
        app: this.start.app,
        internalHost: this.start.internalHost,
        instance,
        plane: this.plane,
        certificate,
        trustPem: this.identity.trustPem,
        discovery: this.registry,
        policy: this.policy,
        telemetry: this.telemetry,
        log: this.log,
      });
      await sidecar.start();
      this.sidecars.set(instance.instance, sidecar);
    }
    this.reportStatus();
  }

  private reportStatus(): void {
    this.report({
      type: MESH_STATUS,
      metrics: this.metricsUrl,
      configVersion: this.configVersion,
      proxied: [...this.sidecars.values()].map((s) => ({
        instance: s.instance.instance,
        inbound: s.inboundAddress,
        appSocket: s.instance.appSocket,
        ids: [...s.currentCertificate.ids],
        serial: s.currentCertificate.serial,
        notAfter: s.currentCertificate.notAfter,
      })),
    });
  }

  /** The metrics page: for the deployment's processes and operators (a credential), like every internal endpoint. */
  private async serveMetrics(url: string, authorization: string | undefined, res: import('node:http').ServerResponse): Promise<void> {
    const m = /^bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    try {
      if (!m) throw new Error('present a credential of this deployment');
      this.plane.peer(m[1]!);
    } catch (err) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'EVOLITH_UNAUTHENTICATED', message: (err as Error).message }));
      return;
    }
    if (url === '/metrics') {
      res.writeHead(200, { 'content-type': this.telemetry.contentType }).end(await this.telemetry.metrics());
    } else if (url === '/status') {
      const body = {
        configVersion: this.configVersion,
        sidecars: [...this.sidecars.values()].map((s) => ({ instance: s.instance.instance, inbound: s.inboundAddress, ejected: s.ejected(), stats: s.stats() })),
      };
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    } else {
      res.writeHead(404).end();
    }
  }

  async stop(): Promise<void> {
    await Promise.all([...this.sidecars.values()].map((s) => s.close()));
    this.sidecars.clear();
    this.registry.close();
    await new Promise<void>((resolve) => (this.metricsServer ? this.metricsServer.close(() => resolve()) : resolve()));
  }
}

/** The control plane's messages: the start message first; what follows is queued until a proxy takes it. */
function listen(timeoutMs = 10_000): { start: Promise<MeshStartMessage>; deliverTo(proxy: MeshProxy): void } {
  let target: MeshProxy | undefined;
  const early: ToProxy[] = [];
  let resolveStart!: (m: MeshStartMessage) => void;
  let rejectStart!: (err: Error) => void;
  const start = new Promise<MeshStartMessage>((resolve, reject) => ((resolveStart = resolve), (rejectStart = reject)));
  if (!process.send) rejectStart(new Error('a mesh proxy must be started by its control plane (`evolith run --arch mesh`)'));
  const timer = setTimeout(() => rejectStart(new Error(`no start message from the control plane within ${timeoutMs} ms`)), timeoutMs);
  process.on('message', (m) => {
    const type = (m as ToProxy | undefined)?.type;
    if (type === MESH_START) {
      clearTimeout(timer);
      resolveStart(m as MeshStartMessage);
    } else if (type === MESH_CONFIG || type === MESH_IDENTITY || type === MESH_INSTANCES) {
      // Messages sent while the proxy starts (instances joining, say) must not be lost.
      if (target) target.receive(m as ToProxy);
      else early.push(m as ToProxy);
    }
  });
  return {
    start,
    deliverTo(proxy) {
      target = proxy;
      for (const m of early.splice(0)) proxy.receive(m);
    },
  };
}

/** The process's entry point. */
export async function main(): Promise<void> {
  exitWithSupervisor();
  let proxy: MeshProxy;
  let log: Logger;
  const messages = listen();
  try {
    const start = await messages.start;
    log = createLogger({ app: start.app, process: 'mesh-proxy' });
    proxy = new MeshProxy(start, log, (message) => process.send?.(message));
    log = log.child({ proxy: proxy.credentials.claims.sub });
    onRenewal((token) => {
      try {
        proxy.credentials.credential.renewed(token);
      } catch (err) {
        log.error({ err: (err as Error).message }, 'refused a credential renewal');
      }
    });
    const running = proxy.run();
    messages.deliverTo(proxy);
    await running;
  } catch (err) {
    // Not a fatal exit: the supervisor tries again (a port still held by the incarnation before, say).
    process.stderr.write(`evolith: the mesh proxy could not start: ${(err as Error).message}\n`);
    process.exit(1);
  }
  process.stdout.write(`evolith: mesh proxy ${proxy.credentials.claims.sub} serving\n`);
  stopOnSignals(proxy, log);
}
