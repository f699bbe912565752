// The host end of mm-init's channel for host-test mode (docs/PROTOCOL.md): a frame
// codec, one mm-init process per session against a unix socket, and helpers to run it.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const BIN =
  process.env.MM_INIT || path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../build/mm-init");
if (!fs.existsSync(BIN)) {
  throw new Error(`${BIN} does not exist: build it first with \`make -C guest/init\``);
}

export const T = {
  HELLO: 1,
  CONFIG: 2,
  READY: 3,
  STDOUT: 4,
  STDERR: 5,
  EXIT: 6,
  STDIN: 7,
  SIGNAL: 8,
  POWEROFF: 9,
  ERROR: 10,
  EXEC: 11,
  RESIZE: 12,
  WINDOW: 13,
  QUIESCE: 14,
  QUIESCED: 15,
  RESUME: 16,
  IDENTITY: 17,
  IDENTITY_RESULT: 18,
};
export const TAG = {
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
};
export const MOUNT_READ_ONLY = 1;
/** MOUNT kinds (v5), in bits 1-2 of the flags. */
export const MOUNT_KIND = { BLOCK: 0, VIRTIOFS: 1, P9: 2 };
export const INITIAL_WINDOW = 256 * 1024;
export const MAX_PAYLOAD = 65536;
export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
export const WAIT_MS = 10_000;
export const IS_ROOT = process.getuid?.() === 0;

// ---- frame codec (the TypeScript one lives in packages/; this one is for tests) ----

export function encodeFrame(type, payload = Buffer.alloc(0), stream = 0) {
  const frame = Buffer.alloc(9 + payload.length);
  frame.writeUInt32BE(5 + payload.length, 0);
  frame.writeUInt8(type, 4);
  frame.writeUInt32BE(stream, 5);
  payload.copy(frame, 9);
  return frame;
}

export class FrameDecoder {
  #buf = Buffer.alloc(0);
  push(chunk) {
    this.#buf = Buffer.concat([this.#buf, chunk]);
    const frames = [];
    while (this.#buf.length >= 4) {
      const len = this.#buf.readUInt32BE(0);
      if (len < 5 || len > 5 + MAX_PAYLOAD) throw new Error(`guest sent a frame with len ${len}`);
      if (this.#buf.length < 4 + len) break;
      frames.push({
        type: this.#buf.readUInt8(4),
        stream: this.#buf.readUInt32BE(5),
        payload: Buffer.from(this.#buf.subarray(9, 4 + len)),
      });
      this.#buf = this.#buf.subarray(4 + len);
    }
    return frames;
  }
}

/**
 * A MOUNT record: u8 flags, the disk's serial (v4) or the share's tag (v5, with `kind`),
 * NUL, the mount point. `flags` overrides the byte made of readOnly and kind.
 */
export function mountRecord({
  serial,
  tag,
  path,
  readOnly = false,
  kind = MOUNT_KIND.BLOCK,
  flags = (readOnly ? MOUNT_READ_ONLY : 0) | (kind << 1),
}) {
  const name = serial ?? tag;
  return record(
    TAG.MOUNT,
    Buffer.concat([Buffer.from([flags]), Buffer.from(name), Buffer.alloc(1), Buffer.from(path)]),
  );
}

export function record(tag, value) {
  const bytes = typeof value === "string" ? Buffer.from(value) : value;
  const head = Buffer.alloc(3);
  head.writeUInt8(tag, 0);
  head.writeUInt16BE(bytes.length, 1);
  return Buffer.concat([head, bytes]);
}

/** CONFIG's, EXEC's and IDENTITY's payload: u16 version, then records. */
export function encodeRecords({
  args = [],
  env = [],
  cwd,
  user,
  hostname,
  flags,
  net,
  tty,
  stdin,
  mac,
  clockNs,
  seed,
  mounts = [],
  version = 1,
  extra = [],
}) {
  const version16 = Buffer.alloc(2);
  version16.writeUInt16BE(version);
  const parts = [version16, ...args.map((a) => record(TAG.ARG, a)), ...env.map((e) => record(TAG.ENV, e))];
  if (cwd !== undefined) parts.push(record(TAG.CWD, cwd));
  if (user !== undefined) parts.push(record(TAG.USER, user));
  if (hostname !== undefined) parts.push(record(TAG.HOSTNAME, hostname));
  if (flags !== undefined) {
    const f = Buffer.alloc(4);
    f.writeUInt32BE(flags);
    parts.push(record(TAG.FLAGS, f));
  }
  if (net?.addr !== undefined) parts.push(record(TAG.NET_ADDR, net.addr));
  if (net?.gateway !== undefined) parts.push(record(TAG.NET_GATEWAY, net.gateway));
  for (const d of net?.dns ?? []) parts.push(record(TAG.DNS, d));
  for (const h of net?.hosts ?? []) parts.push(record(TAG.HOSTS, h));
  if (mac !== undefined) parts.push(record(TAG.NET_MAC, mac));
  if (clockNs !== undefined) parts.push(record(TAG.CLOCK, u64(clockNs)));
  if (seed !== undefined) parts.push(record(TAG.SEED, seed));
  parts.push(...mounts.map(mountRecord));
  if (tty !== undefined) parts.push(record(TAG.TTY, winsize(tty.rows, tty.cols)));
  if (stdin) parts.push(record(TAG.STDIN, Buffer.alloc(0)));
  parts.push(...extra);
  return Buffer.concat(parts);
}

export function encodeConfig(config) {
  return encodeFrame(T.CONFIG, encodeRecords(config));
}

/** An IDENTITY frame (v3): CONFIG's records without the process. */
export function encodeIdentity(identity = {}, stream = 0) {
  return encodeFrame(T.IDENTITY, encodeRecords({ version: 3, ...identity }), stream);
}

export function winsize(rows, cols) {
  const b = Buffer.alloc(4);
  b.writeUInt16BE(rows, 0);
  b.writeUInt16BE(cols, 2);
  return b;
}

export const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
export const u64 = (n) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- a session: one mm-init process and the host end of its channel ----

export async function startSession({ env = {}, args = [] } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mm-init-test-"));
  const sock = path.join(dir, "agent.sock");
  const server = net.createServer();
  await new Promise((resolve, reject) => server.once("error", reject).listen(sock, resolve));

  const child = spawn(BIN, args, {
    env: { MM_INIT_CHANNEL: sock, MM_TEST_SHOULD_NOT_LEAK: "1", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stdout.on("data", (d) => {
    log += d;
  });
  child.stderr.on("data", (d) => {
    log += d;
  });
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));

  const conn = await Promise.race([
    new Promise((resolve) => server.once("connection", resolve)),
    exited.then(({ code }) => {
      throw new Error(`mm-init exited (${code}) before connecting: ${log}`);
    }),
  ]);
  const decoder = new FrameDecoder();
  const queue = [];
  const waiters = [];
  let closed = false;
  const settle = () => {
    while (waiters.length > 0 && (queue.length > 0 || closed)) waiters.shift()(queue.shift() ?? null);
  };
  let tap = null;
  conn.on("data", (chunk) => {
    const frames = decoder.push(chunk);
    if (tap) for (const f of frames) tap(f);
    else queue.push(...frames);
    settle();
  });
  conn.on("close", () => {
    closed = true;
    settle();
  });
  conn.on("error", () => {});

  return {
    child,
    exited,
    conn,
    log: () => log,
    send: (buf) => conn.write(buf),
    /** Routes every later frame to fn instead of next() (null: the channel closed). */
    tap(fn) {
      tap = fn;
      for (const f of queue.splice(0)) fn(f);
      if (closed) fn(null);
      conn.on("close", () => fn(null));
    },
    /** The next frame, or null once the guest closed the channel. */
    next(timeoutMs = WAIT_MS) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no frame within ${timeoutMs} ms; log: ${log}`)), timeoutMs);
        waiters.push((frame) => {
          clearTimeout(timer);
          resolve(frame);
        });
        settle();
      });
    },
    async close() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      conn.destroy();
      await new Promise((resolve) => server.close(resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Frames up to and including EXIT, with stdout/stderr joined. */
export async function collectUntilExit(s) {
  const frames = [];
  for (;;) {
    const frame = await s.next();
    assert.ok(frame, `channel closed before EXIT; log: ${s.log()}`);
    frames.push(frame);
    if (frame.type === T.EXIT) break;
  }
  const join = (type) => Buffer.concat(frames.filter((f) => f.type === type).map((f) => f.payload)).toString();
  const exit = frames.at(-1).payload;
  return {
    frames,
    types: frames.map((f) => f.type),
    stdout: join(T.STDOUT),
    stderr: join(T.STDERR),
    errors: frames.filter((f) => f.type === T.ERROR).map((f) => f.payload.toString()),
    ready: frames.find((f) => f.type === T.READY)?.payload.readUInt32BE(0),
    status: exit.readInt32BE(0),
    signal: exit.readInt32BE(4),
  };
}

/** Runs one CONFIG to EXIT, then POWEROFF; checks that mm-init exits 0. */
export async function run(config, options) {
  const s = await startSession(options);
  try {
    const hello = await s.next();
    assert.equal(hello.type, T.HELLO);
    s.send(encodeConfig(config));
    const result = await collectUntilExit(s);
    s.send(encodeFrame(T.POWEROFF));
    const { code } = await s.exited;
    assert.equal(code, 0, `mm-init exit code; log: ${s.log()}`);
    return result;
  } finally {
    await s.close();
  }
}

export const sh = (script, extra = {}) => ({ args: ["/bin/sh", "-c", script], ...extra });
