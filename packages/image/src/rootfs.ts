// Builds the read-only base ext4 of an image: layers applied in order into a private
// staging directory, mm-init and the mount points added, then `mke2fs -d` (no mount,
// ownership, modes, devices and xattrs kept) — once per image and mm-init, cached.
//
// Names: $STATE/rootfs/sha256-<image hex>-<key>.ext4, where <key> hashes the builder
// version and the injected files (mm-init). A base is never rewritten under its name:
// machines' qcow2 overlays point at it by path, so new content gets a new name.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { constants, type Stats } from "node:fs";
import {
  chmod,
  lchown,
  link,
  lstat,
  mkdir,
  mkdtemp,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  statfs,
  unlink,
  writeFile,
} from "node:fs/promises";
import { join } from "node:path";
import { MmError } from "@mm/core";
import { applyLayer, type LayerStats } from "./unpack.js";
import { ancestorsOf, normalizeEntryPath } from "./unpack-path.js";
import { buildInUserNamespace } from "./userns.js";

/** Bump when what ends up in a base changes for the same layers, so old bases are not reused. */
export const ROOTFS_BUILDER_VERSION = "2";
export const ROOTFS_MIN_BYTES = 64 * 1024 * 1024;
/** Free space added on top of the content: the machine's writable room before --disk-size grows it. */
export const ROOTFS_HEADROOM = 0.3;
const MIB = 1024 * 1024;
const BLOCK = 4096;
const INODE_SIZE = 256;
/** mke2fs's own default for file systems this size (bytes per inode). */
const INODE_RATIO = 16384;

/** Directories mm-init mounts on or the guest expects: always present and real in the base. */
export const MOUNT_POINTS: readonly { readonly path: string; readonly mode: number }[] = [
  { path: "proc", mode: 0o555 },
  { path: "sys", mode: 0o555 },
  { path: "dev", mode: 0o755 },
  { path: "tmp", mode: 0o1777 },
  { path: "run", mode: 0o755 },
  // mm's own directory (a real one, whatever the image had there), then where mm-init
  // mounts the shared tools disk (busybox, the SSH server). Order matters: parent first.
  { path: ".mm", mode: 0o755 },
  { path: ".mm/tools", mode: 0o755 },
];

export interface RootfsLayer {
  /** The layer blob (compressed as its media type says), already verified by the content store. */
  readonly path: string;
  readonly mediaType: string;
  readonly digest?: string;
}

/** A file mm puts into every base (mm-init at /.mm/init), root-owned unless said otherwise. */
export interface ExtraFile {
  /** Absolute path in the guest, e.g. "/.mm/init". */
  readonly path: string;
  /** Host file to copy, or the content itself. */
  readonly source?: string;
  readonly content?: string | Uint8Array;
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
}

export type RootfsEvent =
  | { readonly type: "layer-applied"; readonly index: number; readonly digest?: string; readonly stats: LayerStats }
  | { readonly type: "populated"; readonly contentBytes: number; readonly inodes: number }
  | { readonly type: "built"; readonly path: string; readonly sizeBytes: number };

export interface BuildImageRootfsOptions {
  readonly stateDir: string;
  readonly image: { readonly digest: string; readonly layers: readonly RootfsLayer[] };
  readonly extraFiles?: readonly ExtraFile[];
  /** Per-layer decompressed cap (default MM_MAX_LAYER_BYTES or 8 GiB). */
  readonly maxLayerBytes?: number;
  readonly onEvent?: (event: RootfsEvent) => void;
  readonly onWarning?: (message: string) => void;
  /** Built in a user namespace (rootless): device nodes are skipped, with a warning. */
  readonly rootless?: boolean;
}

export interface ImageRootfs {
  readonly path: string;
  /** The ext4's size (the file is sparse: it uses about the content on disk). */
  readonly sizeBytes: number;
  /** True if an existing base was reused. */
  readonly cached: boolean;
}

const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

/** The key of the injected files: same key, same base. */
export async function extrasKey(extraFiles: readonly ExtraFile[], stateDir?: string): Promise<string> {
  const h = createHash("sha256").update(`mm-rootfs ${ROOTFS_BUILDER_VERSION}\n`);
  const memo = stateDir ? await loadDigestMemo(stateDir) : undefined;
  for (const f of extraFiles) {
    h.update(`${normalizeEntryPath(f.path)}\0${f.mode ?? 0o644}\0${f.uid ?? 0}\0${f.gid ?? 0}\0`);
    h.update(Buffer.from(await extraDigest(f, memo), "hex"));
  }
  if (stateDir && memo?.changed) await saveDigestMemo(stateDir, memo);
  return h.digest("hex").slice(0, 16);
}

/**
 * Content digests of extra files remembered by file identity (inode, size, mtime): the
 * key still names content, but an unchanged mm-init or tool is not re-read on every run.
 */
interface DigestMemo {
  entries: Record<string, string>;
  changed: boolean;
}

const memoFile = (stateDir: string) => join(stateDir, "rootfs", "extras-digests.json");

async function loadDigestMemo(stateDir: string): Promise<DigestMemo> {
  try {
    return {
      entries: JSON.parse(await readFile(memoFile(stateDir), "utf8")) as Record<string, string>,
      changed: false,
    };
  } catch {
    return { entries: {}, changed: false };
  }
}

async function saveDigestMemo(stateDir: string, memo: DigestMemo): Promise<void> {
  try {
    await mkdir(join(stateDir, "rootfs"), { recursive: true });
    const tmp = `${memoFile(stateDir)}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(memo.entries));
    await rename(tmp, memoFile(stateDir));
  } catch {
    // only a cache
  }
}

async function extraDigest(f: ExtraFile, memo?: DigestMemo): Promise<string> {
  const st = f.source !== undefined && memo ? await stat(f.source).catch(() => undefined) : undefined;
  const id = st ? `${f.source}:${st.ino}:${st.size}:${st.mtimeMs}` : undefined;
  if (id && memo?.entries[id]) return memo.entries[id] as string;
  const digest = createHash("sha256")
    .update(await extraContent(f))
    .digest("hex");
  if (id && memo) {
    memo.entries[id] = digest;
    memo.changed = true;
  }
  return digest;
}

/** File name prefix of every base built from this image digest (for `mm rmi` / GC). */
export function rootfsPrefix(imageDigest: string): string {
  if (!DIGEST.test(imageDigest))
    throw new MmError("MM_INTERNAL", `invalid image digest ${JSON.stringify(imageDigest)}`);
  return imageDigest.replace(":", "-");
}

export function rootfsPath(stateDir: string, imageDigest: string, key: string): string {
  return join(stateDir, "rootfs", `${rootfsPrefix(imageDigest)}-${key}.ext4`);
}

/** What the staging tree holds, as mke2fs will need it. */
export interface ContentMeasure {
  /** Bytes of 4 KiB blocks the files, directories and long symlinks take (hardlinks once). */
  readonly dataBytes: number;
  readonly inodes: number;
}

/** mke2fs's default journal for a file system of this many 4 KiB blocks (e2fsprogs 1.47). */
export function defaultJournalBytes(blocks: number): number {
  const journalBlocks =
    blocks < 2048
      ? 0
      : blocks < 32768
        ? 1024
        : blocks < 256 * 1024
          ? 4096
          : blocks < 512 * 1024
            ? 8192
            : blocks < 4096 * 1024
              ? 16384
              : blocks < 8192 * 1024
                ? 32768
                : blocks < 16384 * 1024
                  ? 65536
                  : blocks < 32768 * 1024
                    ? 131072
                    : 262144;
  return journalBlocks * BLOCK;
}

/**
 * The ext4 geometry for some content: the content plus 30% free, plus what ext4 itself
 * takes (journal, inode tables, ~1% bitmaps and descriptors), at least 64 MiB,
 * MiB-rounded; inodes for the content plus 30% (and at least mke2fs's usual ratio).
 */
export function rootfsGeometry(content: ContentMeasure): { sizeBytes: number; inodes: number } {
  const wanted = (content.dataBytes + content.inodes * INODE_SIZE) * (1 + ROOTFS_HEADROOM);
  const minInodes = Math.ceil(content.inodes * (1 + ROOTFS_HEADROOM)) + 1024;
  const overhead = (size: number) =>
    defaultJournalBytes(size / BLOCK) + Math.max(minInodes, size / INODE_RATIO) * INODE_SIZE + size / 100;
  // The overhead depends on the size; two rounds settle it (the journal steps are coarse).
  let size = wanted;
  for (let i = 0; i < 2; i++) size = wanted + overhead(size);
  const sizeBytes = Math.ceil(Math.max(ROOTFS_MIN_BYTES, size) / MIB) * MIB;
  const inodes = Math.max(minInodes, Math.floor(sizeBytes / INODE_RATIO));
  return { sizeBytes, inodes };
}

/** Walks the staging tree with lstat (never following a link). */
export async function measureTree(root: string): Promise<ContentMeasure> {
  const seen = new Set<number>();
  let dataBytes = 0;
  let inodes = 0;
  const blocks = (n: number) => Math.ceil(n / BLOCK) * BLOCK;
  const visit = async (path: string, st: Stats): Promise<void> => {
    if (st.nlink > 1 && !st.isDirectory()) {
      if (seen.has(st.ino)) return;
      seen.add(st.ino);
    }
    inodes++;
    if (st.isFile()) dataBytes += blocks(st.size);
    else if (st.isDirectory()) dataBytes += Math.max(BLOCK, blocks(st.size));
    else if (st.isSymbolicLink() && st.size >= 60) dataBytes += BLOCK; // shorter targets live in the inode
    if (st.isDirectory()) {
      for (const name of await readdir(path)) {
        const child = join(path, name);
        await visit(child, await lstat(child));
      }
    }
  };
  await visit(root, await lstat(root));
  return { dataBytes, inodes };
}

const inFlight = new Map<string, Promise<ImageRootfs>>();

/**
 * Returns the base ext4 for an image, building it if needed. Idempotent; concurrent
 * builds of one image (in this process or another) converge on one file: each builds
 * in its own staging directory and the first to link its result into place wins.
 */
export async function buildImageRootfs(options: BuildImageRootfsOptions): Promise<ImageRootfs> {
  const extraFiles = options.extraFiles ?? [];
  const key = await extrasKey(extraFiles, options.stateDir);
  const path = rootfsPath(options.stateDir, options.image.digest, key);
  const existing = await stat(path).catch(() => undefined);
  if (existing?.isFile()) return { path, sizeBytes: existing.size, cached: true };
  let p = inFlight.get(path);
  if (!p) {
    p = build(options, path, extraFiles).finally(() => inFlight.delete(path));
    inFlight.set(path, p);
  }
  return p;
}

async function build(
  options: BuildImageRootfsOptions,
  path: string,
  extraFiles: readonly ExtraFile[],
): Promise<ImageRootfs> {
  // Without root: the same build, as root of a user namespace (userns.ts).
  if (process.getuid?.() !== 0) return buildInUserNamespace(options);
  const tmpRoot = join(options.stateDir, "tmp");
  let work: string | undefined;
  try {
    await mkdir(join(options.stateDir, "rootfs"), { recursive: true });
    await mkdir(tmpRoot, { recursive: true, mode: 0o700 });
    await removeStaleBuilds(tmpRoot);
    // Private staging: the work directory is 0700, so nothing else on the host reaches the
    // setuid files and device nodes inside; the root below it has the image's 0755.
    work = await mkdtemp(join(tmpRoot, `rootfs-${process.pid}-`));
    await chmod(work, 0o700);
    const root = join(work, "root");
    await mkdir(root, { mode: 0o755 });
    await chmod(root, 0o755);

    for (const [index, layer] of options.image.layers.entries()) {
      const fh = await open(layer.path, "r").catch((e: unknown) => {
        throw new MmError("MM_ROOTFS_FAILED", `layer ${layer.digest ?? layer.path} is missing from the content store`, {
          cause: e,
          hint: "pull the image again",
        });
      });
      const stats = await applyLayer(root, fh.createReadStream(), layer.mediaType, {
        ...(options.maxLayerBytes !== undefined ? { maxBytes: options.maxLayerBytes } : {}),
        ...(options.onWarning ? { onWarning: options.onWarning } : {}),
        ...(options.rootless && { skipDeviceNodes: true }),
      }).finally(() => fh.close().catch(() => undefined));
      options.onEvent?.({ type: "layer-applied", index, ...(layer.digest ? { digest: layer.digest } : {}), stats });
    }
    await ensureMountPoints(root);
    for (const f of extraFiles) await injectFile(root, f);

    const content = await measureTree(root);
    options.onEvent?.({ type: "populated", contentBytes: content.dataBytes, inodes: content.inodes });
    await requireFreeSpace(options.stateDir, content.dataBytes + content.inodes * INODE_SIZE);
    const image = join(work, "rootfs.ext4");
    const sizeBytes = await makeExt4(root, image, rootfsGeometry(content), options.stateDir);
    await chmod(image, 0o444);
    await rm(root, { recursive: true, force: true }); // free the staging space before the link
    try {
      await link(image, path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      // Another builder won the race: its base is as good as ours.
      const st = await stat(path);
      return { path, sizeBytes: st.size, cached: true };
    }
    options.onEvent?.({ type: "built", path, sizeBytes });
    return { path, sizeBytes, cached: false };
  } catch (e) {
    throw mapBuildError(e, "building the image's root filesystem");
  } finally {
    if (work) await rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** Failures outside the layers themselves (those are already typed by applyLayer). */
function mapBuildError(e: unknown, what: string): MmError {
  if (e instanceof MmError) return e;
  const err = e as NodeJS.ErrnoException;
  const text = `${what}: ${err?.message ?? e}`;
  switch (err?.code) {
    case "ENOSPC":
    case "EDQUOT":
      return new MmError("MM_DISK_FULL", text, { cause: e });
    case "EACCES":
    case "EROFS":
      return new MmError("MM_STATE_UNWRITABLE", text, { cause: e });
    default:
      return new MmError("MM_ROOTFS_FAILED", text, { cause: e });
  }
}

/** Removes staging directories left by builders that died (their pid is gone). */
async function removeStaleBuilds(tmpRoot: string): Promise<void> {
  for (const name of await readdir(tmpRoot).catch(() => [] as string[])) {
    const m = /^rootfs-([0-9]+)-/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid || isAlive(pid)) continue;
    await rm(join(tmpRoot, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Makes each mount point a real directory, replacing whatever else the image put there. */
async function ensureMountPoints(root: string): Promise<void> {
  for (const { path, mode } of MOUNT_POINTS) {
    const abs = join(root, path);
    const st = await lstat(abs).catch(() => undefined);
    if (st?.isDirectory()) continue;
    if (st) await rm(abs, { recursive: true, force: true });
    await mkdir(abs);
    await lchown(abs, 0, 0);
    await chmod(abs, mode);
  }
}

async function extraContent(f: ExtraFile): Promise<Buffer> {
  if (f.content !== undefined) return Buffer.from(f.content);
  if (f.source === undefined) throw new MmError("MM_INTERNAL", `extra file ${f.path} has neither source nor content`);
  try {
    return await readFile(f.source);
  } catch (e) {
    if (/\/\.mm\/init$/.test(f.path)) throw new MmError("MM_INIT_MISSING", `${f.source}`, { cause: e });
    throw mapBuildError(e, `reading ${f.source}`);
  }
}

/**
 * Writes an extra file at exactly its path: every ancestor is made a real directory
 * (an image's /.mm symlink is replaced, not followed), so mm-init cannot be redirected.
 */
async function injectFile(root: string, f: ExtraFile): Promise<void> {
  const rel = normalizeEntryPath(f.path);
  if (rel === "") throw new MmError("MM_INTERNAL", `extra file path ${JSON.stringify(f.path)}`);
  for (const dir of ancestorsOf(rel).slice(1)) {
    const abs = join(root, dir);
    const st = await lstat(abs).catch(() => undefined);
    if (st?.isDirectory()) continue;
    if (st) await rm(abs, { recursive: true, force: true });
    await mkdir(abs);
    await lchown(abs, 0, 0);
    await chmod(abs, 0o755);
  }
  const abs = join(root, rel);
  const st = await lstat(abs).catch(() => undefined);
  if (st) await rm(abs, { recursive: true, force: true });
  const fh = await open(abs, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    await fh.writeFile(await extraContent(f));
    await fh.chown(f.uid ?? 0, f.gid ?? 0);
    await fh.chmod(f.mode ?? 0o644);
  } finally {
    await fh.close();
  }
}

async function requireFreeSpace(stateDir: string, bytes: number): Promise<void> {
  const fs = await statfs(stateDir).catch(() => undefined);
  if (fs && fs.bavail * fs.bsize < bytes) {
    throw new MmError("MM_DISK_FULL", `the image needs about ${Math.ceil(bytes / MIB)} MiB under ${stateDir}`);
  }
}

/**
 * Runs mke2fs -d. If the content does not fit the computed size (an estimate), tries
 * once more with twice the room. Returns the size used.
 */
async function makeExt4(
  root: string,
  image: string,
  geometry: { sizeBytes: number; inodes: number },
  stateDir: string,
): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const sizeBytes = geometry.sizeBytes * 2 ** attempt;
    const inodes = geometry.inodes * 2 ** attempt;
    const args = [
      "-q",
      "-F",
      "-t",
      "ext4",
      "-b",
      `${BLOCK}`,
      "-I",
      `${INODE_SIZE}`,
      "-N",
      `${inodes}`,
      "-L",
      "mm-root",
      // No root-reserved blocks: one workload per machine, often not running as root.
      "-m",
      "0",
      // Zero the inode tables and journal now (sparsely), so no guest spends its first
      // minutes doing it through its copy-on-write overlay.
      "-E",
      "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
      "-d",
      root,
      image,
      `${sizeBytes / 1024}k`,
    ];
    try {
      await runMke2fs(args);
      return sizeBytes;
    } catch (e) {
      await unlink(image).catch(() => undefined);
      const text = (e as { stderr?: string }).stderr ?? "";
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        throw new MmError("MM_TOOL_MISSING", "mke2fs (Debian package e2fsprogs)");
      }
      const full = /No space left on device|Could not allocate|ENOSPC/i.test(text);
      const hostFs = await statfs(stateDir).catch(() => undefined);
      if (full && hostFs && hostFs.bavail * hostFs.bsize < sizeBytes / 4) {
        throw new MmError("MM_DISK_FULL", `mke2fs: ${text}`);
      }
      if (full && attempt === 0) continue;
      throw new MmError("MM_ROOTFS_FAILED", `mke2fs -d: ${text || (e as Error).message}`, { cause: e });
    }
  }
}

function runMke2fs(args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile("mke2fs", args, { maxBuffer: 4 * MIB }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      reject(Object.assign(err, { stderr: `${stderr}`.trim() }));
    });
  });
}
