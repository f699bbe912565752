#!/usr/bin/env node
// bench/fs: file throughput inside a guest through a shared host directory (virtio-fs,
// and 9p), against the guest's own disk, side by side in one run (ratios). Measured in
// the guest with its own clock: a sequential read of a 128 MiB file (the guest's page
// cache dropped first), and writing then reading 500 files of 4 KiB.
// Writes the "fs" section of docs/BENCHMARKS.md.   Usage: node bench/fs.mjs [N]

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { median, writeSection } from "./report.mjs";

const root = resolve(import.meta.dirname, "..");
const N = Number(process.argv[2] ?? 3);
const mm = join(root, "bin/mm");
const work = mkdtempSync(join(tmpdir(), "mm-bench-fs-"));
const shm = `/dev/shm/mm-bench-fs-${process.pid}`;
const env = { ...process.env, MM_STATE: join(work, "state"), MM_SHM: shm, MM_NETWORK: "none" };
const share = join(work, "share");
mkdirSync(share);
execFileSync("dd", ["if=/dev/urandom", `of=${join(share, "big")}`, "bs=1M", "count=128", "status=none"]);

// Seconds from the guest's uptime clock (10 ms resolution; every measured step is longer).
const SCRIPT = `
set -e
up() { cut -d' ' -f1 /proc/uptime; }
el() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
d="$1"
if [ "$2" = disk ]; then dd if=/dev/urandom of="$d/big" bs=1M count=128 2>/dev/null; fi
sync; echo 3 > /proc/sys/vm/drop_caches
a=$(up); cat "$d/big" > /dev/null; b=$(up); echo "seq $(el $a $b)"
mkdir -p "$d/small.$$"
a=$(up); i=0; while [ $i -lt 500 ]; do head -c 4096 /dev/zero > "$d/small.$$/f$i"; i=$((i+1)); done; sync; b=$(up)
echo "write $(el $a $b)"
echo 3 > /proc/sys/vm/drop_caches
a=$(up); cat "$d"/small.$$/* > /dev/null; b=$(up); echo "read $(el $a $b)"
rm -rf "$d/small.$$"
`;

function measure(args, extraEnv = {}) {
  const out = execFileSync(mm, ["run", "--rm", "--cold", ...args], {
    env: { ...env, ...extraEnv },
    encoding: "utf8",
    stdio: ["ignore", "pipe", "ignore"],
  });
  return Object.fromEntries(
    out
      .trim()
      .split("\n")
      .map((l) => l.split(" "))
      .map(([k, v]) => [k, Number(v)]),
  );
}

const runs = { disk: [], virtiofs: [], ninep: [] };
try {
  measure(["--", "true"]); // warm-up: base rootfs, tools disk, accel verdict
  for (let i = 0; i < N; i++) {
    runs.disk.push(measure(["--disk-size", "1G", "--", "sh", "-c", SCRIPT, "fs", "/root", "disk"]));
    runs.virtiofs.push(measure(["-v", `${share}:/mnt/share`, "--", "sh", "-c", SCRIPT, "fs", "/mnt/share", "share"]));
    runs.ninep.push(
      measure(["-v", `${share}:/mnt/share`, "--", "sh", "-c", SCRIPT, "fs", "/mnt/share", "share"], { MM_FS: "9p" }),
    );
  }
} finally {
  rmSync(work, { recursive: true, force: true });
  rmSync(shm, { recursive: true, force: true });
}

const med = (k, key) => median(runs[k].map((r) => r[key]));
const mbps = (k) => 128 / med(k, "seq");
const row = (label, k) =>
  `| ${label} | ${mbps(k).toFixed(0)} MiB/s | ${(500 / med(k, "write")).toFixed(0)} files/s | ${(500 / med(k, "read")).toFixed(0)} files/s |`;
const qemuVersion = execFileSync("qemu-system-x86_64", ["--version"], { encoding: "utf8" }).split("\n")[0];
const section = `## fs — shared host directories (virtio-fs, 9p) vs the guest's own disk

Run: \`node bench/fs.mjs ${N}\` on ${new Date().toISOString().slice(0, 10)}. Machine: ${cpus()[0]?.model} × ${cpus().length}, ${Math.round(totalmem() / 2 ** 30)} GiB,
host kernel ${release()}, ${qemuVersion}, under TCG (emulation: not a security boundary). Medians of ${N} runs each,
interleaved; times from the guest's own clock; guest page cache dropped before each read.

| path in the guest | sequential read, 128 MiB | 500 × 4 KiB written | 500 × 4 KiB read |
| --- | --- | --- | --- |
${row("its own disk (ext4 on the qcow2 overlay)", "disk")}
${row("virtio-fs (`-v /host/dir:/path`)", "virtiofs")}
${row("9p (`MM_FS=9p`)", "ninep")}
| **virtio-fs / own disk, sequential read** (target ≥ 0.5) | **${(mbps("virtiofs") / mbps("disk")).toFixed(2)}** | | |
| 9p / own disk, sequential read | ${(mbps("ninep") / mbps("disk")).toFixed(2)} | | |
`;
writeSection("fs", section);
