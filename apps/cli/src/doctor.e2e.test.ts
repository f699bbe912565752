// `mm doctor` on this host: every check passes once scripts/setup.sh has run, and a
// broken piece is reported with its fix.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { harness } from "./test-helpers.js";

const h = harness();
after(() => h.cleanup());

type Check = { name: string; ok: boolean; detail: string; hint?: string };

test("a set-up host passes every check and names its acceleration", async () => {
  const r = await h.mm(["doctor", "--json"]);
  const checks = JSON.parse(r.stdout) as Check[];
  assert.deepEqual(
    checks.filter((c) => !c.ok),
    [],
    r.stdout,
  );
  assert.equal(r.code, 0);
  const accel = checks.find((c) => c.name === "acceleration");
  assert.match(accel?.detail ?? "", /^(kvm|tcg) /);
  if (accel?.detail.startsWith("tcg")) assert.match(accel.detail, /not a security boundary/);
  // As root, the VMMs run jailed, with cgroups (these hosts are v1 hybrid).
  assert.match(checks.find((c) => c.name === "VMM jail")?.detail ?? "", /^on: .*cgroups v[12]/);
});

test("a missing kernel fails its check with a fix, and doctor exits non-zero", async () => {
  const r = await h.mm(["doctor"], { MM_KERNEL: "/nonexistent/vmlinux" });
  assert.match(r.stdout, /^FAIL {2}guest kernel: \/nonexistent\/vmlinux\n {6}fix: .*build\.sh/m);
  assert.equal(r.code, 1);
});
