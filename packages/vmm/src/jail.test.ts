import assert from "node:assert/strict";
import { test } from "node:test";
import { cgroupWrites, JAIL_ID_BASE, type JailInput, jailCommand, jailIds, planJail, QEMU_SANDBOX } from "./jail.js";

const input = (over: Partial<JailInput> = {}): JailInput => ({
  executor: "/opt/mm/mm-jail",
  slot: 7,
  root: "/var/lib/mm/run/m1/jail",
  readOnly: ["/var/cache/mm/kernels/default/vmlinux", "/var/lib/mm/rootfs/base.ext4"],
  readWrite: ["/var/lib/mm/machines/m1", "/var/lib/mm/machines/m1/root.qcow2", "/dev/shm/mm-x/machines/m1.ram"],
  directories: ["/var/lib/mm/machines/m1"],
  kvm: false,
  tap: true,
  cpus: 2,
  memoryMib: 256,
  overheadMib: 384,
  cgroupLayout: { version: 1, dirs: { cpu: "/c/cpu/mm/m1", memory: "/c/memory/mm/m1", pids: "/c/pids/mm/m1" } },
  fsizeBytes: 2 ** 31,
  ...over,
});

test("each machine's VMM gets its own uid and gid, far from login and subordinate ids", () => {
  assert.deepEqual(jailIds(0), { uid: JAIL_ID_BASE, gid: JAIL_ID_BASE });
  assert.equal(jailIds(7).uid, JAIL_ID_BASE + 7);
  assert.ok(JAIL_ID_BASE > 600_100_000, "above login.defs' SUB_UID_MAX");
  assert.throws(() => jailIds(-1), RangeError);
  assert.throws(() => jailIds(1.5), RangeError);
});

test("the plan: /usr read-only, the machine's files, devices, limits, seccomp", () => {
  const plan = planJail(input());
  assert.equal(plan.uid, JAIL_ID_BASE + 7);
  assert.deepEqual(plan.readOnly, ["/usr", ...input().readOnly]);
  assert.deepEqual(plan.readWrite, input().readWrite);
  assert.deepEqual(
    plan.devices.map((d) => d.path),
    ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/net/tun"],
  );
  assert.ok(planJail(input({ kvm: true })).devices.some((d) => d.path === "/dev/kvm" && d.mode === 0o600));
  assert.equal(plan.cgroup?.limits.memoryBytes, (256 + 384) * 2 ** 20);
  assert.equal(plan.cgroup?.limits.cpuQuotaUs, 200_000);
  assert.equal(plan.sandbox, QEMU_SANDBOX);
  assert.match(QEMU_SANDBOX, /elevateprivileges=deny/);
  assert.match(QEMU_SANDBOX, /spawn=deny/);
  assert.equal(planJail(input({ cgroupLayout: null })).cgroup, null);
});

test("the plan refuses relative paths, '..' and paths inside the system's directories", () => {
  for (const bad of ["relative/x", "/var/../etc/shadow", "/usr/bin/qemu", "/x\ny"]) {
    assert.throws(() => planJail(input({ readOnly: [bad] })), RangeError, bad);
  }
});

test("cgroup writes: v1 per controller, v2 in one directory; limits before the pid joins", () => {
  const limits = { memoryBytes: 1024, cpuQuotaUs: 50_000, cpuPeriodUs: 100_000, pids: 64 };
  const v2 = cgroupWrites({ version: 2, dir: "/sys/fs/cgroup/mm/m1" }, limits);
  assert.deepEqual(
    v2.map((w) => `${w.file}=${w.value}`),
    [
      "/sys/fs/cgroup/mm/m1/memory.max=1024",
      "/sys/fs/cgroup/mm/m1/memory.swap.max=0",
      "/sys/fs/cgroup/mm/m1/cpu.max=50000 100000",
      "/sys/fs/cgroup/mm/m1/pids.max=64",
      "/sys/fs/cgroup/mm/m1/cgroup.procs=self",
    ],
  );
  const v1 = cgroupWrites({ version: 1, dirs: { cpu: "/c", memory: "/m", pids: "/p" } }, limits);
  const joins = v1.filter((w) => w.file.endsWith("cgroup.procs"));
  assert.equal(joins.length, 3);
  assert.ok(v1.indexOf(joins[0] as (typeof v1)[number]) > v1.findIndex((w) => w.file === "/m/memory.limit_in_bytes"));
});

test("the executor's command line: mm-jail, its steps in order, then the VMM's argv", () => {
  const argv = jailCommand(planJail(input()), ["/usr/bin/qemu-system-x86_64", "-name", "x"]);
  assert.equal(argv[0], "/opt/mm/mm-jail");
  const sep = argv.indexOf("--");
  assert.deepEqual(argv.slice(sep + 1), ["/usr/bin/qemu-system-x86_64", "-name", "x"]);
  const ops = argv.slice(1, sep);
  const step = (name: string) => {
    const out: string[][] = [];
    const arity: Record<string, number> = {
      root: 1,
      ids: 2,
      dir: 1,
      file: 1,
      link: 2,
      proc: 0,
      bind: 2,
      dev: 6,
      cgroup: 2,
      nofile: 1,
      fsize: 1,
    };
    for (let i = 0; i < ops.length; ) {
      const op = ops[i] as string;
      const n = arity[op];
      assert.ok(n !== undefined, `unknown step ${op}`);
      if (op === name) out.push(ops.slice(i + 1, i + 1 + n));
      i += 1 + n;
    }
    return out;
  };
  assert.deepEqual(step("ids"), [[String(JAIL_ID_BASE + 7), String(JAIL_ID_BASE + 7)]]);
  assert.deepEqual(step("root"), [["/var/lib/mm/run/m1/jail"]]);
  const binds = step("bind");
  assert.deepEqual(binds[0], ["ro", "/usr"]);
  const order = binds.map((b) => b[1]);
  assert.ok(order.indexOf("/var/lib/mm/machines/m1") < order.indexOf("/var/lib/mm/machines/m1/root.qcow2"));
  assert.deepEqual(
    binds.find((b) => b[1] === "/var/lib/mm/machines/m1"),
    ["rw", "/var/lib/mm/machines/m1"],
  );
  // Mount points first: every dir and file step comes before the first bind.
  const firstBind = ops.indexOf("bind");
  for (const [i, op] of ops.entries()) if (op === "dir" || op === "file") assert.ok(i < firstBind);
  assert.deepEqual(
    step("file")
      .map((f) => f[0])
      .sort(),
    [...input().readOnly, "/var/lib/mm/machines/m1/root.qcow2", "/dev/shm/mm-x/machines/m1.ram"].sort(),
  );
  assert.ok(step("cgroup").some(([f, v]) => f === "/c/memory/mm/m1/cgroup.procs" && v === "self"));
  assert.ok(step("dev").some(([p, , , mode, uid]) => p === "/dev/net/tun" && mode === "666" && uid === "0"));
  assert.deepEqual(step("nofile"), [["4096"]]);
});

test("a 9p share is an idmapped bind: its owner's files are the VMM's own inside", () => {
  const plan = planJail(input({ idmapped: [{ path: "/srv/share", readOnly: false, uid: 1000, gid: 100 }] }));
  const argv = jailCommand(plan, ["q"]);
  const i = argv.indexOf("idmap");
  assert.deepEqual(argv.slice(i, i + 5), ["idmap", "rw", "/srv/share", "1000", "100"]);
  assert.ok(argv.indexOf("dir") < i && argv.slice(0, i).includes("/srv/share"), "its mount point is made first");
  assert.throws(() => planJail(input({ idmapped: [{ path: "/srv/x", readOnly: true, uid: -1, gid: 0 }] })), RangeError);
});

test("mm-jail: the executor refuses what it cannot carry out, with the step named", async () => {
  const { spawnSync } = await import("node:child_process");
  const { existsSync } = await import("node:fs");
  const bin = new URL("../../../host/jail/build/mm-jail", import.meta.url).pathname;
  assert.ok(existsSync(bin), "make -C host/jail builds it (scripts/setup.sh does)");
  const run = (args: string[]) => spawnSync(bin, args, { encoding: "utf8" });
  const noRoot = run(["ids", "1500000000", "1500000000", "--", "/bin/true"]);
  assert.equal(noRoot.status, 126);
  assert.match(noRoot.stderr, /a root and non-root ids are required/);
  const rootIds = run(["root", "/tmp", "ids", "0", "0", "--", "/bin/true"]);
  assert.equal(rootIds.status, 126, "uid 0 is refused");
  const bad = run(["root", "/nonexistent-mm-jail-root", "ids", "1500000000", "1500000000", "--", "/bin/true"]);
  assert.equal(bad.status, 126);
  assert.match(bad.stderr, /^mm-jail: mount tmpfs \/nonexistent-mm-jail-root: /);
  assert.match(run(["--"]).stderr, /usage/);
});
