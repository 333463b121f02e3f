/**
 * Placement terminals over the RPC transports: they deliver a call to the endpoint its chain
 * chose (or to one fixed address, for a chain without an endpoint-choosing link), with the
 * caller's original input, which the callee's side parses itself.
 */
import { ConfigError } from '../kernel/errors.js';
import type { Call, Terminal } from '../kernel/placement.js';
import type { HttpTransport } from './http-transport.js';
import type { Http2Transport } from './http2-transport.js';
import type { TcpTransport } from './tcp-transport.js';

function addressOf(call: Call, fixed: string | undefined, terminal: string): string {
  const address = call.endpoint?.address ?? fixed;
  if (address === undefined) throw new ConfigError(`the ${terminal} terminal for ${call.method.service} has no endpoint: put a link that chooses one before it`);
  return address;
}

/** Evolith's binary RPC over TCP. */
export class TcpTerminal implements Terminal {
  readonly name = 'tcp';
  constructor(
    private readonly tcp: TcpTransport,
    private readonly fixedAddress?: string,
  ) {}
  send(call: Call): Promise<unknown> {
    return this.tcp.send(addressOf(call, this.fixedAddress, this.name), call.method, call.input, call);
  }
}

/** RPC over HTTP (`POST /rpc/<service>/<method>`), JSON or msgpack bodies. */
export class HttpTerminal implements Terminal {
  readonly name = 'http';
  constructor(
    private readonly http: HttpTransport,
    private readonly fixedAddress?: string,
  ) {}
  send(call: Call): Promise<unknown> {
    return this.http.send(addressOf(call, this.fixedAddress, this.name), call.method, call.input, call);
  }
}

/** RPC over HTTP/2 without TLS (h2c): what a mesh's proxies and Knative route per request. */
export class Http2Terminal implements Terminal {
  readonly name = 'http2';
  constructor(
    private readonly http2: Http2Transport,
    private readonly fixedAddress?: string,
  ) {}
  send(call: Call): Promise<unknown> {
    return this.http2.send(addressOf(call, this.fixedAddress, this.name), call.method, call.input, call);
  }
}
