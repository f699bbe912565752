// Where mm keeps things: state (machines, the database, root filesystems) and the
// cache (guest kernels, acceleration verdicts), and where its own guest assets are.

import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface Paths {
  readonly state: string;
  readonly cache: string;
}

export function defaultPaths(env: NodeJS.ProcessEnv = process.env): Paths {
  return {
    state: resolve(env.MM_STATE || "/var/lib/mm"),
    cache: resolve(env.MM_CACHE || "/var/cache/mm"),
  };
}

export const machineDir = (p: Paths, id: string) => join(p.state, "machines", id);
export const runDir = (p: Paths, id: string) => join(p.state, "run", id);
export const databasePath = (p: Paths) => join(p.state, "mm.db");
/** The running machine's exec endpoint (unix socket, 0600). */
export const execSocket = (p: Paths, id: string) => join(runDir(p, id), "exec.sock");
/** The running machine's supervisor control endpoint (snapshots, forks; unix socket, 0600). */
export const controlSocket = (p: Paths, id: string) => join(runDir(p, id), "control.sock");

/** The checkout (or install) root: the directory holding guest/. */
export function installRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "guest", "init"))) return dir;
    dir = dirname(dir);
  }
  return "/usr/lib/mm";
}

export function kernelPath(p: Paths, env: NodeJS.ProcessEnv = process.env): string {
  return env.MM_KERNEL || join(p.cache, "kernels", "default", "vmlinux");
}

export function initPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.MM_INIT || join(installRoot(), "guest", "init", "build", "mm-init");
}
