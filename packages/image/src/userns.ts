// Rootless image builds. A layer holds files of many owners, set-uid bits and device
// nodes; a normal user can create none of that. Like rootless Podman, mm builds in a
// user namespace where the user is root and their subordinate ids (/etc/subuid, mapped
// by newuidmap) are the other users: unshare(1) creates it, and a worker process
// (rootfs-worker.ts) unpacks and runs mke2fs inside. The ext4 it writes is the user's
// own file. Device nodes cannot be created even there: they are skipped, with a warning.

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { MmError } from "@mm/core";
import type { BuildImageRootfsOptions, ExtraFile, ImageRootfs, RootfsEvent } from "./rootfs.js";

/** The worker's lines on stdout. */
export type WorkerMessage =
  | { readonly event: RootfsEvent }
  | { readonly warning: string }
  | { readonly result: ImageRootfs }
  | { readonly error: { readonly code: string; readonly message: string; readonly hint: string } };

type Request = Pick<BuildImageRootfsOptions, "stateDir" | "image" | "maxLayerBytes"> & {
  readonly extraFiles: readonly (Omit<ExtraFile, "content"> & { readonly contentBase64?: string })[];
};

export function encodeBuildRequest(options: BuildImageRootfsOptions): string {
  const req: Request = {
    stateDir: options.stateDir,
    image: options.image,
    ...(options.maxLayerBytes !== undefined && { maxLayerBytes: options.maxLayerBytes }),
    extraFiles: (options.extraFiles ?? []).map(({ content, ...f }) => ({
      ...f,
      ...(content !== undefined && { contentBase64: Buffer.from(content).toString("base64") }),
    })),
  };
  return JSON.stringify(req);
}

export function decodeBuildRequest(text: string): BuildImageRootfsOptions {
  const req = JSON.parse(text) as Request;
  return {
    ...req,
    extraFiles: req.extraFiles.map(({ contentBase64, ...f }) => ({
      ...f,
      ...(contentBase64 !== undefined && { content: Buffer.from(contentBase64, "base64") }),
    })),
  };
}

/** Where the worker is: next to this module (dist/) or to the CLI bundle that inlines it. */
export const WORKER = fileURLToPath(new URL("./rootfs-worker.js", import.meta.url));

/** Runs the build in a user namespace of the calling user, relaying its progress. */
export function buildInUserNamespace(options: BuildImageRootfsOptions): Promise<ImageRootfs> {
  return new Promise((resolve, reject) => {
    const child = spawn("unshare", ["--user", "--map-auto", "--map-root-user", "--", process.execPath, WORKER], {
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stderr = "";
    let pending = "";
    let outcome: ImageRootfs | MmError | undefined;
    child.stderr.on("data", (d) => {
      stderr = (stderr + d).slice(-4000);
    });
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (d: string) => {
      pending += d;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        if (!line.trim()) continue;
        const m = JSON.parse(line) as WorkerMessage;
        if ("event" in m) options.onEvent?.(m.event);
        else if ("warning" in m) options.onWarning?.(m.warning);
        else if ("result" in m) outcome = m.result;
        else if ("error" in m) {
          const err = new MmError(m.error.code as never, undefined, { hint: m.error.hint });
          err.message = m.error.message;
          outcome = err;
        }
      }
    });
    child.once("error", (e) =>
      reject(new MmError("MM_TOOL_MISSING", `unshare (Debian package util-linux): ${e.message}`)),
    );
    child.once("close", (code, signal) => {
      if (outcome instanceof MmError) return reject(outcome);
      if (outcome) return resolve(outcome);
      reject(userNamespaceError(stderr, code, signal));
    });
    child.stdin.end(encodeBuildRequest(options));
  });
}

/** unshare's own failures (no subordinate ids, no newuidmap) in mm's terms. */
export function userNamespaceError(stderr: string, code: number | null, signal: string | null): MmError {
  const text = stderr.trim().split("\n").slice(-3).join("; ");
  if (/subuid|subgid|newuidmap|newgidmap/.test(text)) {
    return new MmError("MM_ROOTLESS_SETUP", `building an image without root needs subordinate ids: ${text}`);
  }
  if (/Operation not permitted|Permission denied/.test(text)) {
    return new MmError("MM_ROOTLESS_SETUP", `this host does not let users create user namespaces: ${text}`, {
      hint: "enable unprivileged user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone), or run mm as root",
    });
  }
  return new MmError(
    "MM_ROOTFS_FAILED",
    `the rootless build worker ended (${signal ? `signal ${signal}` : `exit status ${code}`})${text ? `: ${text}` : ""}`,
  );
}
