/**
 * RPC over HTTP/2 without TLS (h2c, prior knowledge): the same requests and answers as RPC over
 * HTTP/1.1 (see http-transport.ts for the format and headers), multiplexed on one connection
 * per callee address.
 *
 * Why a third transport: on a cluster, the layer that balances, retries, injects faults and
 * authorizes per request (an Istio sidecar, Knative's activator and queue proxy) only sees
 * HTTP. Evolith's binary TCP protocol passes through them as opaque bytes; HTTP/1.1 passes as
 * requests but costs a connection per call in flight. HTTP/2 is requests to the proxy and one
 * multiplexed connection to the process.
 *
 * The server side is `listenRpcHttp` (http-listener.ts): one port taking HTTP/1.1 and h2c.
 */
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import type { MethodDef } from '../contract/define.js';
import { withDeadline } from '../kernel/deadline.js';
import { UnavailableError } from '../kernel/errors.js';
import type { CallMeta } from '../kernel/plugins.js';
import { rpcBaseUrl, rpcHttpAnswer, sendRpcHttp, type HttpTransportOptions, type RpcHttpRequest } from './http-transport.js';

const { NGHTTP2_CANCEL, NGHTTP2_REFUSED_STREAM } = http2.constants;

/** The options of the HTTP/1.1 transport (body format, credentials), and how it closes. */
export interface Http2TransportOptions extends HttpTransportOptions {
  /** How long `close()` lets calls in flight answer before cutting their sessions; default 10 s. */
  closeDrainMs?: number;
}

/** One client session to one callee authority, and what is known about it. */
class SessionEntry {
  /** The connection was made: from then on a request may have reached the callee. */
  connected = false;
  /** Streams open on it; the session keeps the process alive only while there are some. */
  active = 0;
  /** Why the session went away, for the calls it fails. */
  failure: Error | undefined;

  constructor(
    readonly base: string,
    readonly session: ClientHttp2Session,
  ) {}

  get usable(): boolean {
    return !this.session.closed && !this.session.destroyed && this.failure === undefined;
  }

  begin(): void {
    if (this.active++ === 0 && !this.session.destroyed) this.session.ref();
  }

  end(): void {
    if (--this.active === 0 && !this.session.destroyed) this.session.unref();
  }
}

function headerOf(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v[0] : String(v);
}

/**
 * The client side of RPC over h2c. One `node:http2` session per callee authority, reused and
 * multiplexing every concurrent call to it; a session that closes, fails or receives GOAWAY is
 * dropped and the next call opens a new one.
 *
 * Failures keep the contract of the other transports: an UnavailableError's
 * `details.maybeExecuted` is false when the request provably never reached the callee (no
 * connection was made, or the callee refused the stream: REFUSED_STREAM, or a GOAWAY that
 * excluded it), true when the stream or session was lost after it went out. A call past its
 * deadline fails with a TimeoutError and its stream is cancelled (RST_STREAM CANCEL), which
 * the callee sees as an aborted request.
 */
export class Http2Transport {
  readonly name = 'http2';
  private readonly sessions = new Map<string, SessionEntry>();
  private closed = false;

  constructor(private readonly options: Http2TransportOptions = {}) {}

  /** Calls the instance at `address` (a base URL `http://host:port` or "host:port"). */
  send(address: string, method: MethodDef, input: unknown, meta: CallMeta): Promise<unknown> {
    return sendRpcHttp(this.options, { address, method, input, meta }, (request) => {
      if (this.closed) {
        return Promise.reject(new UnavailableError(`cannot call ${method.fullName}: the HTTP/2 transport is closed`, { address: request.base, maybeExecuted: false }));
      }
      let started: { entry: SessionEntry; stream: ClientHttp2Stream };
      try {
        started = this.open(request);
      } catch (err) {
        return Promise.reject(new UnavailableError(`cannot call ${method.fullName} at ${request.base}: ${(err as Error).message}`, { address: request.base, maybeExecuted: false }));
      }
      const { entry, stream } = started;
      return withDeadline(this.exchange(entry, stream, request), meta.deadline, `${method.fullName} at ${request.base}`, () => {
        if (!stream.destroyed) stream.close(NGHTTP2_CANCEL);
      });
    });
  }

  /** Sessions open now, to `address` or in all (for status pages and tests). */
  sessionCount(address?: string): number {
    if (address !== undefined) return this.sessions.get(rpcBaseUrl(address))?.usable ? 1 : 0;
    let n = 0;
    for (const e of this.sessions.values()) if (e.usable) n++;
    return n;
  }

  /** Stops new calls, lets calls in flight answer (up to `closeDrainMs`), then closes every session. */
  async close(): Promise<void> {
    this.closed = true;
    const entries = [...this.sessions.values()];
    this.sessions.clear();
    const drainMs = this.options.closeDrainMs ?? 10_000;
    await Promise.all(
      entries.map(
        (e) =>
          new Promise<void>((resolve) => {
            if (e.session.destroyed) return resolve();
            const cut = setTimeout(() => e.session.destroy(), drainMs);
            cut.unref();
            e.session.once('close', () => {
              clearTimeout(cut);
              resolve();
            });
            e.session.close();
          }),
      ),
    );
  }

  /** A stream for `request` on the session to its callee, opening a session if there is none usable. */
  private open(request: RpcHttpRequest): { entry: SessionEntry; stream: ClientHttp2Stream } {
    const headers = { ':method': 'POST', ':path': request.path, ...request.headers };
    const options = { endStream: request.body === undefined };
    const existing = this.sessions.get(request.base);
    if (existing?.usable) {
      try {
        return { entry: existing, stream: existing.session.request(headers, options) };
      } catch (err) {
        // The session began closing between the check and the request (a GOAWAY being
        // processed): it is dropped, and the call goes out on a new one. Any other refusal
        // is about this request, not the session.
        if (!existing.session.closed && !existing.session.destroyed) throw err;
        this.drop(existing);
      }
    }
    const entry = this.connect(request.base);
    return { entry, stream: entry.session.request(headers, options) };
  }

  private connect(base: string): SessionEntry {
    const session = http2.connect(base);
    const entry = new SessionEntry(base, session);
    this.sessions.set(base, entry);
    session.unref();
    session.once('connect', () => {
      entry.connected = true;
    });
    session.on('error', (err) => {
      entry.failure ??= err;
      this.drop(entry);
    });
    session.once('goaway', (code) => {
      entry.failure ??= new Error(`the callee closed the connection (GOAWAY, code ${code})`);
      this.drop(entry);
    });
    session.once('close', () => {
      entry.failure ??= new Error('the connection closed');
      this.drop(entry);
    });
    return entry;
  }

  private drop(entry: SessionEntry): void {
    if (this.sessions.get(entry.base) === entry) this.sessions.delete(entry.base);
  }

  /** Writes the request body and reads the answer: the call's value, or its typed failure. */
  private exchange(entry: SessionEntry, stream: ClientHttp2Stream, request: RpcHttpRequest): Promise<unknown> {
    const url = request.base + request.path;
    entry.begin();
    return new Promise<unknown>((resolve, reject) => {
      let settled = false;
      let status = 0;
      let headers: IncomingHttpHeaders = {};
      const chunks: Buffer[] = [];
      const settle = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        entry.end();
        fn();
      };
      // The stream ended without an answer. It never reached the callee if no connection was
      // made, or if the callee refused it (REFUSED_STREAM: also what a GOAWAY that excluded it
      // leaves); otherwise the callee may have run it.
      const lost = (err: Error | undefined): void =>
        settle(() => {
          const refused = stream.rstCode === NGHTTP2_REFUSED_STREAM;
          const cause = (err ?? entry.failure) as NodeJS.ErrnoException | undefined;
          let reason = refused ? 'the callee refused the stream' : cause?.message ?? `the stream was reset (code ${stream.rstCode ?? 'none'})`;
          if (!refused && cause?.code && !reason.includes(cause.code)) reason = `${cause.code}: ${reason}`;
          reject(new UnavailableError(`cannot reach ${request.base}: ${reason}`, { address: request.base, maybeExecuted: entry.connected && !refused }));
        });
      stream.on('response', (h) => {
        headers = h;
        status = Number(h[':status']);
      });
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', () =>
        settle(() => {
          if (status === 0) {
            // The stream ended without an answer's headers: the callee went away mid-call.
            reject(new UnavailableError(`${url} closed the call without answering`, { address: request.base, maybeExecuted: true }));
            return;
          }
          try {
            resolve(rpcHttpAnswer(status, (name) => headerOf(headers, name), Buffer.concat(chunks), url));
          } catch (err) {
            reject(err);
          }
        }),
      );
      stream.on('error', (err) => lost(err));
      stream.on('close', () => lost(undefined));
      if (request.body !== undefined) stream.end(request.body);
    });
  }
}
