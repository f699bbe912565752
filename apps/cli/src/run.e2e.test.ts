// `mm run` end to end: real QEMU, real guest kernel, real mm-init, the embedded image.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { harness } from "./test-helpers.js";

const h = harness();
after(() => h.cleanup());

describe("mm run (foreground)", () => {
  test("prints from inside a real guest", async () => {
    const r = await h.mm(["run", "--rm", "--", "echo", "hello"]);
    assert.equal(r.stdout, "hello\n", r.stderr);
    assert.equal(r.code, 0);
  });

  test("passes the workload's exit status through", async () => {
    const r = await h.mm(["run", "--rm", "--", "sh", "-c", "exit 7"]);
    assert.equal(r.code, 7, r.stderr);
  });

  test("a workload killed by a signal exits 128+signal", async () => {
    const r = await h.mm(["run", "--rm", "--", "sh", "-c", "kill -9 $$"]);
    assert.equal(r.code, 137, r.stderr);
  });

  test("stdout and stderr stay separate", async () => {
    const r = await h.mm(["run", "--rm", "--", "sh", "-c", "echo out; echo err >&2"]);
    assert.equal(r.stdout, "out\n");
    assert.match(r.stderr, /^err$/m);
  });

  test("it is a VM with its own kernel, CPUs and memory as asked", async () => {
    const r = await h.mm([
      "run",
      "--rm",
      "--cpus",
      "2",
      "--memory",
      "192M",
      "--",
      "sh",
      "-c",
      "uname -r; nproc; grep MemTotal /proc/meminfo",
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [kernel, cpus, mem] = r.stdout.trim().split("\n");
    assert.notEqual(kernel, (await import("node:os")).release(), "guest kernel differs from the host's");
    assert.equal(cpus, "2");
    const kib = Number(/(\d+)/.exec(mem ?? "")?.[1]);
    assert.ok(kib > 100 * 1024 && kib <= 192 * 1024, mem);
  });

  test("env, workdir, user and hostname reach the workload", async () => {
    const r = await h.mm([
      "run",
      "--rm",
      "--name",
      "envy_1",
      "-e",
      "GREETING=hi there",
      "-w",
      "/tmp",
      "-u",
      "65534",
      "--",
      "sh",
      "-c",
      'echo "$GREETING|$(pwd)|$(id -u)|$(hostname)|$PATH"',
    ]);
    assert.equal(
      r.stdout,
      "hi there|/tmp|65534|envy-1|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
      r.stderr,
    );
  });

  test("the image's default command runs when none is given (sh, stdin empty)", async () => {
    const r = await h.mm(["run", "--rm"]);
    assert.equal(r.code, 0, r.stderr);
  });

  test("the guest's root disk is writable, private to the machine, and kept across boots", async () => {
    const script = "cat /marker 2>/dev/null || echo first boot; echo kept > /marker";
    const a = await h.mm(["run", "--name", "disk-a", "--", "sh", "-c", script]);
    assert.equal(a.stdout, "first boot\n", a.stderr);
    const b = await h.mm(["run", "--rm", "--", "sh", "-c", "cat /marker 2>/dev/null || echo absent"]);
    assert.equal(b.stdout, "absent\n", "another machine does not see it");
    assert.equal((await h.mm(["start", "disk-a"])).code, 0);
    const waited = await h.mm(["wait", "disk-a"]);
    assert.equal(waited.stdout, "0\n");
    const logs = await h.mm(["logs", "disk-a"]);
    assert.equal(logs.stdout, "first boot\nkept\n", "the second boot saw the first boot's file");
    assert.equal((await h.mm(["rm", "disk-a"])).code, 0);
  });
});

describe("disk size", () => {
  test("--disk-size grows the root filesystem online at boot", async () => {
    const r = await h.mm(["run", "--rm", "--disk-size", "2G", "--", "sh", "-c", "df -m / | tail -1"]);
    const total = Number(r.stdout.trim().split(/\s+/)[1]);
    assert.ok(total > 1800 && total <= 2048, r.stdout + r.stderr);
  });

  test("a disk smaller than the image is MM_INVALID_DISK_SIZE", async () => {
    const r = await h.mm(["run", "--rm", "--disk-size", "100M", "--", "true"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_INVALID_DISK_SIZE/);
  });
});

describe("workload errors", () => {
  test("a missing command exits 127 with MM_EXEC_NOT_FOUND", async () => {
    const r = await h.mm(["run", "--rm", "--", "/no/such/thing"]);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /MM_EXEC_NOT_FOUND/);
    assert.match(r.stderr, /hint:/);
  });

  test("a non-executable file exits 126 with MM_EXEC_DENIED", async () => {
    const r = await h.mm(["run", "--rm", "--", "/etc/passwd"]);
    assert.equal(r.code, 126);
    assert.match(r.stderr, /MM_EXEC_DENIED/);
  });

  test("a missing working directory is MM_EXEC_SETUP", async () => {
    const r = await h.mm(["run", "--rm", "-w", "/nope", "--", "true"]);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /MM_EXEC_SETUP/);
  });
});
