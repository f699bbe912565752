// Supervises one boot of one machine: builds what the boot needs, starts the VMM,
// speaks the agent protocol, records every step in the store, and turns whatever
// ends the boot (workload exit, stop, VMM death, panic, timeout) into a final state.
// The same code runs inside a foreground `mm run` and in the detached supervisor.

import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { access, chmod, chown, link, mkdir, readdir, rm, writeFile } from "node:fs/promises";
import type { Server } from "node:net";
import { constants as osc } from "node:os";
import { basename, join } from "node:path";
import {
  type ExitStatus,
  errorCodeForGuest,
  type FreshIdentity,
  freshIdentity,
  type GuestError,
  type GuestMount,
  isMmError,
  MmError,
  type NetworkIdentity,
  parseSignal,
  type WorkloadConfig,
  workloadArgv,
} from "@mm/core";
import {
  type CgroupLayout,
  chooseAccel,
  DEVICE_LAYOUT,
  describeExit,
  type Engine,
  type JailPlan,
  jailIds,
  QEMU_SANDBOX,
  type RunningVm,
  TCG_WARNING,
  type VmExit,
  vmmDir,
  withTimeout,
} from "@mm/vmm";
import { AgentSession, type RestoredChannel } from "./agent-session.js";
import {
  type CaptureRequest,
  type CaptureResult,
  capturedMeta,
  type SandboxTimes,
  serveControl,
  type VmStats,
} from "./control.js";
import { createOverlay, defaultImageRootfs } from "./default-image.js";
import { serveExecRelay } from "./exec-relay.js";
import { runTool } from "./exec-tool.js";
import { mapFsError } from "./fs-errors.js";
import { GUEST_BUSYBOX, guestTools, TOOLS_SERIAL } from "./guest-tools.js";
import { Images } from "./images.js";
import {
  cgroupLayout,
  cgroupMountDir,
  createCgroups,
  jailEnabled,
  jailSummary,
  memoryProcsFile,
  prepareJail,
  removeCgroups,
} from "./jail.js";
import { LogWriter, logFile, TextTail } from "./logs.js";
import { HostNetwork, networkOf } from "./network.js";
import { controlSocket, execSocket, initPath, kernelPath, machineDir, type Paths, runDir } from "./paths.js";
import { processStartTime } from "./proc.js";
import { type StartedShares, shareDriver, shareTag, startShares } from "./shares.js";
import {
  activeOverlay,
  type Compat,
  checkCompat,
  createLayerOverlay,
  diskChain,
  finalizeSnapshot,
  kernelIdentity,
  layersDir,
  machineRamPath,
  newLayerNames,
  releaseForkCapture,
  releaseLayer,
  resolveSnapshot,
  type Snapshot,
  snapshotsDir,
  templateKey,
  templateRamCache,
  toSnapshot,
  verifySnapshot,
} from "./snapshots.js";
import { ensureHostKey, runInGuest, startSshServer } from "./ssh.js";
import type { MachineRecord, Store } from "./store.js";
import { startUserNetwork } from "./user-network.js";
import { checkAttachable, volumeSerial } from "./volumes.js";

export interface RunIo {
  /** Workload output; return false to apply back-pressure until `drain` is called. */
  readonly stdout?: (d: Buffer, drain: () => void) => boolean;
  readonly stderr?: (d: Buffer, drain: () => void) => boolean;
  readonly onReady?: (rec: MachineRecord) => void;
  readonly onWarning?: (message: string) => void;
}

export interface RunOutcome {
  readonly record: MachineRecord;
  /** The workload's exit status, when it got that far. */
  readonly exitCode: number | null;
  readonly error: MmError | null;
}

export interface SupervisorContext {
  readonly paths: Paths;
  readonly store: Store;
  readonly engine: Engine;
  readonly env: NodeJS.ProcessEnv;
}

const PANIC_RE = /Kernel panic - not syncing[^\n]*/;
const OOM_RE = /Out of memory: Killed process (\d+) \(([^)]*)\)/;
const POWEROFF_GRACE_MS = 5000;

export function workloadConfig(rec: MachineRecord): WorkloadConfig {
  const image = rec.spec.imageConfig;
  const env = new Map<string, string>();
  for (const e of [...image.env, ...rec.spec.env]) env.set(e.slice(0, e.indexOf("=")), e);
  const cwd = rec.spec.workdir ?? image.workdir;
  const user = rec.spec.user ?? image.user;
  const args = workloadArgv(rec.spec);
  if (args.length === 0) {
    throw new MmError("MM_USAGE", "no command: the image has no entrypoint or command", {
      hint: "give one after the image: mm run IMAGE -- CMD...",
    });
  }
  return {
    args,
    env: [...env.values(), `HOSTNAME=${hostnameFor(rec.spec.name)}`],
    hostname: hostnameFor(rec.spec.name),
    ...(cwd !== undefined && { cwd }),
    ...(user !== undefined && { user }),
  };
}

/** A valid hostname from a machine name (names may hold '_' and '.', hostnames may not). */
export function hostnameFor(name: string): string {
  return (
    name
      .toLowerCase()
      .replace(/[^a-z0-9-]/g, "-")
      .replace(/^-+|-+$/g, "")
      .slice(0, 63) || "mm"
  );
}

/**
 * Covers the virtio-fs share mounted at $1, whose daemon has ended, with an empty
 * read-only tmpfs. Requests to a dead daemon would wait forever (virtio-fs cannot fail
 * requests nobody answers, and it has neither fusectl's abort nor a forced unmount;
 * unmounting would itself wait for the daemon's answer to DESTROY). Covered, the path
 * fails at once (no such file; read-only file system) and says why in MM_SHARE_ENDED.
 * Processes already waiting on the share wait on.
 */
const COVER_SHARE_SCRIPT = `B=${GUEST_BUSYBOX}
$B mount -t tmpfs -o size=4k,mode=0555 mm-share-ended "$1" || exit 1
echo "mm: the host's virtio-fs daemon for this share ended; stop and start the machine to share the directory again" > "$1/MM_SHARE_ENDED"
$B mount -o remount,ro "$1"`;

/**
 * A clone's RAM: the sealed memfd its fork holds while the clones start (mm-seal's
 * /proc entry, passed as MM_FORK_MEMORY). Nothing else has it: the capture file is gone
 * once the memfd holds it, so a clone whose first start did not come with its fork
 * cannot start from the fork's memory.
 */
function forkMemory(env: NodeJS.ProcessEnv): string {
  const path = env.MM_FORK_MEMORY;
  if (!path || !existsSync(path)) {
    throw new MmError(
      "MM_SNAPSHOT_CORRUPT",
      "this clone's memory is gone: a clone starts from its fork's memory only with the fork",
      {
        hint: "fork the source machine again (mm fork), or remove this clone",
      },
    );
  }
  return path;
}

export class Supervisor {
  private vm: RunningVm | null = null;
  private session: AgentSession | null = null;
  private stopTimers: NodeJS.Timeout[] = [];
  private stopping = false;
  private ready = false;
  private attached = false;
  private stopSignal: number = osc.signals.SIGTERM;
  /** The writable overlay the VMM writes to now (a capture moves it onto a new layer). */
  private rootDisk = "";
  /** The machine's own RAM file (unused when it maps a fork's capture copy-on-write). */
  private ramFile = "";
  private memoryShared = true;
  private compat: Compat | null = null;
  private capturing = false;
  private diskFullTimer: NodeJS.Timeout | null = null;
  /** The VMM's jail (null: not jailed, e.g. rootless) and its cgroups, removed when it ends. */
  private jail: JailPlan | null = null;
  private cgroups: CgroupLayout | null = null;
  /** Host daemons of the machine (virtio-fs, passt): killed when the VMM ends. */
  private daemons: ChildProcess[] = [];
  private finished = false;
  private shareFailure: MmError | null = null;
  /** Work that must finish before the supervisor exits (a template being recorded). */
  private readonly background: Promise<unknown>[] = [];

  constructor(
    private readonly ctx: SupervisorContext,
    private readonly id: string,
  ) {}

  /** Forwards a signal to the workload (Ctrl-C in a foreground run). */
  forwardSignal(sig: number): void {
    if (this.session && !this.session.isClosed && this.ready) this.session.signal(sig);
    else void this.stop(0);
  }

  /** Graceful stop: signal the workload, then power off after `timeoutS`, then kill. */
  async stop(timeoutS: number): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    try {
      this.ctx.store.transition(this.id, "stop");
    } catch {
      // already finished
    }
    const vm = this.vm;
    const session = this.session;
    if (!vm) return;
    if (!session || session.isClosed || !this.ready) {
      await vm.terminate(1000);
      return;
    }
    session.signal(this.stopSignal);
    this.stopTimers.push(setTimeout(() => session.poweroff(), timeoutS * 1000));
    this.stopTimers.push(setTimeout(() => void vm.terminate(1000), timeoutS * 1000 + POWEROFF_GRACE_MS));
  }

  async run(io: RunIo = {}): Promise<RunOutcome> {
    const { store, paths, env } = this.ctx;
    let rec = store.transition(this.id, "boot", {
      supervisorPid: process.pid,
      supervisorStart: processStartTime(process.pid),
      startedAt: new Date().toISOString(),
      finishedAt: null,
      exitCode: null,
      exitSignal: null,
      error: null,
      vmmPid: null,
    });
    let log: LogWriter | null = null;
    try {
      log = new LogWriter(logFile(machineDir(paths, this.id)));
      const outcome = await this.boot(rec, log, io);
      return outcome;
    } catch (e) {
      let err = e instanceof MmError ? e : mapFsError(e, "starting the machine");
      // QEMU locks disk images: a volume another VMM holds is refused there at the latest.
      if (err.code === "MM_QEMU_FAILED" && /Failed to get ".*" lock/.test(err.message) && rec.spec.volumes?.length) {
        err = new MmError("MM_VOLUME_IN_USE", `a volume of ${rec.spec.name} is held by another VMM: ${err.message}`);
      }
      await this.vm?.kill();
      rec = store.force(this.id, "failed", {
        error: { code: err.code, message: err.message },
        finishedAt: new Date().toISOString(),
        vmmPid: null,
      });
      return { record: rec, exitCode: null, error: err };
    } finally {
      for (const t of this.stopTimers) clearTimeout(t);
      if (this.cgroups) await removeCgroups(this.cgroups, 2000);
      this.finished = true;
      for (const d of this.daemons) d.kill("SIGKILL"); // also after a failed boot
      this.daemons = [];
      log?.close();
      if (this.attached) await new HostNetwork(store, env).detach(rec).catch(() => undefined);
      const from = rec.spec.restoreFrom?.snapshot;
      if (from) await releaseForkCapture(paths, store, from).catch(() => undefined);
    }
  }

  private async boot(rec: MachineRecord, log: LogWriter, io: RunIo): Promise<RunOutcome> {
    const { store, paths, env, engine } = this.ctx;
    // MM_TRACE=1: one line per boot phase with milliseconds since process start (for tuning).
    const trace = env.MM_TRACE
      ? (phase: string) => process.stderr.write(`mm-trace ${performance.now().toFixed(1)} ${phase}\n`)
      : () => undefined;
    trace("boot");
    const kernel = kernelPath(paths, env);
    await access(kernel).catch(() => {
      throw new MmError("MM_KERNEL_MISSING", kernel);
    });
    this.stopSignal = parseSignal(rec.spec.imageConfig.stopSignal);
    const tools = await guestTools(paths);
    if (rec.spec.ssh && !tools.ssh) {
      throw new MmError("MM_TOOL_MISSING", "dropbear-bin and patchelf (for --ssh)", {
        hint: "apt-get install dropbear-bin patchelf (scripts/setup.sh does it)",
      });
    }
    const volumes = checkAttachable(paths, store, store.list(), rec);
    const binds = rec.spec.binds ?? [];
    const driver = shareDriver(env);
    const mounts: GuestMount[] = [
      ...(rec.spec.volumes ?? []).map((v, i) => ({ serial: volumeSerial(i), path: v.path, readOnly: v.readOnly })),
      ...binds.map((b, i) => ({
        serial: shareTag(i),
        path: b.path,
        readOnly: b.readOnly,
        kind: driver === "virtio-fs" ? ("virtiofs" as const) : ("9p" as const),
      })),
    ];
    const config: WorkloadConfig = { ...workloadConfig(rec), ...(mounts.length > 0 && { mounts }) };
    const base = rec.spec.imageDigest
      ? await (async () => {
          const images = new Images(paths, env);
          const image = await images.byDigest(rec.spec.image, rec.spec.imageDigest as string);
          return { path: await images.rootfs(image, initPath(env), io.onWarning) };
        })()
      : await defaultImageRootfs(paths, initPath(env));
    trace("rootfs");
    const overlay = activeOverlay(paths, rec);
    this.rootDisk = overlay;
    const firstBoot = !existsSync(overlay);

    const accel = await chooseAccel({
      engine,
      kernel,
      // A probe (rare: once per host and kernel) boots the embedded image: it holds mm-init
      // and nothing else to trust.
      rootDisk: async () => ({
        path: rec.spec.imageDigest ? (await defaultImageRootfs(paths, initPath(env))).path : base.path,
        format: "raw",
        readOnly: true,
      }),
      runDir: runDir(paths, "kvm-probe"),
      cacheDir: paths.cache,
      env,
    });
    if (accel.accel === "tcg" && accel.source !== "env") io.onWarning?.(`${TCG_WARNING} (${accel.reason})`);
    store.update(this.id, { accel: accel.accel });
    trace(`accel ${accel.accel}`);
    const netMode = networkOf(rec).mode;
    const withNic = netMode !== "none";
    const compat: Compat = {
      kernel: await kernelIdentity(kernel),
      engine: await engine.fingerprint(),
      accel: accel.accel,
      tools: basename(tools.disk),
      cpus: rec.spec.cpus,
      memoryMib: rec.spec.memoryMib,
      nic: withNic,
      layout: DEVICE_LAYOUT,
    };
    this.compat = compat;

    // How this boot starts: a snapshot's restore, the image's template, or the kernel.
    let restore: { snap: Snapshot; memory: "copy" | "cow" } | null = null;
    let diskOnly: Snapshot | null = null;
    let makeTemplate: string | null = null;
    if (firstBoot && rec.spec.restoreFrom) {
      const snap = resolveSnapshot(store, rec.spec.restoreFrom.snapshot);
      // A clone's RAM is its fork's sealed memfd (MM_FORK_MEMORY), not the capture file.
      await verifySnapshot(snap, false, { ram: rec.spec.restoreFrom.memory !== "cow" });
      if (snap.memory === null) {
        diskOnly = snap; // a stopped machine's snapshot: boot its disk
      } else {
        checkCompat(snap, compat);
        restore = { snap, memory: rec.spec.restoreFrom.memory };
      }
    } else if (firstBoot && templatesEnabled(rec, env)) {
      const key = templateKey(compat, base.path, rec.spec.diskSizeMib);
      const row = store.templateByKey(key);
      const snap = row ? toSnapshot(row) : null;
      if (snap) {
        const usable = await verifySnapshot(snap, false).then(
          () => true,
          (e: MmError) => {
            io.onWarning?.(`template ${snap.id.slice(0, 12)} is unusable (${e.message}); booting cold`);
            return false;
          },
        );
        // Copied (from a shared-memory cache of it, ~10 ms): the machine's RAM is then its
        // own file, so it snapshots and forks as cheaply as a cold-booted one.
        if (usable) restore = { snap, memory: "copy" };
      } else {
        makeTemplate = key;
      }
    }
    const bootMode = restore ? `${restore.snap.kind}:${restore.snap.id.slice(0, 12)}` : "cold";
    store.update(this.id, { bootMode, rootDisk: overlay });
    await this.removeStaleOverlays(overlay);
    const from = restore?.snap ?? diskOnly;
    if (from) {
      await createLayerOverlay(from.disk.layer.path, overlay, from.disk.virtualSize);
    } else if (firstBoot) {
      await createOverlay(base.path, overlay, rec.spec.diskSizeMib);
    }
    // Guest RAM is a file in shared memory, so a snapshot captures it with one sparse copy.
    this.ramFile = machineRamPath(paths, this.id, env);
    await mkdir(join(this.ramFile, ".."), { recursive: true, mode: 0o700 });
    await rm(this.ramFile, { force: true });
    let memoryFile: { path: string; shared: boolean; descriptor?: boolean } = { path: this.ramFile, shared: true };
    // The machine's cgroups exist before its RAM is written: the copy below is charged to
    // the machine, as every page its VMM touches later is.
    const cgroups = jailEnabled(env) ? await cgroupLayout(this.id, cgroupMountDir(paths)) : null;
    if (cgroups) {
      await createCgroups(cgroups);
      this.cgroups = cgroups;
    }
    if (restore?.snap.memory === "file" && restore.snap.ram) {
      if (restore.memory === "cow") memoryFile = { path: forkMemory(env), shared: false, descriptor: true };
      else {
        const source =
          restore.snap.kind === "template" ? await templateRamCache(paths, env, restore.snap) : restore.snap.ram.path;
        const copy = ["--sparse=always", source, this.ramFile];
        await (cgroups
          ? runTool(
              "sh",
              ["-c", 'echo $$ > "$1" && shift && exec cp "$@"', "mm-ram-copy", memoryProcsFile(cgroups), ...copy],
              "copying the snapshot's RAM",
            )
          : runTool("cp", copy, "copying the snapshot's RAM"));
      }
    }
    this.memoryShared = memoryFile.shared;
    trace(`disk and memory (${bootMode})`);

    let nic: { tap: string; mac: string } | { socket: string; mac: string } | undefined;
    let identity: NetworkIdentity | undefined;
    const jailed = jailEnabled(env);
    const slot = jailed ? store.jailSlot(this.id) : null;
    if (netMode === "bridge") {
      this.attached = true;
      // A jailed VMM opens its TAP as the machine's uid: the TAP is that uid's.
      const tapUser = slot === null ? undefined : jailIds(slot).uid;
      const a = await new HostNetwork(store, env).attach(rec, hostnameFor(rec.spec.name), tapUser);
      nic = { tap: a.lease.tap, mac: a.lease.mac };
      identity = a.identity;
      trace(`network ${a.identity.address}`);
    } else if (netMode === "user") {
      await mkdir(runDir(paths, this.id), { recursive: true, mode: 0o700 });
      const u = await startUserNetwork(
        rec,
        hostnameFor(rec.spec.name),
        runDir(paths, this.id),
        machineDir(paths, this.id),
        env,
        (how) =>
          // passt also ends when the VMM does (its connection closes): look a moment later.
          // Before that, the guest has lost its network, and the user is told.
          setTimeout(() => {
            if (!this.finished) io.onWarning?.(`the user-mode network daemon (passt) ended (${how}; passt.log)`);
          }, 300),
      );
      this.daemons = [...this.daemons, u.daemon];
      nic = u.nic;
      identity = u.identity;
      trace("network (passt)");
    }
    const fresh = (): FreshIdentity => freshIdentity(randomBytes, nic?.mac);
    let shared: StartedShares | null = null;
    if (binds.length > 0) {
      await mkdir(runDir(paths, this.id), { recursive: true, mode: 0o700 });
      const states = binds.map((b) => ({
        source: b.source,
        path: b.path,
        readOnly: b.readOnly,
        driver,
        state: "running",
      }));
      store.update(this.id, { shares: states });
      const daemonEnded = (i: number, how: string) => {
        if (this.finished) return; // the VMM ended first: its daemons follow it
        const what = `the virtio-fs daemon for ${binds[i]?.source} ended (${how}; virtiofsd-${i}.log)`;
        if (!this.ready) {
          // During the boot the guest would wait for it forever: fail the boot now.
          this.shareFailure = new MmError("MM_QEMU_FAILED", what);
          void this.vm?.kill();
          return;
        }
        // The machine and the host carry on; in the guest the share fails rather than waits.
        io.onWarning?.(what);
        const session = this.session;
        if (session && !session.isClosed && binds[i]) {
          void runInGuest(session, {
            args: [GUEST_BUSYBOX, "sh", "-c", COVER_SHARE_SCRIPT, "mm-cover-share", binds[i].path],
            env: [],
          }).catch(() => undefined);
        }
        const now = store.get(this.id).shares ?? states;
        store.update(this.id, { shares: now.map((x, j) => (j === i ? { ...x, state: `ended: ${how}` } : x)) });
      };
      // A daemon also ends when the VMM does (its connection closes): look a moment later.
      shared = await startShares(binds, runDir(paths, this.id), machineDir(paths, this.id), env, (i, how) =>
        setTimeout(() => daemonEnded(i, how), 300),
      );
      this.daemons = [...this.daemons, ...shared.daemons];
      trace(`shares (${driver})`);
    }
    const volumePaths = volumes.map((v) => v.path);
    if (slot !== null) {
      const run = runDir(paths, this.id);
      // The RAM file exists before the VMM starts (it cannot create files there): empty
      // for a cold boot, QEMU sizes it.
      if (memoryFile.shared && !existsSync(this.ramFile)) await writeFile(this.ramFile, "", { mode: 0o600 });
      await mkdir(vmmDir(run), { recursive: true, mode: 0o700 });
      this.jail = await prepareJail({
        slot,
        root: join(run, "jail"),
        files: {
          kernel,
          readOnly: [...(await diskChain(overlay)).slice(1), tools.disk],
          readWrite: [
            machineDir(paths, this.id),
            overlay,
            ...(memoryFile.shared ? [this.ramFile] : []),
            vmmDir(run),
            ...volumePaths,
          ],
          machineDir: machineDir(paths, this.id),
          // QEMU's 9p server acts with the VMM's own credentials: the directory is bound
          // idmapped, so its owner's files are the VMM's inside (and stay the owner's).
          idmapped: driver === "9p" ? binds.map((b) => ({ path: b.source, readOnly: b.readOnly })) : [],
        },
        kvm: accel.accel === "kvm",
        tap: netMode === "bridge",
        cpus: rec.spec.cpus,
        memoryMib: rec.spec.memoryMib,
        cgroup: cgroups,
        ...(env.MM_VMM_OVERHEAD_MIB && { overheadMib: Number(env.MM_VMM_OVERHEAD_MIB) }),
      });
      store.update(this.id, { jail: jailSummary(this.jail) });
      trace("jail");
    } else {
      store.update(this.id, { jail: null });
    }
    const consoleTail = new TextTail();
    let consoleLines = "";
    const vm = await engine.boot({
      id: this.id,
      runDir: runDir(paths, this.id),
      kernel,
      kernelArgs: [
        ...(env.MM_GUEST_DEBUG ? ["mm.debug=1"] : []),
        ...(rec.spec.diskSizeMib !== undefined ? ["mm.growfs=1"] : []),
      ],
      rootDisk: {
        path: overlay,
        format: "qcow2",
        readOnly: false,
        ...((rec.spec.limits?.diskBps !== undefined || rec.spec.limits?.diskIops !== undefined) && {
          throttle: {
            ...(rec.spec.limits?.diskBps !== undefined && { bps: rec.spec.limits.diskBps }),
            ...(rec.spec.limits?.diskIops !== undefined && { iops: rec.spec.limits.diskIops }),
          },
        }),
      },
      cpus: rec.spec.cpus,
      memoryMib: rec.spec.memoryMib,
      accel: accel.accel,
      agentChannel: true,
      extraDisks: [
        { path: tools.disk, format: "raw", readOnly: true, serial: TOOLS_SERIAL },
        ...volumes.map((v, i) => ({
          path: v.path,
          format: "raw" as const,
          readOnly: rec.spec.volumes?.[i]?.readOnly ?? false,
          serial: volumeSerial(i),
        })),
      ],
      memoryFile,
      ...(this.jail && { jail: this.jail }),
      sandbox: QEMU_SANDBOX,
      incoming: restore !== null,
      ...(shared && { shares: shared.shares }),
      ...(nic && { nic }),
      onConsole: (d) => {
        log.write("console", d);
        consoleTail.push(d);
        // The guest kernel's OOM killer reports on the console: an "oom" event per kill.
        consoleLines += d.toString("latin1");
        const lines = consoleLines.split("\n");
        consoleLines = (lines.pop() ?? "").slice(-4096);
        for (const line of lines) {
          const m = OOM_RE.exec(line);
          if (m) store.addEvent(this.id, rec.spec.name, "oom", { pid: Number(m[1]), process: m[2] });
        }
      },
      onEvent: (e) => {
        // A full host disk: QEMU pauses the guest rather than fail its writes (nothing is
        // lost). Say so once, then try to carry on every second until there is room.
        if (e.event === "BLOCK_IO_ERROR" && e.data?.nospace === true && !this.diskFullTimer) {
          io.onWarning?.("the host disk is full: the machine is paused until there is room again");
          log.write("console", Buffer.from("mm: host disk full, machine paused until there is room\n"));
          this.diskFullTimer = setInterval(() => {
            void this.vm
              ?.qmp("query-status")
              .then(async (st) => {
                const status = (st as { status?: string }).status;
                if (status === "io-error") await this.vm?.resume();
                else if (status === "running" && this.diskFullTimer) {
                  clearInterval(this.diskFullTimer);
                  this.diskFullTimer = null;
                }
              })
              .catch(() => undefined);
          }, 1000);
        }
      },
    });
    this.vm = vm;
    trace("vmm connected");
    store.update(this.id, { vmmPid: vm.pid });
    if (this.stopping) void vm.terminate(1000);
    const channel = vm.channel as NonNullable<typeof vm.channel>;
    const restoredChannel: RestoredChannel | undefined = restore?.snap.agent ?? undefined;
    const session = new AgentSession(channel, restoredChannel);
    this.session = session;

    let exitStatus: ExitStatus | null = null;
    let guestError: GuestError | null = null;
    let protocolError: MmError | null = null;
    let bootTimedOut = false;
    const bootTimeoutS = Number(env.MM_BOOT_TIMEOUT) || 60;
    const bootTimer = setTimeout(() => {
      bootTimedOut = true;
      void vm.kill();
    }, bootTimeoutS * 1000);
    const fail = (e: unknown, code: "MM_INTERNAL" | "MM_EXEC_SETUP" = "MM_INTERNAL") => {
      setupError ??= e instanceof MmError ? e : new MmError(code, String(e));
      void vm.kill();
    };

    const forward = (which: "stdout" | "stderr") => (d: Buffer) => {
      log.write(which, d);
      const sink = io[which];
      if (sink && sink(d, () => session.resume()) === false) session.pause();
    };
    const sendConfig = (withFresh: boolean) => {
      try {
        session.sendConfig({
          ...config,
          ...(identity && { network: identity }),
          ...(withFresh && { fresh: fresh() }),
        });
      } catch (e) {
        protocolError = e instanceof MmError ? e : new MmError("MM_INTERNAL", String(e));
        void vm.kill();
      }
    };
    session.on("hello", () => {
      trace("hello");
      // A template needs protocol v3: its restores must renew the MAC, clock and RNG.
      if (!makeTemplate || session.version < 3) return sendConfig(false);
      // The first boot of this image and shape: capture it here, booted and waiting for
      // its CONFIG, as the template later runs start from. A failed capture costs only
      // the template.
      const key = makeTemplate;
      void this.captureTemplate(rec, key)
        .then(
          ({ recorded }) => {
            trace("template captured");
            this.background.push(
              recorded.catch((e: Error) => {
                // Another run of the same image made the same template at the same moment: fine.
                if (!isMmError(e, "MM_SNAPSHOT_EXISTS")) io.onWarning?.(`template not saved: ${e.message}`);
              }),
            );
          },
          (e: Error) => io.onWarning?.(`template not saved: ${e.message}`),
        )
        .finally(() => sendConfig(false));
    });
    let relay: Server | null = null;
    let control: Server | null = null;
    let setupError: MmError | null = null;
    // A sandbox with an idle timeout ends after that long without an exec session. Both
    // timeouts change when a pooled sandbox is claimed (retime).
    let idleMs = rec.spec.sandbox?.idleMs;
    let idleTimer: NodeJS.Timeout | null = null;
    let sessions = 0;
    const armIdle = () => {
      if (idleMs === undefined || sessions > 0) return;
      const ms = idleMs;
      idleTimer = setTimeout(() => {
        store.addEvent(this.id, rec.spec.name, "timeout", { idleMs: ms });
        void this.stop(0);
      }, ms);
      this.stopTimers.push(idleTimer);
    };
    let lifetimeTimer: NodeJS.Timeout | null = null;
    const armLifetime = (ms: number) => {
      if (lifetimeTimer) clearTimeout(lifetimeTimer);
      lifetimeTimer = setTimeout(() => {
        store.addEvent(this.id, rec.spec.name, "timeout", { timeoutMs: ms });
        void this.stop(0);
      }, ms);
      this.stopTimers.push(lifetimeTimer);
    };
    const retime = async (t: SandboxTimes): Promise<SandboxTimes> => {
      if (!rec.spec.sandbox) throw new MmError("MM_USAGE", "only a sandbox has timeouts");
      armLifetime(t.timeoutMs);
      if (idleTimer) clearTimeout(idleTimer);
      idleTimer = null;
      idleMs = t.idleMs;
      armIdle();
      return t;
    };
    const idle = !rec.spec.sandbox
      ? null
      : {
          opened: () => {
            sessions++;
            if (idleTimer) clearTimeout(idleTimer);
            idleTimer = null;
          },
          closed: () => {
            sessions--;
            armIdle();
          },
        };
    const becomeUsable = async () => {
      clearTimeout(bootTimer);
      this.ready = true;
      armIdle();
      try {
        // passt delivers to the guest only once it has seen a frame from it (it learns the
        // guest's MAC so): a guest that has not talked yet would never get its inbound
        // connections. QEMU's self-announce (gratuitous ARP from the NIC) introduces it.
        if (netMode === "user") await vm.qmp("announce-self", { initial: 10, max: 50, rounds: 1, step: 10 });
        // "running" means usable: with --ssh, that includes a listening SSH server.
        if (rec.spec.ssh) {
          const hostKey = await ensureHostKey(machineDir(paths, this.id), this.id);
          await startSshServer(session, hostKey, rec.spec.ssh);
          trace("ssh");
        }
        relay = await serveExecRelay(
          execSocket(paths, this.id),
          () => (session.isClosed ? null : session),
          idle ? { opened: idle.opened, closed: idle.closed } : undefined,
        );
        control = await serveControl(controlSocket(paths, this.id), {
          capture: (req) => this.capture(req),
          vmStats: () => this.vmStats(),
          setMemory: (bytes) => this.setMemory(bytes),
          retime,
        });
      } catch (e) {
        fail(e, "MM_EXEC_SETUP");
        return;
      }
      // A sandbox's hard lifetime counts from the moment it is usable.
      const lifetime = rec.spec.sandbox?.timeoutMs;
      if (lifetime !== undefined) armLifetime(lifetime);
      // `mm update --memory` of an earlier boot still holds: the balloon takes it back again.
      const target = store.get(this.id).memoryTargetMib;
      if (target !== null && target < rec.spec.memoryMib) {
        await this.setMemory(target * 2 ** 20).catch((e: Error) =>
          io.onWarning?.(`memory target ${target} MiB not applied: ${e.message}`),
        );
      }
      try {
        rec = store.transition(this.id, "ready");
        io.onReady?.(rec);
      } catch {
        // a stop (or the workload's exit) raced the boot: the record already says so
      }
    };
    session.on("ready", () => {
      trace("ready");
      void becomeUsable();
    });
    session.on("stdout", forward("stdout"));
    session.on("stderr", forward("stderr"));
    session.on("guestError", (e) => {
      clearTimeout(bootTimer);
      guestError = e;
    });
    session.on("exit", (st) => {
      trace("exit");
      exitStatus = st;
      // A --rm machine's disk goes with it: no clean power-off needed, end the VMM now.
      // Not with volumes: they outlive it, and the guest flushes and unmounts them at power-off.
      if (rec.spec.autoRemove && !rec.spec.volumes?.length) return void vm.kill();
      session.poweroff();
      this.stopTimers.push(setTimeout(() => void vm.terminate(1000), POWEROFF_GRACE_MS));
    });
    session.on("protocolError", (e) => {
      protocolError = e;
      void vm.kill();
    });

    if (restore) {
      const snap = restore.snap;
      try {
        await vm.loadState((snap.state as NonNullable<typeof snap.state>).path, {
          ignoreSharedMemory: snap.memory === "file",
        });
        await vm.resume();
        trace("state loaded");
      } catch (e) {
        fail(e instanceof MmError ? new MmError("MM_SNAPSHOT_CORRUPT", e.message, { cause: e }) : e);
      }
      if (!setupError) {
        if (snap.agent?.phase === "config") {
          sendConfig(true);
        } else {
          // A running workload: it keeps its processes, and takes this machine's identity.
          void withTimeout(
            session.identity({
              hostname: hostnameFor(rec.spec.name),
              ...(identity && { network: identity }),
              fresh: fresh(),
            }),
            bootTimeoutS * 1000,
            "the guest's new identity",
          ).then(
            (result) => {
              trace("identity");
              if (result === "") void becomeUsable();
              else fail(new MmError("MM_NET_SETUP", `the restored guest could not take its identity: ${result}`));
            },
            (e) => fail(e),
          );
        }
      }
    }

    const vmExit: VmExit = await vm.exited;
    trace("vmm exited");
    if (this.diskFullTimer) clearInterval(this.diskFullTimer);
    (relay as Server | null)?.close();
    (control as Server | null)?.close();
    await rm(execSocket(paths, this.id), { force: true });
    await rm(controlSocket(paths, this.id), { force: true });
    await rm(this.ramFile, { force: true });
    this.finished = true;
    for (const d of this.daemons) d.kill("SIGKILL");
    clearTimeout(bootTimer);
    session.close();
    await Promise.all(this.background);
    const finishedAt = new Date().toISOString();
    const status = exitStatus as ExitStatus | null;
    const gErr = guestError as GuestError | null;

    if (status) {
      const error = gErr ? new MmError(errorCodeForGuest(gErr.code), gErr.message) : null;
      rec = store.force(this.id, "exited", {
        exitCode: status.status,
        exitSignal: status.signal,
        finishedAt,
        vmmPid: null,
        error: error ? { code: error.code, message: error.message } : null,
      });
      return { record: rec, exitCode: status.status, error };
    }
    if (this.stopping && !protocolError) {
      rec = store.force(this.id, "exited", { exitCode: 137, exitSignal: 9, finishedAt, vmmPid: null });
      return { record: rec, exitCode: 137, error: null };
    }
    const panic = PANIC_RE.exec(consoleTail.toString());
    const error: MmError =
      protocolError ??
      (setupError as MmError | null) ??
      this.shareFailure ??
      (bootTimedOut
        ? new MmError("MM_BOOT_TIMEOUT", `no ready signal after ${bootTimeoutS} s`)
        : panic
          ? new MmError("MM_GUEST_PANIC", panic[0])
          : new MmError("MM_QEMU_FAILED", describeExit(vmExit)));
    rec = store.force(this.id, "failed", {
      error: { code: error.code, message: error.message },
      finishedAt,
      vmmPid: null,
    });
    return { record: rec, exitCode: null, error };
  }

  /** Overlays a machine left behind in earlier freezes (now only links to frozen layers). */
  private async removeStaleOverlays(active: string): Promise<void> {
    const dir = machineDir(this.ctx.paths, this.id);
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (/^root(-[0-9a-z-]+)?\.qcow2$/.test(name) && join(dir, name) !== active)
        await rm(join(dir, name), { force: true });
    }
  }

  /**
   * Captures the running machine: quiesces the agent channel (v3), pauses the vCPUs,
   * freezes the root disk into a new layer, saves the device state and copies the RAM
   * file, then lets the machine carry on. Only the copies happen while it is paused.
   */
  async capture(req: CaptureRequest): Promise<CaptureResult> {
    const vm = this.vm;
    const session = this.session;
    if (!vm || !session || session.isClosed) throw new MmError("MM_MACHINE_NOT_RUNNING", "the machine is not running");
    const phase = session.restorePhase;
    if (!phase) throw new MmError("MM_MACHINE_NOT_RUNNING", "the machine's workload has exited");
    if (this.capturing) throw new MmError("MM_SNAPSHOT_FAILED", "another snapshot of this machine is in progress");
    const spec = this.ctx.store.get(this.id).spec;
    if (spec.volumes?.length || spec.binds?.length) {
      throw new MmError(
        "MM_SNAPSHOT_FAILED",
        "a running machine with volumes or shared directories cannot be snapshotted yet",
        {
          hint: "its volumes live outside the snapshot; stop it and take a disk-only snapshot (the volumes stay named)",
        },
      );
    }
    this.capturing = true;
    const { paths, store } = this.ctx;
    let paused = false;
    let pausedAt = 0;
    // Prepared before the pause: the overlay the machine moves onto (its backing file,
    // the frozen layer, is linked into place while paused).
    const names = newLayerNames(paths, this.id);
    try {
      const size = await this.rootVirtualSize(vm);
      await mkdir(layersDir(paths), { recursive: true });
      await mkdir(req.staging, { recursive: true, mode: 0o700 });
      await createLayerOverlay(names.layer, names.overlay, size);
      if (this.jail) await chown(names.overlay, this.jail.uid, this.jail.gid);
      if (phase === "started") await withTimeout(session.quiesce(), 10_000, "quiescing the agent channel");
      await vm.pause();
      paused = true;
      pausedAt = performance.now();
      await link(this.rootDisk, names.layer);
      try {
        await vm.freezeRoot(names.overlay);
      } catch (e) {
        await rm(names.layer, { force: true });
        throw e;
      }
      this.rootDisk = names.overlay;
      store.update(this.id, { rootDisk: names.overlay });
      // The frozen layer is read-only from now on, and no longer the VMM's to change.
      await releaseLayer(names.layer);
      const statePath = join(req.staging, "state");
      await vm.saveState(statePath, { ignoreSharedMemory: this.memoryShared });
      let ramPath: string | null = null;
      if (this.memoryShared) {
        ramPath = req.ramPath ?? join(req.staging, "ram");
        await mkdir(join(ramPath, ".."), { recursive: true, mode: 0o700 });
        await runTool("cp", ["--sparse=always", this.ramFile, ramPath], "copying the machine's RAM");
        // mm's alone: a fork's clones get it as a sealed memfd (mm-seal), never this file.
        await chmod(ramPath, 0o600);
      }
      await vm.resume();
      paused = false;
      return {
        layer: names.layer,
        virtualSize: size,
        statePath,
        ramPath,
        memory: this.memoryShared ? "file" : "stream",
        agent: { version: session.version, phase },
        compat: this.compat as Compat,
        pausedMs: Math.round(performance.now() - pausedAt),
      };
    } catch (e) {
      if (this.rootDisk !== names.overlay) await rm(names.overlay, { force: true });
      const err = e instanceof MmError ? e : mapFsError(e, "taking the snapshot");
      throw new MmError(err.code === "MM_DISK_FULL" ? "MM_DISK_FULL" : "MM_SNAPSHOT_FAILED", err.message, { cause: e });
    } finally {
      if (paused) await vm.resume().catch(() => undefined);
      if (phase === "started") session.unquiesce();
      this.capturing = false;
    }
  }

  async vmStats(): Promise<VmStats> {
    const vm = this.vm;
    if (!vm) throw new MmError("MM_MACHINE_NOT_RUNNING", "the machine is not running");
    const stats = (await vm.qmp("query-blockstats")) as {
      device: string;
      stats: { rd_bytes: number; wr_bytes: number };
    }[];
    const balloon = (await vm.qmp("query-balloon").catch(() => null)) as { actual?: number } | null;
    return {
      disks: stats.map((b) => ({ device: b.device, readBytes: b.stats.rd_bytes, writtenBytes: b.stats.wr_bytes })),
      balloonBytes: balloon?.actual ?? null,
    };
  }

  /** Inflates or deflates the balloon; the guest gives pages back as it can (not at once). */
  async setMemory(bytes: number): Promise<VmStats> {
    const vm = this.vm;
    if (!vm) throw new MmError("MM_MACHINE_NOT_RUNNING", "the machine is not running");
    await vm.qmp("balloon", { value: bytes });
    return this.vmStats();
  }

  private async rootVirtualSize(vm: RunningVm): Promise<number> {
    const blocks = (await vm.qmp("query-block")) as {
      device: string;
      inserted?: { image: { "virtual-size": number } };
    }[];
    const root = blocks.find((b) => b.device === "root");
    if (!root?.inserted) throw new MmError("MM_ENGINE_IO", "the VMM reports no root disk");
    return root.inserted.image["virtual-size"];
  }

  /** Captures a template at HELLO; returns the (slower) hashing and recording as a promise. */
  private async captureTemplate(rec: MachineRecord, key: string): Promise<{ recorded: Promise<unknown> }> {
    const { store, paths } = this.ctx;
    const staging = join(snapshotsDir(paths), `.staging-${randomBytes(6).toString("hex")}`);
    try {
      const c = await this.capture({ staging });
      const recorded = finalizeSnapshot(
        store,
        paths,
        staging,
        {
          format: 1,
          kind: "template",
          machine: rec.spec.image,
          machineId: rec.id,
          tag: key.slice(0, 12),
          createdAt: new Date().toISOString(),
          parent: null,
          spec: rec.spec,
          ...capturedMeta(c),
        },
        { templateKey: key },
      ).catch(async (e) => {
        await rm(staging, { recursive: true, force: true });
        throw e;
      });
      return { recorded };
    } catch (e) {
      await rm(staging, { recursive: true, force: true });
      throw e;
    }
  }
}

/** Whether this boot may start from (or make) the image's template. */
function templatesEnabled(rec: MachineRecord, env: NodeJS.ProcessEnv): boolean {
  // A template's devices must match its restores': machines with volumes boot cold.
  return (
    !rec.spec.cold &&
    env.MM_TEMPLATES !== "0" &&
    !env.MM_GUEST_DEBUG &&
    !rec.spec.volumes?.length &&
    !rec.spec.binds?.length
  );
}
