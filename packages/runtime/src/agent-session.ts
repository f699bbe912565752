// The host end of the agent channel (docs/PROTOCOL.md). The guest is hostile until
// proven otherwise: every frame is decoded with capped lengths, checked for shape
// and order, and any violation closes the channel and reports MM_AGENT_PROTOCOL.

import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import {
  decodeExit,
  decodeGuestError,
  decodeHello,
  decodeReady,
  type ExitStatus,
  encodeConfig,
  encodeFrame,
  encodeU32,
  FrameDecoder,
  FrameType,
  type GuestError,
  type Hello,
  MmError,
  PROTOCOL_VERSION,
  type WorkloadConfig,
} from "@mm/core";

export interface AgentSessionEvents {
  hello: [Hello];
  ready: [{ pid: number }];
  stdout: [Buffer];
  stderr: [Buffer];
  exit: [ExitStatus];
  guestError: [GuestError];
  protocolError: [MmError];
  close: [];
}

export class AgentSession extends EventEmitter<AgentSessionEvents> {
  private readonly decoder = new FrameDecoder();
  private phase: "hello" | "config" | "started" | "exited" = "hello";
  private closed = false;

  constructor(private readonly socket: Socket) {
    super();
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("close", () => this.onClose());
    socket.on("error", () => this.onClose());
  }

  get isClosed(): boolean {
    return this.closed;
  }

  sendConfig(cfg: WorkloadConfig): void {
    if (this.phase !== "config") throw new MmError("MM_INTERNAL", `CONFIG sent in phase ${this.phase}`);
    this.send(FrameType.CONFIG, encodeConfig(cfg));
    this.phase = "started";
  }

  signal(sig: number): void {
    this.send(FrameType.SIGNAL, encodeU32(sig));
  }

  poweroff(): void {
    this.send(FrameType.POWEROFF);
  }

  close(): void {
    this.socket.destroy();
  }

  /** Pauses reading from the guest (flow control: the guest's writes then block). */
  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  private send(type: number, payload?: Buffer): void {
    if (!this.closed) this.socket.write(encodeFrame(type, payload));
  }

  private onData(d: Buffer): void {
    try {
      for (const f of this.decoder.push(d)) this.onFrame(f.type, f.stream, f.payload);
    } catch (e) {
      this.violation(e instanceof MmError ? e : new MmError("MM_AGENT_PROTOCOL", String(e)));
    }
  }

  private onFrame(type: number, stream: number, payload: Buffer): void {
    if (stream !== 0) throw new MmError("MM_AGENT_PROTOCOL", `frame on stream ${stream} in protocol v1`);
    switch (type) {
      case FrameType.HELLO: {
        if (this.phase !== "hello") throw new MmError("MM_AGENT_PROTOCOL", "second HELLO");
        const hello = decodeHello(payload);
        if (hello.minVersion > PROTOCOL_VERSION || hello.maxVersion < PROTOCOL_VERSION) {
          throw new MmError(
            "MM_AGENT_PROTOCOL",
            `guest speaks versions ${hello.minVersion}-${hello.maxVersion}, host ${PROTOCOL_VERSION}`,
          );
        }
        this.phase = "config";
        this.emit("hello", hello);
        return;
      }
      case FrameType.READY:
        this.expect("started", "READY");
        this.emit("ready", decodeReady(payload));
        return;
      case FrameType.STDOUT:
        this.expect("started", "STDOUT");
        this.emit("stdout", payload);
        return;
      case FrameType.STDERR:
        this.expect("started", "STDERR");
        this.emit("stderr", payload);
        return;
      case FrameType.ERROR:
        this.expect("started", "ERROR");
        this.emit("guestError", decodeGuestError(payload));
        return;
      case FrameType.EXIT: {
        this.expect("started", "EXIT");
        const status = decodeExit(payload);
        this.phase = "exited";
        this.emit("exit", status);
        return;
      }
      case FrameType.CONFIG:
      case FrameType.STDIN:
      case FrameType.SIGNAL:
      case FrameType.POWEROFF:
        throw new MmError("MM_AGENT_PROTOCOL", `host-only frame type ${type} sent by the guest`);
      default:
        return; // unknown types are ignored: the guest may be newer
    }
  }

  private expect(phase: typeof this.phase, what: string): void {
    if (this.phase !== phase) throw new MmError("MM_AGENT_PROTOCOL", `${what} while ${this.phase}`);
  }

  private violation(e: MmError): void {
    if (this.closed) return;
    this.emit("protocolError", e);
    this.socket.destroy();
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.emit("close");
  }
}
