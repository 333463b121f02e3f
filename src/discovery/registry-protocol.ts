/**
 * The registry's HTTP protocol, shared by the server and its clients.
 *
 *   PUT    /v1/instances/:id            register or update (body: RegisterBody) → { instance }
 *   PUT    /v1/instances/:id/heartbeat  renew the TTL → { ok } | 404 (register again)
 *   PUT    /v1/instances/:id/ready      body { ready } → { instance } | 404
 *   DELETE /v1/instances/:id            → { removed }
 *   GET    /v1/services                 → { services: ServiceList[] }
 *   GET    /v1/services/:service        → ServiceList
 *   GET    /v1/watch[?service=a&...]    Server-Sent Events, see below
 *   GET    /status                      → RegistryStatus
 *
 * Every request carries `authorization: Bearer <credential>`, a credential of the deployment
 * (see auth/credentials.ts). Instances may only be announced, renewed or removed by the
 * process whose credential names them; a live instance cannot be taken over by another.
 *
 * Watch stream (text/event-stream): `hello` (HelloEvent) then `snapshot` (SnapshotEvent) on
 * connect, `endpoints` (EndpointsEvent) on every change of a watched service, a fresh
 * `snapshot` when the registry's warm-up ends, and a `: ping` comment every `pingIntervalMs`
 * so a client can tell a silent registry from a dead one. SSE rather than long-poll: one
 * connection per client carries every change as it happens, and its close is the signal that
 * the registry went away.
 *
 * Warm-up: a registry that just (re)started knows none of the instances that are still
 * running; they re-register within a heartbeat. Until `warming` turns false, clients keep
 * endpoints they knew before (see RegistryClient).
 */
import type { SerializedError } from '../kernel/errors.js';
import type { InstanceStatus, ServiceEndpoint } from './registry.js';

export interface RegisterBody {
  service: string;
  version: string;
  address: string;
  metadata?: Record<string, string>;
  ttlMs?: number;
  ready?: boolean;
}

export interface HelloEvent {
  /** Changes each time the registry process starts. */
  bootId: string;
  startedAt: number;
  warming: boolean;
  pingIntervalMs: number;
}

export interface SnapshotEvent {
  warming: boolean;
  services: Record<string, { index: number; endpoints: ServiceEndpoint[] }>;
}

export interface EndpointsEvent {
  service: string;
  index: number;
  warming: boolean;
  endpoints: ServiceEndpoint[];
}

export interface StatusInstance extends InstanceStatus {
  /** Milliseconds since the last heartbeat, as the registry saw it when answering. */
  heartbeatAgeMs: number;
}

export interface RegistryStatus {
  bootId: string;
  startedAt: number;
  warming: boolean;
  instances: StatusInstance[];
}

export interface ErrorBody {
  error: SerializedError;
}

/** A credential given as a value or as a getter (renewed credentials replace the value). */
export function tokenOf(token: string | (() => string)): string {
  return typeof token === 'function' ? token() : token;
}
