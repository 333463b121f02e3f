/** Tiny fetch helpers for the acceptance tests: Node 20's global fetch, nothing else. */

export interface Reply<T = any> {
  status: number;
  headers: Headers;
  /** The raw body text ('' when empty). */
  text: string;
  /** The body parsed as JSON, or undefined when it is empty or not JSON. */
  body: T;
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface RequestOptions {
  /** Sent as `Authorization: bearer <token>`. */
  token?: string;
  /** Serialised as a JSON body. */
  json?: unknown;
  /** Sent as application/x-www-form-urlencoded. */
  form?: Record<string, string>;
  /** A raw body, sent as is (set `contentType`). */
  raw?: string;
  contentType?: string;
  headers?: Record<string, string>;
  query?: Query;
  timeoutMs?: number;
}

export class Http {
  readonly baseUrl: string;

  constructor(baseUrl: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
  }

  url(path: string, query?: Query): string {
    const url = new URL(this.baseUrl + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    return url.toString();
  }

  async request<T = any>(method: string, path: string, options: RequestOptions = {}): Promise<Reply<T>> {
    const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
    let body: string | undefined;
    if (options.json !== undefined) {
      body = JSON.stringify(options.json);
      headers['content-type'] = 'application/json';
    } else if (options.form !== undefined) {
      body = new URLSearchParams(options.form).toString();
      headers['content-type'] = 'application/x-www-form-urlencoded';
    } else if (options.raw !== undefined) {
      body = options.raw;
      headers['content-type'] = options.contentType ?? 'application/json';
    }
    if (options.token !== undefined) headers.authorization = `bearer ${options.token}`;
    const res = await fetch(this.url(path, options.query), {
      method,
      headers,
      body,
      signal: AbortSignal.timeout(options.timeoutMs ?? 20_000),
    });
    const text = await res.text();
    let parsed: any;
    if (text.length > 0) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
    }
    return { status: res.status, headers: res.headers, text, body: parsed };
  }

  get<T = any>(path: string, options?: RequestOptions) {
    return this.request<T>('GET', path, options);
  }
  post<T = any>(path: string, json?: unknown, options: RequestOptions = {}) {
    return this.request<T>('POST', path, { ...options, json });
  }
  put<T = any>(path: string, json?: unknown, options: RequestOptions = {}) {
    return this.request<T>('PUT', path, { ...options, json });
  }
  patch<T = any>(path: string, options?: RequestOptions) {
    return this.request<T>('PATCH', path, options);
  }
  delete<T = any>(path: string, options?: RequestOptions) {
    return this.request<T>('DELETE', path, options);
  }
  /** POST an application/x-www-form-urlencoded body. */
  postForm<T = any>(path: string, form: Record<string, string>, options: RequestOptions = {}) {
    return this.request<T>('POST', path, { ...options, form });
  }
}

/** The OAuth2 client the bookstore's front end uses. */
export const CLIENT = { id: 'bookstore_frontend', secret: 'bookstore_secret' } as const;

export interface TokenPair {
  access_token: string;
  token_type: string;
  refresh_token: string;
  expires_in: number;
  scope: string;
  authorities: string[];
  username: string;
  jti: string;
}

/** Password grant; throws with the server's answer when it is not 200. */
export async function login(http: Http, username: string, password: string): Promise<TokenPair> {
  const reply = await http.get<TokenPair>('/oauth/token', {
    query: { grant_type: 'password', username, password, client_id: CLIENT.id, client_secret: CLIENT.secret },
  });
  if (reply.status !== 200 || typeof reply.body?.access_token !== 'string') {
    throw new Error(`login as ${username} failed: ${reply.status} ${reply.text}`);
  }
  return reply.body;
}
