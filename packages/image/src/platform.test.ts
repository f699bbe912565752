import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import {
  formatPlatform,
  hostPlatform,
  normalizePlatform,
  parsePlatform,
  platformRank,
  selectManifest,
} from "./platform.js";
import type { Descriptor, Index, Platform } from "./types.js";

const desc = (platform: Platform | undefined, n: number): Descriptor => ({
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  digest: `sha256:${n.toString(16).padStart(64, "0")}`,
  size: 100 + n,
  ...(platform ? { platform } : {}),
});
const index = (...ps: (Platform | undefined)[]): Index => ({ schemaVersion: 2, manifests: ps.map(desc) });
const P = (s: string): Platform => {
  const [os, architecture, variant] = s.split("/") as [string, string, string?];
  return { os, architecture, ...(variant ? { variant } : {}) };
};

test("hostPlatform maps Node's process.arch to OCI names", () => {
  assert.deepEqual(hostPlatform("x64"), P("linux/amd64"));
  assert.deepEqual(hostPlatform("arm64"), P("linux/arm64/v8"));
  assert.deepEqual(hostPlatform("arm"), P("linux/arm/v7"));
  assert.deepEqual(hostPlatform("ia32"), P("linux/386"));
  assert.doesNotThrow(() => hostPlatform());
  assert.throws(
    () => hostPlatform("pdp11"),
    (e) => isMmError(e, "MM_NO_MATCHING_PLATFORM"),
  );
});

test("parsePlatform reads os/arch[/variant] and normalises spellings", () => {
  const cases: [string, string][] = [
    ["linux/amd64", "linux/amd64"],
    ["linux/x86_64", "linux/amd64"],
    ["linux/amd64/v1", "linux/amd64"],
    ["linux/amd64/v3", "linux/amd64/v3"],
    ["linux/arm64/v8", "linux/arm64/v8"],
    ["linux/aarch64", "linux/arm64"],
    ["linux/arm64/8", "linux/arm64/v8"],
    ["linux/arm", "linux/arm/v7"],
    ["linux/armhf", "linux/arm/v7"],
    ["linux/armel", "linux/arm/v6"],
    ["linux/arm/6", "linux/arm/v6"],
    ["LINUX/AMD64", "linux/amd64"],
    ["arm64", "linux/arm64"],
    ["linux/i386", "linux/386"],
    ["linux/s390x", "linux/s390x"],
  ];
  for (const [text, want] of cases) assert.equal(formatPlatform(parsePlatform(text)), want, text);
  for (const text of ["", "linux/", "/amd64", "a/b/c/d", "linux/amd 64", "linux//v8"]) {
    assert.throws(
      () => parsePlatform(text),
      (e) => isMmError(e, "MM_USAGE"),
      text,
    );
  }
});

test("platformRank: exact is 0, older variants of levelled arches rank after, the rest does not run", () => {
  const rows: [string, string, number | undefined][] = [
    ["linux/amd64", "linux/amd64", 0],
    ["linux/amd64", "linux/arm64", undefined],
    ["linux/amd64", "windows/amd64", undefined],
    ["linux/arm64/v8", "linux/arm64", 0],
    ["linux/arm64", "linux/arm64/v8", 0],
    ["linux/arm64/v8", "linux/arm64/v9", undefined],
    ["linux/arm64/v9", "linux/arm64/v8", 10],
    ["linux/arm/v7", "linux/arm/v6", 10],
    ["linux/arm/v7", "linux/arm/v5", 20],
    ["linux/arm/v6", "linux/arm/v7", undefined],
    ["linux/arm", "linux/arm/v7", 0],
    ["linux/amd64/v3", "linux/amd64", 20],
    ["linux/amd64", "linux/amd64/v2", undefined],
    ["linux/ppc64le", "linux/ppc64le", 0],
    ["linux/riscv64/rva22", "linux/riscv64", undefined],
  ];
  for (const [want, have, rank] of rows) assert.equal(platformRank(P(want), P(have)), rank, `${want} ← ${have}`);
});

test("selectManifest picks the exact match, else the closest compatible variant", () => {
  const i = index(P("linux/amd64"), P("linux/arm/v6"), P("linux/arm/v7"), P("linux/arm64/v8"), P("unknown/unknown"));
  assert.equal(selectManifest(i, P("linux/amd64")).size, 100);
  assert.equal(selectManifest(i, P("linux/arm/v7")).size, 102);
  assert.equal(selectManifest(i, P("linux/arm/v6")).size, 101);
  assert.equal(selectManifest(i, P("linux/arm64")).size, 103, "arm64 ↔ arm64/v8");
  assert.equal(selectManifest(i, hostPlatform("arm64")).size, 103);
  const arm5 = index(P("linux/arm/v5"), P("linux/arm/v6"));
  assert.equal(selectManifest(arm5, P("linux/arm/v8")).size, 101, "the highest level not above the host's");
  const dup = index(P("linux/amd64"), P("linux/amd64"));
  assert.equal(selectManifest(dup, P("linux/amd64")).size, 100, "ties go to the first listed");
});

test("no match is MM_NO_MATCHING_PLATFORM listing the platforms there are (attestations left out)", () => {
  const i = index(P("linux/arm64/v8"), P("linux/s390x"), undefined, P("unknown/unknown"), P("linux/s390x"));
  assert.throws(
    () => selectManifest(i, P("linux/amd64"), "docker.io/library/x:1"),
    (e) =>
      isMmError(e, "MM_NO_MATCHING_PLATFORM") &&
      e.message.includes("docker.io/library/x:1 has no linux/amd64 variant; available: linux/arm64/v8, linux/s390x"),
  );
  assert.throws(
    () => selectManifest(index(), P("linux/amd64")),
    (e) => isMmError(e, "MM_NO_MATCHING_PLATFORM") && /available: none/.test(e.message),
  );
});

test("normalisation is idempotent and formatting round-trips through parsing", () => {
  const arch = fc.constantFrom("amd64", "x86_64", "arm64", "aarch64", "arm", "armhf", "386", "s390x", "riscv64");
  const variant = fc.constantFrom(undefined, "v5", "v6", "v7", "v8", "8", "v9", "v1", "v3");
  fc.assert(
    fc.property(arch, variant, (architecture, v) => {
      const p = normalizePlatform({ os: "linux", architecture, ...(v ? { variant: v } : {}) });
      assert.deepEqual(normalizePlatform(p), p);
      assert.deepEqual(parsePlatform(formatPlatform(p)), p);
      assert.equal(platformRank(p, p), 0);
    }),
  );
});
