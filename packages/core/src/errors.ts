// Every error the product raises is created here, from one registry of stable codes.
// docs/errors.md lists the same codes; errors.test.ts keeps the two in sync.

export interface ErrorDefinition {
  /** One line: what went wrong, in the user's terms. */
  readonly summary: string;
  /** What the user can do about it. */
  readonly hint: string;
  /** Process exit status the CLI uses (Docker's convention: 125 for the tool's own errors). */
  readonly exit: number;
}

export const ERRORS = {
  MM_USAGE: { summary: "invalid command line", hint: "run `mm help <command>` for the flags it takes", exit: 125 },
  MM_INVALID_MEMORY: {
    summary: "invalid memory size",
    hint: "give MiB as a number (512) or with a unit (512M, 2G); at least 64 MiB",
    exit: 125,
  },
  MM_INVALID_DISK_SIZE: {
    summary: "invalid disk size",
    hint: "give MiB as a number or with a unit (10G); at least 64 MiB and not below the image's size",
    exit: 125,
  },
  MM_INVALID_CPUS: { summary: "invalid CPU count", hint: "give a whole number from 1 to 64", exit: 125 },
  MM_INVALID_NAME: {
    summary: "invalid machine name",
    hint: "use 1-63 characters: letters, digits, '_', '.', '-', starting with a letter or digit",
    exit: 125,
  },
  MM_INVALID_ACCEL: { summary: "invalid MM_ACCEL value", hint: "set MM_ACCEL to kvm or tcg, or unset it", exit: 125 },
  MM_NAME_IN_USE: {
    summary: "machine name already in use",
    hint: "pick another --name, or remove the old machine with `mm rm -f NAME`",
    exit: 125,
  },
  MM_NO_SUCH_MACHINE: { summary: "no such machine", hint: "`mm ps -a` lists the machines on this host", exit: 125 },
  MM_MACHINE_RUNNING: {
    summary: "machine is running",
    hint: "stop it first with `mm stop NAME`, or use `mm rm -f NAME`",
    exit: 125,
  },
  MM_MACHINE_NOT_RUNNING: {
    summary: "machine is not running",
    hint: "start it with `mm start NAME`; `mm ps -a` shows its state",
    exit: 125,
  },
  MM_INVALID_TRANSITION: {
    summary: "operation not allowed in the machine's current state",
    hint: "`mm ps -a` shows the state; see docs/SPEC.md for the lifecycle",
    exit: 125,
  },
  MM_KERNEL_MISSING: {
    summary: "guest kernel not found",
    hint: "run scripts/setup.sh (or guest/kernel/build.sh), or point MM_KERNEL at a vmlinux",
    exit: 125,
  },
  MM_INIT_MISSING: {
    summary: "guest init (mm-init) not found",
    hint: "run scripts/setup.sh (or `make -C guest/init`), or point MM_INIT at the binary",
    exit: 125,
  },
  MM_QEMU_MISSING: {
    summary: "QEMU not installed",
    hint: "apt-get install qemu-system-x86 qemu-utils (scripts/setup.sh does it)",
    exit: 125,
  },
  MM_TOOL_MISSING: {
    summary: "a host tool mm needs is not installed",
    hint: "run scripts/setup.sh, or install the package named in the message",
    exit: 125,
  },
  MM_QEMU_FAILED: {
    summary: "the VMM exited before the guest was ready",
    hint: "`mm logs --console NAME` shows the guest console; `mm doctor` checks the host",
    exit: 125,
  },
  MM_GUEST_PANIC: {
    summary: "the guest kernel panicked",
    hint: "`mm logs --console NAME` shows the panic; a custom MM_KERNEL may lack a needed option",
    exit: 125,
  },
  MM_BOOT_TIMEOUT: {
    summary: "the guest did not become ready in time",
    hint: "raise MM_BOOT_TIMEOUT (seconds); under TCG a loaded host boots slowly",
    exit: 125,
  },
  MM_STATE_UNWRITABLE: {
    summary: "the state directory is not writable",
    hint: "run as root, or set MM_STATE to a directory you own",
    exit: 125,
  },
  MM_DISK_FULL: {
    summary: "no space left on the device",
    hint: "free space under the state directory (`mm rm`, `df -h $MM_STATE`) and retry",
    exit: 125,
  },
  MM_ROOTFS_FAILED: {
    summary: "building the machine's root filesystem failed",
    hint: "the message has the tool's output; `mm doctor` checks e2fsprogs and qemu-utils",
    exit: 125,
  },
  MM_AGENT_PROTOCOL: {
    summary: "the guest agent broke the channel protocol",
    hint: "the guest is treated as hostile: its channel was closed; see `mm logs --console NAME`",
    exit: 125,
  },
  MM_EXEC_NOT_FOUND: {
    summary: "the command was not found in the guest",
    hint: "check the command and the image's PATH",
    exit: 127,
  },
  MM_EXEC_DENIED: {
    summary: "the command could not be executed in the guest",
    hint: "check the file's mode, its interpreter line, and the user it runs as",
    exit: 126,
  },
  MM_EXEC_SETUP: {
    summary: "the workload could not be set up in the guest",
    hint: "check the working directory (-w) and user (-u) exist in the image",
    exit: 127,
  },
  MM_ENGINE_IO: {
    summary: "talking to the VMM failed",
    hint: "the VMM may have died; `mm ps -a` and `mm logs --console NAME` show what happened",
    exit: 125,
  },
  MM_BAD_REFERENCE: {
    summary: "invalid image reference",
    hint: "write [registry/]repository[:tag][@sha256:digest], e.g. docker.io/library/busybox:latest",
    exit: 125,
  },
  MM_REGISTRY_AUTH: {
    summary: "the registry refused the credentials",
    hint: "log in with `mm login REGISTRY`, or check ~/.docker/config.json",
    exit: 125,
  },
  MM_IMAGE_NOT_FOUND: {
    summary: "image not found in the registry",
    hint: "check the repository, tag and registry; private images need `mm login`",
    exit: 125,
  },
  MM_REGISTRY_UNAVAILABLE: {
    summary: "the registry could not be reached or kept failing",
    hint: "retry later; `--insecure-registry` is needed for a plain-HTTP registry on localhost",
    exit: 125,
  },
  MM_REGISTRY_PROTOCOL: {
    summary: "the registry answered something the distribution spec does not allow",
    hint: "the registry or a proxy in between is misbehaving; the message has the details",
    exit: 125,
  },
  MM_INSECURE_REGISTRY: {
    summary: "plain HTTP to a registry is refused",
    hint: "pass --insecure-registry HOST:PORT (allowed for loopback addresses only)",
    exit: 125,
  },
  MM_DIGEST_MISMATCH: {
    summary: "content does not match its digest or size",
    hint: "the download was corrupted or tampered with; nothing was stored; retry the pull",
    exit: 125,
  },
  MM_UNSUPPORTED_MEDIA_TYPE: {
    summary: "unsupported media type",
    hint: "mm runs OCI and Docker schema 2 images with tar, gzip or zstd layers",
    exit: 125,
  },
  MM_NO_MATCHING_PLATFORM: {
    summary: "the image has no variant for the requested platform",
    hint: "choose one of the platforms listed in the message with --platform",
    exit: 125,
  },
  MM_LAYER_TOO_LARGE: {
    summary: "a layer decompresses beyond the size limit",
    hint: "raise MM_MAX_LAYER_BYTES if the image is genuinely that large",
    exit: 125,
  },
  MM_BAD_LAYER: {
    summary: "a layer's archive is malformed",
    hint: "the image is corrupt or hostile; nothing outside the image's root was written",
    exit: 125,
  },
  MM_BAD_ARCHIVE: {
    summary: "not an OCI layout or a docker save archive",
    hint: "import a directory with index.json and oci-layout, or a tar from `docker save`",
    exit: 125,
  },
  MM_NO_SUCH_IMAGE: { summary: "no such image", hint: "`mm images` lists the images on this host", exit: 125 },
  MM_IMAGE_IN_USE: {
    summary: "image is used by a machine",
    hint: "remove the machines first (`mm ps -a`), or use `mm rmi -f`",
    exit: 125,
  },
  MM_SUPERVISOR_LOST: {
    summary: "the process supervising the machine died",
    hint: "the VMM was stopped with it; `mm rm NAME` cleans up, `mm start NAME` boots it again",
    exit: 125,
  },
  MM_INVALID_NETWORK: {
    summary: "invalid network setting",
    hint: "the message names the bad value; subnets are IPv4 a.b.c.d/N (N 8-30) overlapping no host route",
    exit: 125,
  },
  MM_ADDRESS_EXHAUSTED: {
    summary: "no free IP address left in the machines' subnet",
    hint: "remove machines you no longer need (`mm ps -a`, `mm rm`), or configure a larger subnet",
    exit: 125,
  },
  MM_ADDRESS_IN_USE: {
    summary: "the requested IP address is already in use",
    hint: "choose another address, or leave it out to get the next free one",
    exit: 125,
  },
  MM_INVALID_PORT: {
    summary: "invalid port mapping",
    hint: "write -p [hostIP:]hostPort:guestPort[/tcp|udp] with ports 1-65535, e.g. -p 8080:80 or -p 127.0.0.1:53:53/udp",
    exit: 125,
  },
  MM_PORT_IN_USE: {
    summary: "the host port is already taken",
    hint: "pick another host port; `mm ps` shows the ports machines publish",
    exit: 125,
  },
  MM_INVALID_PATH: {
    summary: "invalid guest path",
    hint: "give an absolute guest path without '.' or '..' segments",
    exit: 125,
  },
  MM_GUEST_FILE: {
    summary: "the guest could not read or write the file",
    hint: "check the path and its directory exist in the guest (`mm exec NAME ls -l DIR`)",
    exit: 1,
  },
  MM_UNAUTHORIZED: {
    summary: "missing or wrong API token",
    hint: "send `Authorization: Bearer TOKEN` with the token `mm serve` was given (TCP only; the unix socket needs none)",
    exit: 125,
  },
  MM_BODY_TOO_LARGE: {
    summary: "request body too large",
    hint: "JSON bodies are capped (MM_API_BODY_LIMIT); send files with PUT …/files, which streams",
    exit: 125,
  },
  MM_NO_SUCH_ROUTE: {
    summary: "no such API route",
    hint: "GET /v1/openapi.json lists the routes",
    exit: 125,
  },
  MM_NO_SUCH_PROCESS: {
    summary: "no such process in the guest",
    hint: "GET …/processes (or `mm top NAME`) lists the guest's processes",
    exit: 125,
  },
  MM_TCG_REFUSED: {
    summary: "refusing a sandbox on TCG emulation",
    hint: "TCG is not a hardware boundary: enable KVM, or accept it explicitly (--allow-tcg, allowTcg: true)",
    exit: 125,
  },
  MM_JAIL_FAILED: {
    summary: "could not set up the VMM's jail",
    hint: "mm doctor checks the jail's needs (root, cgroups, unshare, setpriv); the message names the failing step",
    exit: 125,
  },
  MM_ROOT_REQUIRED: {
    summary: "this needs root",
    hint: "run mm as root (sudo mm …), or leave the option out: `mm doctor` lists what works without root",
    exit: 125,
  },
  MM_ROOTLESS_SETUP: {
    summary: "rootless mode is not set up for this user",
    hint: "apt-get install uidmap passt, and give the user subordinate ids: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER",
    exit: 125,
  },
  MM_NET_PERMISSION: {
    summary: "not allowed to set up the host network",
    hint: "run as root, or with CAP_NET_ADMIN (bridges, TAP devices, nftables, IP forwarding)",
    exit: 125,
  },
  MM_NET_SETUP: {
    summary: "setting up the host network failed",
    hint: "the message has the failing command; `mm doctor` checks and repairs the host network",
    exit: 125,
  },
  MM_INVALID_VOLUME: {
    summary: "invalid volume or mount",
    hint: "write -v NAME:/path[:ro] with a volume from `mm volume ls`",
    exit: 125,
  },
  MM_NO_SUCH_VOLUME: {
    summary: "no such volume",
    hint: "create it with `mm volume create NAME`; `mm volume ls` lists them",
    exit: 125,
  },
  MM_VOLUME_EXISTS: { summary: "a volume with that name exists", hint: "pick another name, or use it", exit: 125 },
  MM_VOLUME_IN_USE: {
    summary: "the volume is in use",
    hint: "a volume is attached to one running machine at a time, and removed only when no machine names it (`mm volume inspect NAME`)",
    exit: 125,
  },
  MM_SNAPSHOT_EXISTS: {
    summary: "that snapshot already exists",
    hint: "another process made the same template or tag at the same moment; list them with `mm snapshot ls`",
    exit: 125,
  },
  MM_NO_SUCH_SNAPSHOT: {
    summary: "no such snapshot",
    hint: "`mm snapshot ls` lists snapshots (by id prefix or MACHINE:TAG), `mm template ls` the templates",
    exit: 125,
  },
  MM_SNAPSHOT_HAS_CHILDREN: {
    summary: "the snapshot still has machines or snapshots made from it",
    hint: "remove the machines and snapshots the message lists first (`mm rm`, `mm snapshot rm`)",
    exit: 125,
  },
  MM_SNAPSHOT_INCOMPATIBLE: {
    summary: "the snapshot was taken with another guest kernel, VMM build or accelerator",
    hint: "restore it on a host with the same kernel and QEMU (the message names the difference), or take a new snapshot here",
    exit: 125,
  },
  MM_SNAPSHOT_CORRUPT: {
    summary: "the snapshot's files are missing, truncated or altered",
    hint: "remove it with `mm snapshot rm` and take a new one; nothing of the snapshot was changed",
    exit: 125,
  },
  MM_SNAPSHOT_FAILED: {
    summary: "taking the snapshot failed; the machine carries on as before",
    hint: "the message names the failing step; check free space under the state directory and /dev/shm",
    exit: 125,
  },
  MM_INTERNAL: { summary: "internal error", hint: "please report it with the output of `mm doctor`", exit: 125 },
} as const satisfies Record<string, ErrorDefinition>;

export type ErrorCode = keyof typeof ERRORS;

export class MmError extends Error {
  readonly code: ErrorCode;
  readonly hint: string;
  readonly exit: number;

  constructor(code: ErrorCode, detail?: string, options?: { cause?: unknown; hint?: string }) {
    const def: ErrorDefinition = ERRORS[code];
    super(detail ? `${def.summary}: ${detail}` : def.summary, options?.cause ? { cause: options.cause } : undefined);
    this.name = "MmError";
    this.code = code;
    this.hint = options?.hint ?? def.hint;
    this.exit = def.exit;
  }

  toJSON(): { code: ErrorCode; message: string; hint: string } {
    return { code: this.code, message: this.message, hint: this.hint };
  }
}

/**
 * Whether `e` is one of mm's errors. By shape, not only by class: a separately bundled
 * module (the API server, the rootfs worker) has its own copy of MmError.
 */
export function isMmError(e: unknown, code?: ErrorCode): e is MmError {
  const shaped =
    e instanceof MmError ||
    (e instanceof Error &&
      e.name === "MmError" &&
      typeof (e as { code?: unknown }).code === "string" &&
      (e as unknown as { code: string }).code in ERRORS);
  return shaped && (code === undefined || (e as MmError).code === code);
}
