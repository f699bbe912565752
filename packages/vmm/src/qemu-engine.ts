// The QEMU microvm engine: the thin process shell around buildQemuArgs. It listens
// on the QMP and agent sockets first, then starts QEMU, which connects to them.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream, constants as fsc } from "node:fs";
import { access, chmod, chown, type FileHandle, mkdir, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { promisify } from "node:util";
import { MmError } from "@mm/core";
import type { BootSpec, Engine, RunningVm, StateOptions, VmExit } from "./engine.js";
import { jailCommand } from "./jail.js";
import { buildQemuArgs } from "./qemu-args.js";
import { QmpClient, withTimeout } from "./qmp.js";

const STDERR_KEEP = 8192;
const CONNECT_TIMEOUT_MS = 15_000;

export interface QemuEngineOptions {
  readonly qemuBinary?: string;
  readonly tscKhz?: number;
  /** Where the VMM's version line is remembered per binary (saves a process per boot). */
  readonly cacheDir?: string;
}

export async function findExecutable(name: string): Promise<string | null> {
  if (name.includes("/")) return (await isExecutable(name)) ? name : null;
  for (const dir of (process.env.PATH ?? "/usr/sbin:/usr/bin:/sbin:/bin").split(":")) {
    const p = join(dir || ".", name);
    if (await isExecutable(p)) return p;
  }
  return null;
}

async function isExecutable(p: string): Promise<boolean> {
  try {
    await access(p, fsc.X_OK);
    return true;
  } catch {
    return false;
  }
}

function listen(path: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(path, () => resolve(server));
  });
}

function acceptOne(server: Server): Promise<Socket> {
  return new Promise((resolve) => server.once("connection", resolve));
}

export class QemuEngine implements Engine {
  readonly name = "qemu-microvm";
  private fingerprintValue: Promise<string> | null = null;
  constructor(private readonly options: QemuEngineOptions = {}) {}

  private async binary(): Promise<string> {
    const qemu = await findExecutable(this.options.qemuBinary ?? process.env.MM_QEMU ?? "qemu-system-x86_64");
    if (!qemu) throw new MmError("MM_QEMU_MISSING", "qemu-system-x86_64 is not on PATH");
    return qemu;
  }

  /** QEMU's version line plus the binary's size and mtime: a rebuilt QEMU is another build. */
  fingerprint(): Promise<string> {
    this.fingerprintValue ??= (async () => {
      const qemu = await this.binary();
      const st = await stat(qemu);
      const build = createHash("sha256").update(`${qemu}\0${st.ino}\0${st.size}\0${st.mtimeMs}`).digest("hex");
      const cached = this.options.cacheDir ? join(this.options.cacheDir, "engine", `qemu-${build.slice(0, 16)}`) : null;
      const remembered = cached ? await readFile(cached, "utf8").catch(() => null) : null;
      if (remembered) return remembered;
      const { stdout } = await promisify(execFile)(qemu, ["--version"]);
      const version = (stdout.split("\n")[0]?.trim() ?? "").replace(/^QEMU emulator version /, "");
      const value = `${this.name}/${version}/${build.slice(0, 16)}`;
      if (cached) {
        await mkdir(join(cached, ".."), { recursive: true })
          .then(() => writeFile(cached, value))
          .catch(() => undefined);
      }
      return value;
    })();
    return this.fingerprintValue;
  }

  async boot(spec: BootSpec): Promise<RunningVm> {
    const qemu = await this.binary();
    const setpriv = await findExecutable("setpriv");
    if (!setpriv) throw new MmError("MM_TOOL_MISSING", "setpriv (util-linux) is not on PATH");

    await mkdir(spec.runDir, { recursive: true, mode: 0o700 });
    // The VMM's own directory (pidfile, migration sockets): the one place it may create files.
    const ownDir = vmmDir(spec.runDir);
    await mkdir(ownDir, { recursive: true, mode: 0o700 });
    if (spec.jail) await chown(ownDir, spec.jail.uid, spec.jail.gid);
    const qmpSocket = join(spec.runDir, "qmp.sock");
    const agentSocket = join(spec.runDir, "agent.sock");
    const pidFile = join(ownDir, "qemu.pid");
    await Promise.all([rm(qmpSocket, { force: true }), rm(agentSocket, { force: true }), rm(pidFile, { force: true })]);
    const servers = [await listen(qmpSocket), ...(spec.agentChannel ? [await listen(agentSocket)] : [])];
    // mm's own and 0600 (in a 0700 directory); gone again once QEMU holds its descriptors.
    await Promise.all([chmod(qmpSocket, 0o600), ...(spec.agentChannel ? [chmod(agentSocket, 0o600)] : [])]);
    const [qmpServer, agentServer] = servers as [Server, Server | undefined];
    // QEMU gets the other ends as inherited descriptors: connected before it starts, so
    // there is no race and no socket path it must be allowed to reach.
    const handed: Socket[] = [];
    let memory: FileHandle | undefined;
    let child: ChildProcess | undefined;
    let vm: QemuVm | undefined;
    try {
      const qmpConn = acceptOne(qmpServer);
      handed.push(await connectTo(qmpSocket));
      const agentConn = agentServer ? acceptOne(agentServer) : Promise.resolve(null);
      if (agentServer) handed.push(await connectTo(agentSocket));
      const socketPaths = [
        ...(spec.nic && "socket" in spec.nic ? [spec.nic.socket] : []),
        ...(spec.shares ?? []).flatMap((sh) => (sh.kind === "virtiofs" ? [sh.socket] : [])),
      ];
      const sockets = new Map<string, number>();
      for (const path of socketPaths) {
        sockets.set(path, 3 + handed.length);
        handed.push(await connectTo(path));
      }
      // A capture held as a sealed memfd: QEMU gets the descriptor, after the sockets.
      if (spec.memoryFile?.descriptor) {
        memory = await open(spec.memoryFile.path, "r").catch((e: NodeJS.ErrnoException) => {
          throw new MmError("MM_ENGINE_IO", `the guest RAM ${spec.memoryFile?.path} cannot be opened: ${e.code}`);
        });
      }
      const args = buildQemuArgs({
        spec,
        fds: { qmp: 3, agent: 4, sockets, ...(memory && { memory: 3 + handed.length }) },
        pidFile,
        ...(this.options.tscKhz !== undefined && { tscKhz: this.options.tscKhz }),
      });
      // If the supervising process dies (even by SIGKILL), the kernel kills QEMU too, so no
      // VMM is ever orphaned: setpriv --pdeathsig, or the jail's executor, which sets it
      // itself (again after its uid change, which clears it).
      const argv = spec.jail
        ? jailCommand(spec.jail, [qemu, ...args])
        : [setpriv, "--pdeathsig", "KILL", "--", qemu, ...args];
      child = spawn(argv[0] as string, argv.slice(1), {
        stdio: ["ignore", "pipe", "pipe", ...handed, ...(memory ? [memory.fd] : [])],
      });
      vm = new QemuVm(child, spec, join(ownDir, "migrate.sock"));
      for (const h of handed) h.destroy(); // the child holds its own copies
      await memory?.close();
      memory = undefined;
      const running = vm;
      const [qmpSock, channel] = await withTimeout(
        Promise.race([
          Promise.all([qmpConn, agentConn]),
          running.exited.then((x) => {
            throw new MmError("MM_QEMU_FAILED", describeExit(x));
          }),
        ]),
        CONNECT_TIMEOUT_MS,
        "QEMU start-up",
      );
      vm.attach(new QmpClient(qmpSock), channel);
      await vm.handshake();
      return vm;
    } catch (e) {
      for (const h of handed) h.destroy();
      await memory?.close();
      await vm?.kill();
      if (e instanceof MmError && e.code === "MM_QEMU_FAILED") throw e;
      const tail = vm?.stderrTail();
      throw new MmError("MM_QEMU_FAILED", `${(e as Error).message}${tail ? `: ${tail}` : ""}`, { cause: e });
    } finally {
      for (const s of servers) s.close();
      await Promise.all([rm(qmpSocket, { force: true }), rm(agentSocket, { force: true })]);
    }
  }
}

/** The VMM's own directory under a machine's run directory (owned by the jail's uid when jailed). */
export const vmmDir = (runDir: string) => join(runDir, "vmm");

function connectTo(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once("connect", () => {
      s.off("error", reject);
      resolve(s);
    });
    s.once("error", reject);
  });
}

export function describeExit(x: VmExit): string {
  const how = x.signal ? `killed by ${x.signal}` : `exit status ${x.code}`;
  return x.stderr.trim() ? `QEMU ${how}: ${x.stderr.trim()}` : `QEMU ${how}`;
}

class QemuVm implements RunningVm {
  readonly exited: Promise<VmExit>;
  channel: Socket | null = null;
  private qmpClient: QmpClient | null = null;
  private stderr = "";
  private done = false;

  constructor(
    private readonly child: ChildProcess,
    private readonly spec: BootSpec,
    private readonly migrateSocket: string,
  ) {
    child.stdout?.on("data", (d: Buffer) => spec.onConsole?.(d));
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (d: string) => {
      this.stderr = (this.stderr + d).slice(-STDERR_KEEP);
    });
    this.exited = new Promise((resolve) => {
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (this.done) return;
        this.done = true;
        this.qmpClient?.close();
        resolve({ code, signal, stderr: this.stderr });
      };
      child.once("error", (err) => {
        this.stderr += String(err);
        finish(null, null);
      });
      child.once("close", finish);
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  stderrTail(): string {
    return this.stderr.trim();
  }

  attach(qmp: QmpClient, channel: Socket | null): void {
    this.qmpClient = qmp;
    const onEvent = this.spec.onEvent;
    if (onEvent) qmp.on("event", onEvent);
    this.channel = channel;
  }

  async handshake(): Promise<void> {
    await this.qmpClient?.handshake();
  }

  qmp(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (!this.qmpClient) return Promise.reject(new MmError("MM_ENGINE_IO", "QMP not connected"));
    return this.qmpClient.execute(command, args);
  }

  async pause(): Promise<void> {
    await this.qmp("stop");
  }

  async resume(): Promise<void> {
    await this.qmp("cont");
  }

  private async migrationSetup(options: StateOptions): Promise<void> {
    await this.qmp("migrate-set-capabilities", {
      capabilities: [{ capability: "x-ignore-shared", state: options.ignoreSharedMemory }],
    });
    // The default cap (128 MiB/s) would throttle a stream that carries RAM; the machine is paused anyway.
    await this.qmp("migrate-set-parameters", { "max-bandwidth": 1024 * 1024 * 1024 * 1024 });
  }

  /** Waits for the migration to leave its running states; throws unless it completed. */
  private async migrationDone(what: string): Promise<void> {
    for (let delay = 1; ; delay = Math.min(delay * 2, 20)) {
      const info = (await this.qmp("query-migrate")) as { status?: string; "error-desc"?: string };
      if (info.status === "completed") return;
      if (info.status === "failed" || info.status === "cancelled") {
        throw new MmError("MM_ENGINE_IO", `${what}: ${info["error-desc"] ?? info.status}`);
      }
      if (this.done) throw new MmError("MM_ENGINE_IO", `${what}: QEMU exited`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  // The state travels over a unix socket rather than QEMU's `fd:` (Node cannot pass a
  // descriptor over QMP) or `exec:` (a jailed QEMU may not spawn): QEMU connects for a
  // save and listens for a load, and this process copies between socket and file.
  async saveState(file: string, options: StateOptions): Promise<void> {
    await this.migrationSetup(options);
    await rm(this.migrateSocket, { force: true });
    const server = await listen(this.migrateSocket);
    // A jailed QEMU connects as the machine's own uid.
    if (this.spec.jail) await chown(this.migrateSocket, this.spec.jail.uid, this.spec.jail.gid);
    try {
      const conn = acceptOne(server);
      await this.qmp("migrate", { uri: `unix:${this.migrateSocket}` });
      const copied = pipeline(await conn, createWriteStream(file, { mode: 0o600 }));
      await Promise.all([this.migrationDone("saving the machine state"), copied]);
    } finally {
      server.close();
      await rm(this.migrateSocket, { force: true });
    }
  }

  async loadState(file: string, options: StateOptions): Promise<void> {
    await this.migrationSetup(options);
    await rm(this.migrateSocket, { force: true });
    await this.qmp("migrate-incoming", { uri: `unix:${this.migrateSocket}` });
    const sock = connect(this.migrateSocket);
    try {
      await pipeline(createReadStream(file), sock);
      await this.migrationDone("loading the machine state");
    } catch (e) {
      throw e instanceof MmError
        ? e
        : new MmError("MM_ENGINE_IO", `loading the machine state: ${(e as Error).message}`, { cause: e });
    } finally {
      sock.destroy();
      await rm(this.migrateSocket, { force: true });
    }
  }

  async freezeRoot(overlay: string): Promise<void> {
    await this.qmp("blockdev-snapshot-sync", {
      device: "root",
      "snapshot-file": overlay,
      format: "qcow2",
      mode: "existing",
    });
  }

  async terminate(graceMs = 3000): Promise<VmExit> {
    if (this.done) return this.exited;
    await this.qmp("quit").catch(() => undefined);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  async kill(): Promise<VmExit> {
    if (!this.done) this.child.kill("SIGKILL");
    return this.exited;
  }
}
