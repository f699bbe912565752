// `mm image import`: images from an OCI layout directory, or from a `docker save` tarball
// (legacy layout or Docker 25+'s OCI one; an oci-archive tar works too), into the content store.

import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join, posix } from "node:path";
import { MmError } from "@mm/core";
import { Parser, type ReadEntry } from "tar";
import type { ContentStore } from "./content-store.js";
import { digestHex, sha256Digest, shortDigest } from "./digest.js";
import {
  checkRunnable,
  INDEX_MEDIA_TYPES,
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  parseImageConfig,
  parseManifest,
} from "./manifest.js";
import { hostPlatform, normalizePlatform, selectManifest } from "./platform.js";
import { formatReference, parseReference } from "./reference.js";
import type { Descriptor, ImageConfigFile, Index, Manifest, Platform, PulledImage } from "./types.js";
import { MediaType } from "./types.js";

export interface ImportOptions {
  readonly store: ContentStore;
  /**
   * The name to give the image. Required when the archive names none; when given, the
   * archive must hold one image (or one index, resolved for `platform`).
   */
  readonly reference?: string;
  /** For indexes: default the host's. */
  readonly platform?: Platform;
  readonly now?: () => number;
}

const CONTAINERD_NAME = "io.containerd.image.name";
const OCI_REF_NAME = "org.opencontainers.image.ref.name";

function bad(what: string): MmError {
  return new MmError("MM_BAD_ARCHIVE", what);
}

/** A full reference from a descriptor's annotations; a bare tag ("latest") is no name. */
function annotatedName(d: Descriptor): string | undefined {
  for (const key of [CONTAINERD_NAME, OCI_REF_NAME]) {
    const v = d.annotations?.[key];
    if (!v || (key === OCI_REF_NAME && !/[/:]/.test(v))) continue;
    try {
      return formatReference(parseReference(v));
    } catch {
      // not a reference: ignore the annotation
    }
  }
  return undefined;
}

/** Where the image's blobs come from: a layout directory or a tar's entries. */
interface BlobSource {
  /** Verified bytes of a small blob. */
  read(d: Descriptor, max: number): Promise<Uint8Array>;
  /** Stores blobs in the content store, each verified against its descriptor. */
  copyAll(ds: readonly Descriptor[]): Promise<void>;
}

async function finishImport(
  store: ContentStore,
  source: BlobSource,
  top: Descriptor,
  names: readonly string[],
  platform: Platform,
  now: () => number,
): Promise<PulledImage[]> {
  const lease = await store.lease([top.digest]);
  try {
    let chosen = top;
    let index: Descriptor | undefined;
    let chosenPlatform = top.platform ? normalizePlatform(top.platform) : undefined;
    if (INDEX_MEDIA_TYPES.includes(top.mediaType)) {
      index = top;
      const parsed = parseManifest(await source.read(top, MAX_MANIFEST_BYTES), top.mediaType, "MM_BAD_ARCHIVE");
      if (parsed.kind !== "index") throw bad(`${shortDigest(top.digest)} is not an index`);
      chosen = selectManifest(parsed.index, platform, names[0] ?? "the archive's image");
      chosenPlatform = normalizePlatform(chosen.platform!);
      await lease.add([chosen.digest]);
    }
    const parsed = parseManifest(await source.read(chosen, MAX_MANIFEST_BYTES), chosen.mediaType, "MM_BAD_ARCHIVE");
    if (parsed.kind !== "manifest") throw bad(`${shortDigest(chosen.digest)}: an index inside an index`);
    const manifest = parsed.manifest;
    checkRunnable(manifest);
    const config = parseImageConfig(await source.read(manifest.config, MAX_CONFIG_BYTES), "MM_BAD_ARCHIVE");
    if (config.rootfs.diff_ids.length !== manifest.layers.length) {
      throw bad(`${manifest.layers.length} layers but ${config.rootfs.diff_ids.length} diff_ids in the config`);
    }
    await lease.add([manifest.config.digest, ...manifest.layers.map((l) => l.digest)]);
    const missing: Descriptor[] = [];
    for (const d of [...(index ? [index] : []), chosen, manifest.config, ...manifest.layers]) {
      if (!(await store.has(d)) && !missing.some((m) => m.digest === d.digest)) missing.push(d);
    }
    await source.copyAll(missing);
    return await writeRefs(store, names, chosen.digest, manifest, config, chosenPlatform, index?.digest, now);
  } finally {
    await lease.release();
  }
}

async function writeRefs(
  store: ContentStore,
  names: readonly string[],
  digest: string,
  manifest: Manifest,
  config: ImageConfigFile,
  platform: Platform | undefined,
  indexDigest: string | undefined,
  now: () => number,
): Promise<PulledImage[]> {
  const out: PulledImage[] = [];
  const p =
    platform ??
    normalizePlatform({
      os: config.os,
      architecture: config.architecture,
      ...(config.variant ? { variant: config.variant } : {}),
    });
  for (const reference of names) {
    await store.setRef({
      reference,
      digest,
      platform: p,
      pulledAt: new Date(now()).toISOString(),
      ...(indexDigest ? { indexDigest } : {}),
    });
    out.push({ reference, digest, manifest, config, configDigest: manifest.config.digest });
  }
  return out;
}

/** Which index.json entries to import, and under which names. */
function planLayout(index: Index, options: ImportOptions, platform: Platform): [Descriptor, string[]][] {
  if (options.reference !== undefined) {
    const name = formatReference(parseReference(options.reference));
    const entries = index.manifests;
    if (entries.length === 1) return [[entries[0]!, [name]]];
    if (entries.length > 1 && entries.every((d) => d.platform))
      return [[selectManifest(index, platform, name), [name]]];
    const named = entries.filter((d) => annotatedName(d) === name);
    if (named.length === 1) return [[named[0]!, [name]]];
    throw new MmError(
      "MM_USAGE",
      `the archive holds ${entries.length} images; import it without a name to keep the names it gives them`,
    );
  }
  const byDigest = new Map<string, [Descriptor, string[]]>();
  for (const d of index.manifests) {
    const name = annotatedName(d);
    if (!name) continue;
    const entry = byDigest.get(d.digest) ?? [d, []];
    if (!entry[1].includes(name)) entry[1].push(name);
    byDigest.set(d.digest, entry);
  }
  if (byDigest.size === 0) {
    throw new MmError("MM_USAGE", "the archive names no image: give a name, e.g. `mm image import FILE NAME`");
  }
  return [...byDigest.values()];
}

async function readLayoutJson(path: string, what: string): Promise<Buffer> {
  try {
    const s = await stat(path);
    if (!s.isFile()) throw bad(`${what} is not a file`);
    if (s.size > MAX_MANIFEST_BYTES) throw bad(`${what} is larger than ${MAX_MANIFEST_BYTES} bytes`);
    return await readFile(path);
  } catch (e) {
    if (e instanceof MmError) throw e;
    throw bad(`${what}: ${(e as Error).message}`);
  }
}

function checkLayoutVersion(bytes: Uint8Array): void {
  let doc: unknown;
  try {
    doc = JSON.parse(Buffer.from(bytes).toString("utf8"));
  } catch {
    throw bad("oci-layout is not JSON");
  }
  const v = (doc as { imageLayoutVersion?: unknown } | null)?.imageLayoutVersion;
  if (typeof v !== "string" || !/^1\./.test(v)) throw bad(`unsupported imageLayoutVersion ${JSON.stringify(v)}`);
}

function parseLayoutIndex(bytes: Uint8Array): Index {
  const parsed = parseManifest(bytes, MediaType.OCI_INDEX, "MM_BAD_ARCHIVE", "index.json");
  if (parsed.kind !== "index") throw bad("index.json is not an index");
  return parsed.index;
}

/** Imports the images an OCI image layout directory (index.json, oci-layout, blobs/) holds. */
export async function importOciLayout(dir: string, options: ImportOptions): Promise<PulledImage[]> {
  checkLayoutVersion(await readLayoutJson(join(dir, "oci-layout"), "oci-layout"));
  const index = parseLayoutIndex(await readLayoutJson(join(dir, "index.json"), "index.json"));
  const platform = options.platform ?? hostPlatform();
  const blob = (d: Descriptor) => join(dir, "blobs", "sha256", digestHex(d.digest));
  const source: BlobSource = {
    async read(d, max) {
      if (d.size > max) throw bad(`blob ${shortDigest(d.digest)} is larger than ${max} bytes`);
      let bytes: Buffer;
      try {
        bytes = await readFile(blob(d));
      } catch (e) {
        throw bad(`blob ${shortDigest(d.digest)} is missing: ${(e as Error).message}`);
      }
      if (bytes.byteLength !== d.size || sha256Digest(bytes) !== d.digest) {
        throw new MmError("MM_DIGEST_MISMATCH", `blob ${shortDigest(d.digest)} in ${dir}`);
      }
      return bytes;
    },
    async copyAll(ds) {
      for (const d of ds) {
        try {
          await stat(blob(d));
        } catch (e) {
          throw bad(`blob ${shortDigest(d.digest)} is missing: ${(e as Error).message}`);
        }
        await options.store.ingestStream(createReadStream(blob(d)), d);
      }
    },
  };
  const out: PulledImage[] = [];
  for (const [top, names] of planLayout(index, options, platform)) {
    out.push(...(await finishImport(options.store, source, top, names, platform, options.now ?? Date.now)));
  }
  return out;
}

// --- docker save / oci-archive tarballs ---------------------------------------------------

/** One image in a `docker save` manifest.json. */
interface DockerSaveImage {
  readonly Config: string;
  readonly RepoTags: readonly string[];
  readonly Layers: readonly string[];
}

interface TarListing {
  readonly files: Map<string, number>; // path → size
  readonly links: Map<string, string>; // path → target path (resolved to the archive root)
  readonly small: Map<string, Buffer>; // the top-level JSON files and small blobs, read in the first pass
}

const SMALL_FILES = new Set(["manifest.json", "index.json", "oci-layout"]);
/** Blobs this small (manifests, configs) are kept from the first pass, up to a total. */
const SMALL_BLOB_BYTES = 256 * 1024;
const SMALL_BLOBS_TOTAL = 16 * 1024 * 1024;

function cleanPath(p: string): string {
  return posix.normalize(p.replace(/^(\.\/)+/, "")).replace(/\/+$/, "");
}

/** Reads a tar (gzip-compressed or not) entry by entry; `visit` returns true to consume a body. */
async function scanTar(
  file: string,
  visit: (entry: ReadEntry, path: string) => Promise<void> | undefined,
): Promise<void> {
  const parser = new Parser({ strict: true });
  const input = createReadStream(file);
  const pending: Promise<void>[] = [];
  try {
    await new Promise<void>((resolve, reject) => {
      parser.on("entry", (entry: ReadEntry) => {
        const work = visit(entry, cleanPath(entry.path));
        if (!work) {
          entry.resume();
          return;
        }
        pending.push(
          work.catch((e) => {
            reject(e);
            throw e;
          }),
        );
      });
      parser.on("error", reject);
      parser.on("close", resolve);
      input.on("error", reject);
      input.pipe(parser as unknown as NodeJS.WritableStream);
    });
    await Promise.all(pending);
  } catch (e) {
    // Stop reading: a consumer failed, or the archive is broken.
    input.destroy();
    await Promise.allSettled(pending);
    if (e instanceof MmError) throw e;
    throw bad(`${file}: ${(e as Error).message}`);
  }
}

async function collect(entry: AsyncIterable<Buffer>, max: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const c of entry) {
    total += c.byteLength;
    if (total > max) throw bad(`${what} is larger than ${max} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks, total);
}

async function listTar(file: string): Promise<TarListing> {
  const listing: TarListing = { files: new Map(), links: new Map(), small: new Map() };
  let kept = 0;
  await scanTar(file, (entry, path) => {
    if (entry.type === "File" || entry.type === "OldFile" || entry.type === "ContiguousFile") {
      listing.files.set(path, entry.size);
      const smallBlob =
        path.startsWith("blobs/sha256/") && entry.size <= SMALL_BLOB_BYTES && kept + entry.size <= SMALL_BLOBS_TOTAL;
      if (smallBlob) kept += entry.size;
      if (SMALL_FILES.has(path) || smallBlob) {
        return collect(entry, MAX_MANIFEST_BYTES, path).then((b) => {
          listing.small.set(path, b);
        });
      }
    } else if (entry.type === "SymbolicLink" && entry.linkpath) {
      listing.links.set(path, cleanPath(posix.join(posix.dirname(path), entry.linkpath)));
    } else if (entry.type === "Link" && entry.linkpath) {
      listing.links.set(path, cleanPath(entry.linkpath));
    }
    return undefined;
  });
  return listing;
}

/** Follows the archive's own links (docker save links duplicate layers) to a regular file. */
function resolveEntry(listing: TarListing, path: string): string {
  let p = cleanPath(path);
  for (let i = 0; i < 16; i++) {
    if (listing.files.has(p)) return p;
    const next = listing.links.get(p);
    if (next === undefined) break;
    p = next;
  }
  throw bad(`the archive has no file ${JSON.stringify(path)}`);
}

function parseDockerManifest(bytes: Buffer): DockerSaveImage[] {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw bad("manifest.json is not JSON");
  }
  const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === "string");
  if (!Array.isArray(doc) || doc.length === 0) throw bad("manifest.json is not a non-empty list");
  return doc.map((item: unknown, i) => {
    const o = item as { Config?: unknown; RepoTags?: unknown; Layers?: unknown } | null;
    if (typeof o?.Config !== "string" || !isStrings(o.Layers) || (o.RepoTags != null && !isStrings(o.RepoTags))) {
      throw bad(`manifest.json[${i}] lacks Config, Layers or well-formed RepoTags`);
    }
    return { Config: o.Config, Layers: o.Layers, RepoTags: (o.RepoTags as string[] | null) ?? [] };
  });
}

/** The digest a path names, for content-addressed paths: blobs/sha256/<hex>, <hex>.json. */
function digestFromPath(path: string): string | undefined {
  const m = /^(?:blobs\/sha256\/([a-f0-9]{64})|([a-f0-9]{64})\.json)$/.exec(path);
  const hex = m?.[1] ?? m?.[2];
  return hex ? `sha256:${hex}` : undefined;
}

function layerMediaType(head: Buffer): string {
  if (head[0] === 0x1f && head[1] === 0x8b) return MediaType.OCI_LAYER_GZIP;
  if (head.readUInt32LE(0) === 0xfd2fb528) return MediaType.OCI_LAYER_ZSTD;
  return MediaType.OCI_LAYER_TAR;
}

/**
 * Imports a `docker save` tarball (Docker's legacy layout or its OCI one, plain or gzipped),
 * or an OCI archive (a tarred OCI layout). Docker's layers are stored as they are and an OCI
 * manifest is written for them, byte-for-byte the same for the same archive.
 */
export async function importDockerArchive(tarPath: string, options: ImportOptions): Promise<PulledImage[]> {
  const listing = await listTar(tarPath);
  const platform = options.platform ?? hostPlatform();
  const now = options.now ?? Date.now;
  const { store } = options;
  const manifestJson = listing.small.get("manifest.json");

  if (!manifestJson) {
    const layout = listing.small.get("oci-layout");
    const indexJson = listing.small.get("index.json");
    if (!layout || !indexJson) throw bad(`${tarPath} has neither manifest.json nor index.json and oci-layout`);
    checkLayoutVersion(layout);
    return importOciArchive(tarPath, listing, parseLayoutIndex(indexJson), options, platform, now);
  }

  const images = parseDockerManifest(manifestJson);
  let names: string[][] = images.map((img) => img.RepoTags.map((t) => formatReference(parseReference(t))));
  if (options.reference !== undefined) {
    if (images.length !== 1) {
      throw new MmError("MM_USAGE", `the archive holds ${images.length} images; import it without a name`);
    }
    names = [[formatReference(parseReference(options.reference))]];
  } else if (names.every((n) => n.length === 0)) {
    throw new MmError("MM_USAGE", "the archive names no image: give a name, e.g. `mm image import FILE NAME`");
  }

  // One pass over the tar stores every file an image refers to, named by its own digest.
  const wanted = new Map<string, "config" | "layer">();
  for (const img of images) {
    wanted.set(resolveEntry(listing, img.Config), "config");
    for (const l of img.Layers) wanted.set(resolveEntry(listing, l), "layer");
  }
  const lease = await store.lease([]);
  try {
    const stored = new Map<string, { digest: string; size: number; head: Buffer; bytes?: Buffer }>();
    await scanTar(tarPath, (entry, path) => {
      const kind = wanted.get(path);
      if (!kind || stored.has(path) || !listing.files.has(path)) return undefined;
      return (async () => {
        if (kind === "config") {
          const bytes = await collect(entry, MAX_CONFIG_BYTES, path);
          const digest = sha256Digest(bytes);
          await lease.add([digest]);
          await store.ingestBytes({ mediaType: MediaType.OCI_CONFIG, digest, size: bytes.byteLength }, bytes);
          stored.set(path, { digest, size: bytes.byteLength, head: bytes.subarray(0, 4), bytes });
          return;
        }
        let head = Buffer.alloc(0);
        async function* peek(): AsyncIterable<Uint8Array> {
          for await (const c of entry as AsyncIterable<Buffer>) {
            if (head.byteLength < 4) head = Buffer.concat([head, c.subarray(0, 4 - head.byteLength)]);
            yield c;
          }
        }
        const got = await store.ingestStream(peek(), undefined, lease);
        stored.set(path, { ...got, head: Buffer.concat([head, Buffer.alloc(4)]) });
      })();
    });

    const out: PulledImage[] = [];
    for (const [i, img] of images.entries()) {
      if (names[i]!.length === 0) continue;
      const configPath = resolveEntry(listing, img.Config);
      const c = stored.get(configPath)!;
      const expected = digestFromPath(configPath);
      if (expected && expected !== c.digest) {
        throw new MmError("MM_DIGEST_MISMATCH", `${configPath}: the content's digest is ${c.digest}`);
      }
      const config = parseImageConfig(c.bytes!, "MM_BAD_ARCHIVE", configPath);
      if (config.rootfs.diff_ids.length !== img.Layers.length) {
        throw bad(`${img.Layers.length} layers but ${config.rootfs.diff_ids.length} diff_ids in ${configPath}`);
      }
      const layers: Descriptor[] = img.Layers.map((l, n) => {
        const path = resolveEntry(listing, l);
        const s = stored.get(path)!;
        const mediaType = layerMediaType(s.head);
        const want =
          digestFromPath(path) ?? (mediaType === MediaType.OCI_LAYER_TAR ? config.rootfs.diff_ids[n] : undefined);
        if (want !== undefined && want !== s.digest) {
          throw new MmError(
            "MM_DIGEST_MISMATCH",
            `layer ${path}: the content's digest is ${s.digest}, expected ${want}`,
          );
        }
        return { mediaType, digest: s.digest, size: s.size };
      });
      // Key order is fixed here, so the same archive always yields the same manifest digest.
      const manifest: Manifest = {
        schemaVersion: 2,
        mediaType: MediaType.OCI_MANIFEST,
        config: { mediaType: MediaType.OCI_CONFIG, digest: c.digest, size: c.size },
        layers,
      };
      const bytes = Buffer.from(JSON.stringify(manifest));
      const digest = sha256Digest(bytes);
      await lease.add([digest]);
      await store.ingestBytes({ mediaType: MediaType.OCI_MANIFEST, digest, size: bytes.byteLength }, bytes);
      out.push(...(await writeRefs(store, names[i]!, digest, manifest, config, undefined, undefined, now)));
    }
    return out;
  } finally {
    await lease.release();
  }
}

/** A tarred OCI layout: blobs are read from the tar, one pass per blob needed (small) or layer batch. */
async function importOciArchive(
  tarPath: string,
  listing: TarListing,
  index: Index,
  options: ImportOptions,
  platform: Platform,
  now: () => number,
): Promise<PulledImage[]> {
  const blobPath = (d: Descriptor) => resolveEntry(listing, `blobs/sha256/${digestHex(d.digest)}`);
  const source: BlobSource = {
    async read(d, max) {
      if (d.size > max) throw bad(`blob ${shortDigest(d.digest)} is larger than ${max} bytes`);
      const path = blobPath(d);
      let bytes = listing.small.get(path);
      if (!bytes)
        await scanTar(tarPath, (entry, p) =>
          p === path && !bytes
            ? collect(entry, max, p).then((b) => {
                bytes = b;
              })
            : undefined,
        );
      if (!bytes || bytes.byteLength !== d.size || sha256Digest(bytes) !== d.digest) {
        throw new MmError("MM_DIGEST_MISMATCH", `blob ${shortDigest(d.digest)} in ${tarPath}`);
      }
      return bytes;
    },
    async copyAll(ds) {
      const byPath = new Map(ds.map((d) => [blobPath(d), d]));
      const done = new Set<string>();
      await scanTar(tarPath, (entry, p) => {
        const d = byPath.get(p);
        if (!d || done.has(p)) return undefined;
        done.add(p);
        return options.store.ingestStream(entry as AsyncIterable<Buffer>, d).then(() => {});
      });
      if (done.size !== byPath.size) throw bad(`${byPath.size - done.size} blobs are missing from ${tarPath}`);
    },
  };
  const out: PulledImage[] = [];
  for (const [top, names] of planLayout(index, options, platform)) {
    out.push(...(await finishImport(options.store, source, top, names, platform, now)));
  }
  return out;
}
