// The supervisor's side of the jailed VMM (the plan and the executor are in @mm/vmm):
// the machine's uid from its jail slot, ownership of the files its VMM writes, the
// cgroups it runs in (v2, or v1 as on hybrid hosts), and what it may see.

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, chown, mkdir, open, readFile, rmdir, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { MmError } from "@mm/core";
import { type CgroupLayout, type JailPlan, jailIds, planJail } from "@mm/vmm";
import { installRoot, isRootless, type Paths } from "./paths.js";

const CGROUP_ROOT = "/sys/fs/cgroup";
/** What the VMM may use beyond the guest's RAM (TCG's translation cache, page tables, buffers). */
export const VMM_OVERHEAD_MIB = 384;

/**
 * mm's cgroups on this host: the unified hierarchy if it has the controllers, else v1's
 * per-controller ones. Where mm runs in a mount namespace without the cgroup file
 * systems (e.g. under `ip netns exec`, which mounts a fresh /sys), it mounts the host's
 * hierarchies again under `mountDir`, in that namespace only (the same cgroups).
 */
export async function cgroupLayout(id: string, mountDir: string): Promise<CgroupLayout | null> {
  return (await layoutAt(id, CGROUP_ROOT)) ?? (await mountedLayout(id, mountDir));
}

async function mountedLayout(id: string, dir: string): Promise<CgroupLayout | null> {
  if (process.getuid?.() !== 0) return null;
  // /proc/cgroups: "name hierarchy-id num enabled"; id 0 means the controller is on v2.
  const rows = (await readFile("/proc/cgroups", "utf8").catch(() => ""))
    .split("\n")
    .filter((l) => l && !l.startsWith("#"))
    .map((l) => l.split(/\s+/))
    .map(([name, hier]) => ({ name: name as string, hierarchy: Number(hier) }));
  const wanted = ["cpu", "memory", "pids"];
  const mount = (args: string[]) => new Promise<boolean>((resolve) => execFile("mount", args, (err) => resolve(!err)));
  try {
    if (wanted.every((c) => rows.some((r) => r.name === c && r.hierarchy > 0))) {
      for (const c of wanted) {
        const at = join(dir, c);
        if (existsSync(join(at, "cgroup.procs"))) continue;
        await mkdir(at, { recursive: true });
        // Controllers sharing a hierarchy (often cpu,cpuacct) are mounted together.
        const h = rows.find((r) => r.name === c)?.hierarchy;
        const together = rows.filter((r) => r.hierarchy === h).map((r) => r.name);
        if (!(await mount(["-t", "cgroup", "-o", together.join(","), "mm-cgroup", at]))) return null;
      }
    } else if (!existsSync(join(dir, "cgroup.controllers"))) {
      await mkdir(dir, { recursive: true });
      if (!(await mount(["-t", "cgroup2", "mm-cgroup2", dir]))) return null;
    }
  } catch {
    return null;
  }
  return layoutAt(id, dir);
}

/** The layout under one cgroup root (exported for tests). */
export async function layoutAt(id: string, root: string): Promise<CgroupLayout | null> {
  const controllers = await readFile(join(root, "cgroup.controllers"), "utf8").catch(() => null);
  if (controllers !== null) {
    const have = controllers.split(/\s+/);
    if (["cpu", "memory", "pids"].every((c) => have.includes(c))) return { version: 2, dir: join(root, "mm", id) };
    return null;
  }
  const v1 = { cpu: join(root, "cpu"), memory: join(root, "memory"), pids: join(root, "pids") };
  if (!Object.values(v1).every((d) => existsSync(join(d, "cgroup.procs")))) return null;
  return {
    version: 1,
    dirs: { cpu: join(v1.cpu, "mm", id), memory: join(v1.memory, "mm", id), pids: join(v1.pids, "mm", id) },
  };
}

/** Where mm mounts the cgroup hierarchies when its mount namespace has none (see cgroupLayout). */
export const cgroupMountDir = (p: Paths) => join(p.state, "run", "cgroupfs");

/** Creates the machine's cgroup directories (v2: with the controllers enabled on the way down). */
export async function createCgroups(layout: CgroupLayout): Promise<void> {
  try {
    if (layout.version === 2) {
      const parent = dirname(layout.dir);
      const root = dirname(parent);
      await mkdir(parent, { recursive: true });
      for (const dir of [root, parent]) {
        await writeFile(join(dir, "cgroup.subtree_control"), "+cpu +memory +pids").catch(() => undefined);
      }
      await mkdir(layout.dir, { recursive: true });
    } else {
      for (const d of Object.values(layout.dirs)) await mkdir(d, { recursive: true });
    }
  } catch (e) {
    throw new MmError("MM_JAIL_FAILED", `creating the machine's cgroups: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Removes the machine's cgroup directories once its VMM has exited (the kernel refuses
 * while a process is in one: retried for up to `waitMs`).
 */
export async function removeCgroups(layout: CgroupLayout, waitMs = 0): Promise<void> {
  const dirs = layout.version === 2 ? [layout.dir] : Object.values(layout.dirs);
  const deadline = Date.now() + waitMs;
  for (const d of dirs) {
    for (;;) {
      const err = await rmdir(d).then(
        () => null,
        (e: NodeJS.ErrnoException) => e,
      );
      if (!err || err.code === "ENOENT" || Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** The file whose writing moves a process into the machine's memory cgroup. */
export function memoryProcsFile(layout: CgroupLayout): string {
  return layout.version === 2 ? join(layout.dir, "cgroup.procs") : join(layout.dirs.memory, "cgroup.procs");
}

/** The limits and counters of a machine's memory cgroup (for `mm inspect` and tests). */
export function memoryEventsFile(layout: CgroupLayout): string {
  return layout.version === 2 ? join(layout.dir, "memory.events") : join(layout.dirs.memory, "memory.failcnt");
}

/** The jail's executor (host/jail/mm-jail.c), built by scripts/setup.sh; MM_JAIL_BIN overrides. */
export function jailExecutor(env: NodeJS.ProcessEnv = process.env): string {
  return env.MM_JAIL_BIN || join(installRoot(), "host", "jail", "build", "mm-jail");
}

/** mm-seal (host/jail/mm-seal.c), which holds a fork's RAM as a sealed memfd; MM_SEAL_BIN overrides. */
export function sealExecutor(env: NodeJS.ProcessEnv = process.env): string {
  return env.MM_SEAL_BIN || join(installRoot(), "host", "jail", "build", "mm-seal");
}

/** Whether VMMs run jailed here: as root, unless MM_JAIL=0 (a debugging switch, said in `mm inspect`). */
export function jailEnabled(env: NodeJS.ProcessEnv): boolean {
  return !isRootless() && env.MM_JAIL !== "0";
}

export interface JailFiles {
  readonly kernel: string;
  /** Files the VMM reads only: backing layers, the tools disk. */
  readonly readOnly: readonly string[];
  /** Files and directories it writes, made the machine's own: the overlay, RAM, volumes, its run directory. */
  readonly readWrite: readonly string[];
  /** The machine's directory: traversable by its VMM (new overlays appear there), nothing else in it readable. */
  readonly machineDir: string;
  /** 9p shares: bound idmapped, their owner's files the VMM's own inside (never chowned). */
  readonly idmapped?: readonly { readonly path: string; readonly readOnly: boolean }[];
}

/** Plans the machine's jail and gives its files to the machine's uid. */
export async function prepareJail(options: {
  readonly slot: number;
  readonly root: string;
  readonly files: JailFiles;
  readonly kvm: boolean;
  readonly tap: boolean;
  readonly cpus: number;
  readonly memoryMib: number;
  readonly cgroup: CgroupLayout | null;
  /** The VMM's memory allowance above guest RAM (MM_VMM_OVERHEAD_MIB, default VMM_OVERHEAD_MIB). */
  readonly overheadMib?: number;
}): Promise<JailPlan> {
  const { uid, gid } = jailIds(options.slot);
  const { files } = options;
  try {
    await mkdir(options.root, { recursive: true, mode: 0o700 });
    // The machine's directory: root's, searchable by the VMM's group only.
    await chown(files.machineDir, 0, gid);
    await chmod(files.machineDir, 0o710);
    for (const p of files.readWrite) {
      if (p === files.machineDir) continue;
      await chown(p, uid, gid);
      // Its files are its alone: another machine's VMM gets EACCES even where it could look.
      if ((await stat(p)).isFile()) await chmod(p, 0o600);
    }
    if (options.cgroup) await createCgroups(options.cgroup);
  } catch (e) {
    if (e instanceof MmError) throw e;
    throw new MmError("MM_JAIL_FAILED", `preparing the VMM's jail: ${(e as Error).message}`, { cause: e });
  }
  // No file the VMM writes grows past what the machine holds: its disks (a qcow2 up to
  // its virtual size), its RAM file and its volumes; 1 GiB on top for qcow2 metadata.
  let largest = options.memoryMib * 2 ** 20;
  for (const p of files.readWrite) {
    const st = await stat(p).catch(() => null);
    if (st?.isFile()) largest = Math.max(largest, st.size, (await qcow2VirtualSize(p)) ?? 0);
  }
  const all = [files.kernel, ...files.readOnly, ...files.readWrite];
  const directories: string[] = [];
  for (const p of all) if ((await stat(p).catch(() => null))?.isDirectory()) directories.push(p);
  const idmapped = [];
  for (const d of files.idmapped ?? []) {
    const st = await stat(d.path);
    idmapped.push({ path: d.path, readOnly: d.readOnly, uid: st.uid, gid: st.gid });
  }
  return planJail({
    executor: jailExecutor(),
    idmapped,
    slot: options.slot,
    directories,
    root: options.root,
    readOnly: [files.kernel, ...files.readOnly],
    readWrite: files.readWrite,
    kvm: options.kvm,
    tap: options.tap,
    cpus: options.cpus,
    memoryMib: options.memoryMib,
    overheadMib: options.overheadMib ?? VMM_OVERHEAD_MIB,
    cgroupLayout: options.cgroup,
    fsizeBytes: largest + 2 ** 30,
  });
}

/** A qcow2's virtual size (header field at offset 24), or null for another format. */
export async function qcow2VirtualSize(path: string): Promise<number | null> {
  const fh = await open(path, "r").catch(() => null);
  if (!fh) return null;
  try {
    const head = Buffer.alloc(32);
    await fh.read(head, 0, 32, 0);
    return head.readUInt32BE(0) === 0x514649fb ? Number(head.readBigUInt64BE(24)) : null;
  } finally {
    await fh.close();
  }
}

/** What `mm inspect` shows of a machine's jail. */
export interface JailSummary {
  readonly uid: number;
  readonly gid: number;
  readonly readOnly: readonly string[];
  readonly readWrite: readonly string[];
  readonly devices: readonly string[];
  readonly rlimits: { readonly nofile: number; readonly fsizeBytes: number };
  readonly cgroup: {
    readonly version: 1 | 2;
    readonly memoryBytes: number;
    readonly cpus: number;
    readonly pids: number;
  } | null;
  readonly seccomp: string;
  readonly capabilities: "none";
  readonly noNewPrivs: true;
}

export function jailSummary(plan: JailPlan): JailSummary {
  return {
    uid: plan.uid,
    gid: plan.gid,
    readOnly: plan.readOnly,
    readWrite: plan.readWrite,
    devices: plan.devices.map((d) => d.path),
    rlimits: plan.rlimits,
    cgroup: plan.cgroup
      ? {
          version: plan.cgroup.layout.version,
          memoryBytes: plan.cgroup.limits.memoryBytes,
          cpus: plan.cgroup.limits.cpuQuotaUs / plan.cgroup.limits.cpuPeriodUs,
          pids: plan.cgroup.limits.pids,
        }
      : null,
    seccomp: plan.sandbox,
    capabilities: "none",
    noNewPrivs: true,
  };
}
