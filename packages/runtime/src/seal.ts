// A fork's RAM, held as a sealed memfd while its clones start (host/jail/mm-seal.c says
// why). The clones' VMMs keep it alive afterwards: each maps it copy-on-write.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { MmError } from "@mm/core";
import { sealExecutor } from "./jail.js";

export interface SealedMemory {
  /** "/proc/PID/fd/N" of the memfd: what a clone's supervisor opens (MM_FORK_MEMORY). */
  readonly path: string;
  /** Lets the holder go; the memfd lives on in the VMMs that opened it. */
  release(): void;
}

/** Copies `capture` into a sealed memfd held by an mm-seal process. */
export async function sealCapture(capture: string, env: NodeJS.ProcessEnv): Promise<SealedMemory> {
  const bin = sealExecutor(env);
  if (!existsSync(bin)) throw new MmError("MM_TOOL_MISSING", `${bin} is not built`);
  const child = spawn(bin, [capture], { stdio: ["pipe", "pipe", "pipe"] });
  const release = () => {
    child.stdin.end();
    child.kill("SIGKILL");
  };
  let out = "";
  let err = "";
  child.stderr.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-2000);
  });
  try {
    const path = await new Promise<string>((resolve, reject) => {
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        const line = /^(\/proc\/\d+\/fd\/\d+)\n/.exec(out);
        if (line) resolve(line[1] as string);
      });
      child.on("error", reject);
      child.on("exit", (code, signal) =>
        reject(new Error(err.trim() || `mm-seal ended (${signal ?? `status ${code}`}) before holding the capture`)),
      );
    });
    return { path, release };
  } catch (e) {
    release();
    const full = /No space|ENOMEM|Cannot allocate/i.test((e as Error).message);
    throw new MmError(
      full ? "MM_DISK_FULL" : "MM_SNAPSHOT_FAILED",
      `sealing the fork's memory: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
}
