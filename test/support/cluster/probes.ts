/**
 * Probes as the kubelet runs them: httpGet (success is a status from 200 to 399), tcpSocket
 * (success is a connection) and exec (success is exit code 0), each with its timeout; ports by
 * number or by the container's port name. The kubelet probes from the node's network, which here
 * is the root namespace reaching the pod's address over the bridge.
 */
import { request } from 'node:http';
import { connect } from 'node:net';
import type { Container, Probe } from './manifests.js';

/** The Kubernetes defaults of a probe's timing, with periods and delays scaled for tests. */
export interface ProbeTimings {
  initialDelayMs: number;
  periodMs: number;
  timeoutMs: number;
  failureThreshold: number;
  successThreshold: number;
}

export function probeTimings(probe: Probe, timeScale: number): ProbeTimings {
  return {
    initialDelayMs: (probe.initialDelaySeconds ?? 0) * 1000 * timeScale,
    periodMs: Math.max(20, (probe.periodSeconds ?? 10) * 1000 * timeScale),
    // Not scaled: a probe's timeout is how long a busy process may take to answer, not a pace.
    timeoutMs: (probe.timeoutSeconds ?? 1) * 1000,
    failureThreshold: probe.failureThreshold ?? 3,
    successThreshold: probe.successThreshold ?? 1,
  };
}

/** A port by number, or by the name of one of the container's ports; an unknown name is an error. */
export function resolvePort(port: number | string | undefined, container: Container, fallback?: number): number {
  if (port === undefined) {
    if (fallback !== undefined) return fallback;
    throw new Error(`container ${container.name}: a probe names no port`);
  }
  if (typeof port === 'number') return port;
  if (/^\d+$/.test(port)) return Number(port);
  const found = container.ports?.find((p) => p.name === port);
  if (!found) {
    const names = (container.ports ?? []).map((p) => p.name).filter(Boolean);
    throw new Error(`container ${container.name} has no port named "${port}" (it has: ${names.join(', ') || 'none'})`);
  }
  return found.containerPort;
}

/**
 * Runs one probe once: undefined on success, else why it failed (kept to explain a pod that never
 * turns ready). `exec` runs a command in the container's context and gives its exit code.
 */
export async function runProbe(
  probe: Probe,
  podIp: string,
  container: Container,
  timeoutMs: number,
  exec: (command: string[], timeoutMs: number) => Promise<number>,
  defaultPort?: number,
): Promise<string | undefined> {
  if (probe.httpGet) {
    const g = probe.httpGet;
    if (g.scheme && g.scheme.toUpperCase() !== 'HTTP') throw new Error(`container ${container.name}: probe scheme ${g.scheme} is not simulated`);
    const port = resolvePort(g.port, container, defaultPort);
    const headers: Record<string, string> = { 'user-agent': 'kube-probe/1.30' };
    for (const h of g.httpHeaders ?? []) headers[h.name] = h.value;
    const where = `GET http://${g.host ?? podIp}:${port}${g.path ?? '/'}`;
    return new Promise<string | undefined>((resolve) => {
      const req = request({ host: g.host ?? podIp, port, path: g.path ?? '/', method: 'GET', headers, timeout: timeoutMs }, (res) => {
        res.resume();
        const code = res.statusCode ?? 0;
        resolve(code >= 200 && code < 400 ? undefined : `${where} answered ${code}`);
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', (err) => resolve(`${where}: ${err.message}`));
      req.end();
    });
  }
  if (probe.tcpSocket) {
    const port = resolvePort(probe.tcpSocket.port, container, defaultPort);
    const where = `tcp ${probe.tcpSocket.host ?? podIp}:${port}`;
    return new Promise<string | undefined>((resolve) => {
      const socket = connect({ host: probe.tcpSocket!.host ?? podIp, port, timeout: timeoutMs });
      socket.once('connect', () => {
        socket.destroy();
        resolve(undefined);
      });
      socket.once('timeout', () => {
        socket.destroy();
        resolve(`${where}: no connection within ${timeoutMs} ms`);
      });
      socket.once('error', (err) => resolve(`${where}: ${err.message}`));
    });
  }
  if (probe.exec) {
    const code = await exec(probe.exec.command, timeoutMs);
    return code === 0 ? undefined : `exec ${probe.exec.command.join(' ')} exited with ${code}`;
  }
  throw new Error(`container ${container.name}: a probe has no httpGet, tcpSocket or exec`);
}
