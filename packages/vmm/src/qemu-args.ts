// Pure construction of QEMU's command line for a microvm guest. No I/O: every
// input is in the arguments, so the builder is tested exhaustively.

import type { BootSpec } from "./engine.js";

export interface QemuArgsInput {
  readonly spec: BootSpec;
  /** Host TSC frequency in kHz; lets the guest skip PIT calibration, which can hang under TCG. */
  readonly tscKhz?: number;
  /**
   * Sockets reach QEMU as descriptors it inherits, already connected (mm's listening
   * sockets stay 0600 and a jailed QEMU never needs their paths): QMP's, the agent
   * channel's, and one per socket path in the spec (passt, virtiofsd).
   */
  readonly fds: {
    readonly qmp: number;
    readonly agent: number;
    readonly sockets: ReadonlyMap<string, number>;
    /** The guest RAM's descriptor, for a `memoryFile` handed over as one. */
    readonly memory?: number;
  };
  readonly pidFile: string;
}

/** The descriptor passed for a socket path of the spec (a RangeError if the caller did not connect it). */
function socketFd(input: QemuArgsInput, path: string): number {
  const fd = input.fds.sockets.get(path);
  if (fd === undefined) throw new RangeError(`no descriptor for socket ${path}`);
  return fd;
}

/** Name of the virtio-serial port mm-init looks for. */
export const AGENT_PORT_NAME = "mm.agent";

/**
 * The version of the device layout buildQemuArgs gives every machine. A saved state loads
 * only into the same layout: templates and snapshots record it (bump on any change).
 */
export const DEVICE_LAYOUT = 2;

/** QEMU -chardev/-drive option values are comma-separated; a literal comma is doubled. */
export function escapeOptionValue(v: string): string {
  return v.replaceAll(",", ",,");
}

export function kernelCommandLine(spec: BootSpec, tscKhz?: number): string {
  const args = [
    "console=ttyS0",
    "root=/dev/vda",
    spec.rootDisk.readOnly ? "ro" : "rw",
    "rootfstype=ext4",
    "init=/.mm/init",
    // reboot=t + -no-reboot: a guest reboot or triple fault ends QEMU instead of looping.
    "reboot=t",
    "panic=-1",
    "quiet",
    "8250.nr_uarts=1",
    "random.trust_cpu=on",
  ];
  if (tscKhz !== undefined && tscKhz > 0) args.push(`tsc_early_khz=${Math.round(tscKhz)}`);
  // TCG's emulated CPU does not advertise a constant TSC, so an SMP guest would fall
  // back to jiffies as its clock source. Under KVM the guest uses kvm-clock instead.
  if (spec.accel === "tcg" && spec.cpus > 1) args.push("tsc=reliable");
  for (const a of spec.kernelArgs) {
    if (/[\s"]/.test(a)) throw new RangeError(`kernel argument "${a}" contains whitespace or quotes`);
    args.push(a);
  }
  return args.join(" ");
}

/** `-drive` throttling options (QEMU's block throttle groups, one per drive). */
function throttleOptions(t: { readonly bps?: number; readonly iops?: number } | undefined): string {
  if (!t) return "";
  const out: string[] = [];
  for (const [k, v] of [
    ["bps-total", t.bps],
    ["iops-total", t.iops],
  ] as const) {
    if (v === undefined) continue;
    if (!Number.isInteger(v) || v <= 0) throw new RangeError(`throttle ${k} must be a positive integer, got ${v}`);
    out.push(`,throttling.${k}=${v}`);
  }
  return out.join("");
}

export function buildQemuArgs(input: QemuArgsInput): string[] {
  const { spec } = input;
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1) throw new RangeError(`cpus must be ≥ 1, got ${spec.cpus}`);
  if (!Number.isInteger(spec.memoryMib) || spec.memoryMib < 16) {
    throw new RangeError(`memoryMib must be ≥ 16, got ${spec.memoryMib}`);
  }
  const e = escapeOptionValue;
  let memPath = spec.memoryFile?.path;
  if (spec.memoryFile?.descriptor) {
    if (input.fds.memory === undefined) throw new RangeError("no descriptor for the guest RAM");
    memPath = `/proc/self/fd/${input.fds.memory}`;
  }
  const memory = spec.memoryFile
    ? [
        "-object",
        `memory-backend-file,id=mem,size=${spec.memoryMib}M,mem-path=${e(memPath as string)},share=${spec.memoryFile.shared ? "on" : "off"}`,
      ]
    : [];
  const args = [
    "-name",
    `mm-${spec.id},process=mm-${spec.id}`,
    "-M",
    `microvm,x-option-roms=off,acpi=on,pit=on,pic=on,rtc=on${spec.memoryFile ? ",memory-backend=mem" : ""}`,
    ...memory,
    "-accel",
    spec.accel,
    "-cpu",
    spec.accel === "kvm" ? "host" : "max",
    "-smp",
    String(spec.cpus),
    "-m",
    `${spec.memoryMib}M`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    spec.kernel,
    "-append",
    kernelCommandLine(spec, input.tscKhz),
    "-chardev",
    "stdio,id=console,signal=off",
    "-serial",
    "chardev:console",
    "-drive",
    `id=root,file=${e(spec.rootDisk.path)},format=${spec.rootDisk.format},if=none,cache=writeback,discard=unmap${spec.rootDisk.readOnly ? ",readonly=on" : ""}${throttleOptions(spec.rootDisk.throttle)}`,
    "-device",
    "virtio-blk-device,drive=root",
    "-device",
    "virtio-rng-device",
    // Free page reporting: memory the guest frees goes back to the host; `mm update
    // --memory` inflates the balloon.
    "-device",
    "virtio-balloon-device,id=balloon,free-page-reporting=on",
    // QEMU connects to sockets the host already listens on: no polling, no race.
    "-chardev",
    `socket,id=qmp,fd=${input.fds.qmp}`,
    "-mon",
    "chardev=qmp,mode=control",
    "-pidfile",
    input.pidFile,
    // A restore: QEMU waits for migrate-incoming (QMP) instead of running the guest.
    ...(spec.incoming ? ["-incoming", "defer"] : []),
    // QEMU's seccomp filter, on before the guest runs.
    ...(spec.sandbox ? ["-sandbox", spec.sandbox] : []),
  ];
  for (const [i, d] of (spec.extraDisks ?? []).entries()) {
    if (!/^[A-Za-z0-9_.-]{1,20}$/.test(d.serial)) throw new RangeError(`bad disk serial "${d.serial}"`);
    args.push(
      "-drive",
      `id=disk${i + 1},file=${e(d.path)},format=${d.format},if=none${d.readOnly ? ",readonly=on" : ""}`,
      "-device",
      `virtio-blk-device,drive=disk${i + 1},serial=${d.serial}`,
    );
  }
  if (spec.nic) {
    const nic = spec.nic;
    if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(nic.mac)) throw new RangeError(`bad MAC "${nic.mac}"`);
    let netdev: string;
    if ("tap" in nic) {
      if (!/^[A-Za-z0-9_.-]{1,15}$/.test(nic.tap)) throw new RangeError(`bad TAP name "${nic.tap}"`);
      netdev = `tap,id=net0,ifname=${nic.tap},script=no,downscript=no`;
    } else {
      // QEMU 7.2's stream netdev speaks passt's framing (a length before each frame).
      netdev = `stream,id=net0,server=off,addr.type=fd,addr.str=${socketFd(input, nic.socket)}`;
    }
    // The guest sees the same device either way (templates and snapshots restore into both).
    args.push("-netdev", netdev, "-device", `virtio-net-device,netdev=net0,mac=${nic.mac}`);
  }
  // vhost-user (virtiofsd) serves modern virtio only; microvm's virtio-mmio is legacy by
  // default. Only machines with shared directories switch (they are never snapshotted,
  // so templates and snapshots keep their device layout).
  if ((spec.shares ?? []).some((sh) => sh.kind === "virtiofs")) args.push("-global", "virtio-mmio.force-legacy=false");
  for (const [i, sh] of (spec.shares ?? []).entries()) {
    if (!/^[A-Za-z0-9_.-]{1,20}$/.test(sh.tag)) throw new RangeError(`bad share tag "${sh.tag}"`);
    if (sh.kind === "virtiofs") {
      if (!spec.memoryFile?.shared) throw new RangeError("virtio-fs needs the guest's RAM in a shared memory file");
      args.push(
        "-chardev",
        `socket,id=fs${i},fd=${socketFd(input, sh.socket)}`,
        "-device",
        `vhost-user-fs-device,chardev=fs${i},tag=${sh.tag}`,
      );
    } else {
      args.push(
        "-fsdev",
        // mapped-xattr: ownership, modes and special files live in xattrs, so a guest
        // never creates a real device node (or a set-uid file) on the host.
        `local,id=fs${i},path=${e(sh.path)},security_model=mapped-xattr${sh.readOnly ? ",readonly=on" : ""}`,
        "-device",
        `virtio-9p-device,fsdev=fs${i},mount_tag=${sh.tag}`,
      );
    }
  }
  if (spec.agentChannel) {
    args.push(
      "-device",
      "virtio-serial-device,max_ports=2",
      "-chardev",
      `socket,id=agent,fd=${input.fds.agent}`,
      "-device",
      `virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`,
    );
  }
  return args;
}
