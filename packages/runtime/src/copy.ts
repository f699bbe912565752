// `mm cp`: files in and out of a running machine as a tar stream over an exec session,
// unpacked in the guest by mm's own busybox (so any image works) and on the host by
// node-tar into a fresh directory of ours (its path checks keep a hostile guest's
// archive inside it), then moved into place.

import { mkdtemp, rename, rm, stat } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { MmError } from "@mm/core";
import * as tar from "tar";
import type { ExecClient } from "./exec-client.js";
import { GUEST_BUSYBOX } from "./guest-tools.js";
import type { Runtime } from "./runtime.js";

/** Splits `NAME:PATH`; a plain path (or one with a slash before any colon) is the host's. */
export function parseCopyTarget(arg: string): { machine?: string; path: string } {
  const m = /^([A-Za-z0-9][A-Za-z0-9_.-]*):(.*)$/.exec(arg);
  if (!m) return { path: arg };
  if (!(m[2] as string).startsWith("/")) throw new MmError("MM_USAGE", `${arg}: the machine's path must be absolute`);
  return { machine: m[1] as string, path: m[2] as string };
}

const IN_SCRIPT = `
B=${GUEST_BUSYBOX}; D="$1"; N="$2"
if [ -d "$D" ]; then exec $B tar -x -C "$D"; fi
P=$($B dirname "$D")
[ -d "$P" ] || { echo "no such directory: $P" >&2; exit 2; }
T=$($B mktemp -d "$P/.mm-cp.XXXXXX") || exit 2
$B tar -x -C "$T" && $B rm -rf "$D" && $B mv "$T/$N" "$D"; R=$?
$B rm -rf "$T"; exit $R
`;

const OUT_SCRIPT = `
B=${GUEST_BUSYBOX}
[ -e "$1" ] || { echo "no such file or directory: $1" >&2; exit 2; }
exec $B tar -c -C "$($B dirname "$1")" "$($B basename "$1")"
`;

function collectStderr(client: ExecClient): () => string {
  let err = "";
  client.on("stderr", (d) => {
    err = (err + d.toString()).slice(-2000);
    client.ack(d.length);
  });
  return () => err.trim();
}

function waitExit(client: ExecClient): Promise<number> {
  return new Promise((res, rej) => {
    client.on("exit", (st) => res(st.status));
    client.on("lost", (e) => rej(new MmError("MM_MACHINE_NOT_RUNNING", e.message)));
  });
}

/** Copies a host file or directory to `guestPath` in the machine. */
export async function copyIn(rt: Runtime, ref: string, hostPath: string, guestPath: string): Promise<void> {
  const src = resolve(hostPath);
  if (!(await stat(src).catch(() => null))) throw new MmError("MM_USAGE", `${hostPath}: no such file or directory`);
  const client = await rt.exec(ref);
  const stderr = collectStderr(client);
  client.on("stdout", (d) => client.ack(d.length));
  const done = waitExit(client);
  client.start({
    args: [GUEST_BUSYBOX, "sh", "-c", IN_SCRIPT, "mm-cp", guestPath, basename(src)],
    env: [],
    user: "0:0",
    stdin: true,
  });
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (client.write(chunk)) cb();
      else client.once("drain", () => cb());
    },
    final(cb) {
      client.end();
      cb();
    },
  });
  await pipeline(tar.c({ cwd: dirname(src), portable: true }, [basename(src)]), sink);
  const status = await done;
  client.close();
  if (status !== 0)
    throw new MmError("MM_USAGE", `copy into ${ref}:${guestPath} failed: ${stderr() || `exit ${status}`}`);
}

/** Copies `guestPath` from the machine to a host path (into it, if it is a directory). */
export async function copyOut(rt: Runtime, ref: string, guestPath: string, hostPath: string): Promise<void> {
  const dest = resolve(hostPath);
  const destIsDir = (await stat(dest).catch(() => null))?.isDirectory() ?? false;
  const parent = destIsDir ? dest : dirname(dest);
  if (!(await stat(parent).catch(() => null))?.isDirectory())
    throw new MmError("MM_USAGE", `${parent}: no such directory`);
  const work = await mkdtemp(join(parent, ".mm-cp-"));
  try {
    const client = await rt.exec(ref);
    const stderr = collectStderr(client);
    const done = waitExit(client);
    const extract = tar.x({ cwd: work, strict: true });
    const extracted = new Promise<void>((res, rej) => {
      extract.on("finish", () => res());
      extract.on("close", () => res());
      extract.on("error", rej);
    });
    extracted.catch(() => undefined); // awaited below only if the guest side succeeded
    client.on("stdout", (d) => {
      extract.write(d, () => client.ack(d.length));
    });
    client.on("exit", () => extract.end());
    client.start({ args: [GUEST_BUSYBOX, "sh", "-c", OUT_SCRIPT, "mm-cp", guestPath], env: [], user: "0:0" });
    const status = await done;
    client.close();
    if (status !== 0)
      throw new MmError("MM_USAGE", `copy from ${ref}:${guestPath} failed: ${stderr() || `exit ${status}`}`);
    await extracted;
    const name = basename(guestPath);
    const target = destIsDir ? join(dest, name) : dest;
    await rm(target, { recursive: true, force: true });
    await rename(join(work, name), target);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
