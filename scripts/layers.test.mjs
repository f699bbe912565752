// Imports point down only (docs/ARCHITECTURE.md, "Layers"): each package may import
// only the packages below it, and core imports no I/O module at all.

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

const root = join(import.meta.dirname, "..");
const ALLOWED = {
  "packages/core": [],
  "packages/vmm": ["@mm/core"],
  "packages/image": ["@mm/core"],
  "packages/net": ["@mm/core"],
  "packages/runtime": ["@mm/core", "@mm/vmm", "@mm/image", "@mm/net"],
  "packages/api": ["@mm/core", "@mm/runtime"],
  // The SDK is published on its own: it imports nothing of mm's internals.
  "packages/sdk": [],
  "apps/cli": ["@mm/core", "@mm/runtime", "@mm/api", "@micromachines/sdk"],
};
const IO_MODULES =
  /^(node:)?(fs|fs\/promises|child_process|net|http|https|os|sqlite|dgram|tls|worker_threads|cluster)$/;

function sources(dir) {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts"))
    .map((e) => join(e.parentPath, e.name));
}

function imports(file) {
  const text = readFileSync(file, "utf8");
  return [
    ...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^"']*?from\s+["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)/g),
  ].map((m) => m[1] ?? m[2]);
}

for (const [pkg, allowed] of Object.entries(ALLOWED)) {
  test(`${pkg} imports only ${allowed.length ? allowed.join(", ") : "no other package"}`, () => {
    for (const file of sources(join(root, pkg, "src"))) {
      for (const spec of imports(file)) {
        if (spec.startsWith("@mm/") || spec.startsWith("@micromachines/"))
          assert.ok(allowed.includes(spec), `${file} imports ${spec}`);
      }
    }
  });
}

test("packages/core does no I/O (tests aside)", () => {
  for (const file of sources(join(root, "packages/core/src")).filter((f) => !f.endsWith(".test.ts"))) {
    for (const spec of imports(file)) assert.doesNotMatch(spec, IO_MODULES, `${file} imports ${spec}`);
  }
});

test("the checker sees imports (it is not vacuous)", () => {
  const seen = sources(join(root, "packages/runtime/src")).flatMap(imports);
  assert.ok(seen.includes("@mm/vmm") && seen.includes("node:fs/promises"));
});
