// Runs the Engine conformance suite against real QEMU and the real guest kernel.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { isMmError } from "@mm/core";
import { type ConformanceFixture, engineConformance } from "./engine-conformance.js";
import { hostTscKhz } from "./host.js";
import { QemuEngine } from "./qemu-engine.js";

const repo = resolve(import.meta.dirname, "../../..");
const kernel = process.env.MM_KERNEL || join(process.env.MM_CACHE || "/var/cache/mm", "kernels/default/vmlinux");
const init = process.env.MM_INIT || join(repo, "guest/init/build/mm-init");
let work = "";
let fixture: ConformanceFixture;
let tscKhz: number | undefined;

before(async () => {
  for (const [what, p] of [
    ["guest kernel (scripts/setup.sh)", kernel],
    ["mm-init (make -C guest/init)", init],
  ]) {
    if (!existsSync(p as string)) throw new Error(`${what} missing at ${p}`);
  }
  work = mkdtempSync(join(tmpdir(), "mm-engine-"));
  const root = join(work, "root");
  mkdirSync(join(root, ".mm"), { recursive: true });
  for (const d of ["proc", "sys", "dev", "tmp"]) mkdirSync(join(root, d));
  copyFileSync(init, join(root, ".mm/init"));
  chmodSync(join(root, ".mm/init"), 0o755);
  execFileSync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", root, join(work, "root.ext4"), "16M"]);
  tscKhz = await hostTscKhz();
  fixture = {
    kernel,
    rootDisk: { path: join(work, "root.ext4"), format: "raw", readOnly: true },
    runDir: (name) => join(work, "run", name),
    scratch: work,
    accel: process.env.MM_ACCEL === "kvm" ? "kvm" : "tcg",
  };
});
after(() => rmSync(work, { recursive: true, force: true }));

const engine = () => new QemuEngine(tscKhz !== undefined ? { tscKhz } : {});

describe("QemuEngine conformance", () => {
  engineConformance(engine, () => fixture);
});

describe("QemuEngine errors", () => {
  test("a missing QEMU binary is MM_QEMU_MISSING", async () => {
    await assert.rejects(
      new QemuEngine({ qemuBinary: "/nonexistent/qemu" }).boot({
        id: "x",
        runDir: join(work, "run", "noqemu"),
        kernel,
        kernelArgs: [],
        rootDisk: fixture.rootDisk,
        cpus: 1,
        memoryMib: 128,
        accel: "tcg",
        agentChannel: false,
      }),
      (e) => isMmError(e, "MM_QEMU_MISSING"),
    );
  });
});
