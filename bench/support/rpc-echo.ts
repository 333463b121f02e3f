/**
 * What every contender of bench:rpc serves and calls: an echo of a ~1 KB order-like payload,
 * as an Evolith contract, a grpc-js service definition (no .proto: custom (de)serialisers) and a
 * Moleculer serializer. Shared by the bench (clients) and bench/support/rpc-servers.ts (servers).
 */
import Moleculer from 'moleculer';
import { Packr, Unpackr } from 'msgpackr';
import { z } from 'zod';
import { defineContract } from '../../src/contract/define.js';
import { implement } from '../../src/kernel/service.js';

const item = z.object({ sku: z.string(), title: z.string(), qty: z.number().int(), price: z.number() });
const order = z.object({
  id: z.number().int(),
  customer: z.string(),
  tags: z.array(z.string()),
  items: z.array(item),
  note: z.string(),
});
export type Order = z.infer<typeof order>;

export const benchContract = defineContract({
  name: 'bench',
  version: '1.0.0',
  methods: { echo: { input: order, output: order } },
});

export const benchService = implement(benchContract, {
  handlers: {
    async echo(input) {
      return input;
    },
  },
});

/** About 1 KB as msgpack (a little more as JSON); the exact sizes are printed by the bench. */
export const payload: Order = {
  id: 271828,
  customer: 'icyfenix',
  tags: ['books', 'priority', 'gift-wrap', 'eu-west'],
  items: Array.from({ length: 8 }, (_, i) => ({ sku: `SKU-${10_000 + i}`, title: `Volume ${i + 1} of a long-running series`, qty: 1 + (i % 3), price: 19.99 + i })),
  note: 'Leave the parcel with the neighbour at number 12 if nobody answers the door. '.repeat(4),
};

// The same msgpack settings Evolith's transports use (plain maps, no records).
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

export type Codec = 'msgpackr' | 'json';

export const codecs: Record<Codec, { encode(v: unknown): Buffer; decode(b: Buffer): any }> = {
  msgpackr: { encode: (v) => packr.pack(v), decode: (b) => unpackr.unpack(b) },
  json: { encode: (v) => Buffer.from(JSON.stringify(v)), decode: (b) => JSON.parse(b.toString('utf8')) },
};

/** grpc-js unary method defined in plain JS: no .proto file and no code generation. */
export function grpcDefinition(codec: Codec) {
  const c = codecs[codec];
  return {
    echo: {
      path: '/evolith.bench.Bench/Echo',
      requestStream: false,
      responseStream: false,
      requestSerialize: c.encode,
      requestDeserialize: c.decode,
      responseSerialize: c.encode,
      responseDeserialize: c.decode,
    },
  } as const;
}

/**
 * Moleculer's built-in MsgPack serializer needs the msgpack5 package, which is not installed;
 * this gives Moleculer the same msgpack codec (msgpackr) Evolith uses, through its own serializer API.
 */
export class MsgpackrSerializer extends Moleculer.Serializers.Base {
  override serialize(obj: Record<string, unknown>): Buffer {
    return packr.pack(obj);
  }
  override deserialize(buf: Buffer): Record<string, unknown> {
    return unpackr.unpack(buf);
  }
}

export type MoleculerSerializer = 'msgpackr' | 'JSON';

export function moleculerSerializer(kind: MoleculerSerializer): Moleculer.Serializer | string {
  return kind === 'msgpackr' ? new MsgpackrSerializer() : 'JSON';
}
