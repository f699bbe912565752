// Snapshots, restore, live fork and templates end to end, with real guests inside the
// test's network namespace: a running counter survives a snapshot and a restore, forks
// diverge, clones take new identities (address, MAC, hostname, clock, RNG) and stay
// reachable, and templates give what cold boots give.

import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  statSync,
  truncateSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { harness, processesMatching, until } from "./test-helpers.js";

const h = harness("mm-snap-");
after(() => h.cleanup());

type M = {
  id: string;
  name: string;
  ip: string | null;
  state: string;
  boot: string | null;
  error: unknown;
  pids: { vmm: number | null };
};
const inspect = async (name: string): Promise<M> => (JSON.parse((await h.mm(["inspect", name])).stdout) as M[])[0] as M;
const sh = async (name: string, script: string): Promise<string> => {
  const r = await h.mm(["exec", name, "sh", "-c", script]);
  assert.equal(r.code, 0, `exec in ${name}: ${r.stderr}`);
  return r.stdout.trim();
};
const ping = (ip: string) =>
  new Promise<boolean>((resolve) =>
    execFile("ip", ["netns", "exec", h.netns, "busybox", "ping", "-c", "1", "-W", "3", ip], (e) => resolve(!e)),
  );
const ok = (r: { code: number | null; stderr: string }, what: string) =>
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
const COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

describe("snapshot and restore of a running machine", () => {
  test("a counter survives: the source runs on, the restore continues from the snapshot", async () => {
    ok(await h.mm(["run", "-d", "--name", "counter", "--", "sh", "-c", COUNTER]), "run");
    await until(async () => Number(await sh("counter", "cat /tmp/count 2>/dev/null || echo 0")) > 5 || undefined);
    const atSnapshot = Number(await sh("counter", "cat /tmp/count"));
    const snap = await h.mm(["snapshot", "create", "counter", "--tag", "t1"]);
    ok(snap, "snapshot create");
    const id = snap.stdout.trim();
    assert.match(id, /^[0-9a-f]{64}$/);
    const afterSnapshot = Number(await sh("counter", "cat /tmp/count"));
    const list = await h.mm(["snapshot", "ls", "counter", "--json"]);
    const snaps = JSON.parse(list.stdout) as { id: string; tag: string; memory: string; machine: string }[];
    assert.deepEqual(
      snaps.map((s) => [s.id, s.tag, s.memory, s.machine]),
      [[id, "t1", "file", "counter"]],
    );

    ok(await h.mm(["restore", "counter:t1", "again"]), "restore");
    const restored = await inspect("again");
    assert.equal(restored.state, "running");
    assert.equal(restored.boot, `snapshot:${id.slice(0, 12)}`);
    const first = Number(await sh("again", "cat /tmp/count"));
    // It resumed the snapshot's count, not a fresh boot's (which would start near 0).
    assert.ok(
      first >= atSnapshot && first <= afterSnapshot + 2,
      `restored count ${first}, snapshot taken between ${atSnapshot} and ${afterSnapshot}`,
    );
    await until(async () => Number(await sh("again", "cat /tmp/count")) > first + 3 || undefined, 30_000, "counting");
    assert.equal(await sh("again", "hostname"), "again");
    // The source never stopped.
    const src = Number(await sh("counter", "cat /tmp/count"));
    assert.ok(src > afterSnapshot, `source count ${src} after ${afterSnapshot}`);
    assert.equal((await inspect("counter")).state, "running");
  });

  test("the restored machine has its own address and MAC, reachable from the namespace", async () => {
    const [a, b] = [await inspect("counter"), await inspect("again")];
    assert.ok(a.ip && b.ip && a.ip !== b.ip, `${a.ip} vs ${b.ip}`);
    assert.match(await sh("again", "ip -4 addr show eth0"), new RegExp(`inet ${b.ip}/`));
    const macs = await Promise.all(["counter", "again"].map((n) => sh(n, "cat /sys/class/net/eth0/address")));
    assert.notEqual(macs[0], macs[1]);
    assert.ok(await ping(b.ip as string), "restored machine answers ping");
    assert.ok(await ping(a.ip as string), "source machine answers ping");
  });

  test("a snapshot with a machine made from it cannot be removed; with none it can", async () => {
    const r = await h.mm(["snapshot", "rm", "counter:t1"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_SNAPSHOT_HAS_CHILDREN.*machine again/s);
    ok(await h.mm(["rm", "-f", "again"]), "rm clone");
    ok(await h.mm(["snapshot", "rm", "counter:t1"]), "snapshot rm");
    assert.equal((await h.mm(["snapshot", "ls", "-q"])).stdout, "");
  });
});

describe("fork", () => {
  test("two clones of a running machine diverge; the parent is unaffected and runs throughout", async () => {
    await sh("counter", "echo parent > /root/who");
    const before = Number(await sh("counter", "cat /tmp/count"));
    const r = await h.mm(["fork", "counter", "kid", "--count", "2", "--json"]);
    ok(r, "fork");
    const kids = JSON.parse(r.stdout) as { name: string; ip: string }[];
    assert.deepEqual(
      kids.map((k) => k.name),
      ["kid-1", "kid-2"],
    );
    for (const k of kids) assert.equal((await inspect(k.name)).boot?.startsWith("fork:"), true);
    // Each clone starts from the parent's memory: its counter continues the parent's.
    for (const k of kids) assert.ok(Number(await sh(k.name, "cat /tmp/count")) >= before);
    await sh("kid-1", "echo one > /root/who; echo only-one > /root/mine");
    await sh("kid-2", "echo two > /root/who");
    assert.equal(await sh("kid-1", "cat /root/who; cat /root/mine"), "one\nonly-one");
    assert.equal(await sh("kid-2", "cat /root/who; test -e /root/mine && echo leaked || echo clean"), "two\nclean");
    assert.equal(
      await sh("counter", "cat /root/who; test -e /root/mine && echo leaked || echo clean"),
      "parent\nclean",
    );
    assert.ok(Number(await sh("counter", "cat /tmp/count")) > before, "the parent kept counting");

    // Distinct, reachable identities.
    const ips = kids.map((k) => k.ip);
    assert.equal(new Set([...ips, (await inspect("counter")).ip]).size, 3);
    for (const [i, k] of kids.entries()) {
      assert.equal(await sh(k.name, "hostname"), k.name);
      assert.match(await sh(k.name, "ip -4 addr show eth0"), new RegExp(`inet ${ips[i]}/`));
      assert.ok(await ping(k.ip), `${k.name} answers ping`);
    }
  });

  test("clones' RNG and clock are their own: random bytes differ, the clock is the host's", async () => {
    const probe =
      "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/uuid; date +%s";
    const outs = await Promise.all(["kid-1", "kid-2", "counter"].map((n) => sh(n, probe)));
    const rows = outs.map((o) => o.split("\n"));
    assert.equal(new Set(rows.map((r) => r[0])).size, 3, "urandom output differs between clones");
    assert.equal(new Set(rows.map((r) => r[1])).size, 3, "uuids differ between clones");
    for (const r of rows) assert.ok(Math.abs(Number(r[2]) - Date.now() / 1000) < 10, `guest clock ${r[2]}`);
  });

  test("the clones' disks persist independently across a stop and a cold start", async () => {
    ok(await h.mm(["stop", "-t", "1", "kid-1"]), "stop");
    ok(await h.mm(["start", "kid-1"]), "start");
    assert.equal((await inspect("kid-1")).boot, "cold");
    assert.equal(await sh("kid-1", "cat /root/who /root/mine"), "one\nonly-one");
    assert.equal(await sh("kid-2", "cat /root/who"), "two");
  });

  test("a fork whose memory cannot be sealed fails whole: no clone, no capture left, the parent runs on", async () => {
    const snapIds = async () =>
      (JSON.parse((await h.mm(["snapshot", "ls", "--all", "--json"])).stdout) as { id: string }[]).map((s) => s.id);
    const before = await snapIds();
    const r = await h.mm(["fork", "counter", "nope"], { MM_SEAL_BIN: "/bin/false" });
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_SNAPSHOT_FAILED/);
    assert.deepEqual(await snapIds(), before);
    assert.deepEqual(readdirSync(join(h.env.MM_SHM as string, "captures")), []);
    assert.doesNotMatch((await h.mm(["ps", "-a"])).stdout, /\bnope\b/);
    assert.equal((await inspect("counter")).state, "running");
  });

  test("forking a stopped machine is MM_MACHINE_NOT_RUNNING with a hint", async () => {
    ok(await h.mm(["run", "--name", "done", "--", "true"]), "run");
    const r = await h.mm(["fork", "done", "x"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_MACHINE_NOT_RUNNING/);
    assert.match(r.stderr, /hint: .*mm snapshot create/);
  });

  test("a clone (RAM mapped copy-on-write) is snapshotted with its RAM in the state stream, and restores", async () => {
    const s = JSON.parse((await h.mm(["snapshot", "create", "kid-2", "--tag", "deep", "--json"])).stdout) as {
      memory: string;
      parent: string;
    };
    assert.equal(s.memory, "stream");
    assert.ok(s.parent, "it records the fork it came from");
    const at = Number(await sh("kid-2", "cat /tmp/count"));
    ok(await h.mm(["restore", "kid-2:deep", "grandkid"]), "restore");
    assert.equal(await sh("grandkid", "cat /root/who"), "two");
    const n = Number(await sh("grandkid", "cat /tmp/count"));
    assert.ok(n > 5 && n <= at + 5, `grandkid resumed at ${n}, kid-2 was at ${at} after the snapshot`);
    await until(async () => Number(await sh("grandkid", "cat /tmp/count")) > n || undefined, 20_000, "counting");
    ok(await h.mm(["rm", "-f", "grandkid"]), "rm");
    ok(await h.mm(["snapshot", "rm", "kid-2:deep"]), "snapshot rm");
  });

  test("clones share one sealed memfd of the fork's RAM that no one can write, root included", async () => {
    // The capture file is gone: the clones' VMMs hold the RAM (kid-1 was cold-started since).
    assert.deepEqual(readdirSync(join(h.env.MM_SHM as string, "captures")), []);
    ok(await h.mm(["fork", "counter", "sib", "--count", "2"]), "fork");
    const memfds = await Promise.all(
      ["sib-1", "sib-2"].map(async (n) => {
        const pid = (await inspect(n)).pids.vmm as number;
        const fd = readdirSync(`/proc/${pid}/fd`).find((f) =>
          readlinkSync(`/proc/${pid}/fd/${f}`).startsWith("/memfd:mm-fork-ram"),
        );
        assert.ok(fd, `${n}'s VMM holds the fork's memfd`);
        return `/proc/${pid}/fd/${fd}`;
      }),
    );
    const [a, b] = memfds as [string, string];
    assert.equal(statSync(a).ino, statSync(b).ino, "both clones map the same memory");
    const fd = openSync(a, "r+");
    try {
      assert.throws(() => writeSync(fd, "x", 0), { code: "EPERM" });
      assert.throws(() => ftruncateSync(fd, 0), { code: "EPERM" });
    } finally {
      closeSync(fd);
    }
    ok(await h.mm(["rm", "-f", "sib-1", "sib-2"]), "rm");
  });

  test("one clone freeing memory (free-page reports) leaves what its siblings share intact", async () => {
    // The parent's page cache holds a file when it forks. One clone deletes it and drops
    // its caches; its balloon then reports those pages free, and QEMU 7.2 punches holes
    // in a RAM file it maps, even privately: with a plain shared file, the other clone's
    // still-shared copy of those pages would read back as zeros (seen with strace: QEMU's
    // fallocate(PUNCH_HOLE) on the clone's RAM descriptor, now refused with EPERM).
    const sum = await sh(
      "counter",
      "dd if=/dev/urandom of=/root/blob bs=1M count=24 2>/dev/null; sync; md5sum < /root/blob",
    );
    ok(await h.mm(["fork", "counter", "pair", "--count", "2"]), "fork");
    await sh("pair-1", "rm /root/blob; sync; echo 3 > /proc/sys/vm/drop_caches; sleep 6");
    assert.equal(await sh("pair-2", "md5sum < /root/blob"), sum);
    assert.equal(await sh("pair-1", "test -e /root/blob && echo present || echo gone"), "gone");
    ok(await h.mm(["rm", "-f", "pair-1", "pair-2"]), "rm");
    await sh("counter", "rm /root/blob");
  });
});

describe("published ports of restores and clones", () => {
  const curl = (port: number) =>
    new Promise<string>((resolve) =>
      execFile(
        "ip",
        ["netns", "exec", h.netns, "curl", "-s", "--max-time", "2", `http://127.0.0.1:${port}/`],
        (_e, out) => resolve(String(out)),
      ),
    );
  const serves = (port: number) =>
    until(async () => ((await curl(port)) === "from pweb\n" ? true : undefined), 20_000, `port ${port}`);
  const port = async (name: string) => (await h.mm(["port", name])).stdout;

  test("a restore keeps its snapshot's free ports, says which it leaves out, and takes -p", async () => {
    const web = "mkdir -p /w && echo from pweb > /w/index.html && httpd -f -p 80 -h /w";
    ok(await h.mm(["run", "-d", "--name", "pweb", "-p", "18085:80", "--", "sh", "-c", web]), "run");
    await serves(18085);
    ok(await h.mm(["snapshot", "create", "--tag", "p", "pweb"]), "snapshot");
    // The source still holds 18085: the restore runs without it, and says so.
    const busy = await h.mm(["restore", "pweb:p", "pcopy"]);
    ok(busy, "restore");
    assert.match(busy.stderr, /warning: not published, another machine holds it: 80\/tcp -> 0\.0\.0\.0:18085/);
    assert.equal(await port("pcopy"), "");
    ok(await h.mm(["restore", "-p", "18086:80", "pweb:p", "pcopy2"]), "restore -p");
    assert.equal(await port("pcopy2"), "80/tcp -> 0.0.0.0:18086\n");
    await serves(18086);
    const clash = await h.mm(["restore", "-p", "18086:80", "pweb:p", "pcopy3"]);
    assert.match(clash.stderr, /MM_PORT_IN_USE/);
    // Once the source is gone, a restore takes the snapshot's own port again.
    ok(await h.mm(["rm", "-f", "pweb", "pcopy", "pcopy2"]), "rm");
    ok(await h.mm(["restore", "pweb:p", "pback"]), "restore");
    assert.equal(await port("pback"), "80/tcp -> 0.0.0.0:18085\n");
    await serves(18085);
  });

  test("a fork's clone publishes what -p says (one clone only), none by default", async () => {
    ok(await h.mm(["fork", "pback", "pkid"]), "fork");
    assert.equal(await port("pkid"), "");
    ok(await h.mm(["fork", "-p", "18087:80", "pback", "pkid2"]), "fork -p");
    assert.equal(await port("pkid2"), "80/tcp -> 0.0.0.0:18087\n");
    await serves(18087);
    const many = await h.mm(["fork", "--count", "2", "-p", "18088:80", "pback", "pkids"]);
    assert.equal(many.code, 125);
    assert.match(many.stderr, /MM_USAGE.*--count/s);
    ok(await h.mm(["rm", "-f", "pback", "pkid", "pkid2"]), "rm");
    ok(await h.mm(["snapshot", "rm", "pweb:p"]), "snapshot rm");
  });
});

describe("disk-only snapshots", () => {
  test("a stopped machine's disk snapshot restores into a machine that boots it", async () => {
    ok(await h.mm(["run", "--name", "writer", "--", "sh", "-c", "echo kept > /root/file"]), "run");
    const s = await h.mm(["snapshot", "create", "writer", "--json"]);
    ok(s, "snapshot");
    assert.equal((JSON.parse(s.stdout) as { memory: string | null }).memory, null);
    ok(await h.mm(["restore", (JSON.parse(s.stdout) as { id: string }).id, "reader"]), "restore");
    // The restored machine runs the source's command on the snapshot's disk.
    const r = await until(async () => {
      const m = await inspect("reader");
      return m.state === "exited" ? m : undefined;
    });
    assert.equal(r.state, "exited");
    ok(await h.mm(["run", "--rm", "--cold", "--name", "check", "--", "true"]), "unrelated run");
  });
});

describe("templates", () => {
  const script = "echo out; echo err >&2; id; pwd; env | sort; hostname; ip -4 addr show eth0 | grep -c inet; exit 3";
  test("a template start gives what a cold boot gives: output, exit code, user, env, network", async () => {
    const cold = await h.mm(["run", "--rm", "--cold", "--name", "same", "--", "sh", "-c", script]);
    const first = await h.mm(["run", "--rm", "--name", "same", "--", "sh", "-c", script]);
    const warm = await h.mm(["run", "--rm", "--name", "same", "--", "sh", "-c", script]);
    for (const r of [cold, first, warm]) {
      assert.equal(r.code, 3, r.stderr);
      assert.equal(r.stdout, cold.stdout);
      assert.equal(r.stderr.replace(/mm: warning[^\n]*\n/g, ""), "err\n");
    }
    const templates = JSON.parse((await h.mm(["template", "ls", "--json"])).stdout) as { id: string }[];
    assert.ok(templates.length >= 1);
  });

  test("runs start from the template, --cold does not", async () => {
    ok(await h.mm(["run", "-d", "--name", "warm", "--", "sleep", "60"]), "run");
    assert.match((await inspect("warm")).boot ?? "", /^template:[0-9a-f]{12}$/);
    ok(await h.mm(["run", "-d", "--cold", "--name", "icy", "--", "sleep", "60"]), "run --cold");
    assert.equal((await inspect("icy")).boot, "cold");
    ok(await h.mm(["rm", "-f", "warm", "icy"]), "rm");
  });

  test("a template is made for one kernel build: another kernel boots cold and gets its own", async () => {
    const other = mkdtempSync(join(tmpdir(), "mm-kernel-"));
    const kernel = join(h.env.MM_CACHE || "/var/cache/mm", "kernels/default/vmlinux");
    copyFileSync(kernel, join(other, "vmlinux"));
    const env = { MM_KERNEL: join(other, "vmlinux") };
    try {
      const count = async () => (JSON.parse((await h.mm(["template", "ls", "--json"])).stdout) as unknown[]).length;
      const before = await count();
      ok(await h.mm(["run", "-d", "--name", "k1", "--", "sleep", "60"], env), "run");
      assert.equal((await inspect("k1")).boot, "cold");
      await until(async () => ((await count()) === before + 1 ? true : undefined), 30_000, "a new template");
      ok(await h.mm(["run", "-d", "--name", "k2", "--", "sleep", "60"], env), "run");
      assert.match((await inspect("k2")).boot ?? "", /^template:/);
      ok(await h.mm(["rm", "-f", "k1", "k2"]), "rm");
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  test("mm template create makes one ahead of the first run, or names the one there is", async () => {
    const r = await h.mm(["template", "create", "--network", "none", "--json"]);
    ok(r, "template create");
    const t = JSON.parse(r.stdout) as { id: string; existed: boolean };
    const again = JSON.parse((await h.mm(["template", "create", "--network", "none", "--json"])).stdout) as {
      id: string;
      existed: boolean;
    };
    assert.deepEqual([again.id, again.existed], [t.id, true]);
    ok(await h.mm(["run", "-d", "--network", "none", "--name", "nonet", "--", "sleep", "60"]), "run");
    assert.equal((await inspect("nonet")).boot, `template:${t.id.slice(0, 12)}`);
    ok(await h.mm(["rm", "-f", "nonet"]), "rm");
  });

  test("mm template rm removes it; the next run boots cold and makes a new one", async () => {
    const before = JSON.parse((await h.mm(["template", "ls", "--json"])).stdout) as { id: string }[];
    ok(await h.mm(["template", "rm", ...before.map((t) => t.id)]), "template rm");
    ok(await h.mm(["run", "-d", "--name", "fresh", "--", "sleep", "60"]), "run");
    assert.equal((await inspect("fresh")).boot, "cold");
    // The new template is recorded once its files are hashed, while the machine runs.
    await until(async () => {
      const list = JSON.parse((await h.mm(["template", "ls", "--json"])).stdout) as { id: string }[];
      return list.length === 1 || undefined;
    }, 30_000);
    ok(await h.mm(["rm", "-f", "fresh"]), "rm");
  });
});

describe("faults", () => {
  test("a truncated or altered snapshot is MM_SNAPSHOT_CORRUPT on restore, and nothing is created", async () => {
    const s = JSON.parse((await h.mm(["snapshot", "create", "counter", "--tag", "bad", "--json"])).stdout) as {
      id: string;
      files: { ram: { path: string }; state: { path: string } };
    };
    const saved = join(mkdtempSync(join(tmpdir(), "mm-snap-copy-")), "state");
    copyFileSync(s.files.state.path, saved);
    truncateSync(s.files.state.path, 100);
    let r = await h.mm(["restore", "counter:bad", "broken"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_SNAPSHOT_CORRUPT/);
    copyFileSync(saved, s.files.state.path);
    // Same size, one byte different: only the content hash can tell.
    execFileSync("sh", ["-c", `printf 'X' | dd of="${s.files.ram.path}" bs=1 seek=4096 conv=notrunc status=none`]);
    r = await h.mm(["restore", "counter:bad", "broken"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_SNAPSHOT_CORRUPT.*hash/s);
    assert.equal((await h.mm(["inspect", "broken"])).code, 125);
    ok(await h.mm(["snapshot", "rm", "counter:bad"]), "rm");
    rmSync(join(saved, ".."), { recursive: true, force: true });
  });

  test("a snapshot from another kernel build is MM_SNAPSHOT_INCOMPATIBLE", async () => {
    ok(await h.mm(["snapshot", "create", "counter", "--tag", "k"]), "snapshot");
    const other = mkdtempSync(join(tmpdir(), "mm-kernel-"));
    const kernel = join(h.env.MM_CACHE || "/var/cache/mm", "kernels/default/vmlinux");
    copyFileSync(kernel, join(other, "vmlinux"));
    execFileSync("sh", ["-c", `printf 'x' >> "${join(other, "vmlinux")}"`]);
    const r = await h.mm(["restore", "counter:k", "elsewhere"], { MM_KERNEL: join(other, "vmlinux") });
    rmSync(other, { recursive: true, force: true });
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_SNAPSHOT_INCOMPATIBLE.*guest kernel/s);
    assert.equal((await h.mm(["inspect", "elsewhere"])).code, 125, "no machine was created");
    ok(await h.mm(["snapshot", "rm", "counter:k"]), "snapshot rm");
  });

  test("kill -9 of the supervisor mid-snapshot: the machine is cleanly stopped, and boots again with its disk", async () => {
    ok(
      await h.mm(["run", "-d", "--name", "victim", "--", "sh", "-c", `echo kept > /root/file; sync; ${COUNTER}`]),
      "run",
    );
    await until(async () => ((await sh("victim", "cat /root/file")) === "kept" ? true : undefined), 10_000);
    const sup = (JSON.parse((await h.mm(["inspect", "victim"])).stdout) as { pids: { supervisor: number } }[])[0]?.pids
      .supervisor as number;
    const child = h.spawnMm(["snapshot", "create", "victim", "--tag", "cut"]);
    await new Promise((r) => setTimeout(r, 150));
    process.kill(sup, "SIGKILL");
    await new Promise((r) => child.once("close", r));
    // Its VMM died with it (pdeathsig): the machine is failed, not half-running.
    const m = await until(async () => {
      const x = await inspect("victim");
      return x.state === "failed" ? x : undefined;
    }, 10_000);
    assert.match(JSON.stringify(m.error), /MM_SUPERVISOR_LOST/);
    ok(await h.mm(["start", "victim"]), "start again");
    assert.equal(await sh("victim", "cat /root/file"), "kept");
    ok(await h.mm(["rm", "-f", "victim"]), "rm");
  });

  test("kill -9 of `mm snapshot create` mid-capture: the machine keeps running and stays usable", async () => {
    const child = h.spawnMm(["snapshot", "create", "counter", "--tag", "killed"]);
    await new Promise((r) => setTimeout(r, 60));
    child.kill("SIGKILL");
    await new Promise((r) => child.once("close", r));
    await until(async () => ((await inspect("counter")).state === "running" ? true : undefined), 10_000);
    const a = Number(await sh("counter", "cat /tmp/count"));
    await until(async () => Number(await sh("counter", "cat /tmp/count")) > a || undefined, 10_000, "counting");
    // Whatever the kill interrupted is either a whole snapshot or none at all.
    const list = JSON.parse((await h.mm(["snapshot", "ls", "--json"])).stdout) as { tag: string; id: string }[];
    for (const s of list.filter((x) => x.tag === "killed"))
      ok(await h.mm(["restore", s.id, `from-${s.tag}`]), "restore");
    // A second snapshot after the interrupted one works.
    ok(await h.mm(["snapshot", "create", "counter", "--tag", "after-kill"]), "snapshot after kill");
  });

  test("a full disk during a snapshot leaves no snapshot; the machine pauses, and carries on once there is room", async () => {
    const small = mkdtempSync(join(tmpdir(), "mm-snap-full-"));
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=96m", "tmpfs", small]);
    const env = { MM_STATE: small, MM_TEMPLATES: "0", MM_SHM: `${h.env.MM_SHM}-full` };
    try {
      ok(await h.mm(["run", "-d", "--network", "none", "--name", "tight", "--", "sh", "-c", COUNTER], env), "run");
      // Fill what is left, then snapshot: it cannot fit.
      execFileSync("sh", ["-c", `dd if=/dev/zero of="${join(small, "filler")}" bs=1M count=128 status=none || true`]);
      const r = await h.mm(["snapshot", "create", "tight"], env);
      assert.equal(r.code, 125);
      assert.match(r.stderr, /MM_DISK_FULL|MM_SNAPSHOT_FAILED/);
      assert.equal((await h.mm(["snapshot", "ls", "-q"], env)).stdout, "");
      assert.deepEqual(
        (existsSync(join(small, "snapshots")) ? readdirSync(join(small, "snapshots")) : []).filter((n) =>
          n.startsWith(".staging"),
        ),
        [],
        "no partial snapshot is left",
      );
      const m = JSON.parse((await h.mm(["inspect", "tight"], env)).stdout) as M[];
      assert.equal(m[0]?.state, "running");
      // The guest's own writes may have hit the full disk too (QEMU then pauses it): with
      // room again it carries on, its counter still counting.
      rmSync(join(small, "filler"));
      const e = await h.mm(["exec", "tight", "cat", "/tmp/count"], env);
      assert.equal(e.code, 0, e.stderr);
      await until(
        async () =>
          Number((await h.mm(["exec", "tight", "cat", "/tmp/count"], env)).stdout) > Number(e.stdout) || undefined,
        20_000,
        "counting",
      );
      ok(await h.mm(["snapshot", "create", "tight"], env), "snapshot once there is room");
    } finally {
      await h.mm(["rm", "-f", "tight"], env);
      execFileSync("umount", [small]);
      rmSync(small, { recursive: true, force: true });
      rmSync(`${h.env.MM_SHM}-full`, { recursive: true, force: true });
    }
  });
});

describe("ssh and gc", () => {
  test("SSH keeps working at the restored machine's new address", async () => {
    const keys = mkdtempSync(join(tmpdir(), "mm-snap-keys-"));
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(keys, "id")]);
    try {
      ok(
        await h.mm(["run", "-d", "--ssh", "--ssh-key", join(keys, "id.pub"), "--name", "sshy", "--", "sleep", "600"]),
        "run",
      );
      ok(await h.mm(["snapshot", "create", "sshy", "--tag", "s"]), "snapshot");
      ok(await h.mm(["restore", "sshy:s", "sshy2"]), "restore");
      const out = await h.mm(["ssh", "sshy2", "--", "hostname; ip -4 addr show eth0 | grep -o 'inet [0-9.]*'"]);
      ok(out, "ssh");
      assert.equal(out.stdout, `sshy2\ninet ${(await inspect("sshy2")).ip}\n`);
    } finally {
      rmSync(keys, { recursive: true, force: true });
    }
  });

  test("snapshot gc keeps the newest N; mm df accounts for what is stored", async () => {
    for (const t of ["g1", "g2", "g3"]) ok(await h.mm(["snapshot", "create", "sshy", "--tag", t]), "snapshot");
    const r = await h.mm(["snapshot", "gc", "sshy", "--keep", "2", "--json"]);
    ok(r, "gc");
    const gc = JSON.parse(r.stdout) as { removed: string[]; kept: string[] };
    const left = JSON.parse((await h.mm(["snapshot", "ls", "sshy", "--json"])).stdout) as { tag: string }[];
    // "s" has a child (sshy2), so it stays even though it is the oldest.
    assert.deepEqual(left.map((s) => s.tag).sort(), ["g2", "g3", "s"]);
    assert.equal(gc.removed.length, 1);
    const df = JSON.parse((await h.mm(["df", "--json"])).stdout) as { type: string; count: number; bytes: number }[];
    const row = (t: string) => df.find((d) => d.type === t);
    const all = JSON.parse((await h.mm(["snapshot", "ls", "--json"])).stdout) as unknown[];
    assert.equal(row("snapshots")?.count, all.length);
    assert.ok((row("snapshots")?.bytes ?? 0) > 1 << 20);
    assert.ok((row("templates")?.count ?? 0) >= 1);
  });

  test("nothing is left running after the machines are removed", async () => {
    const ids = (await h.mm(["ps", "-a", "-q"])).stdout.split("\n").filter(Boolean);
    ok(await h.mm(["rm", "-f", ...ids]), "rm all");
    for (const id of ids) assert.deepEqual(await processesMatching(`mm-${id}`), []);
    mkdirSync(join(h.env.MM_SHM as string, "machines"), { recursive: true });
    assert.deepEqual(readdirSync(join(h.env.MM_SHM as string, "machines")), []);
  });
});
