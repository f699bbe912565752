// The host end of the agent channel (docs/PROTOCOL.md). The guest is hostile until
// proven otherwise: every frame is decoded with capped lengths, checked for shape
// and order, and any violation closes the channel and reports MM_AGENT_PROTOCOL.

import { EventEmitter } from "node:events";
import type { Socket } from "node:net";
import {
  decodeConfig,
  decodeExit,
  decodeGuestError,
  decodeHello,
  decodeReady,
  decodeU32,
  type ExecConfig,
  type ExitStatus,
  encodeConfig,
  encodeExec,
  encodeFrame,
  encodeIdentity,
  encodeU32,
  encodeWinsize,
  FrameDecoder,
  FrameType,
  type GuestError,
  type Hello,
  type IdentityConfig,
  INITIAL_WINDOW,
  MAX_ERROR_TEXT,
  MAX_PAYLOAD,
  MAX_SESSIONS,
  MIN_PROTOCOL_VERSION,
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

export interface GuestExecEvents {
  ready: [{ pid: number }];
  stdout: [Buffer];
  stderr: [Buffer];
  exit: [ExitStatus];
  guestError: [GuestError];
  /** The guest granted this many more bytes of stdin. */
  window: [number];
  /** The channel closed before the session's EXIT. */
  lost: [];
}

/** One exec session (a stream ≥ 1) on the agent channel. */
export class GuestExec extends EventEmitter<GuestExecEvents> {
  /** Output bytes the guest may still send before the host grants more. */
  outputCredit = INITIAL_WINDOW;
  /** Stdin bytes the host may still send. */
  stdinCredit = INITIAL_WINDOW;
  ended = false;

  constructor(
    private readonly session: AgentSession,
    readonly stream: number,
  ) {
    super();
  }

  /** Sends stdin; the caller keeps within `stdinCredit` (the guest ends the channel otherwise). */
  write(data: Buffer): void {
    for (let off = 0; off < data.length; off += MAX_PAYLOAD) {
      const chunk = data.subarray(off, off + MAX_PAYLOAD);
      this.stdinCredit -= chunk.length;
      this.session.sendOn(this.stream, FrameType.STDIN, chunk);
    }
  }

  endInput(): void {
    this.session.sendOn(this.stream, FrameType.STDIN, Buffer.alloc(0));
  }

  resize(rows: number, cols: number): void {
    this.session.sendOn(this.stream, FrameType.RESIZE, encodeWinsize(rows, cols));
  }

  signal(sig: number): void {
    this.session.sendOn(this.stream, FrameType.SIGNAL, encodeU32(sig));
  }

  /** Lets the guest send `n` more bytes of output (after the host consumed them). */
  grant(n: number): void {
    if (n <= 0 || this.ended) return;
    this.outputCredit += n;
    this.session.sendOn(this.stream, FrameType.WINDOW, encodeU32(n));
  }
}

/** Where a restored guest's conversation stands: it said HELLO to the host it was snapshotted on. */
export interface RestoredChannel {
  readonly version: number;
  /** "config": a template, waiting for its CONFIG; "started": a running workload. */
  readonly phase: "config" | "started";
}

export class AgentSession extends EventEmitter<AgentSessionEvents> {
  private readonly decoder = new FrameDecoder();
  private phase: "hello" | "config" | "started" | "exited" = "hello";
  private closed = false;
  /** The protocol version agreed with the guest (after HELLO). */
  version = MIN_PROTOCOL_VERSION;
  private readonly execs = new Map<number, GuestExec>();
  private nextStream = 1;
  /** QUIESCE sent: host frames wait here until the guest is resumed (docs/PROTOCOL.md v3). */
  private held: Buffer[] | null = null;
  private quiesced = false;
  private onQuiesced: (() => void) | null = null;
  private onIdentity: ((result: string) => void) | null = null;

  constructor(
    private readonly socket: Socket,
    restored?: RestoredChannel,
  ) {
    super();
    if (restored) {
      this.version = restored.version;
      this.phase = restored.phase;
    }
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("close", () => this.onClose());
    socket.on("error", () => this.onClose());
  }

  get isClosed(): boolean {
    return this.closed;
  }

  sendConfig(cfg: WorkloadConfig): void {
    if (this.phase !== "config") throw new MmError("MM_INTERNAL", `CONFIG sent in phase ${this.phase}`);
    this.send(FrameType.CONFIG, encodeConfig(cfg, this.version));
    this.phase = "started";
  }

  /** Opens an exec session (protocol v2). */
  openExec(cfg: ExecConfig): GuestExec {
    if (this.version < 2) {
      throw new MmError("MM_AGENT_PROTOCOL", "the guest's mm-init is too old for exec (protocol v1)", {
        hint: "rebuild the image's root filesystem with a current mm-init (`mm image prune`, then run again)",
      });
    }
    if (this.closed) throw new MmError("MM_ENGINE_IO", "the agent channel is closed");
    if (this.execs.size >= MAX_SESSIONS) throw new MmError("MM_USAGE", `more than ${MAX_SESSIONS} exec sessions`);
    while (this.execs.has(this.nextStream) || this.nextStream === 0)
      this.nextStream = (this.nextStream % 0x7fffffff) + 1;
    const exec = new GuestExec(this, this.nextStream++);
    this.execs.set(exec.stream, exec);
    this.sendOn(exec.stream, FrameType.EXEC, encodeExec(cfg, this.version));
    return exec;
  }

  /** Re-encodes a client's EXEC payload after checking it parses (the relay path). */
  openExecRaw(payload: Buffer): GuestExec {
    const cfg = decodeConfig(payload);
    return this.openExec({
      args: cfg.args,
      env: cfg.env,
      ...(cfg.cwd !== undefined && { cwd: cfg.cwd }),
      ...(cfg.user !== undefined && { user: cfg.user }),
      ...(cfg.tty && { tty: cfg.tty }),
      ...(cfg.stdin && { stdin: true }),
    });
  }

  sendOn(stream: number, type: number, payload?: Buffer): void {
    if (this.closed) return;
    const frame = encodeFrame(type, payload, stream);
    if (this.held) this.held.push(frame);
    else this.socket.write(frame);
  }

  /** The phase a restore of a snapshot taken now would resume in. */
  get restorePhase(): RestoredChannel["phase"] | null {
    return this.phase === "config" || this.phase === "started" ? this.phase : null;
  }

  /**
   * Brings the channel to a frame boundary in both directions (v3): after this
   * resolves, the guest writes nothing and the host sends nothing until `unquiesce`
   * or `identity`, so a snapshot taken now holds no half-sent frame.
   */
  quiesce(): Promise<void> {
    if (this.version < 3) {
      return Promise.reject(
        new MmError("MM_AGENT_PROTOCOL", "the guest's mm-init is too old to be snapshotted while running (v3)", {
          hint: "rebuild the image's root filesystem with a current mm-init (`mm image prune`, then run again)",
        }),
      );
    }
    if (this.closed) return Promise.reject(new MmError("MM_ENGINE_IO", "the agent channel is closed"));
    if (this.held) return Promise.reject(new MmError("MM_INTERNAL", "the channel is already quiesced"));
    return new Promise((resolve, reject) => {
      this.onQuiesced = resolve;
      this.once("close", () => reject(new MmError("MM_ENGINE_IO", "the agent channel closed while quiescing")));
      this.socket.write(encodeFrame(FrameType.QUIESCE));
      this.held = [];
    });
  }

  /** Ends a quiesce: the guest carries on and the held host frames go out. */
  unquiesce(): void {
    if (!this.held) return;
    this.socket.write(encodeFrame(FrameType.RESUME));
    this.release();
  }

  /**
   * Gives a restored guest its new identity (v3); resolves with "" when applied,
   * else with the guest's "CODE: message". Also ends a quiesce.
   */
  identity(id: IdentityConfig): Promise<string> {
    if (this.closed) return Promise.reject(new MmError("MM_ENGINE_IO", "the agent channel is closed"));
    return new Promise((resolve, reject) => {
      this.onIdentity = resolve;
      this.once("close", () => reject(new MmError("MM_ENGINE_IO", "the agent channel closed before IDENTITY_RESULT")));
      this.socket.write(encodeFrame(FrameType.IDENTITY, encodeIdentity(id, this.version)));
      this.release();
    });
  }

  private release(): void {
    const held = this.held ?? [];
    this.held = null;
    this.quiesced = false;
    for (const f of held) this.socket.write(f);
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
    this.sendOn(0, type, payload);
  }

  private onData(d: Buffer): void {
    try {
      for (const f of this.decoder.push(d)) this.onFrame(f.type, f.stream, f.payload);
    } catch (e) {
      this.violation(e instanceof MmError ? e : new MmError("MM_AGENT_PROTOCOL", String(e)));
    }
  }

  private onFrame(type: number, stream: number, payload: Buffer): void {
    if (this.quiesced && type !== FrameType.IDENTITY_RESULT) {
      throw new MmError("MM_AGENT_PROTOCOL", `frame type ${type} from a quiesced guest`);
    }
    if (stream !== 0) {
      this.onSessionFrame(type, stream, payload);
      return;
    }
    switch (type) {
      case FrameType.HELLO: {
        if (this.phase !== "hello") throw new MmError("MM_AGENT_PROTOCOL", "second HELLO");
        const hello = decodeHello(payload);
        const version = Math.min(hello.maxVersion, PROTOCOL_VERSION);
        if (version < Math.max(hello.minVersion, MIN_PROTOCOL_VERSION)) {
          throw new MmError(
            "MM_AGENT_PROTOCOL",
            `guest speaks versions ${hello.minVersion}-${hello.maxVersion}, host ${MIN_PROTOCOL_VERSION}-${PROTOCOL_VERSION}`,
          );
        }
        this.version = version;
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
      case FrameType.QUIESCED: {
        if (!this.onQuiesced) throw new MmError("MM_AGENT_PROTOCOL", "QUIESCED without QUIESCE");
        const done = this.onQuiesced;
        this.onQuiesced = null;
        this.quiesced = true;
        done();
        return;
      }
      case FrameType.IDENTITY_RESULT: {
        if (!this.onIdentity) throw new MmError("MM_AGENT_PROTOCOL", "IDENTITY_RESULT without IDENTITY");
        if (payload.length > MAX_ERROR_TEXT) throw new MmError("MM_AGENT_PROTOCOL", "IDENTITY_RESULT too long");
        const done = this.onIdentity;
        this.onIdentity = null;
        done(payload.toString("utf8"));
        return;
      }
      case FrameType.CONFIG:
      case FrameType.STDIN:
      case FrameType.SIGNAL:
      case FrameType.POWEROFF:
      case FrameType.QUIESCE:
      case FrameType.RESUME:
      case FrameType.IDENTITY:
        throw new MmError("MM_AGENT_PROTOCOL", `host-only frame type ${type} sent by the guest`);
      default:
        return; // unknown types are ignored: the guest may be newer
    }
  }

  private onSessionFrame(type: number, stream: number, payload: Buffer): void {
    const exec = this.execs.get(stream);
    if (!exec) {
      // A session the host ended (e.g. after a late WINDOW) may still see stray frames.
      if (stream < this.nextStream && type !== FrameType.EXEC) return;
      throw new MmError("MM_AGENT_PROTOCOL", `frame type ${type} on unknown stream ${stream}`);
    }
    switch (type) {
      case FrameType.READY:
        exec.emit("ready", decodeReady(payload));
        return;
      case FrameType.STDOUT:
      case FrameType.STDERR:
        exec.outputCredit -= payload.length;
        if (exec.outputCredit < 0) throw new MmError("MM_AGENT_PROTOCOL", `stream ${stream} sent beyond its window`);
        exec.emit(type === FrameType.STDOUT ? "stdout" : "stderr", payload);
        return;
      case FrameType.WINDOW:
        exec.stdinCredit += decodeU32(payload, "WINDOW");
        exec.emit("window", payload.readUInt32BE(0));
        return;
      case FrameType.ERROR:
        exec.emit("guestError", decodeGuestError(payload));
        return;
      case FrameType.EXIT: {
        const status = decodeExit(payload);
        exec.ended = true;
        this.execs.delete(stream);
        exec.emit("exit", status);
        return;
      }
      case FrameType.CONFIG:
      case FrameType.EXEC:
      case FrameType.STDIN:
      case FrameType.SIGNAL:
      case FrameType.POWEROFF:
      case FrameType.RESIZE:
        throw new MmError("MM_AGENT_PROTOCOL", `host-only frame type ${type} sent by the guest`);
      default:
        return;
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
    for (const exec of this.execs.values()) exec.emit("lost");
    this.execs.clear();
    this.emit("close");
  }
}
