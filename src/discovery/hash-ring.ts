/**
 * A consistent-hash ring with virtual nodes: each endpoint owns many small arcs, so keys
 * spread evenly, and adding or removing one of n endpoints moves only about 1/n of the keys.
 */
import type { Endpoint } from '../kernel/plugins.js';

/** 32-bit FNV-1a with murmur3's finaliser for avalanche (FNV alone clusters similar strings). */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export class HashRing<E extends Endpoint = Endpoint> {
  private readonly points: Uint32Array;
  private readonly owners: E[];

  /** Endpoints are placed by id, so an instance keeps its arcs when it moves address. */
  constructor(endpoints: readonly E[], virtualNodes = 160) {
    const entries: Array<[number, E]> = [];
    for (const e of endpoints) for (let v = 0; v < virtualNodes; v++) entries.push([hash32(`${e.id}#${v}`), e]);
    // Ties (rare) resolve by id so every client builds the same ring.
    entries.sort((a, b) => a[0] - b[0] || (a[1].id < b[1].id ? -1 : a[1].id > b[1].id ? 1 : 0));
    this.points = Uint32Array.from(entries, (x) => x[0]);
    this.owners = entries.map((x) => x[1]);
  }

  get size(): number {
    return this.points.length;
  }

  /** The endpoint owning `key`: the first point clockwise from the key's hash. */
  lookup(key: string): E | undefined {
    const n = this.points.length;
    if (n === 0) return undefined;
    const h = hash32(key);
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.points[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return this.owners[lo === n ? 0 : lo];
  }
}
