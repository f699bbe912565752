// Networking end to end, inside the test's own network namespace: addresses from IPAM,
// groups, anti-spoofing, NAT and egress policy towards an "outside" namespace, and
// published ports reached from the namespace (the host's view) with curl.

import assert from "node:assert/strict";
import { execFile, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { harness } from "./test-helpers.js";

const h = harness("mm-net-");
const outside = `${h.netns}-out`;
const OUTSIDE_IP = "198.51.100.2"; // TEST-NET-2, only inside this test's namespaces

type M = { name: string; ip: string | null; state: string };
const inspect = async (name: string): Promise<M> => (JSON.parse((await h.mm(["inspect", name])).stdout) as M[])[0] as M;
const inNs = (ns: string, cmd: string[]) =>
  new Promise<{ code: number; out: string }>((resolve) =>
    execFile("ip", ["netns", "exec", ns, ...cmd], { timeout: 20_000 }, (e, out) =>
      resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out: String(out) }),
    ),
  );

before(() => {
  // An "outside world" namespace, linked to the test namespace by a veth pair.
  execFileSync("ip", ["netns", "add", outside]);
  execFileSync("ip", [
    "-n",
    h.netns,
    "link",
    "add",
    "mmveth0",
    "type",
    "veth",
    "peer",
    "name",
    "mmveth1",
    "netns",
    outside,
  ]);
  execFileSync("ip", ["-n", h.netns, "addr", "add", "198.51.100.1/24", "dev", "mmveth0"]);
  execFileSync("ip", ["-n", h.netns, "link", "set", "mmveth0", "up"]);
  execFileSync("ip", ["-n", outside, "addr", "add", `${OUTSIDE_IP}/24`, "dev", "mmveth1"]);
  execFileSync("ip", ["-n", outside, "link", "set", "mmveth1", "up"]);
  execFileSync("ip", ["-n", outside, "link", "set", "lo", "up"]);
});
after(async () => {
  await h.cleanup();
  execFileSync("ip", ["netns", "del", outside]);
});

describe("addresses and groups", () => {
  test("machines get distinct addresses from the subnet, shown by inspect", async () => {
    for (const [name, group] of [
      ["a", "g1"],
      ["b", "g1"],
      ["loner", ""],
    ]) {
      const args = [
        "run",
        "-d",
        "--name",
        name as string,
        ...(group ? ["--network-group", group as string] : []),
        "--",
        "sleep",
        "600",
      ];
      const r = await h.mm(args);
      assert.equal(r.code, 0, r.stderr);
    }
    const ips = await Promise.all(["a", "b", "loner"].map(async (n) => (await inspect(n)).ip));
    assert.equal(new Set(ips).size, 3);
    for (const ip of ips) assert.match(ip ?? "", /^\d+\.\d+\.\d+\.\d+$/);
  });

  test("machines in one group reach each other; others do not", async () => {
    const a = (await inspect("a")).ip as string;
    const same = await h.mm(["run", "--rm", "--network-group", "g1", "--", "ping", "-c1", "-W3", a]);
    assert.equal(same.code, 0, `same group: ${same.stdout}${same.stderr}`);
    const other = await h.mm(["run", "--rm", "--", "ping", "-c1", "-W2", a]);
    assert.notEqual(other.code, 0, "a machine outside the group got through");
  });

  test("a guest spoofing another source address gets nothing through", async () => {
    const a = (await inspect("a")).ip as string;
    const spoof = await h.mm([
      "run",
      "--rm",
      "--network-group",
      "g1",
      "--",
      "sh",
      "-c",
      `ip addr add 10.88.250.250/16 dev eth0 && ping -c1 -W2 -I 10.88.250.250 ${a}`,
    ]);
    assert.notEqual(spoof.code, 0, `spoofed ping answered: ${spoof.stdout}`);
  });
});

describe("outside world", () => {
  test("by default a guest reaches outside through NAT", async () => {
    const r = await h.mm(["run", "--rm", "--", "ping", "-c1", "-W3", OUTSIDE_IP]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
  });

  test("--egress deny blocks it; an allow-list admits only what it names", async () => {
    const denied = await h.mm(["run", "--rm", "--egress", "deny", "--", "ping", "-c1", "-W2", OUTSIDE_IP]);
    assert.notEqual(denied.code, 0, "deny-all egress let a packet out");
    const listed = await h.mm(["run", "--rm", "--egress", `${OUTSIDE_IP}/32`, "--", "ping", "-c1", "-W3", OUTSIDE_IP]);
    assert.equal(listed.code, 0, listed.stdout + listed.stderr);
    const other = await h.mm(["run", "--rm", "--egress", "203.0.113.0/24", "--", "ping", "-c1", "-W2", OUTSIDE_IP]);
    assert.notEqual(other.code, 0);
  });
});

describe("sandboxes", () => {
  test("a deny-all sandbox reaches nowhere; an allowing one reaches outside; sandboxes never reach each other", async () => {
    const made: string[] = [];
    const sandbox = async (...flags: string[]) => {
      const r = await h.mm(["sandbox", "create", "--allow-tcg", "--timeout", "5m", ...flags]);
      assert.equal(r.code, 0, r.stderr);
      made.push(r.stdout.trim());
      return r.stdout.trim();
    };
    try {
      const open = await sandbox();
      const closed = await sandbox("--egress", "deny");
      const ping = (sb: string, ip: string) => h.mm(["exec", sb, "--", "ping", "-c1", "-W2", ip]);
      assert.equal((await ping(open, OUTSIDE_IP)).code, 0, "an allowing sandbox reaches outside");
      assert.notEqual((await ping(closed, OUTSIDE_IP)).code, 0, "a deny-all sandbox got a packet out");
      const closedIp = (await inspect(closed)).ip as string;
      const openIp = (await inspect(open)).ip as string;
      assert.notEqual((await ping(open, closedIp)).code, 0, "one sandbox reached another");
      assert.notEqual((await ping(closed, openIp)).code, 0, "one sandbox reached another");
    } finally {
      if (made.length) await h.mm(["sandbox", "rm", ...made]);
    }
  });
});

describe("throughput limits", () => {
  test("--net-bps and --disk-bps slow a machine down to about the rate; an unlimited one is not", async () => {
    const www = mkdtempSync(join(tmpdir(), "mm-net-www-"));
    writeFileSync(join(www, "big"), randomBytes(1024 * 1024));
    const server = spawn("ip", [
      "netns",
      "exec",
      outside,
      "busybox",
      "httpd",
      "-f",
      "-p",
      `${OUTSIDE_IP}:8000`,
      "-h",
      www,
    ]);
    try {
      await new Promise((r) => setTimeout(r, 300));
      for (const [name, flags] of [
        ["fast", []],
        ["slow", ["--net-bps", "256K", "--disk-bps", "1M"]],
      ] as const) {
        const r = await h.mm(["run", "-d", "--name", name, ...flags, "--", "sleep", "600"]);
        assert.equal(r.code, 0, r.stderr);
      }
      const timed = async (name: string, script: string) => {
        const t = performance.now();
        const r = await h.mm(["exec", name, "--", "sh", "-c", script]);
        assert.equal(r.code, 0, `${name}: ${r.stdout}${r.stderr}`);
        return { ms: performance.now() - t, out: r.stdout };
      };
      const fetch1M = `printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 10 ${OUTSIDE_IP} 8000 | wc -c`;
      const fastNet = await timed("fast", fetch1M);
      const slowNet = await timed("slow", fetch1M);
      assert.ok(Number(fastNet.out.trim()) > 1024 * 1024 && Number(slowNet.out.trim()) > 1024 * 1024, "all arrived");
      // 1 MiB at 256 KiB/s: about 4 s (policing drops what is over; TCP slows down).
      assert.ok(slowNet.ms > 2500, `1 MiB at 256 KiB/s took ${slowNet.ms.toFixed(0)} ms`);
      assert.ok(fastNet.ms < slowNet.ms / 2, `unlimited ${fastNet.ms.toFixed(0)} ms vs ${slowNet.ms.toFixed(0)} ms`);
      const write4M = "dd if=/dev/zero of=/root/f bs=64k count=64 conv=fsync 2>/dev/null; rm /root/f";
      const fastDisk = await timed("fast", write4M);
      const slowDisk = await timed("slow", write4M);
      assert.ok(slowDisk.ms > 2500, `4 MiB at 1 MiB/s took ${slowDisk.ms.toFixed(0)} ms`);
      assert.ok(
        fastDisk.ms < slowDisk.ms / 2,
        `unlimited ${fastDisk.ms.toFixed(0)} ms vs ${slowDisk.ms.toFixed(0)} ms`,
      );
    } finally {
      server.kill();
      rmSync(www, { recursive: true, force: true });
      await h.mm(["rm", "-f", "fast", "slow"]);
    }
  });
});

describe("published ports", () => {
  test("-p publishes a guest port on the host: curl from the namespace reaches it", async () => {
    const r = await h.mm([
      "run",
      "-d",
      "--name",
      "web",
      "-p",
      "8080:80",
      "--",
      "sh",
      "-c",
      "mkdir -p /www && echo hello from the guest > /www/index.html && httpd -f -p 80 -h /www",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await h.mm(["port", "web"])).stdout, "80/tcp -> 0.0.0.0:8080\n");
    assert.match((await h.mm(["ps"])).stdout, /0\.0\.0\.0:8080->80\/tcp/);
    let body = "";
    for (let i = 0; i < 50 && !body; i++) {
      body = (await inNs(h.netns, ["curl", "-s", "--max-time", "2", "http://127.0.0.1:8080/"])).out;
      if (!body) await new Promise((res) => setTimeout(res, 200));
    }
    assert.equal(body, "hello from the guest\n");
    const viaOutside = await inNs(outside, ["curl", "-s", "--max-time", "3", "http://198.51.100.1:8080/"]);
    assert.equal(viaOutside.out, "hello from the guest\n", "from another host on the network");
  });

  test("rm -f of a running machine removes its TAP and rules", async () => {
    const taps = () =>
      execFileSync("ip", ["-n", h.netns, "-o", "link", "show"], { encoding: "utf8" }).match(/mmt[0-9a-f]+/g) ?? [];
    const before = taps().length;
    assert.equal((await h.mm(["rm", "-f", "web"])).code, 0);
    assert.equal(taps().length, before - 1);
    const rules = execFileSync("ip", ["netns", "exec", h.netns, "nft", "list", "table", "inet", "mm"], {
      encoding: "utf8",
    });
    assert.doesNotMatch(rules, /8080/, "the published port's DNAT is gone");
  });

  test("mm doctor finds a leftover TAP and --fix removes it", async () => {
    execFileSync("ip", ["-n", h.netns, "tuntap", "add", "dev", "mmt0123456789ab", "mode", "tap"]);
    type Check = { name: string; ok: boolean; detail: string };
    const net = async (args: string[]) =>
      (JSON.parse((await h.mm(["doctor", "--json", ...args])).stdout) as Check[]).find(
        (c) => c.name === "host network",
      );
    const found = await net([]);
    assert.equal(found?.ok, false);
    assert.match(found?.detail ?? "", /mmt0123456789ab/);
    assert.match((await net(["--fix"]))?.detail ?? "", /removed tap mmt0123456789ab/);
    assert.doesNotMatch(execFileSync("ip", ["-n", h.netns, "link"], { encoding: "utf8" }), /mmt0123456789ab/);
    assert.equal((await net([]))?.ok, true);
  });

  test("a taken host port is MM_PORT_IN_USE", async () => {
    assert.equal((await h.mm(["run", "-d", "--name", "web2", "-p", "8080:80", "--", "sleep", "600"])).code, 0);
    const r = await h.mm(["run", "--rm", "-p", "8080:81", "--", "true"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_PORT_IN_USE/);
  });
});
