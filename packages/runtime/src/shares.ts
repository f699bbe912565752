// Host directories shared with a guest (`-v /host/dir:/path[:ro]`). virtio-fs first: one
// virtiofsd per directory, started in a mount namespace of its own where the directory
// is bind-mounted onto an empty directory of the machine's, nosuid, nodev (and read-only for :ro, enforced on the host:
// the guest's own read-only mount is only a convenience), then confined to it by its
// namespace sandbox (pivot_root into the directory: guest paths, `..` and symlinks all
// resolve inside it), without CAP_MKNOD (a guest cannot plant device nodes on the host).
// Where virtiofsd is missing, QEMU's 9p server (readonly=on for :ro).

import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, existsSync } from "node:fs";
import { mkdir, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { type BindMount, MmError } from "@mm/core";
import type { SharedDir } from "@mm/vmm";
import { isRootless, type Paths } from "./paths.js";

export const VIRTIOFSD = "/usr/lib/qemu/virtiofsd";
/** The virtio-fs / 9p tag of a machine's i-th shared directory (mm-init mounts it by this). */
export const shareTag = (i: number) => `mmfs${i}`;

export type ShareDriver = "virtio-fs" | "9p";

/**
 * virtio-fs where its daemon is installed and mm runs as root (Debian's virtiofsd needs
 * root for its sandbox); otherwise 9p (MM_FS=9p forces it).
 */
export function shareDriver(env: NodeJS.ProcessEnv, rootless = isRootless()): ShareDriver {
  return !rootless && env.MM_FS !== "9p" && existsSync(env.MM_VIRTIOFSD ?? VIRTIOFSD) ? "virtio-fs" : "9p";
}

/**
 * Checks host directories before a machine is created: each exists and is a directory;
 * `/`, mm's state root, and any directory holding or inside it are refused unless forced.
 */
export async function checkBinds(binds: readonly BindMount[], paths: Paths, force: boolean): Promise<void> {
  for (const b of binds) {
    const st = await stat(b.source).catch(() => null);
    if (!st) throw new MmError("MM_INVALID_VOLUME", `${b.source} does not exist on the host`);
    if (!st.isDirectory()) {
      throw new MmError("MM_INVALID_VOLUME", `${b.source} is not a directory (only directories are shared)`);
    }
    const src = resolve(b.source);
    const state = resolve(paths.state);
    const within = (a: string, b2: string) => a === b2 || a.startsWith(`${b2}/`) || b2 === "/";
    if (!force && (src === "/" || within(state, src) || within(src, state))) {
      throw new MmError("MM_INVALID_VOLUME", `${b.source} is / or holds mm's state (${paths.state})`, {
        hint: "share a directory of its own; --force-mount shares it anyway",
      });
    }
  }
}

export interface StartedShares {
  readonly driver: ShareDriver;
  readonly shares: SharedDir[];
  readonly daemons: ChildProcess[];
}

/** Waits until a daemon listens on `path`; fails if it exits first or takes over 10 s. */
export async function waitForSocket(path: string, daemon: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!existsSync(path)) {
    if (daemon.exitCode !== null || daemon.signalCode !== null) {
      throw new MmError("MM_QEMU_FAILED", `${what} exited (${daemon.exitCode ?? daemon.signalCode}) before listening`);
    }
    if (Date.now() > deadline) throw new MmError("MM_QEMU_FAILED", `${what} did not listen within 10 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Starts what the machine's shared directories need; the VMM connects to them at start. */
export async function startShares(
  binds: readonly BindMount[],
  runDir: string,
  logDir: string,
  env: NodeJS.ProcessEnv,
  onExit: (i: number, how: string) => void,
): Promise<StartedShares> {
  const driver = shareDriver(env);
  if (driver === "9p") {
    return {
      driver,
      shares: binds.map((b, i) => ({ kind: "9p", tag: shareTag(i), path: b.source, readOnly: b.readOnly })),
      daemons: [],
    };
  }
  const shares: SharedDir[] = [];
  const daemons: ChildProcess[] = [];
  try {
    for (const [i, b] of binds.entries()) {
      const socket = join(runDir, `fs${i}.sock`);
      const view = join(runDir, `fs${i}.view`);
      await rm(socket, { force: true });
      await mkdir(view, { recursive: true, mode: 0o700 });
      const opts = `nosuid,nodev${b.readOnly ? ",ro" : ""}`;
      // setpriv --pdeathsig: the daemon dies with the supervisor, as QEMU does.
      const daemon = spawn(
        "setpriv",
        [
          "--pdeathsig",
          "KILL",
          "--",
          "unshare",
          "--mount",
          "--propagation",
          "private",
          "--",
          "sh",
          "-c",
          // The directory is bind-mounted (in the daemon's own mount namespace only) onto an
          // empty directory of the machine's, so restricting it never touches the host's view.
          'mount --bind "$1" "$5" && mount -o "remount,bind,$3" "$5" && exec "$4" --socket-path="$2" -o source="$5" -o sandbox=namespace -o cache=auto -o no_posix_lock -o no_flock -o modcaps=-mknod',
          "mm-virtiofsd",
          b.source,
          socket,
          opts,
          env.MM_VIRTIOFSD ?? VIRTIOFSD,
          view,
        ],
        { stdio: ["ignore", "ignore", "pipe"] },
      );
      daemon.stderr?.pipe(createWriteStream(join(logDir, `virtiofsd-${i}.log`), { flags: "a" }));
      daemon.once("exit", (code, sig) => onExit(i, sig ? `killed by ${sig}` : `exit status ${code}`));
      daemons.push(daemon);
      await waitForSocket(socket, daemon, `virtiofsd for ${b.source}`);
      shares.push({ kind: "virtiofs", tag: shareTag(i), socket });
    }
  } catch (e) {
    for (const d of daemons) d.kill("SIGKILL");
    throw e;
  }
  return { driver, shares, daemons };
}
