#!/usr/bin/env node
// bench/sandbox: a sandbox through the API and SDK (`mm serve`, Sandbox.create, exec)
// against the same through the CLI (`mm sandbox create`, `mm exec`), side by side in one
// run: time from create to the first exec's result, and an exec round trip; and the same
// create against a server keeping a pool (`mm serve --pool 1`, its own state and network
// namespace, so that the other two never claim from it). Runs in network namespaces it
// creates and removes. Writes the "sandbox" section of docs/BENCHMARKS.md.
// Usage: node bench/sandbox.mjs [N]

import { execFileSync, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { MmClient, Sandbox } from "../packages/sdk/dist/index.js";
import { median, writeSection } from "./report.mjs";

const root = resolve(import.meta.dirname, "..");
const N = Number(process.argv[2] ?? 5);
const RTT = 20;
const work = mkdtempSync(join(tmpdir(), "mm-bench-sandbox-"));
const ns = `mm-bench-${randomBytes(3).toString("hex")}`;
const state = join(work, "state");
const env = { ...process.env, MM_STATE: state, MM_SHM: `/dev/shm/mm-bench-${randomBytes(3).toString("hex")}` };
const cli = join(root, "apps/cli/dist/mm.mjs");
const mm = (args) => spawnSync("ip", ["netns", "exec", ns, process.execPath, cli, ...args], { env, encoding: "utf8" });
const ok = (r) => {
  if (r.status !== 0) throw new Error(`exit ${r.status}: ${r.stderr}`);
  return r.stdout;
};
const now = () => performance.now();

const ns2 = `${ns}-pool`;
const poolEnv = { ...env, MM_STATE: join(work, "state-pool"), MM_SHM: `${env.MM_SHM}-pool` };
for (const n of [ns, ns2]) {
  execFileSync("ip", ["netns", "add", n]);
  execFileSync("ip", ["-n", n, "link", "set", "lo", "up"]);
}
const server = spawn("ip", ["netns", "exec", ns, process.execPath, cli, "serve"], {
  env,
  stdio: ["ignore", "pipe", "inherit"],
});
const poolServer = spawn("ip", ["netns", "exec", ns2, process.execPath, cli, "serve", "--pool", "1"], {
  env: poolEnv,
  stdio: ["ignore", "pipe", "inherit"],
});
let rows;
try {
  await new Promise((r) => server.stdout.once("data", r));
  await new Promise((r) => poolServer.stdout.once("data", r));
  const client = { host: `unix://${join(state, "api.sock")}` };
  const poolClient = new MmClient({ host: `unix://${join(poolEnv.MM_STATE, "api.sock")}` });
  /** Waits until the pool server has a booted, unclaimed sandbox (and nothing else booting). */
  const poolReady = async () => {
    for (;;) {
      const ms = await poolClient.json("GET", "/v1/machines");
      if (ms.length === 1 && ms[0].state === "running" && ms[0].sandbox?.timeoutMs === 3_600_000) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  // Warm-up: the first sandbox of the image makes its template (both paths then use it).
  const warm = await Sandbox.create({ client, allowTcg: true });
  await warm.exec(["true"]);
  await warm.kill();

  const pooled = [];
  const api = { create: [], rtt: [] };
  const viaCli = { create: [], rtt: [] };
  for (let i = 0; i < N; i++) {
    let t = now();
    const sb = await Sandbox.create({ client, allowTcg: true });
    const first = await sb.exec(["true"]);
    if (first.exitCode !== 0) throw new Error("exec failed");
    api.create.push(now() - t);
    for (let j = 0; j < RTT; j++) {
      t = now();
      await sb.exec(["true"]);
      api.rtt.push(now() - t);
    }
    await sb.kill();

    t = now();
    const id = ok(mm(["sandbox", "create", "--allow-tcg"])).trim();
    ok(mm(["exec", id, "--", "true"]));
    viaCli.create.push(now() - t);
    for (let j = 0; j < RTT; j++) {
      t = now();
      ok(mm(["exec", id, "--", "true"]));
      viaCli.rtt.push(now() - t);
    }
    ok(mm(["sandbox", "rm", id]));

    await poolReady();
    t = now();
    const fromPool = await Sandbox.create({ client: poolClient, allowTcg: true });
    if ((await fromPool.exec(["true"])).exitCode !== 0) throw new Error("exec failed");
    pooled.push(now() - t);
    await fromPool.kill();
    await poolReady(); // its refill must not run beside the next measurements
  }
  await poolClient.close();
  rows = {
    pooled: median(pooled),
    apiCreate: median(api.create),
    cliCreate: median(viaCli.create),
    apiRtt: median(api.rtt),
    cliRtt: median(viaCli.rtt),
  };
} finally {
  for (const s of [server, poolServer]) {
    s.kill("SIGTERM");
    await new Promise((r) => s.once("exit", r));
  }
  for (const id of (mm(["ps", "-aq"]).stdout ?? "").split("\n").filter(Boolean)) mm(["rm", "-f", id]);
  const mmPool = (args) =>
    spawnSync("ip", ["netns", "exec", ns2, process.execPath, cli, ...args], { env: poolEnv, encoding: "utf8" });
  for (const id of (mmPool(["ps", "-aq"]).stdout ?? "").split("\n").filter(Boolean)) mmPool(["rm", "-f", id]);
  for (const n of [ns, ns2]) execFileSync("ip", ["netns", "del", n]);
  rmSync(work, { recursive: true, force: true });
  for (const d of [env.MM_SHM, poolEnv.MM_SHM]) rmSync(d, { recursive: true, force: true });
}

const r = (a, b) => (a / b).toFixed(2);
const section = `## sandbox — API and SDK vs the CLI

Run: \`node bench/sandbox.mjs ${N}\` on ${new Date().toISOString().slice(0, 10)}. Machine: ${cpus()[0]?.model} × ${cpus().length}, ${Math.round(totalmem() / 2 ** 30)} GiB,
host kernel ${release()}; guests under TCG, jailed; the default image, from its template. API: \`mm serve\`
on its unix socket, driven by the SDK in one process. CLI: \`mm sandbox create\` then \`mm exec\`, each a
new process (Node start-up included), as a script would call them.

| measure | API + SDK | CLI | API / CLI (target ≤ 1.10) |
| --- | --- | --- | --- |
| create → first exec result, median of ${N} | ${rows.apiCreate.toFixed(0)} ms | ${rows.cliCreate.toFixed(0)} ms | **${r(rows.apiCreate, rows.cliCreate)}** |
| exec \`true\` round trip, median of ${N * RTT} | ${rows.apiRtt.toFixed(1)} ms | ${rows.cliRtt.toFixed(1)} ms | **${r(rows.apiRtt, rows.cliRtt)}** |

With a pool (\`mm serve --pool 1\`: a sandbox booted ahead, claimed by a create that asks only for
the defaults, then replaced in the background; measured with the pool refilled before each create):

| measure | from the pool | API without a pool | pool / no pool |
| --- | --- | --- | --- |
| create → first exec result, median of ${N} | ${rows.pooled.toFixed(0)} ms | ${rows.apiCreate.toFixed(0)} ms | **${r(rows.pooled, rows.apiCreate)}** |
`;
writeSection("sandbox", section);
