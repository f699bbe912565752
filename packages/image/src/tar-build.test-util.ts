// Test helper: writes tar archives byte by byte, so tests can emit the hostile entries
// (absolute names, "..", links out of the root, bad checksums) that packers refuse.

export interface RawEntry {
  readonly name: string;
  /** Typeflag: "0" file, "1" hardlink, "2" symlink, "3" char, "4" block, "5" dir, "6" fifo, or anything. */
  readonly type?: string;
  readonly data?: string | Buffer;
  /** Declared size when it should differ from the data's length. */
  readonly size?: number;
  readonly linkname?: string;
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  readonly mtime?: number;
  readonly devmajor?: number;
  readonly devminor?: number;
  /** PAX records for this entry (an "x" header is emitted before it). */
  readonly pax?: Readonly<Record<string, string | Buffer>>;
  /** Corrupt the header checksum. */
  readonly badChecksum?: boolean;
}

const octal = (n: number, width: number) => `${n.toString(8).padStart(width - 1, "0")}\0`;

export function tarHeader(e: RawEntry): Buffer {
  const b = Buffer.alloc(512);
  const size = e.size ?? (e.data === undefined ? 0 : Buffer.byteLength(e.data));
  b.write(e.name, 0, 100, "utf8");
  b.write(octal(e.mode ?? (e.type === "5" ? 0o755 : 0o644), 8), 100, "ascii");
  b.write(octal(e.uid ?? 0, 8), 108, "ascii");
  b.write(octal(e.gid ?? 0, 8), 116, "ascii");
  b.write(octal(size, 12), 124, "ascii");
  b.write(octal(e.mtime ?? 1_700_000_000, 12), 136, "ascii");
  b.write(e.type ?? "0", 156, 1, "latin1");
  b.write(e.linkname ?? "", 157, 100, "utf8");
  b.write("ustar\u000000", 257, "latin1");
  b.write(octal(e.devmajor ?? 0, 8), 329, "ascii");
  b.write(octal(e.devminor ?? 0, 8), 337, "ascii");
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  if (e.badChecksum) sum += 1;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, "ascii");
  return b;
}

const pad = (n: number) => Buffer.alloc((512 - (n % 512)) % 512);

export function paxBody(records: Readonly<Record<string, string | Buffer>>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(records)) {
    const value = Buffer.isBuffer(v) ? v : Buffer.from(v, "utf8");
    const rest = Buffer.concat([Buffer.from(` ${k}=`, "utf8"), value, Buffer.from("\n")]);
    let len = rest.length + 1;
    while (`${len}`.length + rest.length !== len) len = `${len}`.length + rest.length;
    parts.push(Buffer.from(`${len}`), rest);
  }
  return Buffer.concat(parts);
}

/** One entry (with its PAX header if any) as tar bytes, data padded to a block. */
export function tarEntry(e: RawEntry): Buffer {
  const parts: Buffer[] = [];
  if (e.pax) {
    const body = paxBody(e.pax);
    parts.push(tarHeader({ name: "PaxHeaders/x", type: "x", size: body.length }), body, pad(body.length));
  }
  parts.push(tarHeader(e));
  if (e.data !== undefined) {
    const data = Buffer.isBuffer(e.data) ? e.data : Buffer.from(e.data, "utf8");
    parts.push(data, pad(data.length));
  }
  return Buffer.concat(parts);
}

/** A whole archive: the entries and, unless `end` is false, the two zero blocks. */
export function tarArchive(entries: readonly RawEntry[], end = true): Buffer {
  return Buffer.concat([...entries.map(tarEntry), end ? Buffer.alloc(1024) : Buffer.alloc(0)]);
}
