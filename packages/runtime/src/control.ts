// The supervisor's control endpoint: a unix socket (0600) per running machine, one
// JSON request and one JSON reply per connection. Only the supervisor may talk QMP to
// its VMM (QMP serves one client), so `mm snapshot create` and `mm fork` ask it here.

import { chmod, rm } from "node:fs/promises";
import { connect, createServer, type Server } from "node:net";
import { type ErrorCode, isMmError, MmError } from "@mm/core";
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

/** Requests are tiny; anything longer is not a client of ours. */
const MAX_REQUEST = 64 * 1024;

export async function serveControl(
  path: string,
  capture: (req: CaptureRequest) => Promise<CaptureResult>,
): Promise<Server> {
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
      let req: { op?: string; staging?: string; ramPath?: string };
      try {
        req = JSON.parse(text.slice(0, nl)) as typeof req;
      } catch {
        sock.end(`${JSON.stringify({ error: { code: "MM_USAGE", message: "bad request" } })}\n`);
        return;
      }
      if (req.op !== "capture" || typeof req.staging !== "string") {
        sock.end(`${JSON.stringify({ error: { code: "MM_USAGE", message: `unknown request ${req.op}` } })}\n`);
        return;
      }
      // The capture runs to its end even if the client goes away: the machine must be resumed.
      capture({ staging: req.staging, ...(typeof req.ramPath === "string" && { ramPath: req.ramPath }) }).then(
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
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let text = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new MmError("MM_SNAPSHOT_FAILED", `the machine's supervisor did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`${JSON.stringify({ op: "capture", ...req })}\n`));
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
        const reply = JSON.parse(text) as { result?: CaptureResult; error?: { code: string; message: string } };
        if (reply.result) return resolve(reply.result);
        const code = (reply.error?.code ?? "MM_INTERNAL") as ErrorCode;
        const err = new MmError(code, reply.error?.message ?? "no reply");
        reject(isMmError(err) ? err : new MmError("MM_INTERNAL", String(err)));
      } catch {
        reject(new MmError("MM_SNAPSHOT_FAILED", "the machine's supervisor gave no answer"));
      }
    });
  });
}
