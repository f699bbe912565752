import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { gzipSync } from "node:zlib";
import { isMmError } from "@mm/core";
import { c as createTar } from "tar";
import { ContentStore } from "./content-store.js";
import { sha256Digest } from "./digest.js";
import { importDockerArchive, importOciLayout } from "./import.js";
import { getImage } from "./pull.js";
import { makeImage, makeIndex, type TestImage } from "./registry-double.js";
import type { Descriptor, Platform } from "./types.js";
import { MediaType } from "./types.js";

const amd64: Platform = { os: "linux", architecture: "amd64" };
const arm64: Platform = { os: "linux", architecture: "arm64", variant: "v8" };
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function temp(): string {
  const d = mkdtempSync(join(tmpdir(), "mm-import-"));
  dirs.push(d);
  return d;
}
const store = () => new ContentStore(join(temp(), "content"));
const hex = (digest: string) => digest.slice(7);

/** An OCI image layout directory holding `images`, listed in index.json by `top`. */
function writeLayout(
  dir: string,
  images: readonly TestImage[],
  top: readonly (Descriptor & { bytes?: Buffer })[],
): void {
  mkdirSync(join(dir, "blobs", "sha256"), { recursive: true });
  writeFileSync(join(dir, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
  const put = (d: Descriptor, b: Buffer) => writeFileSync(join(dir, "blobs", "sha256", hex(d.digest)), b);
  for (const i of images) {
    put(i.manifest, i.manifestBytes);
    put(i.config, i.configBytes);
    for (const [n, l] of i.layers.entries()) put(l, i.layerBytes[n]!);
  }
  for (const t of top) if (t.bytes) put(t, t.bytes);
  const manifests = top.map(({ bytes: _b, ...d }) => d);
  writeFileSync(
    join(dir, "index.json"),
    JSON.stringify({ schemaVersion: 2, mediaType: MediaType.OCI_INDEX, manifests }),
  );
}

test("an OCI layout imports under its annotated name, blobs verified into the store", async () => {
  const dir = temp();
  const img = makeImage({ platform: amd64, layerSizes: [3000, 100] });
  const { platform: _p, ...m } = img.manifest;
  writeLayout(dir, [img], [{ ...m, annotations: { "org.opencontainers.image.ref.name": "example.com/app:1.0" } }]);
  const s = store();
  const [got, ...rest] = await importOciLayout(dir, { store: s, platform: amd64 });
  assert.equal(rest.length, 0);
  assert.equal(got?.reference, "example.com/app:1.0");
  assert.equal(got?.digest, img.manifest.digest);
  for (const d of [img.manifest, img.config, ...img.layers]) assert.ok(await s.has(d), d.digest);
  assert.deepEqual(await getImage(s, "example.com/app:1.0"), got);
  assert.deepEqual((await s.getRef("example.com/app:1.0"))?.platform, amd64);
});

test("a multi-platform layout resolves its index for the platform; a bare tag needs a name", async () => {
  const dir = temp();
  const a = makeImage({ platform: amd64, layerSizes: [10] });
  const b = makeImage({ platform: arm64, layerSizes: [20] });
  const index = makeIndex([a, b]);
  writeLayout(
    dir,
    [a, b],
    [{ ...index.descriptor, bytes: index.bytes, annotations: { "org.opencontainers.image.ref.name": "latest" } }],
  );
  await assert.rejects(importOciLayout(dir, { store: store(), platform: arm64 }), (e) => isMmError(e, "MM_USAGE"));
  const s = store();
  const [got] = await importOciLayout(dir, { store: s, platform: arm64, reference: "multi" });
  assert.equal(got?.reference, "docker.io/library/multi:latest");
  assert.equal(got?.digest, b.manifest.digest);
  const ref = await s.getRef("docker.io/library/multi:latest");
  assert.equal(ref?.indexDigest, index.descriptor.digest);
  assert.deepEqual(ref?.platform, arm64);
  assert.ok(await s.has(index.descriptor));
  assert.equal(await s.has(a.layers[0]!), false, "the other platform's layers are not copied");
});

test("a broken OCI layout is MM_BAD_ARCHIVE (or MM_DIGEST_MISMATCH for wrong content)", async () => {
  const img = makeImage({ platform: amd64, layerSizes: [50] });
  const named = { ...img.manifest, annotations: { "io.containerd.image.name": "docker.io/library/x:1" } };
  const s = store();

  const noLayout = temp();
  writeLayout(noLayout, [img], [named]);
  rmSync(join(noLayout, "oci-layout"));
  await assert.rejects(
    importOciLayout(noLayout, { store: s }),
    (e) => isMmError(e, "MM_BAD_ARCHIVE") && /oci-layout/.test(e.message),
  );

  const badVersion = temp();
  writeLayout(badVersion, [img], [named]);
  writeFileSync(join(badVersion, "oci-layout"), '{"imageLayoutVersion":"2.0.0"}');
  await assert.rejects(importOciLayout(badVersion, { store: s }), (e) => isMmError(e, "MM_BAD_ARCHIVE"));

  const badIndex = temp();
  writeLayout(badIndex, [img], [named]);
  writeFileSync(join(badIndex, "index.json"), '{"schemaVersion":2,"manifests":[{"digest":"../../etc/passwd"}]}');
  await assert.rejects(importOciLayout(badIndex, { store: s }), (e) => isMmError(e, "MM_BAD_ARCHIVE"));

  const missing = temp();
  writeLayout(missing, [img], [named]);
  rmSync(join(missing, "blobs", "sha256", hex(img.layers[0]!.digest)));
  await assert.rejects(
    importOciLayout(missing, { store: s }),
    (e) => isMmError(e, "MM_BAD_ARCHIVE") && /missing/.test(e.message),
  );

  const tampered = temp();
  writeLayout(tampered, [img], [named]);
  writeFileSync(join(tampered, "blobs", "sha256", hex(img.layers[0]!.digest)), Buffer.alloc(50));
  await assert.rejects(importOciLayout(tampered, { store: s }), (e) => isMmError(e, "MM_DIGEST_MISMATCH"));
  assert.equal(await s.has(img.layers[0]!.digest), false);
  assert.deepEqual(await s.listRefs(), []);
});

interface SavedImage {
  readonly configBytes: Buffer;
  readonly layers: readonly Buffer[];
  readonly tags: readonly string[] | null;
}

function savedImage(
  layers: readonly Buffer[],
  tags: readonly string[] | null,
  diffIds?: readonly string[],
): SavedImage {
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Cmd: ["sh"] },
      rootfs: { type: "layers", diff_ids: diffIds ?? layers.map((l) => sha256Digest(l)) },
    }),
  );
  return { configBytes, layers, tags };
}

/** What `docker save` wrote before Docker 25: <id>/layer.tar (duplicates as symlinks), <config hex>.json, manifest.json. */
function writeLegacySave(
  images: readonly SavedImage[],
  options: { gzip?: boolean; extra?: (dir: string) => void } = {},
): string {
  const dir = temp();
  const root = join(dir, "root");
  mkdirSync(root);
  const manifest = [];
  const written = new Map<string, string>();
  for (const img of images) {
    const configName = `${hex(sha256Digest(img.configBytes))}.json`;
    writeFileSync(join(root, configName), img.configBytes);
    const layerPaths: string[] = [];
    for (const [i, l] of img.layers.entries()) {
      const id = hex(sha256Digest(`${configName}/${i}`));
      mkdirSync(join(root, id));
      writeFileSync(join(root, id, "VERSION"), "1.0");
      writeFileSync(join(root, id, "json"), "{}");
      const first = written.get(sha256Digest(l));
      if (first) symlinkSync(`../${first}`, join(root, id, "layer.tar"));
      else {
        writeFileSync(join(root, id, "layer.tar"), l);
        written.set(sha256Digest(l), `${id}/layer.tar`);
      }
      layerPaths.push(`${id}/layer.tar`);
    }
    manifest.push({ Config: configName, RepoTags: img.tags, Layers: layerPaths });
  }
  writeFileSync(join(root, "manifest.json"), JSON.stringify(manifest));
  writeFileSync(join(root, "repositories"), "{}");
  options.extra?.(root);
  const file = join(dir, options.gzip ? "save.tar.gz" : "save.tar");
  createTar({ file, cwd: root, sync: true, gzip: options.gzip ?? false, portable: true }, ["."]);
  return file;
}

test("a legacy docker save tarball imports with a synthesised OCI manifest whose digest is stable", async () => {
  const shared = randomBytes(4000);
  const one = savedImage([shared, randomBytes(100)], ["saved:1", "example.com/saved:one"]);
  const two = savedImage([shared], ["saved:2"]);
  const file = writeLegacySave([one, two]);
  const s = store();
  const got = await importDockerArchive(file, { store: s });
  assert.deepEqual(
    got.map((i) => i.reference),
    ["docker.io/library/saved:1", "example.com/saved:one", "docker.io/library/saved:2"],
  );
  const [first] = got;
  assert.equal(first?.manifest.mediaType, MediaType.OCI_MANIFEST);
  assert.deepEqual(
    first?.manifest.layers.map((l) => [l.mediaType, l.digest, l.size]),
    one.layers.map((l) => [MediaType.OCI_LAYER_TAR, sha256Digest(l), l.byteLength]),
  );
  assert.equal(first?.configDigest, sha256Digest(one.configBytes));
  assert.ok(await s.has(first!.digest));
  assert.deepEqual(await getImage(s, "saved:1"), first);

  const again = await importDockerArchive(writeLegacySave([one, two], { gzip: true }), { store: store() });
  assert.deepEqual(
    again.map((i) => i.digest),
    got.map((i) => i.digest),
    "same content, same manifest digest (and gzipped archives work)",
  );
});

test("Docker 25's OCI-style save: manifest.json names blobs/sha256 paths; compressed layers are typed", async () => {
  const dir = temp();
  const root = join(dir, "root");
  mkdirSync(join(root, "blobs", "sha256"), { recursive: true });
  const plain = randomBytes(300);
  const zipped = gzipSync(randomBytes(300));
  const cfg = savedImage([plain, zipped], ["new:1"], [sha256Digest(plain), `sha256:${"9".repeat(64)}`]);
  const put = (b: Buffer) => {
    writeFileSync(join(root, "blobs", "sha256", hex(sha256Digest(b))), b);
    return `blobs/sha256/${hex(sha256Digest(b))}`;
  };
  const manifest = [{ Config: put(cfg.configBytes), RepoTags: ["new:1"], Layers: [put(plain), put(zipped)] }];
  writeFileSync(join(root, "manifest.json"), JSON.stringify(manifest));
  writeFileSync(join(root, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(join(root, "index.json"), '{"schemaVersion":2,"manifests":[]}');
  const file = join(dir, "new.tar");
  createTar({ file, cwd: root, sync: true, portable: true }, ["."]);
  const [img] = await importDockerArchive(file, { store: store() });
  assert.deepEqual(
    img?.manifest.layers.map((l) => l.mediaType),
    [MediaType.OCI_LAYER_TAR, MediaType.OCI_LAYER_GZIP],
  );
});

test("an OCI archive (a tarred layout) imports like the directory", async () => {
  const dir = temp();
  const layout = join(dir, "layout");
  const img = makeImage({ platform: amd64, layerSizes: [500_000, 10] });
  writeLayout(
    layout,
    [img],
    [{ ...img.manifest, annotations: { "io.containerd.image.name": "docker.io/library/oa:1" } }],
  );
  const file = join(dir, "oci.tar");
  createTar({ file, cwd: layout, sync: true, portable: true }, ["."]);
  const s = store();
  const [got] = await importDockerArchive(file, { store: s, platform: amd64 });
  assert.equal(got?.reference, "docker.io/library/oa:1");
  for (const d of [img.manifest, img.config, ...img.layers]) assert.ok(await s.has(d));
});

test("malformed archives are MM_BAD_ARCHIVE; wrong layer content MM_DIGEST_MISMATCH; no name MM_USAGE", async () => {
  const s = store();
  const junk = join(temp(), "junk.tar");
  writeFileSync(junk, randomBytes(5000));
  await assert.rejects(importDockerArchive(junk, { store: s }), (e) => isMmError(e, "MM_BAD_ARCHIVE"));
  await assert.rejects(importDockerArchive(join(temp(), "absent.tar"), { store: s }), (e) =>
    isMmError(e, "MM_BAD_ARCHIVE"),
  );

  const good = savedImage([randomBytes(100)], ["x:1"]);
  const noManifest = writeLegacySave([good], { extra: (root) => rmSync(join(root, "manifest.json")) });
  await assert.rejects(
    importDockerArchive(noManifest, { store: s }),
    (e) => isMmError(e, "MM_BAD_ARCHIVE") && /neither/.test(e.message),
  );

  const dangling = writeLegacySave([good], {
    extra: (root) =>
      writeFileSync(
        join(root, "manifest.json"),
        JSON.stringify([{ Config: "../../etc/passwd", RepoTags: ["x:1"], Layers: [] }]),
      ),
  });
  await assert.rejects(
    importDockerArchive(dangling, { store: s }),
    (e) => isMmError(e, "MM_BAD_ARCHIVE") && /no file/.test(e.message),
  );

  const notJson = writeLegacySave([good], { extra: (root) => writeFileSync(join(root, "manifest.json"), "{}") });
  await assert.rejects(importDockerArchive(notJson, { store: s }), (e) => isMmError(e, "MM_BAD_ARCHIVE"));

  const lying = writeLegacySave([savedImage([randomBytes(100)], ["x:1"], [`sha256:${"1".repeat(64)}`])]);
  await assert.rejects(
    importDockerArchive(lying, { store: s }),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /expected sha256:1111/.test(e.message),
  );

  const truncated = writeLegacySave([savedImage([randomBytes(20_000)], ["x:1"])]);
  const { readFileSync } = await import("node:fs");
  writeFileSync(truncated, readFileSync(truncated).subarray(0, 12_000));
  await assert.rejects(importDockerArchive(truncated, { store: s }), (e) => isMmError(e, "MM_BAD_ARCHIVE"));

  const untagged = writeLegacySave([savedImage([randomBytes(10)], null)]);
  await assert.rejects(importDockerArchive(untagged, { store: s }), (e) => isMmError(e, "MM_USAGE"));
  const [named] = await importDockerArchive(untagged, { store: s, reference: "given:1" });
  assert.equal(named?.reference, "docker.io/library/given:1");
  const two = writeLegacySave([savedImage([randomBytes(10)], ["a:1"]), savedImage([randomBytes(10)], ["b:1"])]);
  await assert.rejects(importDockerArchive(two, { store: s, reference: "one" }), (e) => isMmError(e, "MM_USAGE"));
  assert.deepEqual(
    (await s.listRefs()).map((r) => r.reference),
    ["docker.io/library/given:1"],
  );
  assert.deepEqual((await s.gc()).removed.length > 0, true, "what the failed imports stored is garbage");
  assert.ok(await getImage(s, "given:1"));
});
