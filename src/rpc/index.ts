/** Evolith's RPC layer: the TCP transport (binary frames), its server, the forwarder, and the HTTP interop transport. */
export {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_HEADER_BYTES,
  decodePayload,
  encodeFrame,
  forwardFrame,
  FrameDecoder,
  FrameEncodeError,
  parseAddress,
  swapId,
  writeFrame,
  type AnswerHeader,
  type FrameHeader,
  type FrameLimits,
  type RequestHeader,
} from './frame.js';
export { hostResolver, RpcServer, type RpcResolver, type RpcServerOptions, type RpcServerStats, type RpcTarget } from './tcp-server.js';
export { TcpTransport, type TcpTransportOptions } from './tcp-transport.js';
export { Forwarder, type ForwarderOptions, type ForwarderStats, type ForwardRoute } from './forwarder.js';
export { HttpTransport, MSGPACK_TYPE, rpcHttpPlugin, type HttpTransportOptions, type RpcHttpOptions } from './http-transport.js';
