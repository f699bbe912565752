// What a user asks for when creating a machine, and the pure parsing of its flags.

import { MmError } from "./errors.js";

export const MIN_MEMORY_MIB = 64;
export const MAX_MEMORY_MIB = 1024 * 1024;
export const MAX_CPUS = 64;
export const DEFAULT_MEMORY_MIB = 256;
export const DEFAULT_CPUS = 1;
/** The embedded image: busybox from Debian's busybox-static, assembled locally. */
export const DEFAULT_IMAGE = "mm/busybox";

/** What an image says about running it (OCI config), snapshotted into each machine. */
export interface ImageRunConfig {
  readonly entrypoint: readonly string[];
  readonly cmd: readonly string[];
  readonly env: readonly string[];
  readonly workdir?: string;
  readonly user?: string;
  readonly stopSignal?: string;
  /** "8080/tcp" style, as the image declares them. */
  readonly exposedPorts: readonly string[];
}

/** How a machine is networked (`--network`, `-p`, `--network-group`, `--egress`, `--dns`). */
export interface NetworkSpec {
  /**
   * bridge: a TAP on mm's bridge with NAT out (root); user: user-mode networking through
   * passt (no root: the guest's connections become the user's own sockets); none: no NIC.
   */
  readonly mode: "bridge" | "user" | "none";
  /** Machines sharing a group reach each other; without one a machine reaches no other guest. */
  readonly group?: string;
  readonly egress:
    | "allow"
    | "deny"
    | { readonly allow: readonly { cidr: string; proto?: "tcp" | "udp"; ports?: readonly number[] }[] };
  readonly publish: readonly { hostIp?: string; hostPort: number; guestPort: number; proto: "tcp" | "udp" }[];
  /** Resolvers for the guest; the host's (non-loopback) ones when absent. */
  readonly dns?: readonly string[];
}

export interface MachineSpec {
  readonly name: string;
  /** Normalised image reference (or DEFAULT_IMAGE). */
  readonly image: string;
  /** The image manifest's digest; absent for the embedded default image. */
  readonly imageDigest?: string;
  readonly imageConfig: ImageRunConfig;
  /** `--entrypoint`: replaces the image's entrypoint (and then its Cmd too, as in Docker). */
  readonly entrypoint?: readonly string[];
  readonly cpus: number;
  readonly memoryMib: number;
  /** argv of the workload; empty means the image's default command. */
  readonly command: readonly string[];
  readonly env: readonly string[];
  readonly workdir?: string;
  readonly user?: string;
  /** Remove the machine when it exits (`--rm`). */
  readonly autoRemove: boolean;
  /** Size of the machine's root disk in MiB (`--disk-size`); the image's size when absent. */
  readonly diskSizeMib?: number;
  /** Absent in records from before networking: treated as mode "none". */
  readonly network?: NetworkSpec;
  /** `--restart`: what the machine's supervisor does when the workload ends (absent: no). */
  readonly restart?: RestartPolicy;
  /**
   * A sandbox (`mm sandbox create`, the API's /v1/sandboxes): idles until its hard
   * lifetime ends (then it is stopped and, with autoRemove, removed).
   */
  /** Throughput limits: the root disk (QEMU's throttling) and the network (bridge: nftables). */
  readonly limits?: { readonly diskBps?: number; readonly diskIops?: number; readonly netBps?: number };
  readonly sandbox?: {
    readonly timeoutMs: number;
    /** Ended after this long without an exec session (none: only the hard lifetime). */
    readonly idleMs?: number;
    /**
     * Booted ahead by `mm serve --pool N`, waiting to be claimed by a sandbox create
     * that asks for nothing but the defaults; its timeouts are then the claimer's.
     */
    readonly pooled?: boolean;
  };
  /** `-v NAME:/path[:ro]`: named volumes (persistent ext4 disks) mounted in the guest. */
  readonly volumes?: readonly VolumeMount[];
  /** `-v /host/dir:/path[:ro]`: host directories shared live with the guest. */
  readonly binds?: readonly BindMount[];
  /** `--ssh`: an SSH server in the guest, for these public keys, logging in as `user`. */
  readonly ssh?: { readonly authorizedKeys: readonly string[]; readonly user: string; readonly identityFile?: string };
  /**
   * The snapshot the machine's first boot resumes (`mm restore`, `mm fork`); later
   * boots are cold boots of its disk. `copy`: the machine gets its own copy of the
   * snapshot's RAM; `cow`: it maps the capture copy-on-write, shared with its siblings.
   */
  readonly restoreFrom?: { readonly snapshot: string; readonly memory: "copy" | "cow" };
  /** `--cold`: always boot the kernel, never start from the image's template. */
  readonly cold?: boolean;
}

const UNITS: Record<string, number> = { "": 1, m: 1, mb: 1, mi: 1, mib: 1, g: 1024, gb: 1024, gi: 1024, gib: 1024 };

/** Parses `512`, `512M`, `512MiB`, `2G` into MiB. Bare numbers are MiB, as in Firecracker's mem_size_mib. */
export function parseMemory(text: string): number {
  const m = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[(m[2] as string).toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new MmError("MM_INVALID_MEMORY", `"${text}"`);
  const mib = Number(m[1]) * unit;
  if (!Number.isSafeInteger(mib) || mib < MIN_MEMORY_MIB || mib > MAX_MEMORY_MIB) {
    throw new MmError("MM_INVALID_MEMORY", `"${text}" is outside ${MIN_MEMORY_MIB} MiB – ${MAX_MEMORY_MIB / 1024} GiB`);
  }
  return mib;
}

const DISK_UNITS: Record<string, number> = {
  ...UNITS,
  t: 1024 * 1024,
  tb: 1024 * 1024,
  ti: 1024 * 1024,
  tib: 1024 * 1024,
};
export const MAX_DISK_MIB = 16 * 1024 * 1024;

/** Parses a disk size (`--disk-size 10G`) into MiB; bare numbers are MiB. */
export function parseDiskSize(text: string): number {
  const m = /^\s*(\d+)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? DISK_UNITS[(m[2] as string).toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new MmError("MM_INVALID_DISK_SIZE", `"${text}"`);
  const mib = Number(m[1]) * unit;
  if (!Number.isSafeInteger(mib) || mib < MIN_MEMORY_MIB || mib > MAX_DISK_MIB) {
    throw new MmError("MM_INVALID_DISK_SIZE", `"${text}" is outside 64 MiB – 16 TiB`);
  }
  return mib;
}

export function parseCpus(text: string): number {
  if (!/^\s*\d+\s*$/.test(text)) throw new MmError("MM_INVALID_CPUS", `"${text}"`);
  const n = Number(text);
  if (n < 1 || n > MAX_CPUS) throw new MmError("MM_INVALID_CPUS", `"${text}" is outside 1–${MAX_CPUS}`);
  return n;
}

export interface RestartPolicy {
  readonly policy: "no" | "on-failure" | "always" | "unless-stopped";
  /** on-failure:N: give up after N restarts in a row. */
  readonly maxRetries?: number;
}

/** Parses Docker's `--restart no|on-failure[:N]|always|unless-stopped`. */
export function parseRestart(text: string): RestartPolicy {
  const m = /^(no|on-failure|always|unless-stopped)(?::(\d{1,4}))?$/.exec(text);
  if (!m || (m[2] !== undefined && m[1] !== "on-failure")) {
    throw new MmError("MM_USAGE", `--restart "${text}": use no, on-failure[:N], always or unless-stopped`);
  }
  const policy = m[1] as RestartPolicy["policy"];
  return m[2] !== undefined ? { policy, maxRetries: Number(m[2]) } : { policy };
}

/** Docker's back-off between restarts: 100 ms, doubling, at most 10 s. */
export function restartDelayMs(attempt: number): number {
  return Math.min(100 * 2 ** Math.max(0, attempt - 1), 10_000);
}

export interface VolumeMount {
  readonly name: string;
  /** Absolute path in the guest. */
  readonly path: string;
  readonly readOnly: boolean;
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

/** Paths mm or the guest kernel owns: nothing is mounted over them. */
const RESERVED_MOUNT = /^\/(proc|sys|dev|\.mm)(\/|$)/;

/** `-v /host/dir:/path[:ro]`: a host directory shared live with the guest (virtio-fs, or 9p). */
export interface BindMount {
  readonly source: string;
  readonly path: string;
  readonly readOnly: boolean;
}

export type MountSpec = ({ readonly kind: "volume" } & VolumeMount) | ({ readonly kind: "bind" } & BindMount);

/**
 * Parses Docker's `-v`: `NAME:/path[:ro|rw]` (a named volume) or `/host/dir:/path[:ro|rw]`
 * (a shared host directory). Whether the host directory exists is checked by the runtime.
 */
export function parseMount(text: string): MountSpec {
  const parts = text.split(":");
  const bad = (why: string) => new MmError("MM_INVALID_VOLUME", `-v "${text}": ${why}`);
  if (parts.length < 2 || parts.length > 3)
    throw bad("write NAME:/path or /host/dir:/path, with :ro to share read-only");
  const [source, path, mode] = parts as [string, string, string | undefined];
  if (!path.startsWith("/") || path === "/" || path.split("/").includes("..") || path.includes("\0")) {
    throw bad("the guest path must be absolute, not / and without ..");
  }
  if (RESERVED_MOUNT.test(path)) throw bad("/proc, /sys, /dev and /.mm cannot be mounted over");
  if (mode !== undefined && mode !== "ro" && mode !== "rw") throw bad(`mode "${mode}": use ro or rw`);
  const common = { path: path.replace(/\/+$/, ""), readOnly: mode === "ro" };
  if (source.startsWith("/")) {
    if (source.split("/").includes("..") || source.includes("\0")) throw bad("the host path must not hold ..");
    return { kind: "bind", source: source.length > 1 ? source.replace(/\/+$/, "") : source, ...common };
  }
  if (source.startsWith(".")) throw bad("a host directory must be given as an absolute path");
  validateVolumeName(source);
  return { kind: "volume", name: source, ...common };
}

export function validateVolumeName(name: string): string {
  if (!NAME_RE.test(name)) {
    throw new MmError("MM_INVALID_VOLUME", `volume name "${name}": 1-63 of letters, digits, _ . - (not first)`);
  }
  return name;
}

export function validateName(name: string): string {
  if (!NAME_RE.test(name)) throw new MmError("MM_INVALID_NAME", `"${name}"`);
  return name;
}

export function validateEnv(entries: readonly string[]): string[] {
  return entries.map((e) => {
    if (!/^[^=\0]+=/.test(e)) throw new MmError("MM_USAGE", `-e "${e}" is not KEY=VALUE`);
    return e;
  });
}

/**
 * The workload's argv, as Docker builds it: the entrypoint (the user's or the image's)
 * followed by the user's command, or else by the image's Cmd — unless the user replaced
 * the entrypoint, which drops the image's Cmd.
 */
export function workloadArgv(spec: Pick<MachineSpec, "imageConfig" | "entrypoint" | "command">): string[] {
  const entrypoint = spec.entrypoint ?? spec.imageConfig.entrypoint;
  const cmd = spec.command.length > 0 ? spec.command : spec.entrypoint !== undefined ? [] : spec.imageConfig.cmd;
  return [...entrypoint, ...cmd];
}

const SIGNALS: Record<string, number> = {
  HUP: 1,
  INT: 2,
  QUIT: 3,
  KILL: 9,
  USR1: 10,
  USR2: 12,
  TERM: 15,
  CONT: 18,
  STOP: 19,
  WINCH: 28,
  PWR: 30,
};

/** Parses an image's StopSignal ("SIGINT", "INT", "2") into a number; SIGTERM when absent. */
export function parseSignal(text: string | undefined): number {
  if (text === undefined || text === "") return 15;
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    if (n >= 1 && n <= 64) return n;
  }
  const n = SIGNALS[text.toUpperCase().replace(/^SIG/, "")];
  if (n === undefined) throw new MmError("MM_USAGE", `unknown signal "${text}"`);
  return n;
}

/** A byte rate from the command line: 512K, 10M, 1G (per second), or plain bytes. */
export function parseRate(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)[bB]?$/.exec(text.trim());
  const unit: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
  const n = m ? Number(m[1]) * (unit[(m[2] ?? "").toLowerCase()] as number) : Number.NaN;
  if (!Number.isFinite(n) || n < 1024) {
    throw new MmError("MM_USAGE", `${what} "${text}": give bytes per second, at least 1K (e.g. 512K, 10M)`);
  }
  return Math.round(n);
}
