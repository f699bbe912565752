// Sandboxes from a program: create one, run commands in it (buffered or streamed),
// move files in and out, list and kill its processes, and end it.
//
//   const sb = await Sandbox.create({ image: "python:3.12", timeoutMs: 60_000 });
//   const r = await sb.exec(["python3", "-c", "print(1)"]);
//   await sb.files.write("/tmp/in.txt", "data");
//   await sb.kill();

import WebSocket from "ws";
import { type ClientOptions, MmApiError, MmClient } from "./client.js";
import type { ExecResult, LogEntry, Machine, MachineEvent, Process } from "./types.js";

export interface SandboxCreateOptions {
  /** Image reference; the embedded busybox image when absent. */
  readonly image?: string;
  readonly name?: string;
  /** Hard lifetime in ms (default 10 min): the sandbox ends itself then. */
  readonly timeoutMs?: number;
  /** Ended after this long without an exec session (a file transfer is one too). */
  readonly idleTimeoutMs?: number;
  readonly cpus?: number;
  readonly memoryMib?: number;
  /** Root disk throttle (bytes/s, operations/s) and network limit each way (bytes/s, bridge). */
  readonly diskBps?: number;
  readonly diskIops?: number;
  readonly netBps?: number;
  /** allow, deny, or CIDR[:port[/proto]],... (bridge network, root) */
  readonly egress?: string;
  readonly network?: "bridge" | "user" | "none";
  /** Accept TCG emulation where the host has no KVM: it is not a hardware boundary. */
  readonly allowTcg?: boolean;
  readonly insecureRegistries?: readonly string[];
  /** An existing client, or how to reach the API. */
  readonly client?: MmClient | ClientOptions;
  readonly signal?: AbortSignal;
}

export interface ExecOptions {
  readonly env?: readonly string[];
  readonly user?: string;
  readonly workdir?: string;
  readonly stdin?: string | Uint8Array;
  readonly signal?: AbortSignal;
}

/** The result of a buffered exec, decoded. */
export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
  readonly stdoutBytes: Uint8Array;
  readonly stderrBytes: Uint8Array;
  /** Output beyond the server's cap was dropped. */
  readonly truncated: boolean;
}

/** A running process started by `execStream`. */
export interface ExecStream {
  /** Output as it comes (each chunk tagged with its stream); ends when the process exits. */
  readonly output: AsyncIterable<{ readonly stream: "stdout" | "stderr"; readonly data: Uint8Array }>;
  write(data: string | Uint8Array): void;
  /** Closes the process's stdin. */
  end(): void;
  /** Sends a signal (number) to the process. */
  kill(signal?: number): void;
  /** Settles with the exit code once the process has exited. */
  readonly exited: Promise<number>;
}

const asBytes = (d: string | Uint8Array) => (typeof d === "string" ? Buffer.from(d, "utf8") : Buffer.from(d));

export class Sandbox {
  private constructor(
    readonly client: MmClient,
    private machine: Machine,
    private readonly ownClient: boolean,
  ) {}

  get id(): string {
    return this.machine.id;
  }
  get name(): string {
    return this.machine.name;
  }
  get info(): Machine {
    return this.machine;
  }

  static async create(options: SandboxCreateOptions = {}): Promise<Sandbox> {
    const own = !(options.client instanceof MmClient);
    const client = options.client instanceof MmClient ? options.client : new MmClient(options.client);
    const { client: _c, signal, ...body } = options;
    try {
      const m = await client.json<Machine>("POST", "/v1/sandboxes", { body, ...(signal && { signal }) });
      return new Sandbox(client, m, own);
    } catch (e) {
      if (own) await client.close();
      throw e;
    }
  }

  /** An existing sandbox, by name or id. */
  static async connect(ref: string, client: MmClient | ClientOptions = {}): Promise<Sandbox> {
    const c = client instanceof MmClient ? client : new MmClient(client);
    return new Sandbox(
      c,
      await c.json<Machine>("GET", `/v1/machines/${encodeURIComponent(ref)}`),
      !(client instanceof MmClient),
    );
  }

  private path(rest: string): string {
    return `/v1/machines/${encodeURIComponent(this.machine.id)}${rest}`;
  }

  /** Runs a command to completion and returns its output. */
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<CommandResult> {
    const r = await this.client.json<ExecResult>("POST", this.path("/exec"), {
      body: {
        argv,
        ...(opts.env && { env: opts.env }),
        ...(opts.user !== undefined && { user: opts.user }),
        ...(opts.workdir !== undefined && { workdir: opts.workdir }),
        ...(opts.stdin !== undefined && { stdin: asBytes(opts.stdin).toString("base64") }),
      },
      ...(opts.signal && { signal: opts.signal }),
    });
    const out = Buffer.from(r.stdout, "base64");
    const err = Buffer.from(r.stderr, "base64");
    return {
      exitCode: r.exitCode,
      stdout: out.toString("utf8"),
      stderr: err.toString("utf8"),
      stdoutBytes: new Uint8Array(out),
      stderrBytes: new Uint8Array(err),
      truncated: r.truncated,
    };
  }

  /** Starts a command with streamed stdin and output (a WebSocket to the API). */
  execStream(argv: readonly string[], opts: Omit<ExecOptions, "stdin"> = {}): ExecStream {
    const ws = new WebSocket(`${this.client.wsBase}${this.path("/exec/ws")}`, { headers: this.client.headers() });
    const queue: { stream: "stdout" | "stderr"; data: Uint8Array }[] = [];
    let wake: (() => void) | null = null;
    let finished = false;
    const pendingSend: Buffer[] = [];
    let pendingEnd = false;
    let open = false;
    const notify = () => {
      wake?.();
      wake = null;
    };
    const exited = new Promise<number>((resolve, reject) => {
      ws.on("open", () => {
        open = true;
        ws.send(JSON.stringify({ type: "start", argv, ...opts, signal: undefined }));
        for (const b of pendingSend.splice(0)) ws.send(b);
        if (pendingEnd) ws.send(JSON.stringify({ type: "eof" }));
      });
      ws.on("message", (data: Buffer, isBinary: boolean) => {
        if (isBinary) {
          queue.push({ stream: data[0] === 2 ? "stderr" : "stdout", data: new Uint8Array(data.subarray(1)) });
          notify();
          return;
        }
        const msg = JSON.parse(data.toString("utf8")) as {
          type: string;
          exitCode?: number;
          error?: { code: string; message: string; hint: string };
        };
        if (msg.type === "exit") resolve(msg.exitCode ?? -1);
        else if (msg.type === "error" && msg.error) {
          reject(new MmApiError(msg.error.code, msg.error.message, msg.error.hint, 0));
        }
      });
      ws.on("close", () => {
        finished = true;
        notify();
        reject(new MmApiError("MM_ENGINE_IO", "the exec stream closed before the process exited", "", 0));
      });
      ws.on("error", (e) => reject(e));
      opts.signal?.addEventListener("abort", () => ws.close());
    });
    exited.catch(() => undefined);
    return {
      exited,
      output: {
        async *[Symbol.asyncIterator]() {
          for (;;) {
            const next = queue.shift();
            if (next) {
              yield next;
              continue;
            }
            if (finished) return;
            await new Promise<void>((r) => {
              wake = r;
            });
          }
        },
      },
      write(data) {
        const b = asBytes(data);
        if (open) ws.send(b);
        else pendingSend.push(b);
      },
      end() {
        if (open) ws.send(JSON.stringify({ type: "eof" }));
        else pendingEnd = true;
      },
      kill(signal = 15) {
        if (open) ws.send(JSON.stringify({ type: "signal", signal }));
      },
    };
  }

  readonly files = {
    write: async (path: string, data: string | Uint8Array, opts: { signal?: AbortSignal } = {}): Promise<number> => {
      const r = await this.client.json<{ bytes: number }>("PUT", this.path("/files"), {
        query: { path },
        raw: asBytes(data),
        ...(opts.signal && { signal: opts.signal }),
      });
      return r.bytes;
    },
    read: (path: string, opts: { signal?: AbortSignal } = {}): Promise<Uint8Array> =>
      this.client.bytes("GET", this.path("/files"), { query: { path }, ...(opts.signal && { signal: opts.signal }) }),
    readText: async (path: string): Promise<string> =>
      Buffer.from(await this.client.bytes("GET", this.path("/files"), { query: { path } })).toString("utf8"),
  };

  processes(): Promise<Process[]> {
    return this.client.json<Process[]>("GET", this.path("/processes"));
  }

  async killProcess(pid: number, signal = "TERM"): Promise<void> {
    await this.client.json("POST", this.path(`/processes/${pid}/kill`), { body: { signal } });
  }

  /** The sandbox's lifecycle events, as they happen (ends when `signal` aborts). */
  async *events(opts: { signal?: AbortSignal } = {}): AsyncGenerator<MachineEvent> {
    for await (const e of this.client.lines<MachineEvent>("/v1/events", {
      query: { follow: "true" },
      ...(opts.signal && { signal: opts.signal }),
    })) {
      if (e.machineId === this.machine.id) yield e;
    }
  }

  /**
   * The sandbox's log (console and its workload's output), as it is written; with
   * `follow: false` what is there now. Ends with the sandbox, or when `signal` aborts.
   */
  async *logs(opts: { follow?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<LogEntry> {
    const wire = (e: { time: number; stream: string; data: string }): LogEntry => ({
      time: e.time,
      stream: e.stream as LogEntry["stream"],
      data: new Uint8Array(Buffer.from(e.data, "base64")),
    });
    if (opts.follow === false) {
      const all = await this.client.json<{ time: number; stream: string; data: string }[]>("GET", this.path("/logs"), {
        ...(opts.signal && { signal: opts.signal }),
      });
      for (const e of all) yield wire(e);
      return;
    }
    for await (const e of this.client.lines<{ time: number; stream: string; data: string }>(this.path("/logs"), {
      query: { follow: "true" },
      ...(opts.signal && { signal: opts.signal }),
    })) {
      yield wire(e);
    }
  }

  async refresh(): Promise<Machine> {
    this.machine = await this.client.json<Machine>("GET", this.path(""));
    return this.machine;
  }

  /** Ends the sandbox now (it is removed with everything in it). */
  async kill(): Promise<void> {
    try {
      await this.client.json("DELETE", this.path(""), { query: { force: "true" } });
    } catch (e) {
      if (!(e instanceof MmApiError && e.code === "MM_NO_SUCH_MACHINE")) throw e;
    } finally {
      if (this.ownClient) await this.client.close();
    }
  }
}
