// Network namespaces for tests: every interface, address, rule and packet a test makes lives in
// namespaces created here ("mm-test-<random>[-role]") and removed at the end, even on failure.
// Nothing here runs a network command outside `ip netns exec`.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";

export const NODE = process.execPath;
export const PROBE = fileURLToPath(new URL("./probe.test-util.js", import.meta.url));
const INDEX = new URL("./index.js", import.meta.url).href;

export interface Result {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function exec(argv: readonly string[], input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (b) => {
      stdout += b;
    });
    child.stderr.on("data", (b) => {
      stderr += b;
    });
    child.on("error", reject);
    child.stdin.on("error", () => {});
    child.on("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(input ?? "");
  });
}

export class Namespaces {
  readonly prefix = `mm-test-${randomBytes(4).toString("hex")}`;
  private readonly names: string[] = [];
  private readonly children: ChildProcess[] = [];
  private readonly onExit = () => this.removeSync();

  constructor() {
    process.on("exit", this.onExit);
  }

  /** Creates `<prefix>` (role "") or `<prefix>-<role>` with loopback up; returns its name. */
  async add(role = ""): Promise<string> {
    const name = role ? `${this.prefix}-${role}` : this.prefix;
    const r = await exec(["ip", "netns", "add", name]);
    if (r.code !== 0) throw new Error(`ip netns add ${name}: ${r.stderr}`);
    this.names.push(name);
    await this.must(name, ["ip", "link", "set", "lo", "up"]);
    return name;
  }

  /** Runs a command inside namespace `ns`. */
  run(ns: string, argv: readonly string[], input?: string): Promise<Result> {
    if (!this.names.includes(ns)) throw new Error(`${ns} is not a namespace of this test`);
    return exec(["ip", "netns", "exec", ns, ...argv], input);
  }

  /** Like run, but a non-zero exit is an error; returns stdout. */
  async must(ns: string, argv: readonly string[], input?: string): Promise<string> {
    const r = await this.run(ns, argv, input);
    if (r.code !== 0) throw new Error(`in ${ns}: ${argv.join(" ")}: exit ${r.code}: ${r.stderr}${r.stdout}`);
    return r.stdout;
  }

  /** Starts the probe server in `ns` and resolves once it listens on every given port. */
  serve(ns: string, ...ports: string[]): Promise<void> {
    const child = spawn("ip", ["netns", "exec", ns, NODE, PROBE, "serve", ...ports], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    this.children.push(child);
    return new Promise((resolve, reject) => {
      child.stdout?.on("data", (b: Buffer) => {
        if (b.toString().includes("ready")) resolve();
      });
      child.on("exit", (code) => reject(new Error(`probe server in ${ns} exited with ${code}`)));
    });
  }

  /** A TCP or UDP exchange with a probe server: the address the server saw, or "error: CODE". */
  async connect(ns: string, proto: "tcp" | "udp", host: string, port: number, source?: string): Promise<string> {
    const r = await this.run(ns, [
      NODE,
      PROBE,
      "connect",
      proto,
      host,
      String(port),
      "1200",
      ...(source ? [source] : []),
    ]);
    return r.stdout.trim() || `error: exit ${r.code} ${r.stderr.trim()}`;
  }

  /** One ICMP echo with a one-second wait: true if answered. */
  async ping(ns: string, target: string, ...flags: string[]): Promise<boolean> {
    return (await this.run(ns, ["busybox", "ping", "-c1", "-W1", ...flags, target])).code === 0;
  }

  /**
   * Calls an export of @mm/net in a fresh Node process inside `ns`, as the runtime would run
   * there. `wrap` prefixes the command (e.g. setpriv), `env` replaces variables.
   */
  async call(
    ns: string,
    fn: string,
    args: readonly unknown[],
    options: { wrap?: readonly string[]; env?: Record<string, string> } = {},
  ): Promise<{ ok: true; value: unknown } | { ok: false; code: string; message: string }> {
    const code = `
      const net = await import(${JSON.stringify(INDEX)});
      const [fn, args] = JSON.parse(process.argv[1]);
      try {
        const value = await net[fn](...args);
        process.stdout.write(JSON.stringify({ ok: true, value: value ?? null }));
      } catch (e) {
        process.stdout.write(JSON.stringify({ ok: false, code: e.code, message: e.message }));
      }`;
    const env = Object.entries(options.env ?? {}).map(([k, v]) => `${k}=${v}`);
    const argv = [
      ...(options.wrap ?? []),
      ...(env.length ? ["env", ...env] : []),
      NODE,
      "--input-type=module",
      "-e",
      code,
      JSON.stringify([fn, args]),
    ];
    const r = await this.run(ns, argv);
    try {
      return JSON.parse(r.stdout);
    } catch {
      throw new Error(`${fn} in ${ns}: exit ${r.code}: ${r.stderr}${r.stdout}`);
    }
  }

  /** Stops the probe servers and deletes every namespace made here; returns those still listed. */
  async removeAll(): Promise<string[]> {
    for (const c of this.children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill();
    for (const name of this.names.splice(0).reverse()) await exec(["ip", "netns", "del", name]);
    process.off("exit", this.onExit);
    const left = await exec(["ip", "netns", "list"]);
    return left.stdout
      .split("\n")
      .map((l) => l.split(" ")[0] ?? "")
      .filter((n) => n.startsWith(this.prefix));
  }

  private removeSync(): void {
    for (const c of this.children) if (c.exitCode === null && c.signalCode === null) c.kill();
    for (const name of this.names) {
      try {
        execFileSync("ip", ["netns", "del", name], { stdio: "ignore" });
      } catch {
        // already gone
      }
    }
  }
}
