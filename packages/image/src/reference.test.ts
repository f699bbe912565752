import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import {
  familiarReference,
  formatReference,
  manifestSelector,
  normalizeRegistryName,
  parseReference,
  registryApiHost,
} from "./reference.js";
import type { ImageReference } from "./types.js";

const D = `sha256:${"a".repeat(64)}`;

// What Docker's ParseNormalizedNamed makes of each (checked against distribution/reference's tests).
const GOOD: [string, ImageReference][] = [
  ["busybox", { registry: "docker.io", repository: "library/busybox", tag: "latest" }],
  ["busybox:1.36", { registry: "docker.io", repository: "library/busybox", tag: "1.36" }],
  ["library/busybox", { registry: "docker.io", repository: "library/busybox", tag: "latest" }],
  ["docker.io/busybox", { registry: "docker.io", repository: "library/busybox", tag: "latest" }],
  ["index.docker.io/busybox", { registry: "docker.io", repository: "library/busybox", tag: "latest" }],
  ["index.docker.io/user/app:v1", { registry: "docker.io", repository: "user/app", tag: "v1" }],
  ["user/app", { registry: "docker.io", repository: "user/app", tag: "latest" }],
  ["user/app/sub", { registry: "docker.io", repository: "user/app/sub", tag: "latest" }],
  [`busybox@${D}`, { registry: "docker.io", repository: "library/busybox", digest: D }],
  [`busybox:1.36@${D}`, { registry: "docker.io", repository: "library/busybox", tag: "1.36", digest: D }],
  ["nginx:alpine", { registry: "docker.io", repository: "library/nginx", tag: "alpine" }],
  ["ghcr.io/owner/repo:tag", { registry: "ghcr.io", repository: "owner/repo", tag: "tag" }],
  ["quay.io/a/b/c:1.0-rc.1", { registry: "quay.io", repository: "a/b/c", tag: "1.0-rc.1" }],
  ["localhost/app", { registry: "localhost", repository: "app", tag: "latest" }],
  ["localhost:5000/app:dev", { registry: "localhost:5000", repository: "app", tag: "dev" }],
  ["127.0.0.1:5000/busybox", { registry: "127.0.0.1:5000", repository: "busybox", tag: "latest" }],
  ["[::1]:5000/busybox:x", { registry: "[::1]:5000", repository: "busybox", tag: "x" }],
  ["[2001:db8::1]/a", { registry: "[2001:db8::1]", repository: "a", tag: "latest" }],
  ["Registry.Example/app", { registry: "Registry.Example", repository: "app", tag: "latest" }],
  ["Foo/bar", { registry: "Foo", repository: "bar", tag: "latest" }],
  [
    "a.b-c.example.com:443/x_y/z__w/p--q.r:T_1",
    {
      registry: "a.b-c.example.com:443",
      repository: "x_y/z__w/p--q.r",
      tag: "T_1",
    },
  ],
  ["localhost:5000", { registry: "docker.io", repository: "library/localhost", tag: "5000" }],
  ["a/b:_v", { registry: "docker.io", repository: "a/b", tag: "_v" }],
  ["ghcr.io", { registry: "docker.io", repository: "library/ghcr.io", tag: "latest" }],
  [`ecr.example.com/app@${D}`, { registry: "ecr.example.com", repository: "app", digest: D }],
];

const BAD: [string, RegExp][] = [
  ["", /empty/],
  ["a".repeat(64).replace(/a/g, "f"), /image ID/],
  ["Busybox", /lowercase/],
  ["user/App", /lowercase/],
  ["busybox:", /invalid tag/],
  ["busybox:-x", /invalid tag/],
  [`busybox:${"t".repeat(129)}`, /invalid tag/],
  ["busybox:a b", /invalid tag/],
  ["busybox@sha256:abc", /digest/],
  [`busybox@sha256:${"A".repeat(64)}`, /digest/],
  [`busybox@sha512:${"a".repeat(128)}`, /unsupported digest algorithm "sha512"/],
  ["busybox@", /digest/],
  ["/busybox", /repository name/],
  ["busybox/", /repository name/],
  ["a//b", /repository name/],
  ["-a/b", /repository name/],
  ["a../b", /invalid registry "a.."/],
  ["x/a..b", /repository name/],
  ["a___b", /repository name/],
  ["a.-b", /repository name/],
  ["ghcr.io/", /no repository/],
  ["-bad.io/a", /invalid registry/],
  ["foo_bar.com:8080/x", /invalid registry/],
  ["_tag/x:_t", /repository name/],
  ["bad-.io/a", /invalid registry/],
  ["a.io:99999/x", /invalid port/],
  ["a.io:0/x", /invalid port/],
  ["a.io:/x", /invalid registry/],
  ["[zz::1]:5000/x", /invalid registry/],
  [" busybox", /repository name/],
  ["busybox ", /invalid tag|repository name/],
  [`r.io/${"a".repeat(251)}`, /longer than 255/],
];

test("parseReference normalises as Docker does", () => {
  for (const [text, want] of GOOD) assert.deepEqual(parseReference(text), want, text);
});

test("parseReference rejects what the distribution grammar rejects, with MM_BAD_REFERENCE", () => {
  for (const [text, why] of BAD) {
    assert.throws(
      () => parseReference(text),
      (e) => isMmError(e, "MM_BAD_REFERENCE") && why.test(e.message),
      `${JSON.stringify(text)} should fail with ${why}`,
    );
  }
});

test("formatReference writes the fully qualified form; familiarReference the short one", () => {
  assert.equal(formatReference(parseReference("busybox")), "docker.io/library/busybox:latest");
  assert.equal(formatReference(parseReference(`busybox@${D}`)), `docker.io/library/busybox@${D}`);
  assert.equal(formatReference(parseReference(`a.io/x:1@${D}`)), `a.io/x:1@${D}`);
  assert.equal(familiarReference(parseReference("docker.io/library/busybox")), "busybox:latest");
  assert.equal(familiarReference(parseReference("user/app:1")), "user/app:1");
  assert.equal(familiarReference(parseReference("ghcr.io/o/r:t")), "ghcr.io/o/r:t");
  assert.equal(familiarReference(parseReference("docker.io/a.b/c")), "docker.io/a.b/c:latest", "kept when ambiguous");
});

test("registry API host, manifest selector and registry-name normalisation", () => {
  assert.equal(registryApiHost("docker.io"), "registry-1.docker.io");
  assert.equal(registryApiHost("localhost:5000"), "localhost:5000");
  assert.equal(manifestSelector(parseReference("busybox:1")), "1");
  assert.equal(manifestSelector(parseReference(`busybox:1@${D}`)), D);
  for (const k of ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io", "docker.io"]) {
    assert.equal(normalizeRegistryName(k), "docker.io", k);
  }
  assert.equal(normalizeRegistryName("https://GHCR.io"), "ghcr.io");
  assert.equal(normalizeRegistryName("http://localhost:5000/v2/"), "localhost:5000");
});

// Generators for normalised references: what parseReference can return.
const alnum = fc.stringMatching(/^[a-z0-9]{1,6}$/);
const separator = fc.constantFrom(".", "_", "__", "-", "--");
const pathComponent = fc
  .tuple(alnum, fc.array(fc.tuple(separator, alnum), { maxLength: 2 }))
  .map(([head, tail]) => head + tail.map(([s, a]) => s + a).join(""));
const domainComponent = fc.stringMatching(/^[a-zA-Z0-9]([a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?$/);
const registry = fc.oneof(
  fc.constant("docker.io"),
  fc.constant("localhost"),
  fc.constantFrom("127.0.0.1:5000", "[::1]:5000", "[fe80::1]"),
  fc
    .tuple(fc.array(domainComponent, { minLength: 2, maxLength: 3 }), fc.option(fc.integer({ min: 1, max: 65535 })))
    .map(([parts, port]) => parts.join(".") + (port === null ? "" : `:${port}`))
    .filter((r) => r.toLowerCase() !== "index.docker.io"),
  fc.tuple(domainComponent, fc.integer({ min: 1, max: 65535 })).map(([h, p]) => `${h}:${p}`),
);
const tag = fc.stringMatching(/^[\w][\w.-]{0,20}$/);
const digest = fc.stringMatching(/^[a-f0-9]{64}$/).map((h) => `sha256:${h}`);
const reference: fc.Arbitrary<ImageReference> = fc
  .record({
    registry,
    path: fc.array(pathComponent, { minLength: 1, maxLength: 3 }),
    tag: fc.option(tag),
    digest: fc.option(digest),
  })
  .map(({ registry, path, tag, digest }) => {
    const repository = registry === "docker.io" && path.length === 1 ? `library/${path[0]}` : path.join("/");
    const pinned = tag === null && digest === null ? "latest" : tag;
    return {
      registry,
      repository,
      ...(pinned !== null ? { tag: pinned } : {}),
      ...(digest !== null ? { digest } : {}),
    };
  });

test("parse(format(x)) == x for every normalised reference", () => {
  fc.assert(
    fc.property(reference, (ref) => {
      assert.deepEqual(parseReference(formatReference(ref)), ref);
    }),
    { numRuns: 500 },
  );
});

test("parse is idempotent on its own output, and familiar forms parse to the same reference", () => {
  fc.assert(
    fc.property(reference, (ref) => {
      const once = parseReference(formatReference(ref));
      assert.deepEqual(parseReference(formatReference(once)), once);
      assert.deepEqual(parseReference(familiarReference(ref)), ref);
    }),
    { numRuns: 300 },
  );
});

test("parseReference never throws anything but MM_BAD_REFERENCE", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 80 }), (text) => {
      try {
        parseReference(text);
      } catch (e) {
        assert.ok(isMmError(e, "MM_BAD_REFERENCE"), String(e));
      }
    }),
    { numRuns: 1000 },
  );
});
