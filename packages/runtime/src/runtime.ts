// The single-host runtime: what the CLI (and later `mm serve`, the agent and the
// SDK) drive. It owns the store and composes image, engine and supervisor.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync, mkdirSync, openSync } from "node:fs";
import { rm } from "node:fs/promises";
import {
  DEFAULT_CPUS,
  DEFAULT_IMAGE,
  DEFAULT_MEMORY_MIB,
  generatedName,
  isActive,
  type MachineSpec,
  MmError,
  machineId,
  type NetworkSpec,
  validateEnv,
  validateName,
} from "@mm/core";
import type { PulledImage } from "@mm/image";
import { type Engine, hostTscKhz, QemuEngine } from "@mm/vmm";
import { DEFAULT_IMAGE_CONFIG } from "./default-image.js";
import { ExecClient } from "./exec-client.js";
import { mapFsError } from "./fs-errors.js";
import { Images, runConfigOf } from "./images.js";
import { type LogEntry, logFile, readLog } from "./logs.js";
import { checkPortConflicts, HostNetwork } from "./network.js";
import { defaultPaths, execSocket, machineDir, type Paths, runDir } from "./paths.js";
import { commandLine, isSameProcess } from "./proc.js";
import { type MachineRecord, Store } from "./store.js";
import { type RunIo, type RunOutcome, Supervisor } from "./supervisor.js";

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
  readonly diskSizeMib?: number;
  /** Default: bridge (MM_NETWORK overrides the default). */
  readonly network?: Partial<NetworkSpec>;
  readonly ssh?: { readonly authorizedKeys: readonly string[]; readonly user: string; readonly identityFile?: string };
}

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
      this.engineInstance = new QemuEngine(tscKhz !== undefined ? { tscKhz } : {});
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
      ...(input.workdir !== undefined && { workdir: input.workdir }),
      ...(input.user !== undefined && { user: input.user }),
      ...(input.diskSizeMib !== undefined && { diskSizeMib: input.diskSizeMib }),
      ...(input.ssh && { ssh: input.ssh }),
      network: {
        mode: input.network?.mode ?? (this.env.MM_NETWORK === "none" ? "none" : "bridge"),
        egress: input.network?.egress ?? "allow",
        publish: input.network?.publish ?? [],
        ...(input.network?.group !== undefined && { group: input.network.group }),
        ...(input.network?.dns !== undefined && { dns: input.network.dns }),
      },
    };
    if (spec.network?.mode === "none" && (spec.network.publish.length > 0 || spec.network.group || spec.ssh)) {
      throw new MmError("MM_USAGE", "-p, --network-group and --ssh need a network (not --network none)");
    }
    if (spec.network && spec.network.publish.length > 0) {
      // Ports stay reserved by machines that exist and may start again, as in Docker.
      const taken = this.list()
        .filter((r) => r.state !== "failed")
        .flatMap((r) => r.spec.network?.publish ?? []);
      checkPortConflicts(spec.network.publish, taken);
    }
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

  /** Starts a detached supervisor for the machine and waits until it is running (or has ended). */
  async startDetached(id: string): Promise<MachineRecord> {
    const argv = this.options.supervisorCommand;
    if (!argv || argv.length === 0) throw new MmError("MM_INTERNAL", "no supervisor command configured");
    const rec = this.store.get(id);
    if (rec.state !== "created") this.store.transition(id, "restart");
    const out = openSync(`${machineDir(this.paths, id)}/supervisor.log`, "a", 0o600);
    try {
      const child = spawn(argv[0] as string, [...argv.slice(1), id], {
        detached: true,
        stdio: ["ignore", out, out],
        env: { ...this.env, MM_STATE: this.paths.state, MM_CACHE: this.paths.cache },
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
      await new Promise((r) => setTimeout(r, 50));
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
    await rm(machineDir(this.paths, rec.id), { recursive: true, force: true });
    await rm(runDir(this.paths, rec.id), { recursive: true, force: true });
    this.store.remove(rec.id);
    return rec;
  }

  /** Opens an exec session on a running machine (`mm exec`). */
  async exec(ref: string): Promise<ExecClient> {
    const rec = this.find(ref);
    if (rec.state !== "running") throw new MmError("MM_MACHINE_NOT_RUNNING", `${rec.spec.name} is ${rec.state}`);
    return ExecClient.connect(execSocket(this.paths, rec.id));
  }

  logs(ref: string): LogEntry[] {
    return readLog(logFile(machineDir(this.paths, this.find(ref).id)));
  }

  logPath(ref: string): string {
    return logFile(machineDir(this.paths, this.find(ref).id));
  }
}

/** Image digests that machines on this host still boot from (GC keeps them). */
export function imagesInUse(rt: Runtime): Set<string> {
  return new Set(rt.list().flatMap((r) => (r.spec.imageDigest ? [r.spec.imageDigest] : [])));
}
