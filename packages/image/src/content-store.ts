// The content store ($MM_STATE/content): blobs named by their verified digest, written
// atomically; image refs as small JSON files; leases that keep a pull's blobs from GC.
//
//   blobs/sha256/<hex>              verified content, never rewritten
//   ingest/<hex>.<pid>.<random>     a download in progress (resumed by a later pull once <pid> is gone)
//   refs/<sha256 of reference>.json {reference, digest, platform, pulledAt, indexDigest?}
//   leases/<pid>.<random>.json      digests a running pull or import needs kept

import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { type FileHandle, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { MmError } from "@mm/core";
import { FileBlobSink, mapWriteError, type OpenFile } from "./blob-sink.js";
import { digestHex, isDigest, sha256Digest, shortDigest } from "./digest.js";
import { MAX_MANIFEST_BYTES, parseManifest } from "./manifest.js";
import type { Descriptor, Platform } from "./types.js";

/** What `mm images` lists: one name pointing at one image. */
export interface ImageRecord {
  /** The normalised reference, e.g. docker.io/library/busybox:latest. */
  readonly reference: string;
  /** The platform manifest's digest. */
  readonly digest: string;
  readonly platform?: Platform;
  /** ISO 8601. */
  readonly pulledAt: string;
  /** The index the manifest was chosen from (Docker's "repo digest" for multi-platform images). */
  readonly indexDigest?: string;
}

export interface GcResult {
  readonly freedBytes: number;
  readonly removed: readonly string[];
}

export interface ContentStoreOptions {
  /** For fault injection in tests (a full disk): how ingest files are opened. */
  readonly openFile?: OpenFile;
  /** Whether a process is alive (to adopt its partial downloads and ignore its leases once it is gone). */
  readonly isAlive?: (pid: number) => boolean;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

const token = () => randomBytes(6).toString("hex");

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A blob being written: hashes as it goes; `commit` verifies and moves it into place. */
export class IngestWriter extends FileBlobSink {
  #done = false;

  private constructor(
    path: string,
    file: FileHandle,
    private readonly store: ContentStore,
    readonly descriptor: Descriptor | undefined,
  ) {
    super(path, file);
  }

  /** @internal — use ContentStore.openIngest. */
  static async create(
    store: ContentStore,
    path: string,
    descriptor: Descriptor | undefined,
    resume: boolean,
    openFile: OpenFile,
  ): Promise<IngestWriter> {
    let file: FileHandle;
    try {
      file = await openFile(path, resume ? "r+" : "wx+", 0o644);
    } catch (e) {
      throw mapWriteError(e, `creating ${path}`);
    }
    const w = new IngestWriter(path, file, store, descriptor);
    try {
      await w.adopt(resume, descriptor?.size);
    } catch (e) {
      await w.abort();
      throw mapWriteError(e, `reading ${path}`);
    }
    return w;
  }

  override async write(chunk: Uint8Array): Promise<void> {
    try {
      await super.write(chunk);
    } catch (e) {
      // A full disk leaves nothing behind: the partial file is removed, not kept for resuming.
      if (e instanceof MmError && e.code === "MM_DISK_FULL") await this.abort();
      throw e;
    }
  }

  /**
   * Verifies size and digest (against the descriptor, or names the blob by its digest when
   * none was given), then fsyncs and renames it into place. Returns the blob's descriptor fields.
   */
  async commit(lease?: Lease): Promise<{ digest: string; size: number }> {
    const digest = this.digest();
    const size = this.offset;
    const want = this.descriptor;
    if (want && (size !== want.size || digest !== want.digest)) {
      await this.abort();
      throw new MmError(
        "MM_DIGEST_MISMATCH",
        size !== want.size
          ? `blob ${shortDigest(want.digest)}: ${size} bytes, expected ${want.size}`
          : `blob ${shortDigest(want.digest)}: the content's digest is ${digest}`,
      );
    }
    try {
      await this.sync();
      await this.close();
      // A blob named only now is leased before it appears, so a concurrent GC keeps it.
      if (lease && !want) await lease.add([digest]);
      await this.store.place(this.path, digest);
    } catch (e) {
      await this.abort();
      throw mapWriteError(e, `storing blob ${shortDigest(digest)}`);
    }
    this.#done = true;
    return { digest, size };
  }

  /** Gives up and removes the partial file. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.close().catch(() => {});
    await rm(this.path, { force: true });
  }

  /** Stops writing but keeps the partial file, so a later pull resumes it. */
  async release(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    await this.close();
  }
}

/** Digests kept from GC while a pull or import that needs them runs. */
export interface Lease {
  /** Adds digests (before the blobs they name are stored). */
  add(digests: Iterable<string>): Promise<void>;
  release(): Promise<void>;
}

export class ContentStore {
  readonly #openFile: OpenFile;
  readonly #isAlive: (pid: number) => boolean;

  constructor(
    readonly root: string,
    options: ContentStoreOptions = {},
  ) {
    this.#openFile = options.openFile ?? open;
    this.#isAlive = options.isAlive ?? alive;
  }

  #dir(name: "blobs" | "ingest" | "refs" | "leases"): string {
    return name === "blobs" ? join(this.root, "blobs", "sha256") : join(this.root, name);
  }

  async #ensure(name: "blobs" | "ingest" | "refs" | "leases"): Promise<string> {
    const dir = this.#dir(name);
    try {
      await mkdir(dir, { recursive: true });
    } catch (e) {
      throw mapWriteError(e, `creating ${dir}`);
    }
    return dir;
  }

  /** Where a blob lives (whether or not it is there). */
  path(digest: string): string {
    return join(this.#dir("blobs"), digestHex(digest));
  }

  /** Whether the blob is stored (and, given a descriptor, has its size). */
  async has(blob: string | Descriptor): Promise<boolean> {
    const digest = typeof blob === "string" ? blob : blob.digest;
    try {
      const s = await stat(this.path(digest));
      return s.isFile() && (typeof blob === "string" || s.size === blob.size);
    } catch {
      return false;
    }
  }

  /** @internal — moves a verified ingest file into place (atomic rename, then the directory is synced). */
  async place(from: string, digest: string): Promise<void> {
    const dir = await this.#ensure("blobs");
    await rename(from, this.path(digest));
    await syncDir(dir);
  }

  /**
   * Opens a writer for a blob. Given a descriptor, a partial download left by a process
   * that is gone is adopted and resumed; without one (imports), the content names itself.
   */
  async openIngest(descriptor?: Descriptor): Promise<IngestWriter> {
    const dir = await this.#ensure("ingest");
    const prefix = descriptor ? digestHex(descriptor.digest) : "unknown";
    const mine = join(dir, `${prefix}.${process.pid}.${token()}`);
    if (descriptor) {
      for (const name of await readdir(dir)) {
        const m = /^([a-f0-9]{64})\.(\d+)\.[a-f0-9]+$/.exec(name);
        if (!m || m[1] !== prefix || this.#isAlive(Number(m[2]))) continue;
        try {
          await rename(join(dir, name), mine); // atomic: of two adopters only one wins
          return await IngestWriter.create(this, mine, descriptor, true, this.#openFile);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw mapWriteError(e, `resuming ${name}`);
        }
      }
    }
    return IngestWriter.create(this, mine, descriptor, false, this.#openFile);
  }

  /** Stores bytes already in memory (manifests, configs), verified against the descriptor. */
  async ingestBytes(descriptor: Descriptor, bytes: Uint8Array): Promise<void> {
    if (await this.has(descriptor)) return;
    const w = await this.openIngest(descriptor);
    try {
      await w.write(bytes);
    } catch (e) {
      await w.abort();
      throw e;
    }
    await w.commit();
  }

  /** Stores a stream; verified against the descriptor when given, else named by its digest. */
  async ingestStream(
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    descriptor?: Descriptor,
    lease?: Lease,
  ): Promise<{ digest: string; size: number }> {
    const w = await this.openIngest(descriptor);
    try {
      for await (const chunk of source) {
        if (descriptor && w.offset + chunk.byteLength > descriptor.size) {
          throw new MmError(
            "MM_DIGEST_MISMATCH",
            `blob ${shortDigest(descriptor.digest)}: more than ${descriptor.size} bytes`,
          );
        }
        await w.write(chunk);
      }
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w.commit(lease);
  }

  /**
   * Reads a stored blob of at most `maxBytes`, verifying its digest (and size, when the
   * descriptor has one) before it is used.
   */
  async readBytes(descriptor: { readonly digest: string; readonly size?: number }, maxBytes: number): Promise<Buffer> {
    const what = `blob ${shortDigest(descriptor.digest)}`;
    let bytes: Buffer;
    try {
      const size = descriptor.size ?? (await stat(this.path(descriptor.digest))).size;
      if (size > maxBytes) throw new MmError("MM_INTERNAL", `${what} is larger than ${maxBytes} bytes`);
      bytes = await readFile(this.path(descriptor.digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        throw new MmError("MM_NO_SUCH_IMAGE", `${what} is not in the content store`);
      }
      throw e;
    }
    if (
      (descriptor.size !== undefined && bytes.byteLength !== descriptor.size) ||
      sha256Digest(bytes) !== descriptor.digest
    ) {
      throw new MmError("MM_DIGEST_MISMATCH", `stored ${what} is corrupt; remove the image and pull it again`);
    }
    return bytes;
  }

  /** readBytes, parsed as JSON. */
  async readJson(descriptor: { readonly digest: string; readonly size?: number }, maxBytes: number): Promise<unknown> {
    const bytes = await this.readBytes(descriptor, maxBytes);
    try {
      return JSON.parse(bytes.toString("utf8"));
    } catch (e) {
      throw new MmError("MM_INTERNAL", `blob ${shortDigest(descriptor.digest)} is not JSON: ${(e as Error).message}`);
    }
  }

  /** A stream of a stored blob (layers, for unpacking; verified when it was stored). */
  createReadStream(digest: string): NodeJS.ReadableStream {
    return createReadStream(this.path(digest));
  }

  /** Removes a blob; false when it was not there. */
  async delete(digest: string): Promise<boolean> {
    try {
      await rm(this.path(digest));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw e;
    }
  }

  /** Every stored blob with its size. */
  async blobs(): Promise<{ digest: string; size: number }[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir("blobs"));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
    const out: { digest: string; size: number }[] = [];
    for (const name of names) {
      if (!/^[a-f0-9]{64}$/.test(name)) continue;
      try {
        out.push({ digest: `sha256:${name}`, size: (await stat(join(this.#dir("blobs"), name))).size });
      } catch {
        // removed meanwhile
      }
    }
    return out;
  }

  #refPath(reference: string): string {
    return join(this.#dir("refs"), `${digestHex(sha256Digest(reference))}.json`);
  }

  /** Writes a small JSON file atomically: temp file, fsync, rename, directory fsync. */
  async #writeJsonAtomic(dir: string, file: string, value: unknown): Promise<void> {
    const temp = join(dir, `.tmp.${process.pid}.${token()}`);
    try {
      await writeFile(temp, `${JSON.stringify(value)}\n`, { flag: "wx", flush: true });
      await rename(temp, file);
      await syncDir(dir);
    } catch (e) {
      await rm(temp, { force: true });
      throw mapWriteError(e, `writing ${file}`);
    }
  }

  /** Points a reference at an image (replacing what it pointed at). */
  async setRef(record: ImageRecord): Promise<void> {
    if (!isDigest(record.digest)) throw new RangeError(`not a digest: ${record.digest}`);
    const dir = await this.#ensure("refs");
    await this.#writeJsonAtomic(dir, this.#refPath(record.reference), record);
  }

  async getRef(reference: string): Promise<ImageRecord | undefined> {
    return readRecord(this.#refPath(reference));
  }

  /** Removes a reference; false when there was none. */
  async removeRef(reference: string): Promise<boolean> {
    try {
      await rm(this.#refPath(reference));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw e;
    }
  }

  /** Every reference, sorted by name. */
  async listRefs(): Promise<ImageRecord[]> {
    let names: string[];
    try {
      names = await readdir(this.#dir("refs"));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw e;
    }
    const records: ImageRecord[] = [];
    for (const name of names.filter((n) => /^[a-f0-9]{64}\.json$/.test(n))) {
      const r = await readRecord(join(this.#dir("refs"), name));
      if (r) records.push(r);
    }
    return records.sort((a, b) => (a.reference < b.reference ? -1 : a.reference > b.reference ? 1 : 0));
  }

  /** Keeps these digests (and what they reach) from GC until released; ends with the process. */
  async lease(digests: Iterable<string>): Promise<Lease> {
    const dir = await this.#ensure("leases");
    const file = join(dir, `${process.pid}.${token()}.json`);
    const held = new Set(digests);
    await this.#writeJsonAtomic(dir, file, { pid: process.pid, digests: [...held] });
    // Writes are chained so that a later add never lands before an earlier one.
    let writes: Promise<void> = Promise.resolve();
    return {
      add: (more) => {
        for (const d of more) held.add(d);
        writes = writes
          .catch(() => {})
          .then(() => this.#writeJsonAtomic(dir, file, { pid: process.pid, digests: [...held] }));
        return writes;
      },
      release: () => rm(file, { force: true }),
    };
  }

  async #leasedDigests(): Promise<string[]> {
    const dir = this.#dir("leases");
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    const out: string[] = [];
    for (const name of names) {
      const m = /^(\d+)\.[a-f0-9]+\.json$/.exec(name);
      if (!m) continue;
      if (!this.#isAlive(Number(m[1]))) {
        await rm(join(dir, name), { force: true });
        continue;
      }
      try {
        const doc = JSON.parse(await readFile(join(dir, name), "utf8")) as { digests?: unknown };
        if (Array.isArray(doc.digests)) out.push(...doc.digests.filter(isDigest));
      } catch {
        // being written or removed: its pull is alive and will hold its blobs by the ref it writes
      }
    }
    return out;
  }

  /** What a stored index (manifests) or manifest (config and layers: leaves) points at. */
  async #children(digest: string): Promise<{ manifests: string[]; leaves: string[] }> {
    const none = { manifests: [], leaves: [] };
    let bytes: Buffer;
    try {
      const s = await stat(this.path(digest));
      if (s.size > MAX_MANIFEST_BYTES) return none;
      bytes = await readFile(this.path(digest));
    } catch {
      return none;
    }
    try {
      const parsed = parseManifest(bytes, undefined);
      if (parsed.kind === "index") return { manifests: parsed.index.manifests.map((d) => d.digest), leaves: [] };
      return { manifests: [], leaves: [parsed.manifest.config.digest, ...parsed.manifest.layers.map((d) => d.digest)] };
    } catch {
      return none; // a config or layer named as a root: nothing below it
    }
  }

  /**
   * Removes every blob not reachable from a ref, a live lease or `inUse` (manifest digests of
   * images machines use). Reachable: the manifest, its config and layers; an index and the
   * manifests it lists. Also clears partial downloads and leases of processes that are gone.
   */
  async gc(inUse: ReadonlySet<string> = new Set()): Promise<GcResult> {
    // List blobs first: one stored after this is not a candidate, and whatever pull stored it
    // took its lease before storing, so the lease is seen below.
    const candidates = await this.blobs();
    const roots = new Set<string>([...inUse].filter(isDigest));
    for (const r of await this.listRefs()) {
      roots.add(r.digest);
      if (r.indexDigest && isDigest(r.indexDigest)) roots.add(r.indexDigest);
    }
    for (const d of await this.#leasedDigests()) roots.add(d);
    const reachable = new Set<string>();
    const queue = [...roots];
    while (queue.length > 0) {
      const d = queue.pop()!;
      if (reachable.has(d)) continue;
      reachable.add(d);
      const { manifests, leaves } = await this.#children(d);
      for (const leaf of leaves) reachable.add(leaf);
      for (const m of manifests) if (!reachable.has(m)) queue.push(m);
    }
    let freedBytes = 0;
    const removed: string[] = [];
    for (const blob of candidates) {
      if (reachable.has(blob.digest)) continue;
      if (await this.delete(blob.digest)) {
        freedBytes += blob.size;
        removed.push(blob.digest);
      }
    }
    freedBytes += await this.#clearIngest();
    return { freedBytes, removed };
  }

  /** Partial downloads, and temp files of ref and lease writes, whose writer is gone. */
  async #clearIngest(): Promise<number> {
    let freed = 0;
    for (const [dir, pattern] of [
      [this.#dir("ingest"), /^[a-z0-9]+\.(\d+)\.[a-f0-9]+$/],
      [this.#dir("refs"), /^\.tmp\.(\d+)\.[a-f0-9]+$/],
      [this.#dir("leases"), /^\.tmp\.(\d+)\.[a-f0-9]+$/],
    ] as const) {
      freed += await this.#clearStale(dir, pattern, dir === this.#dir("ingest"));
    }
    return freed;
  }

  async #clearStale(dir: string, pattern: RegExp, unknownToo: boolean): Promise<number> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return 0;
    }
    let freed = 0;
    for (const name of names) {
      const m = pattern.exec(name);
      if (m ? this.#isAlive(Number(m[1])) : !unknownToo) continue;
      try {
        const s = await stat(join(dir, name));
        await rm(join(dir, name), { force: true });
        freed += s.size;
      } catch {
        // gone meanwhile
      }
    }
    return freed;
  }
}

async function readRecord(file: string): Promise<ImageRecord | undefined> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  try {
    const r = JSON.parse(text) as ImageRecord;
    if (typeof r.reference === "string" && isDigest(r.digest) && typeof r.pulledAt === "string") return r;
  } catch {
    // a torn or foreign file: refs are written atomically, so this is not ours
  }
  return undefined;
}
