#!/usr/bin/env node
// bench/exec: `mm exec NAME true` against `ssh NAME true` on the same machine, side by
// side, and stdin throughput of each (64 MiB into the guest). Runs in a network namespace
// it creates and removes. Writes the "exec" section of docs/BENCHMARKS.md.
// Usage: node bench/exec.mjs [N]

import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { median, writeSection } from "./report.mjs";

const root = resolve(import.meta.dirname, "..");
const N = Number(process.argv[2] ?? 10);
const work = mkdtempSync(join(tmpdir(), "mm-bench-exec-"));
const ns = `mm-bench-${randomBytes(3).toString("hex")}`;
// Guest RAM files in a shared-memory directory of the run's own, removed with it.
const shm = `/dev/shm/mm-bench-exec-${process.pid}`;
const env = { ...process.env, MM_STATE: join(work, "state"), MM_SHM: shm };
// Stdin comes from a file, as `mm exec -i … < file` would have it.
const stdinOf = (file) => (file ? [openSync(file, "r"), "pipe", "pipe"] : ["ignore", "pipe", "pipe"]);
const mm = (args, file) =>
  spawnSync("ip", ["netns", "exec", ns, process.execPath, join(root, "apps/cli/dist/mm.mjs"), ...args], {
    env,
    stdio: stdinOf(file),
    maxBuffer: 1 << 30,
  });
const timed = (f) => {
  const t = process.hrtime.bigint();
  const r = f();
  if (r.status !== 0) throw new Error(`exit ${r.status}: ${r.stderr}`);
  return Number(process.hrtime.bigint() - t) / 1e6;
};

execFileSync("ip", ["netns", "add", ns]);
execFileSync("ip", ["-n", ns, "link", "set", "lo", "up"]);
let rows;
try {
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(work, "id")]);
  const run = mm(["run", "-d", "--name", "bench", "--ssh", "--ssh-key", join(work, "id.pub"), "--", "sleep", "3600"]);
  if (run.status !== 0) throw new Error(String(run.stderr));
  const id = String(run.stdout).trim();
  const ip = JSON.parse(String(mm(["inspect", "bench"]).stdout))[0].ip;
  const sshArgs = [
    "-o",
    `UserKnownHostsFile=${join(env.MM_STATE, "machines", id, "known_hosts")}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    `HostKeyAlias=mm-${id}`,
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "LogLevel=ERROR",
    "-i",
    join(work, "id"),
    "-o",
    "IdentitiesOnly=yes",
    `root@${ip}`,
  ];
  const ssh = (cmd, file) =>
    spawnSync("ip", ["netns", "exec", ns, "ssh", ...sshArgs, cmd], { stdio: stdinOf(file), maxBuffer: 1 << 30 });
  const execT = [];
  const sshT = [];
  for (let i = 0; i < N; i++) {
    execT.push(timed(() => mm(["exec", "bench", "--", "true"])));
    sshT.push(timed(() => ssh("true")));
  }
  const data = join(work, "data");
  writeFileSync(data, randomBytes(64 * 1024 * 1024));
  const execTp = [];
  const sshTp = [];
  for (let i = 0; i < 3; i++) {
    execTp.push(64 / (timed(() => mm(["exec", "-i", "bench", "--", "sh", "-c", "cat > /dev/null"], data)) / 1000));
    sshTp.push(64 / (timed(() => ssh("cat > /dev/null", data)) / 1000));
  }
  rows = { exec: median(execT), ssh: median(sshT), execTp: median(execTp), sshTp: median(sshTp), execT, sshT };
} finally {
  mm(["rm", "-f", "bench"]);
  execFileSync("ip", ["netns", "del", ns]);
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

const section = `## exec — \`mm exec\` vs \`ssh\` into the same machine

Run: \`node bench/exec.mjs ${N}\` on ${new Date().toISOString().slice(0, 10)}. Machine: ${cpus()[0]?.model} × ${cpus().length}, ${Math.round(totalmem() / 2 ** 30)} GiB,
host kernel ${release()}; guest under TCG; both clients started fresh each time (mm: the CLI
process, Node start-up included; ssh: OpenSSH client to the guest's bundled dropbear).

| measure | mm exec | ssh | ratio (target) |
| --- | --- | --- | --- |
| \`true\` latency, median of ${N} | ${rows.exec.toFixed(0)} ms | ${rows.ssh.toFixed(0)} ms | **${(rows.exec / rows.ssh).toFixed(2)}** (≤ 0.5) |
| stdin throughput, 64 MiB into \`cat > /dev/null\`, median of 3 | ${rows.execTp.toFixed(1)} MB/s | ${rows.sshTp.toFixed(1)} MB/s | **${(rows.execTp / rows.sshTp).toFixed(2)}** (≥ 1.0) |
`;
writeSection("exec", section);
