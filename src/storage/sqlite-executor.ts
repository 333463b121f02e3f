import {
  DefaultQueryExecutor,
  SingleConnectionProvider,
  type CompiledQuery,
  type ConnectionProvider,
  type DatabaseConnection,
  type DialectAdapter,
  type KyselyPlugin,
  type QueryCompiler,
  type QueryExecutor,
  type QueryId,
  type QueryResult,
  type RootOperationNode,
  type UnknownRow,
} from 'kysely';
import { ConnectionLease, type SerialConnection } from './serial-connection.js';

/** Where an executor's queries go: the shared connection whenever it is free, or one lease. */
type Target = SerialConnection | ConnectionLease;

/**
 * Kysely's query executor for a {@link SerialConnection}: compiles as Kysely does, then runs the
 * statement synchronously, skipping the connection provider, driver wrapper and mutex that the
 * stock executor goes through for every query (several promise hops per query). Queries of a
 * transaction go straight to its lease. Plugins work as in Kysely: queries through
 * `transformQuery`, results through `transformResult`.
 */
export class SqliteExecutor implements QueryExecutor {
  constructor(
    private readonly compiler: QueryCompiler,
    readonly adapter: DialectAdapter,
    private readonly target: Target,
    readonly plugins: ReadonlyArray<KyselyPlugin> = [],
  ) {}

  transformQuery<T extends RootOperationNode>(node: T, queryId: QueryId): T {
    for (const plugin of this.plugins) {
      const transformed = plugin.transformQuery({ node, queryId });
      // Kysely's own check: a plugin may rewrite a query, never turn it into another kind.
      if (transformed.kind !== node.kind) {
        throw new Error(`KyselyPlugin.transformQuery must return a node of the same kind that was given to it. The plugin was given a ${node.kind} but it returned a ${transformed.kind}`);
      }
      node = transformed as T;
    }
    return node;
  }

  compileQuery<R = unknown>(node: RootOperationNode, queryId: QueryId): CompiledQuery<R> {
    return this.compiler.compileQuery(node, queryId) as CompiledQuery<R>;
  }

  executeQuery<R>(query: CompiledQuery<R>): Promise<QueryResult<R>> {
    const result = this.target instanceof ConnectionLease ? this.target.executeQuery<R>(query) : this.target.execute<R>(query);
    if (this.plugins.length === 0) return result;
    return result.then((r) => this.transformResult(r, query.queryId));
  }

  async *stream<R>(query: CompiledQuery<R>, chunkSize: number): AsyncIterableIterator<QueryResult<R>> {
    const lease = this.target instanceof ConnectionLease ? this.target : await this.target.acquire();
    try {
      for await (const chunk of lease.streamQuery<R>(query, chunkSize)) yield await this.transformResult(chunk, query.queryId);
    } finally {
      if (lease !== this.target) (this.target as SerialConnection).release(lease);
    }
  }

  provideConnection<T>(consumer: (connection: DatabaseConnection) => Promise<T>): Promise<T> {
    if (this.target instanceof ConnectionLease) {
      if (!this.target.active) return Promise.reject(new Error('this connection was already released: its transaction or connection block has ended'));
      return consumer(this.target);
    }
    return this.target.provideConnection(consumer);
  }

  /**
   * Kysely runs a transaction (or a pinned connection block) by wrapping the lease it was given
   * in a provider; when that lease is ours, its queries go to it directly. Any other provider
   * gets Kysely's stock executor, which works with every provider.
   */
  withConnectionProvider(provider: ConnectionProvider): QueryExecutor {
    const lease = leaseBehind(provider);
    if (lease) return new SqliteExecutor(this.compiler, this.adapter, lease, this.plugins);
    return new DefaultQueryExecutor(this.compiler, this.adapter, provider, [...this.plugins]);
  }

  withPlugin(plugin: KyselyPlugin): QueryExecutor {
    return new SqliteExecutor(this.compiler, this.adapter, this.target, [...this.plugins, plugin]);
  }

  withPlugins(plugins: ReadonlyArray<KyselyPlugin>): QueryExecutor {
    return new SqliteExecutor(this.compiler, this.adapter, this.target, [...this.plugins, ...plugins]);
  }

  withPluginAtFront(plugin: KyselyPlugin): QueryExecutor {
    return new SqliteExecutor(this.compiler, this.adapter, this.target, [plugin, ...this.plugins]);
  }

  withoutPlugins(): QueryExecutor {
    return new SqliteExecutor(this.compiler, this.adapter, this.target, []);
  }

  private async transformResult<R>(result: QueryResult<R>, queryId: QueryId): Promise<QueryResult<R>> {
    let r = result as QueryResult<UnknownRow>;
    for (const plugin of this.plugins) r = await plugin.transformResult({ result: r, queryId });
    return r as QueryResult<R>;
  }
}

/**
 * The lease inside a provider, found without waiting. A SingleConnectionProvider that nobody
 * is using hands its connection to a consumer synchronously; any other provider (or a busy
 * one) yields nothing here, and the caller falls back to the general path.
 */
function leaseBehind(provider: ConnectionProvider): ConnectionLease | undefined {
  if (!(provider instanceof SingleConnectionProvider)) return undefined;
  let found: DatabaseConnection | undefined;
  provider
    .provideConnection(async (connection) => {
      found = connection;
    })
    .catch(() => undefined);
  // Assigned inside the callback, which TypeScript's narrowing does not follow.
  const connection = found as DatabaseConnection | undefined;
  return connection instanceof ConnectionLease && connection.active ? connection : undefined;
}
