// Builds and runs mm-init's C unit tests (test/protocol-test.c) under node's runner.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

const dir = join(import.meta.dirname, "..");

test("mm-init's C protocol unit tests pass", () => {
  const build = spawnSync("make", ["-s", "-C", dir, "build/protocol-test"], { encoding: "utf8" });
  assert.equal(build.status, 0, build.stderr);
  const run = spawnSync(join(dir, "build/protocol-test"), { encoding: "utf8" });
  assert.equal(run.status, 0, `${run.stdout}${run.stderr}`);
});
