// Streaming tar reader for image layers: node-tar's Header decodes each 512-byte block;
// the framing, PAX records (kept as raw bytes, so binary xattrs survive) and GNU long
// names are read here, pull-based, so the consumer's pace bounds what is decompressed.
//
// Why not node-tar's Parser: it decodes PAX bodies as UTF-8 and drops SCHILY.xattr.*
// (security.capability is binary), and it gunzips/unzstds input by sniffing, which
// would bypass the decompressed-size cap applied before it. Semantics follow Go's
// archive/tar (what Docker and containerd read layers with).

import { MmError } from "@mm/core";
import { Header } from "tar";
import { ByteReader } from "./byte-reader.js";

const BLOCK = 512;
/** Largest PAX or GNU long-name body accepted (Go's archive/tar: maxSpecialFileSize). */
export const MAX_META_BYTES = 1024 * 1024;

export type TarEntryType = "file" | "hardlink" | "symlink" | "char" | "block" | "dir" | "fifo";

export interface TarEntry {
  readonly type: TarEntryType;
  /** The name as stored (PAX path, else GNU long name, else ustar prefix/name); not yet normalised. */
  readonly name: string;
  /** Symlink target or hardlink target, as stored ("" for other types). */
  readonly linkname: string;
  /** Permission bits including setuid, setgid and sticky. */
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Bytes of data that follow (0 for all types but files). */
  readonly size: number;
  /** Seconds since the epoch (fractional with PAX). */
  readonly mtime: number;
  readonly atime?: number;
  readonly devmajor: number;
  readonly devminor: number;
  /** PAX SCHILY.xattr.* records: name → raw value. */
  readonly xattrs: ReadonlyMap<string, Buffer>;
}

/** Called per entry; `body` yields exactly `entry.size` bytes. Whatever is left unread is skipped. */
export type TarEntryHandler = (entry: TarEntry, body: AsyncIterable<Buffer>) => Promise<void>;

const TYPES: Readonly<Record<string, TarEntryType>> = {
  "0": "file",
  "7": "file", // contiguous file: a regular file everywhere that matters
  "1": "hardlink",
  "2": "symlink",
  "3": "char",
  "4": "block",
  "5": "dir",
  "6": "fifo",
};

const bad = (detail: string, cause?: unknown) =>
  new MmError("MM_BAD_LAYER", detail, cause === undefined ? undefined : { cause });

/** Pending extended-header state that applies to the next file entry. */
interface Pending {
  path?: string;
  linkpath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  atime?: number;
  xattrs: Map<string, Buffer>;
}

const emptyPending = (): Pending => ({ xattrs: new Map() });

/**
 * Parses PAX extended header records ("<len> <key>=<value>\n", len counting the whole
 * record in bytes). Values stay raw bytes: xattr values may hold any byte, newlines included.
 */
export function parsePaxRecords(body: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < body.length) {
    if (body[pos] === 0) break; // NUL padding after the last record
    const space = body.indexOf(0x20, pos);
    if (space < 0 || space - pos > 20) throw bad("malformed PAX record: no length");
    const lenText = body.toString("latin1", pos, space);
    if (!/^[1-9][0-9]*$/.test(lenText)) throw bad(`malformed PAX record length ${JSON.stringify(lenText)}`);
    const len = Number(lenText);
    const end = pos + len;
    if (end > body.length || end <= space + 1 || body[end - 1] !== 0x0a) throw bad("malformed PAX record: bad length");
    const eq = body.indexOf(0x3d, space + 1);
    if (eq < 0 || eq >= end - 1 || eq === space + 1) throw bad("malformed PAX record: no key");
    out.set(body.toString("utf8", space + 1, eq), body.subarray(eq + 1, end - 1));
    pos = end;
  }
  return out;
}

const XATTR_KEY = "SCHILY.xattr.";

function decimal(key: string, v: Buffer, fractional = false): number {
  const s = v.toString("latin1");
  const ok = fractional ? /^-?[0-9]+(\.[0-9]+)?$/.test(s) : /^[0-9]+$/.test(s);
  const n = Number(s);
  if (!ok || !Number.isFinite(n) || (!fractional && !Number.isSafeInteger(n))) {
    throw bad(`malformed PAX ${key}=${JSON.stringify(s)}`);
  }
  return n;
}

function applyPax(p: Pending, records: Map<string, Buffer>): void {
  for (const [key, value] of records) {
    if (key.startsWith(XATTR_KEY)) {
      const name = key.slice(XATTR_KEY.length);
      if (name === "") throw bad("PAX xattr record without a name");
      p.xattrs.set(name, Buffer.from(value));
      continue;
    }
    if (key.startsWith("GNU.sparse.")) throw bad("sparse files are not supported in image layers");
    switch (key) {
      case "path":
        p.path = value.toString("utf8");
        break;
      case "linkpath":
        p.linkpath = value.toString("utf8");
        break;
      case "size":
        p.size = decimal(key, value);
        break;
      case "uid":
        p.uid = decimal(key, value);
        break;
      case "gid":
        p.gid = decimal(key, value);
        break;
      case "mtime":
        p.mtime = decimal(key, value, true);
        break;
      case "atime":
        p.atime = decimal(key, value, true);
        break;
      default:
        break; // uname, gname, ctime, comment, charset, vendor keys: not needed
    }
  }
}

const cString = (b: Buffer) => {
  const nul = b.indexOf(0);
  return b.toString("utf8", 0, nul < 0 ? b.length : nul);
};

/**
 * Decodes an 8-byte device number field (octal, or GNU base-256). Read here rather than
 * from Header, which skips these fields in GNU-format ("ustar  ") headers.
 */
function deviceNumber(block: Buffer, off: number): number {
  const f = block.subarray(off, off + 8);
  let n = 0;
  if ((f[0]! & 0x80) !== 0) {
    if ((f[0]! & 0x40) !== 0) throw bad("negative device number");
    n = f[0]! & 0x3f;
    for (let i = 1; i < 8; i++) n = n * 256 + f[i]!;
  } else {
    const text = f.toString("latin1").replace(/\0.*$/s, "").trim();
    if (text === "") return 0;
    if (!/^[0-7]+$/.test(text)) throw bad(`malformed device number ${JSON.stringify(text)}`);
    n = Number.parseInt(text, 8);
  }
  if (n > 0xffffffff) throw bad(`device number ${n} out of range`);
  return n;
}

const isId = (n: number) => Number.isSafeInteger(n) && n >= 0 && n <= 0xfffffffe;

/**
 * Reads a tar stream entry by entry. Ends at the end-of-archive marker (two zero
 * blocks; remaining input is not read), at a clean end of input on a block boundary,
 * or with MM_BAD_LAYER on anything malformed: bad checksum, truncation, an unknown
 * entry type, oversized metadata, or a size no file system could hold.
 * `maxEntryBytes` rejects an entry whose declared size exceeds it before any data is read.
 */
export async function readTar(
  source: AsyncIterable<Uint8Array>,
  onEntry: TarEntryHandler,
  options: { readonly maxEntryBytes?: number; readonly tooLarge?: (size: number) => Error } = {},
): Promise<{ entries: number }> {
  const r = new ByteReader(source);
  // As in Go's archive/tar, a later PAX header replaces an earlier one rather than adding
  // to it (so metadata held for one entry stays bounded by MAX_META_BYTES), and PAX
  // path/linkpath win over GNU long names.
  let pending = emptyPending();
  let gnuName: string | undefined;
  let gnuLink: string | undefined;
  let entries = 0;
  let sawZero = false;
  try {
    for (;;) {
      const at = r.offset;
      const block = await r.read(BLOCK);
      if (block === null) break; // clean end without the zero blocks: Go accepts it
      let h: Header;
      try {
        h = new Header(block);
      } catch (e) {
        throw bad(`unreadable tar header at offset ${at}`, e);
      }
      if (h.nullBlock) {
        if (sawZero) break;
        sawZero = true;
        continue;
      }
      sawZero = false;
      if (!h.cksumValid) throw bad(`tar header checksum mismatch at offset ${at}`);
      const flag = h.typeKey;
      const rawSize = h.size;
      if (rawSize === undefined || !Number.isSafeInteger(rawSize) || rawSize < 0) {
        throw bad(`invalid entry size at offset ${at}`);
      }
      switch (flag) {
        case "x":
        case "g":
        case "L":
        case "K": {
          if (rawSize > MAX_META_BYTES) throw bad(`extended header of ${rawSize} bytes at offset ${at}`);
          const body = rawSize === 0 ? Buffer.alloc(0) : Buffer.from((await r.read(rawSize)) ?? Buffer.alloc(0));
          if (body.length !== rawSize) throw bad(`truncated archive at offset ${r.offset}`);
          await r.skip(padding(rawSize));
          if (flag === "x") {
            pending = emptyPending();
            applyPax(pending, parsePaxRecords(body));
          } else if (flag === "g")
            parsePaxRecords(body); // validated, then ignored as containerd does
          else if (flag === "L") gnuName = cString(body);
          else gnuLink = cString(body);
          continue;
        }
        default:
          break;
      }
      const type = TYPES[flag];
      if (!type) throw bad(`unsupported tar entry type ${JSON.stringify(flag)} at offset ${at}`);
      // Header-only types carry no data whatever their size field says (Go's isHeaderOnlyType).
      const size = type === "file" ? (pending.size ?? rawSize) : 0;
      if (!Number.isSafeInteger(size) || size < 0) throw bad(`invalid entry size at offset ${at}`);
      const name = pending.path ?? gnuName ?? h.path ?? "";
      if (name === "") throw bad(`tar entry without a name at offset ${at}`);
      const uid = pending.uid ?? h.uid ?? 0;
      const gid = pending.gid ?? h.gid ?? 0;
      if (!isId(uid) || !isId(gid)) throw bad(`invalid owner ${uid}:${gid} for ${JSON.stringify(name)}`);
      const mtime = pending.mtime ?? (h.mtime ? h.mtime.getTime() / 1000 : 0);
      const entry: TarEntry = {
        type,
        name,
        linkname: type === "symlink" || type === "hardlink" ? (pending.linkpath ?? gnuLink ?? h.linkpath ?? "") : "",
        mode: (h.mode ?? 0) & 0o7777,
        uid,
        gid,
        size,
        mtime,
        ...(pending.atime !== undefined ? { atime: pending.atime } : {}),
        devmajor: type === "char" || type === "block" ? deviceNumber(block, 329) : 0,
        devminor: type === "char" || type === "block" ? deviceNumber(block, 337) : 0,
        xattrs: pending.xattrs,
      };
      pending = emptyPending();
      gnuName = undefined;
      gnuLink = undefined;
      if (options.maxEntryBytes !== undefined && size > options.maxEntryBytes) {
        throw options.tooLarge?.(size) ?? bad(`entry ${JSON.stringify(name)} declares ${size} bytes`);
      }
      const body = new EntryBody(r, size);
      await onEntry(entry, body);
      await body.drain();
      await r.skip(padding(size));
      entries++;
    }
  } finally {
    await r.close();
  }
  return { entries };
}

const padding = (size: number) => (BLOCK - (size % BLOCK)) % BLOCK;

/** An entry's data; iterable once, and drained by the reader if the handler leaves some. */
class EntryBody implements AsyncIterable<Buffer> {
  #left: number;
  readonly #r: ByteReader;
  constructor(r: ByteReader, size: number) {
    this.#r = r;
    this.#left = size;
  }
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    while (this.#left > 0) {
      const n = this.#left;
      for await (const chunk of this.#r.stream(n)) {
        this.#left -= chunk.length;
        yield chunk;
      }
    }
  }
  async drain(): Promise<void> {
    if (this.#left > 0) {
      const n = this.#left;
      this.#left = 0;
      await this.#r.skip(n);
    }
  }
}
