import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, beforeEach, test } from "node:test";
import { isMmError } from "@mm/core";
import { ContentStore } from "./content-store.js";
import { sha256Digest } from "./digest.js";
import { getImage, mapBounded, pull } from "./pull.js";
import { RegistryClient, type RegistryClientOptions } from "./registry.js";
import { dropAfter, makeImage, RegistryDouble, serveBytes, type TestImage } from "./registry-double.js";
import type { Platform, PullEvent } from "./types.js";

const amd64: Platform = { os: "linux", architecture: "amd64" };
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

let d: RegistryDouble;
let image: TestImage;
beforeEach(async () => {
  d = await RegistryDouble.start();
  image = makeImage({ platform: amd64, layerSizes: [200_000, 5_000, 70_000] });
  d.pushIndex("library/busybox", "latest", [image, makeImage({ platform: { os: "linux", architecture: "arm64" } })]);
});
afterEach(() => d.close());

function store(options: ConstructorParameters<typeof ContentStore>[1] = {}): ContentStore {
  const dir = mkdtempSync(join(tmpdir(), "mm-pull-"));
  dirs.push(dir);
  return new ContentStore(join(dir, "content"), options);
}
function client(extra: Partial<RegistryClientOptions> = {}): RegistryClient {
  return new RegistryClient({ insecureRegistries: [d.host], sleep: async () => {}, retry: { attempts: 3 }, ...extra });
}
const name = () => `${d.host}/library/busybox:latest`;

test("pull stores index, manifest, config and layers, verified, and writes the ref last", async () => {
  const s = store();
  const events: PullEvent[] = [];
  const img = await pull(name(), { store: s, client: client(), platform: amd64, onEvent: (e) => events.push(e) });
  assert.equal(img.reference, `${d.host}/library/busybox:latest`);
  assert.equal(img.digest, image.manifest.digest);
  assert.equal(img.configDigest, image.config.digest);
  assert.equal(img.config.os, "linux");
  for (const [i, l] of image.layers.entries()) assert.ok(readFileSync(s.path(l.digest)).equals(image.layerBytes[i]!));
  const indexDigest = sha256Digest(d.manifests.get("library/busybox:latest")!.bytes);
  for (const dg of [indexDigest, image.manifest.digest, image.config.digest]) assert.ok(await s.has(dg), dg);
  const ref = await s.getRef(img.reference);
  assert.equal(ref?.digest, image.manifest.digest);
  assert.equal(ref?.indexDigest, indexDigest);
  assert.deepEqual(ref?.platform, amd64);
  assert.deepEqual(readdirSync(join(s.root, "leases")), [], "the lease is released");
  assert.deepEqual(readdirSync(join(s.root, "ingest")), []);

  assert.deepEqual(events[0], { type: "resolved", reference: img.reference, digest: img.digest, layers: 3 });
  assert.deepEqual(events.at(-1), { type: "done", digest: img.digest });
  for (const l of image.layers) {
    const mine = events.filter((e) => "digest" in e && e.digest === l.digest);
    assert.deepEqual(mine[0], { type: "layer-start", digest: l.digest, size: l.size, cached: false });
    assert.deepEqual(mine.at(-2), { type: "layer-progress", digest: l.digest, bytes: l.size, size: l.size });
    assert.deepEqual(mine.at(-1), { type: "layer-done", digest: l.digest });
  }
  assert.deepEqual(await getImage(s, name()), img);
  const byDigest = `${d.host}/library/busybox@${img.digest}`;
  assert.equal((await getImage(s, byDigest)).digest, img.digest, "a stored manifest is found by its digest");
  await assert.rejects(getImage(s, `${d.host}/library/busybox@${indexDigest}`), (e) =>
    isMmError(e, "MM_NO_SUCH_IMAGE"),
  );
});

test("a second pull asks only for the tag; a pinned one with everything stored asks nothing", async () => {
  const s = store();
  const first = await pull(name(), { store: s, client: client(), platform: amd64 });
  const before = d.requests.length;
  const events: PullEvent[] = [];
  const c = client();
  await pull(name(), { store: s, client: c, platform: amd64, onEvent: (e) => events.push(e) });
  const asked = d.requests.slice(before).map((q) => q.path.replace(/\?.*/, ""));
  assert.deepEqual(asked, ["/v2/library/busybox/manifests/latest", "/token", "/v2/library/busybox/manifests/latest"]);
  const starts = events.filter((e) => e.type === "layer-start");
  assert.equal(starts.length, 3);
  assert.ok(starts.every((e) => e.type === "layer-start" && e.cached));

  const pinned = `${d.host}/library/busybox@${first.digest}`;
  const n = d.requests.length;
  const img = await pull(pinned, { store: s, client: c, platform: amd64 });
  assert.equal(d.requests.length, n, "no request at all");
  assert.equal(img.digest, first.digest);
  assert.equal((await s.getRef(pinned))?.digest, first.digest);
});

test("a corrupt stored config is fetched again, not trusted", async () => {
  const s = store();
  await pull(name(), { store: s, client: client(), platform: amd64 });
  writeFileSync(s.path(image.config.digest), Buffer.alloc(image.config.size, 0x20));
  const img = await pull(name(), { store: s, client: client(), platform: amd64 });
  assert.equal(img.config.os, "linux");
  assert.ok(readFileSync(s.path(image.config.digest)).equals(image.configBytes));
});

test("layers download concurrently, at most `concurrency` at a time", async () => {
  const many = makeImage({ platform: amd64, layerSizes: [1000, 1001, 1002, 1003, 1004, 1005] });
  d.push("library/many", "1", many);
  let inflight = 0;
  let peak = 0;
  for (const l of many.layers) {
    d.fault("storage", l.digest.slice(7), (req, res, double) => {
      inflight++;
      peak = Math.max(peak, inflight);
      setTimeout(() => {
        inflight--;
        double.serveBlob(req, res, double.blobs.get(l.digest)!);
      }, 25);
    });
  }
  await pull(`${d.host}/library/many:1`, { store: store(), client: client(), platform: amd64, concurrency: 2 });
  assert.equal(peak, 2);
});

test("layer progress is throttled to one event per interval", async () => {
  const events: PullEvent[] = [];
  await pull(name(), {
    store: store(),
    client: client(),
    platform: amd64,
    onEvent: (e) => events.push(e),
    now: () => 5,
  });
  const progress = events.filter((e) => e.type === "layer-progress");
  assert.equal(progress.length, 3, "a frozen clock leaves only each layer's final event");
});

test("a bad layer fails the pull: no ref, its temp file removed, the lease released", async () => {
  const s = store();
  const bad = image.layers[1]!;
  d.fault("storage", bad.digest.slice(7), serveBytes(Buffer.alloc(bad.size, 9)));
  await assert.rejects(pull(name(), { store: s, client: client(), platform: amd64 }), (e) =>
    isMmError(e, "MM_DIGEST_MISMATCH"),
  );
  assert.equal(await s.getRef(name()), undefined);
  assert.equal(await s.has(bad.digest), false);
  assert.deepEqual(readdirSync(join(s.root, "leases")), []);
  await assert.rejects(getImage(s, name()), (e) => isMmError(e, "MM_NO_SUCH_IMAGE"));
  for (const f of readdirSync(join(s.root, "ingest"))) assert.ok(!f.startsWith(bad.digest.slice(7)), f);
});

test("a pull that gave up mid-layer is resumed by the next one with Range", async () => {
  // Pretend every earlier pid is gone, so the second pull adopts the first one's partial file.
  const s = store({ isAlive: () => false });
  const big = image.layers[0]!;
  d.fault("storage", big.digest.slice(7), dropAfter(0), 1);
  d.fault("storage", big.digest.slice(7), dropAfter(150_000), 1);
  d.fault("storage", big.digest.slice(7), dropAfter(0), 5);
  await assert.rejects(pull(name(), { store: s, client: client({ retry: { attempts: 2 } }), platform: amd64 }), (e) =>
    isMmError(e, "MM_REGISTRY_UNAVAILABLE"),
  );
  const partial = readdirSync(join(s.root, "ingest")).filter((f) => f.startsWith(big.digest.slice(7)));
  assert.equal(partial.length, 1, "the verified prefix is kept");
  d.faults.length = 0;
  await pull(name(), { store: s, client: client(), platform: amd64 });
  const last = d.requestsTo("storage", big.digest.slice(7)).at(-1)!;
  const at = Number(/^bytes=(\d+)-$/.exec(last.headers.range ?? "")?.[1]);
  assert.ok(at >= 65_536, `resumed at ${at}`);
  assert.ok(readFileSync(s.path(big.digest)).equals(image.layerBytes[0]!));
  assert.deepEqual(readdirSync(join(s.root, "ingest")), []);
});

test("gc while a pull is in flight keeps what the pull has stored", async () => {
  const s = store();
  const slow = image.layers[0]!;
  let gcDone!: Promise<unknown>;
  d.fault("storage", slow.digest.slice(7), (req, res, double) => {
    gcDone = s.gc();
    void gcDone.then(() => double.serveBlob(req, res, double.blobs.get(slow.digest)!));
  });
  await pull(name(), { store: s, client: client(), platform: amd64, concurrency: 1 });
  assert.deepEqual(((await gcDone) as { removed: string[] }).removed, []);
  assert.ok(await s.has(image.manifest.digest));
  assert.ok(await s.has(image.config.digest));
  assert.deepEqual(await getImage(s, name()).then((i) => i.digest), image.manifest.digest);
});

test("getImage reports a missing ref or blob as MM_NO_SUCH_IMAGE", async () => {
  const s = store();
  await assert.rejects(getImage(s, "busybox"), (e) => isMmError(e, "MM_NO_SUCH_IMAGE"));
  await pull(name(), { store: s, client: client(), platform: amd64 });
  await s.delete(image.layers[2]!.digest);
  await assert.rejects(getImage(s, name()), (e) => isMmError(e, "MM_NO_SUCH_IMAGE") && /missing/.test(e.message));
  assert.ok(!existsSync(s.path(image.layers[2]!.digest)));
});

test("mapBounded runs everything, bounded, and stops taking work after a failure", async () => {
  let running = 0;
  let peak = 0;
  const done: number[] = [];
  await mapBounded([1, 2, 3, 4, 5, 6, 7], 3, async (n) => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 2));
    running--;
    done.push(n);
  });
  assert.equal(peak, 3);
  assert.deepEqual(done.sort(), [1, 2, 3, 4, 5, 6, 7]);
  const started: number[] = [];
  await assert.rejects(
    mapBounded([1, 2, 3, 4, 5], 1, async (n) => {
      started.push(n);
      if (n === 2) throw new Error("boom");
    }),
    /boom/,
  );
  assert.deepEqual(started, [1, 2]);
  await mapBounded([], 3, async () => assert.fail("no work"));
});
