/**
 * Placement: how a call reaches its callee. For each callee service the deployer assembles a
 * chain once — small links (interceptors) ending in a terminal — and every call to that
 * service runs down it. What differs between architectures is only what the deployer puts in
 * the chain:
 *
 *   architecture    links                                        terminal
 *   monolith        –                                            the local host (LocalTerminal)
 *   microservices   bulkhead, retry, choose endpoint, circuit    TCP to the chosen instance
 *   mesh            –                                            the process's own sidecar
 *   serverless      activate (start an instance on first use)    the function instance
 *
 * Validation is the first link of every chain (the kernel checks the input before a chain
 * sees it) and the last (the callee's host checks the output before it leaves), so a call means
 * the same wherever its callee runs: the caller's original input crosses a wire and the
 * callee's side parses it again with the same schema.
 */
import type { MethodDef } from '../contract/define.js';
import type { CallMeta, Endpoint, Identity } from './plugins.js';
import type { TraceContext } from './trace.js';

/**
 * One call travelling down a chain. It is its own metadata (deadline, trace, caller, calling
 * service): an in-process call allocates one object for both.
 */
export class Call implements CallMeta {
  /** The instance an endpoint-choosing link picked for the current attempt. */
  endpoint: Endpoint | undefined = undefined;
  /** Per-call state the chain's links share (e.g. the attempt log of a retrying chain). */
  scratch: object | undefined = undefined;

  constructor(
    readonly method: MethodDef,
    /** The input as the caller gave it: what crosses a wire. */
    readonly input: unknown,
    /** The input after the contract's schema (defaults, transforms): what an in-process handler receives. */
    readonly parsed: unknown,
    readonly deadline: number,
    readonly trace: TraceContext,
    readonly caller: Identity | undefined,
    readonly from: string | undefined,
  ) {}
}

/** The rest of a chain, from a link's point of view. */
export type Next = (call: Call) => Promise<unknown>;

/** An interceptor: wraps the rest of the chain once, when the chain is assembled. */
export interface Link {
  readonly name: string;
  wrap(next: Next): Next;
}

/** Where a chain ends: the thing that actually delivers the call. */
export interface Terminal {
  readonly name: string;
  send(call: Call): Promise<unknown>;
}

/** The chain for one callee service. */
export interface Placement {
  readonly links: readonly Link[];
  readonly terminal: Terminal;
}

/**
 * What a deployer hands a worker for the services it does not host. `placement` is asked once
 * per callee service, the first time a call to it is made; `close` releases connections.
 */
export interface PlacementProvider {
  placement(service: string): Placement;
  close?(): Promise<void>;
}

/** Builds the chain's entry point: the first link wraps the second, …, the last wraps the terminal. */
export function assemble(placement: Placement): Next {
  const terminal = placement.terminal;
  let next: Next = (call) => terminal.send(call);
  for (let i = placement.links.length - 1; i >= 0; i--) next = placement.links[i]!.wrap(next);
  return next;
}

/** Names a chain for logs and status pages: "bulkhead → retry → choose endpoint → circuit → tcp". */
export function describePlacement(placement: Placement): string {
  return [...placement.links.map((l) => l.name), placement.terminal.name].join(' → ');
}
