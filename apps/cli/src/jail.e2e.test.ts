// The jailed VMM, end to end (docs/adr/0008): each machine's QEMU as its own uid, with
// no capabilities, no_new_privs and seccomp, in a mount namespace showing only its own
// files, in cgroups of its own; another machine's disk is out of its reach.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { harness, until } from "./test-helpers.js";

const h = harness("mm-jail-");
after(() => h.cleanup());

interface Inspected {
  id: string;
  state: string;
  error: { code: string; message: string } | null;
  pids: { vmm: number | null };
  spec: { name: string };
  jail: {
    uid: number;
    gid: number;
    readWrite: string[];
    cgroup: { version: 1 | 2; memoryBytes: number } | null;
    seccomp: string;
  } | null;
}

async function inspect(name: string): Promise<Inspected> {
  const r = await h.mm(["inspect", name]);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as Inspected[])[0] as Inspected;
}

const status = (pid: number) => readFileSync(`/proc/${pid}/status`, "utf8");
const field = (text: string, name: string) => new RegExp(`^${name}:[ \\t]*(.*)$`, "m").exec(text)?.[1]?.trim();
const overlayOf = (m: Inspected) => m.jail?.readWrite.find((p) => p.endsWith(".qcow2")) as string;

let a: Inspected;
let b: Inspected;

describe("jailed VMM", () => {
  before(async () => {
    for (const name of ["ja", "jb"]) {
      const r = await h.mm(["run", "-d", "--name", name, "--", "sleep", "600"]);
      assert.equal(r.code, 0, r.stderr);
    }
    a = await inspect("ja");
    b = await inspect("jb");
  });

  test("QEMU runs as the machine's own uid: no groups, no capabilities, no_new_privs, seccomp", () => {
    for (const m of [a, b]) {
      assert.ok(m.jail, "inspect shows the jail");
      const st = status(m.pids.vmm as number);
      assert.equal(field(st, "Uid"), `${m.jail.uid}\t${m.jail.uid}\t${m.jail.uid}\t${m.jail.uid}`);
      assert.equal(field(st, "Gid"), `${m.jail.gid}\t${m.jail.gid}\t${m.jail.gid}\t${m.jail.gid}`);
      assert.equal(field(st, "Groups"), "");
      for (const caps of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) {
        assert.equal(field(st, caps), "0000000000000000", caps);
      }
      assert.equal(field(st, "NoNewPrivs"), "1");
      assert.equal(field(st, "Seccomp"), "2");
      assert.match(m.jail.seccomp, /spawn=deny/);
    }
    assert.notEqual(a.jail?.uid, b.jail?.uid, "each machine has its own uid");
  });

  test("a VMM cannot open another machine's disk: not in its namespace, EACCES as its uid", () => {
    const pidA = a.pids.vmm as number;
    const inA = (args: string[]) => spawnSync("nsenter", ["-t", String(pidA), "-m", "-r", "--", ...args]);
    assert.equal(inA(["/usr/bin/test", "-e", overlayOf(a)]).status, 0, "its own disk is there");
    assert.equal(inA(["/usr/bin/test", "-e", overlayOf(b)]).status, 1, "the other machine's disk is not");
    assert.equal(inA(["/usr/bin/test", "-e", `${h.state}/mm.db`]).status, 1, "mm's database is not");
    const asA = spawnSync(
      "setpriv",
      [`--reuid=${a.jail?.uid}`, `--regid=${a.jail?.gid}`, "--clear-groups", "--", "cat", overlayOf(b)],
      { encoding: "utf8" },
    );
    assert.notEqual(asA.status, 0);
    assert.match(asA.stderr, /Permission denied/);
  });

  test("the VMM is in the machine's cgroups, with the memory limit inspect shows", () => {
    const cg = readFileSync(`/proc/${a.pids.vmm}/cgroup`, "utf8");
    const limits = a.jail?.cgroup;
    assert.ok(limits, "a cgroup limit was set");
    if (limits.version === 1) {
      assert.match(cg, new RegExp(`:memory:/mm/${a.id}$`, "m"));
      assert.match(cg, new RegExp(`:pids:/mm/${a.id}$`, "m"));
      const limit = readFileSync(`/sys/fs/cgroup/memory/mm/${a.id}/memory.limit_in_bytes`, "utf8").trim();
      assert.equal(Number(limit), limits.memoryBytes);
    } else {
      assert.match(cg, new RegExp(`^0::/mm/${a.id}$`, "m"));
      assert.equal(Number(readFileSync(`/sys/fs/cgroup/mm/${a.id}/memory.max`, "utf8")), limits.memoryBytes);
    }
  });

  test("a guest that fills its memory past the VMM's cgroup limit ends only its own VMM", async () => {
    // A limit barely above the guest's RAM: filling the guest's memory takes the VMM over it.
    // Started from the template: the copy of the template's RAM counts against the machine
    // too (it is made inside the machine's cgroup).
    const r = await h.mm(["run", "-d", "--name", "hog", "-m", "256", "--", "sleep", "600"], {
      MM_VMM_OVERHEAD_MIB: "8",
    });
    assert.equal(r.code, 0, r.stderr);
    const hog = await inspect("hog");
    assert.equal(hog.jail?.cgroup?.memoryBytes, (256 + 8) * 2 ** 20);
    await h.mm([
      "exec",
      "hog",
      "sh",
      "-c",
      "mkdir -p /m && mount -t tmpfs -o size=250m t /m && dd if=/dev/zero of=/m/f bs=1M count=240",
    ]);
    const after = await until(
      async () => {
        const m = await inspect("hog");
        return m.pids.vmm === null ? m : undefined;
      },
      60_000,
      "the hog's VMM to end",
    );
    assert.equal(after.pids.vmm, null);
    // The kernel's OOM killer ended it inside its cgroup (SIGKILL), not the guest's own OOM killer.
    assert.equal(after.state, "failed");
    assert.match(after.error?.message ?? "", /SIGKILL/);
    assert.match((await h.mm(["ps", "-a"])).stdout, /hog/);
    // The other machine and the host carry on.
    assert.equal((await h.mm(["exec", "ja", "true"])).code, 0);
    await h.mm(["rm", "-f", "hog"]);
  });

  test("a guest flooding its console keeps the machine's log on the host under its cap", async () => {
    const cap = 64 * 1024;
    const r = await h.mm(
      [
        "run",
        "-d",
        "--name",
        "flood",
        "--",
        "sh",
        "-c",
        "head -c 1500000 /dev/zero | tr '\\0' x > /dev/console; echo done",
      ],
      { MM_LOG_MAX_BYTES: String(cap) },
    );
    assert.equal(r.code, 0, r.stderr);
    const w = await h.mm(["wait", "flood"]);
    assert.equal(w.stdout.trim(), "0", w.stderr);
    const m = await inspect("flood");
    const dir = join(h.state, "machines", m.id);
    const logs = readdirSync(dir).filter((f) => f.startsWith("machine.log"));
    const total = logs.reduce((n, f) => n + statSync(join(dir, f)).size, 0);
    // The current file and one rotated: at most twice the cap (the guest wrote 1.5 MB).
    assert.ok(total <= 2 * cap, `${total} bytes of logs for a ${cap}-byte cap`);
    assert.ok(total > cap / 2, "the flood reached the log at all");
    assert.match((await h.mm(["logs", "flood"])).stdout, /done\n$/);
    await h.mm(["rm", "-f", "flood"]);
  });

  test("rm -f takes the machine's cgroups with it", async () => {
    assert.equal((await h.mm(["rm", "-f", "jb"])).code, 0);
    const dirs =
      a.jail?.cgroup?.version === 2
        ? [`/sys/fs/cgroup/mm/${b.id}`]
        : ["cpu", "memory", "pids"].map((c) => `/sys/fs/cgroup/${c}/mm/${b.id}`);
    for (const d of dirs) assert.notEqual(spawnSync("test", ["-d", d]).status, 0, `${d} is gone`);
  });
});
