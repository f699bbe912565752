// Exec sessions for the API: buffered (POST …/exec), streamed into a WebSocket
// (GET …/exec/ws), and the two file transfers, which are `cat` in the guest with the
// body as stdin or stdout (mm's own busybox, so any image works).

import type { Readable, Writable } from "node:stream";
import { type ExitStatus, MmError } from "@mm/core";
import { type ExecClient, GUEST_BUSYBOX, type Runtime } from "@mm/runtime";

export interface ExecOptions {
  readonly argv: readonly string[];
  readonly env?: readonly string[];
  readonly user?: string;
  readonly workdir?: string;
}

/** Starts a session and settles with its exit; output goes to the callbacks (acknowledged as delivered). */
export function runSession(
  client: ExecClient,
  opts: ExecOptions & { readonly stdin: boolean },
  onOut: (stream: "stdout" | "stderr", data: Buffer) => void,
): Promise<ExitStatus> {
  return new Promise((resolve, reject) => {
    client.on("stdout", (d) => {
      onOut("stdout", d);
      client.ack(d.length);
    });
    client.on("stderr", (d) => {
      onOut("stderr", d);
      client.ack(d.length);
    });
    client.on("exit", resolve);
    client.on("guestError", (e) => reject(new MmError("MM_EXEC_SETUP", `${e.code}: ${e.message}`)));
    client.on("lost", (e) => reject(new MmError("MM_MACHINE_NOT_RUNNING", e.message)));
    client.start({
      args: [...opts.argv],
      env: [...(opts.env ?? [])],
      ...(opts.user !== undefined && { user: opts.user }),
      ...(opts.workdir !== undefined && { cwd: opts.workdir }),
      stdin: opts.stdin,
    });
  });
}

/** Runs to completion with output kept up to `maxOutput` bytes per stream. */
export async function execBuffered(
  rt: Runtime,
  ref: string,
  opts: ExecOptions & { readonly stdin?: Buffer },
  maxOutput: number,
): Promise<{ status: ExitStatus; stdout: Buffer; stderr: Buffer; truncated: boolean }> {
  const client = await rt.exec(ref);
  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  const size = { stdout: 0, stderr: 0 };
  let truncated = false;
  try {
    const done = runSession(client, { ...opts, stdin: opts.stdin !== undefined }, (s, d) => {
      const room = maxOutput - size[s];
      if (room <= 0) {
        truncated = true;
        return;
      }
      const keep = d.length > room ? d.subarray(0, room) : d;
      if (keep.length < d.length) truncated = true;
      out[s].push(keep);
      size[s] += keep.length;
    });
    if (opts.stdin !== undefined) {
      client.write(opts.stdin);
      client.end();
    }
    const status = await done;
    return { status, stdout: Buffer.concat(out.stdout), stderr: Buffer.concat(out.stderr), truncated };
  } finally {
    client.close();
  }
}

/**
 * Checks a guest path from a request: absolute, no NUL, and no `..` or `.` segments (a
 * client's traversal is refused, not resolved, so what is written is what was named).
 */
export function guestPath(p: string): string {
  if (!p.startsWith("/") || p.includes("\0") || p.split("/").some((seg) => seg === ".." || seg === ".")) {
    throw new MmError("MM_INVALID_PATH", JSON.stringify(p), {
      hint: "give an absolute guest path without '.' or '..' segments",
    });
  }
  if (p.length > 4096) throw new MmError("MM_INVALID_PATH", "longer than 4096 bytes");
  return p;
}

/** Writes `body` to a file in the guest (created 0644, or truncated), streaming within the channel's credit. */
export async function uploadFile(rt: Runtime, ref: string, path: string, body: Readable): Promise<number> {
  const client = await rt.exec(ref);
  let stderr = "";
  try {
    const done = runSession(
      client,
      { argv: [GUEST_BUSYBOX, "sh", "-c", 'cat > "$1"', "mm-upload", path], stdin: true },
      (_s, d) => {
        stderr += d.toString();
      },
    );
    let bytes = 0;
    for await (const chunk of body) {
      const b = chunk as Buffer;
      bytes += b.length;
      if (!client.write(b)) await new Promise<void>((r) => client.once("drain", () => r()));
    }
    client.end();
    const st = await done;
    if (st.status !== 0) throw new MmError("MM_GUEST_FILE", `${path}: ${stderr.trim() || `exit ${st.status}`}`);
    return bytes;
  } finally {
    client.close();
  }
}

/** Streams a guest file into `sink`; fails (before any byte) if it cannot be read. */
export async function downloadFile(rt: Runtime, ref: string, path: string, sink: Writable): Promise<void> {
  // Checked first, so that an error is an HTTP status and not a truncated body.
  const probe = await execBuffered(rt, ref, { argv: [GUEST_BUSYBOX, "test", "-f", path] }, 0);
  if (probe.status.status !== 0) throw new MmError("MM_GUEST_FILE", `${path}: no such file in the guest`);
  const client = await rt.exec(ref);
  try {
    const st = await runSession(client, { argv: [GUEST_BUSYBOX, "cat", path], stdin: false }, (s, d) => {
      if (s === "stdout") sink.write(d);
    });
    if (st.status !== 0) throw new MmError("MM_GUEST_FILE", `${path}: cat exited ${st.status}`);
  } finally {
    client.close();
  }
}
