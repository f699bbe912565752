// The host side of a whole machine for host-test mode: mm-init with a CONFIG of version
// 2 or later, frames routed by stream, exec sessions that keep to the guest's credit and
// check that the guest keeps to ours. Used by exec.test.mjs and quiesce.test.mjs.

import assert from "node:assert/strict";
import {
  encodeConfig,
  encodeFrame,
  encodeRecords,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
  startSession,
  T,
  u32,
  WAIT_MS,
  winsize,
} from "./harness.mjs";

export const STAY_UP = 1;

/** One exec session, seen from the host. */
export class Exec {
  frames = [];
  out = [];
  err = [];
  outBytes = 0;
  errors = [];
  /** Output credit we granted the guest and it has not used. */
  outputCredit = INITIAL_WINDOW;
  /** Stdin credit the guest granted us. */
  stdinCredit = INITIAL_WINDOW;
  windowsReceived = 0;
  #waiters = [];

  constructor(machine, stream, { grant = true } = {}) {
    this.machine = machine;
    this.stream = stream;
    this.grant = grant;
    this.exit = new Promise((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    this.ready = new Promise((resolve) => {
      this.resolveReady = resolve;
    });
    this.exit.catch(() => {});
  }

  onFrame(f) {
    this.frames.push(f);
    switch (f.type) {
      case T.READY:
        this.pid = f.payload.readUInt32BE(0);
        this.resolveReady(this.pid);
        break;
      case T.STDOUT:
      case T.STDERR:
        this.outputCredit -= f.payload.length;
        assert.ok(this.outputCredit >= 0, `stream ${this.stream}: the guest sent beyond its window`);
        (f.type === T.STDOUT ? this.out : this.err).push(f.payload);
        this.outBytes += f.payload.length;
        if (this.grant) this.grantOutput(f.payload.length);
        break;
      case T.WINDOW:
        assert.equal(f.payload.length, 4);
        this.stdinCredit += f.payload.readUInt32BE(0);
        this.windowsReceived++;
        break;
      case T.ERROR:
        this.errors.push(f.payload.toString());
        this.resolveReady(null);
        break;
      case T.EXIT:
        this.status = f.payload.readInt32BE(0);
        this.signal = f.payload.readInt32BE(4);
        this.resolveReady(null);
        this.resolveExit({ status: this.status, signal: this.signal });
        break;
      default:
        assert.fail(`stream ${this.stream}: unexpected frame type ${f.type}`);
    }
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Resolves once pred() holds (checked after every frame of this session). */
  until(pred, what = "condition", timeoutMs = WAIT_MS) {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`stream ${this.stream}: no ${what} within ${timeoutMs} ms`)),
        timeoutMs,
      );
      const check = () => {
        if (pred()) {
          clearTimeout(timer);
          resolve();
        } else this.#waiters.push(check);
      };
      this.#waiters.push(check);
    });
  }

  stdout() {
    return Buffer.concat(this.out).toString();
  }

  grantOutput(n) {
    this.outputCredit += n;
    this.machine.send(encodeFrame(T.WINDOW, u32(n), this.stream));
  }

  /** Sends data as STDIN frames, never beyond the credit the guest granted. */
  async write(data) {
    for (let off = 0; off < data.length; ) {
      if (this.stdinCredit === 0) await this.until(() => this.stdinCredit > 0 || this.status !== undefined, "WINDOW");
      if (this.status !== undefined) return;
      const n = Math.min(MAX_PAYLOAD, this.stdinCredit, data.length - off);
      this.stdinCredit -= n;
      this.machine.send(encodeFrame(T.STDIN, data.subarray(off, off + n), this.stream));
      off += n;
    }
  }

  end() {
    this.machine.send(encodeFrame(T.STDIN, Buffer.alloc(0), this.stream));
  }

  kill(sig) {
    this.machine.send(encodeFrame(T.SIGNAL, u32(sig), this.stream));
  }

  resize(rows, cols) {
    this.machine.send(encodeFrame(T.RESIZE, winsize(rows, cols), this.stream));
  }
}

/**
 * mm-init with a CONFIG of `version` (2 unless told), plus the records in `config`
 * (e.g. v3's mac, clockNs, seed): frames routed by stream, exec sessions opened with
 * exec() under the same version.
 */
export async function startMachine({
  workload = ["sleep", "30"],
  flags,
  net,
  version = 2,
  config = {},
  env = process.env.MM_TEST_DEBUG ? { MM_INIT_CMDLINE: "mm.debug=1" } : undefined,
} = {}) {
  const s = await startSession(env ? { env } : {});
  const hello = await s.next();
  assert.equal(hello.type, T.HELLO);
  const sessions = new Map();
  const control = [];
  const controlWaiters = [];
  const outputOrder = [];
  let closed = false;
  let received = 0;
  const m = {
    s,
    control,
    /** The stream of every STDOUT frame, in arrival order. */
    outputOrder,
    send: (buf) => s.send(buf),
    get closed() {
      return closed;
    },
    /** How many frames the guest sent, on every stream. */
    get received() {
      return received;
    },
    exec(stream, cfg, options) {
      const e = new Exec(m, stream, options);
      sessions.set(stream, e);
      s.send(encodeFrame(T.EXEC, encodeRecords({ version, ...cfg }), stream));
      return e;
    },
    /** The next frame on stream 0. */
    nextControl(timeoutMs = WAIT_MS) {
      if (control.length > 0) return Promise.resolve(control.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no stream-0 frame within ${timeoutMs} ms; log: ${s.log()}`)),
          timeoutMs,
        );
        controlWaiters.push((f) => {
          clearTimeout(timer);
          resolve(f);
        });
      });
    },
    async close() {
      await s.close();
    },
  };
  s.tap((f) => {
    if (f === null) {
      closed = true;
      for (const e of sessions.values()) e.rejectExit(new Error("channel closed"));
      for (const w of controlWaiters.splice(0)) w(null);
      return;
    }
    received++;
    if (f.stream === 0) {
      const w = controlWaiters.shift();
      if (w) w(f);
      else control.push(f);
      return;
    }
    const e = sessions.get(f.stream);
    assert.ok(e, `frame type ${f.type} on stream ${f.stream}, which was never opened`);
    if (f.type === T.STDOUT) outputOrder.push(f.stream);
    e.onFrame(f);
    if (f.type === T.EXIT) sessions.delete(f.stream);
  });
  s.send(encodeConfig({ args: workload, flags, net, version, ...config }));
  return m;
}

export async function withMachine(options, body) {
  const m = await startMachine(options);
  try {
    await body(m);
  } finally {
    await m.close();
  }
}

export const sh = (script) => ["/bin/sh", "-c", script];
