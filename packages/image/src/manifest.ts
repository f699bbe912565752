// Reading manifests, indexes and image configs from untrusted bytes: size caps, shape checks
// and the closed list of media types mm runs. Pure (hashing aside), no I/O.

import { type ErrorCode, MmError } from "@mm/core";
import { isDigest } from "./digest.js";
import type { Descriptor, ImageConfigFile, Index, Manifest, Platform } from "./types.js";
import { MediaType } from "./types.js";

/** containerd's limit for a manifest or index; a registry sending more is misbehaving. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Image configs carry history; real ones are kilobytes. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

export const INDEX_MEDIA_TYPES: readonly string[] = [MediaType.OCI_INDEX, MediaType.DOCKER_LIST];
export const MANIFEST_MEDIA_TYPES: readonly string[] = [MediaType.OCI_MANIFEST, MediaType.DOCKER_MANIFEST];
export const CONFIG_MEDIA_TYPES: readonly string[] = [MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG];
/** What the registry client asks for, in order of preference. */
export const MANIFEST_ACCEPT = [...INDEX_MEDIA_TYPES, ...MANIFEST_MEDIA_TYPES].join(", ");

// Layer types mm pulls and unpacks. Foreign and non-distributable layers are left out on
// purpose: registries do not serve them (they point at third-party URLs).
const LAYER_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MediaType.OCI_LAYER_TAR,
  MediaType.OCI_LAYER_GZIP,
  MediaType.OCI_LAYER_ZSTD,
  MediaType.DOCKER_LAYER_GZIP,
  // Not in Docker's spec, but written by some tools for uncompressed layers.
  "application/vnd.docker.image.rootfs.diff.tar",
]);

export type ParsedManifest =
  | { readonly kind: "index"; readonly mediaType: string; readonly index: Index }
  | { readonly kind: "manifest"; readonly mediaType: string; readonly manifest: Manifest };

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

class Shape {
  constructor(
    private readonly code: ErrorCode,
    private readonly what: string,
  ) {}
  fail(why: string): never {
    throw new MmError(this.code, `${this.what}: ${why}`);
  }
  json(bytes: Uint8Array, max: number): unknown {
    if (bytes.byteLength > max) this.fail(`larger than ${max} bytes`);
    try {
      return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    } catch (e) {
      return this.fail(`not JSON (${(e as Error).message})`);
    }
  }
  optString(o: Json, key: string, at: string): string | undefined {
    const v = o[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "string") this.fail(`${at}.${key} is not a string`);
    return v;
  }
  stringList(v: unknown, at: string): readonly string[] | null | undefined {
    if (v === undefined || v === null) return v;
    if (!Array.isArray(v) || !v.every((s) => typeof s === "string")) this.fail(`${at} is not a list of strings`);
    return v as string[];
  }
  platform(v: unknown, at: string): Platform | undefined {
    if (v === undefined) return undefined;
    if (!isObject(v)) this.fail(`${at} is not an object`);
    const os = this.optString(v, "os", at);
    const architecture = this.optString(v, "architecture", at);
    if (os === undefined || architecture === undefined) this.fail(`${at} lacks os or architecture`);
    const variant = this.optString(v, "variant", at);
    return { os, architecture, ...(variant ? { variant } : {}) };
  }
  descriptor(v: unknown, at: string): Descriptor {
    if (!isObject(v)) this.fail(`${at} is not an object`);
    const mediaType = this.optString(v, "mediaType", at);
    if (mediaType === undefined) this.fail(`${at}.mediaType is missing`);
    if (!isDigest(v.digest)) this.fail(`${at}.digest is not a sha256 digest`);
    const size = v.size;
    if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
      this.fail(`${at}.size is not a non-negative integer`);
    }
    const platform = this.platform(v.platform, `${at}.platform`);
    const urls = this.stringList(v.urls, `${at}.urls`);
    let annotations: Record<string, string> | undefined;
    if (v.annotations !== undefined && v.annotations !== null) {
      if (!isObject(v.annotations) || !Object.values(v.annotations).every((s) => typeof s === "string")) {
        this.fail(`${at}.annotations is not a map of strings`);
      }
      annotations = v.annotations as Record<string, string>;
    }
    return {
      mediaType,
      digest: v.digest,
      size,
      ...(platform ? { platform } : {}),
      ...(urls ? { urls } : {}),
      ...(annotations ? { annotations } : {}),
    };
  }
}

/**
 * Reads a manifest or index. The media type comes from the Content-Type the registry sent
 * (or the layout's descriptor), falling back to the document's own `mediaType`; the two must
 * agree when both are there. Schema 1 and anything unknown is MM_UNSUPPORTED_MEDIA_TYPE.
 */
export function parseManifest(
  bytes: Uint8Array,
  declaredType?: string,
  code: ErrorCode = "MM_REGISTRY_PROTOCOL",
  what = "manifest",
): ParsedManifest {
  const s: Shape = new Shape(code, what);
  const doc = s.json(bytes, MAX_MANIFEST_BYTES);
  if (!isObject(doc)) s.fail("not a JSON object");
  const header = declaredType?.split(";")[0]?.trim().toLowerCase();
  const own = s.optString(doc, "mediaType", "manifest");
  const generic = header === undefined || header === "" || header === "application/json" || header === "text/plain";
  let mediaType = generic ? own : header;
  if (mediaType === undefined) {
    // OCI documents may omit mediaType; tell them apart by shape as containerd does.
    if (Array.isArray(doc.manifests)) mediaType = MediaType.OCI_INDEX;
    else if (doc.config !== undefined && Array.isArray(doc.layers)) mediaType = MediaType.OCI_MANIFEST;
    else if (doc.schemaVersion === 1) mediaType = "application/vnd.docker.distribution.manifest.v1+json";
    else s.fail("neither an index nor a manifest");
  }
  if (!INDEX_MEDIA_TYPES.includes(mediaType) && !MANIFEST_MEDIA_TYPES.includes(mediaType)) {
    throw new MmError("MM_UNSUPPORTED_MEDIA_TYPE", `${what} media type ${JSON.stringify(mediaType)}`);
  }
  if (own !== undefined && own !== mediaType) s.fail(`declared as ${mediaType} but says it is ${own}`);
  if (doc.schemaVersion !== 2) s.fail(`schemaVersion is ${JSON.stringify(doc.schemaVersion)}, not 2`);

  if (INDEX_MEDIA_TYPES.includes(mediaType)) {
    if (!Array.isArray(doc.manifests)) s.fail("an index without a manifests list");
    const manifests = doc.manifests.map((d, i) => s.descriptor(d, `manifests[${i}]`));
    return { kind: "index", mediaType, index: { schemaVersion: 2, mediaType, manifests } };
  }
  if (!Array.isArray(doc.layers)) s.fail("a manifest without a layers list");
  const config = s.descriptor(doc.config, "config");
  const layers = doc.layers.map((d, i) => s.descriptor(d, `layers[${i}]`));
  return { kind: "manifest", mediaType, manifest: { schemaVersion: 2, mediaType, config, layers } };
}

/** Refuses a manifest whose config or layers mm cannot run (helm charts, Windows foreign layers, …). */
export function checkRunnable(manifest: Manifest): void {
  if (!CONFIG_MEDIA_TYPES.includes(manifest.config.mediaType)) {
    throw new MmError(
      "MM_UNSUPPORTED_MEDIA_TYPE",
      `config media type ${JSON.stringify(manifest.config.mediaType)}: not a container image`,
    );
  }
  for (const layer of manifest.layers) {
    if (!LAYER_MEDIA_TYPES.has(layer.mediaType)) {
      throw new MmError("MM_UNSUPPORTED_MEDIA_TYPE", `layer media type ${JSON.stringify(layer.mediaType)}`);
    }
  }
}

/** Reads an image config, keeping the fields mm honours and checking their types. */
export function parseImageConfig(
  bytes: Uint8Array,
  code: ErrorCode = "MM_REGISTRY_PROTOCOL",
  what = "image config",
): ImageConfigFile {
  const s: Shape = new Shape(code, what);
  const doc = s.json(bytes, MAX_CONFIG_BYTES);
  if (!isObject(doc)) s.fail("not a JSON object");
  const architecture = s.optString(doc, "architecture", "config");
  const os = s.optString(doc, "os", "config");
  if (architecture === undefined || os === undefined) s.fail("lacks architecture or os");
  const variant = s.optString(doc, "variant", "config");
  const rootfs = doc.rootfs;
  if (!isObject(rootfs) || rootfs.type !== "layers" || !Array.isArray(rootfs.diff_ids)) {
    s.fail('rootfs is not {type: "layers", diff_ids: […]}');
  }
  if (!rootfs.diff_ids.every(isDigest)) s.fail("rootfs.diff_ids holds something that is not a sha256 digest");
  const diffIds = rootfs.diff_ids as string[];

  let config: ImageConfigFile["config"];
  if (doc.config !== undefined && doc.config !== null) {
    const c = doc.config;
    if (!isObject(c)) s.fail("config is not an object");
    const exposed = c.ExposedPorts;
    if (exposed !== undefined && exposed !== null && !isObject(exposed)) s.fail("config.ExposedPorts is not an object");
    const entries: [string, unknown][] = [
      ["Entrypoint", s.stringList(c.Entrypoint, "config.Entrypoint")],
      ["Cmd", s.stringList(c.Cmd, "config.Cmd")],
      ["Env", s.stringList(c.Env, "config.Env")],
      ["WorkingDir", s.optString(c, "WorkingDir", "config")],
      ["User", s.optString(c, "User", "config")],
      ["ExposedPorts", exposed],
      ["StopSignal", s.optString(c, "StopSignal", "config")],
    ];
    config = Object.fromEntries(entries.filter(([, v]) => v !== undefined)) as ImageConfigFile["config"];
  }
  return {
    architecture,
    os,
    ...(variant ? { variant } : {}),
    ...(config ? { config } : {}),
    rootfs: { type: "layers", diff_ids: diffIds },
  };
}
