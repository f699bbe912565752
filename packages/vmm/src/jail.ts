// The jailed VMM: a pure plan (what the VMM may see and be) and the shell script that
// carries it out between mm's supervisor and QEMU. Like Firecracker's jailer, but QEMU
// is a dynamically linked binary, so the jail's root holds the host's /usr read-only
// next to the machine's own files (bound at their usual paths, so QEMU's arguments and
// qcow2 backing paths stay as they are) and nothing else of mm's state.
//
// Inside a private mount namespace (unshare --mount), the script mounts a tmpfs root,
// binds what the plan lists, creates the device nodes the VMM needs (owned by its uid),
// joins the machine's cgroups, then chroots, drops to the machine's own uid/gid with no
// supplementary groups, no capabilities (bounding set emptied) and no_new_privs, lowers
// its rlimits and execs QEMU, whose seccomp filter (-sandbox) comes on before the guest
// runs. Every step that fails ends the start: a jail is never half applied.

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

export interface JailInput {
  readonly slot: number;
  /**
   * The VMM's ids when they cannot be the slot's: QEMU's 9p server acts on the shared
   * directory with the VMM's own credentials, so a machine sharing a directory over 9p
   * runs its VMM as that directory's owner (every other part of the jail holds).
   */
  readonly ids?: { readonly uid: number; readonly gid: number };
  readonly root: string;
  readonly readOnly: readonly string[];
  readonly readWrite: readonly string[];
  /** Which of the paths above are directories. */
  readonly directories: readonly string[];
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
  const { uid, gid } = input.ids ?? jailIds(input.slot);
  for (const p of [input.root, ...input.readOnly, ...input.readWrite]) checkPath(p);
  const overlapsSystem = (p: string) => SYSTEM_READ_ONLY.some((s) => p === s || p.startsWith(`${s}/`));
  const own = [...input.readOnly, ...input.readWrite].filter(overlapsSystem);
  if (own.length > 0) throw new RangeError(`jail paths inside system directories: ${own.join(", ")}`);
  return {
    uid,
    gid,
    root: input.root,
    readOnly: [...SYSTEM_READ_ONLY, ...dedupe(input.readOnly)],
    readWrite: dedupe(input.readWrite),
    directories: [...SYSTEM_READ_ONLY, ...dedupe(input.directories)],
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

/** Single-quoted for sh: every byte literal. */
export function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** The cgroup files the script writes: limits first, then the VMM's pid (the script's own, kept across exec). */
export function cgroupWrites(layout: CgroupLayout, limits: CgroupLimits): { file: string; value: string }[] {
  if (layout.version === 2) {
    return [
      { file: `${layout.dir}/memory.max`, value: String(limits.memoryBytes) },
      { file: `${layout.dir}/memory.swap.max`, value: "0" },
      { file: `${layout.dir}/cpu.max`, value: `${limits.cpuQuotaUs} ${limits.cpuPeriodUs}` },
      { file: `${layout.dir}/pids.max`, value: String(limits.pids) },
      { file: `${layout.dir}/cgroup.procs`, value: "$$" },
    ];
  }
  const d = layout.dirs;
  return [
    { file: `${d.memory}/memory.limit_in_bytes`, value: String(limits.memoryBytes) },
    { file: `${d.cpu}/cpu.cfs_period_us`, value: String(limits.cpuPeriodUs) },
    { file: `${d.cpu}/cpu.cfs_quota_us`, value: String(limits.cpuQuotaUs) },
    { file: `${d.pids}/pids.max`, value: String(limits.pids) },
    { file: `${d.memory}/cgroup.procs`, value: "$$" },
    { file: `${d.cpu}/cgroup.procs`, value: "$$" },
    { file: `${d.pids}/cgroup.procs`, value: "$$" },
  ];
}

/**
 * The executor: `unshare --mount --propagation private -- sh -c SCRIPT` then the VMM's
 * argv. The script ends in `exec chroot … setpriv … prlimit … "$@"`, so the VMM keeps
 * the pid mm started (and the parent-death signal, set again after the uid change).
 */
export function jailCommand(plan: JailPlan, vmm: readonly string[]): string[] {
  const q = shellQuote;
  const at = (p: string) => `"$J"${q(p)}`;
  // Parents before children: a directory bound later would hide what is bound inside it.
  const depth = (p: string) => p.split("/").length;
  const binds = [...plan.readOnly.map((p) => ({ p, ro: true })), ...plan.readWrite.map((p) => ({ p, ro: false }))].sort(
    (a, b) => depth(a.p) - depth(b.p),
  );
  const isDir = (p: string) => plan.directories.includes(p);
  const parent = (p: string) => p.slice(0, p.lastIndexOf("/")) || "/";
  // Every mount point is made in the tmpfs before anything is bound, in one mkdir: nothing
  // is ever created or truncated in a host directory bound into the jail. (Few processes:
  // each costs a millisecond or two before the VMM starts.)
  const dirs = [...new Set(["/dev/net", "/tmp", "/proc", ...binds.map((b) => (isDir(b.p) ? b.p : parent(b.p)))])];
  const own = plan.devices.filter((d) => d.mode === 0o600);
  const lines = [
    "set -eu",
    `J=${q(plan.root)}`,
    'mount -t tmpfs -o mode=0755,nosuid,size=1m mm-jail "$J"',
    `mkdir -p ${dirs.map(at).join(" ")}`,
    ...binds.filter((b) => !isDir(b.p)).map((b) => `: > ${at(b.p)}`),
    `ln -s ${USR_LINKS.map((l) => `usr/${l}`).join(" ")} "$J/"`,
    // QEMU reaches its own descriptors through /proc/self/fd (9p's xattrs): a proc of its
    // own, showing only processes of its uid and nothing but processes.
    'mount -t proc -o hidepid=invisible,subset=pid,nosuid,nodev,noexec mm-proc "$J/proc"',
    // util-linux binds and then remounts with the options, in one call.
    ...binds.map((b) => `mount --bind -o ${b.ro ? "ro," : ""}nosuid,nodev ${q(b.p)} ${at(b.p)}`),
    ...plan.devices.map((d) => `mknod -m ${d.mode.toString(8)} ${at(d.path)} ${d.type} ${d.major} ${d.minor}`),
    ...(own.length ? [`chown ${plan.uid}:${plan.gid} ${own.map((d) => at(d.path)).join(" ")}`] : []),
  ];
  if (plan.cgroup) {
    for (const w of cgroupWrites(plan.cgroup.layout, plan.cgroup.limits)) {
      lines.push(`echo ${w.value === "$$" ? "$$" : q(w.value)} > ${q(w.file)}`);
    }
  }
  lines.push(
    [
      'exec chroot "$J" /usr/bin/setpriv',
      `--reuid=${plan.uid}`,
      `--regid=${plan.gid}`,
      "--clear-groups",
      "--inh-caps=-all",
      "--bounding-set=-all",
      "--no-new-privs",
      "--pdeathsig=KILL",
      "--",
      "/usr/bin/prlimit",
      `--nofile=${plan.rlimits.nofile}:${plan.rlimits.nofile}`,
      `--fsize=${plan.rlimits.fsizeBytes}:${plan.rlimits.fsizeBytes}`,
      "--",
      '"$@"',
    ].join(" "),
  );
  return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", lines.join("\n"), "mm-jail", ...vmm];
}
