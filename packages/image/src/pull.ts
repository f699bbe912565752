// `mm pull`: resolve a reference, fetch what the content store lacks (layers concurrently,
// each verified as it streams), then point the reference at the image — the ref is written last.

import { MmError } from "@mm/core";
import type { ContentStore, IngestWriter } from "./content-store.js";
import { shortDigest } from "./digest.js";
import { MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, parseImageConfig, parseManifest } from "./manifest.js";
import { hostPlatform } from "./platform.js";
import { formatReference, parseReference } from "./reference.js";
import type { RegistryClient } from "./registry.js";
import type { Descriptor, ImageReference, Platform, PullEvent, PulledImage } from "./types.js";

export const DEFAULT_PULL_CONCURRENCY = 3;
/** Progress events per layer are at most this often (the CLI redraws no faster). */
export const PROGRESS_INTERVAL_MS = 100;

export interface PullOptions {
  readonly store: ContentStore;
  readonly client: RegistryClient;
  /** Default: the host's platform. */
  readonly platform?: Platform;
  readonly onEvent?: (event: PullEvent) => void;
  /** Layers downloaded at once. */
  readonly concurrency?: number;
  readonly signal?: AbortSignal;
  readonly now?: () => number;
}

/** Runs `work` over `items`, at most `limit` at a time; the first failure stops new work. */
export async function mapBounded<T>(
  items: readonly T[],
  limit: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const errors: unknown[] = [];
  const worker = async () => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (e) {
        failed = true;
        errors.push(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (errors.length > 0) throw errors.find((e) => !(e instanceof DOMException && e.name === "AbortError")) ?? errors[0];
}

export async function pull(reference: string | ImageReference, options: PullOptions): Promise<PulledImage> {
  const { store, client } = options;
  const ref = typeof reference === "string" ? parseReference(reference) : reference;
  const name = formatReference(ref);
  const emit = options.onEvent ?? (() => {});
  const now = options.now ?? Date.now;
  const platform = options.platform ?? hostPlatform();

  const resolved = await client.resolve(ref, platform, {
    onEvent: emit,
    ...(options.signal ? { signal: options.signal } : {}),
    // What an earlier pull stored needs no second fetch: only the tag goes to the registry.
    readCached: async (blob, max) => {
      if (!(await store.has(blob.digest))) return undefined;
      try {
        return await store.readBytes(blob, max);
      } catch (e) {
        // A corrupt stored copy is dropped and fetched again rather than trusted or fatal.
        if (e instanceof MmError && e.code === "MM_DIGEST_MISMATCH") await store.delete(blob.digest);
        return undefined;
      }
    },
  });
  const { manifest } = resolved;
  emit({ type: "resolved", reference: name, digest: resolved.digest, layers: manifest.layers.length });

  const layers = uniqueByDigest(manifest.layers);
  // The lease is taken before anything is stored or found cached, so GC cannot take a blob
  // from under this pull before the ref that keeps it is written.
  const lease = await store.lease([
    ...(resolved.index ? [resolved.index.digest] : []),
    resolved.digest,
    manifest.config.digest,
    ...layers.map((l) => l.digest),
  ]);
  try {
    if (resolved.index) {
      const i = resolved.index;
      await store.ingestBytes({ mediaType: i.mediaType, digest: i.digest, size: i.bytes.byteLength }, i.bytes);
    }
    await store.ingestBytes(
      { mediaType: resolved.manifestMediaType, digest: resolved.digest, size: resolved.manifestBytes.byteLength },
      resolved.manifestBytes,
    );
    await store.ingestBytes(manifest.config, resolved.configBytes);

    const stop = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, stop.signal]) : stop.signal;
    await mapBounded(layers, options.concurrency ?? DEFAULT_PULL_CONCURRENCY, async (layer) => {
      try {
        await fetchLayer(layer);
      } catch (e) {
        // The other downloads stop too, keeping their verified prefixes for the next pull.
        stop.abort(new DOMException("another layer failed", "AbortError"));
        throw e;
      }
    });

    async function fetchLayer(layer: Descriptor): Promise<void> {
      if (await store.has(layer)) {
        emit({ type: "layer-start", digest: layer.digest, size: layer.size, cached: true });
        emit({ type: "layer-done", digest: layer.digest });
        return;
      }
      signal.throwIfAborted();
      const writer: IngestWriter = await store.openIngest(layer);
      emit({ type: "layer-start", digest: layer.digest, size: layer.size, cached: false });
      let last = 0;
      const progress = (bytes: number, size: number) => {
        const t = now();
        if (bytes < size && t - last < PROGRESS_INTERVAL_MS) return;
        last = t;
        emit({ type: "layer-progress", digest: layer.digest, bytes, size });
      };
      try {
        await client.fetchBlob(ref, layer, writer, progress, { onEvent: emit, signal });
        await writer.commit();
      } catch (e) {
        // A verified prefix is kept for the next pull to resume; content that failed
        // verification is not.
        if (e instanceof MmError && e.code === "MM_DIGEST_MISMATCH") await writer.abort();
        else await writer.release();
        throw e;
      }
      emit({ type: "layer-done", digest: layer.digest });
    }

    await store.setRef({
      reference: name,
      digest: resolved.digest,
      platform: resolved.platform,
      pulledAt: new Date(now()).toISOString(),
      ...(resolved.index ? { indexDigest: resolved.index.digest } : {}),
    });
  } finally {
    await lease.release();
  }
  emit({ type: "done", digest: resolved.digest });
  return {
    reference: name,
    digest: resolved.digest,
    manifest,
    config: resolved.config,
    configDigest: manifest.config.digest,
  };
}

function uniqueByDigest(layers: readonly Descriptor[]): Descriptor[] {
  const seen = new Set<string>();
  return layers.filter((l) => !seen.has(l.digest) && seen.add(l.digest));
}

/**
 * The image a reference names in the store, without the network (the warm path of `mm run`).
 * MM_NO_SUCH_IMAGE when it was never pulled or imported, or its blobs are gone.
 */
export async function getImage(store: ContentStore, reference: string | ImageReference): Promise<PulledImage> {
  const ref = typeof reference === "string" ? parseReference(reference) : reference;
  const name = formatReference(ref);
  const record = await store.getRef(name);
  // A digest names its manifest wherever it came from (busybox@sha256:… after `pull busybox`).
  const digest = record?.digest ?? (ref.digest && (await store.has(ref.digest)) ? ref.digest : undefined);
  if (!digest) throw new MmError("MM_NO_SUCH_IMAGE", name);
  const bytes = await store.readBytes({ digest }, MAX_MANIFEST_BYTES);
  const parsed = parseManifest(bytes, undefined, "MM_INTERNAL", `stored manifest ${shortDigest(digest)}`);
  if (parsed.kind !== "manifest")
    throw new MmError("MM_NO_SUCH_IMAGE", `${name} names an index; pull it for a platform`);
  const manifest = parsed.manifest;
  const config = parseImageConfig(
    await store.readBytes(manifest.config, MAX_CONFIG_BYTES),
    "MM_INTERNAL",
    `stored config ${shortDigest(manifest.config.digest)}`,
  );
  for (const layer of manifest.layers) {
    if (!(await store.has(layer)))
      throw new MmError("MM_NO_SUCH_IMAGE", `${name}: layer ${shortDigest(layer.digest)} is missing`);
  }
  return { reference: name, digest, manifest, config, configDigest: manifest.config.digest };
}
