// Applies one image layer to a private staging directory: decompress by media type
// (capped), read the tar stream, and for each entry act through the pure rules of
// unpack-path.ts so nothing is ever written, deleted or followed outside the root.
//
// The staging root must be private to this process (a 0700 directory under the state
// root): resolution reads the tree as it is, which is only sound while no one else
// writes to it. Nothing from the image is ever executed or loaded on the host.
// File system calls are synchronous: one entry is a handful of cheap syscalls, and
// going through the thread pool for each made unpacking ~4x slower; the event loop
// still turns between chunks of the (async) layer stream.

import { execFile } from "node:child_process";
import {
  accessSync,
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  type Stats,
  symlinkSync,
  writeSync,
} from "node:fs";
import { delimiter, join } from "node:path";
import { pipeline, Readable } from "node:stream";
import { createGunzip } from "node:zlib";
import { MmError } from "@mm/core";
import { readTar, type TarEntry } from "./tar-reader.js";
import {
  ancestorsOf,
  classifyEntry,
  isWithin,
  joinInRoot,
  normalizeEntryPath,
  type PathInfo,
  resolveInRoot,
} from "./unpack-path.js";
import { zstdDecompress } from "./zstd-frames.js";

/** Decompressed bytes one layer may hold unless MM_MAX_LAYER_BYTES says otherwise. */
export const DEFAULT_MAX_LAYER_BYTES = 8 * 1024 ** 3;

const TAR_TYPES = new Set([
  "application/vnd.oci.image.layer.v1.tar",
  "application/vnd.oci.image.layer.nondistributable.v1.tar",
  "application/vnd.docker.image.rootfs.diff.tar",
]);
const GZIP_TYPES = new Set([
  "application/vnd.oci.image.layer.v1.tar+gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
  "application/vnd.docker.image.rootfs.diff.tar.gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
]);
const ZSTD_TYPES = new Set([
  "application/vnd.oci.image.layer.v1.tar+zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
]);

export type LayerCompression = "none" | "gzip" | "zstd";

/** The compression a layer media type implies; MM_UNSUPPORTED_MEDIA_TYPE for anything else. */
export function layerCompression(mediaType: string): LayerCompression {
  if (TAR_TYPES.has(mediaType)) return "none";
  if (GZIP_TYPES.has(mediaType)) return "gzip";
  if (ZSTD_TYPES.has(mediaType)) return "zstd";
  throw new MmError("MM_UNSUPPORTED_MEDIA_TYPE", `layer media type ${JSON.stringify(mediaType)}`);
}

const SIZE_UNITS: Readonly<Record<string, number>> = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** The per-layer cap: MM_MAX_LAYER_BYTES (bytes, or with a K/M/G/T suffix), else 8 GiB. */
export function maxLayerBytesFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.MM_MAX_LAYER_BYTES?.trim();
  if (!raw) return DEFAULT_MAX_LAYER_BYTES;
  const m = /^([0-9]+)([KMGT]?)(i?B)?$/i.exec(raw);
  const n = m ? Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]! : Number.NaN;
  if (!Number.isSafeInteger(n) || n <= 0) {
    throw new MmError("MM_USAGE", `MM_MAX_LAYER_BYTES=${JSON.stringify(raw)}`, {
      hint: "set MM_MAX_LAYER_BYTES to a positive size such as 8589934592 or 8G, or unset it",
    });
  }
  return n;
}

export interface ApplyLayerOptions {
  /** Decompressed bytes allowed (default maxLayerBytesFromEnv()). */
  readonly maxBytes?: number;
  /** Non-fatal problems (an xattr the file system refused, setfattr missing). */
  readonly onWarning?: (message: string) => void;
  /** setfattr binary; null skips xattrs; default: found on PATH (Debian package attr). */
  readonly setfattr?: string | null;
  /**
   * Skip character and block devices (with a warning) instead of creating them: in a user
   * namespace (rootless builds) the kernel refuses mknod of devices. FIFOs are still made.
   */
  readonly skipDeviceNodes?: boolean;
}

export interface LayerStats {
  /** Tar entries read (whiteouts included). */
  entries: number;
  /** Decompressed tar bytes read. */
  bytes: number;
  /** Regular files written and their data bytes. */
  files: number;
  fileBytes: number;
  whiteouts: number;
  xattrsSet: number;
  xattrsSkipped: number;
}

/**
 * Applies one layer to `root` (an existing, private directory). Rejects with
 * MM_UNSUPPORTED_MEDIA_TYPE, MM_LAYER_TOO_LARGE (as soon as the decompressed stream
 * passes maxBytes), MM_BAD_LAYER (malformed tar or an entry that cannot be applied),
 * MM_DISK_FULL or MM_TOOL_MISSING. On rejection the root is partly written: discard it.
 */
export async function applyLayer(
  root: string,
  source: AsyncIterable<Uint8Array>,
  mediaType: string,
  options: ApplyLayerOptions = {},
): Promise<LayerStats> {
  const compression = layerCompression(mediaType);
  const maxBytes = options.maxBytes ?? maxLayerBytesFromEnv();
  const src = source instanceof Readable ? source : Readable.from(source, { objectMode: false });
  // pipeline wires errors and teardown both ways: stopping early destroys the source too.
  const gunzip = compression === "gzip" ? createGunzip() : undefined;
  const stream: AsyncIterable<Uint8Array> = gunzip
    ? pipeline(src, gunzip, () => undefined)
    : compression === "zstd"
      ? zstdDecompress(src)
      : src;
  const writer = new LayerWriter(root, options);
  const tooLarge = (what: string) =>
    new MmError("MM_LAYER_TOO_LARGE", `${what} exceeds the limit of ${maxBytes} bytes (MM_MAX_LAYER_BYTES)`);
  try {
    await readTar(capped(stream, maxBytes, writer.stats, tooLarge), (entry, body) => writer.apply(entry, body), {
      maxEntryBytes: maxBytes,
      tooLarge: (size) => tooLarge(`an entry of ${size} bytes`),
    });
    await writer.finish();
    return writer.stats;
  } catch (e) {
    throw mapUnpackError(e, "applying a layer");
  } finally {
    src.destroy();
    gunzip?.destroy();
  }
}

/** Counts decompressed bytes and stops the stream the moment they pass the cap. */
async function* capped(
  source: AsyncIterable<Uint8Array>,
  max: number,
  stats: LayerStats,
  tooLarge: (what: string) => Error,
): AsyncGenerator<Uint8Array> {
  try {
    for await (const chunk of source) {
      stats.bytes += chunk.length;
      if (stats.bytes > max) throw tooLarge("the layer's decompressed content");
      yield chunk;
    }
  } catch (e) {
    if (e instanceof MmError) throw e;
    const err = e as NodeJS.ErrnoException;
    // Errors without a syscall come from the decompressor: the data is corrupt or truncated.
    if (err && typeof err === "object" && err.syscall === undefined && err.code !== "ERR_STREAM_PREMATURE_CLOSE") {
      throw new MmError("MM_BAD_LAYER", `corrupt compressed data: ${err.message}`, { cause: e });
    }
    throw e;
  }
}

const CONTENT_ERRNOS = new Set([
  "ENOENT",
  "ENOTDIR",
  "EEXIST",
  "EISDIR",
  "ENAMETOOLONG",
  "ELOOP",
  "EPERM",
  "EINVAL",
  "EMLINK",
  "ENOTEMPTY",
  "EXDEV",
]);

/** Maps a failure while unpacking to a product error code. */
export function mapUnpackError(e: unknown, what: string): MmError {
  if (e instanceof MmError) return e;
  const err = e as NodeJS.ErrnoException;
  const text = `${err?.message ?? e}`;
  if (err?.code === "ENOSPC" || err?.code === "EDQUOT") {
    return new MmError("MM_DISK_FULL", `${what}: ${text}`, { cause: e });
  }
  if (err?.code && CONTENT_ERRNOS.has(err.code)) {
    return new MmError("MM_BAD_LAYER", `${what}: ${text}`, { cause: e });
  }
  return new MmError("MM_ROOTFS_FAILED", `${what}: ${text}`, { cause: e });
}

const MAX_DEV_MAJOR = 0xfff;
const MAX_DEV_MINOR = 0xfffff;

/** The state of one layer's application: what it created, and the directory cache. */
class LayerWriter {
  readonly stats: LayerStats = {
    entries: 0,
    bytes: 0,
    files: 0,
    fileBytes: 0,
    whiteouts: 0,
    xattrsSet: 0,
    xattrsSkipped: 0,
  };
  readonly #root: string;
  readonly #options: ApplyLayerOptions;
  /** In-root paths this layer created: opaque markers and whiteouts leave them alone. */
  readonly #unpacked = new Set<string>();
  /** Ancestors of #unpacked: pruning descends into them instead of removing them. */
  readonly #keep = new Set<string>();
  /** In-root paths known to be real directories (a cache of lstat; "" is the root). */
  readonly #dirs = new Set<string>([""]);
  /** Directory times, applied at the end so later entries do not disturb them. */
  readonly #dirTimes = new Map<string, { atime: number; mtime: number }>();
  #setfattr: string | null | undefined;
  #warnedNoSetfattr = false;

  constructor(root: string, options: ApplyLayerOptions) {
    this.#root = root;
    this.#options = options;
    this.#setfattr = options.setfattr;
  }

  #abs(path: string): string {
    return path === "" ? this.#root : `${this.#root}/${path}`;
  }

  #lstat(path: string): Stats | undefined {
    try {
      return lstatSync(this.#abs(path));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ENOTDIR") return undefined;
      throw e;
    }
  }

  readonly #lookup = (path: string): PathInfo => {
    if (this.#dirs.has(path)) return { kind: "dir" };
    const st = this.#lstat(path);
    if (!st) return { kind: "missing" };
    if (st.isSymbolicLink()) return { kind: "symlink", target: readlinkSync(this.#abs(path), "utf8") };
    if (st.isDirectory()) {
      this.#dirs.add(path);
      return { kind: "dir" };
    }
    return { kind: "other" };
  };

  /** Resolves a directory name inside the root, following every symlink in it. */
  #resolveDir(name: string): string {
    return resolveInRoot(name, this.#lookup, { followFinal: true });
  }

  #markUnpacked(path: string): void {
    this.#unpacked.add(path);
    for (const a of ancestorsOf(path)) this.#keep.add(a);
  }

  /** Creates the missing directories of a resolved (symlink-free) in-root path. */
  async #ensureDir(path: string): Promise<void> {
    if (this.#dirs.has(path)) return;
    let cur = "";
    for (const c of path.split("/")) {
      cur = joinInRoot(cur, c);
      if (this.#dirs.has(cur)) continue;
      const st = this.#lstat(cur);
      if (!st) {
        // Implicit parents: root-owned 0755, as containerd creates them.
        mkdirSync(this.#abs(cur), { mode: 0o755 });
        chmodSync(this.#abs(cur), 0o755);
      } else if (!st.isDirectory()) {
        throw new MmError("MM_BAD_LAYER", `${JSON.stringify(cur)} is not a directory`);
      }
      this.#dirs.add(cur);
    }
  }

  /** Removes an in-root path (never following a symlink) and forgets cached dirs under it. */
  async #remove(path: string, wasDir: boolean): Promise<void> {
    rmSync(this.#abs(path), { recursive: true, force: true });
    if (wasDir) {
      for (const d of this.#dirs) if (isWithin(path, d)) this.#dirs.delete(d);
      for (const d of this.#dirTimes.keys()) if (isWithin(path, d)) this.#dirTimes.delete(d);
    }
  }

  /** Hides what lower layers left at `path`, keeping what this layer wrote there. */
  async #prune(path: string): Promise<void> {
    const st = this.#lstat(path);
    if (!st) return;
    if (this.#unpacked.has(path) || this.#keep.has(path)) {
      if (st.isDirectory()) await this.#pruneChildren(path);
      return;
    }
    await this.#remove(path, st.isDirectory());
  }

  async #pruneChildren(dir: string): Promise<void> {
    for (const name of readdirSync(this.#abs(dir))) await this.#prune(joinInRoot(dir, name));
  }

  async apply(entry: TarEntry, body: AsyncIterable<Buffer>): Promise<void> {
    this.stats.entries++;
    try {
      await this.#apply(entry, body);
    } catch (e) {
      throw mapUnpackError(e, `entry ${JSON.stringify(entry.name)}`);
    }
  }

  async #apply(entry: TarEntry, body: AsyncIterable<Buffer>): Promise<void> {
    const action = classifyEntry(entry.name);
    switch (action.kind) {
      case "root":
      case "reserved":
        return;
      case "whiteout": {
        this.stats.whiteouts++;
        const dir = this.#resolveDir(action.parent);
        if (this.#lookup(dir).kind === "dir") await this.#prune(joinInRoot(dir, action.name));
        return;
      }
      case "opaque": {
        this.stats.whiteouts++;
        const dir = this.#resolveDir(action.dir);
        if (this.#lookup(dir).kind !== "dir") return;
        this.#keep.add(dir);
        for (const a of ancestorsOf(dir)) this.#keep.add(a);
        await this.#pruneChildren(dir);
        return;
      }
      case "entry":
        break;
    }
    const parent = this.#resolveDir(action.parent);
    await this.#ensureDir(parent);
    const path = joinInRoot(parent, action.base);
    const abs = this.#abs(path);

    if (entry.type === "hardlink") {
      // The target's directories are resolved inside the root; its last component is
      // not followed (link(2) does not follow either), so a link to a symlink links the symlink.
      const targetName = normalizeEntryPath(entry.linkname);
      if (targetName === "") throw new MmError("MM_BAD_LAYER", "hardlink to the root directory");
      const target = resolveInRoot(targetName, this.#lookup, { followFinal: false });
      if (target === path) {
        this.#markUnpacked(path);
        return;
      }
      const existing = this.#lstat(path);
      if (existing) await this.#remove(path, existing.isDirectory());
      const t = this.#lstat(target);
      if (!t) throw new MmError("MM_BAD_LAYER", `hardlink target ${JSON.stringify(entry.linkname)} does not exist`);
      if (t.isDirectory()) throw new MmError("MM_BAD_LAYER", `hardlink to directory ${JSON.stringify(entry.linkname)}`);
      linkSync(this.#abs(target), abs);
      this.#markUnpacked(path);
      return; // metadata belongs to the shared inode, set by the target's own entry
    }

    const existing = this.#lstat(path);
    const mergeDir = existing?.isDirectory() === true && entry.type === "dir";
    if (existing && !mergeDir) await this.#remove(path, existing.isDirectory());
    const atime = entry.atime ?? entry.mtime;
    switch (entry.type) {
      case "file": {
        const fd = openSync(
          abs,
          constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
          0o600,
        );
        try {
          for await (const chunk of body) {
            let off = 0;
            while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
            this.stats.fileBytes += chunk.length;
          }
          fchownSync(fd, entry.uid, entry.gid); // clears setuid/setgid and security.capability: mode and xattrs after
          await this.#setXattrs(abs, entry);
          fchmodSync(fd, entry.mode);
          futimesSync(fd, atime, entry.mtime);
        } finally {
          closeSync(fd);
        }
        this.stats.files++;
        break;
      }
      case "dir": {
        if (!mergeDir) mkdirSync(abs, { mode: 0o700 });
        this.#dirs.add(path);
        lchownSync(abs, entry.uid, entry.gid);
        await this.#setXattrs(abs, entry);
        chmodSync(abs, entry.mode); // abs is a real directory: parent resolved, last component lstat'ed
        this.#dirTimes.set(path, { atime, mtime: entry.mtime });
        break;
      }
      case "symlink": {
        // Stored verbatim: the target is interpreted by the guest, never resolved here.
        if (entry.linkname === "") throw new MmError("MM_BAD_LAYER", "symlink with an empty target");
        if (entry.linkname.includes("\0")) throw new MmError("MM_BAD_LAYER", "symlink target contains a NUL byte");
        symlinkSync(entry.linkname, abs);
        lchownSync(abs, entry.uid, entry.gid);
        await this.#setXattrs(abs, entry);
        lutimesSync(abs, atime, entry.mtime);
        break;
      }
      case "char":
      case "block":
      case "fifo": {
        if (entry.devmajor > MAX_DEV_MAJOR || entry.devminor > MAX_DEV_MINOR) {
          throw new MmError("MM_BAD_LAYER", `device number ${entry.devmajor}:${entry.devminor} out of range`);
        }
        if (entry.type !== "fifo" && this.#options.skipDeviceNodes) {
          this.#options.onWarning?.(
            `device node ${JSON.stringify(entry.name)} skipped (rootless build; the guest's devtmpfs provides /dev)`,
          );
          return; // never marked unpacked: a later layer may still put something there
        }
        await mknod(abs, entry);
        lchownSync(abs, entry.uid, entry.gid);
        await this.#setXattrs(abs, entry);
        chmodSync(abs, entry.mode); // changes the node's inode; never opens the device
        lutimesSync(abs, atime, entry.mtime);
        break;
      }
    }
    this.#markUnpacked(path);
  }

  async #setXattrs(abs: string, entry: TarEntry): Promise<void> {
    if (entry.xattrs.size === 0) return;
    if (this.#setfattr === undefined) this.#setfattr = findOnPath("setfattr");
    const tool = this.#setfattr;
    if (tool === null) {
      this.stats.xattrsSkipped += entry.xattrs.size;
      if (!this.#warnedNoSetfattr) {
        this.#warnedNoSetfattr = true;
        this.#options.onWarning?.("extended attributes skipped: setfattr not found (Debian package attr)");
      }
      return;
    }
    for (const [name, value] of entry.xattrs) {
      try {
        // -h: never dereference; the value goes hex-encoded, so any byte survives.
        await run(tool, ["-h", "-n", name, "-v", value.length ? `0x${value.toString("hex")}` : "", "--", abs]);
        this.stats.xattrsSet++;
      } catch (e) {
        this.stats.xattrsSkipped++;
        this.#options.onWarning?.(`extended attribute ${name} on ${JSON.stringify(entry.name)} skipped: ${errText(e)}`);
      }
    }
  }

  /** Directory times last: entries written into a directory change its mtime. */
  async finish(): Promise<void> {
    for (const [path, t] of this.#dirTimes) {
      const st = this.#lstat(path);
      if (st?.isDirectory()) lutimesSync(this.#abs(path), t.atime, t.mtime);
    }
  }
}

/** Node has no mknod(2): coreutils' mknod, run without a shell, on a path we just freed. */
async function mknod(abs: string, entry: TarEntry): Promise<void> {
  const kind =
    entry.type === "char"
      ? ["c", `${entry.devmajor}`, `${entry.devminor}`]
      : entry.type === "block"
        ? ["b", `${entry.devmajor}`, `${entry.devminor}`]
        : ["p"];
  try {
    await run("mknod", ["-m", "0600", "--", abs, ...kind]);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT")
      throw new MmError("MM_TOOL_MISSING", "mknod (Debian package coreutils)");
    throw new MmError("MM_ROOTFS_FAILED", `mknod ${abs}: ${errText(e)}`, { cause: e });
  }
}

function run(tool: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(tool, args, { timeout: 30_000 }, (err, _stdout, stderr) => {
      if (!err) return resolve();
      reject(Object.assign(err, { stderr: `${stderr}`.trim() }));
    });
  });
}

function errText(e: unknown): string {
  const err = e as { stderr?: string; message?: string };
  return err?.stderr || err?.message || `${e}`;
}

/** The first executable `name` on PATH, or null. */
export function findOnPath(name: string, env: NodeJS.ProcessEnv = process.env): string | null {
  for (const dir of (env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return null;
}
