// Supervises one boot of one machine: builds what the boot needs, starts the VMM,
// speaks the agent protocol, records every step in the store, and turns whatever
// ends the boot (workload exit, stop, VMM death, panic, timeout) into a final state.
// The same code runs inside a foreground `mm run` and in the detached supervisor.

import { existsSync } from "node:fs";
import { access, rm } from "node:fs/promises";
import type { Server } from "node:net";
import { constants as osc } from "node:os";
import { join } from "node:path";
import {
  type ExitStatus,
  errorCodeForGuest,
  type GuestError,
  MmError,
  type NetworkIdentity,
  parseSignal,
  type WorkloadConfig,
  workloadArgv,
} from "@mm/core";
import { chooseAccel, describeExit, type Engine, type RunningVm, TCG_WARNING, type VmExit } from "@mm/vmm";
import { AgentSession } from "./agent-session.js";
import { createOverlay, defaultImageRootfs } from "./default-image.js";
import { serveExecRelay } from "./exec-relay.js";
import { mapFsError } from "./fs-errors.js";
import { guestTools, TOOLS_SERIAL } from "./guest-tools.js";
import { Images } from "./images.js";
import { LogWriter, logFile, TextTail } from "./logs.js";
import { HostNetwork, networkOf } from "./network.js";
import { execSocket, initPath, kernelPath, machineDir, type Paths, runDir } from "./paths.js";
import { processStartTime } from "./proc.js";
import { ensureHostKey, startSshServer } from "./ssh.js";
import type { MachineRecord, Store } from "./store.js";

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

export class Supervisor {
  private vm: RunningVm | null = null;
  private session: AgentSession | null = null;
  private stopTimers: NodeJS.Timeout[] = [];
  private stopping = false;
  private ready = false;
  private attached = false;
  private stopSignal: number = osc.signals.SIGTERM;

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
      const err = e instanceof MmError ? e : mapFsError(e, "starting the machine");
      await this.vm?.kill();
      rec = store.force(this.id, "failed", {
        error: { code: err.code, message: err.message },
        finishedAt: new Date().toISOString(),
        vmmPid: null,
      });
      return { record: rec, exitCode: null, error: err };
    } finally {
      for (const t of this.stopTimers) clearTimeout(t);
      log?.close();
      if (this.attached) await new HostNetwork(store, env).detach(rec).catch(() => undefined);
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
    const config = workloadConfig(rec);
    const base = rec.spec.imageDigest
      ? await (async () => {
          const images = new Images(paths, env);
          const image = await images.byDigest(rec.spec.image, rec.spec.imageDigest as string);
          return { path: await images.rootfs(image, initPath(env), io.onWarning) };
        })()
      : await defaultImageRootfs(paths, initPath(env));
    trace("rootfs");
    const overlay = join(machineDir(paths, this.id), "root.qcow2");
    if (!existsSync(overlay)) await createOverlay(base.path, overlay, rec.spec.diskSizeMib);

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

    let nic: { tap: string; mac: string } | undefined;
    let identity: NetworkIdentity | undefined;
    if (networkOf(rec).mode === "bridge") {
      this.attached = true;
      const a = await new HostNetwork(store, env).attach(rec, hostnameFor(rec.spec.name));
      nic = { tap: a.lease.tap, mac: a.lease.mac };
      identity = a.identity;
      trace(`network ${a.identity.address}`);
    }
    const consoleTail = new TextTail();
    const vm = await engine.boot({
      id: this.id,
      runDir: runDir(paths, this.id),
      kernel,
      kernelArgs: [
        ...(env.MM_GUEST_DEBUG ? ["mm.debug=1"] : []),
        ...(rec.spec.diskSizeMib !== undefined ? ["mm.growfs=1"] : []),
      ],
      rootDisk: { path: overlay, format: "qcow2", readOnly: false },
      cpus: rec.spec.cpus,
      memoryMib: rec.spec.memoryMib,
      accel: accel.accel,
      agentChannel: true,
      extraDisks: [{ path: tools.disk, format: "raw", readOnly: true, serial: TOOLS_SERIAL }],
      ...(nic && { nic }),
      onConsole: (d) => {
        log.write("console", d);
        consoleTail.push(d);
      },
    });
    this.vm = vm;
    trace("vmm connected");
    store.update(this.id, { vmmPid: vm.pid });
    if (this.stopping) void vm.terminate(1000);
    const session = new AgentSession(vm.channel as NonNullable<typeof vm.channel>);
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

    const forward = (which: "stdout" | "stderr") => (d: Buffer) => {
      log.write(which, d);
      const sink = io[which];
      if (sink && sink(d, () => session.resume()) === false) session.pause();
    };
    session.on("hello", () => {
      trace("hello");
      try {
        session.sendConfig(identity ? { ...config, network: identity } : config);
      } catch (e) {
        protocolError = e instanceof MmError ? e : new MmError("MM_INTERNAL", String(e));
        void vm.kill();
      }
    });
    let relay: Server | null = null;
    let setupError: MmError | null = null;
    session.on("ready", () => {
      clearTimeout(bootTimer);
      trace("ready");
      this.ready = true;
      void (async () => {
        try {
          // "running" means usable: with --ssh, that includes a listening SSH server.
          if (rec.spec.ssh) {
            const hostKey = await ensureHostKey(machineDir(paths, this.id), this.id);
            await startSshServer(session, hostKey, rec.spec.ssh);
            trace("ssh");
          }
          relay = await serveExecRelay(execSocket(paths, this.id), () => (session.isClosed ? null : session));
        } catch (e) {
          setupError = e instanceof MmError ? e : new MmError("MM_EXEC_SETUP", String(e));
          void vm.kill();
          return;
        }
        try {
          rec = store.transition(this.id, "ready");
          io.onReady?.(rec);
        } catch {
          // a stop (or the workload's exit) raced the boot: the record already says so
        }
      })();
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
      session.poweroff();
      this.stopTimers.push(setTimeout(() => void vm.terminate(1000), POWEROFF_GRACE_MS));
    });
    session.on("protocolError", (e) => {
      protocolError = e;
      void vm.kill();
    });

    const vmExit: VmExit = await vm.exited;
    trace("vmm exited");
    (relay as Server | null)?.close();
    await rm(execSocket(paths, this.id), { force: true });
    clearTimeout(bootTimer);
    session.close();
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
}
