// The Engine port: what the runtime needs from a VMM. QEMU's microvm is the one
// implementation today; Firecracker or Cloud Hypervisor would implement the same
// interface and pass the same conformance suite (engine-conformance.ts).

import type { Socket } from "node:net";
import type { JailPlan } from "./jail.js";

export type Accel = "kvm" | "tcg";

export interface DiskSpec {
  readonly path: string;
  readonly format: "raw" | "qcow2";
  readonly readOnly: boolean;
  /** QEMU's I/O throttling of this disk: bytes and operations per second, reads and writes together. */
  readonly throttle?: { readonly bps?: number; readonly iops?: number };
}

export interface BootSpec {
  /** Machine id: names the VMM process and its files. */
  readonly id: string;
  /** Directory (mode 0700) for the VMM's sockets and pidfile. */
  readonly runDir: string;
  readonly kernel: string;
  /** Extra kernel command-line arguments (the engine adds console, root and init). */
  readonly kernelArgs: readonly string[];
  readonly rootDisk: DiskSpec;
  readonly cpus: number;
  readonly memoryMib: number;
  readonly accel: Accel;
  /** Receives the guest's serial console, as QEMU writes it. */
  readonly onConsole?: (chunk: Buffer) => void;
  /** Receives the VMM's asynchronous events (QMP events: STOP, BLOCK_IO_ERROR, …). */
  readonly onEvent?: (event: { readonly event: string; readonly data?: Record<string, unknown> }) => void;
  /** Whether the guest carries an agent channel (the probe boots without one). */
  readonly agentChannel: boolean;
  /** Further disks after the root disk (guests find them by their virtio serial). */
  readonly extraDisks?: readonly (DiskSpec & { readonly serial: string })[];
  /**
   * A virtio-net NIC: on an existing TAP device (created by the host network code), or
   * on a user-mode network daemon (passt) already listening on a unix socket.
   */
  readonly nic?: { readonly tap: string; readonly mac: string } | { readonly socket: string; readonly mac: string };
  /**
   * Guest RAM in a file, so that it can be captured without copying it through the
   * VMM. `shared`: the machine's own RAM (writes reach the file); otherwise the file
   * is a capture mapped copy-on-write, shared with every other clone of it.
   * `descriptor`: the engine opens `path` (a sealed memfd's /proc entry) and hands QEMU
   * the descriptor, which it maps as /proc/self/fd/N: a jailed VMM needs no path to it.
   */
  readonly memoryFile?: { readonly path: string; readonly shared: boolean; readonly descriptor?: boolean };
  /** Start paused, waiting for `loadState` (a restore) instead of booting the kernel. */
  readonly incoming?: boolean;
  /**
   * Host directories shared with the guest: through a virtio-fs daemon already listening
   * on `socket` (needs `memoryFile.shared`), or QEMU's own 9p server.
   */
  readonly shares?: readonly SharedDir[];
  /**
   * Run the VMM in this jail (needs root): its own uid, mount namespace and cgroup, no
   * capabilities. Every path above must be visible in it (the supervisor plans both).
   */
  readonly jail?: JailPlan;
  /** QEMU's seccomp filter (`-sandbox` value), with or without a jail. */
  readonly sandbox?: string;
}

export type SharedDir =
  | { readonly kind: "virtiofs"; readonly tag: string; readonly socket: string }
  | { readonly kind: "9p"; readonly tag: string; readonly path: string; readonly readOnly: boolean };

export interface StateOptions {
  /**
   * Leave RAM in shared memory files out of the stream (it is captured as a file);
   * otherwise the stream carries all of RAM. Save and load must agree.
   */
  readonly ignoreSharedMemory: boolean;
}

export interface VmExit {
  /** QEMU's exit code, or null if it was killed by a signal. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** The VMM's last words on stderr (bounded), for error messages. */
  readonly stderr: string;
}

export interface RunningVm {
  readonly pid: number;
  /** Host end of the agent channel (null if the spec asked for none). */
  readonly channel: Socket | null;
  /** Settles when the VMM process has exited. Never rejects. */
  readonly exited: Promise<VmExit>;
  /** Asks the VMM to quit (QMP `quit`), then kills it if it is still there after `graceMs`. */
  terminate(graceMs?: number): Promise<VmExit>;
  /** SIGKILL, now. */
  kill(): Promise<VmExit>;
  /** One QMP command (serialised; QMP serves one client at a time). */
  qmp(command: string, args?: Record<string, unknown>): Promise<unknown>;
  /** Stops the vCPUs (the guest's clocks stop with them). */
  pause(): Promise<void>;
  /** Runs the vCPUs again (after `pause`, `saveState` or `loadState`). */
  resume(): Promise<void>;
  /** Writes the paused machine's device state (and RAM, see StateOptions) to `file`. */
  saveState(file: string, options: StateOptions): Promise<void>;
  /** Loads a state written by `saveState` into a machine booted with `incoming`; it stays paused. */
  loadState(file: string, options: StateOptions): Promise<void>;
  /**
   * Freezes the root disk: from now on the machine writes to `overlay`, an existing
   * qcow2 whose backing file is (a link to) the current root image, left unchanged.
   */
  freezeRoot(overlay: string): Promise<void>;
}

export interface Engine {
  readonly name: string;
  boot(spec: BootSpec): Promise<RunningVm>;
  /** Identifies the VMM build: a state saved by one build is loaded only by the same. */
  fingerprint(): Promise<string>;
}
