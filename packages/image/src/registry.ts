// The registry client: the OCI Distribution / Docker Registry v2 protocol over fetch, with
// token auth, redirects, retries, resumable and verified blob downloads. It stores nothing.

import { rm } from "node:fs/promises";
import { MmError } from "@mm/core";
import { type CredentialLookup, isLoopbackHost, RegistryAuth } from "./auth.js";
import { type BlobSink, FileBlobSink } from "./blob-sink.js";
import { isDigest, sha256Digest, shortDigest } from "./digest.js";
import {
  checkRunnable,
  INDEX_MEDIA_TYPES,
  MANIFEST_ACCEPT,
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  parseImageConfig,
  parseManifest,
} from "./manifest.js";
import { formatPlatform, normalizePlatform, platformRank, selectManifest } from "./platform.js";
import { formatReference, manifestSelector, normalizeRegistryName, registryApiHost } from "./reference.js";
import type { Descriptor, ImageConfigFile, ImageReference, Manifest, Platform, PullEvent } from "./types.js";

export interface RetryPolicy {
  /** Tries per request, the first included. */
  readonly attempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** A registry's Retry-After is honoured up to this. */
  readonly maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 250, maxDelayMs: 8_000, maxRetryAfterMs: 60_000 };
/** A connection that sends nothing for this long is treated as dropped. */
export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
const MAX_REDIRECTS = 5;
const MAX_ERROR_BODY_BYTES = 64 * 1024;

export interface RegistryClientOptions {
  /** Registries (host:port) that may be spoken to over plain HTTP; loopback addresses only. */
  readonly insecureRegistries?: readonly string[];
  readonly credentials?: CredentialLookup;
  readonly retry?: Partial<RetryPolicy>;
  readonly idleTimeoutMs?: number;
  readonly userAgent?: string;
  /** For tests: the clock, the jitter and the wait between retries. */
  readonly fetch?: typeof fetch;
  readonly now?: () => number;
  readonly random?: () => number;
  readonly sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export interface RequestOptions {
  readonly onEvent?: (event: PullEvent) => void;
  readonly signal?: AbortSignal;
}

export interface ResolveImageOptions extends RequestOptions {
  /**
   * Content already held locally (verified), by digest: resolve then skips fetching manifests
   * named by digest and the config. A tag is always asked of the registry.
   */
  readonly readCached?: (
    blob: { readonly digest: string; readonly size?: number },
    maxBytes: number,
  ) => Promise<Uint8Array | undefined>;
}

export interface FetchedManifest {
  readonly digest: string;
  readonly mediaType: string;
  readonly bytes: Uint8Array;
}

/** An image resolved for one platform: what `pull` stores before it fetches the layers. */
export interface ResolvedImage {
  readonly reference: ImageReference;
  /** The platform manifest's digest: the image's identity. */
  readonly digest: string;
  readonly manifest: Manifest;
  readonly manifestMediaType: string;
  readonly manifestBytes: Uint8Array;
  readonly config: ImageConfigFile;
  readonly configBytes: Uint8Array;
  readonly platform: Platform;
  /** The index the manifest was chosen from, when the reference named one. */
  readonly index?: FetchedManifest;
}

/** A failure worth another try: a dropped connection, 429, 5xx, a stalled transfer. */
class Transient extends Error {
  constructor(
    readonly reason: string,
    readonly retryAfterMs?: number,
  ) {
    super(reason);
  }
}

function defaultSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(done, ms);
    function done() {
      signal?.removeEventListener("abort", abort);
      resolve();
    }
    function abort() {
      clearTimeout(t);
      reject(signal?.reason);
    }
    signal?.addEventListener("abort", abort, { once: true });
  });
}

/** Retry-After is seconds or an HTTP date (RFC 9110 §10.2.3). */
export function parseRetryAfter(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** Exponential backoff with jitter: base·2^(n-1), capped, scaled into [½, 1). */
export function backoffDelay(attempt: number, policy: RetryPolicy, random: number): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(exp * (0.5 + random / 2));
}

function errorCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let depth = 0; cur && depth < 4; depth++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string") return code;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

function describe(e: unknown): string {
  const code = errorCode(e);
  const cause = (e as { cause?: { message?: string } })?.cause?.message;
  const msg = (e as Error)?.message ?? String(e);
  return [msg, cause, code].filter(Boolean).join(": ");
}

const TLS_FAILURES =
  /^(ERR_TLS_CERT_ALTNAME_INVALID|UNABLE_TO_VERIFY_LEAF_SIGNATURE|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|CERT_HAS_EXPIRED|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|ERR_SSL_.*)$/;

interface Target {
  readonly registry: string;
  readonly repository: string;
}

export class RegistryClient {
  readonly #insecure: ReadonlySet<string>;
  readonly #retry: RetryPolicy;
  readonly #idleMs: number;
  readonly #fetch: typeof fetch;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #sleep: (ms: number, signal?: AbortSignal) => Promise<void>;
  readonly #userAgent: string;
  readonly #auth: RegistryAuth;

  constructor(options: RegistryClientOptions = {}) {
    const insecure = new Set<string>();
    for (const r of options.insecureRegistries ?? []) {
      const name = normalizeRegistryName(r);
      if (!isLoopbackHost(registryApiHost(name))) {
        throw new MmError("MM_INSECURE_REGISTRY", `${r} is not a loopback address; plain HTTP is refused for it`);
      }
      insecure.add(name);
    }
    this.#insecure = insecure;
    this.#retry = { ...DEFAULT_RETRY, ...options.retry };
    this.#idleMs = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    this.#fetch = options.fetch ?? fetch;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#sleep = options.sleep ?? defaultSleep;
    this.#userAgent = options.userAgent ?? "mm/0.1";
    const credentials = options.credentials ?? (async () => undefined);
    this.#auth = new RegistryAuth({
      credentials,
      now: this.#now,
      checkRealm: (url, registry) => this.#checkUrl(url, registry, "token realm"),
      request: (url, headers) =>
        this.#retrying(`token ${url.host}`, { registry: url.host, repository: "" }, {}, (signal, bump) =>
          this.#tokenRequest(url, headers, signal, bump),
        ),
    });
  }

  #isInsecure(registry: string): boolean {
    return this.#insecure.has(normalizeRegistryName(registry));
  }

  #origin(registry: string): string {
    return `${this.#isInsecure(registry) ? "http" : "https"}://${registryApiHost(registry)}`;
  }

  /** Plain HTTP is allowed only to loopback, and only when the registry was opted in. */
  #checkUrl(url: URL, registry: string, what: string): void {
    if (url.protocol === "https:") return;
    if (url.protocol === "http:") {
      if (this.#isInsecure(registry) && isLoopbackHost(url.host)) return;
      throw new MmError("MM_INSECURE_REGISTRY", `${registry}'s ${what} is plain HTTP (${url.origin})`);
    }
    throw new MmError("MM_REGISTRY_PROTOCOL", `${registry}'s ${what} has an unsupported scheme: ${url.protocol}`);
  }

  /**
   * Resolves a reference for one platform: the manifest (through an index if need be), checked
   * against its digest, and its config. Nothing is stored.
   */
  async resolve(ref: ImageReference, platform: Platform, options: ResolveImageOptions = {}): Promise<ResolvedImage> {
    const name = formatReference(ref);
    const byDigest = async (d: { digest: string; size?: number; mediaType?: string }): Promise<FetchedManifest> => {
      const cached = await options.readCached?.(d, MAX_MANIFEST_BYTES);
      // A cached document's type comes from its descriptor, or (pinned at the top) from itself.
      if (cached) return { digest: d.digest, mediaType: d.mediaType ?? "", bytes: cached };
      return this.fetchManifest(ref, d.digest, options);
    };
    const top = ref.digest
      ? await byDigest({ digest: ref.digest })
      : await this.fetchManifest(ref, manifestSelector(ref), options);
    let parsed = parseManifest(top.bytes, top.mediaType, "MM_REGISTRY_PROTOCOL", `manifest of ${name}`);
    let chosen = top;
    let index: FetchedManifest | undefined;
    let chosenPlatform: Platform | undefined;
    if (parsed.kind === "index") {
      index = top;
      const d = selectManifest(parsed.index, platform, name);
      if (INDEX_MEDIA_TYPES.includes(d.mediaType)) {
        throw new MmError("MM_UNSUPPORTED_MEDIA_TYPE", `${name}: an index inside an index (${d.digest})`);
      }
      chosen = await byDigest(d);
      if (chosen.bytes.byteLength !== d.size) {
        throw new MmError(
          "MM_DIGEST_MISMATCH",
          `manifest ${d.digest}: ${chosen.bytes.byteLength} bytes, index says ${d.size}`,
        );
      }
      parsed = parseManifest(
        chosen.bytes,
        chosen.mediaType,
        "MM_REGISTRY_PROTOCOL",
        `manifest ${shortDigest(d.digest)}`,
      );
      if (parsed.kind !== "manifest") {
        throw new MmError("MM_UNSUPPORTED_MEDIA_TYPE", `${name}: an index inside an index (${d.digest})`);
      }
      chosenPlatform = normalizePlatform(d.platform!);
    }
    const manifest = parsed.manifest;
    checkRunnable(manifest);
    const configBytes =
      (await options.readCached?.(manifest.config, MAX_CONFIG_BYTES)) ??
      (await this.fetchBlobBytes(ref, manifest.config, MAX_CONFIG_BYTES, options));
    const config = parseImageConfig(configBytes, "MM_REGISTRY_PROTOCOL", `config of ${name}`);
    if (config.rootfs.diff_ids.length !== manifest.layers.length) {
      throw new MmError(
        "MM_REGISTRY_PROTOCOL",
        `${name}: ${manifest.layers.length} layers but ${config.rootfs.diff_ids.length} diff_ids in the config`,
      );
    }
    const imagePlatform = normalizePlatform({
      os: config.os,
      architecture: config.architecture,
      ...(config.variant ? { variant: config.variant } : {}),
    });
    if (!chosenPlatform && platformRank(platform, imagePlatform) === undefined) {
      throw new MmError(
        "MM_NO_MATCHING_PLATFORM",
        `${name} is ${formatPlatform(imagePlatform)} only; wanted ${formatPlatform(platform)}`,
      );
    }
    return {
      reference: ref,
      digest: chosen.digest,
      manifest,
      manifestMediaType: parsed.mediaType,
      manifestBytes: chosen.bytes,
      config,
      configBytes,
      platform: chosenPlatform ?? imagePlatform,
      ...(index ? { index } : {}),
    };
  }

  /** GET /v2/<name>/manifests/<tag|digest>: the exact bytes, their digest (checked when pinned). */
  async fetchManifest(ref: ImageReference, selector: string, options: RequestOptions = {}): Promise<FetchedManifest> {
    const target = { registry: ref.registry, repository: ref.repository };
    const what = `manifest ${ref.repository}:${isDigest(selector) ? shortDigest(selector) : selector}`;
    return this.#retrying(what, target, options, async (signal, bump) => {
      const res = await this.#send(target, `manifests/${selector}`, { accept: MANIFEST_ACCEPT }, signal);
      await this.#expectOk(res, target, what);
      const bytes = await readCapped(res, MAX_MANIFEST_BYTES, what, bump);
      const digest = sha256Digest(bytes);
      if (isDigest(selector) && digest !== selector) {
        throw new MmError("MM_DIGEST_MISMATCH", `${what}: the registry sent content with digest ${digest}`);
      }
      const header = res.headers.get("docker-content-digest");
      if (isDigest(header) && header !== digest) {
        throw new MmError(
          "MM_DIGEST_MISMATCH",
          `${what}: Docker-Content-Digest ${header} but the content is ${digest}`,
        );
      }
      return { digest, mediaType: res.headers.get("content-type") ?? "", bytes };
    });
  }

  /** A small blob (a config) into memory, verified against its descriptor. */
  async fetchBlobBytes(
    ref: ImageReference,
    descriptor: Descriptor,
    maxBytes: number,
    options: RequestOptions = {},
  ): Promise<Uint8Array> {
    const target = { registry: ref.registry, repository: ref.repository };
    const what = `blob ${shortDigest(descriptor.digest)}`;
    if (descriptor.size > maxBytes) {
      throw new MmError("MM_REGISTRY_PROTOCOL", `${what} is ${descriptor.size} bytes; the limit is ${maxBytes}`);
    }
    return this.#retrying(what, target, options, async (signal, bump) => {
      const res = await this.#send(target, `blobs/${descriptor.digest}`, { "accept-encoding": "identity" }, signal);
      await this.#expectOk(res, target, what);
      const bytes = await readCapped(res, descriptor.size, what, bump, "MM_DIGEST_MISMATCH");
      verify(bytes.byteLength, sha256Digest(bytes), descriptor, what);
      return bytes;
    });
  }

  /**
   * Streams a blob into `destination` (a path or a sink), verifying size and sha256 as it
   * goes. A dropped connection resumes with a Range request when the server allows it.
   * A path destination that already holds a prefix is resumed; on MM_DIGEST_MISMATCH it is removed.
   */
  async fetchBlob(
    ref: ImageReference,
    descriptor: Descriptor,
    destination: string | BlobSink,
    onProgress?: (bytes: number, size: number) => void,
    options: RequestOptions = {},
  ): Promise<void> {
    if (typeof destination !== "string") return this.#fetchBlobInto(ref, descriptor, destination, onProgress, options);
    const sink = await FileBlobSink.open(destination, { resume: true, maxBytes: descriptor.size });
    try {
      await this.#fetchBlobInto(ref, descriptor, sink, onProgress, options);
      await sink.sync();
    } catch (e) {
      await sink.close();
      if (e instanceof MmError && e.code === "MM_DIGEST_MISMATCH") await rm(destination, { force: true });
      throw e;
    }
    await sink.close();
  }

  async #fetchBlobInto(
    ref: ImageReference,
    descriptor: Descriptor,
    sink: BlobSink,
    onProgress: ((bytes: number, size: number) => void) | undefined,
    options: RequestOptions,
  ): Promise<void> {
    const target = { registry: ref.registry, repository: ref.repository };
    const what = `blob ${shortDigest(descriptor.digest)}`;
    const size = descriptor.size;
    if (sink.offset > size) await sink.restart();
    let failures = 0;
    let rangeRefused = false;
    let startedOver = false;
    let usedPrefix = false; // bytes from an earlier connection (or an earlier run) are part of the blob
    for (;;) {
      if (sink.offset === size) {
        if (sink.digest() === descriptor.digest) {
          onProgress?.(size, size);
          return;
        }
        // A complete leftover that does not verify (or bytes that a server's Range answer
        // spliced wrongly): fetch the whole blob once more, then give up.
        if (size === 0 || startedOver) verify(size, sink.digest(), descriptor, what);
        await sink.restart();
        startedOver = true;
        rangeRefused = true;
      }
      const start = sink.offset;
      let restartOnData = false;
      const ac = new AbortController();
      const signal = options.signal ? AbortSignal.any([options.signal, ac.signal]) : ac.signal;
      let timer = setTimeout(() => ac.abort(new Transient(`no data for ${this.#idleMs} ms`)), this.#idleMs);
      const bump = () => {
        clearTimeout(timer);
        timer = setTimeout(() => ac.abort(new Transient(`no data for ${this.#idleMs} ms`)), this.#idleMs);
      };
      try {
        const headers: Record<string, string> = { "accept-encoding": "identity" };
        if (start > 0 && !rangeRefused) headers.range = `bytes=${start}-`;
        const res = await this.#send(target, `blobs/${descriptor.digest}`, headers, signal);
        bump();
        if (res.status === 206 && headers.range) {
          const got = parseContentRange(res.headers.get("content-range"));
          if (!got || got.start !== start || (got.total !== undefined && got.total !== size)) {
            await res.body?.cancel();
            rangeRefused = true;
            await sink.restart();
            throw new Transient(`unusable Content-Range ${JSON.stringify(res.headers.get("content-range"))}`);
          }
          usedPrefix = true;
        } else if (res.status === 416 && headers.range) {
          await res.body?.cancel();
          rangeRefused = true;
          await sink.restart();
          throw new Transient("range not satisfiable");
        } else {
          await this.#expectOk(res, target, what);
          // 200: the server sends it all again. The prefix is dropped only once new bytes
          // arrive, so a connection that fails at once leaves it for the next Range request.
          restartOnData = sink.offset > 0;
        }
        const length = res.headers.get("content-length");
        const base = restartOnData ? 0 : sink.offset;
        if (length !== null && /^\d+$/.test(length) && base + Number(length) !== size) {
          await res.body?.cancel();
          throw new MmError(
            "MM_DIGEST_MISMATCH",
            `${what}: the registry sends ${base + Number(length)} bytes, the manifest says ${size}`,
          );
        }
        if (!res.body) throw new MmError("MM_REGISTRY_PROTOCOL", `${what}: a response without a body`);
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          bump();
          if (restartOnData) {
            await sink.restart();
            restartOnData = false;
          }
          if (sink.offset + chunk.byteLength > size) {
            throw new MmError("MM_DIGEST_MISMATCH", `${what}: more than the ${size} bytes the manifest says`);
          }
          await sink.write(chunk);
          onProgress?.(sink.offset, size);
        }
        if (sink.offset < size) throw new Transient(`connection closed after ${sink.offset} of ${size} bytes`);
        if (sink.digest() !== descriptor.digest && usedPrefix && !startedOver) {
          // The kept prefix may be what was wrong (a torn partial file after a crash): once, from zero.
          await sink.restart();
          startedOver = true;
          rangeRefused = true;
          usedPrefix = false;
          continue;
        }
        verify(sink.offset, sink.digest(), descriptor, what);
        return;
      } catch (e) {
        if (options.signal?.aborted) throw options.signal.reason;
        const t =
          ac.signal.aborted && ac.signal.reason instanceof Transient ? ac.signal.reason : this.#classify(e, target);
        if (sink.offset > start) failures = 0; // progress was made: a fresh connection gets full attempts
        failures++;
        if (failures >= this.#retry.attempts) {
          throw new MmError("MM_REGISTRY_UNAVAILABLE", `${what}: gave up after ${failures} attempts: ${t.reason}`, {
            cause: e,
          });
        }
        options.onEvent?.({ type: "retry", what, attempt: failures, reason: t.reason });
        await this.#sleep(this.#delay(failures, t), options.signal);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  /** Checks that the registry answers and accepts our credentials (for `mm login`). */
  async checkLogin(registry: string, options: RequestOptions = {}): Promise<void> {
    const target = { registry: normalizeRegistryName(registry), repository: "" };
    await this.#retrying(`ping ${registry}`, target, options, async (signal) => {
      const res = await this.#send(target, "", {}, signal, "/v2/");
      await this.#expectOk(res, target, `ping ${registry}`);
      await res.body?.cancel();
    });
  }

  #delay(attempt: number, t: Transient): number {
    if (t.retryAfterMs !== undefined) return Math.min(t.retryAfterMs, this.#retry.maxRetryAfterMs);
    return backoffDelay(attempt, this.#retry, this.#random());
  }

  /** Maps a thrown error to a permanent MmError (rethrown) or a Transient reason. */
  #classify(e: unknown, target: Target): Transient {
    if (e instanceof MmError) throw e;
    if (e instanceof Transient) return e;
    const code = errorCode(e) ?? "";
    const text = describe(e);
    if (code === "ERR_SSL_WRONG_VERSION_NUMBER" || /wrong version number/i.test(text)) {
      if (isLoopbackHost(registryApiHost(target.registry))) {
        throw new MmError("MM_INSECURE_REGISTRY", `${target.registry} speaks plain HTTP; pass --insecure-registry`, {
          cause: e,
        });
      }
      throw new MmError("MM_REGISTRY_UNAVAILABLE", `${target.registry}: TLS failed: ${text}`, { cause: e });
    }
    if (TLS_FAILURES.test(code)) {
      throw new MmError("MM_REGISTRY_UNAVAILABLE", `${target.registry}: TLS certificate problem: ${text}`, {
        cause: e,
      });
    }
    if (code === "ENOTFOUND") {
      throw new MmError("MM_REGISTRY_UNAVAILABLE", `${target.registry}: no such host`, { cause: e });
    }
    if (code === "ENOSPC" || code === "EDQUOT" || code === "EACCES" || code === "EROFS") throw e;
    return new Transient(text);
  }

  /** Runs one request with retries on transient failures; `bump` resets the idle timer. */
  async #retrying<T>(
    what: string,
    target: Target,
    options: RequestOptions,
    attempt: (signal: AbortSignal, bump: () => void) => Promise<T>,
  ): Promise<T> {
    for (let n = 1; ; n++) {
      const ac = new AbortController();
      const signal = options.signal ? AbortSignal.any([options.signal, ac.signal]) : ac.signal;
      const stall = () => ac.abort(new Transient(`no data for ${this.#idleMs} ms`));
      let timer = setTimeout(stall, this.#idleMs);
      const bump = () => {
        clearTimeout(timer);
        timer = setTimeout(stall, this.#idleMs);
      };
      try {
        return await attempt(signal, bump);
      } catch (e) {
        if (options.signal?.aborted) throw options.signal.reason;
        const t =
          ac.signal.aborted && ac.signal.reason instanceof Transient ? ac.signal.reason : this.#classify(e, target);
        if (n >= this.#retry.attempts) {
          throw new MmError("MM_REGISTRY_UNAVAILABLE", `${what}: gave up after ${n} attempts: ${t.reason}`, {
            cause: e,
          });
        }
        options.onEvent?.({ type: "retry", what, attempt: n, reason: t.reason });
        await this.#sleep(this.#delay(n, t), options.signal);
      } finally {
        clearTimeout(timer);
      }
    }
  }

  async #tokenRequest(url: URL, headers: Readonly<Record<string, string>>, signal: AbortSignal, bump: () => void) {
    const res = await this.#fetch(url, {
      headers: { ...headers, "user-agent": this.#userAgent },
      redirect: "error",
      signal,
    });
    bump();
    if (res.status === 429 || res.status >= 500) {
      await res.body?.cancel();
      throw new Transient(`HTTP ${res.status}`, parseRetryAfter(res.headers.get("retry-after"), this.#now()));
    }
    return res;
  }

  /**
   * One request to the registry: authorises it (answering a 401 once with the token dance)
   * and follows redirects by hand so that credentials never reach another host.
   */
  async #send(
    target: Target,
    path: string,
    headers: Readonly<Record<string, string>>,
    signal: AbortSignal,
    fullPath?: string,
  ): Promise<Response> {
    const origin = this.#origin(target.registry);
    const first = new URL(fullPath ?? `/v2/${target.repository}/${path}`, origin);
    let authorization = await this.#auth.authorization(target.registry, target.repository);
    for (let authTries = 0; ; authTries++) {
      const { res, url } = await this.#follow(first, origin, target, headers, authorization, signal);
      if (res.status !== 401) return res;
      // A 401 from blob storage, or a second one after the token dance, is a refusal.
      if (authTries >= 1 || url.origin !== origin) {
        const detail = await errorDetail(res);
        throw new MmError(
          "MM_REGISTRY_AUTH",
          target.repository
            ? `pull access denied for ${target.registry}/${target.repository}: the repository does not exist or needs \`mm login ${target.registry}\`${detail}`
            : `${target.registry} refused the credentials${detail}`,
        );
      }
      const challenge = res.headers.get("www-authenticate");
      await res.body?.cancel();
      authorization = await this.#auth.challenged(target.registry, target.repository, challenge, authorization);
    }
  }

  async #follow(
    first: URL,
    origin: string,
    target: Target,
    headers: Readonly<Record<string, string>>,
    authorization: string | undefined,
    signal: AbortSignal,
  ): Promise<{ res: Response; url: URL }> {
    let url = first;
    for (let hop = 0; ; hop++) {
      const h: Record<string, string> = { ...headers, "user-agent": this.#userAgent };
      // Credentials go to the registry's own origin only, never to blob storage it redirects to.
      if (authorization && url.origin === origin) h.authorization = authorization;
      const res = await this.#fetch(url, { headers: h, redirect: "manual", signal });
      if (![301, 302, 303, 307, 308].includes(res.status)) return { res, url };
      await res.body?.cancel();
      const location = res.headers.get("location");
      if (!location)
        throw new MmError("MM_REGISTRY_PROTOCOL", `HTTP ${res.status} without a Location from ${url.host}`);
      if (hop >= MAX_REDIRECTS) throw new MmError("MM_REGISTRY_PROTOCOL", `more than ${MAX_REDIRECTS} redirects`);
      url = new URL(location, url);
      this.#checkUrl(url, target.registry, "redirect");
    }
  }

  async #expectOk(res: Response, target: Target, what: string): Promise<void> {
    if (res.status === 200) return;
    const name = `${target.registry}/${target.repository}`;
    if (res.status === 429 || res.status === 408 || (res.status >= 500 && res.status !== 501 && res.status !== 505)) {
      const retryAfter = parseRetryAfter(res.headers.get("retry-after"), this.#now());
      await res.body?.cancel();
      throw new Transient(`HTTP ${res.status}`, retryAfter);
    }
    const detail = await errorDetail(res);
    if (res.status === 404) throw new MmError("MM_IMAGE_NOT_FOUND", `${name}: ${what} not found${detail}`);
    if (res.status === 401 || res.status === 403) {
      throw new MmError("MM_REGISTRY_AUTH", `${name}: ${what}: HTTP ${res.status}${detail}`);
    }
    throw new MmError("MM_REGISTRY_PROTOCOL", `${name}: ${what}: unexpected HTTP ${res.status}${detail}`);
  }
}

function verify(size: number, digest: string, descriptor: Descriptor, what: string): void {
  if (size !== descriptor.size) {
    throw new MmError("MM_DIGEST_MISMATCH", `${what}: ${size} bytes, the manifest says ${descriptor.size}`);
  }
  if (digest !== descriptor.digest) {
    throw new MmError("MM_DIGEST_MISMATCH", `${what}: the content's digest is ${digest}`);
  }
}

/** "bytes 100-199/200" → {start: 100, total: 200}; "bytes 100-199/*" leaves total out. */
export function parseContentRange(value: string | null): { start: number; end: number; total?: number } | undefined {
  const m = value ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim()) : null;
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), ...(m[3] !== "*" ? { total: Number(m[3]) } : {}) };
}

/** Reads a body of at most `max` bytes; more is refused as soon as it arrives. */
async function readCapped(
  res: Response,
  max: number,
  what: string,
  bump: () => void,
  code: "MM_REGISTRY_PROTOCOL" | "MM_DIGEST_MISMATCH" = "MM_REGISTRY_PROTOCOL",
): Promise<Uint8Array> {
  const length = res.headers.get("content-length");
  if (length !== null && Number(length) > max) {
    await res.body?.cancel();
    throw new MmError(code, `${what}: ${length} bytes, more than the ${max} allowed`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  if (res.body) {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      bump();
      total += chunk.byteLength;
      if (total > max) throw new MmError(code, `${what}: more than the ${max} bytes allowed`);
      chunks.push(chunk);
    }
  }
  return Buffer.concat(chunks, total);
}

/** The registry's error body ({"errors":[{code,message}]}) as " (CODE: message)", best effort. */
async function errorDetail(res: Response): Promise<string> {
  try {
    const bytes = await readCapped(res, MAX_ERROR_BODY_BYTES, "error body", () => {});
    const doc = JSON.parse(Buffer.from(bytes).toString("utf8")) as { errors?: { code?: string; message?: string }[] };
    const parts = (doc.errors ?? []).slice(0, 3).map((e) => [e.code, e.message].filter(Boolean).join(": "));
    return parts.length ? ` (${parts.join("; ")})` : "";
  } catch {
    return "";
  }
}
