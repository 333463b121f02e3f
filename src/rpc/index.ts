/** Evolith's RPC layer: the TCP transport (binary frames) and the HTTP interop transport. */
export { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FrameDecoder, FrameEncodeError, parseAddress, type Message, type RequestMessage, type ResponseMessage } from './frame.js';
export { hostResolver, RpcServer, type RpcResolver, type RpcServerOptions, type RpcServerStats, type RpcTarget } from './tcp-server.js';
export { TcpTransport, type TcpTransportOptions } from './tcp-transport.js';
export { HttpTransport, MSGPACK_TYPE, rpcHttpPlugin, type HttpTransportOptions, type RpcHttpOptions } from './http-transport.js';
