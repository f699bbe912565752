#!/usr/bin/env node
// bench/boot: `mm run --rm -- true` against the bare QEMU command line that boots the
// same kernel and root filesystem straight into the workload (busybox sh as init runs
// `true`, then powers off), interleaved in one run
// (ratios, since machines are noisy). Also the guest's own time to the workload
// (from the guest kernel's clock) and the VMM's resident memory.
// Writes the "boot" section of docs/BENCHMARKS.md.   Usage: node bench/boot.mjs [N]

import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { median, writeSection } from "./report.mjs";

const root = resolve(import.meta.dirname, "..");
const N = Number(process.argv[2] ?? 10);
const mm = join(root, "bin/mm");
const state = mkdtempSync(join(tmpdir(), "mm-bench-"));
// No NIC: the bare QEMU line has none either, and a benchmark must not touch the host network.
// Guest RAM files in a shared-memory directory of the run's own, removed with it.
const shm = `/dev/shm/mm-bench-boot-${process.pid}`;
const env = { ...process.env, MM_STATE: state, MM_SHM: shm, MM_NETWORK: "none" };
const { hostTscKhz } = await import(join(root, "packages/vmm/dist/index.js"));
const { defaultImageRootfs, defaultPaths, initPath, kernelPath } = await import(
  join(root, "packages/runtime/dist/index.js")
);

const time = (cmd, args, opts = {}) => {
  const t = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { env, encoding: "utf8", ...opts });
  const ms = Number(process.hrtime.bigint() - t) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return { ms, out: r.stdout };
};

// Warm up: builds the shared base rootfs and caches the acceleration verdict.
time(mm, ["run", "--rm", "--cold", "--", "true"]);
const paths = defaultPaths(env);
const base = await defaultImageRootfs(paths, initPath(env));
const kernel = kernelPath(paths, env);
const accel = JSON.parse(
  execFileSync(mm, ["run", "-d", "--rm", "--json", "--", "sleep", "5"], { env, encoding: "utf8" }),
).accel;
const tsc = await hostTscKhz();

const bare = [
  "-M",
  "microvm,x-option-roms=off,acpi=on,pit=on,pic=on,rtc=on",
  "-accel",
  accel,
  "-cpu",
  accel === "kvm" ? "host" : "max",
  "-smp",
  "1",
  "-m",
  "256M",
  "-nodefaults",
  "-no-user-config",
  "-display",
  "none",
  "-no-reboot",
  "-kernel",
  kernel,
  // The workload as init: busybox sh runs `true`, then powers off.
  "-append",
  `console=ttyS0 root=/dev/vda ro rootfstype=ext4 reboot=t panic=-1 quiet 8250.nr_uarts=1${tsc ? ` tsc_early_khz=${tsc}` : ""} init=/bin/sh -- -c "true;echo workload-ran;/sbin/poweroff -f"`,
  "-serial",
  "stdio",
  "-drive",
  `id=root,file=${base.path},format=raw,if=none,readonly=on`,
  "-device",
  "virtio-blk-device,drive=root",
];

const a = [];
const b = [];
const uptime = [];
for (let i = 0; i < N; i++) {
  const ra = time("qemu-system-x86_64", bare);
  if (!ra.out.includes("workload-ran")) throw new Error(`bare boot did not run the workload: ${ra.out.slice(-300)}`);
  a.push(ra.ms);
  b.push(time(mm, ["run", "--rm", "--cold", "--", "true"]).ms);
  uptime.push(Number(time(mm, ["run", "--rm", "--cold", "--", "cat", "/proc/uptime"]).out.split(" ")[0]) * 1000);
}

// Resident memory of an idle guest's VMM.
const rec = JSON.parse(
  execFileSync(mm, ["run", "-d", "--cold", "--json", "--name", "rss", "--", "sleep", "60"], { env, encoding: "utf8" }),
);
await new Promise((r) => setTimeout(r, 1000));
const status = readFileSync(`/proc/${rec.pids.vmm}/status`, "utf8");
const rssMb = Number(/VmRSS:\s+(\d+)/.exec(status)[1]) / 1024;
const supStatus = readFileSync(`/proc/${rec.pids.supervisor}/status`, "utf8");
const supRssMb = Number(/VmRSS:\s+(\d+)/.exec(supStatus)[1]) / 1024;
execFileSync(mm, ["rm", "-f", "rss"], { env });
rmSync(state, { recursive: true, force: true });
rmSync(shm, { recursive: true, force: true });

const ma = median(a);
const mb = median(b);
const qemuVersion = execFileSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" }).split("\n")[0];
const section = `## boot — \`mm run --rm --cold -- true\` vs the bare QEMU command line

Run: \`node bench/boot.mjs ${N}\` on ${new Date().toISOString().slice(0, 10)}. Machine: ${cpus()[0]?.model} × ${cpus().length}, ${Math.round(totalmem() / 2 ** 30)} GiB,
host kernel ${release()}, ${qemuVersion}, guest kernel \`${kernel}\`, accel **${accel}**${accel === "tcg" ? " (TCG: emulation, not a security boundary)" : ""}.
The two commands ran interleaved, ${N} times each.

| measure | median | all runs (ms) |
| --- | --- | --- |
| (a) bare QEMU: same kernel, rootfs and machine flags; \`init=/bin/sh -c "true; poweroff -f"\` | ${ma.toFixed(0)} ms | ${a.map((x) => x.toFixed(0)).join(", ")} |
| (b) \`mm run --rm --cold -- true\` (CLI start, state, overlay, boot, agent protocol, power-off, cleanup) | ${mb.toFixed(0)} ms | ${b.map((x) => x.toFixed(0)).join(", ")} |
| **ratio b/a** (target ≤ 1.15) | **${(mb / ma).toFixed(2)}** | |
| guest kernel clock when the workload runs (\`/proc/uptime\`) | ${median(uptime).toFixed(0)} ms | ${uptime.map((x) => x.toFixed(0)).join(", ")} |
| VMM resident memory, idle 256 MiB guest (VmRSS of QEMU) | ${rssMb.toFixed(0)} MB | |
| supervisor resident memory (VmRSS of the detached \`mm\` process) | ${supRssMb.toFixed(0)} MB | |
`;

writeSection("boot", section);
