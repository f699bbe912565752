// Rootless mode end to end: mm run by an unprivileged user (created for the test, with
// subordinate ids as `useradd` gives them), its state under the user's XDG directories,
// images built in a user namespace (owners kept), user-mode networking through passt
// with a published port and `mm ssh`, exec over the agent channel. Every guest packet
// stays in the test's network namespace; its only route leads into a veth pair of its own.

import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chownSync,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { CLI, type CliResult, until } from "./test-helpers.js";

const USER = "mm-rootless";
const fixtures = resolve(import.meta.dirname, "../../../test/fixtures");
const netns = `mm-test-${randomBytes(4).toString("hex")}`;
let uid = 0;
let createdUser = false;
let home = "";
let install = "";
let regs: { plain: string; stop(): Promise<void> };
let web = "";
let busybox = "";
let regDir = "";

/** Runs mm as the test user (a clean environment: no MM_STATE, no root's HOME), optionally in the namespace. */
function asUser(args: string[], options: { inNetns?: boolean; input?: string } = {}): Promise<CliResult> {
  const argv = [
    "setpriv",
    `--reuid=${uid}`,
    `--regid=${uid}`,
    "--init-groups",
    "env",
    "-i",
    `HOME=${home}`,
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    join(install, "node"),
    join(install, "apps/cli/dist/mm.mjs"),
    ...args,
  ];
  const full = options.inNetns ? ["ip", "netns", "exec", netns, ...argv] : argv;
  return new Promise((done) => {
    const child: ChildProcess = spawn(full[0] as string, full.slice(1), {
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      cwd: home,
    });
    child.stdin?.end(options.input);
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d) => {
      stdout += d;
    });
    child.stderr?.on("data", (d) => {
      stderr += d;
    });
    child.on("close", (code, signal) => done({ code, signal, stdout, stderr }));
  });
}

const inNs = (argv: string[]) => execFileSync("ip", ["netns", "exec", netns, ...argv], { encoding: "utf8" });

/** Processes owned by the test user whose command line mentions `needle`. */
function userProcesses(needle: string): number[] {
  let out = "";
  try {
    out = execFileSync("ps", ["-o", "pid=,args=", "-u", String(uid)], { encoding: "utf8" });
  } catch {
    // ps exits 1 when the user has no processes
  }
  return out
    .split("\n")
    .filter((l) => l.includes(needle))
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

before(async () => {
  try {
    uid = Number(execFileSync("id", ["-u", USER], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }));
  } catch {
    // useradd gives a normal user subordinate ids (SUB_UID_* in /etc/login.defs).
    execFileSync("useradd", ["--no-create-home", "--shell", "/usr/sbin/nologin", USER]);
    createdUser = true;
    uid = Number(execFileSync("id", ["-u", USER], { encoding: "utf8" }));
  }
  if (
    !readFileSync("/etc/subuid", "utf8")
      .split("\n")
      .some((l) => l.startsWith(`${USER}:`))
  ) {
    execFileSync("usermod", ["--add-subuids", "300000-365535", "--add-subgids", "300000-365535", USER]);
  }
  // What an install holds (the CLI bundle, its build worker, mm-init, Node), copied where
  // the user can read it: the checkout may sit in root's home.
  install = mkdtempSync(join(tmpdir(), "mm-rootless-install-"));
  const repo = resolve(CLI, "../../../..");
  for (const f of [
    "apps/cli/package.json",
    "apps/cli/dist/mm.mjs",
    "apps/cli/dist/rootfs-worker.js",
    "guest/init/build/mm-init",
    "host/jail/build/mm-seal",
  ]) {
    mkdirSync(join(install, f, ".."), { recursive: true });
    copyFileSync(join(repo, f), join(install, f));
  }
  copyFileSync(process.execPath, join(install, "node"));
  execFileSync("chmod", ["-R", "a+rX", install]);
  execFileSync("chmod", [
    "a+x",
    join(install, "node"),
    join(install, "guest/init/build/mm-init"),
    join(install, "host/jail/build/mm-seal"),
  ]);
  home = mkdtempSync(join(tmpdir(), "mm-rootless-home-"));
  chownSync(home, uid, uid);
  execFileSync("chmod", ["0700", home]);

  // The namespace's only route leads into a veth pair inside it: passt needs an outbound
  // interface, and nothing can leave.
  execFileSync("ip", ["netns", "add", netns]);
  for (const cmd of [
    ["link", "set", "lo", "up"],
    ["link", "add", "mmrl0", "type", "veth", "peer", "name", "mmrl1"],
    ["addr", "add", "198.18.0.1/24", "dev", "mmrl0"],
    ["link", "set", "mmrl0", "up"],
    ["link", "set", "mmrl1", "up"],
    ["route", "add", "default", "via", "198.18.0.2", "dev", "mmrl0"],
  ]) {
    execFileSync("ip", ["-n", netns, ...cmd]);
  }
  mkdirSync(`/etc/netns/${netns}`, { recursive: true });
  writeFileSync(`/etc/netns/${netns}/resolv.conf`, "# mm test namespace: no outside resolver\nnameserver 127.0.0.1\n");

  regDir = mkdtempSync(join(tmpdir(), "mm-rootless-reg-"));
  const { startRegistries } = await import(join(fixtures, "registry.mjs"));
  const { buildFixtureImages, pushFixtureImages } = await import(join(fixtures, "images.mjs"));
  regs = await startRegistries({ dir: regDir });
  const pushed = await pushFixtureImages(regs, await buildFixtureImages());
  web = pushed.images.web.ref;
  busybox = pushed.images.busybox.ref;
});

after(async () => {
  if (uid) {
    const ids = (await asUser(["ps", "-a", "-q"])).stdout.split("\n").filter(Boolean);
    if (ids.length > 0) await asUser(["rm", "-f", ...ids]);
    try {
      execFileSync("pkill", ["-KILL", "-u", String(uid)]);
    } catch {
      // none left: as it should be
    }
  }
  // The user's shared-memory directory (guest RAM, template RAM cache) goes with its state.
  for (const name of readdirSync("/dev/shm")) {
    if (uid !== 0 && name.startsWith("mm-") && lstatSync(join("/dev/shm", name)).uid === uid) {
      rmSync(join("/dev/shm", name), { recursive: true, force: true });
    }
  }
  await regs?.stop();
  rmSync(regDir, { recursive: true, force: true });
  if (home) rmSync(home, { recursive: true, force: true });
  if (install) rmSync(install, { recursive: true, force: true });
  execFileSync("ip", ["netns", "del", netns]);
  rmSync(`/etc/netns/${netns}`, { recursive: true, force: true });
  if (createdUser) execFileSync("userdel", [USER]);
});

describe("rootless", () => {
  test("doctor says rootless, lists what needs root, and finds the user's subordinate ids", async () => {
    const r = await asUser(["doctor", "--json"]);
    const checks = JSON.parse(r.stdout) as { name: string; ok: boolean; detail: string }[];
    const mode = checks.find((c) => c.name === "mode");
    assert.match(mode?.detail ?? "", new RegExp(`^rootless \\(uid ${uid}\\)`));
    assert.match(mode?.detail ?? "", /--network bridge/);
    assert.equal(checks.find((c) => c.name === "subordinate ids")?.ok, true);
    assert.equal(checks.find((c) => c.name === "state directory")?.detail, join(home, ".local/state/mm"));
  });

  test("an image pulled and built without root keeps its files' owners", async () => {
    const pull = await asUser(["pull", "-q", "--insecure-registry", regs.plain, web]);
    assert.equal(pull.code, 0, pull.stderr);
    const r = await asUser([
      "run",
      "--rm",
      "--network",
      "none",
      "--entrypoint",
      "stat",
      web,
      "-c",
      "%u:%g %a %n",
      "/www/index.html",
      "/bin/busybox",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "1000:1000 644 /www/index.html\n0:0 755 /bin/busybox\n");
    assert.match(r.stderr, /NOT a security boundary/, "the TCG fallback is said");
    // Everything is the user's: state under XDG, nothing in root's /var/lib/mm for it.
    assert.ok(existsSync(join(home, ".local/state/mm/mm.db")));
  });

  test("user-mode network: a published port answers from the host and exec works; no TAP, QEMU as the user", async () => {
    const pull = await asUser(["pull", "-q", "--insecure-registry", regs.plain, busybox]);
    assert.equal(pull.code, 0, pull.stderr);
    const run = await asUser(["run", "-d", "--name", "web", "-p", "127.0.0.1:18080:8080", web], { inNetns: true });
    assert.equal(run.code, 0, run.stderr);
    let body = "";
    await until(
      () => {
        try {
          body = inNs(["curl", "-s", "--max-time", "2", "http://127.0.0.1:18080/"]);
        } catch {
          body = "";
        }
        return body.includes("hello from the mm web fixture") || undefined;
      },
      60_000,
      "the published port",
    );
    assert.match((await asUser(["ps"], { inNetns: true })).stdout, /127\.0\.0\.1:18080->8080\/tcp/);
    const exec = await asUser(["exec", "web", "--", "sh", "-c", "id -un; ip -4 addr show eth0 | grep -c 10.0.2.15"], {
      inNetns: true,
    });
    assert.equal(exec.stdout, "root\n1\n", exec.stderr);
    // Outbound: the guest's connection leaves as the user's socket (to a server in the
    // namespace); the gateway does not lead to the host's loopback.
    const www = mkdtempSync(join(tmpdir(), "mm-rootless-www-"));
    writeFileSync(join(www, "hello"), "hello from the host side\n");
    const server = spawn("ip", ["netns", "exec", netns, "busybox", "httpd", "-f", "-p", "0.0.0.0:18081", "-h", www]);
    try {
      await until(() => inNs(["ss", "-ltn"]).includes(":18081") || undefined, 10_000, "the host-side server");
      const get = (ip: string, timeout: number) =>
        asUser(
          [
            "exec",
            "web",
            "--",
            "/.mm/tools/bin/busybox",
            "sh",
            "-c",
            // The request's side stays open until the reply is in: Debian 12's passt
            // (2023-03) can lose the server's FIN on a connection the guest half-closed first.
            `(printf 'GET /hello HTTP/1.0\\r\\n\\r\\n'; sleep ${timeout}) | /.mm/tools/bin/busybox nc -w ${timeout} ${ip} 18081`,
          ],
          { inNetns: true },
        );
      const out = await get("198.18.0.1", 5);
      assert.match(out.stdout, /200 OK[\s\S]*hello from the host side\n$/, out.stderr);
      const viaGateway = await get("10.0.2.2", 3);
      assert.doesNotMatch(viaGateway.stdout, /hello/, "the gateway led to the host's loopback");
    } finally {
      server.kill();
      rmSync(www, { recursive: true, force: true });
    }
    const links = inNs(["ip", "-o", "link"]);
    assert.doesNotMatch(links, /mmt|mmbr|tap/, "no bridge or TAP without root");
    for (const needle of ["qemu-system", "passt"]) {
      assert.ok(userProcesses(needle).length >= 1, `${needle} runs as the user`);
    }
    // A fork without root: the clone maps the fork's sealed memfd, held by the user's mm-seal.
    const fork = await asUser(["fork", "web", "webkid"], { inNetns: true });
    assert.equal(fork.code, 0, fork.stderr);
    const kid = await asUser(["exec", "webkid", "--", "cat", "/www/index.html"], { inNetns: true });
    assert.match(kid.stdout, /hello from the mm web fixture/, kid.stderr);
    assert.equal((await asUser(["rm", "-f", "web", "webkid"], { inNetns: true })).code, 0);
    await until(() => (userProcesses("passt").length === 0 ? true : undefined), 10_000, "passt to end");
  });

  test("mm ssh reaches a rootless machine through its loopback forward", async () => {
    mkdirSync(join(home, ".ssh"), { mode: 0o700 });
    chownSync(join(home, ".ssh"), uid, uid);
    execFileSync("setpriv", [
      `--reuid=${uid}`,
      `--regid=${uid}`,
      "--init-groups",
      "ssh-keygen",
      "-q",
      "-t",
      "ed25519",
      "-N",
      "",
      "-f",
      join(home, ".ssh", "id_ed25519"),
    ]);
    const r = await asUser(["run", "-d", "--name", "shelly", "--ssh", "--", "sleep", "600"], { inNetns: true });
    assert.equal(r.code, 0, r.stderr);
    assert.match((await asUser(["port", "shelly"], { inNetns: true })).stdout, /^22\/tcp -> 127\.0\.0\.1:\d+\n$/);
    const out = await asUser(["ssh", "shelly", "--", "echo hello from $(hostname)"], { inNetns: true });
    assert.equal(out.stdout, "hello from shelly\n", out.stderr);
    // A clone gets a loopback forward of its own, so `mm ssh` reaches it too.
    assert.equal((await asUser(["fork", "shelly", "shellykid"], { inNetns: true })).code, 0);
    const ports = await Promise.all(
      ["shelly", "shellykid"].map(async (n) => (await asUser(["port", n], { inNetns: true })).stdout),
    );
    assert.match(ports[1] as string, /^22\/tcp -> 127\.0\.0\.1:\d+\n$/);
    assert.notEqual(ports[0], ports[1]);
    const kid = await asUser(["ssh", "shellykid", "--", "echo hello from $(hostname)"], { inNetns: true });
    assert.equal(kid.stdout, "hello from shellykid\n", kid.stderr);
    assert.equal((await asUser(["rm", "-f", "shelly", "shellykid"], { inNetns: true })).code, 0);
  });

  test("a shared host directory works without root (over 9p), both ways", async () => {
    const dir = join(home, "shared");
    mkdirSync(dir);
    writeFileSync(join(dir, "from-host"), "written on the host\n");
    chownSync(dir, uid, uid);
    chownSync(join(dir, "from-host"), uid, uid);
    const r = await asUser([
      "run",
      "--rm",
      "--network",
      "none",
      "-v",
      `${dir}:/mnt`,
      "--",
      "sh",
      "-c",
      "cat /mnt/from-host && echo written in the guest > /mnt/from-guest",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "written on the host\n");
    assert.equal(readFileSync(join(dir, "from-guest"), "utf8"), "written in the guest\n");
    assert.equal(lstatSync(join(dir, "from-guest")).uid, uid, "the file is the user's on the host");
  });

  test("root-only options are refused with MM_ROOT_REQUIRED and a hint", async () => {
    for (const flags of [
      ["--network", "bridge"],
      ["--egress", "10.0.0.0/8"],
      ["--egress", "deny", "-p", "18090:80"],
      ["--network-group", "g"],
      ["--net-bps", "1M"],
    ]) {
      const r = await asUser(["run", "--rm", ...flags, "--", "true"], { inNetns: true });
      assert.equal(r.code, 125, r.stderr);
      assert.match(r.stderr, /MM_ROOT_REQUIRED/);
      assert.match(r.stderr, /hint: /);
    }
  });

  test("without root, a deny-all sandbox is a machine with no NIC: it runs and reaches nothing", async () => {
    const sb = await asUser(["sandbox", "create", "--allow-tcg", "--egress", "deny", "--disk-bps", "8M"], {
      inNetns: true,
    });
    assert.equal(sb.code, 0, sb.stderr);
    const id = sb.stdout.trim();
    const r = await asUser(["exec", id, "--", "ls", "/sys/class/net"], { inNetns: true });
    assert.equal(r.stdout, "lo\n", r.stderr);
    assert.equal(userProcesses("passt").length, 0, "no user-mode network daemon");
    assert.equal((await asUser(["sandbox", "rm", id], { inNetns: true })).code, 0);
  });
});
