// Runs a host tool (mke2fs, qemu-img) and turns its failure into a typed error.

import { execFile } from "node:child_process";
import { MmError } from "@mm/core";

export function runTool(tool: string, args: string[], what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException & { code?: string | number };
      if (e.code === "ENOENT") {
        return reject(new MmError("MM_TOOL_MISSING", `${tool} (${what})`));
      }
      const text = `${stderr}`.trim() || e.message;
      if (/No space left on device|Could not allocate block|ENOSPC/i.test(text)) {
        return reject(new MmError("MM_DISK_FULL", `${what}: ${text}`));
      }
      reject(new MmError("MM_ROOTFS_FAILED", `${what}: ${tool} failed: ${text}`));
    });
  });
}

/**
 * mke2fs -d of a tree mm itself made (the default image, the tools disk): every file in it
 * belongs to the user running mm, and the guest must see root. Without root, mke2fs runs
 * in a user namespace mapping just that user to root (no subordinate ids needed), so it
 * records uid 0 where the host has the user's.
 */
export function mke2fsAsRoot(args: string[], what: string): Promise<string> {
  return process.getuid?.() === 0
    ? runTool("mke2fs", args, what)
    : runTool("unshare", ["--user", "--map-root-user", "--", "mke2fs", ...args], what);
}
