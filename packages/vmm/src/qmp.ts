// A small QMP client over an already-connected socket. Hand-written because no
// maintained QMP package exists on npm; QMP is line-delimited JSON and tiny.

import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import { MmError } from "@mm/core";

/** QEMU's replies are small; a line longer than this means something is wrong. */
const MAX_LINE = 1 << 20;

export interface QmpEvent {
  readonly event: string;
  readonly data?: Record<string, unknown>;
  readonly timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
}

export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private buffer = "";
  private pending: Pending[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private greeting: Pending | null = null;
  private closed = false;

  constructor(private readonly socket: Socket) {
    super();
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => this.onData(d));
    socket.on("close", () => this.onClose());
    socket.on("error", () => this.onClose());
  }

  /** Waits for QEMU's greeting and leaves capabilities negotiation mode. */
  async handshake(timeoutMs = 5000): Promise<void> {
    await withTimeout(
      new Promise((resolve, reject) => {
        this.greeting = { resolve, reject };
      }),
      timeoutMs,
      "QMP greeting",
    );
    await this.execute("qmp_capabilities");
  }

  execute(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<unknown> {
    const run = () =>
      withTimeout(
        new Promise<unknown>((resolve, reject) => {
          if (this.closed) return reject(new MmError("MM_ENGINE_IO", `QMP ${command}: connection closed`));
          this.pending.push({ resolve, reject });
          this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
        }),
        timeoutMs,
        `QMP ${command}`,
      );
    const result = this.chain.then(run, run);
    this.chain = result.catch(() => undefined);
    return result;
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(d: string): void {
    this.buffer += d;
    if (this.buffer.length > MAX_LINE && !this.buffer.includes("\n")) {
      this.socket.destroy(new Error("QMP line too long"));
      return;
    }
    let nl = this.buffer.indexOf("\n");
    while (nl >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (line) this.onMessage(line);
      nl = this.buffer.indexOf("\n");
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    if ("QMP" in msg) {
      this.greeting?.resolve(msg);
      this.greeting = null;
    } else if ("event" in msg) {
      this.emit("event", msg as unknown as QmpEvent);
    } else if ("return" in msg) {
      this.pending.shift()?.resolve(msg.return);
    } else if ("error" in msg) {
      const err = msg.error as { class?: string; desc?: string };
      this.pending.shift()?.reject(new MmError("MM_ENGINE_IO", `QMP: ${err.class ?? "Error"}: ${err.desc ?? ""}`));
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    const err = new MmError("MM_ENGINE_IO", "QMP connection closed");
    this.greeting?.reject(err);
    for (const p of this.pending.splice(0)) p.reject(err);
    this.emit("close");
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new MmError("MM_ENGINE_IO", `${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
