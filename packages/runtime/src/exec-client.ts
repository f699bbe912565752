// The client end of an exec session (what `mm exec`, `mm cp` and the SDK use): connects
// to a machine's exec endpoint, starts the process, and moves bytes both ways within
// the credit the guest grants, so a slow side never floods the other.

import { EventEmitter } from "node:events";
import { connect, type Socket } from "node:net";
import {
  decodeExit,
  decodeGuestError,
  decodeReady,
  decodeU32,
  type ExecConfig,
  type ExitStatus,
  encodeExec,
  encodeFrame,
  encodeU32,
  encodeWinsize,
  FrameDecoder,
  FrameType,
  type GuestError,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
  MmError,
} from "@mm/core";

const STREAM = 1;
/** Stdin queued beyond this makes write() ask the caller to wait for "drain". */
const HIGH_WATER = 1 << 20;

export interface ExecClientEvents {
  ready: [{ pid: number }];
  stdout: [Buffer];
  stderr: [Buffer];
  exit: [ExitStatus];
  guestError: [GuestError];
  drain: [];
  /** The endpoint went away without an EXIT. */
  lost: [Error];
}

export class ExecClient extends EventEmitter<ExecClientEvents> {
  private readonly decoder = new FrameDecoder();
  private credit = INITIAL_WINDOW;
  private queue: Buffer[] = [];
  private queued = 0;
  private endRequested = false;
  private endSent = false;
  private exited = false;

  private constructor(private readonly socket: Socket) {
    super();
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("close", () => {
      if (!this.exited) this.emit("lost", new MmError("MM_ENGINE_IO", "the exec endpoint closed"));
    });
    socket.on("error", () => undefined);
  }

  static connect(path: string): Promise<ExecClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once("connect", () => resolve(new ExecClient(s)));
      s.once("error", (e: NodeJS.ErrnoException) =>
        reject(
          e.code === "ENOENT" || e.code === "ECONNREFUSED"
            ? new MmError("MM_MACHINE_NOT_RUNNING", "its exec endpoint is not listening")
            : new MmError("MM_ENGINE_IO", e.message, { cause: e }),
        ),
      );
    });
  }

  start(cfg: ExecConfig): void {
    this.send(FrameType.EXEC, encodeExec(cfg));
  }

  /** Queues stdin; returns false when the caller should wait for "drain". */
  write(data: Buffer): boolean {
    if (this.endRequested) throw new MmError("MM_INTERNAL", "write after end");
    this.queue.push(data);
    this.queued += data.length;
    this.flush();
    return this.queued < HIGH_WATER;
  }

  /** Ends stdin once everything queued has gone out. */
  end(): void {
    this.endRequested = true;
    this.flush();
  }

  resize(rows: number, cols: number): void {
    this.send(FrameType.RESIZE, encodeWinsize(rows, cols));
  }

  signal(sig: number): void {
    this.send(FrameType.SIGNAL, encodeU32(sig));
  }

  /** Tells the guest the caller consumed `n` bytes of output (grants that much more). */
  ack(n: number): void {
    if (n > 0) this.send(FrameType.WINDOW, encodeU32(n));
  }

  close(): void {
    this.socket.destroy();
  }

  private send(type: number, payload?: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(encodeFrame(type, payload, STREAM));
  }

  private flush(): void {
    while (this.queue.length > 0 && this.credit > 0) {
      const head = this.queue[0] as Buffer;
      const n = Math.min(head.length, this.credit, MAX_PAYLOAD);
      this.send(FrameType.STDIN, head.subarray(0, n));
      this.credit -= n;
      this.queued -= n;
      if (n === head.length) this.queue.shift();
      else this.queue[0] = head.subarray(n);
    }
    if (this.queued < HIGH_WATER) this.emit("drain");
    if (this.endRequested && !this.endSent && this.queue.length === 0) {
      this.endSent = true;
      this.send(FrameType.STDIN, Buffer.alloc(0));
    }
  }

  private onData(d: Buffer): void {
    try {
      for (const f of this.decoder.push(d)) {
        switch (f.type) {
          case FrameType.READY:
            this.emit("ready", decodeReady(f.payload));
            break;
          case FrameType.STDOUT:
            this.emit("stdout", f.payload);
            break;
          case FrameType.STDERR:
            this.emit("stderr", f.payload);
            break;
          case FrameType.WINDOW:
            this.credit += decodeU32(f.payload, "WINDOW");
            this.flush();
            break;
          case FrameType.ERROR:
            this.emit("guestError", decodeGuestError(f.payload));
            break;
          case FrameType.EXIT:
            this.exited = true;
            this.emit("exit", decodeExit(f.payload));
            this.socket.end();
            break;
          default:
            break;
        }
      }
    } catch (e) {
      this.socket.destroy();
      this.emit("lost", e as Error);
    }
  }
}
