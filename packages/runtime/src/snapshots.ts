// Snapshots, templates and fork captures: immutable, content-addressed records of a
// machine's disk (a frozen qcow2 layer), and for running machines its device state
// and RAM. docs/adr/0007-snapshots.md explains the layout and the capture sequence.

import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chmod, chown, link, mkdir, open, readdir, realpath, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { isActive, type MachineSpec, MmError } from "@mm/core";
import { runTool } from "./exec-tool.js";
import { mapFsError } from "./fs-errors.js";
import { machineDir, type Paths } from "./paths.js";
import type { MachineRecord, SnapshotRow, Store } from "./store.js";

export type SnapshotKind = SnapshotRow["kind"];

export interface FileDigest {
  readonly path: string;
  /** null for a fork's RAM capture: it lives as long as its clones and is never verified. */
  readonly sha256: string | null;
  /** Apparent size (RAM files are sparse: their allocated size is smaller). */
  readonly bytes: number;
}

/** What a restore must match: a state saved under one build loads only into the same. */
export interface Compat {
  readonly kernel: string;
  readonly engine: string;
  readonly accel: string;
  readonly tools: string;
  readonly cpus: number;
  readonly memoryMib: number;
  readonly nic: boolean;
  /** The VMM's device layout (DEVICE_LAYOUT); absent in snapshots from before it existed (layout 1). */
  readonly layout?: number;
}

export interface SnapshotMeta {
  readonly format: 1;
  readonly kind: SnapshotKind;
  readonly machine: string;
  readonly machineId: string;
  readonly tag: string;
  readonly createdAt: string;
  /** The snapshot the source machine was itself restored from. */
  readonly parent: string | null;
  readonly spec: MachineSpec;
  /** "file": RAM captured as a file; "stream": RAM inside the state file; null: disk only. */
  readonly memory: "file" | "stream" | null;
  /** Where the agent conversation stood ("config": a template waiting for its CONFIG). */
  readonly agent: { readonly version: number; readonly phase: "config" | "started" } | null;
  readonly compat: Compat | null;
  readonly disk: { readonly layer: FileDigest; readonly chain: readonly string[]; readonly virtualSize: number };
  readonly ram: FileDigest | null;
  readonly state: FileDigest | null;
}

export interface Snapshot extends SnapshotMeta {
  readonly id: string;
  readonly templateKey: string | null;
}

export const snapshotsDir = (p: Paths) => join(p.state, "snapshots");
export const layersDir = (p: Paths) => join(p.state, "layers");

/** Guest RAM lives in shared memory (tmpfs), one directory per state root. */
export function shmDir(p: Paths, env: NodeJS.ProcessEnv = process.env): string {
  return env.MM_SHM || join("/dev/shm", `mm-${createHash("sha256").update(p.state).digest("hex").slice(0, 12)}`);
}
export const machineRamPath = (p: Paths, id: string, env?: NodeJS.ProcessEnv) =>
  join(shmDir(p, env), "machines", `${id}.ram`);

/**
 * A template's RAM, cached in shared memory: template starts copy it from there
 * (tmpfs to tmpfs) rather than from the state directory's disk.
 */
export async function templateRamCache(paths: Paths, env: NodeJS.ProcessEnv, snap: Snapshot): Promise<string> {
  if (!snap.ram) throw new MmError("MM_SNAPSHOT_CORRUPT", `template ${snap.id.slice(0, 12)} has no RAM file`);
  const cached = join(shmDir(paths, env), "templates", `${snap.id}.ram`);
  if (existsSync(cached)) return cached;
  await mkdir(dirname(cached), { recursive: true, mode: 0o700 });
  const tmp = `${cached}.${randomBytes(4).toString("hex")}`;
  await runTool("cp", ["--sparse=always", snap.ram.path, tmp], "caching the template's RAM");
  await rename(tmp, cached);
  return cached;
}

/** The machine's writable overlay: the record's, or root.qcow2 in its directory. */
export function activeOverlay(paths: Paths, rec: MachineRecord): string {
  return rec.rootDisk ?? join(machineDir(paths, rec.id), "root.qcow2");
}

// qcow2's header is fixed by the spec (docs/interop/qcow2.txt in QEMU): magic, version,
// backing_file_offset (u64 at 8), backing_file_size (u32 at 16). Reading it here avoids
// a `qemu-img info` process per layer when walking chains for GC.
export async function qcow2Backing(path: string): Promise<string | null> {
  const fh = await open(path, "r");
  try {
    const head = Buffer.alloc(20);
    await fh.read(head, 0, 20, 0);
    if (head.readUInt32BE(0) !== 0x514649fb) return null; // not qcow2 (a raw base)
    const off = Number(head.readBigUInt64BE(8));
    const size = head.readUInt32BE(16);
    if (off === 0 || size === 0 || size > 4096) return null;
    const name = Buffer.alloc(size);
    await fh.read(name, 0, size, off);
    const backing = name.toString("utf8");
    return backing.startsWith("/") ? backing : join(dirname(path), backing);
  } finally {
    await fh.close();
  }
}

/** The files a disk depends on, top first: each layer's backing file down to the image base. */
export async function diskChain(top: string): Promise<string[]> {
  const chain = [top];
  for (let cur: string | null = top; chain.length < 256; ) {
    cur = await qcow2Backing(cur).catch(() => null);
    if (!cur) break;
    chain.push(cur);
  }
  return chain;
}

export async function sizeOnly(path: string): Promise<FileDigest> {
  return { path, sha256: null, bytes: (await stat(path)).size };
}

export async function hashFile(path: string): Promise<FileDigest> {
  // One reused buffer, not a read stream: a stream's fresh buffer per chunk made `mm
  // restore` of a 256 MiB guest spend ~680 ms here in a new process, this ~210 ms.
  const h = createHash("sha256");
  const buf = Buffer.allocUnsafe(4 << 20);
  let bytes = 0;
  const fh = await open(path, "r");
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, bytes);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
      bytes += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return { path, sha256: h.digest("hex"), bytes };
}

/** The kernel's identity: its build hash when it sits in mm's kernel cache, else its content hash. */
export async function kernelIdentity(kernel: string): Promise<string> {
  const real = await realpath(kernel);
  const m = /\/kernels\/([0-9a-f]{8,})\/vmlinux$/.exec(real);
  return m ? `build:${m[1]}` : `sha256:${(await hashFile(real)).sha256}`;
}

/** Creates a qcow2 overlay over `backing` without opening it (a running VMM holds its lock). */
export async function createLayerOverlay(backing: string, overlay: string, virtualSize: number): Promise<void> {
  await runTool(
    "qemu-img",
    ["create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", "qcow2", overlay, String(virtualSize)],
    "creating a disk overlay",
  );
}

export async function virtualSize(image: string): Promise<number> {
  const out = await runTool("qemu-img", ["info", "-U", "--output=json", image], "reading a disk's size");
  return (JSON.parse(out) as { "virtual-size": number })["virtual-size"];
}

/** A fresh name for a frozen layer, and the machine overlay that will sit on it. */
export function newLayerNames(paths: Paths, machineId: string): { layer: string; overlay: string } {
  const tag = `${Date.now().toString(36)}-${randomBytes(4).toString("hex")}`;
  return {
    layer: join(layersDir(paths), `${tag}.qcow2`),
    overlay: join(machineDir(paths, machineId), `root-${tag}.qcow2`),
  };
}

/**
 * A frozen layer is immutable and no machine's own: root's (where mm runs as root: a
 * jailed VMM owned it as its overlay), read-only, readable by the VMMs whose disks stand
 * on it (a jail shows each VMM only its own chain).
 */
export async function releaseLayer(layer: string): Promise<void> {
  if (process.getuid?.() === 0) await chown(layer, 0, 0);
  await chmod(layer, 0o444);
}

/**
 * Freezes a disk that no VMM has open: the overlay becomes a layer (a hard link, so no
 * byte is copied) and the machine continues on a new overlay over it.
 */
export async function freezeStoppedDisk(
  paths: Paths,
  rec: MachineRecord,
): Promise<{ layer: string; overlay: string; virtualSize: number }> {
  const current = activeOverlay(paths, rec);
  const names = newLayerNames(paths, rec.id);
  const size = await virtualSize(current);
  await mkdir(layersDir(paths), { recursive: true });
  await link(current, names.layer);
  try {
    await releaseLayer(names.layer);
    await createLayerOverlay(names.layer, names.overlay, size);
  } catch (e) {
    await rm(names.layer, { force: true });
    throw e;
  }
  return { ...names, virtualSize: size };
}

/**
 * The key of an image's template: everything its captured state depends on (the root
 * filesystem build, kernel, VMM, accelerator, tools disk, and the machine's shape).
 */
export function templateKey(compat: Compat, baseRootfs: string, diskSizeMib: number | undefined): string {
  return createHash("sha256")
    .update(JSON.stringify({ v: 1, compat, baseRootfs, diskSizeMib: diskSizeMib ?? null }))
    .digest("hex");
}

/** Content id of a snapshot: the hash of its canonical metadata (which holds its files' hashes). */
export function snapshotId(meta: SnapshotMeta): string {
  return createHash("sha256").update(JSON.stringify(meta)).digest("hex");
}

/**
 * Hashes the captured files, writes meta.json and moves the staging directory to its
 * content-addressed place; only then is the snapshot recorded (and visible). A crash
 * before that leaves a staging directory that `collectGarbage` removes.
 */
export async function finalizeSnapshot(
  store: Store,
  paths: Paths,
  staging: string,
  meta: Omit<SnapshotMeta, "ram" | "state" | "disk"> & {
    readonly ramPath: string | null;
    readonly statePath: string | null;
    readonly layer: string;
    readonly virtualSize: number;
  },
  options: { templateKey?: string; id?: string } = {},
): Promise<Snapshot> {
  const { ramPath, statePath, layer, virtualSize: size, ...rest } = meta;
  const [ram, state, layerDigest, chain] = await Promise.all([
    ramPath ? (meta.kind === "fork" ? sizeOnly(ramPath) : hashFile(ramPath)) : null,
    statePath ? hashFile(statePath) : null,
    hashFile(layer),
    diskChain(layer),
  ]);
  const provisional: SnapshotMeta = {
    ...rest,
    ram,
    state,
    disk: { layer: layerDigest, chain: chain.slice(1), virtualSize: size },
  };
  const id = options.id ?? snapshotId(provisional);
  const dir = join(snapshotsDir(paths), id);
  // Files inside the staging directory move with it: record their final paths.
  const moved = (f: FileDigest | null) =>
    f && dirname(f.path) === staging ? { ...f, path: join(dir, f.path.slice(staging.length + 1)) } : f;
  const final: SnapshotMeta = { ...provisional, ram: moved(ram), state: moved(state) };
  try {
    await writeFile(join(staging, "meta.json"), `${JSON.stringify(final, null, 2)}\n`, { mode: 0o444 });
    await rename(staging, dir);
  } catch (e) {
    throw mapFsError(e, "storing the snapshot");
  }
  try {
    store.addSnapshot({
      id,
      kind: final.kind,
      machine: final.machine,
      tag: final.tag,
      templateKey: options.templateKey ?? null,
      meta: JSON.stringify(final),
      createdAt: final.createdAt,
    });
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
  return { ...final, id, templateKey: options.templateKey ?? null };
}

export function toSnapshot(row: SnapshotRow): Snapshot {
  return { ...(JSON.parse(row.meta) as SnapshotMeta), id: row.id, templateKey: row.templateKey };
}

/** Finds a snapshot by id, unique id prefix, or MACHINE:TAG (the newest with that tag). */
export function resolveSnapshot(store: Store, ref: string): Snapshot {
  const rows = store.snapshots();
  const exact = rows.find((r) => r.id === ref);
  if (exact) return toSnapshot(exact);
  const colon = ref.lastIndexOf(":");
  if (colon > 0) {
    const machine = ref.slice(0, colon);
    const tag = ref.slice(colon + 1);
    const hits = rows.filter((r) => r.machine === machine && r.tag === tag && r.kind === "snapshot");
    const last = hits.at(-1);
    if (last) return toSnapshot(last);
  }
  if (/^[0-9a-f]{4,}$/.test(ref)) {
    const hits = rows.filter((r) => r.id.startsWith(ref));
    if (hits.length === 1) return toSnapshot(hits[0] as SnapshotRow);
    if (hits.length > 1) throw new MmError("MM_NO_SUCH_SNAPSHOT", `"${ref}" matches ${hits.length} snapshots`);
  }
  throw new MmError("MM_NO_SUCH_SNAPSHOT", `"${ref}"`);
}

/**
 * Checks a snapshot's files before it is restored: every file is there with its
 * recorded size; with `full`, its content hash too (RAM files are read whole).
 */
export async function verifySnapshot(snap: Snapshot, full: boolean, options: { ram?: boolean } = {}): Promise<void> {
  const ram = options.ram === false ? null : snap.ram;
  const files = [snap.disk.layer, ram, snap.state].filter((f): f is FileDigest => f !== null);
  for (const f of files) {
    const st = await stat(f.path).catch(() => null);
    if (!st) throw new MmError("MM_SNAPSHOT_CORRUPT", `${f.path} is missing`);
    if (st.size !== f.bytes) {
      throw new MmError("MM_SNAPSHOT_CORRUPT", `${f.path} is ${st.size} bytes, the snapshot recorded ${f.bytes}`);
    }
  }
  // The state file is small and says how to read everything else: always check it.
  for (const f of full ? files : snap.state ? [snap.state] : []) {
    if (f.sha256 !== null && (await hashFile(f.path)).sha256 !== f.sha256) {
      throw new MmError("MM_SNAPSHOT_CORRUPT", `${f.path} does not match its recorded hash`);
    }
  }
  for (const base of snap.disk.chain) {
    if (!(await stat(base).catch(() => null))) throw new MmError("MM_SNAPSHOT_CORRUPT", `its base ${base} is missing`);
  }
}

/** Compares a snapshot's build requirements with this host's; throws what differs. */
export function checkCompat(snap: Snapshot, here: Compat): void {
  const want = snap.compat;
  if (!want) return;
  const diffs: string[] = [];
  if (want.kernel !== here.kernel) diffs.push(`guest kernel ${want.kernel} (here ${here.kernel})`);
  if (want.engine !== here.engine) diffs.push(`VMM ${want.engine} (here ${here.engine})`);
  if (want.accel !== here.accel) diffs.push(`accelerator ${want.accel} (here ${here.accel})`);
  if (want.tools !== here.tools) diffs.push(`guest tools disk ${want.tools} (here ${here.tools})`);
  if ((want.layout ?? 1) !== (here.layout ?? 1))
    diffs.push(`device layout ${want.layout ?? 1} (here ${here.layout ?? 1})`);
  if (diffs.length > 0) {
    throw new MmError("MM_SNAPSHOT_INCOMPATIBLE", `snapshot ${snap.id.slice(0, 12)} needs ${diffs.join(", ")}`);
  }
}

/** Machines and snapshots made from a snapshot (it may not be removed while they exist). */
export function childrenOf(store: Store, id: string): { machines: string[]; snapshots: string[] } {
  return {
    machines: store
      .list()
      .filter((m) => m.spec.restoreFrom?.snapshot === id)
      .map((m) => m.spec.name),
    snapshots: store
      .snapshots()
      .map(toSnapshot)
      .filter((s) => s.parent === id)
      .map((s) => s.id.slice(0, 12)),
  };
}

/** Removes a (no longer recorded) snapshot's files; its layer only if nothing else is built on it. */
export async function removeSnapshotFiles(
  paths: Paths,
  env: NodeJS.ProcessEnv,
  snap: Snapshot,
  layersStillUsed: Set<string>,
): Promise<void> {
  await rm(join(snapshotsDir(paths), snap.id), { recursive: true, force: true });
  await rm(join(shmDir(paths, env), "templates", `${snap.id}.ram`), { force: true });
  // A fork's RAM capture lives in shared memory, outside the snapshot's directory.
  if (snap.ram && !snap.ram.path.startsWith(snapshotsDir(paths))) await rm(snap.ram.path, { force: true });
  if (!layersStillUsed.has(snap.disk.layer.path)) await rm(snap.disk.layer.path, { force: true });
}

/** Allocated bytes of a file or a directory tree (sparse files count what they hold). */
export async function allocatedBytes(path: string): Promise<number> {
  const st = await stat(path).catch(() => null);
  if (!st) return 0;
  if (!st.isDirectory()) return st.blocks * 512;
  let total = 0;
  for (const e of await readdir(path)) total += await allocatedBytes(join(path, e));
  return total;
}

/** The layers any machine or snapshot still needs; every other file in layers/ is garbage. */
export async function layersInUse(paths: Paths, store: Store): Promise<Set<string>> {
  const used = new Set<string>();
  for (const m of store.list()) for (const f of await diskChain(activeOverlay(paths, m))) used.add(f);
  for (const s of store.snapshots().map(toSnapshot)) {
    used.add(s.disk.layer.path);
    for (const f of s.disk.chain) used.add(f);
  }
  return used;
}

/**
 * Removes layers nothing needs, staging directories of captures that never finished,
 * and RAM files of machines that no longer run. Returns the bytes freed.
 */
export async function collectGarbage(
  paths: Paths,
  store: Store,
  env: NodeJS.ProcessEnv,
  opts: { dryRun?: boolean } = {},
): Promise<number> {
  let freed = 0;
  const remove = (p: string) => (opts.dryRun ? Promise.resolve() : rm(p, { recursive: true, force: true }));
  const used = await layersInUse(paths, store);
  const ldir = layersDir(paths);
  for (const name of await readdir(ldir).catch(() => [] as string[])) {
    const p = join(ldir, name);
    if (used.has(p)) continue;
    // A layer linked less than a minute ago (link() sets ctime) may belong to a capture
    // that has not yet recorded the overlay built on it.
    const st = await stat(p).catch(() => null);
    if (!st || Date.now() - st.ctimeMs < 60_000) continue;
    freed += st.blocks * 512;
    await remove(p);
  }
  const sdir = snapshotsDir(paths);
  const known = new Set(store.snapshots().map((s) => s.id));
  for (const name of await readdir(sdir).catch(() => [] as string[])) {
    if (known.has(name)) continue;
    const p = join(sdir, name);
    const st = await stat(p).catch(() => null);
    if (!st || Date.now() - st.mtimeMs < 60_000) continue;
    freed += await allocatedBytes(p);
    await remove(p);
  }
  const templates = new Set(store.snapshots().map((s) => `${s.id}.ram`));
  const tdir = join(shmDir(paths, env), "templates");
  for (const name of await readdir(tdir).catch(() => [] as string[])) {
    if (templates.has(name)) continue;
    freed += await allocatedBytes(join(tdir, name));
    await remove(join(tdir, name));
  }
  const live = new Set(store.list().map((m) => `${m.id}.ram`));
  const rdir = join(shmDir(paths, env), "machines");
  for (const name of await readdir(rdir).catch(() => [] as string[])) {
    if (live.has(name)) continue;
    freed += await allocatedBytes(join(rdir, name));
    await remove(join(rdir, name));
  }
  return freed;
}

/**
 * A fork's RAM capture is needed while a clone maps it: one still to make its first
 * boot, or one running from it. After the last, the capture goes (its disk layer stays
 * as long as the clones' disks are built on it).
 */
export async function releaseForkCapture(paths: Paths, store: Store, id: string): Promise<boolean> {
  const row = store.snapshot(id);
  if (row?.kind !== "fork") return false;
  const mode = `fork:${id.slice(0, 12)}`;
  const needed = store
    .list()
    .some(
      (m) =>
        m.spec.restoreFrom?.snapshot === id &&
        ((isActive(m.state) && m.bootMode === mode) || (m.state === "created" && !existsSync(activeOverlay(paths, m)))),
    );
  if (needed) return false;
  const snap = toSnapshot(row);
  store.removeSnapshot(id);
  await rm(join(snapshotsDir(paths), id), { recursive: true, force: true });
  if (snap.ram) await rm(snap.ram.path, { force: true });
  return true;
}
