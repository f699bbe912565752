// scripts/setup.sh is idempotent: on a set-up host a second run installs nothing,
// rebuilds nothing, and says so.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

test("a second scripts/setup.sh --no-demo reuses everything and says so", () => {
  const r = spawnSync(join(import.meta.dirname, "setup.sh"), ["--no-demo"], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /Debian packages\n\s+all \d+ present/);
  assert.match(r.stdout, /npm packages \(and Node 24\)\n\s+up to date/);
  assert.match(r.stdout, /node v24\./);
  assert.match(r.stdout, /kernel \S+ cached/);
});
