// The jailed VMM: a pure plan (what the VMM may see and be) and the command line of its
// executor, mm-jail (host/jail/mm-jail.c), which carries it out between mm's supervisor
// and QEMU. Like Firecracker's jailer, but QEMU is a dynamically linked binary, so the
// jail's root holds the host's /usr read-only next to the machine's own files (bound at
// their usual paths, so QEMU's arguments and qcow2 backing paths stay as they are) and
// nothing else of mm's state.
//
// In a private mount namespace the executor mounts a tmpfs root, binds what the plan
// lists, creates the device nodes the VMM needs (owned by its uid), joins the machine's
// cgroups, then chroots, drops to the machine's own uid/gid with no supplementary groups,
// no capabilities (bounding set emptied) and no_new_privs, lowers its rlimits and execs
// QEMU, whose seccomp filter (-sandbox) comes on before the guest runs. Every step that
// fails ends the start: a jail is never half applied.

export interface JailDevice {
  readonly path: string;
  readonly type: "c";
  readonly major: number;
  readonly minor: number;
  /** Owned by the jail's uid with this mode (0600 for the machine's own devices). */
  readonly mode: number;
}

export interface CgroupLimits {
  /** Hard limit on the VMM's memory (guest RAM plus the VMM's own), bytes. */
  readonly memoryBytes: number;
  /** CPU time per period (cpus × 100 ms per 100 ms). */
  readonly cpuQuotaUs: number;
  readonly cpuPeriodUs: number;
  readonly pids: number;
}

/** Where the machine's cgroup lives on this host: v2 (unified) or v1 (one directory per controller). */
export type CgroupLayout =
  | { readonly version: 2; readonly dir: string }
  | { readonly version: 1; readonly dirs: { readonly cpu: string; readonly memory: string; readonly pids: string } };

export interface JailPlan {
  /** The executor binary (mm-jail). */
  readonly executor: string;
  readonly uid: number;
  readonly gid: number;
  /** An empty directory on the host: the jail's root is a tmpfs mounted on it (in the namespace only). */
  readonly root: string;
  /** Host paths visible read-only inside, at the same path. */
  readonly readOnly: readonly string[];
  /** Host paths visible read-write inside, at the same path. */
  readonly readWrite: readonly string[];
  /** Which of those paths are directories (the rest are files). */
  readonly directories: readonly string[];
  /**
   * Directories bound through an idmapped mount: what the host has as uid:gid is the
   * VMM's own inside (a 9p share: QEMU serves it with its own credentials).
   */
  readonly idmapped: readonly IdmappedDir[];
  readonly devices: readonly JailDevice[];
  readonly rlimits: { readonly nofile: number; readonly fsizeBytes: number };
  readonly cgroup: { readonly layout: CgroupLayout; readonly limits: CgroupLimits } | null;
  /** QEMU's seccomp filter, as far as QEMU 7.2 allows with mm's use of it. */
  readonly sandbox: string;
}

/** QEMU's own seccomp filter: no obsolete syscalls, no set*id, no fork/exec, no scheduler or affinity changes. */
export const QEMU_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/** The first uid (and gid) of the per-machine VMM ids: far above login ids and subordinate-id ranges. */
export const JAIL_ID_BASE = 1_500_000_000;
export const JAIL_ID_SLOTS = 1_000_000;

/** The system directories a dynamically linked QEMU needs (read-only); /bin, /lib… are symlinks into /usr on Debian 12. */
export const SYSTEM_READ_ONLY = ["/usr"] as const;
const USR_LINKS = ["bin", "sbin", "lib", "lib64"] as const;

/** Device nodes every VMM gets (0666, as on the host): they reach no state. */
export const BASIC_DEVICES: readonly JailDevice[] = [
  { path: "/dev/null", type: "c", major: 1, minor: 3, mode: 0o666 },
  { path: "/dev/zero", type: "c", major: 1, minor: 5, mode: 0o666 },
  { path: "/dev/urandom", type: "c", major: 1, minor: 9, mode: 0o666 },
  { path: "/dev/random", type: "c", major: 1, minor: 8, mode: 0o666 },
];
export const KVM_DEVICE: JailDevice = { path: "/dev/kvm", type: "c", major: 10, minor: 232, mode: 0o600 };
export const TUN_DEVICE: JailDevice = { path: "/dev/net/tun", type: "c", major: 10, minor: 200, mode: 0o666 };

export interface IdmappedDir {
  readonly path: string;
  readonly readOnly: boolean;
  /** The directory's owner on the host, shown inside as the VMM's uid and gid. */
  readonly uid: number;
  readonly gid: number;
}

export interface JailInput {
  /** The executor binary (host/jail/build/mm-jail). */
  readonly executor: string;
  readonly slot: number;
  readonly root: string;
  readonly readOnly: readonly string[];
  readonly readWrite: readonly string[];
  /** Which of the paths above are directories. */
  readonly directories: readonly string[];
  readonly idmapped?: readonly IdmappedDir[];
  readonly kvm: boolean;
  readonly tap: boolean;
  readonly cpus: number;
  readonly memoryMib: number;
  /** The VMM's own memory on top of the guest's (page tables, TCG's code cache, device buffers). */
  readonly overheadMib: number;
  readonly cgroupLayout: CgroupLayout | null;
  /** Largest file the VMM may write (its disks grow up to their virtual size). */
  readonly fsizeBytes: number;
}

export function jailIds(slot: number): { uid: number; gid: number } {
  if (!Number.isInteger(slot) || slot < 0 || slot >= JAIL_ID_SLOTS) throw new RangeError(`bad jail slot ${slot}`);
  return { uid: JAIL_ID_BASE + slot, gid: JAIL_ID_BASE + slot };
}

export function planJail(input: JailInput): JailPlan {
  const { uid, gid } = jailIds(input.slot);
  const idmapped = input.idmapped ?? [];
  for (const p of [input.root, ...input.readOnly, ...input.readWrite, ...idmapped.map((d) => d.path)]) checkPath(p);
  for (const d of idmapped) {
    if (!Number.isInteger(d.uid) || d.uid < 0 || !Number.isInteger(d.gid) || d.gid < 0) {
      throw new RangeError(`bad owner of ${d.path}`);
    }
  }
  const overlapsSystem = (p: string) => SYSTEM_READ_ONLY.some((s) => p === s || p.startsWith(`${s}/`));
  const own = [...input.readOnly, ...input.readWrite].filter(overlapsSystem);
  if (own.length > 0) throw new RangeError(`jail paths inside system directories: ${own.join(", ")}`);
  return {
    executor: input.executor,
    uid,
    gid,
    root: input.root,
    readOnly: [...SYSTEM_READ_ONLY, ...dedupe(input.readOnly)],
    readWrite: dedupe(input.readWrite),
    directories: [...SYSTEM_READ_ONLY, ...dedupe(input.directories)],
    idmapped,
    devices: [...BASIC_DEVICES, ...(input.kvm ? [KVM_DEVICE] : []), ...(input.tap ? [TUN_DEVICE] : [])],
    rlimits: { nofile: 4096, fsizeBytes: input.fsizeBytes },
    cgroup: input.cgroupLayout
      ? {
          layout: input.cgroupLayout,
          limits: {
            memoryBytes: (input.memoryMib + input.overheadMib) * 2 ** 20,
            cpuPeriodUs: 100_000,
            cpuQuotaUs: input.cpus * 100_000,
            pids: 256,
          },
        }
      : null,
    sandbox: QEMU_SANDBOX,
  };
}

function dedupe(paths: readonly string[]): string[] {
  return [...new Set(paths)];
}

function checkPath(p: string): void {
  if (!p.startsWith("/") || p.split("/").includes("..") || /[\0\n]/.test(p)) {
    throw new RangeError(`jail path must be absolute and plain: ${JSON.stringify(p)}`);
  }
}

/** The cgroup files the executor writes: limits first, then its pid ("self": the VMM's, kept across exec). */
export function cgroupWrites(layout: CgroupLayout, limits: CgroupLimits): { file: string; value: string }[] {
  if (layout.version === 2) {
    return [
      { file: `${layout.dir}/memory.max`, value: String(limits.memoryBytes) },
      { file: `${layout.dir}/memory.swap.max`, value: "0" },
      { file: `${layout.dir}/cpu.max`, value: `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}` },
      { file: `${layout.dir}/pids.max`, value: String(limits.pids) },
      { file: `${layout.dir}/cgroup.procs`, value: "self" },
    ];
  }
  const d = layout.dirs;
  return [
    { file: `${d.memory}/memory.limit_in_bytes`, value: String(limits.memoryBytes) },
    { file: `${d.cpu}/cpu.cfs_period_us`, value: String(limits.cpuPeriodUs) },
    { file: `${d.cpu}/cpu.cfs_quota_us`, value: String(limits.cpuQuotaUs) },
    { file: `${d.pids}/pids.max`, value: String(limits.pids) },
    { file: `${d.memory}/cgroup.procs`, value: "self" },
    { file: `${d.cpu}/cgroup.procs`, value: "self" },
    { file: `${d.pids}/cgroup.procs`, value: "self" },
  ];
}

/**
 * The executor's command line: mm-jail (host/jail/mm-jail.c) carries the plan out with
 * system calls — a private mount namespace and its tmpfs root, every mount point made
 * there before anything is bound (nothing is ever created in a host directory), binds
 * (parents first), device nodes, cgroup joins, then chroot, no groups, the VMM's ids, no
 * capabilities, no_new_privs, rlimits and the parent-death signal — and execs the VMM,
 * which keeps the pid mm started.
 */
export function jailCommand(plan: JailPlan, vmm: readonly string[]): string[] {
  // Parents before children: a directory bound later would hide what is bound inside it.
  const depth = (p: string) => p.split("/").length;
  const binds: { p: string; ro: boolean; idmap?: IdmappedDir }[] = [
    ...plan.readOnly.map((p) => ({ p, ro: true })),
    ...plan.readWrite.map((p) => ({ p, ro: false })),
    ...plan.idmapped.map((d) => ({ p: d.path, ro: d.readOnly, idmap: d })),
  ].sort((a, b) => depth(a.p) - depth(b.p));
  const isDir = (p: string) => plan.directories.includes(p) || plan.idmapped.some((d) => d.path === p);
  const parent = (p: string) => p.slice(0, p.lastIndexOf("/")) || "/";
  const dirs = [...new Set(["/dev/net", "/tmp", ...binds.map((b) => (isDir(b.p) ? b.p : parent(b.p)))])];
  const ops: string[] = [
    "root",
    plan.root,
    "ids",
    String(plan.uid),
    String(plan.gid),
    ...dirs.flatMap((d) => ["dir", d]),
    ...binds.filter((b) => !isDir(b.p)).flatMap((b) => ["file", b.p]),
    ...USR_LINKS.flatMap((l) => ["link", `usr/${l}`, `/${l}`]),
    // QEMU reaches its own descriptors through /proc/self/fd (9p's xattrs): a proc of its
    // own, showing only processes of its uid and nothing but processes.
    "proc",
    ...binds.flatMap((b) =>
      b.idmap
        ? ["idmap", b.ro ? "ro" : "rw", b.p, String(b.idmap.uid), String(b.idmap.gid)]
        : ["bind", b.ro ? "ro" : "rw", b.p],
    ),
    ...plan.devices.flatMap((d) => {
      const own = d.mode === 0o600;
      return [
        "dev",
        d.path,
        String(d.major),
        String(d.minor),
        d.mode.toString(8),
        String(own ? plan.uid : 0),
        String(own ? plan.gid : 0),
      ];
    }),
    ...(plan.cgroup
      ? cgroupWrites(plan.cgroup.layout, plan.cgroup.limits).flatMap((w) => ["cgroup", w.file, w.value])
      : []),
    "nofile",
    String(plan.rlimits.nofile),
    "fsize",
    String(plan.rlimits.fsizeBytes),
  ];
  return [plan.executor, ...ops, "--", ...vmm];
}
