import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, beforeEach, test } from "node:test";
import { isMmError } from "@mm/core";
import { sha256Digest } from "./digest.js";
import { parseReference } from "./reference.js";
import {
  backoffDelay,
  DEFAULT_RETRY,
  parseContentRange,
  parseRetryAfter,
  RegistryClient,
  type RegistryClientOptions,
} from "./registry.js";
import {
  dropAfter,
  errorBody,
  makeImage,
  RegistryDouble,
  serveBytes,
  status,
  type TestImage,
} from "./registry-double.js";
import type { Platform, PullEvent } from "./types.js";
import { MediaType } from "./types.js";

const amd64: Platform = { os: "linux", architecture: "amd64" };
const arm64: Platform = { os: "linux", architecture: "arm64", variant: "v8" };

let d: RegistryDouble;
let dir: string;
let delays: number[];
let events: PullEvent[];
let amdImage: TestImage;
let armImage: TestImage;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "mm-registry-"));
});
after(() => rmSync(dir, { recursive: true, force: true }));

beforeEach(async () => {
  await d?.close();
  d = await RegistryDouble.start();
  delays = [];
  events = [];
  amdImage = makeImage({ platform: amd64 });
  armImage = makeImage({ platform: arm64 });
  d.pushIndex("library/busybox", "latest", [amdImage, armImage]);
});
after(() => d?.close());

function client(extra: Partial<RegistryClientOptions> = {}): RegistryClient {
  return new RegistryClient({
    insecureRegistries: [d.host],
    sleep: async (ms) => {
      delays.push(ms);
    },
    retry: { attempts: 4 },
    idleTimeoutMs: 2_000,
    ...extra,
  });
}
const ref = (name = "library/busybox:latest") => parseReference(`${d.host}/${name}`);
const opts = () => ({ onEvent: (e: PullEvent) => events.push(e) });
let n = 0;
const dest = () => join(dir, `blob-${n++}`);

test("anonymous pull, Docker Hub style: 401 → token → index → platform manifest → config", async () => {
  const r = await client().resolve(ref(), amd64, opts());
  assert.equal(r.digest, amdImage.manifest.digest);
  assert.deepEqual(r.platform, amd64);
  assert.equal(r.manifest.layers.length, 2);
  assert.equal(r.config.architecture, "amd64");
  assert.deepEqual(r.config.config?.Cmd, ["/bin/sh"]);
  assert.equal(r.index?.digest, sha256Digest(d.manifests.get("library/busybox:latest")!.bytes));
  assert.equal(sha256Digest(r.manifestBytes), r.digest);

  const seen = d.requests.map(
    (q) => `${q.server} ${q.path.replace(/\?.*/, "")} ${q.headers.authorization ? "auth" : "-"}`,
  );
  assert.deepEqual(seen, [
    "registry /v2/library/busybox/manifests/latest -",
    "registry /token -",
    "registry /v2/library/busybox/manifests/latest auth",
    `registry /v2/library/busybox/manifests/${amdImage.manifest.digest} auth`,
    `registry /v2/library/busybox/blobs/${amdImage.config.digest} auth`,
    `storage /registry-v2/docker/registry/v2/blobs/sha256/${amdImage.config.digest.slice(7, 9)}/${amdImage.config.digest.slice(7)}/data -`,
  ]);
  const token = new URL(`http://x${d.requestsTo("registry", "/token")[0]!.path}`);
  assert.equal(token.searchParams.get("service"), "registry.docker.io");
  assert.equal(token.searchParams.get("scope"), "repository:library/busybox:pull");
  const manifestReq = d.requests[0]!;
  for (const t of [MediaType.OCI_INDEX, MediaType.OCI_MANIFEST, MediaType.DOCKER_LIST, MediaType.DOCKER_MANIFEST]) {
    assert.ok(manifestReq.headers.accept?.includes(t), `Accept names ${t}`);
  }
});

test("blobs follow the redirect to storage without the Authorization header, and verify", async () => {
  const c = client();
  const r = await c.resolve(ref(), amd64);
  const path = dest();
  const progress: number[] = [];
  await c.fetchBlob(ref(), r.manifest.layers[0]!, path, (b) => progress.push(b));
  assert.ok(readFileSync(path).equals(amdImage.layerBytes[0]!));
  assert.equal(progress.at(-1), amdImage.layers[0]!.size);
  const storage = d.requestsTo("storage");
  assert.ok(storage.length >= 2);
  for (const q of storage) assert.equal(q.headers.authorization, undefined, "no credentials to blob storage");
  for (const q of d.requestsTo("registry", "/blobs/")) assert.match(q.headers.authorization ?? "", /^Bearer /);
  assert.equal(d.requestsTo("registry", "/token").length, 1, "one token serves the whole pull");
});

test("tokens are cached per scope until they expire", async () => {
  let now = 1_000_000;
  d.tokenTtlSeconds = 60;
  const c = client({ now: () => now });
  await c.fetchManifest(ref(), "latest");
  await c.fetchManifest(ref(), "latest");
  assert.equal(d.requestsTo("registry", "/token").length, 1);
  now += 56_000; // within the 5 s slack before expiry
  await c.fetchManifest(ref(), "latest");
  assert.equal(d.requestsTo("registry", "/token").length, 2);
  d.pushIndex("library/other", "latest", [amdImage]);
  await c.fetchManifest(ref("library/other:latest"), "latest");
  assert.equal(d.requestsTo("registry", "/token").length, 3, "another repository is another scope");
});

test("credentials go to the token endpoint as Basic auth; bad or missing ones are MM_REGISTRY_AUTH", async () => {
  d.users.set("alice", "s3cret:x");
  d.anonymous = false;
  const good = client({ credentials: async () => ({ username: "alice", password: "s3cret:x" }) });
  await good.resolve(ref(), amd64);
  const tokenReq = d.requestsTo("registry", "/token")[0]!;
  assert.equal(tokenReq.headers.authorization, `Basic ${Buffer.from("alice:s3cret:x").toString("base64")}`);

  const wrong = client({ credentials: async () => ({ username: "alice", password: "nope" }) });
  await assert.rejects(
    wrong.resolve(ref(), amd64),
    (e) => isMmError(e, "MM_REGISTRY_AUTH") && /refused the credentials/.test(e.message),
  );
  await assert.rejects(
    client().resolve(ref(), amd64),
    (e) => isMmError(e, "MM_REGISTRY_AUTH") && /mm login/.test(e.message),
  );
});

test("a repository the token does not cover (Docker Hub's answer for a missing one) is MM_REGISTRY_AUTH", async () => {
  d.fault(
    "registry",
    "/v2/library/private/",
    (_q, res) => {
      res.writeHead(401, {
        "content-type": "application/json",
        "www-authenticate": `Bearer realm="http://${d.host}/token",service="registry.docker.io",scope="repository:library/private:pull",error="insufficient_scope"`,
      });
      res.end(errorBody("UNAUTHORIZED", "authentication required"));
    },
    2,
  );
  await assert.rejects(
    client().resolve(ref("library/private:latest"), amd64),
    (e) =>
      isMmError(e, "MM_REGISTRY_AUTH") && /pull access denied for .*library\/private.*UNAUTHORIZED/.test(e.message),
  );
});

test("HTTP Basic registries (htpasswd) and checkLogin", async () => {
  d.auth = "basic";
  d.redirectBlobs = false;
  d.users.set("bob", "pw");
  const c = client({ credentials: async () => ({ username: "bob", password: "pw" }) });
  const r = await c.resolve(ref(), amd64);
  await c.fetchBlob(ref(), r.manifest.layers[1]!, dest());
  await c.checkLogin(d.host);
  assert.equal(d.requestsTo("registry", "/token").length, 0);
  await assert.rejects(client().checkLogin(d.host), (e) => isMmError(e, "MM_REGISTRY_AUTH"));
  await assert.rejects(
    client({ credentials: async () => ({ username: "bob", password: "bad" }) }).checkLogin(d.host),
    (e) => isMmError(e, "MM_REGISTRY_AUTH"),
  );
});

test("429 honours Retry-After and emits a retry event", async () => {
  d.fault("registry", "/manifests/latest", status(429, "1"));
  const r = await client().resolve(ref(), amd64, opts());
  assert.equal(r.digest, amdImage.manifest.digest);
  assert.deepEqual(delays, [1000]);
  assert.deepEqual(events, [
    { type: "retry", what: "manifest library/busybox:latest", attempt: 1, reason: "HTTP 429" },
  ]);
});

test("500 then success: backoff with jitter; repeated 503s give up with MM_REGISTRY_UNAVAILABLE", async () => {
  d.fault("storage", "/data", status(500));
  const c = client({ random: () => 0.5 });
  const r = await c.resolve(ref(), amd64, opts());
  assert.equal(r.config.os, "linux");
  assert.deepEqual(delays, [Math.round(DEFAULT_RETRY.baseDelayMs * 0.75)]);
  assert.equal(events[0]?.type, "retry");

  d.fault("registry", "/manifests/", status(503), 10);
  await assert.rejects(
    c.fetchManifest(ref(), "latest"),
    (e) => isMmError(e, "MM_REGISTRY_UNAVAILABLE") && /gave up after 4 attempts: HTTP 503/.test(e.message),
  );
});

test("a connection dropped mid-blob resumes with Range when the server answers 206", async () => {
  const c = client();
  const layer = amdImage.layers[0]!;
  d.fault("storage", layer.digest.slice(7), dropAfter(100_000));
  const path = dest();
  await c.fetchBlob(ref(), layer, path, undefined, opts());
  assert.ok(readFileSync(path).equals(amdImage.layerBytes[0]!));
  const tries = d.requestsTo("storage", layer.digest.slice(7));
  assert.equal(tries.length, 2);
  assert.equal(tries[0]!.headers.range, undefined);
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(tries[1]!.headers.range ?? "")?.[1]);
  assert.ok(resumedAt >= 65_536 && resumedAt <= 100_000, `resumed at ${resumedAt}`);
  assert.equal(events.filter((e) => e.type === "retry").length, 1);
});

test("without Range support the download restarts from zero", async () => {
  d.rangeSupport = false;
  const layer = amdImage.layers[0]!;
  d.fault("storage", layer.digest.slice(7), dropAfter(100_000));
  const path = dest();
  await client().fetchBlob(ref(), layer, path);
  assert.ok(readFileSync(path).equals(amdImage.layerBytes[0]!));
  const tries = d.requestsTo("storage", layer.digest.slice(7));
  assert.equal(tries.length, 2);
  assert.match(tries[1]!.headers.range ?? "", /^bytes=\d+-$/, "it asked");
});

test("a partial file left by an earlier run is resumed, not fetched again", async () => {
  const layer = amdImage.layers[0]!;
  const path = dest();
  writeFileSync(path, amdImage.layerBytes[0]!.subarray(0, 200_000));
  await client().fetchBlob(ref(), layer, path);
  assert.ok(readFileSync(path).equals(amdImage.layerBytes[0]!));
  assert.equal(d.requestsTo("storage", layer.digest.slice(7))[0]!.headers.range, "bytes=200000-");
});

test("a resumed prefix that does not verify is fetched once more from zero", async () => {
  const layer = amdImage.layers[0]!;
  const path = dest();
  writeFileSync(path, Buffer.alloc(100_000)); // zeros: a torn partial file after a power cut
  await client().fetchBlob(ref(), layer, path);
  assert.ok(readFileSync(path).equals(amdImage.layerBytes[0]!));
  const tries = d.requestsTo("storage", layer.digest.slice(7));
  assert.deepEqual(
    tries.map((q) => q.headers.range),
    ["bytes=100000-", undefined],
  );
  const again = dest();
  writeFileSync(again, Buffer.alloc(100_000));
  d.fault("storage", layer.digest.slice(7), serveBytes(Buffer.alloc(layer.size)), 2);
  await assert.rejects(client().fetchBlob(ref(), layer, again), (e) => isMmError(e, "MM_DIGEST_MISMATCH"));
  assert.equal(existsSync(again), false);
});

test("a stalled transfer is dropped after the idle timeout and retried", async () => {
  const layer = amdImage.layers[0]!;
  d.fault("storage", layer.digest.slice(7), (_q, res) => {
    res.writeHead(200, { "content-length": layer.size });
    res.write(amdImage.layerBytes[0]!.subarray(0, 1000));
  });
  const path = dest();
  await client({ idleTimeoutMs: 150 }).fetchBlob(ref(), layer, path, undefined, opts());
  assert.ok(readFileSync(path).equals(amdImage.layerBytes[0]!));
  assert.match((events[0] as { reason: string }).reason, /no data for 150 ms/);
});

test("wrong content is MM_DIGEST_MISMATCH and the partial file is removed", async () => {
  const layer = amdImage.layers[1]!;
  d.fault("storage", layer.digest.slice(7), serveBytes(Buffer.alloc(layer.size, 7)));
  const path = dest();
  await assert.rejects(
    client().fetchBlob(ref(), layer, path),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /digest is sha256:/.test(e.message),
  );
  assert.equal(existsSync(path), false);
});

test("a blob of the wrong size is refused: short Content-Length at once, too many bytes as soon as they arrive", async () => {
  const layer = amdImage.layers[0]!;
  d.fault("storage", layer.digest.slice(7), serveBytes(amdImage.layerBytes[0]!.subarray(0, 5000)));
  await assert.rejects(
    client().fetchBlob(ref(), layer, dest()),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /sends 5000 bytes, the manifest says 300000/.test(e.message),
  );
  d.fault(
    "storage",
    layer.digest.slice(7),
    serveBytes(Buffer.concat([amdImage.layerBytes[0]!, Buffer.alloc(10)]), null),
  );
  await assert.rejects(
    client().fetchBlob(ref(), layer, dest()),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /more than the 300000 bytes/.test(e.message),
  );
});

test("a blob truncated on every attempt gives up with MM_REGISTRY_UNAVAILABLE", async () => {
  const layer = amdImage.layers[0]!;
  d.fault("storage", layer.digest.slice(7), dropAfter(0), 10);
  await assert.rejects(
    client().fetchBlob(ref(), layer, dest(), undefined, opts()),
    (e) => isMmError(e, "MM_REGISTRY_UNAVAILABLE") && /gave up after 4 attempts/.test(e.message),
  );
  assert.equal(events.length, 3);
});

test("404s are MM_IMAGE_NOT_FOUND with the registry's error code", async () => {
  await assert.rejects(
    client().resolve(ref("library/busybox:nope"), amd64),
    (e) => isMmError(e, "MM_IMAGE_NOT_FOUND") && /MANIFEST_UNKNOWN/.test(e.message),
  );
  const missing = { mediaType: MediaType.OCI_LAYER_GZIP, digest: `sha256:${"1".repeat(64)}`, size: 10 };
  await assert.rejects(
    client().fetchBlob(ref(), missing, dest()),
    (e) => isMmError(e, "MM_IMAGE_NOT_FOUND") && /BLOB_UNKNOWN/.test(e.message),
  );
});

test("unknown media types are MM_UNSUPPORTED_MEDIA_TYPE", async () => {
  d.pushManifest(
    "library/old",
    "v1",
    Buffer.from('{"schemaVersion":1,"name":"old"}'),
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
  );
  await assert.rejects(client().resolve(ref("library/old:v1"), amd64), (e) =>
    isMmError(e, "MM_UNSUPPORTED_MEDIA_TYPE"),
  );
  const helm = makeImage({ configMediaType: "application/vnd.cncf.helm.config.v1+json" });
  d.push("library/chart", "1", helm);
  await assert.rejects(
    client().resolve(ref("library/chart:1"), amd64),
    (e) => isMmError(e, "MM_UNSUPPORTED_MEDIA_TYPE") && /helm/.test(e.message),
  );
  const foreign = makeImage({ layerMediaType: "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" });
  d.push("library/win", "1", foreign);
  await assert.rejects(
    client().resolve(ref("library/win:1"), amd64),
    (e) => isMmError(e, "MM_UNSUPPORTED_MEDIA_TYPE") && /foreign/.test(e.message),
  );
});

test("Docker schema 2 manifest lists and manifests resolve like OCI ones", async () => {
  const img = makeImage({ docker: true, platform: amd64 });
  d.pushIndex("library/dock", "1", [img], true);
  const r = await client().resolve(ref("library/dock:1"), amd64);
  assert.equal(r.manifestMediaType, MediaType.DOCKER_MANIFEST);
  assert.equal(r.index?.mediaType, MediaType.DOCKER_LIST);
  d.push("library/single", "1", img);
  const s = await client().resolve(ref("library/single:1"), amd64);
  assert.equal(s.digest, img.manifest.digest);
  assert.equal(s.index, undefined);
});

test("a wrong-platform-only image is MM_NO_MATCHING_PLATFORM listing what there is", async () => {
  d.pushIndex("library/armonly", "1", [armImage]);
  await assert.rejects(
    client().resolve(ref("library/armonly:1"), amd64),
    (e) =>
      isMmError(e, "MM_NO_MATCHING_PLATFORM") &&
      /has no linux\/amd64 variant; available: linux\/arm64\/v8$/.test(e.message),
  );
  d.push("library/armsingle", "1", armImage);
  await assert.rejects(
    client().resolve(ref("library/armsingle:1"), amd64),
    (e) => isMmError(e, "MM_NO_MATCHING_PLATFORM") && /is linux\/arm64\/v8 only/.test(e.message),
  );
  const r = await client().resolve(ref("library/busybox:latest"), { os: "linux", architecture: "arm64" });
  assert.equal(r.digest, armImage.manifest.digest, "arm64 ↔ arm64/v8");
});

test("pinned digests are checked against the exact bytes; so is Docker-Content-Digest", async () => {
  const pinned = ref(`library/busybox@${amdImage.manifest.digest}`);
  assert.equal((await client().resolve(pinned, amd64)).digest, amdImage.manifest.digest);
  const indexDigest = sha256Digest(d.manifests.get("library/busybox:latest")!.bytes);
  const both = ref(`library/busybox:whatever@${indexDigest}`);
  assert.equal((await client().resolve(both, arm64)).digest, armImage.manifest.digest, "the digest wins over the tag");

  d.fault("registry", `/manifests/${amdImage.manifest.digest}`, (_q, res) => {
    res.writeHead(200, { "content-type": MediaType.OCI_MANIFEST });
    res.end(armImage.manifestBytes);
  });
  await assert.rejects(client().resolve(pinned, amd64), (e) => isMmError(e, "MM_DIGEST_MISMATCH"));
  d.fault("registry", "/manifests/latest", (_q, res) => {
    const body = d.manifests.get("library/busybox:latest")!.bytes;
    res.writeHead(200, { "content-type": MediaType.OCI_INDEX, "docker-content-digest": `sha256:${"f".repeat(64)}` });
    res.end(body);
  });
  await assert.rejects(
    client().resolve(ref(), amd64),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /Docker-Content-Digest/.test(e.message),
  );
  d.fault("registry", `/blobs/${amdImage.config.digest}`, serveBytes(Buffer.from("{}")));
  await assert.rejects(client().resolve(ref(), amd64), (e) => isMmError(e, "MM_DIGEST_MISMATCH"));
});

test("oversized or malformed manifests are MM_REGISTRY_PROTOCOL", async () => {
  d.pushManifest("library/huge", "1", Buffer.alloc(4 * 1024 * 1024 + 1, 0x20), MediaType.OCI_MANIFEST);
  await assert.rejects(
    client().resolve(ref("library/huge:1"), amd64),
    (e) => isMmError(e, "MM_REGISTRY_PROTOCOL") && /more than the 4194304/.test(e.message),
  );
  d.pushManifest(
    "library/bad",
    "1",
    Buffer.from('{"schemaVersion":2,"config":{},"layers":[]}'),
    MediaType.OCI_MANIFEST,
  );
  await assert.rejects(
    client().resolve(ref("library/bad:1"), amd64),
    (e) => isMmError(e, "MM_REGISTRY_PROTOCOL") && /config.mediaType is missing/.test(e.message),
  );
});

test("plain HTTP is refused unless opted in for a loopback registry", async () => {
  assert.throws(
    () => new RegistryClient({ insecureRegistries: ["registry.example.com:5000"] }),
    (e) => isMmError(e, "MM_INSECURE_REGISTRY"),
  );
  assert.doesNotThrow(() => new RegistryClient({ insecureRegistries: ["localhost:5000", "[::1]:5000", "127.1.2.3"] }));
  // TLS to a plain-HTTP loopback registry: the hint says to opt in.
  await assert.rejects(
    new RegistryClient({ retry: { attempts: 1 } }).fetchManifest(ref(), "latest"),
    (e) => isMmError(e, "MM_INSECURE_REGISTRY") && /speaks plain HTTP/.test(e.message),
  );
  // A redirect to plain HTTP off loopback is refused before anything is sent there.
  d.fault("registry", "/blobs/", (_q, res) => {
    res.writeHead(307, { location: "http://blobs.example.invalid/data" });
    res.end();
  });
  await assert.rejects(
    client().fetchBlob(ref(), amdImage.layers[1]!, dest()),
    (e) => isMmError(e, "MM_INSECURE_REGISTRY") && /redirect is plain HTTP/.test(e.message),
  );
});

test("a 401 from blob storage is MM_REGISTRY_AUTH without a token dance", async () => {
  d.fault("storage", "/data", (_q, res) => {
    res.writeHead(401, { "www-authenticate": 'Bearer realm="http://127.0.0.1:1/evil"' });
    res.end();
  });
  await assert.rejects(client().fetchBlob(ref(), amdImage.layers[1]!, dest()), (e) => isMmError(e, "MM_REGISTRY_AUTH"));
  assert.equal(d.requestsTo("registry", "/token").length, 1);
});

test("an index inside an index is MM_UNSUPPORTED_MEDIA_TYPE", async () => {
  const inner = d.pushIndex("library/nest", "inner", [amdImage]);
  const outer = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OCI_INDEX, manifests: [{ ...inner, platform: amd64 }] }),
  );
  d.pushManifest("library/nest", "outer", outer, MediaType.OCI_INDEX);
  await assert.rejects(client().resolve(ref("library/nest:outer"), amd64), (e) =>
    isMmError(e, "MM_UNSUPPORTED_MEDIA_TYPE"),
  );
});

test("Retry-After, backoff and Content-Range parsing", () => {
  assert.equal(parseRetryAfter("3", 0), 3000);
  assert.equal(parseRetryAfter(null, 0), undefined);
  assert.equal(parseRetryAfter("soon", 0), undefined);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6_000);
  const p = { attempts: 5, baseDelayMs: 100, maxDelayMs: 1000, maxRetryAfterMs: 0 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((a) => backoffDelay(a, p, 0.999999)),
    [100, 200, 400, 800, 1000, 1000],
  );
  assert.deepEqual(
    [1, 2, 3].map((a) => backoffDelay(a, p, 0)),
    [50, 100, 200],
  );
  assert.deepEqual(parseContentRange("bytes 100-199/200"), { start: 100, end: 199, total: 200 });
  assert.deepEqual(parseContentRange("bytes 5-9/*"), { start: 5, end: 9 });
  assert.equal(parseContentRange("bytes */200"), undefined);
  assert.equal(parseContentRange(null), undefined);
});
