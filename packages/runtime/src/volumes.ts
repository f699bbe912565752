// Named volumes: persistent ext4 disk images under the state root, attached to a
// machine as extra virtio-blk disks and mounted by mm-init (protocol v4 MOUNT). A volume
// outlives the machines that use it; it is attached to one running machine at a time
// (QEMU's own image lock enforces it too) and removed only when no machine names it.

import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { isActive, MmError, validateVolumeName } from "@mm/core";
import { runTool } from "./exec-tool.js";
import type { Paths } from "./paths.js";
import type { MachineRecord, Store, VolumeRow } from "./store.js";

export const volumesDir = (p: Paths) => join(p.state, "volumes");
export const volumePath = (p: Paths, name: string) => join(volumesDir(p), `${name}.ext4`);
/** The virtio serial of a machine's i-th volume (mm-init finds the disk by it). */
export const volumeSerial = (i: number) => `mmv${i}`;

export const DEFAULT_VOLUME_BYTES = 1024 * 2 ** 20;

export interface Volume extends VolumeRow {
  readonly path: string;
  /** Machines whose spec names it. */
  readonly usedBy: readonly string[];
  /** The active machine it is attached to now, if any. */
  readonly attachedTo: string | null;
}

function describe(paths: Paths, v: VolumeRow, machines: readonly MachineRecord[]): Volume {
  const users = machines.filter((m) => m.spec.volumes?.some((x) => x.name === v.name));
  return {
    ...v,
    path: volumePath(paths, v.name),
    usedBy: users.map((m) => m.spec.name),
    attachedTo: users.find((m) => isActive(m.state))?.spec.name ?? null,
  };
}

export async function createVolume(paths: Paths, store: Store, name: string, sizeBytes: number): Promise<Volume> {
  validateVolumeName(name);
  if (!Number.isInteger(sizeBytes) || sizeBytes < 16 * 2 ** 20) {
    throw new MmError("MM_INVALID_DISK_SIZE", "a volume is at least 16 MiB");
  }
  if (store.volumes().some((v) => v.name === name)) throw new MmError("MM_VOLUME_EXISTS", `"${name}"`);
  await mkdir(volumesDir(paths), { recursive: true, mode: 0o700 });
  const path = volumePath(paths, name);
  // A sparse file: the volume takes the space its data takes. No journal-less tricks:
  // the guest may crash mid-write and the volume must survive it.
  await runTool(
    "mke2fs",
    ["-q", "-F", "-t", "ext4", "-L", name.slice(0, 16), path, `${Math.floor(sizeBytes / 1024)}k`],
    "creating the volume",
  );
  try {
    store.addVolume({ name, sizeBytes, createdAt: new Date().toISOString() });
  } catch (e) {
    await rm(path, { force: true });
    throw e;
  }
  return describe(paths, store.volumes().find((v) => v.name === name) as VolumeRow, store.list());
}

export function listVolumes(paths: Paths, store: Store, machines: readonly MachineRecord[]): Volume[] {
  return store.volumes().map((v) => describe(paths, v, machines));
}

export function findVolume(paths: Paths, store: Store, machines: readonly MachineRecord[], name: string): Volume {
  const v = store.volumes().find((x) => x.name === name);
  if (!v) throw new MmError("MM_NO_SUCH_VOLUME", `"${name}"`);
  return describe(paths, v, machines);
}

export async function removeVolume(
  paths: Paths,
  store: Store,
  machines: readonly MachineRecord[],
  name: string,
): Promise<Volume> {
  const v = findVolume(paths, store, machines, name);
  if (v.usedBy.length > 0) {
    throw new MmError("MM_VOLUME_IN_USE", `"${name}" is named by machine ${v.usedBy.join(", ")}`, {
      hint: `remove those machines first (mm rm ${v.usedBy.join(" ")})`,
    });
  }
  store.removeVolume(name);
  await rm(v.path, { force: true });
  return v;
}

/** Before a boot: every volume exists and no other running machine has it attached. */
export function checkAttachable(
  paths: Paths,
  store: Store,
  machines: readonly MachineRecord[],
  rec: MachineRecord,
): Volume[] {
  return (rec.spec.volumes ?? []).map((m) => {
    const v = findVolume(paths, store, machines, m.name);
    const other = machines.find(
      (x) => x.id !== rec.id && isActive(x.state) && x.spec.volumes?.some((y) => y.name === m.name),
    );
    if (other)
      throw new MmError("MM_VOLUME_IN_USE", `"${m.name}" is attached to the running machine ${other.spec.name}`);
    return v;
  });
}
