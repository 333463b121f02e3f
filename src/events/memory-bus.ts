import type { EventBus, EventEnvelope } from '../kernel/plugins.js';

/**
 * In-process event bus: one delivery per subscribing group, awaited, so a failure leaves the
 * event in its outbox for another attempt. Durability comes from the outbox, not from here.
 */
export class MemoryEventBus implements EventBus {
  readonly name = 'memory';
  private readonly topics = new Map<string, Map<string, (e: EventEnvelope) => Promise<void>>>();

  subscribe(topic: string, group: string, handler: (e: EventEnvelope) => Promise<void>): () => void {
    let groups = this.topics.get(topic);
    if (!groups) this.topics.set(topic, (groups = new Map()));
    if (groups.has(group)) throw new Error(`group ${group} already subscribes to ${topic}`);
    groups.set(group, handler);
    return () => groups!.delete(group);
  }

  async publish(event: EventEnvelope): Promise<void> {
    const groups = this.topics.get(event.topic);
    if (!groups || groups.size === 0) return;
    const results = await Promise.allSettled([...groups.values()].map((h) => h(event)));
    const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed.length > 0) throw failed[0]!.reason;
  }

  async close(): Promise<void> {
    this.topics.clear();
  }
}
