// The transport: JSON requests to the mm API over its unix socket (undici's Agent with a
// socketPath; Node's fetch alone cannot reach one) or over TCP with a bearer token.
// Every non-2xx answer becomes an MmApiError carrying the API's code and hint.

import { homedir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { Agent, type Dispatcher, request } from "undici";

export interface ClientOptions {
  /**
   * `unix:///path/to/api.sock` or `http://host:port`. Default: $MM_HOST, else mm's own
   * socket (root: /var/lib/mm/api.sock; a user: ~/.local/state/mm/api.sock).
   */
  readonly host?: string;
  /** Bearer token (TCP only). Default: $MM_API_TOKEN. */
  readonly token?: string;
}

/** An error answered by the API: `code` is one of mm's stable codes (docs/errors.md). */
export class MmApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly hint: string,
    readonly status: number,
  ) {
    super(message);
    this.name = "MmApiError";
  }
}

export function defaultHost(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MM_HOST) return env.MM_HOST;
  const state =
    process.getuid?.() === 0
      ? "/var/lib/mm"
      : join(env.XDG_STATE_HOME || join(env.HOME || homedir(), ".local/state"), "mm");
  return `unix://${join(state, "api.sock")}`;
}

export interface RequestOptions {
  readonly body?: unknown;
  /** A raw body (file upload), sent as application/octet-stream. */
  readonly raw?: Uint8Array | Readable;
  readonly query?: Record<string, string>;
  readonly signal?: AbortSignal;
}

export class MmClient {
  readonly host: string;
  private readonly token: string | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly origin: string;
  /** For WebSockets: `ws+unix:///sock:` or `ws://host:port`. */
  readonly wsBase: string;

  constructor(options: ClientOptions = {}) {
    this.host = options.host ?? defaultHost();
    this.token = options.token ?? process.env.MM_API_TOKEN;
    if (this.host.startsWith("unix://")) {
      const socketPath = this.host.slice("unix://".length);
      this.dispatcher = new Agent({ connect: { socketPath } });
      this.origin = "http://localhost";
      this.wsBase = `ws+unix://${socketPath}:`;
    } else if (/^https?:\/\//.test(this.host)) {
      this.dispatcher = new Agent();
      this.origin = this.host.replace(/\/+$/, "");
      this.wsBase = this.origin.replace(/^http/, "ws");
    } else {
      throw new TypeError(`host "${this.host}": use unix:///path or http://host:port`);
    }
  }

  headers(): Record<string, string> {
    return this.token ? { authorization: `Bearer ${this.token}` } : {};
  }

  /** A request answered with JSON (or nothing); non-2xx throws MmApiError. */
  async json<T>(method: Dispatcher.HttpMethod, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.send(method, path, opts);
    const text = await res.body.text();
    return (text ? JSON.parse(text) : undefined) as T;
  }

  /** A request whose answer is raw bytes (file download). */
  async bytes(method: Dispatcher.HttpMethod, path: string, opts: RequestOptions = {}): Promise<Uint8Array> {
    const res = await this.send(method, path, opts);
    return new Uint8Array(await res.body.arrayBuffer());
  }

  /** A request whose answer is a stream of JSON lines (events with follow). */
  async *lines<T>(path: string, opts: RequestOptions = {}): AsyncGenerator<T> {
    const res = await this.send("GET", path, opts);
    let pending = "";
    try {
      for await (const chunk of res.body) {
        pending += Buffer.from(chunk as Uint8Array).toString("utf8");
        const lines = pending.split("\n");
        pending = lines.pop() ?? "";
        for (const l of lines) if (l.trim()) yield JSON.parse(l) as T;
      }
    } catch (e) {
      if (opts.signal?.aborted) return;
      throw e;
    }
  }

  private async send(method: Dispatcher.HttpMethod, path: string, opts: RequestOptions) {
    const query = opts.query ? `?${new URLSearchParams(opts.query).toString()}` : "";
    const headers: Record<string, string> = { ...this.headers() };
    let body: string | Uint8Array | Readable | undefined;
    if (opts.raw !== undefined) {
      headers["content-type"] = "application/octet-stream";
      body = opts.raw;
    } else if (opts.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    const res = await request(`${this.origin}${path}${query}`, {
      method,
      headers,
      ...(body !== undefined && { body }),
      dispatcher: this.dispatcher,
      ...(opts.signal && { signal: opts.signal }),
    });
    if (res.statusCode >= 300) {
      const text = await res.body.text();
      let err: { code?: string; message?: string; hint?: string } = {};
      try {
        err = (JSON.parse(text) as { error?: typeof err }).error ?? {};
      } catch {
        // not the API's JSON: keep the status
      }
      throw new MmApiError(
        err.code ?? "MM_HTTP",
        err.message ?? `HTTP ${res.statusCode}`,
        err.hint ?? "",
        res.statusCode,
      );
    }
    return res;
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }
}
