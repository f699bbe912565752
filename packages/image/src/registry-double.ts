// For tests only (not exported from the package): a registry double on 127.0.0.1 that
// replays the exchanges Docker Hub has with a client — 401 + Bearer challenge, /token,
// manifests, 307 redirects of blobs to a storage host on another port, Range requests —
// and lets a test inject one-shot faults (429, 5xx, dropped connections, wrong content).

import { createHash, randomBytes } from "node:crypto";
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import type { AddressInfo } from "node:net";
import type { Descriptor, Platform } from "./types.js";
import { MediaType } from "./types.js";

export interface RecordedRequest {
  readonly server: "registry" | "storage";
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
}

export interface Fault {
  readonly match: (r: RecordedRequest) => boolean;
  /** Answers the request instead of the double; consumed after `times` uses (default 1). */
  readonly respond: (req: IncomingMessage, res: ServerResponse, double: RegistryDouble) => void;
  times?: number;
}

const digestOf = (b: Uint8Array) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** Docker Hub's error body. */
export function errorBody(code: string, message: string): string {
  return JSON.stringify({ errors: [{ code, message, detail: null }] });
}

export interface TestImage {
  readonly manifest: Descriptor;
  readonly manifestBytes: Buffer;
  readonly config: Descriptor;
  readonly configBytes: Buffer;
  readonly layers: readonly Descriptor[];
  readonly layerBytes: readonly Buffer[];
}

/** A small image: random layer bytes (the client never looks inside), a valid config and manifest. */
export function makeImage(
  options: {
    platform?: Platform;
    layerSizes?: readonly number[];
    /** Layer contents to use instead of random ones of `layerSizes`. */
    layerBytes?: readonly Buffer[];
    docker?: boolean;
    layerMediaType?: string;
    configMediaType?: string;
    seed?: string;
  } = {},
): TestImage {
  const platform = options.platform ?? { os: "linux", architecture: "amd64" };
  const layerBytes = options.layerBytes ?? (options.layerSizes ?? [300_000, 1_000]).map((n) => randomBytes(n));
  const layers = layerBytes.map((b) => ({
    mediaType: options.layerMediaType ?? (options.docker ? MediaType.DOCKER_LAYER_GZIP : MediaType.OCI_LAYER_GZIP),
    digest: digestOf(b),
    size: b.byteLength,
  }));
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: {
        Cmd: ["/bin/sh"],
        Env: ["PATH=/usr/bin:/bin"],
        ExposedPorts: { "80/tcp": {} },
        ...(options.seed ? { Labels: { seed: options.seed } } : {}),
      },
      rootfs: { type: "layers", diff_ids: layerBytes.map((b) => digestOf(Buffer.concat([b, Buffer.from("x")]))) },
      history: [],
    }),
  );
  const config = {
    mediaType: options.configMediaType ?? (options.docker ? MediaType.DOCKER_CONFIG : MediaType.OCI_CONFIG),
    digest: digestOf(configBytes),
    size: configBytes.byteLength,
  };
  const mediaType = options.docker ? MediaType.DOCKER_MANIFEST : MediaType.OCI_MANIFEST;
  const manifestBytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, config, layers }, null, 3));
  return {
    manifest: { mediaType, digest: digestOf(manifestBytes), size: manifestBytes.byteLength, platform },
    manifestBytes,
    config,
    configBytes,
    layers,
    layerBytes,
  };
}

export function makeIndex(images: readonly TestImage[], docker = false): { bytes: Buffer; descriptor: Descriptor } {
  const mediaType = docker ? MediaType.DOCKER_LIST : MediaType.OCI_INDEX;
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: [
        ...images.map((i) => i.manifest),
        // BuildKit adds attestation manifests as unknown/unknown; clients must skip them.
        {
          mediaType: MediaType.OCI_MANIFEST,
          digest: `sha256:${"0".repeat(64)}`,
          size: 566,
          platform: { architecture: "unknown", os: "unknown" },
        },
      ],
    }),
  );
  return { bytes, descriptor: { mediaType, digest: digestOf(bytes), size: bytes.byteLength } };
}

export class RegistryDouble {
  readonly requests: RecordedRequest[] = [];
  readonly faults: Fault[] = [];
  readonly manifests = new Map<string, { bytes: Buffer; mediaType: string }>();
  readonly blobs = new Map<string, Buffer>();
  /** "bearer" (Docker Hub), "basic" (htpasswd registries) or none. */
  auth: "bearer" | "basic" | "none" = "bearer";
  /** When set, the token endpoint (and Basic auth) wants one of these; anonymous tokens still pull if `anonymous`. */
  users = new Map<string, string>();
  anonymous = true;
  redirectBlobs = true;
  rangeSupport = true;
  tokenTtlSeconds = 300;
  service = "registry.docker.io";
  readonly #tokens = new Map<string, string>(); // token → scope
  #registry!: Server;
  #storage!: Server;

  static async start(): Promise<RegistryDouble> {
    const d = new RegistryDouble();
    d.#registry = createServer((req, res) => d.#handle("registry", req, res));
    d.#storage = createServer((req, res) => d.#handle("storage", req, res));
    await Promise.all([listen(d.#registry), listen(d.#storage)]);
    return d;
  }

  get host(): string {
    return `127.0.0.1:${(this.#registry.address() as AddressInfo).port}`;
  }

  /** Blob storage answers on "localhost" and another port: a different origin, as Docker Hub's CDN is. */
  get storageHost(): string {
    return `localhost:${(this.#storage.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const s of [this.#registry, this.#storage]) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }

  /** Publishes an image (and its blobs) under repo:tag, and by digest. */
  push(repo: string, tag: string, image: TestImage): void {
    this.pushManifest(repo, tag, image.manifestBytes, image.manifest.mediaType);
    this.blobs.set(image.config.digest, image.configBytes);
    for (const [i, l] of image.layers.entries()) this.blobs.set(l.digest, image.layerBytes[i]!);
  }

  pushManifest(repo: string, tag: string, bytes: Buffer, mediaType: string): void {
    this.manifests.set(`${repo}:${tag}`, { bytes, mediaType });
    this.manifests.set(`${repo}@${digestOf(bytes)}`, { bytes, mediaType });
  }

  pushIndex(repo: string, tag: string, images: readonly TestImage[], docker = false): Descriptor {
    for (const i of images) {
      this.blobs.set(i.config.digest, i.configBytes);
      for (const [n, l] of i.layers.entries()) this.blobs.set(l.digest, i.layerBytes[n]!);
      this.manifests.set(`${repo}@${i.manifest.digest}`, { bytes: i.manifestBytes, mediaType: i.manifest.mediaType });
    }
    const index = makeIndex(images, docker);
    this.pushManifest(repo, tag, index.bytes, index.descriptor.mediaType);
    return index.descriptor;
  }

  /** Adds a one-shot fault for requests whose path contains `pathPart` on `server`. */
  fault(server: RecordedRequest["server"], pathPart: string, respond: Fault["respond"], times = 1): void {
    this.faults.push({ match: (r) => r.server === server && r.path.includes(pathPart), respond, times });
  }

  requestsTo(server: RecordedRequest["server"], pathPart = ""): RecordedRequest[] {
    return this.requests.filter((r) => r.server === server && r.path.includes(pathPart));
  }

  #handle(server: RecordedRequest["server"], req: IncomingMessage, res: ServerResponse): void {
    const rec: RecordedRequest = { server, method: req.method ?? "GET", path: req.url ?? "/", headers: req.headers };
    this.requests.push(rec);
    const fault = this.faults.find((f) => f.match(rec));
    if (fault) {
      fault.times = (fault.times ?? 1) - 1;
      if (fault.times <= 0) this.faults.splice(this.faults.indexOf(fault), 1);
      fault.respond(req, res, this);
      return;
    }
    if (server === "storage") {
      this.#storageRoute(req, res);
      return;
    }
    this.#registryRoute(req, res);
  }

  #json(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
    res.writeHead(status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      "docker-distribution-api-version": "registry/2.0",
      ...headers,
    });
    res.end(body);
  }

  #challenge(scope?: string): Record<string, string> {
    if (this.auth === "basic") return { "www-authenticate": 'Basic realm="Registry Realm"' };
    const params = [`realm="http://${this.host}/token"`, `service="${this.service}"`];
    if (scope) params.push(`scope="${scope}"`);
    return { "www-authenticate": `Bearer ${params.join(",")}` };
  }

  #basicUser(req: IncomingMessage): string | undefined {
    const m = /^Basic (.+)$/.exec(req.headers.authorization ?? "");
    if (!m) return undefined;
    const [user, ...rest] = Buffer.from(m[1]!, "base64").toString().split(":");
    return user !== undefined && this.users.get(user) === rest.join(":") ? user : undefined;
  }

  /** Whether the request may pull `repo`; answers 401 itself when not. */
  #authorized(req: IncomingMessage, res: ServerResponse, repo: string | undefined): boolean {
    if (this.auth === "none") return true;
    const scope = repo ? `repository:${repo}:pull` : undefined;
    if (this.auth === "basic") {
      if (this.#basicUser(req)) return true;
    } else {
      const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? "");
      const granted = m ? this.#tokens.get(m[1]!) : undefined;
      if (granted !== undefined && (scope === undefined || granted.split(" ").includes(scope))) return true;
    }
    this.#json(res, 401, errorBody("UNAUTHORIZED", "authentication required"), this.#challenge(scope));
    return false;
  }

  #registryRoute(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", `http://${this.host}`);
    if (url.pathname === "/token") {
      const user = this.#basicUser(req);
      if (req.headers.authorization && !user) {
        this.#json(res, 401, JSON.stringify({ details: "incorrect username or password" }));
        return;
      }
      if (!user && !this.anonymous) {
        this.#json(res, 401, JSON.stringify({ details: "login required" }));
        return;
      }
      const token = randomBytes(12).toString("hex");
      this.#tokens.set(token, url.searchParams.getAll("scope").join(" "));
      this.#json(
        res,
        200,
        JSON.stringify({
          token,
          access_token: token,
          expires_in: this.tokenTtlSeconds,
          issued_at: new Date().toISOString(),
        }),
      );
      return;
    }
    if (url.pathname === "/v2/" || url.pathname === "/v2") {
      if (!this.#authorized(req, res, undefined)) return;
      this.#json(res, 200, "{}");
      return;
    }
    const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(url.pathname);
    if (!m) {
      this.#json(res, 404, errorBody("NOT_FOUND", "not found"));
      return;
    }
    const [, repo, kind, ref] = m as unknown as [string, string, string, string];
    if (!this.#authorized(req, res, repo)) return;
    if (kind === "manifests") {
      const key = ref.startsWith("sha256:") ? `${repo}@${ref}` : `${repo}:${ref}`;
      const found = this.manifests.get(key);
      if (!found) {
        this.#json(res, 404, errorBody("MANIFEST_UNKNOWN", `manifest unknown: ${ref}`));
        return;
      }
      res.writeHead(200, {
        "content-type": found.mediaType,
        "content-length": found.bytes.byteLength,
        "docker-content-digest": digestOf(found.bytes),
        etag: `"${digestOf(found.bytes)}"`,
        "docker-distribution-api-version": "registry/2.0",
      });
      res.end(found.bytes);
      return;
    }
    const blob = this.blobs.get(ref);
    if (!blob) {
      this.#json(res, 404, errorBody("BLOB_UNKNOWN", "blob unknown to registry"));
      return;
    }
    if (this.redirectBlobs) {
      res.writeHead(307, {
        location: `http://${this.storageHost}/registry-v2/docker/registry/v2/blobs/sha256/${ref.slice(7, 9)}/${ref.slice(7)}/data?verify=1700000000-abc`,
        "content-length": 0,
        "docker-distribution-api-version": "registry/2.0",
      });
      res.end();
      return;
    }
    this.serveBlob(req, res, blob);
  }

  #storageRoute(req: IncomingMessage, res: ServerResponse): void {
    const m = /\/blobs\/sha256\/[a-f0-9]{2}\/([a-f0-9]{64})\/data/.exec(req.url ?? "");
    const blob = m ? this.blobs.get(`sha256:${m[1]}`) : undefined;
    if (!blob) {
      res.writeHead(404, { "content-type": "application/xml" });
      res.end("<Error><Code>NoSuchKey</Code></Error>");
      return;
    }
    this.serveBlob(req, res, blob);
  }

  /** 200 with the whole blob, or 206 for `Range: bytes=N-` when range support is on. */
  serveBlob(req: IncomingMessage, res: ServerResponse, blob: Buffer): void {
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range && this.rangeSupport) {
      const start = Number(range[1]);
      if (start >= blob.byteLength) {
        res.writeHead(416, { "content-range": `bytes */${blob.byteLength}` });
        res.end();
        return;
      }
      res.writeHead(206, {
        "content-type": "application/octet-stream",
        "content-length": blob.byteLength - start,
        "content-range": `bytes ${start}-${blob.byteLength - 1}/${blob.byteLength}`,
        "accept-ranges": "bytes",
      });
      res.end(blob.subarray(start));
      return;
    }
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "content-length": blob.byteLength,
      "accept-ranges": "bytes",
    });
    res.end(blob);
  }
}

function listen(s: Server): Promise<void> {
  return new Promise((resolve) => s.listen(0, "127.0.0.1", resolve));
}

/**
 * A fault: send `bytes` of the blob (from the requested Range's start, answering 206, when
 * range support is on), with the full Content-Length, then drop the connection.
 */
export function dropAfter(bytes: number): Fault["respond"] {
  return (req, res, double) => {
    const m = /([a-f0-9]{64})/.exec(req.url ?? "");
    const blob = double.blobs.get(`sha256:${m?.[1]}`)!;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    const start = range && double.rangeSupport ? Number(range[1]) : 0;
    const headers: Record<string, string | number> = {
      "content-type": "application/octet-stream",
      "content-length": blob.byteLength - start,
    };
    if (start > 0) headers["content-range"] = `bytes ${start}-${blob.byteLength - 1}/${blob.byteLength}`;
    res.writeHead(start > 0 ? 206 : 200, headers);
    res.write(blob.subarray(start, start + bytes), () => setTimeout(() => res.socket?.destroy(), 10));
  };
}

/** A fault: a plain status with an optional Retry-After, as registries send under load. */
export function status(code: number, retryAfter?: string): Fault["respond"] {
  return (_req, res) => {
    const body = errorBody(code === 429 ? "TOOMANYREQUESTS" : "UNKNOWN", `HTTP ${code}`);
    res.writeHead(code, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(body),
      ...(retryAfter !== undefined ? { "retry-after": retryAfter } : {}),
    });
    res.end(body);
  };
}

/** A fault: answers with these bytes instead of the blob (Content-Length set to their size unless `length`). */
export function serveBytes(bytes: Buffer, length?: number | null): Fault["respond"] {
  return (_req, res) => {
    const headers: Record<string, string | number> = { "content-type": "application/octet-stream" };
    if (length !== null) headers["content-length"] = length ?? bytes.byteLength;
    res.writeHead(200, headers);
    res.end(bytes);
  };
}
