// `mm serve` (the local REST API) and `mm sandbox …` (sandboxes from the command line).

import { join } from "node:path";
import type { Command } from "@commander-js/extra-typings";
import { MmError } from "@mm/core";
import { failedStart, parseEgress, type Runtime } from "@mm/runtime";
import { collect, parseDuration, parseLimits } from "./common.js";

/** The API's default socket: in the state root (root's 0711 directory; the socket itself is 0600). */
export const apiSocket = (rt: Runtime) => join(rt.paths.state, "api.sock");

/**
 * The API server module: bundled beside the CLI (apps/cli/dist/api-server.js) and loaded
 * only by `mm serve`, so the other commands start without it.
 */
const API_SERVER = new URL("./api-server.js", import.meta.url).href;

export function addServeCommands(
  program: Command,
  runtime: () => Runtime,
  version: string,
  supervisorCommand: readonly string[],
  pickImage: (rt: Runtime, image: string | undefined, insecure: string[]) => Promise<unknown>,
): void {
  program
    .command("serve")
    .description("serve the REST API (unix socket 0600; TCP only with a token)")
    .option("--socket <path>", "unix socket to listen on (default: STATE/api.sock)")
    .option("--tcp <host:port>", "also listen on TCP (needs --token or MM_API_TOKEN)")
    .option("--token <token>", "bearer token TCP clients must send (default: MM_API_TOKEN)")
    .option("--body-limit <bytes>", "cap on JSON request bodies", "1048576")
    .option(
      "--pool <n>",
      "keep N sandboxes booted ahead: a create that asks only for the defaults claims one at once",
      "0",
    )
    .option("--pool-image <image>", "the pool's image (default: the embedded busybox image)")
    .option(
      "--insecure-registry <host:port>",
      "plain-HTTP loopback registry (for --pool-image)",
      collect,
      [] as string[],
    )
    .action(async (opts) => {
      const pool = Number(opts.pool);
      if (!Number.isInteger(pool) || pool < 0 || pool > 64) throw new MmError("MM_USAGE", "--pool takes 0 to 64");
      const rt = runtime();
      const socket = opts.socket ?? apiSocket(rt);
      rt.close();
      const token = opts.token ?? process.env.MM_API_TOKEN;
      let tcp: { host: string; port: number } | undefined;
      if (opts.tcp !== undefined) {
        const m = /^(.+):(\d+)$/.exec(opts.tcp);
        if (!m) throw new MmError("MM_USAGE", `--tcp "${opts.tcp}": use HOST:PORT`);
        tcp = { host: m[1] as string, port: Number(m[2]) };
      }
      const api = (await import(API_SERVER)) as typeof import("@mm/api");
      const serving = await api.serve({
        version,
        socket,
        ...(tcp && { tcp }),
        ...(token && { token }),
        bodyLimit: Number(opts.bodyLimit),
        supervisorCommand,
        pool,
        ...(opts.poolImage !== undefined && {
          poolImage: { reference: opts.poolImage, insecureRegistries: opts.insecureRegistry },
        }),
        onWarning: (m) => process.stderr.write(`mm: warning: ${m}\n`),
      });
      // Graceful on SIGTERM/SIGINT: no new connections, requests in flight finish. Set up
      // before the address is printed: whoever reads it may signal at once.
      const shutdown = () => void serving.close().then(() => process.exit(0));
      process.once("SIGTERM", shutdown);
      process.once("SIGINT", shutdown);
      process.stdout.write(`${JSON.stringify({ listening: serving.addresses })}\n`);
    });

  const sandbox = program.command("sandbox").description("sandboxes: machines that idle until their lifetime ends");
  sandbox
    .command("create")
    .description("create a sandbox and print its id")
    .argument("[image]", "image (default: the embedded busybox image)")
    .option("--name <name>", "name")
    .option("--timeout <duration>", "hard lifetime (90s, 10m, 2h)", "10m")
    .option("--idle-timeout <duration>", "end it after this long without an exec session")
    .option(
      "--egress <policy>",
      "allow | deny | CIDR[:port[/proto]],... (lists: bridge network; deny without root: no NIC)",
    )
    .option("--network <mode>", "bridge, user or none")
    .option("--cpus <n>", "virtual CPUs")
    .option("-m, --memory <MiB>", "memory in MiB")
    .option("--allow-tcg", "accept TCG emulation where KVM is missing (not a hardware boundary)", false)
    .option("--disk-bps <rate>", "throttle its root disk (bytes/s, e.g. 10M)")
    .option("--disk-iops <n>", "throttle its root disk (operations/s)")
    .option("--net-bps <rate>", "limit its network, each way (bytes/s; bridge)")
    .option("--insecure-registry <host:port>", "plain-HTTP loopback registry", collect, [] as string[])
    .option("--json", "print the sandbox as JSON", false)
    .action(async (image, opts) => {
      const rt = runtime();
      try {
        const pulled = (await pickImage(rt, image, opts.insecureRegistry)) as Parameters<
          Runtime["createSandbox"]
        >[0]["image"];
        const r = failedStart(
          await rt.createSandbox({
            ...(opts.name !== undefined && { name: opts.name }),
            ...(pulled && { image: pulled }),
            timeoutMs: parseDuration(opts.timeout),
            ...(opts.idleTimeout !== undefined && { idleMs: parseDuration(opts.idleTimeout) }),
            allowTcg: opts.allowTcg,
            limits: parseLimits(opts),
            ...(opts.cpus !== undefined && { cpus: Number(opts.cpus) }),
            ...(opts.memory !== undefined && { memoryMib: Number(opts.memory) }),
            network: {
              ...(opts.network !== undefined && { mode: opts.network as "bridge" | "user" | "none" }),
              ...(opts.egress !== undefined && { egress: parseEgress(opts.egress) }),
              publish: [],
            },
          }),
        );
        process.stdout.write(
          opts.json ? `${JSON.stringify({ id: r.id, name: r.spec.name, state: r.state })}\n` : `${r.id}\n`,
        );
      } finally {
        rt.close();
      }
    });
  sandbox
    .command("ls")
    .description("list sandboxes")
    .action(() => {
      const rt = runtime();
      try {
        for (const r of rt.list().filter((x) => x.spec.sandbox && !x.spec.sandbox.pooled)) {
          process.stdout.write(`${r.id}\t${r.spec.name}\t${r.state}\n`);
        }
      } finally {
        rt.close();
      }
    });
  sandbox
    .command("rm")
    .description("remove sandboxes (running ones too)")
    .argument("<sandboxes...>")
    .action(async (refs) => {
      const rt = runtime();
      try {
        for (const ref of refs) {
          const r = rt.find(ref);
          if (!r.spec.sandbox) throw new MmError("MM_USAGE", `${r.spec.name} is not a sandbox (use mm rm)`);
          await rt.remove(r.id, { force: true });
          process.stdout.write(`${r.spec.name}\n`);
        }
      } finally {
        rt.close();
      }
    });
}
