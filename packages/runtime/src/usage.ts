// `mm df` and GET /v1/df: what images, templates, snapshots, fork captures, layers,
// machine disks and guest RAM take, and what garbage collection would free.

import { readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Runtime } from "./runtime.js";
import { allocatedBytes, layersDir, type Snapshot, shmDir, snapshotsDir } from "./snapshots.js";

export interface Usage {
  readonly type: string;
  readonly count: number;
  readonly bytes: number;
  /** What `mm image prune` (which also collects layers and unfinished captures) would free. */
  readonly reclaimableBytes: number;
}

export async function diskUsage(rt: Runtime): Promise<Usage[]> {
  const snaps = rt.snapshots({ all: true });
  const sizeOf = async (list: Snapshot[]) => {
    let total = 0;
    for (const s of list) {
      total += await allocatedBytes(join(snapshotsDir(rt.paths), s.id));
      if (s.ram && !s.ram.path.startsWith(snapshotsDir(rt.paths))) total += await allocatedBytes(s.ram.path);
    }
    return total;
  };
  const byKind = (k: Snapshot["kind"]) => snaps.filter((s) => s.kind === k);
  const images = await rt.images.list();
  const inUse = new Set([...rt.list().map((r) => r.spec.imageDigest), ...snaps.map((s) => s.spec.imageDigest)]);
  const imageBytes =
    (await allocatedBytes(join(rt.paths.state, "content"))) + (await allocatedBytes(join(rt.paths.state, "rootfs")));
  const unusedImages = images.filter((i) => !inUse.has(i.digest)).reduce((a, i) => a + i.sizeBytes, 0);
  const machines = rt.list();
  let machineBytes = 0;
  for (const m of machines) machineBytes += await allocatedBytes(join(rt.paths.state, "machines", m.id));
  const ram = await allocatedBytes(join(shmDir(rt.paths, rt.env), "machines"));
  const layerNames = await readdir(layersDir(rt.paths)).catch(() => [] as string[]);
  const layers = await allocatedBytes(layersDir(rt.paths));
  const garbage = await rt.collectGarbage({ dryRun: true });
  return [
    { type: "images", count: images.length, bytes: imageBytes, reclaimableBytes: unusedImages },
    {
      type: "templates",
      count: byKind("template").length,
      bytes: await sizeOf(byKind("template")),
      reclaimableBytes: 0,
    },
    {
      type: "snapshots",
      count: byKind("snapshot").length,
      bytes: await sizeOf(byKind("snapshot")),
      reclaimableBytes: 0,
    },
    { type: "fork captures", count: byKind("fork").length, bytes: await sizeOf(byKind("fork")), reclaimableBytes: 0 },
    { type: "disk layers", count: layerNames.length, bytes: layers, reclaimableBytes: garbage },
    { type: "machine disks", count: machines.length, bytes: machineBytes, reclaimableBytes: 0 },
    {
      type: "machine RAM (shm)",
      count: machines.filter((m) => m.state === "running").length,
      bytes: ram,
      reclaimableBytes: 0,
    },
  ];
}
