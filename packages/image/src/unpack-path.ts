// Pure path rules for unpacking image layers: tar entry names normalised so they can
// never climb out of the root, whiteouts classified, and paths resolved inside the root.
//
// Every path here is "in-root": relative to the root, "/"-separated, no empty, "." or
// ".." components, and "" for the root itself. Resolution follows symlinks the way
// containerd's fs.RootPath and Go's securejoin do — as if the process were chrooted
// into the root: an absolute target restarts at the root and ".." stops at the root —
// so the result names a path inside the root whatever the layer contains.

import { MmError } from "@mm/core";

/** Symlinks followed while resolving one path; continuity's fs.RootPath allows 255. */
export const MAX_SYMLINKS = 255;

export const WHITEOUT_PREFIX = ".wh.";
/** Names starting like this are reserved by the OCI spec (aufs metadata); only the opaque marker has a meaning. */
export const WHITEOUT_META_PREFIX = ".wh..wh.";
export const OPAQUE_MARKER = ".wh..wh..opq";

/** Splits an in-root or raw path into its meaningful components (drops "", "."). */
function components(path: string): string[] {
  return path.split("/").filter((c) => c !== "" && c !== ".");
}

/**
 * Normalises a tar entry name (or a hardlink's target) into an in-root path: leading
 * "/" and "./" are dropped and ".." is collapsed lexically, clamped at the root as
 * Go's filepath.Clean("/" + name) does (containerd), so "../../etc/passwd" is
 * "etc/passwd". A NUL byte is an error: no file system name can hold one.
 */
export function normalizeEntryPath(name: string): string {
  if (name.includes("\0")) throw new MmError("MM_BAD_LAYER", `entry name contains a NUL byte: ${JSON.stringify(name)}`);
  const out: string[] = [];
  for (const c of components(name)) {
    if (c === "..") out.pop();
    else out.push(c);
  }
  return out.join("/");
}

/** The parent of an in-root path ("" for a top-level name and for the root). */
export function parentOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "" : path.slice(0, i);
}

/** The last component of an in-root path ("" for the root). */
export function baseOf(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** Joins an in-root directory and a single component. */
export function joinInRoot(dir: string, name: string): string {
  return dir === "" ? name : `${dir}/${name}`;
}

/** True if `path` is `ancestor` or lies beneath it (both in-root). */
export function isWithin(ancestor: string, path: string): boolean {
  return ancestor === "" || path === ancestor || path.startsWith(`${ancestor}/`);
}

/** Every proper ancestor of an in-root path, nearest the root first ("" included). */
export function ancestorsOf(path: string): string[] {
  if (path === "") return [];
  const parts = path.split("/");
  const out = [""];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join("/"));
  return out;
}

/** What one tar entry asks for, by its name alone. */
export type EntryAction =
  /** The entry names the root itself ("", ".", "/", "a/.."): ignored, as containerd does. */
  | { readonly kind: "root" }
  /** An ordinary entry at `path` (= `parent`/`base`). */
  | { readonly kind: "entry"; readonly path: string; readonly parent: string; readonly base: string }
  /** `.wh.<name>`: delete `<parent>/<name>` left by lower layers. */
  | { readonly kind: "whiteout"; readonly parent: string; readonly name: string }
  /** `.wh..wh..opq`: hide everything lower layers put in `dir`. */
  | { readonly kind: "opaque"; readonly dir: string }
  /** Another `.wh..wh.` name (aufs hardlink dirs and the like): ignored. */
  | { readonly kind: "reserved"; readonly parent: string; readonly base: string };

/**
 * Classifies a tar entry name. Whiteouts whose target is not a plain name in their
 * directory (".wh.", ".wh..", ".wh...") are rejected as containerd rejects them:
 * they would delete the directory itself or its parent.
 */
export function classifyEntry(name: string): EntryAction {
  const path = normalizeEntryPath(name);
  if (path === "") return { kind: "root" };
  const parent = parentOf(path);
  const base = baseOf(path);
  // Anything inside a reserved directory (aufs' .wh..wh.plnk hardlink store) is metadata too.
  if (parent.split("/").some((c) => c.startsWith(WHITEOUT_META_PREFIX))) return { kind: "reserved", parent, base };
  if (!base.startsWith(WHITEOUT_PREFIX)) return { kind: "entry", path, parent, base };
  if (base === OPAQUE_MARKER) return { kind: "opaque", dir: parent };
  if (base.startsWith(WHITEOUT_META_PREFIX)) return { kind: "reserved", parent, base };
  const target = base.slice(WHITEOUT_PREFIX.length);
  if (target === "" || target === "." || target === "..") {
    throw new MmError("MM_BAD_LAYER", `invalid whiteout name ${JSON.stringify(name)}`);
  }
  return { kind: "whiteout", parent, name: target };
}

/** What the root holds at an in-root path, as far as resolution cares. */
export type PathInfo =
  | { readonly kind: "symlink"; readonly target: string }
  | { readonly kind: "dir" }
  | { readonly kind: "other" }
  | { readonly kind: "missing" };

/** Looks up an in-root path without following a symlink at its end (lstat + readlink). */
export type PathLookup = (path: string) => PathInfo;

export interface ResolveOptions {
  /** Follow a symlink in the last component too (default false: the last component is taken as is). */
  readonly followFinal?: boolean;
  /** Symlink budget (default MAX_SYMLINKS). */
  readonly maxSymlinks?: number;
}

/**
 * Resolves `path` (any string; normalised as an entry name) inside the root, following
 * symlinks through `lookup` with chroot semantics. Returns an in-root path none of
 * whose proper prefixes is a symlink (nor, with followFinal, the path itself).
 * Missing components are kept lexically, so the result is also where to create them.
 * Exceeding the symlink budget (a loop) is MM_BAD_LAYER.
 */
export function resolveInRoot(path: string, lookup: PathLookup, options: ResolveOptions = {}): string {
  if (path.includes("\0")) throw new MmError("MM_BAD_LAYER", `path contains a NUL byte: ${JSON.stringify(path)}`);
  const budget = options.maxSymlinks ?? MAX_SYMLINKS;
  const followFinal = options.followFinal ?? false;
  // Components still to walk, in reverse so the next one is at the end (cheap pop/push).
  const pending = components(path).reverse();
  const resolved: string[] = [];
  let links = 0;
  while (pending.length > 0) {
    const c = pending.pop()!;
    if (c === "..") {
      resolved.pop(); // the resolved prefix holds no symlinks, so ".." is lexical; at the root it stays
      continue;
    }
    resolved.push(c);
    if (pending.length === 0 && !followFinal) break;
    const info = lookup(resolved.join("/"));
    if (info.kind !== "symlink") continue;
    if (++links > budget) {
      throw new MmError("MM_BAD_LAYER", `too many levels of symbolic links resolving ${JSON.stringify(path)}`);
    }
    if (info.target.includes("\0")) {
      throw new MmError("MM_BAD_LAYER", `symlink target contains a NUL byte at ${JSON.stringify(resolved.join("/"))}`);
    }
    resolved.pop();
    if (info.target.startsWith("/")) resolved.length = 0;
    const next = components(info.target);
    for (let i = next.length - 1; i >= 0; i--) pending.push(next[i]!);
  }
  return resolved.join("/");
}
