import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";
import {
  cgroupWrites,
  JAIL_ID_BASE,
  type JailInput,
  jailCommand,
  jailIds,
  planJail,
  QEMU_SANDBOX,
  shellQuote,
} from "./jail.js";

const input = (over: Partial<JailInput> = {}): JailInput => ({
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
      "/sys/fs/cgroup/mm/m1/cgroup.procs=$$",
    ],
  );
  const v1 = cgroupWrites({ version: 1, dirs: { cpu: "/c", memory: "/m", pids: "/p" } }, limits);
  const joins = v1.filter((w) => w.file.endsWith("cgroup.procs"));
  assert.equal(joins.length, 3);
  assert.ok(v1.indexOf(joins[0] as (typeof v1)[number]) > v1.findIndex((w) => w.file === "/m/memory.limit_in_bytes"));
});

test("the executor: a private mount namespace, then chroot, setpriv and prlimit before the VMM", () => {
  const argv = jailCommand(planJail(input()), ["/usr/bin/qemu-system-x86_64", "-name", "x"]);
  assert.deepEqual(argv.slice(0, 6), ["unshare", "--mount", "--propagation", "private", "--", "sh"]);
  assert.deepEqual(argv.slice(-3), ["/usr/bin/qemu-system-x86_64", "-name", "x"]);
  const script = argv[7] as string;
  const last = script.split("\n").at(-1) as string;
  for (const want of [
    'exec chroot "$J" /usr/bin/setpriv',
    `--reuid=${JAIL_ID_BASE + 7}`,
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
    "--pdeathsig=KILL",
    "/usr/bin/prlimit --nofile=4096:4096",
    '"$@"',
  ]) {
    assert.ok(last.includes(want), want);
  }
  // Directories are bound before what lies inside them; read-only binds are remounted ro.
  const binds = [...script.matchAll(/^mount --bind -o (?:ro,)?nosuid,nodev '([^']+)'/gm)].map((m) => m[1]);
  assert.ok(binds.indexOf("/var/lib/mm/machines/m1") < binds.indexOf("/var/lib/mm/machines/m1/root.qcow2"));
  assert.match(script, /^mount --bind -o ro,nosuid,nodev '\/usr' "\$J"'\/usr'$/m);
  assert.match(script, /^mount --bind -o nosuid,nodev '\/var\/lib\/mm\/machines\/m1' /m);
  assert.match(script, /echo \$\$ > '\/c\/memory\/mm\/m1\/cgroup.procs'/);
  assert.match(script, /mount -t proc -o hidepid=invisible,subset=pid/);
});

test("shellQuote: any path survives sh (quotes, spaces, $, backslashes)", () => {
  for (const s of ["/a b", "/it's", "/$HOME/`x`", "/back\\slash", "/'; rm -rf /; '"]) {
    assert.equal(execFileSync("sh", ["-c", `printf %s ${shellQuote(s)}`], { encoding: "utf8" }), s);
  }
});

test("the executor makes every mount point in its tmpfs before binding anything (no host file is touched)", () => {
  const lines = (jailCommand(planJail(input()), ["x"])[7] as string).split("\n");
  const firstBind = lines.findIndex((l) => l.startsWith("mount --bind"));
  const made = lines.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith(": >") || l.startsWith("mkdir"));
  assert.ok(made.length >= 2);
  for (const [l, i] of made) assert.ok(i < firstBind, l);
  assert.equal(lines.filter((l) => l.startsWith("mkdir")).length, 1, "one mkdir for all mount points");
});
