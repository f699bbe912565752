// Bad input and faults: each gives a stable code and a hint, and leaves no orphan
// process and no record that `mm ps`/`mm rm` cannot handle.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { harness, processesMatching, until } from "./test-helpers.js";

const h = harness();
const scratch = mkdtempSync(join(tmpdir(), "mm-faults-"));
after(async () => {
  await h.cleanup();
  rmSync(scratch, { recursive: true, force: true });
});

type Machine = {
  id: string;
  name: string;
  state: string;
  error: { code: string } | null;
  pids: { vmm: number | null; supervisor: number | null };
};
const all = async (): Promise<Machine[]> => JSON.parse((await h.mm(["ps", "-a", "--json"])).stdout) as Machine[];

function expectError(r: { code: number | null; stderr: string }, code: string, exit = 125) {
  assert.match(r.stderr, new RegExp(`mm: ${code}: `), r.stderr);
  assert.match(r.stderr, /\n {2}hint: \S/);
  assert.equal(r.code, exit, r.stderr);
}

describe("bad command lines", () => {
  test("an unknown flag is MM_USAGE", async () => expectError(await h.mm(["run", "--bogus"]), "MM_USAGE"));
  test("an unknown command is MM_USAGE", async () => expectError(await h.mm(["frobnicate"]), "MM_USAGE"));
  test("a bad memory size is MM_INVALID_MEMORY", async () =>
    expectError(await h.mm(["run", "-m", "lots", "--", "true"]), "MM_INVALID_MEMORY"));
  test("a bad CPU count is MM_INVALID_CPUS", async () =>
    expectError(await h.mm(["run", "--cpus", "0", "--", "true"]), "MM_INVALID_CPUS"));
  test("a bad name is MM_INVALID_NAME", async () =>
    expectError(await h.mm(["run", "--name", "no/slash", "--", "true"]), "MM_INVALID_NAME"));
  test("an unknown machine is MM_NO_SUCH_MACHINE", async () =>
    expectError(await h.mm(["stop", "ghost"]), "MM_NO_SUCH_MACHINE"));
  test("--json errors are one JSON object", async () => {
    const r = await h.mm(["ps", "--json", "--bogus"]);
    assert.equal(JSON.parse(r.stderr).error.code, "MM_USAGE");
  });
  test("none of these left a machine behind", async () => assert.deepEqual(await all(), []));
});

describe("a broken host", () => {
  test("a missing guest kernel is MM_KERNEL_MISSING; the record is failed and removable", async () => {
    const r = await h.mm(["run", "--name", "nokernel", "--", "true"], { MM_KERNEL: "/nonexistent/vmlinux" });
    expectError(r, "MM_KERNEL_MISSING");
    const m = (await all()).find((x) => x.name === "nokernel");
    assert.deepEqual([m?.state, m?.error?.code], ["failed", "MM_KERNEL_MISSING"]);
    assert.equal((await h.mm(["rm", "nokernel"])).code, 0);
  });

  test("QEMU not installed is MM_QEMU_MISSING", async () => {
    expectError(
      await h.mm(["run", "--rm", "--", "true"], { MM_QEMU: "/nonexistent/qemu-system-x86_64" }),
      "MM_QEMU_MISSING",
    );
  });

  test("a missing mm-init is MM_INIT_MISSING", async () => {
    expectError(await h.mm(["run", "--rm", "--", "true"], { MM_INIT: "/nonexistent/mm-init" }), "MM_INIT_MISSING");
  });

  test("an unwritable state root is MM_STATE_UNWRITABLE", async () => {
    writeFileSync(join(scratch, "a-file"), "");
    const r = await h.mm(["ps"], { MM_STATE: join(scratch, "a-file", "state") });
    expectError(r, "MM_STATE_UNWRITABLE");
  });

  test("a full disk while building the rootfs is MM_DISK_FULL, and the state stays usable", async () => {
    const small = join(scratch, "small");
    mkdirSync(small);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", small]);
    try {
      const r = await h.mm(["run", "--name", "full", "--", "true"], { MM_STATE: small });
      expectError(r, "MM_DISK_FULL");
      const ps = await h.mm(["ps", "-a", "--json"], { MM_STATE: small });
      assert.equal(ps.code, 0, ps.stderr);
      const rm = await h.mm(["rm", "full"], { MM_STATE: small });
      assert.equal(rm.code, 0, rm.stderr);
    } finally {
      execFileSync("umount", [small]);
    }
  });
});

describe("a dying guest or VMM", () => {
  test("QEMU killed mid-boot is MM_QEMU_FAILED, with no orphan", async () => {
    const child = h.spawnMm(["run", "--name", "vmmdies", "--", "sleep", "300"]);
    let stderr = "";
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    const done = new Promise<number | null>((r) => child.on("close", (c) => r(c)));
    const vmm = await until(
      async () => (await all()).find((m) => m.name === "vmmdies")?.pids.vmm ?? undefined,
      60_000,
      "VMM pid",
    );
    process.kill(vmm, "SIGKILL");
    assert.equal(await done, 125);
    assert.match(stderr, /MM_QEMU_FAILED/);
    const m = (await all()).find((x) => x.name === "vmmdies");
    assert.equal(m?.state, "failed");
    assert.equal((await h.mm(["rm", "vmmdies"])).code, 0);
  });

  test("kill -9 of `mm run` mid-boot takes the VMM with it; ps shows MM_SUPERVISOR_LOST; rm cleans", async () => {
    const child = h.spawnMm(["run", "--name", "orphan", "--", "sleep", "300"]);
    const id = await until(
      async () => (await all()).find((m) => m.name === "orphan" && m.pids.vmm)?.id,
      60_000,
      "boot",
    );
    child.kill("SIGKILL");
    await until(
      async () => ((await processesMatching(`mm-${id}`)).length === 0 ? true : undefined),
      10_000,
      "VMM gone",
    );
    const m = (await all()).find((x) => x.name === "orphan");
    assert.deepEqual([m?.state, m?.error?.code], ["failed", "MM_SUPERVISOR_LOST"]);
    assert.equal((await h.mm(["rm", "orphan"])).code, 0);
  });

  test("a guest kernel panic is MM_GUEST_PANIC", async () => {
    // An init that exits at once makes the kernel panic ("Attempted to kill init").
    const src = join(scratch, "bad-init.c");
    const bin = join(scratch, "bad-init");
    writeFileSync(src, "int main(void) { return 3; }\n");
    execFileSync("musl-gcc", ["-static", "-O2", "-o", bin, src]);
    const r = await h.mm(["run", "--rm", "--", "true"], { MM_INIT: bin });
    expectError(r, "MM_GUEST_PANIC");
    assert.match(r.stderr, /Kernel panic/);
  });
});
