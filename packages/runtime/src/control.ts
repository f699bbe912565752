// The supervisor's control endpoint: a unix socket (0600) per running machine, one
// JSON request and one JSON reply per connection. Only the supervisor may talk QMP to
// its VMM (QMP serves one client), so `mm snapshot create` and `mm fork` ask it here.

import { chmod, rm } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { type ErrorCode, MmError } from "@mm/core";
import type { Compat } from "./snapshots.js";

export interface CaptureRequest {
  /** Directory for the state file (and the RAM file unless `ramPath` is given). */
  readonly staging: string;
  /** Where the RAM copy goes (a fork's goes to shared memory). */
  readonly ramPath?: string;
}

export interface CaptureResult {
  /** The frozen layer: the machine's disk as it was when paused. */
  readonly layer: string;
  readonly virtualSize: number;
  readonly statePath: string;
  readonly ramPath: string | null;
  readonly memory: "file" | "stream";
  readonly agent: { readonly version: number; readonly phase: "config" | "started" };
  readonly compat: Compat;
  /** How long the guest's vCPUs were stopped. */
  readonly pausedMs: number;
}

/** The snapshot metadata a capture supplies (its timing is not part of the snapshot). */
export function capturedMeta(c: CaptureResult): Omit<CaptureResult, "pausedMs"> {
  const { pausedMs: _, ...meta } = c;
  return meta;
}

/** Requests are tiny; anything longer is not a client of ours. */
const MAX_REQUEST = 64 * 1024;

export interface DiskStats {
  readonly device: string;
  readonly readBytes: number;
  readonly writtenBytes: number;
}

export interface VmStats {
  readonly disks: readonly DiskStats[];
  /** The guest's memory as the balloon leaves it (query-balloon's actual). */
  readonly balloonBytes: number | null;
}

export interface ControlHandlers {
  capture(req: CaptureRequest): Promise<CaptureResult>;
  /** The VMM's block I/O counters (QMP query-blockstats) and balloon size. */
  vmStats(): Promise<VmStats>;
  /** Sets the balloon so that the guest has `bytes` of memory (`mm update --memory`). */
  setMemory(bytes: number): Promise<VmStats>;
  /** A claimed pool sandbox's timeouts, counted from now (its record already says them). */
  retime(t: SandboxTimes): Promise<SandboxTimes>;
}

export interface SandboxTimes {
  readonly timeoutMs: number;
  readonly idleMs?: number;
}

export async function serveControl(path: string, handlers: ControlHandlers): Promise<Server> {
  await rm(path, { force: true });
  const server = createServer((sock) => {
    let text = "";
    sock.setEncoding("utf8");
    sock.on("error", () => undefined);
    sock.on("data", (d: string) => {
      text += d;
      if (text.length > MAX_REQUEST) sock.destroy();
      const nl = text.indexOf("\n");
      if (nl < 0) return;
      sock.removeAllListeners("data");
      let req: { op?: string; staging?: string; ramPath?: string; bytes?: number; timeoutMs?: number; idleMs?: number };
      try {
        req = JSON.parse(text.slice(0, nl)) as typeof req;
      } catch {
        sock.end(`${JSON.stringify({ error: { code: "MM_USAGE", message: "bad request" } })}\n`);
        return;
      }
      const work: Promise<unknown> | null =
        req.op === "capture" && typeof req.staging === "string"
          ? // The capture runs to its end even if the client goes away: the machine must be resumed.
            handlers.capture({ staging: req.staging, ...(typeof req.ramPath === "string" && { ramPath: req.ramPath }) })
          : req.op === "vmStats"
            ? handlers.vmStats()
            : req.op === "setMemory" && typeof req.bytes === "number"
              ? handlers.setMemory(req.bytes)
              : req.op === "retime" && typeof req.timeoutMs === "number"
                ? handlers.retime({
                    timeoutMs: req.timeoutMs,
                    ...(typeof req.idleMs === "number" && { idleMs: req.idleMs }),
                  })
                : null;
      if (!work) {
        sock.end(`${JSON.stringify({ error: { code: "MM_USAGE", message: `unknown request ${req.op}` } })}\n`);
        return;
      }
      work.then(
        (result) => sock.end(`${JSON.stringify({ result })}\n`),
        (e: unknown) => {
          const err = e instanceof MmError ? e : new MmError("MM_INTERNAL", String(e));
          sock.end(`${JSON.stringify({ error: { code: err.code, message: err.message } })}\n`);
        },
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  await chmod(path, 0o600);
  return server;
}

/** Asks a running machine's supervisor to capture it. */
export function requestCapture(path: string, req: CaptureRequest, timeoutMs = 120_000): Promise<CaptureResult> {
  return request<CaptureResult>(path, { op: "capture", ...req }, timeoutMs);
}

/** Asks a running machine's supervisor for its VMM's disk counters and balloon size. */
export function requestVmStats(path: string): Promise<VmStats> {
  return request<VmStats>(path, { op: "vmStats" }, 10_000);
}

/** Asks a running machine's supervisor to resize the guest's memory through the balloon. */
export function requestSetMemory(path: string, bytes: number): Promise<VmStats> {
  return request<VmStats>(path, { op: "setMemory", bytes }, 30_000);
}

/** Gives a claimed pool sandbox its claimer's timeouts, counted from now. */
export function requestRetime(path: string, t: SandboxTimes): Promise<SandboxTimes> {
  return request<SandboxTimes>(path, { op: "retime", ...t }, 10_000);
}

function request<T>(path: string, body: Record<string, unknown>, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let text = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new MmError("MM_SNAPSHOT_FAILED", `the machine's supervisor did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`${JSON.stringify(body)}\n`));
    sock.on("data", (d: string) => {
      text += d;
    });
    sock.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === "ENOENT" || e.code === "ECONNREFUSED"
          ? new MmError("MM_MACHINE_NOT_RUNNING", "the machine's supervisor is not listening")
          : new MmError("MM_SNAPSHOT_FAILED", e.message),
      );
    });
    sock.on("end", () => {
      clearTimeout(timer);
      try {
        const reply = JSON.parse(text) as { result?: T; error?: { code: string; message: string } };
        if (reply.result !== undefined) return resolve(reply.result);
        reject(new MmError((reply.error?.code ?? "MM_INTERNAL") as ErrorCode, reply.error?.message ?? "no reply"));
      } catch {
        reject(new MmError("MM_SNAPSHOT_FAILED", "the machine's supervisor gave no answer"));
      }
    });
  });
}
