// The acceleration choice against the real /dev/kvm of this host (KVM here is
// nested and cannot boot the guest; on a real host the same test sees "kvm").

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { chooseAccel, probeKvm } from "./accel.js";
import type { DiskSpec } from "./engine.js";
import { hostTscKhz, kvmDeviceUsable } from "./host.js";
import { QemuEngine } from "./qemu-engine.js";

const repo = resolve(import.meta.dirname, "../../..");
const kernel = process.env.MM_KERNEL || join(process.env.MM_CACHE || "/var/cache/mm", "kernels/default/vmlinux");
const init = process.env.MM_INIT || join(repo, "guest/init/build/mm-init");
let work = "";
let rootDisk: DiskSpec;
let engine: QemuEngine;

before(async () => {
  assert.ok(existsSync(kernel) && existsSync(init), "kernel and mm-init must be built (scripts/setup.sh)");
  work = mkdtempSync(join(tmpdir(), "mm-accel-"));
  mkdirSync(join(work, "root/.mm"), { recursive: true });
  for (const d of ["proc", "sys", "dev"]) mkdirSync(join(work, "root", d));
  copyFileSync(init, join(work, "root/.mm/init"));
  chmodSync(join(work, "root/.mm/init"), 0o755);
  execFileSync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", join(work, "root"), join(work, "root.ext4"), "16M"]);
  rootDisk = { path: join(work, "root.ext4"), format: "raw", readOnly: true };
  const tscKhz = await hostTscKhz();
  engine = new QemuEngine(tscKhz !== undefined ? { tscKhz } : {});
});
after(() => rmSync(work, { recursive: true, force: true }));

const input = (over: Record<string, unknown> = {}) => ({
  engine,
  kernel,
  rootDisk,
  runDir: join(work, "run"),
  cacheDir: join(work, "cache"),
  env: {},
  ...over,
});

test("MM_ACCEL overrides without probing", async () => {
  assert.deepEqual(await chooseAccel(input({ env: { MM_ACCEL: "tcg" } })), {
    accel: "tcg",
    source: "env",
    reason: "MM_ACCEL=tcg",
  });
  assert.equal((await chooseAccel(input({ env: { MM_ACCEL: "kvm" } }))).accel, "kvm");
});

test("a lazy root disk is made only when a probe boots", async () => {
  let made = 0;
  const lazy = async () => {
    made++;
    return rootDisk;
  };
  await chooseAccel(input({ rootDisk: lazy, env: { MM_ACCEL: "tcg" } }));
  await chooseAccel(input({ rootDisk: lazy, kvmDevice: join(work, "no-such-kvm") }));
  assert.equal(made, 0);
  const probed = await probeKvm(input({ rootDisk: lazy, kernel: join(work, "junk-vmlinux"), timeoutMs: 3000 }));
  assert.equal(probed.accel, "tcg");
  assert.equal(made, 1);
});

test("no usable /dev/kvm means TCG, without a probe", async () => {
  const d = await chooseAccel(input({ kvmDevice: join(work, "no-such-kvm") }));
  assert.deepEqual([d.accel, d.source], ["tcg", "no-kvm-device"]);
});

test("a kernel that cannot boot is never trusted with KVM", async () => {
  const junk = join(work, "junk-vmlinux");
  writeFileSync(junk, Buffer.alloc(4096, 0x90));
  const d = await probeKvm(input({ kernel: junk, timeoutMs: 3000 }));
  assert.equal(d.accel, "tcg", d.reason);
});

test("the real kernel gets a verdict by booting, which is then cached per host and kernel", async () => {
  // A host without /dev/kvm at all (some CI machines) still probes: a stand-in device
  // file passes the usability check, and the probe's boot under KVM then fails for real.
  let kvmDevice: string | undefined;
  if (!(await kvmDeviceUsable())) {
    kvmDevice = join(work, "stand-in-kvm");
    writeFileSync(kvmDevice, "");
  }
  const over = { cacheDir: join(work, "cache-real"), ...(kvmDevice && { kvmDevice }) };
  const first = await chooseAccel(input(over));
  assert.equal(first.source, "probe");
  assert.match(first.reason, first.accel === "kvm" ? /booted to init under KVM/ : /KVM/);
  const t = Date.now();
  const second = await chooseAccel(input(over));
  assert.deepEqual([second.accel, second.source], [first.accel, "cache"]);
  assert.ok(Date.now() - t < 1000, "a cached verdict does not boot anything");
});
