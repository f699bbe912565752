// The single-host runtime: what the CLI (and later `mm serve`, the agent and the
// SDK) drive. It owns the store and composes image, engine and supervisor.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import {
  type BindMount,
  DEFAULT_CPUS,
  DEFAULT_IMAGE,
  DEFAULT_MEMORY_MIB,
  ERRORS,
  type ErrorCode,
  generatedName,
  isActive,
  isMmError,
  type MachineSpec,
  MmError,
  machineId,
  type NetworkSpec,
  type RestartPolicy,
  restartDelayMs,
  type VolumeMount,
  validateEnv,
  validateName,
} from "@mm/core";
import type { PulledImage } from "@mm/image";
import { formatPortLine, mappingsClash, type PortMapping } from "@mm/net";
import { type AccelDecision, chooseAccel, type Engine, hostTscKhz, QemuEngine } from "@mm/vmm";
import { capturedMeta, requestCapture, requestRetime, requestSetMemory, type VmStats } from "./control.js";
import { DEFAULT_IMAGE_CONFIG, defaultImageRootfs } from "./default-image.js";
import { ExecClient } from "./exec-client.js";
import { mapFsError } from "./fs-errors.js";
import { GUEST_BUSYBOX } from "./guest-tools.js";
import { Images, runConfigOf } from "./images.js";
import { cgroupLayout, cgroupMountDir, removeCgroups } from "./jail.js";
import { type LogEntry, logFile, readLog } from "./logs.js";
import { checkPortConflicts, HostNetwork } from "./network.js";
import {
  controlSocket,
  defaultPaths,
  execSocket,
  initPath,
  isRootless,
  kernelPath,
  machineDir,
  type Paths,
  runDir,
} from "./paths.js";
import { commandLine, isSameProcess } from "./proc.js";
import { type SealedMemory, sealCapture } from "./seal.js";
import {
  activeOverlay,
  checkCompat,
  childrenOf,
  collectGarbage,
  finalizeSnapshot,
  freezeStoppedDisk,
  kernelIdentity,
  layersInUse,
  machineRamPath,
  releaseForkCapture,
  removeSnapshotFiles,
  resolveSnapshot,
  type Snapshot,
  shmDir,
  snapshotsDir,
  toSnapshot,
  verifySnapshot,
} from "./snapshots.js";
import { type MachineRecord, Store } from "./store.js";
import { type RunIo, type RunOutcome, Supervisor } from "./supervisor.js";
import { isSshForward, withSshForward } from "./user-network.js";
import { createVolume, DEFAULT_VOLUME_BYTES, findVolume, listVolumes, removeVolume, type Volume } from "./volumes.js";

export interface CreateInput {
  readonly name?: string;
  /** A resolved image (`images.ensure`); the embedded default image when absent. */
  readonly image?: PulledImage;
  /** `--entrypoint`: replaces the image's (an empty array clears it). */
  readonly entrypoint?: readonly string[];
  readonly cpus?: number;
  readonly memoryMib?: number;
  readonly command?: readonly string[];
  readonly env?: readonly string[];
  readonly workdir?: string;
  readonly user?: string;
  readonly autoRemove?: boolean;
  readonly cold?: boolean;
  readonly diskSizeMib?: number;
  /** Default: bridge (MM_NETWORK overrides the default). */
  readonly network?: Partial<NetworkSpec>;
  readonly ssh?: { readonly authorizedKeys: readonly string[]; readonly user: string; readonly identityFile?: string };
  /** Named volumes to mount (`-v NAME:/path[:ro]`). */
  readonly volumes?: readonly VolumeMount[];
  /** Host directories to share (`-v /host:/path[:ro]`); checked by `checkBinds` first. */
  readonly binds?: readonly BindMount[];
  readonly restart?: RestartPolicy;
  readonly sandbox?: { readonly timeoutMs: number; readonly idleMs?: number; readonly pooled?: boolean };
  readonly limits?: MachineSpec["limits"];
}

/** What a restore or a fork publishes (`mm restore|fork -p`). */
export interface CloneOptions {
  /**
   * The new machines' ports. Without it a restore publishes its snapshot's ports that no
   * other machine holds (saying which it leaves out), and a fork's clones publish none
   * (the parent holds them). Either way a rootless machine with SSH gets its own loopback
   * forward for `mm ssh`.
   */
  readonly publish?: readonly PortMapping[];
  readonly onWarning?: (message: string) => void;
}

/** How long a pooled sandbox waits to be claimed before it ends (and is replaced). */
export const POOL_IDLE_MS = 60 * 60 * 1000;

/** Whether a sandbox create asks for nothing but the defaults (a pooled sandbox serves it). */
function onlyDefaults(input: Omit<CreateInput, "command" | "entrypoint" | "autoRemove" | "sandbox">): boolean {
  const net = input.network;
  return Object.entries(input).every(([k, v]) => {
    if (v === undefined) return true;
    if (k === "limits") return Object.keys(v as object).length === 0;
    if (k === "network") {
      return (
        net?.mode === undefined &&
        net?.egress === undefined &&
        (net?.publish ?? []).length === 0 &&
        net?.group === undefined &&
        net?.dns === undefined
      );
    }
    return false;
  });
}

/** A sandbox's hard lifetime unless the caller says otherwise (E2B's default is 5 min; ours 10). */
export const DEFAULT_SANDBOX_TIMEOUT_MS = 10 * 60 * 1000;

export interface RuntimeOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly paths?: Paths;
  readonly engine?: Engine;
  /** argv that starts a detached supervisor: the runtime appends the machine id. */
  readonly supervisorCommand?: readonly string[];
}

export class Runtime {
  readonly env: NodeJS.ProcessEnv;
  readonly paths: Paths;
  readonly store: Store;
  readonly images: Images;
  private engineInstance: Engine | undefined;

  constructor(private readonly options: RuntimeOptions = {}) {
    this.env = options.env ?? process.env;
    this.paths = options.paths ?? defaultPaths(this.env);
    this.store = new Store(this.paths);
    this.images = new Images(this.paths, this.env);
    this.engineInstance = options.engine;
  }

  close(): void {
    this.store.close();
  }

  async engine(): Promise<Engine> {
    if (!this.engineInstance) {
      const tscKhz = await hostTscKhz();
      this.engineInstance = new QemuEngine({ cacheDir: this.paths.cache, ...(tscKhz !== undefined && { tscKhz }) });
    }
    return this.engineInstance;
  }

  /** Records a machine (state `created`) and its directory; boots nothing yet. */
  create(input: CreateInput): MachineRecord {
    const id = machineId(randomBytes(6));
    const spec: MachineSpec = {
      name: validateName(input.name ?? generatedName(randomBytes(3))),
      image: input.image ? input.image.reference : DEFAULT_IMAGE,
      ...(input.image && { imageDigest: input.image.digest }),
      imageConfig: input.image ? runConfigOf(input.image.config) : DEFAULT_IMAGE_CONFIG,
      ...(input.entrypoint !== undefined && { entrypoint: [...input.entrypoint] }),
      cpus: input.cpus ?? DEFAULT_CPUS,
      memoryMib: input.memoryMib ?? DEFAULT_MEMORY_MIB,
      command: [...(input.command ?? [])],
      env: validateEnv(input.env ?? []),
      autoRemove: input.autoRemove ?? false,
      ...(input.cold && { cold: true }),
      ...(input.workdir !== undefined && { workdir: input.workdir }),
      ...(input.user !== undefined && { user: input.user }),
      ...(input.diskSizeMib !== undefined && { diskSizeMib: input.diskSizeMib }),
      ...(input.ssh && { ssh: input.ssh }),
      ...(input.volumes && input.volumes.length > 0 && { volumes: [...input.volumes] }),
      ...(input.binds && input.binds.length > 0 && { binds: [...input.binds] }),
      ...(input.restart && input.restart.policy !== "no" && { restart: input.restart }),
      ...(input.limits && Object.keys(input.limits).length > 0 && { limits: { ...input.limits } }),
      ...(input.sandbox && {
        sandbox: {
          timeoutMs: input.sandbox.timeoutMs,
          ...(input.sandbox.idleMs !== undefined && { idleMs: input.sandbox.idleMs }),
          ...(input.sandbox.pooled && { pooled: true }),
        },
      }),
      network: {
        mode: userDenyAllIsNoNic(input, this.env) ? "none" : (input.network?.mode ?? defaultNetworkMode(this.env)),
        egress: input.network?.egress ?? "allow",
        publish: input.network?.publish ?? [],
        ...(input.network?.group !== undefined && { group: input.network.group }),
        ...(input.network?.dns !== undefined && { dns: input.network.dns }),
      },
    };
    if (spec.network?.mode === "none" && (spec.network.publish.length > 0 || spec.network.group || spec.ssh)) {
      throw new MmError("MM_USAGE", "-p, --network-group and --ssh need a network (not --network none)");
    }
    checkRootlessNetwork(spec.network, isRootless());
    if (spec.limits?.netBps !== undefined && spec.network?.mode !== "bridge") {
      if (isRootless()) {
        throw new MmError("MM_ROOT_REQUIRED", "--net-bps is a policer on the bridge network", {
          hint: "run mm as root (with --network bridge), or leave it out (--disk-bps works without root)",
        });
      }
      throw new MmError("MM_USAGE", "--net-bps limits the bridge network: not --network user or none");
    }
    if (spec.network && spec.network.publish.length > 0) {
      checkPortConflicts(spec.network.publish, this.publishedPorts());
    }
    for (const [i, v] of (spec.volumes ?? []).entries()) {
      findVolume(this.paths, this.store, [], v.name);
      const earlier = (spec.volumes ?? []).slice(0, i);
      if (earlier.some((e) => e.name === v.name || e.path === v.path)) {
        throw new MmError("MM_INVALID_VOLUME", `-v ${v.name}:${v.path}: each volume and each path once`);
      }
    }
    const paths = [...(spec.volumes ?? []), ...(spec.binds ?? [])].map((m) => m.path);
    if (new Set(paths).size !== paths.length) throw new MmError("MM_INVALID_VOLUME", "two -v mounts at one path");
    if (spec.workdir !== undefined && !spec.workdir.startsWith("/")) {
      throw new MmError("MM_USAGE", `working directory "${spec.workdir}" must be absolute`);
    }
    const rec = this.store.insert(id, spec);
    try {
      mkdirSync(machineDir(this.paths, id), { recursive: true, mode: 0o700 });
    } catch (e) {
      this.store.remove(id);
      throw mapFsError(e, "creating the machine directory");
    }
    return rec;
  }

  /** Boots the machine in this process and returns when it has ended. */
  async runAttached(id: string, io: RunIo, hooks?: (s: Supervisor) => void): Promise<RunOutcome> {
    const supervisor = new Supervisor(
      { paths: this.paths, store: this.store, engine: await this.engine(), env: this.env },
      id,
    );
    hooks?.(supervisor);
    const outcome = await supervisor.run(io);
    if (outcome.record.spec.autoRemove) await this.remove(id, { force: true });
    return outcome;
  }

  /**
   * The detached supervisor's life: boots the machine, and boots it again as its restart
   * policy says (with Docker's back-off), until the policy, `mm stop` or `mm rm` ends it.
   */
  async superviseLoop(id: string, io: RunIo, hooks?: (s: Supervisor) => void): Promise<RunOutcome> {
    for (;;) {
      const started = Date.now();
      const outcome = await this.runAttached(id, io, hooks);
      let rec: MachineRecord;
      try {
        rec = this.store.get(id);
      } catch {
        return outcome; // removed (--rm, or mm rm -f)
      }
      const policy = rec.spec.restart;
      const failed = rec.state === "failed" || (rec.exitCode ?? 0) !== 0;
      if (!policy || rec.userStopped || (policy.policy === "on-failure" && !failed)) return outcome;
      // A machine that ran for 10 s counts as healthy again: its count starts over.
      const attempt = Date.now() - started > 10_000 ? 1 : rec.restartCount + 1;
      const reason = rec.error ? rec.error.code : `exit code ${rec.exitCode}`;
      if (policy.policy === "on-failure" && policy.maxRetries !== undefined && attempt > policy.maxRetries) {
        this.store.addEvent(id, rec.spec.name, "restart", {
          gaveUp: true,
          reason: `${reason}; on-failure:${policy.maxRetries} reached`,
        });
        return outcome;
      }
      const delayMs = restartDelayMs(attempt);
      this.store.addEvent(id, rec.spec.name, "restart", { attempt, delayMs, reason });
      this.store.update(id, { restartCount: attempt });
      await new Promise((r) => setTimeout(r, delayMs));
      try {
        rec = this.store.get(id);
      } catch {
        return outcome;
      }
      // Stopped by the user meanwhile, or started by `mm start` (another supervisor owns it now).
      if (rec.userStopped || (rec.state !== "exited" && rec.state !== "failed")) return outcome;
      this.store.transition(id, "restart");
    }
  }

  /**
   * After a host restart (`mm system start-all`, from the unit `mm system install` writes):
   * boots the machines whose policy says so — always; unless-stopped if not stopped by the
   * user; on-failure if the host's end took them down — with their leases, so their IPs.
   */
  async startAll(): Promise<MachineRecord[]> {
    const started: MachineRecord[] = [];
    for (const rec of this.list()) {
      const p = rec.spec.restart?.policy;
      if (!p || isActive(rec.state)) continue;
      const due =
        p === "always" ||
        (p === "unless-stopped" && !rec.userStopped) ||
        (p === "on-failure" && rec.error?.code === "MM_SUPERVISOR_LOST");
      if (due) started.push(await this.startDetached(rec.id));
    }
    return started;
  }

  /** The accelerator machines get on this host (the probe's verdict, cached per host and kernel). */
  async accelerator(): Promise<AccelDecision> {
    const kernel = kernelPath(this.paths, this.env);
    return chooseAccel({
      engine: await this.engine(),
      kernel,
      rootDisk: async () => ({
        path: (await defaultImageRootfs(this.paths, initPath(this.env))).path,
        format: "raw",
        readOnly: true,
      }),
      runDir: runDir(this.paths, "kvm-probe"),
      cacheDir: this.paths.cache,
      env: this.env,
    });
  }

  /**
   * A sandbox: a machine that idles (mm's own `sleep`, whatever the image) until its hard
   * lifetime ends, used through exec and files; removed when it stops. Refused on TCG
   * unless the caller accepts that emulation is not a hardware boundary.
   */
  async createSandbox(
    input: Omit<CreateInput, "command" | "entrypoint" | "autoRemove" | "sandbox"> & {
      readonly timeoutMs?: number;
      readonly idleMs?: number;
      readonly allowTcg?: boolean;
    },
  ): Promise<MachineRecord> {
    const { timeoutMs = DEFAULT_SANDBOX_TIMEOUT_MS, idleMs, allowTcg, ...rest } = input;
    const accel = await this.accelerator();
    if (accel.accel === "tcg" && !allowTcg && this.env.MM_SANDBOX_ALLOW_TCG !== "1") {
      throw new MmError("MM_TCG_REFUSED", `this host runs guests under TCG only (${accel.reason})`);
    }
    const { image, ...shape } = rest;
    if (onlyDefaults(shape)) {
      const times = { timeoutMs, ...(idleMs !== undefined && { idleMs }) };
      const claimed = await this.claimPooled(times, image?.digest);
      if (claimed) return claimed;
    }
    const rec = this.create({
      ...rest,
      entrypoint: [GUEST_BUSYBOX],
      command: ["sleep", "2147483647"],
      autoRemove: true,
      sandbox: { timeoutMs, ...(idleMs !== undefined && { idleMs }) },
    });
    return this.startDetached(rec.id);
  }

  /** Running sandboxes booted ahead by `mm serve --pool`, not yet claimed. */
  pooled(): MachineRecord[] {
    return this.list().filter((r) => r.spec.sandbox?.pooled === true && isActive(r.state));
  }

  /**
   * Claims a running pooled sandbox for a create that asks only for the defaults: it
   * takes the claimer's timeouts (counted from now) and is returned at once, booted.
   * Null when none is ready.
   */
  private async claimPooled(
    times: { timeoutMs: number; idleMs?: number },
    imageDigest: string | undefined,
  ): Promise<MachineRecord | null> {
    for (const r of this.pooled().filter((m) => m.state === "running" && m.spec.imageDigest === imageDigest)) {
      if (!this.store.claimPooled(r.id, times)) continue; // another claimer was first
      try {
        await requestRetime(controlSocket(this.paths, r.id), times);
        return this.store.get(r.id);
      } catch {
        // It ended meanwhile: it is nobody's now; try the next.
        await this.remove(r.id, { force: true }).catch(() => undefined);
      }
    }
    return null;
  }

  /**
   * `mm serve --pool N [--pool-image IMAGE]`: boots sandboxes of the image (default: the
   * embedded one) in the default shape until N wait to be claimed. Each waits at most
   * POOL_IDLE_MS (then ends, and a fresh one follows).
   */
  async fillPool(size: number, image?: PulledImage): Promise<number> {
    let started = 0;
    const mine = () => this.pooled().filter((r) => r.spec.imageDigest === image?.digest);
    while (mine().length < size) {
      const rec = this.create({
        ...(image && { image }),
        entrypoint: [GUEST_BUSYBOX],
        command: ["sleep", "2147483647"],
        autoRemove: true,
        sandbox: { timeoutMs: POOL_IDLE_MS, pooled: true },
      });
      const r = await this.startDetached(rec.id);
      if (r.state !== "running") {
        await this.remove(r.id, { force: true }).catch(() => undefined);
        failedStart(r);
        throw new MmError("MM_INTERNAL", `the pool's sandbox ${r.spec.name} is ${r.state}`);
      }
      started++;
    }
    return started;
  }

  /** Removes the pool's unclaimed sandboxes (`mm serve` ending). */
  async drainPool(): Promise<void> {
    for (const r of this.pooled()) {
      // Claimed first (one statement), so that no create takes it while it goes.
      if (this.store.claimPooled(r.id, { timeoutMs: 1000 }))
        await this.remove(r.id, { force: true }).catch(() => undefined);
    }
  }

  /** Starts a detached supervisor for the machine and waits until it is running (or has ended). */
  async startDetached(id: string, extraEnv: Readonly<Record<string, string>> = {}): Promise<MachineRecord> {
    const argv = this.options.supervisorCommand;
    if (!argv || argv.length === 0) throw new MmError("MM_INTERNAL", "no supervisor command configured");
    const rec = this.store.get(id);
    this.store.update(id, { userStopped: 0, restartCount: 0 });
    if (rec.state !== "created") this.store.transition(id, "restart");
    const out = openSync(`${machineDir(this.paths, id)}/supervisor.log`, "a", 0o600);
    try {
      const child = spawn(argv[0] as string, [...argv.slice(1), id], {
        detached: true,
        stdio: ["ignore", out, out],
        env: { ...this.env, ...extraEnv, MM_STATE: this.paths.state, MM_CACHE: this.paths.cache },
      });
      child.unref();
    } finally {
      closeSync(out);
    }
    return this.waitFor(id, (r) => r.state !== "created" && r.state !== "starting");
  }

  /** Polls the store until `done` holds (the supervisor writes every step there). */
  async waitFor(id: string, done: (r: MachineRecord) => boolean, timeoutMs = 300_000): Promise<MachineRecord> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const rec = this.reconcile(this.store.get(id));
      if (done(rec)) return rec;
      if (Date.now() > deadline) throw new MmError("MM_BOOT_TIMEOUT", `machine ${rec.spec.name} is still ${rec.state}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  find(ref: string): MachineRecord {
    return this.reconcile(this.store.find(ref));
  }

  list(): MachineRecord[] {
    return this.store.list().map((r) => this.reconcile(r));
  }

  /**
   * A record that says a VMM runs, but whose supervisor is gone (kill -9, host crash),
   * is settled here: its VMM was killed with it (pdeathsig), so the machine failed.
   */
  reconcile(rec: MachineRecord): MachineRecord {
    if (!isActive(rec.state)) return rec;
    if (isSameProcess(rec.supervisorPid, rec.supervisorStart)) return rec;
    if (rec.vmmPid && commandLine(rec.vmmPid).includes(`mm-${rec.id}`)) {
      try {
        process.kill(rec.vmmPid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    const err = new MmError("MM_SUPERVISOR_LOST", `supervisor pid ${rec.supervisorPid ?? "?"} is gone`);
    return this.store.force(rec.id, "failed", {
      error: { code: err.code, message: err.message },
      finishedAt: rec.finishedAt ?? new Date().toISOString(),
      vmmPid: null,
    });
  }

  /** Like `docker stop`: SIGTERM to the workload, power off after `timeoutS`, then kill. */
  async stop(ref: string, timeoutS = 10): Promise<MachineRecord> {
    const rec = this.find(ref);
    // Recorded even when it is between restarts: its restart policy must not boot it again.
    this.store.update(rec.id, { userStopped: 1 });
    if (!isActive(rec.state)) return rec;
    this.store.update(rec.id, { stopTimeoutS: timeoutS });
    try {
      process.kill(rec.supervisorPid as number, "SIGTERM");
    } catch {
      return this.reconcile(rec);
    }
    try {
      return await this.waitFor(rec.id, (r) => !isActive(r.state), (timeoutS + 10) * 1000);
    } catch {
      // The supervisor did not finish: kill it; its VMM dies with it.
      try {
        process.kill(rec.supervisorPid as number, "SIGKILL");
      } catch {
        // gone meanwhile
      }
      return this.waitFor(rec.id, (r) => !isActive(r.state), 5000);
    }
  }

  async remove(ref: string, opts: { force?: boolean } = {}): Promise<MachineRecord> {
    let rec = this.find(ref);
    if (isActive(rec.state)) {
      if (!opts.force) throw new MmError("MM_MACHINE_RUNNING", rec.spec.name);
      if (rec.supervisorPid && rec.supervisorPid !== process.pid) {
        try {
          process.kill(rec.supervisorPid, "SIGKILL");
        } catch {
          // gone meanwhile
        }
        rec = await this.waitFor(rec.id, (r) => !isActive(r.state), 5000).catch(() => rec);
      }
    }
    // A supervisor killed by -f (or lost) could not remove its TAP and rules: do it here.
    if (this.store.lease(rec.id)) await new HostNetwork(this.store, this.env).detach(rec).catch(() => undefined);
    // …and its VMM's cgroups, once the VMM (killed with its supervisor) has left them.
    const cgroups = await cgroupLayout(rec.id, cgroupMountDir(this.paths));
    if (cgroups) await removeCgroups(cgroups, 2000);
    await rm(machineDir(this.paths, rec.id), { recursive: true, force: true });
    await rm(runDir(this.paths, rec.id), { recursive: true, force: true });
    await rm(machineRamPath(this.paths, rec.id, this.env), { force: true });
    this.store.remove(rec.id);
    const from = rec.spec.restoreFrom?.snapshot;
    if (from) await releaseForkCapture(this.paths, this.store, from);
    return rec;
  }

  /** Opens an exec session on a running machine (`mm exec`). */
  async exec(ref: string): Promise<ExecClient> {
    const rec = this.find(ref);
    if (rec.state !== "running") throw new MmError("MM_MACHINE_NOT_RUNNING", `${rec.spec.name} is ${rec.state}`);
    return ExecClient.connect(execSocket(this.paths, rec.id));
  }

  /**
   * `mm snapshot create`: a running machine is captured live (disk, device state, RAM)
   * and carries on; a stopped one gets a disk-only snapshot.
   */
  async snapshot(ref: string, opts: { tag?: string } = {}): Promise<Snapshot & { pausedMs: number | null }> {
    const rec = this.find(ref);
    const tag = opts.tag ?? `snap-${this.store.snapshots().filter((s) => s.machine === rec.spec.name).length + 1}`;
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(tag)) {
      throw new MmError("MM_USAGE", `tag "${tag}": use 1-64 letters, digits, '_', '.', '-'`);
    }
    const staging = join(snapshotsDir(this.paths), `.staging-${randomBytes(6).toString("hex")}`);
    const common = {
      format: 1 as const,
      kind: "snapshot" as const,
      machine: rec.spec.name,
      machineId: rec.id,
      tag,
      createdAt: new Date().toISOString(),
      parent: rec.spec.restoreFrom?.snapshot ?? null,
      spec: rec.spec,
    };
    try {
      if (rec.state === "running") {
        const c = await requestCapture(controlSocket(this.paths, rec.id), { staging });
        const snap = await finalizeSnapshot(this.store, this.paths, staging, {
          ...common,
          ...capturedMeta(c),
        });
        this.store.addEvent(rec.id, rec.spec.name, "snapshot", { snapshot: snap.id, live: true, pausedMs: c.pausedMs });
        return { ...snap, pausedMs: c.pausedMs };
      }
      if (isActive(rec.state)) {
        throw new MmError("MM_MACHINE_RUNNING", `${rec.spec.name} is ${rec.state}`, {
          hint: "snapshot it once it is running, or after it stopped",
        });
      }
      if (!existsSync(activeOverlay(this.paths, rec))) {
        throw new MmError("MM_USAGE", `${rec.spec.name} has never booted: it has no disk to snapshot yet`);
      }
      const frozen = await freezeStoppedDisk(this.paths, rec);
      this.store.update(rec.id, { rootDisk: frozen.overlay });
      await rm(activeOverlay(this.paths, rec), { force: true });
      await mkdir(staging, { recursive: true, mode: 0o700 });
      const snap = await finalizeSnapshot(this.store, this.paths, staging, {
        ...common,
        memory: null,
        agent: null,
        compat: null,
        ramPath: null,
        statePath: null,
        layer: frozen.layer,
        virtualSize: frozen.virtualSize,
      });
      this.store.addEvent(rec.id, rec.spec.name, "snapshot", { snapshot: snap.id, live: false });
      return { ...snap, pausedMs: null };
    } catch (e) {
      await rm(staging, { recursive: true, force: true });
      throw e;
    }
  }

  snapshots(opts: { machine?: string; all?: boolean } = {}): Snapshot[] {
    return this.store
      .snapshots()
      .filter((r) => (opts.all ? true : r.kind === "snapshot"))
      .filter((r) => opts.machine === undefined || r.machine === opts.machine)
      .map(toSnapshot);
  }

  findSnapshot(ref: string): Snapshot {
    return resolveSnapshot(this.store, ref);
  }

  /** Removes a snapshot (or template); refused while machines or snapshots made from it exist. */
  async removeSnapshot(ref: string): Promise<Snapshot> {
    const snap = resolveSnapshot(this.store, ref);
    const kids = childrenOf(this.store, snap.id);
    if (kids.machines.length + kids.snapshots.length > 0) {
      const list = [...kids.machines.map((n) => `machine ${n}`), ...kids.snapshots.map((n) => `snapshot ${n}`)].join(
        ", ",
      );
      throw new MmError("MM_SNAPSHOT_HAS_CHILDREN", `${snap.id.slice(0, 12)} has ${list}`);
    }
    this.store.removeSnapshot(snap.id);
    await removeSnapshotFiles(this.paths, this.env, snap, await layersInUse(this.paths, this.store));
    return snap;
  }

  /** Keeps the newest `keep` snapshots of a machine; older ones with children are kept and reported. */
  async gcSnapshots(machine: string, keep: number): Promise<{ removed: Snapshot[]; kept: Snapshot[] }> {
    const all = this.snapshots({ machine }).reverse();
    const removed: Snapshot[] = [];
    const kept: Snapshot[] = all.slice(0, keep);
    for (const snap of all.slice(keep)) {
      try {
        removed.push(await this.removeSnapshot(snap.id));
      } catch (e) {
        if (!isMmError(e, "MM_SNAPSHOT_HAS_CHILDREN")) throw e;
        kept.push(snap);
      }
    }
    await collectGarbage(this.paths, this.store, this.env);
    return { removed, kept };
  }

  /** `mm restore`: a new machine resumes the snapshot (its files checked in full first). */
  async restore(ref: string, name: string, opts: CloneOptions = {}): Promise<MachineRecord> {
    const snap = resolveSnapshot(this.store, ref);
    await verifySnapshot(snap, true);
    if (snap.compat) {
      // What can be checked before a machine exists (the supervisor checks the rest).
      const kernel = await kernelIdentity(kernelPath(this.paths, this.env));
      const engine = await (await this.engine()).fingerprint();
      checkCompat(snap, { ...snap.compat, kernel, engine });
    }
    const [ports] = await this.clonePorts(snap, "restore", 1, opts);
    const rec = this.createFrom(snap, name, "copy", ports ?? []);
    this.store.addEvent(rec.id, name, "restore", { snapshot: snap.id, from: snap.machine });
    return this.startDetached(rec.id);
  }

  /**
   * `mm fork`: captures the running machine once (RAM to shared memory) and starts
   * `count` clones that map it copy-on-write; the parent runs on throughout. The
   * capture's RAM reaches the clones as one sealed memfd (see seal.ts), which nothing
   * can write: a clone's VMM (or its balloon's free-page reports) cannot change what
   * its siblings still share.
   */
  async fork(ref: string, name: string, count = 1, opts: CloneOptions = {}): Promise<MachineRecord[]> {
    const parent = this.find(ref);
    if (parent.state !== "running") {
      throw new MmError(
        "MM_MACHINE_NOT_RUNNING",
        `${parent.spec.name} is ${parent.state}: only a running machine forks`,
        {
          hint: `start it first (mm start ${parent.spec.name}), or snapshot its disk (mm snapshot create) and mm restore that`,
        },
      );
    }
    if (!Number.isInteger(count) || count < 1 || count > 64) throw new MmError("MM_USAGE", "--count takes 1 to 64");
    const names = count === 1 ? [name] : Array.from({ length: count }, (_, i) => `${name}-${i + 1}`);
    for (const n of names) validateName(n);
    const taken = names.filter((n) => this.store.list().some((m) => m.spec.name === n));
    if (taken.length > 0) throw new MmError("MM_NAME_IN_USE", taken.map((n) => `"${n}"`).join(", "));
    // Checked before the capture: a port clash costs the parent no pause.
    const ports = await this.clonePorts({ spec: parent.spec }, "fork", count, opts);
    const rand = randomBytes(6).toString("hex");
    const staging = join(snapshotsDir(this.paths), `.staging-${rand}`);
    const ramPath = join(shmDir(this.paths, this.env), "captures", `${rand}.ram`);
    let snap: Snapshot;
    let sealed: SealedMemory | undefined;
    try {
      const c = await requestCapture(controlSocket(this.paths, parent.id), { staging, ramPath });
      snap = await finalizeSnapshot(this.store, this.paths, staging, {
        format: 1,
        kind: "fork",
        machine: parent.spec.name,
        machineId: parent.id,
        tag: `fork-${rand}`,
        createdAt: new Date().toISOString(),
        parent: parent.spec.restoreFrom?.snapshot ?? null,
        spec: parent.spec,
        ...capturedMeta(c),
      });
      sealed = await sealCapture(ramPath, this.env).catch(async (e: unknown) => {
        // No clone will map this capture: it goes now, record and files.
        await releaseForkCapture(this.paths, this.store, snap.id);
        throw e;
      });
    } catch (e) {
      await rm(staging, { recursive: true, force: true });
      throw e;
    } finally {
      // The memfd holds the RAM now (or the fork failed): the file would only double it.
      await rm(ramPath, { force: true });
    }
    const memory = sealed;
    let started: MachineRecord[];
    try {
      const clones = names.map((n, i) => this.createFrom(snap, n, "cow", ports[i] ?? []));
      this.store.addEvent(parent.id, parent.spec.name, "fork", { clones: names, capture: snap.id });
      started = await Promise.all(clones.map((c) => this.startDetached(c.id, { MM_FORK_MEMORY: memory.path })));
    } finally {
      memory.release(); // the clones' VMMs hold the memfd from here
    }
    // Clones that failed to start no longer need the capture; if none runs, it goes now.
    await releaseForkCapture(this.paths, this.store, snap.id);
    return started;
  }

  /** Host ports machines hold: every machine that exists and may start again (as in Docker). */
  private publishedPorts(): PortMapping[] {
    return this.list()
      .filter((r) => r.state !== "failed")
      .flatMap((r) => r.spec.network?.publish ?? []);
  }

  /** The ports each new machine of a restore or a fork publishes (see CloneOptions). */
  private async clonePorts(
    snap: Pick<Snapshot, "spec">,
    kind: "restore" | "fork",
    count: number,
    opts: CloneOptions,
  ): Promise<PortMapping[][]> {
    const net = snap.spec.network;
    if (!net || net.mode === "none") {
      if (opts.publish?.length) throw new MmError("MM_USAGE", "-p needs a network: the source machine has none");
      return Array.from({ length: count }, () => []);
    }
    const taken = this.publishedPorts();
    let ports: PortMapping[] = [];
    if (opts.publish) {
      if (count > 1 && opts.publish.length > 0) {
        throw new MmError("MM_USAGE", "-p with --count: the clones cannot all take the same host ports", {
          hint: "fork them one at a time, each with its own -p",
        });
      }
      checkPortConflicts(opts.publish, taken);
      ports = [...opts.publish];
    } else if (kind === "restore") {
      // Not the source's own SSH forward (user mode): each new machine gets one of its own.
      const carried = net.publish.filter((p) => !(net.mode === "user" && isSshForward(p)));
      ports = carried.filter((p) => !taken.some((t) => mappingsClash(t, p)));
      const left = carried.filter((p) => !ports.includes(p));
      if (left.length > 0) {
        opts.onWarning?.(
          `not published, another machine holds ${left.length === 1 ? "it" : "them"}: ${left.map(formatPortLine).join(", ")} (choose others with -p)`,
        );
      }
    }
    const out: PortMapping[][] = [];
    for (let i = 0; i < count; i++) {
      out.push(snap.spec.ssh !== undefined && net.mode === "user" ? await withSshForward(ports) : ports);
    }
    return out;
  }

  private createFrom(snap: Snapshot, name: string, memory: "copy" | "cow", publish: PortMapping[]): MachineRecord {
    const id = machineId(randomBytes(6));
    const spec: MachineSpec = {
      ...snap.spec,
      name: validateName(name),
      autoRemove: false,
      restoreFrom: { snapshot: snap.id, memory },
      ...(snap.spec.network && { network: { ...snap.spec.network, publish } }),
    };
    const rec = this.store.insert(id, spec);
    try {
      mkdirSync(machineDir(this.paths, id), { recursive: true, mode: 0o700 });
    } catch (e) {
      this.store.remove(id);
      throw mapFsError(e, "creating the machine directory");
    }
    return rec;
  }

  /**
   * `mm template create`: boots the image once, as its first `mm run` would, so that the
   * template exists; `existed` when one did already (the boot then started from it).
   */
  async createTemplate(
    input: Pick<CreateInput, "image" | "cpus" | "memoryMib" | "diskSizeMib" | "network">,
    io: RunIo = {},
  ): Promise<{ template: Snapshot; existed: boolean }> {
    const rec = this.create({
      ...input,
      name: `template-${randomBytes(4).toString("hex")}`,
      // The template is taken before the workload starts; mm's own busybox needs nothing of the image.
      entrypoint: [GUEST_BUSYBOX],
      command: ["true"],
    });
    try {
      const outcome = await this.runAttached(rec.id, io);
      if (outcome.error) throw outcome.error;
      const mode = this.store.get(rec.id).bootMode ?? "";
      const short = mode.startsWith("template:") ? mode.slice("template:".length) : null;
      const template = short
        ? this.templates().find((x) => x.id.startsWith(short))
        : this.templates().find((x) => x.machineId === rec.id);
      if (!template) throw new MmError("MM_SNAPSHOT_FAILED", "the image booted, but no template was recorded");
      return { template, existed: short !== null };
    } finally {
      await this.remove(rec.id, { force: true });
    }
  }

  /** `mm rmi`: removes an image reference (its blobs go with a prune) and its orphaned templates. */
  async removeImage(ref: string, force = false): Promise<{ reference: string }> {
    const r = await this.images.remove(ref, imagesInUse(this), force);
    await this.removeOrphanTemplates();
    return r;
  }

  /** `mm image prune`: blobs, root filesystems, templates and leftovers that nothing needs. */
  async pruneImages(): Promise<{ removed: number; freedBytes: number }> {
    const templates = await this.removeOrphanTemplates();
    const r = await this.images.prune(imagesInUse(this), await layersInUse(this.paths, this.store));
    return { removed: r.removed + templates, freedBytes: r.freedBytes + (await this.collectGarbage()) };
  }

  /** Removes the templates of images that no reference names any more (`mm rmi`, `mm image prune`). */
  async removeOrphanTemplates(): Promise<number> {
    const named = new Set((await this.images.list()).map((i) => i.digest));
    let removed = 0;
    for (const t of this.templates()) {
      if (!t.spec.imageDigest || named.has(t.spec.imageDigest)) continue;
      await this.removeSnapshot(t.id);
      removed++;
    }
    return removed;
  }

  templates(): Snapshot[] {
    return this.store
      .snapshots()
      .filter((r) => r.kind === "template")
      .map(toSnapshot);
  }

  /** Frees what nothing needs: unreferenced layers, unfinished captures, stale RAM files. */
  collectGarbage(opts: { dryRun?: boolean } = {}): Promise<number> {
    return collectGarbage(this.paths, this.store, this.env, opts);
  }

  /** `mm update --memory`: resizes a running guest's memory with the balloon (up to its boot size). */
  async updateMemory(ref: string, mib: number): Promise<VmStats> {
    const rec = this.find(ref);
    if (rec.state !== "running") throw new MmError("MM_MACHINE_NOT_RUNNING", `${rec.spec.name} is ${rec.state}`);
    if (mib > rec.spec.memoryMib) {
      throw new MmError(
        "MM_INVALID_MEMORY",
        `${mib} MiB is above the ${rec.spec.memoryMib} MiB the machine booted with`,
        {
          hint: "the balloon only gives memory back; boot with more (-m) to have more to give",
        },
      );
    }
    const stats = await requestSetMemory(controlSocket(this.paths, rec.id), mib * 2 ** 20);
    // Kept: the machine's next boots (restarts, `mm start`) give the memory back again.
    this.store.update(rec.id, { memoryTargetMib: mib === rec.spec.memoryMib ? null : mib });
    return stats;
  }

  createVolume(name: string, sizeBytes = DEFAULT_VOLUME_BYTES): Promise<Volume> {
    return createVolume(this.paths, this.store, name, sizeBytes);
  }

  volumes(): Volume[] {
    return listVolumes(this.paths, this.store, this.list());
  }

  volume(name: string): Volume {
    return findVolume(this.paths, this.store, this.list(), name);
  }

  removeVolume(name: string): Promise<Volume> {
    return removeVolume(this.paths, this.store, this.list(), name);
  }

  logs(ref: string): LogEntry[] {
    return readLog(logFile(machineDir(this.paths, this.find(ref).id)));
  }

  logPath(ref: string): string {
    return logFile(machineDir(this.paths, this.find(ref).id));
  }
}

/**
 * Image digests that machines and snapshots on this host still boot from (GC keeps
 * them). Templates do not count: they are a cache of the image, and go with it.
 */
export function imagesInUse(rt: Runtime): Set<string> {
  const specs = [
    ...rt.list().map((r) => r.spec),
    ...rt
      .snapshots({ all: true })
      .filter((s) => s.kind !== "template")
      .map((s) => s.spec),
  ];
  return new Set(specs.flatMap((s) => (s.imageDigest ? [s.imageDigest] : [])));
}

/** bridge as root, user-mode (passt) without; MM_NETWORK (bridge, user, none) overrides. */
export function defaultNetworkMode(env: NodeJS.ProcessEnv, rootless = isRootless()): NetworkSpec["mode"] {
  const m = env.MM_NETWORK;
  if (m === "none" || m === "user" || m === "bridge") return m;
  return rootless ? "user" : "bridge";
}

/**
 * Without root, `--egress deny` (nothing out, no published port, no SSH) is a machine
 * with no NIC: passt cannot filter what a guest sends, and a guest without a network
 * reaches nothing at all. Exec, files and logs do not use the network.
 */
function userDenyAllIsNoNic(input: CreateInput, env: NodeJS.ProcessEnv): boolean {
  const net = input.network;
  return (
    net?.egress === "deny" &&
    (net.mode ?? defaultNetworkMode(env)) === "user" &&
    (net.publish ?? []).length === 0 &&
    net.group === undefined &&
    input.ssh === undefined
  );
}

/**
 * What only the bridge network does: egress policies and network groups are nftables
 * rules on mm's bridge, which need root. Said at `mm run`, not at boot.
 */
export function checkRootlessNetwork(net: NetworkSpec | undefined, rootless: boolean): void {
  if (!net) return;
  if (net.mode === "bridge" && rootless) {
    throw new MmError("MM_ROOT_REQUIRED", "--network bridge (a bridge, TAP devices and nftables rules)", {
      hint: "run mm as root, or use the user-mode network (--network user, the default without root)",
    });
  }
  if (net.mode === "user" && (net.egress !== "allow" || net.group !== undefined)) {
    throw new MmError("MM_ROOT_REQUIRED", "--egress and --network-group are filters on the bridge network", {
      hint: "run mm as root (with --network bridge), or leave them out; without root, --egress deny alone (no -p, no --ssh) gives a machine with no network",
    });
  }
}

/** A detached start (or restore) that ended in `failed` is that failure's error, with its own code. */
export function failedStart(r: MachineRecord): MachineRecord {
  if (r.state === "failed" && r.error) {
    const code = (r.error.code in ERRORS ? r.error.code : "MM_INTERNAL") as ErrorCode;
    const e = new MmError(code);
    e.message = r.error.message;
    throw e;
  }
  return r;
}
