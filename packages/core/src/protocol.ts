// Frames of the host↔guest channel (docs/PROTOCOL.md): pure encoding and decoding.
// The guest is untrusted, so the decoder caps every length before it buffers anything.

import { MmError } from "./errors.js";

/** The highest version this host speaks; v1 guests are still served (docs/PROTOCOL.md). */
export const PROTOCOL_VERSION = 5;
export const MIN_PROTOCOL_VERSION = 1;
export const INITIAL_WINDOW = 256 * 1024;
export const MAX_SESSIONS = 64;
export const MAX_DNS = 3;
export const MAX_HOSTS = 16;
export const HEADER_BYTES = 9;
export const MAX_PAYLOAD = 65536;
export const MAX_ARGS = 256;
export const MAX_ENV = 256;
export const MAX_STRING = 4096;
export const MAX_HOSTNAME = 64;
export const MAX_ERROR_TEXT = 1024;

export const FrameType = {
  HELLO: 0x01,
  CONFIG: 0x02,
  READY: 0x03,
  STDOUT: 0x04,
  STDERR: 0x05,
  EXIT: 0x06,
  STDIN: 0x07,
  SIGNAL: 0x08,
  POWEROFF: 0x09,
  ERROR: 0x0a,
  EXEC: 0x0b,
  RESIZE: 0x0c,
  WINDOW: 0x0d,
  QUIESCE: 0x0e,
  QUIESCED: 0x0f,
  RESUME: 0x10,
  IDENTITY: 0x11,
  IDENTITY_RESULT: 0x12,
} as const;
export type FrameTypeName = keyof typeof FrameType;

export interface Frame {
  readonly type: number;
  readonly stream: number;
  readonly payload: Buffer;
}

export function encodeFrame(type: number, payload: Buffer = Buffer.alloc(0), stream = 0): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new RangeError(`payload of ${payload.length} bytes exceeds ${MAX_PAYLOAD}`);
  const header = Buffer.alloc(HEADER_BYTES);
  header.writeUInt32BE(5 + payload.length, 0);
  header.writeUInt8(type, 4);
  header.writeUInt32BE(stream >>> 0, 5);
  return Buffer.concat([header, payload]);
}

/** Incremental decoder: push bytes as they arrive, take whole frames out. */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** Returns the frames completed by `data`. Throws MM_AGENT_PROTOCOL on an out-of-range length. */
  push(data: Buffer): Frame[] {
    this.chunks.push(data);
    this.buffered += data.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < 4) break;
      const head = this.peek(4);
      const len = head.readUInt32BE(0);
      if (len < 5 || len > 5 + MAX_PAYLOAD) {
        throw new MmError("MM_AGENT_PROTOCOL", `frame length ${len} out of range`);
      }
      if (this.buffered < 4 + len) break;
      const whole = this.take(4 + len);
      frames.push({ type: whole.readUInt8(4), stream: whole.readUInt32BE(5), payload: whole.subarray(HEADER_BYTES) });
    }
    return frames;
  }

  private peek(n: number): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks)];
    return (this.chunks[0] as Buffer).subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const out = Buffer.from(all.subarray(0, n));
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}

export const ConfigTag = {
  ARG: 1,
  ENV: 2,
  CWD: 3,
  USER: 4,
  HOSTNAME: 5,
  FLAGS: 6,
  TTY: 7,
  STDIN: 8,
  NET_ADDR: 9,
  NET_GATEWAY: 10,
  DNS: 11,
  HOSTS: 12,
  NET_MAC: 13,
  CLOCK: 14,
  SEED: 15,
  MOUNT: 16,
} as const;
export const MAX_MOUNTS = 16;
export const ConfigFlag = { STAY_UP: 1 } as const;

export interface NetworkIdentity {
  /** "10.88.0.5/16" */
  readonly address: string;
  readonly gateway?: string;
  readonly dns?: readonly string[];
  /** /etc/hosts lines: "10.88.0.5 web" */
  readonly hosts?: readonly string[];
}

export interface WorkloadConfig {
  readonly args: readonly string[];
  readonly env: readonly string[];
  readonly cwd?: string;
  readonly user?: string;
  readonly hostname?: string;
  readonly stayUp?: boolean;
  /** Protocol v2 and later. */
  readonly network?: NetworkIdentity;
  /** Protocol v3 and later: what a restored guest needs to stop being its snapshot's twin. */
  readonly fresh?: FreshIdentity;
  /** Protocol v4: disks (by virtio serial) the guest mounts before the workload starts. */
  readonly mounts?: readonly GuestMount[];
}

export interface GuestMount {
  /** A block disk's virtio serial, or a shared directory's virtio-fs / 9p tag. */
  readonly serial: string;
  readonly path: string;
  readonly readOnly: boolean;
  /** v5: what `serial` names (default: a block disk, v4's only kind). */
  readonly kind?: "disk" | "virtiofs" | "9p";
}

const MOUNT_KIND_BITS = { disk: 0, virtiofs: 1, "9p": 2 } as const;

/** Protocol v3: the parts of an identity a snapshot freezes and a restore must renew. */
export interface FreshIdentity {
  /** eth0's MAC ("52:54:00:…"): a restored NIC keeps its snapshot's MAC otherwise. */
  readonly mac?: string;
  /** Wall-clock time to set, in nanoseconds since the epoch. */
  readonly clockNs?: bigint;
  /** Entropy the guest mixes in and reseeds its RNG from (16-512 bytes). */
  readonly seed?: Buffer;
}

/** IDENTITY (v3): renews a running guest's identity after a restore or fork. */
export interface IdentityConfig {
  readonly hostname?: string;
  readonly network?: NetworkIdentity;
  readonly fresh: FreshIdentity;
}

export interface ExecConfig {
  readonly args: readonly string[];
  readonly env: readonly string[];
  readonly cwd?: string;
  readonly user?: string;
  /** Run on a pseudo-terminal of this size. */
  readonly tty?: { readonly rows: number; readonly cols: number };
  /** The host will send STDIN frames (else the process reads /dev/null). */
  readonly stdin?: boolean;
}

function checkString(what: string, s: string, max = MAX_STRING): Buffer {
  const b = Buffer.from(s, "utf8");
  if (b.includes(0)) throw new MmError("MM_USAGE", `${what} must not contain a NUL byte`);
  if (b.length > max) throw new MmError("MM_USAGE", `${what} is longer than ${max} bytes`);
  return b;
}

class RecordWriter {
  private readonly parts: Buffer[] = [];
  constructor(version: number) {
    const v = Buffer.alloc(2);
    v.writeUInt16BE(version);
    this.parts.push(v);
  }
  add(tag: number, value: Buffer): void {
    const h = Buffer.alloc(3);
    h.writeUInt8(tag, 0);
    h.writeUInt16BE(value.length, 1);
    this.parts.push(h, value);
  }
  finish(): Buffer {
    const payload = Buffer.concat(this.parts);
    if (payload.length > MAX_PAYLOAD) throw new MmError("MM_USAGE", "command line and environment exceed 64 KiB");
    return payload;
  }
}

function addProcessRecords(
  w: RecordWriter,
  p: { args: readonly string[]; env: readonly string[]; cwd?: string | undefined; user?: string | undefined },
): void {
  if (p.args.length === 0) throw new MmError("MM_USAGE", "no command to run");
  if (p.args.length > MAX_ARGS) throw new MmError("MM_USAGE", `more than ${MAX_ARGS} arguments`);
  if (p.env.length > MAX_ENV) throw new MmError("MM_USAGE", `more than ${MAX_ENV} environment variables`);
  for (const a of p.args) w.add(ConfigTag.ARG, checkString("argument", a));
  for (const e of p.env) {
    if (!/^[^=]+=/.test(e)) throw new MmError("MM_USAGE", `environment entry "${e}" is not KEY=VALUE`);
    w.add(ConfigTag.ENV, checkString("environment entry", e));
  }
  if (p.cwd !== undefined) {
    if (!p.cwd.startsWith("/")) throw new MmError("MM_USAGE", `working directory "${p.cwd}" is not absolute`);
    w.add(ConfigTag.CWD, checkString("working directory", p.cwd));
  }
  if (p.user !== undefined) w.add(ConfigTag.USER, checkString("user", p.user));
}

/**
 * Encodes a CONFIG payload for the negotiated `version`; rejects what the guest would
 * reject, so errors surface on the host. v1 guests get no v2 records.
 */
export function encodeConfig(cfg: WorkloadConfig, version: number = PROTOCOL_VERSION): Buffer {
  const w = new RecordWriter(version);
  addProcessRecords(w, cfg);
  if (cfg.hostname !== undefined) w.add(ConfigTag.HOSTNAME, checkString("hostname", cfg.hostname, MAX_HOSTNAME));
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(cfg.stayUp ? ConfigFlag.STAY_UP : 0);
  w.add(ConfigTag.FLAGS, flags);
  if (cfg.network && version >= 2) addNetworkRecords(w, cfg.network);
  if (cfg.fresh && version >= 3) addFreshRecords(w, cfg.fresh);
  if (cfg.mounts && cfg.mounts.length > 0) {
    if (version < 4) {
      throw new MmError("MM_AGENT_PROTOCOL", "the guest's mm-init is too old for volumes (protocol v4)", {
        hint: "rebuild the image's root filesystem with a current mm-init (`mm image prune`, then run again)",
      });
    }
    if (cfg.mounts.length > MAX_MOUNTS) throw new MmError("MM_USAGE", `more than ${MAX_MOUNTS} volumes`);
    for (const m of cfg.mounts) {
      if (!/^[A-Za-z0-9_.-]{1,20}$/.test(m.serial)) throw new MmError("MM_USAGE", `bad disk serial "${m.serial}"`);
      const kind = MOUNT_KIND_BITS[m.kind ?? "disk"];
      if (kind !== 0 && version < 5) {
        throw new MmError("MM_AGENT_PROTOCOL", "the guest's mm-init is too old for shared directories (protocol v5)", {
          hint: "rebuild the image's root filesystem with a current mm-init (`mm image prune`, then run again)",
        });
      }
      w.add(
        ConfigTag.MOUNT,
        Buffer.concat([
          Buffer.from([(m.readOnly ? 1 : 0) | (kind << 1)]),
          Buffer.from(m.serial),
          Buffer.from([0]),
          checkString("mount point", m.path),
        ]),
      );
    }
  }
  return w.finish();
}

function addNetworkRecords(w: RecordWriter, n: NetworkIdentity): void {
  if ((n.dns?.length ?? 0) > MAX_DNS) throw new MmError("MM_USAGE", `more than ${MAX_DNS} DNS servers`);
  if ((n.hosts?.length ?? 0) > MAX_HOSTS) throw new MmError("MM_USAGE", `more than ${MAX_HOSTS} hosts entries`);
  w.add(ConfigTag.NET_ADDR, checkString("address", n.address));
  if (n.gateway) w.add(ConfigTag.NET_GATEWAY, checkString("gateway", n.gateway));
  for (const d of n.dns ?? []) w.add(ConfigTag.DNS, checkString("DNS server", d));
  for (const h of n.hosts ?? []) w.add(ConfigTag.HOSTS, checkString("hosts line", h));
}

function addFreshRecords(w: RecordWriter, f: FreshIdentity): void {
  if (f.mac !== undefined) {
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(f.mac)) throw new MmError("MM_USAGE", `bad MAC "${f.mac}"`);
    w.add(ConfigTag.NET_MAC, Buffer.from(f.mac));
  }
  if (f.clockNs !== undefined) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(f.clockNs);
    w.add(ConfigTag.CLOCK, b);
  }
  if (f.seed !== undefined) {
    if (f.seed.length < 16 || f.seed.length > 512) throw new MmError("MM_USAGE", "a seed is 16-512 bytes");
    w.add(ConfigTag.SEED, f.seed);
  }
}

/** A fresh clock and seed for a restored guest (its MAC comes from its new lease). */
export function freshIdentity(random: (n: number) => Buffer, mac?: string): FreshIdentity {
  return { clockNs: BigInt(Date.now()) * 1_000_000n, seed: random(64), ...(mac !== undefined && { mac }) };
}

/** Encodes an IDENTITY payload (protocol v3). */
export function encodeIdentity(id: IdentityConfig, version = PROTOCOL_VERSION): Buffer {
  if (version < 3) throw new MmError("MM_AGENT_PROTOCOL", "IDENTITY needs protocol v3");
  const w = new RecordWriter(version);
  if (id.hostname !== undefined) w.add(ConfigTag.HOSTNAME, checkString("hostname", id.hostname, MAX_HOSTNAME));
  if (id.network) addNetworkRecords(w, id.network);
  addFreshRecords(w, id.fresh);
  return w.finish();
}

/** Encodes an EXEC payload (protocol v2 and later: `version` is the one agreed in CONFIG). */
export function encodeExec(cfg: ExecConfig, version = 2): Buffer {
  const w = new RecordWriter(version);
  addProcessRecords(w, cfg);
  if (cfg.tty) w.add(ConfigTag.TTY, encodeWinsize(cfg.tty.rows, cfg.tty.cols));
  if (cfg.stdin) w.add(ConfigTag.STDIN, Buffer.alloc(0));
  return w.finish();
}

export function encodeWinsize(rows: number, cols: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(Math.max(0, Math.min(0xffff, Math.floor(rows))), 0);
  b.writeUInt16BE(Math.max(0, Math.min(0xffff, Math.floor(cols))), 2);
  return b;
}

export function decodeU32(p: Buffer, what: string): number {
  if (p.length !== 4) throw new MmError("MM_AGENT_PROTOCOL", `${what} of ${p.length} bytes`);
  return p.readUInt32BE(0);
}

/** Decodes a CONFIG payload (used by tests and by any host-side agent double). */
export function decodeConfig(payload: Buffer): WorkloadConfig & ExecConfig & { version: number } {
  if (payload.length < 2) throw new MmError("MM_AGENT_PROTOCOL", "CONFIG too short");
  const version = payload.readUInt16BE(0);
  const args: string[] = [];
  const env: string[] = [];
  let cwd: string | undefined;
  let user: string | undefined;
  let hostname: string | undefined;
  let stayUp = false;
  let address: string | undefined;
  let gateway: string | undefined;
  const dns: string[] = [];
  const hosts: string[] = [];
  let tty: { rows: number; cols: number } | undefined;
  let stdin = false;
  let mac: string | undefined;
  let clockNs: bigint | undefined;
  let seed: Buffer | undefined;
  const mounts: GuestMount[] = [];
  let off = 2;
  while (off < payload.length) {
    if (off + 3 > payload.length) throw new MmError("MM_AGENT_PROTOCOL", "truncated CONFIG record");
    const tag = payload.readUInt8(off);
    const len = payload.readUInt16BE(off + 1);
    off += 3;
    if (off + len > payload.length) throw new MmError("MM_AGENT_PROTOCOL", "CONFIG record overruns payload");
    const value = payload.subarray(off, off + len);
    off += len;
    const text = value.toString("utf8");
    switch (tag) {
      case ConfigTag.ARG:
        args.push(text);
        break;
      case ConfigTag.ENV:
        env.push(text);
        break;
      case ConfigTag.CWD:
        cwd = text;
        break;
      case ConfigTag.USER:
        user = text;
        break;
      case ConfigTag.HOSTNAME:
        hostname = text;
        break;
      case ConfigTag.FLAGS:
        if (len !== 4) throw new MmError("MM_AGENT_PROTOCOL", "FLAGS record must be 4 bytes");
        stayUp = (value.readUInt32BE(0) & ConfigFlag.STAY_UP) !== 0;
        break;
      case ConfigTag.TTY:
        if (len !== 4) throw new MmError("MM_AGENT_PROTOCOL", "TTY record must be 4 bytes");
        tty = { rows: value.readUInt16BE(0), cols: value.readUInt16BE(2) };
        break;
      case ConfigTag.STDIN:
        stdin = true;
        break;
      case ConfigTag.NET_ADDR:
        address = text;
        break;
      case ConfigTag.NET_GATEWAY:
        gateway = text;
        break;
      case ConfigTag.DNS:
        dns.push(text);
        break;
      case ConfigTag.HOSTS:
        hosts.push(text);
        break;
      case ConfigTag.NET_MAC:
        mac = text;
        break;
      case ConfigTag.CLOCK:
        if (len !== 8) throw new MmError("MM_AGENT_PROTOCOL", "CLOCK record must be 8 bytes");
        clockNs = value.readBigUInt64BE(0);
        break;
      case ConfigTag.SEED:
        seed = Buffer.from(value);
        break;
      case ConfigTag.MOUNT: {
        const nul = value.indexOf(0, 1);
        if (len < 3 || nul < 0) throw new MmError("MM_AGENT_PROTOCOL", "malformed MOUNT record");
        const flags = value.readUInt8(0);
        const kind = (["disk", "virtiofs", "9p"] as const)[(flags >> 1) & 3];
        if (!kind) throw new MmError("MM_AGENT_PROTOCOL", "MOUNT record of unknown kind");
        mounts.push({
          readOnly: (flags & 1) === 1,
          serial: value.subarray(1, nul).toString("utf8"),
          path: value.subarray(nul + 1).toString("utf8"),
          ...(kind !== "disk" && { kind }),
        });
        break;
      }
      default:
        break; // unknown tags are ignored (forward compatibility)
    }
  }
  return {
    version,
    args,
    env,
    stayUp,
    stdin,
    ...(cwd !== undefined && { cwd }),
    ...(user !== undefined && { user }),
    ...(hostname !== undefined && { hostname }),
    ...(tty && { tty }),
    ...(address !== undefined && { network: { address, ...(gateway !== undefined && { gateway }), dns, hosts } }),
    ...(mounts.length > 0 && { mounts }),
    ...((mac !== undefined || clockNs !== undefined || seed !== undefined) && {
      fresh: {
        ...(mac !== undefined && { mac }),
        ...(clockNs !== undefined && { clockNs }),
        ...(seed !== undefined && { seed }),
      },
    }),
  };
}

export interface Hello {
  readonly minVersion: number;
  readonly maxVersion: number;
  readonly agent: string;
}

export function decodeHello(p: Buffer): Hello {
  if (p.length < 4 || p.length > 4 + 64) throw new MmError("MM_AGENT_PROTOCOL", `HELLO of ${p.length} bytes`);
  const minVersion = p.readUInt16BE(0);
  const maxVersion = p.readUInt16BE(2);
  if (minVersion > maxVersion) throw new MmError("MM_AGENT_PROTOCOL", "HELLO with min version above max");
  return { minVersion, maxVersion, agent: p.subarray(4).toString("utf8") };
}

export function encodeHello(h: Hello): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(h.minVersion, 0);
  b.writeUInt16BE(h.maxVersion, 2);
  return Buffer.concat([b, Buffer.from(h.agent, "utf8")]);
}

export interface ExitStatus {
  /** Exit code as a shell reports it: the code, or 128 + signal. */
  readonly status: number;
  /** The signal that ended the workload, 0 if it exited. */
  readonly signal: number;
}

export function decodeExit(p: Buffer): ExitStatus {
  if (p.length !== 8) throw new MmError("MM_AGENT_PROTOCOL", `EXIT of ${p.length} bytes`);
  const status = p.readInt32BE(0);
  const signal = p.readInt32BE(4);
  if (status < 0 || status > 255 || signal < 0 || signal > 64) {
    throw new MmError("MM_AGENT_PROTOCOL", `EXIT with status ${status}, signal ${signal}`);
  }
  return { status, signal };
}

export function encodeExit(e: ExitStatus): Buffer {
  const b = Buffer.alloc(8);
  b.writeInt32BE(e.status, 0);
  b.writeInt32BE(e.signal, 4);
  return b;
}

export function decodeReady(p: Buffer): { pid: number } {
  if (p.length !== 4) throw new MmError("MM_AGENT_PROTOCOL", `READY of ${p.length} bytes`);
  return { pid: p.readUInt32BE(0) };
}

export function encodeU32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

export interface GuestError {
  readonly code: string;
  readonly message: string;
}

/**
 * The product's error code for a guest ERROR code (docs/PROTOCOL.md), plus the relay's
 * own NOT_RUNNING / LOST: one mapping for the workload and for exec sessions.
 */
export function errorCodeForGuest(
  code: string,
): "MM_EXEC_NOT_FOUND" | "MM_EXEC_DENIED" | "MM_EXEC_SETUP" | "MM_MACHINE_NOT_RUNNING" {
  switch (code) {
    case "EXEC_NOT_FOUND":
      return "MM_EXEC_NOT_FOUND";
    case "EXEC_DENIED":
      return "MM_EXEC_DENIED";
    case "NOT_RUNNING":
    case "LOST":
      return "MM_MACHINE_NOT_RUNNING";
    default:
      return "MM_EXEC_SETUP";
  }
}

export function decodeGuestError(p: Buffer): GuestError {
  if (p.length > MAX_ERROR_TEXT) throw new MmError("MM_AGENT_PROTOCOL", `ERROR of ${p.length} bytes`);
  const text = p.toString("utf8");
  const m = /^([A-Z_]{1,32}): ?(.*)$/s.exec(text);
  return m ? { code: m[1] as string, message: m[2] as string } : { code: "UNKNOWN", message: text };
}
