// Where mm keeps things: state (machines, the database, root filesystems) and the
// cache (guest kernels, acceleration verdicts), and where its own guest assets are.

import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export interface Paths {
  readonly state: string;
  readonly cache: string;
}

/** Rootless mode: mm runs as a normal user (no bridge, no TAP, no uid switching). */
export function isRootless(): boolean {
  return process.getuid?.() !== 0;
}

const SYSTEM_STATE = "/var/lib/mm";
const SYSTEM_CACHE = "/var/cache/mm";

/**
 * root: /var/lib/mm and /var/cache/mm. A normal user: the XDG base directories
 * ($XDG_STATE_HOME/mm, $XDG_CACHE_HOME/mm; ~/.local/state/mm and ~/.cache/mm by default),
 * so every user has a state of their own, as with rootless Podman.
 */
export function defaultPaths(env: NodeJS.ProcessEnv = process.env, rootless = isRootless()): Paths {
  const home = env.HOME || homedir();
  const xdg = (name: string, fallback: string) => resolve(env[name] || join(home, fallback), "mm");
  return {
    state: resolve(env.MM_STATE || (rootless ? xdg("XDG_STATE_HOME", ".local/state") : SYSTEM_STATE)),
    cache: resolve(env.MM_CACHE || (rootless ? xdg("XDG_CACHE_HOME", ".cache") : SYSTEM_CACHE)),
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

/**
 * The guest kernel: $MM_KERNEL, else the cache's; a user without a kernel of their own
 * uses the one the host's setup installed (it is only read).
 */
export function kernelPath(p: Paths, env: NodeJS.ProcessEnv = process.env): string {
  if (env.MM_KERNEL) return env.MM_KERNEL;
  const own = join(p.cache, "kernels", "default", "vmlinux");
  const system = join(SYSTEM_CACHE, "kernels", "default", "vmlinux");
  return existsSync(own) || !existsSync(system) ? own : system;
}

export function initPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.MM_INIT || join(installRoot(), "guest", "init", "build", "mm-init");
}
