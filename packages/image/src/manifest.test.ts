import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError, MmError } from "@mm/core";
import fc from "fast-check";
import { digestHex, isDigest, sha256Digest, shortDigest } from "./digest.js";
import { checkRunnable, MAX_MANIFEST_BYTES, parseImageConfig, parseManifest } from "./manifest.js";
import { MediaType } from "./types.js";

const D = (c: string) => `sha256:${c.repeat(64)}`;
const json = (v: unknown) => Buffer.from(JSON.stringify(v));
const layer = { mediaType: MediaType.OCI_LAYER_GZIP, digest: D("1"), size: 10 };
const config = { mediaType: MediaType.OCI_CONFIG, digest: D("2"), size: 20 };
const manifest = { schemaVersion: 2, mediaType: MediaType.OCI_MANIFEST, config, layers: [layer] };

test("digests: sha256 only, lowercase, 64 hex", () => {
  assert.ok(isDigest(D("a")));
  for (const bad of [D("A"), `sha512:${"a".repeat(128)}`, `sha256:${"a".repeat(63)}`, "sha256:", 5, null]) {
    assert.ok(!isDigest(bad), String(bad));
  }
  assert.equal(digestHex(D("b")), "b".repeat(64));
  assert.throws(() => digestHex("sha256:../../etc"), RangeError);
  assert.equal(sha256Digest(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  assert.equal(shortDigest(D("c")), `sha256:${"c".repeat(12)}`);
});

test("manifests: the media type comes from Content-Type, else the document, else its shape", () => {
  const m = parseManifest(json(manifest), `${MediaType.OCI_MANIFEST}; charset=utf-8`);
  assert.equal(m.kind, "manifest");
  assert.deepEqual(m.kind === "manifest" && m.manifest.layers, [layer]);
  assert.equal(parseManifest(json(manifest), "application/json").mediaType, MediaType.OCI_MANIFEST);
  const { mediaType: _m, ...bare } = manifest;
  assert.equal(parseManifest(json(bare)).mediaType, MediaType.OCI_MANIFEST);
  const index = {
    schemaVersion: 2,
    manifests: [{ ...layer, mediaType: MediaType.OCI_MANIFEST, platform: { os: "linux", architecture: "amd64" } }],
  };
  const i = parseManifest(json(index));
  assert.equal(i.kind, "index");
  assert.deepEqual(i.kind === "index" && i.index.manifests[0]?.platform, { os: "linux", architecture: "amd64" });
  const docker = {
    ...manifest,
    mediaType: MediaType.DOCKER_MANIFEST,
    config: { ...config, mediaType: MediaType.DOCKER_CONFIG },
  };
  assert.equal(parseManifest(json(docker), MediaType.DOCKER_MANIFEST).mediaType, MediaType.DOCKER_MANIFEST);
});

test("manifests: schema 1, unknown types, disagreements, bad shapes and oversize are refused", () => {
  const cases: [Buffer, string | undefined, string, RegExp][] = [
    [json({ schemaVersion: 1, name: "x" }), undefined, "MM_UNSUPPORTED_MEDIA_TYPE", /manifest.v1/],
    [
      json(manifest),
      "application/vnd.docker.distribution.manifest.v1+prettyjws",
      "MM_UNSUPPORTED_MEDIA_TYPE",
      /v1\+prettyjws/,
    ],
    [json(manifest), "text/html", "MM_UNSUPPORTED_MEDIA_TYPE", /text\/html/],
    [json(manifest), MediaType.DOCKER_MANIFEST, "MM_REGISTRY_PROTOCOL", /declared as .* but says/],
    [json({ ...manifest, schemaVersion: 3 }), undefined, "MM_REGISTRY_PROTOCOL", /schemaVersion/],
    [json({ ...manifest, layers: "x" }), undefined, "MM_REGISTRY_PROTOCOL", /without a layers list/],
    [json({ ...manifest, layers: [{ ...layer, size: -1 }] }), undefined, "MM_REGISTRY_PROTOCOL", /layers\[0\]\.size/],
    [json({ ...manifest, layers: [{ ...layer, size: 1.5 }] }), undefined, "MM_REGISTRY_PROTOCOL", /size/],
    [json({ ...manifest, layers: [{ ...layer, digest: "sha256:abc" }] }), undefined, "MM_REGISTRY_PROTOCOL", /digest/],
    [
      json({ ...manifest, config: { ...config, annotations: { a: 1 } } }),
      undefined,
      "MM_REGISTRY_PROTOCOL",
      /annotations/,
    ],
    [
      json({ schemaVersion: 2, mediaType: MediaType.OCI_INDEX }),
      undefined,
      "MM_REGISTRY_PROTOCOL",
      /without a manifests/,
    ],
    [
      json({ schemaVersion: 2, manifests: [{ ...layer, platform: { os: "linux" } }] }),
      undefined,
      "MM_REGISTRY_PROTOCOL",
      /platform/,
    ],
    [json([1, 2]), undefined, "MM_REGISTRY_PROTOCOL", /not a JSON object/],
    [json({ schemaVersion: 2 }), undefined, "MM_REGISTRY_PROTOCOL", /neither/],
    [Buffer.from("{nope"), undefined, "MM_REGISTRY_PROTOCOL", /not JSON/],
    [Buffer.from([0x7b, 0xff, 0x7d]), undefined, "MM_REGISTRY_PROTOCOL", /not JSON/],
    [Buffer.alloc(MAX_MANIFEST_BYTES + 1, 0x20), undefined, "MM_REGISTRY_PROTOCOL", /larger than/],
  ];
  for (const [bytes, type, code, why] of cases) {
    assert.throws(
      () => parseManifest(bytes, type),
      (e) => e instanceof MmError && e.code === code && why.test(e.message),
      `${why}`,
    );
  }
  assert.throws(
    () => parseManifest(Buffer.from("{"), undefined, "MM_BAD_ARCHIVE", "index.json"),
    (e) => isMmError(e, "MM_BAD_ARCHIVE") && /^.*index.json: not JSON/.test(e.message),
  );
});

test("parseManifest throws only MmErrors on any JSON", () => {
  fc.assert(
    fc.property(
      fc.json(),
      fc.option(fc.constantFrom(MediaType.OCI_MANIFEST, MediaType.OCI_INDEX, "x/y")),
      (text, type) => {
        try {
          parseManifest(Buffer.from(text), type ?? undefined);
        } catch (e) {
          assert.ok(e instanceof MmError, String(e));
        }
      },
    ),
    { numRuns: 500 },
  );
});

test("checkRunnable: only image configs and tar/gzip/zstd layers", () => {
  checkRunnable({ ...manifest, layers: [layer, { ...layer, mediaType: MediaType.OCI_LAYER_ZSTD }] } as never);
  checkRunnable({ ...manifest, layers: [{ ...layer, mediaType: MediaType.DOCKER_LAYER_GZIP }] } as never);
  assert.throws(
    () =>
      checkRunnable({
        ...manifest,
        config: { ...config, mediaType: "application/vnd.oci.image.config.v2+json" },
      } as never),
    (e) => isMmError(e, "MM_UNSUPPORTED_MEDIA_TYPE") && /not a container image/.test(e.message),
  );
  assert.throws(
    () =>
      checkRunnable({
        ...manifest,
        layers: [{ ...layer, mediaType: "application/vnd.oci.image.layer.v1.tar+bzip2" }],
      } as never),
    (e) => isMmError(e, "MM_UNSUPPORTED_MEDIA_TYPE"),
  );
});

test("image configs keep what mm honours and check its types", () => {
  const good = {
    architecture: "arm64",
    os: "linux",
    variant: "v8",
    config: {
      Entrypoint: ["/docker-entrypoint.sh"],
      Cmd: null,
      Env: ["PATH=/bin"],
      WorkingDir: "/srv",
      User: "www-data",
      ExposedPorts: { "80/tcp": {} },
      StopSignal: "SIGQUIT",
      Labels: { ignored: "yes" },
    },
    rootfs: { type: "layers", diff_ids: [D("3")] },
    history: [{ created_by: "x" }],
  };
  assert.deepEqual(parseImageConfig(json(good)), {
    architecture: "arm64",
    os: "linux",
    variant: "v8",
    config: {
      Entrypoint: ["/docker-entrypoint.sh"],
      Cmd: null,
      Env: ["PATH=/bin"],
      WorkingDir: "/srv",
      User: "www-data",
      ExposedPorts: { "80/tcp": {} },
      StopSignal: "SIGQUIT",
    },
    rootfs: { type: "layers", diff_ids: [D("3")] },
  });
  assert.deepEqual(
    parseImageConfig(json({ architecture: "amd64", os: "linux", rootfs: { type: "layers", diff_ids: [] } })),
    {
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [] },
    },
  );
  const bad: [unknown, RegExp][] = [
    [{ ...good, os: undefined }, /architecture or os/],
    [{ ...good, rootfs: { type: "tar", diff_ids: [] } }, /rootfs/],
    [{ ...good, rootfs: { type: "layers", diff_ids: ["x"] } }, /diff_ids/],
    [{ ...good, config: { Cmd: "sh -c x" } }, /config.Cmd/],
    [{ ...good, config: { Env: [1] } }, /config.Env/],
    [{ ...good, config: { ExposedPorts: [80] } }, /ExposedPorts/],
    [{ ...good, config: { User: 0 } }, /User/],
    [{ ...good, config: "x" }, /config is not an object/],
  ];
  for (const [doc, why] of bad) {
    assert.throws(
      () => parseImageConfig(json(doc)),
      (e) => isMmError(e, "MM_REGISTRY_PROTOCOL") && why.test(e.message),
      `${why}`,
    );
  }
});
