// Builds and runs mm-init's C unit tests (test/protocol-test.c, test/net-test.c,
// test/disk-test.c) under node's runner.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";

const dir = join(import.meta.dirname, "..");

for (const [name, what] of [
  ["protocol-test", "protocol unit tests (frames, CONFIG, EXEC and IDENTITY records, MOUNT and its kinds)"],
  ["net-test", "network file tests (/etc/resolv.conf, /etc/hosts, symlinks)"],
  ["disk-test", "disk tests (a disk found by serial, mount points made, mount(2) arguments per kind)"],
]) {
  test(`mm-init's C ${what} pass`, () => {
    const build = spawnSync("make", ["-s", "-C", dir, `build/${name}`], { encoding: "utf8" });
    assert.equal(build.status, 0, build.stderr);
    const run = spawnSync(join(dir, `build/${name}`), { encoding: "utf8" });
    assert.equal(run.status, 0, `${run.stdout}${run.stderr}`);
  });
}
