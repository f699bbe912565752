import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import { ContentStore } from "./content-store.js";
import { sha256Digest } from "./digest.js";
import { makeImage, makeIndex, type TestImage } from "./registry-double.js";
import type { Descriptor } from "./types.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function root(): string {
  const d = mkdtempSync(join(tmpdir(), "mm-content-"));
  dirs.push(d);
  return join(d, "content");
}
const DEAD = 0x3fffffff; // no such pid
const isAlive = (pid: number) => pid !== DEAD;
const desc = (bytes: Buffer, mediaType = "application/octet-stream"): Descriptor => ({
  mediaType,
  digest: sha256Digest(bytes),
  size: bytes.byteLength,
});
const ls = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);

async function storeImage(store: ContentStore, image: TestImage): Promise<void> {
  await store.ingestBytes(image.manifest, image.manifestBytes);
  await store.ingestBytes(image.config, image.configBytes);
  for (const [i, l] of image.layers.entries()) await store.ingestBytes(l, image.layerBytes[i]!);
}

test("ingest verifies, then renames into blobs/sha256/<hex>; nothing is left in ingest/", async () => {
  const r = root();
  const store = new ContentStore(r);
  const bytes = Buffer.from("hello blob");
  const w = await store.openIngest(desc(bytes));
  await w.write(bytes.subarray(0, 5));
  assert.equal(await store.has(desc(bytes)), false, "not visible before commit");
  await w.write(bytes.subarray(5));
  assert.deepEqual(await w.commit(), { digest: sha256Digest(bytes), size: bytes.byteLength });
  assert.ok(await store.has(desc(bytes)));
  assert.equal(await store.has({ ...desc(bytes), size: 3 }), false, "has() with a descriptor checks the size");
  assert.equal(store.path(sha256Digest(bytes)), join(r, "blobs", "sha256", sha256Digest(bytes).slice(7)));
  assert.ok(readFileSync(store.path(sha256Digest(bytes))).equals(bytes));
  assert.deepEqual(ls(join(r, "ingest")), []);
  assert.deepEqual(await store.readJson(desc(Buffer.from('{"a":1}')), 100).catch((e) => e.code), "MM_NO_SUCH_IMAGE");
});

test("wrong content or size never gets a valid name, and the temp file is removed", async () => {
  const r = root();
  const store = new ContentStore(r);
  const good = Buffer.from("the real content");
  for (const bad of [
    Buffer.from("the fake content"),
    Buffer.from("the real conten"),
    Buffer.from("the real content!"),
  ]) {
    const w = await store.openIngest(desc(good));
    await w.write(bad);
    await assert.rejects(w.commit(), (e) => isMmError(e, "MM_DIGEST_MISMATCH"));
    assert.equal(await store.has(sha256Digest(good)), false);
    assert.equal(await store.has(sha256Digest(bad)), false);
  }
  assert.deepEqual(ls(join(r, "ingest")), []);
  assert.deepEqual(ls(join(r, "blobs", "sha256")), []);
  await assert.rejects(
    store.ingestStream([good, Buffer.from("x")], desc(good)),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /more than 16 bytes/.test(e.message),
  );
});

test("whatever is written, a blob under a name always has that name's content (property)", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ maxLength: 64 }),
      fc.array(fc.uint8Array({ maxLength: 32 }), { maxLength: 4 }),
      fc.constantFrom("commit", "abort", "release", "crash"),
      async (want, chunks, end) => {
        const store = new ContentStore(root(), { isAlive });
        const d = desc(Buffer.from(want));
        const w = await store.openIngest(d);
        for (const c of chunks) await w.write(c);
        if (end === "commit") await w.commit().catch(() => {});
        else if (end === "abort") await w.abort();
        else if (end === "release") await w.release();
        for (const b of await store.blobs()) {
          assert.equal(sha256Digest(readFileSync(store.path(b.digest))), b.digest);
        }
        const wrote = Buffer.concat(chunks);
        assert.equal(await store.has(d), end === "commit" && wrote.equals(Buffer.from(want)));
      },
    ),
    { numRuns: 60 },
  );
});

test("a partial download left by a dead process is adopted and resumed; a live one's is not", async () => {
  const r = root();
  const store = new ContentStore(r, { isAlive });
  const bytes = Buffer.from("0123456789abcdef".repeat(1000));
  const d = desc(bytes);
  mkdirSync(join(r, "ingest"), { recursive: true });
  const hex = d.digest.slice(7);
  writeFileSync(join(r, "ingest", `${hex}.${DEAD}.aaaa`), bytes.subarray(0, 7000));
  writeFileSync(join(r, "ingest", `${hex}.${process.pid}.bbbb`), bytes.subarray(0, 100));
  const w = await store.openIngest(d);
  assert.equal(w.offset, 7000, "resumes the dead process's prefix");
  assert.equal(ls(join(r, "ingest")).length, 2, "adopted by rename, the live one untouched");
  await w.write(bytes.subarray(7000));
  await w.commit();
  assert.ok(readFileSync(store.path(d.digest)).equals(bytes));

  // A leftover longer than the blob cannot be a prefix: it is emptied.
  const other = Buffer.from("short");
  writeFileSync(join(r, "ingest", `${sha256Digest(other).slice(7)}.${DEAD}.cccc`), Buffer.from("much too long"));
  const w2 = await store.openIngest(desc(other));
  assert.equal(w2.offset, 0);
  await w2.abort();
});

test("readBytes/readJson verify the stored blob before it is used", async () => {
  const store = new ContentStore(root());
  const json = Buffer.from('{"hello":"world"}');
  await store.ingestBytes(desc(json), json);
  assert.deepEqual(await store.readJson(desc(json), 1024), { hello: "world" });
  assert.deepEqual(await store.readJson({ digest: sha256Digest(json) }, 1024), { hello: "world" });
  await assert.rejects(store.readBytes(desc(json), 5), /larger than 5 bytes/);
  writeFileSync(store.path(sha256Digest(json)), '{"hello":"WORLD"}');
  await assert.rejects(
    store.readJson(desc(json), 1024),
    (e) => isMmError(e, "MM_DIGEST_MISMATCH") && /corrupt/.test(e.message),
  );
  assert.equal(await store.delete(sha256Digest(json)), true);
  assert.equal(await store.delete(sha256Digest(json)), false);
});

test("refs: set, get, list, remove; atomic files named by the reference's sha256", async () => {
  const r = root();
  const store = new ContentStore(r);
  const a = {
    reference: "docker.io/library/a:1",
    digest: `sha256:${"a".repeat(64)}`,
    pulledAt: "2026-01-01T00:00:00.000Z",
  };
  const b = {
    reference: "docker.io/library/b:1",
    digest: `sha256:${"b".repeat(64)}`,
    platform: { os: "linux", architecture: "amd64" },
    pulledAt: "2026-01-02T00:00:00.000Z",
    indexDigest: `sha256:${"c".repeat(64)}`,
  };
  assert.deepEqual(await store.listRefs(), []);
  await store.setRef(b);
  await store.setRef(a);
  assert.deepEqual(await store.getRef(b.reference), b);
  assert.deepEqual(await store.listRefs(), [a, b]);
  assert.deepEqual(
    ls(join(r, "refs")).sort(),
    [`${sha256Digest(a.reference).slice(7)}.json`, `${sha256Digest(b.reference).slice(7)}.json`].sort(),
  );
  await store.setRef({ ...a, digest: b.digest });
  assert.equal((await store.getRef(a.reference))?.digest, b.digest, "replaced");
  assert.equal(await store.removeRef(a.reference), true);
  assert.equal(await store.removeRef(a.reference), false);
  assert.equal(await store.getRef(a.reference), undefined);
  writeFileSync(join(r, "refs", `${"d".repeat(64)}.json`), "{torn");
  assert.deepEqual(await store.listRefs(), [b], "a foreign file is skipped");
});

test("gc removes what no ref, lease or machine reaches; shared layers stay", async () => {
  const store = new ContentStore(root(), { isAlive });
  const one = makeImage({ layerSizes: [1000, 2000] });
  // two shares one's first layer
  const two = makeImage({ layerBytes: [one.layerBytes[0]!, Buffer.alloc(3000, 2)] });
  await storeImage(store, one);
  await storeImage(store, two);
  const stray = Buffer.from("stray blob");
  await store.ingestBytes(desc(stray), stray);
  await store.setRef({ reference: "r/one:1", digest: one.manifest.digest, pulledAt: "t" });
  await store.setRef({ reference: "r/two:1", digest: two.manifest.digest, pulledAt: "t" });

  const first = await store.gc();
  assert.deepEqual(first.removed, [sha256Digest(stray)]);
  assert.equal(first.freedBytes, stray.byteLength);

  await store.removeRef("r/one:1");
  const kept = await store.gc(new Set([one.manifest.digest]));
  assert.deepEqual(kept.removed, [], "a machine still uses one");

  const freed = await store.gc();
  assert.deepEqual(new Set(freed.removed), new Set([one.manifest.digest, one.config.digest, one.layers[1]!.digest]));
  assert.equal(freed.freedBytes, one.manifestBytes.byteLength + one.configBytes.byteLength + 2000);
  assert.ok(await store.has(one.layers[0]!), "shared with two");
  for (const d of [two.manifest, two.config, ...two.layers]) assert.ok(await store.has(d.digest));
});

test("gc follows an index to the manifests it lists, and honours live leases only", async () => {
  const store = new ContentStore(root(), { isAlive });
  const img = makeImage({ layerSizes: [100] });
  const index = makeIndex([img]);
  await storeImage(store, img);
  await store.ingestBytes(index.descriptor, index.bytes);
  await store.setRef({ reference: "r/i:1", digest: index.descriptor.digest, pulledAt: "t" });
  assert.deepEqual((await store.gc()).removed, []);
  await store.removeRef("r/i:1");
  await store.setRef({
    reference: "r/m:1",
    digest: img.manifest.digest,
    indexDigest: index.descriptor.digest,
    pulledAt: "t",
  });
  assert.deepEqual((await store.gc()).removed, [], "indexDigest keeps the index");
  await store.removeRef("r/m:1");

  const lease = await store.lease([img.manifest.digest]);
  assert.deepEqual((await store.gc()).removed, [index.descriptor.digest], "the lease keeps the image");
  await lease.release();
  const deadLease = join(store.root, "leases", `${DEAD}.abcd.json`);
  writeFileSync(deadLease, JSON.stringify({ pid: DEAD, digests: [img.manifest.digest] }));
  assert.equal((await store.gc()).removed.length, 3, "a dead process's lease keeps nothing");
  assert.equal(existsSync(deadLease), false);
});

test("a blob named only at commit is leased before it appears", async () => {
  const store = new ContentStore(root(), { isAlive });
  const lease = await store.lease([]);
  const got = await store.ingestStream([Buffer.from("imported layer")], undefined, lease);
  assert.equal(got.digest, sha256Digest("imported layer"));
  assert.deepEqual((await store.gc()).removed, []);
  await lease.release();
  assert.deepEqual((await store.gc()).removed, [got.digest]);
});

test("gc clears partial downloads of processes that are gone", async () => {
  const r = root();
  const store = new ContentStore(r, { isAlive });
  mkdirSync(join(r, "ingest"), { recursive: true });
  writeFileSync(join(r, "ingest", `${"e".repeat(64)}.${DEAD}.aa`), Buffer.alloc(50));
  writeFileSync(join(r, "ingest", `${"e".repeat(64)}.${process.pid}.bb`), Buffer.alloc(7));
  mkdirSync(join(r, "refs"), { recursive: true });
  writeFileSync(join(r, "refs", `.tmp.${DEAD}.abcdef`), "{");
  const res = await store.gc();
  assert.equal(res.freedBytes, 51);
  assert.deepEqual(ls(join(r, "ingest")), [`${"e".repeat(64)}.${process.pid}.bb`]);
  assert.deepEqual(ls(join(r, "refs")), []);
});

test("a full disk is MM_DISK_FULL and leaves no temp file", async () => {
  const r = root();
  const store = new ContentStore(r, {
    // The ingest file is created as usual; its writes go to /dev/full (ENOSPC from the kernel).
    openFile: async (path, flags, mode) => {
      await (await open(path, flags, mode)).close();
      return open("/dev/full", "r+");
    },
  });
  const bytes = Buffer.alloc(10_000, 1);
  await assert.rejects(store.ingestBytes(desc(bytes), bytes), (e) => isMmError(e, "MM_DISK_FULL"));
  assert.deepEqual(ls(join(r, "ingest")), []);
  assert.equal(await store.has(sha256Digest(bytes)), false);
});
