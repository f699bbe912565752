#!/usr/bin/env node
// bench/start: how fast a machine starts, four ways, interleaved in one run (ratios):
// a cold `mm run --rm --cold IMAGE -- echo hi`, the same from the image's template,
// `podman run --rm` (runc) of the same image, and `mm fork` of a running machine.
// Then memory: K forked clones against K cold machines (PSS of their VMMs).
// Everything runs without a network (no NIC, podman --network none).
// Writes the "start" section of docs/BENCHMARKS.md.   Usage: node bench/start.mjs [N] [K]

import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { median, writeSection } from "./report.mjs";

const root = resolve(import.meta.dirname, "..");
const N = Number(process.argv[2] ?? 10);
const K = Number(process.argv[3] ?? 4);
const mm = join(root, "bin/mm");
const { startRegistries } = await import(join(root, "test/fixtures/registry.mjs"));
const { QemuEngine, hostTscKhz } = await import(join(root, "packages/vmm/dist/index.js"));
const { AgentSession, TOOLS_SERIAL, defaultPaths, kernelPath } = await import(
  join(root, "packages/runtime/dist/index.js")
);
const { freshIdentity: fresh } = await import(join(root, "packages/core/dist/index.js"));
const { buildFixtureImages, pushFixtureImages } = await import(join(root, "test/fixtures/images.mjs"));

for (const tool of ["podman", "runc"]) {
  if (spawnSync("sh", ["-c", `command -v ${tool} || test -x /usr/sbin/${tool}`]).status !== 0) {
    process.stderr.write(`bench/start: installing ${tool} (apt-get)\n`);
    execFileSync("apt-get", ["install", "-y", "-q", tool], {
      stdio: "inherit",
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
  }
}

const work = mkdtempSync(join(tmpdir(), "mm-bench-start-"));
const regs = await startRegistries({ dir: join(work, "registry") });
const pushed = await pushFixtureImages(regs, await buildFixtureImages({ log: () => undefined }));
const image = pushed.images.busybox.ref;
const shm = `/dev/shm/mm-bench-start-${process.pid}`;
const env = { ...process.env, MM_STATE: join(work, "state"), MM_SHM: shm, MM_NETWORK: "none" };
// Podman in a private store, as the host's docs say it runs here (crun fails on this host's cgroups).
const podman = [
  "--root",
  join(work, "podman/root"),
  "--runroot",
  join(work, "podman/run"),
  "--storage-driver",
  "overlay",
];
const podmanRun = [
  ...podman,
  "run",
  "--rm",
  "--runtime",
  "/usr/sbin/runc",
  "--network",
  "none",
  "--ulimit",
  "nofile=1024:1024",
  "--ulimit",
  "nproc=1024:1024",
  "--tls-verify=false",
  image,
  "echo",
  "hi",
];

/**
 * The engine's floor for one start from a snapshot, with no mm process in the way: a new
 * QEMU restores the snapshot's state (RAM mapped copy-on-write, overlay made beforehand),
 * runs, and the guest answers: for a template, CONFIG `echo hi` until EXIT; for a running
 * machine's snapshot (a fork), IDENTITY until IDENTITY_RESULT. What remains is QEMU's own
 * start, the state load and the guest's work under this accelerator.
 */
async function engineFloor(snap, i) {
  const paths = defaultPaths(env);
  const overlay = join(work, `floor-${i}.qcow2`);
  execFileSync("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-u",
    "-b",
    snap.files.layer.path,
    "-F",
    "qcow2",
    overlay,
    "1G",
  ]);
  const engine = new QemuEngine({ tscKhz: await hostTscKhz() });
  const t = process.hrtime.bigint();
  const vm = await engine.boot({
    id: `floor-${i}`,
    runDir: join(work, `floor-run-${i}`),
    kernel: kernelPath(paths, env),
    kernelArgs: [],
    rootDisk: { path: overlay, format: "qcow2", readOnly: false },
    cpus: 1,
    memoryMib: 256,
    accel,
    agentChannel: true,
    extraDisks: [
      {
        path: join(paths.state, "guest-tools", snap.compat.tools),
        format: "raw",
        readOnly: true,
        serial: TOOLS_SERIAL,
      },
    ],
    memoryFile: { path: snap.files.ram.path, shared: false },
    incoming: true,
  });
  try {
    await vm.loadState(snap.files.state.path, { ignoreSharedMemory: true });
    const session = new AgentSession(vm.channel, snap.agent);
    await vm.resume();
    if (snap.agent.phase === "config") {
      const exited = new Promise((r) => session.once("exit", r));
      session.sendConfig({ args: ["echo", "hi"], env: [], fresh: fresh(randomBytes) });
      await exited;
    } else {
      const result = await session.identity({ hostname: "floor", fresh: fresh(randomBytes) });
      if (result !== "") throw new Error(`identity: ${result}`);
    }
    return Number(process.hrtime.bigint() - t) / 1e6;
  } finally {
    await vm.kill();
    rmSync(overlay, { force: true });
  }
}

const time = (cmd, args) => {
  const t = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { env, encoding: "utf8" });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return { ms, out: r.stdout };
};
const mmJson = (args) => JSON.parse(execFileSync(mm, args, { env, encoding: "utf8" }));
const insecure = ["--insecure-registry", regs.plain];
const pss = (pid) => Number(/^Pss:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))[1]) / 1024;
const vmmPids = (names) => mmJson(["inspect", ...names]).map((r) => r.pids.vmm);
const settle = () => new Promise((r) => setTimeout(r, 2000));

const cold = [];
const warm = [];
const pod = [];
const fork = [];
const pauses = [];
const floorTemplate = [];
const floorFork = [];
let mem;
let accel = "";
try {
  // Warm-up: pulls (both sides), builds the rootfs, makes the template, caches the accel verdict.
  time(mm, ["pull", "-q", ...insecure, image]);
  time("podman", [...podman, "pull", "-q", "--tls-verify=false", image]);
  time(mm, ["run", "--rm", ...insecure, image, "--", "echo", "hi"]);
  time("podman", podmanRun);
  const parentRec = mmJson([
    "run",
    "-d",
    "--cold",
    "--json",
    "--name",
    "parent",
    ...insecure,
    image,
    "--",
    "sleep",
    "3600",
  ]);
  accel = parentRec.accel;

  for (let i = 0; i < N; i++) {
    const c = time(mm, ["run", "--rm", "--cold", ...insecure, image, "--", "echo", "hi"]);
    const w = time(mm, ["run", "--rm", ...insecure, image, "--", "echo", "hi"]);
    if (c.out !== "hi\n" || w.out !== "hi\n") throw new Error(`unexpected output: ${c.out} / ${w.out}`);
    cold.push(c.ms);
    warm.push(w.ms);
    pod.push(time("podman", podmanRun).ms);
    fork.push(time(mm, ["fork", "parent", `kid${i}`]).ms);
    time(mm, ["rm", "-f", `kid${i}`]);
    pauses.push(mmJson(["snapshot", "create", "parent", "--json"]).pausedMs);
  }
  // The engine's floors, from the image's template and from a snapshot of the running parent.
  const template = mmJson(["template", "ls", "--json"]).find((t) => t.files.layer && t.compat && !t.compat.nic);
  const running = mmJson(["snapshot", "ls", "--json"]).find((x) => x.machine === "parent");
  for (let i = 0; i < N; i++) {
    floorTemplate.push(await engineFloor(template, i));
    floorFork.push(await engineFloor(running, i));
  }
  // Each run above must really have started from the template.
  const probe = mmJson(["run", "-d", "--json", "--name", "probe", ...insecure, image, "--", "sleep", "60"]);
  if (!String(mmJson(["inspect", probe.id])[0].boot).startsWith("template:")) throw new Error("template not used");
  time(mm, ["rm", "-f", "probe"]);

  // Memory: K clones of the parent against K cold machines, all idle (sleeping).
  const clones = Array.from({ length: K }, (_, i) => `clone-${i + 1}`);
  time(mm, ["fork", "parent", "clone", "--count", String(K)]);
  await settle();
  const clonePss = vmmPids(clones).map(pss);
  // The capture is one sealed memfd the clones' VMMs hold (no file): its allocated size.
  const clonePid = vmmPids([clones[0]])[0];
  const memfd = readdirSync(`/proc/${clonePid}/fd`).find((f) =>
    readlinkSync(`/proc/${clonePid}/fd/${f}`).startsWith("/memfd:mm-fork-ram"),
  );
  const captureMb = (statSync(`/proc/${clonePid}/fd/${memfd}`).blocks * 512) / 2 ** 20;
  time(mm, ["rm", "-f", ...clones]);
  const colds = Array.from({ length: K }, (_, i) => `cold-${i + 1}`);
  for (const n of colds) time(mm, ["run", "-d", "--cold", "--name", n, ...insecure, image, "--", "sleep", "3600"]);
  await settle();
  const coldPss = vmmPids(colds).map(pss);
  time(mm, ["rm", "-f", ...colds]);
  const parentPss = pss(vmmPids(["parent"])[0]);
  mem = { clonePss, coldPss, captureMb, parentPss, ramMib: 256 };
} finally {
  spawnSync(mm, ["rm", "-f", "parent"], { env });
  spawnSync("podman", [...podman, "system", "reset", "-f"], { stdio: "ignore" });
  await regs.stop();
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const [mc, mw, mp, mf] = [median(cold), median(warm), median(pod), median(fork)];
const perClone = sum(mem.clonePss) / K;
const perCold = sum(mem.coldPss) / K;
const qemuVersion = execFileSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" }).split("\n")[0];
const podmanVersion = execFileSync("podman", ["--version"], { encoding: "utf8" }).trim();
const row = (label, xs) => `| ${label} | ${median(xs).toFixed(0)} ms | ${xs.map((x) => x.toFixed(0)).join(", ")} |`;
const section = `## start — cold boot vs template vs Podman vs fork, and the memory of forks

Run: \`node bench/start.mjs ${N} ${K}\` on ${new Date().toISOString().slice(0, 10)}. Machine: ${cpus()[0]?.model} × ${cpus().length}, ${Math.round(totalmem() / 2 ** 30)} GiB,
host kernel ${release()}, ${qemuVersion}, ${podmanVersion} with runc. Accel: **${accel}**${accel === "tcg" ? " (TCG: emulation, not a security boundary)" : ""}.
Image: the fixture busybox (\`${image.replace(/^[^/]+\//, "REGISTRY/")}\`) for both mm and Podman; no network on either side.
The parent of the forks and snapshots is a cold-booted \`sleep 3600\` of the same image.
The four commands ran interleaved, ${N} times each; every mm machine has 1 vCPU and 256 MiB.

| measure | median | all runs (ms) |
| --- | --- | --- |
${row("(a) `mm run --rm --cold IMAGE -- echo hi` (kernel boot)", cold)}
${row("(b) `mm run --rm IMAGE -- echo hi` (from the image's template)", warm)}
${row("(c) `podman run --rm --runtime runc --network none IMAGE echo hi`", pod)}
${row("(d) `mm fork PARENT KID` (running parent → running clone, CLI to CLI)", fork)}
| **template / Podman: b/c** (target ≤ 1.0) | **${(mw / mp).toFixed(2)}** | |
| template / cold: b/a | ${(mw / mc).toFixed(2)} | |
| **fork / cold boot: d/a** (target ≤ 0.1) | **${(mf / mc).toFixed(2)}** | |
| (e) engine floor from the template: QEMU start, state load, CONFIG \`echo hi\` → EXIT (no mm process) | ${median(floorTemplate).toFixed(0)} ms | ${floorTemplate.map((x) => x.toFixed(0)).join(", ")} |
| (f) engine floor from a running machine's snapshot: QEMU start, state load, IDENTITY → result | ${median(floorFork).toFixed(0)} ms | ${floorFork.map((x) => x.toFixed(0)).join(", ")} |
| engine floor from the template / Podman: e/c | ${(median(floorTemplate) / mp).toFixed(2)} | |
| (pause + f) / cold boot: the fork's engine floor against a cold boot | ${((median(pauses) + median(floorFork)) / mc).toFixed(2)} | |
| pause of the parent during a live snapshot (\`snapshot create --json\` pausedMs) | ${median(pauses).toFixed(0)} ms | ${pauses.join(", ")} |

Memory of ${K} idle machines (PSS of each QEMU, from \`/proc/PID/smaps_rollup\`; the RAM file a
machine maps counts in its PSS, shared pages divided among the processes that map them):

| measure | value |
| --- | --- |
| ${K} forked clones: PSS each | ${mem.clonePss.map((x) => x.toFixed(0)).join(", ")} MB (sum ${sum(mem.clonePss).toFixed(0)} MB) |
| ${K} cold machines: PSS each | ${mem.coldPss.map((x) => x.toFixed(0)).join(", ")} MB (sum ${sum(mem.coldPss).toFixed(0)} MB) |
| the fork's RAM capture (one sealed memfd, allocated; mapped by the clones) | ${mem.captureMb.toFixed(0)} MB |
| per clone: PSS | ${perClone.toFixed(0)} MB = ${((perClone / mem.ramMib) * 100).toFixed(0)} % of its 256 MiB |
| per clone, counting the whole capture too: (sum PSS + capture) / ${K} | ${((sum(mem.clonePss) + mem.captureMb) / K).toFixed(0)} MB = ${(((sum(mem.clonePss) + mem.captureMb) / K / mem.ramMib) * 100).toFixed(0)} % (target ≤ 25 %) |
| per cold machine: PSS | ${perCold.toFixed(0)} MB |
| clones / cold machines (sum of PSS) | ${(sum(mem.clonePss) / sum(mem.coldPss)).toFixed(2)} |
`;
writeSection("start", section);
