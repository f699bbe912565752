// Test harness for the CLI: runs the real `mm` binary against a private state root.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

/** The bundle bin/mm runs (npm run build makes it from main.js). */
export const CLI = resolve(import.meta.dirname, "mm.mjs");

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface Harness {
  readonly state: string;
  /** The network namespace every mm command of this harness runs in. */
  readonly netns: string;
  readonly env: NodeJS.ProcessEnv;
  /** Runs mm with `args` (or, given `argv`, that command line instead, e.g. under `script`). */
  mm(args: string[], extraEnv?: NodeJS.ProcessEnv, input?: string, argv?: string[]): Promise<CliResult>;
  /** Spawns mm (in the harness's namespace unless `inNetns` is false: then on the host's loopback only). */
  spawnMm(args: string[], extraEnv?: NodeJS.ProcessEnv, stdin?: "ignore" | "pipe", inNetns?: boolean): ChildProcess;
  cleanup(): Promise<void>;
}

/**
 * Every mm command of a harness runs inside a network namespace the harness creates
 * (and removes in cleanup): bridges, TAPs, nftables rules and guest traffic never touch
 * the host's own network. Its resolv.conf names no outside resolver.
 */
export function harness(prefix = "mm-cli-", options: { netns?: boolean } = {}): Harness {
  const state = mkdtempSync(join(tmpdir(), prefix));
  const useNetns = options.netns ?? true;
  const netns = useNetns ? `mm-test-${randomBytes(4).toString("hex")}` : "";
  if (useNetns) {
    execFileSync("ip", ["netns", "add", netns]);
    execFileSync("ip", ["-n", netns, "link", "set", "lo", "up"]);
    mkdirSync(`/etc/netns/${netns}`, { recursive: true });
    writeFileSync(
      `/etc/netns/${netns}/resolv.conf`,
      "# mm test namespace: no outside resolver\nnameserver 127.0.0.1\n",
    );
  }
  // Without a namespace of its own, a suite's machines get no network at all.
  // Guest RAM files go to a shared-memory directory of the harness's own.
  const shm = `/dev/shm/${prefix}${randomBytes(4).toString("hex")}`;
  const env = { ...process.env, MM_STATE: state, MM_SHM: shm, ...(useNetns ? {} : { MM_NETWORK: "none" }) };
  const spawnMm = (
    args: string[],
    extraEnv: NodeJS.ProcessEnv = {},
    stdin: "ignore" | "pipe" = "ignore",
    inNetns = useNetns,
  ) =>
    inNetns
      ? spawn("ip", ["netns", "exec", netns, process.execPath, CLI, ...args], {
          env: { ...env, ...extraEnv },
          stdio: [stdin, "pipe", "pipe"],
        })
      : spawn(process.execPath, [CLI, ...args], { env: { ...env, ...extraEnv }, stdio: [stdin, "pipe", "pipe"] });
  const mm = (args: string[], extraEnv: NodeJS.ProcessEnv = {}, input?: string, argv?: string[]) =>
    new Promise<CliResult>((resolvePromise) => {
      const stdin = input === undefined ? "ignore" : "pipe";
      const child = argv
        ? spawn(argv[0] as string, argv.slice(1), { env: { ...env, ...extraEnv }, stdio: [stdin, "pipe", "pipe"] })
        : spawnMm(args, extraEnv, stdin);
      child.stdin?.end(input);
      let stdout = "";
      let stderr = "";
      child.stdout?.on("data", (d) => {
        stdout += d;
      });
      child.stderr?.on("data", (d) => {
        stderr += d;
      });
      child.on("close", (code, signal) => resolvePromise({ code, signal, stdout, stderr }));
    });
  return {
    state,
    env,
    netns,
    mm,
    spawnMm,
    async cleanup() {
      const ids = (await mm(["ps", "-a", "-q"])).stdout.split("\n").filter(Boolean);
      if (ids.length > 0) await mm(["rm", "-f", ...ids]);
      rmSync(state, { recursive: true, force: true });
      rmSync(shm, { recursive: true, force: true });
      if (useNetns) {
        execFileSync("ip", ["netns", "del", netns]);
        rmSync(`/etc/netns/${netns}`, { recursive: true, force: true });
      }
    },
  };
}

/** Processes whose command line mentions `needle` (to prove nothing was left behind). */
export async function processesMatching(needle: string): Promise<number[]> {
  const { readdirSync, readFileSync } = await import("node:fs");
  const pids: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${d}/cmdline`, "utf8").replaceAll("\0", " ").includes(needle)) pids.push(Number(d));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

export async function until<T>(
  f: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 120_000,
  what = "condition",
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts `mm serve` and resolves with the addresses it prints. */
export function startServer(
  h: Harness,
  args: string[],
  inNetns: boolean,
): Promise<{ child: ChildProcess; addresses: string[] }> {
  const child = inNetns ? h.spawnMm(["serve", ...args]) : h.spawnMm(["serve", ...args], {}, "ignore", false);
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    child.stdout?.on("data", (d) => {
      out += d;
      const line = out.split("\n")[0];
      if (out.includes("\n") && line)
        resolve({ child, addresses: (JSON.parse(line) as { listening: string[] }).listening });
    });
    child.stderr?.on("data", (d) => {
      err += d;
    });
    child.on("exit", (code) => reject(new Error(`mm serve exited ${code}: ${err}`)));
  });
}
