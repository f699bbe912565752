// `mm --host unix:///…/api.sock …` (or MM_HOST): the CLI as a client of `mm serve` — ps,
// inspect, run -d, exec, logs, cp (one file), port, df, top, stats, update, stop, start,
// rm, wait, events, snapshot create/ls/rm/gc, template create/ls/rm, volume, restore, fork,
// pull, images, rmi, image ls/prune/import, login, logout, doctor, system start-all,
// sandbox create/ls/rm (remote-host.ts has the host's commands). Not through it: `mm ssh`
// (the client side of SSH runs here), `mm system install` (the server's service files)
// and `mm serve`. Bundled apart (apps/cli/dist/remote-cli.js) and loaded only when a host
// is given, so local commands do not carry the HTTP and WebSocket clients.

import { Command, CommanderError } from "@commander-js/extra-typings";
import { type Machine, MmApiError, MmClient, Sandbox } from "@micromachines/sdk";
import { collect, parseDuration, parseLimits } from "./common.js";
import { addHostCommands } from "./remote-host.js";

function fail(e: unknown): number {
  if (e instanceof MmApiError) {
    process.stderr.write(`mm: ${e.code}: ${e.message}\n  hint: ${e.hint}\n`);
    return 125;
  }
  process.stderr.write(`mm: ${(e as Error).message}\n`);
  return 125;
}

function row(m: Machine): string {
  return `${m.id}\t${m.image}\t${m.state}\t${m.accel ?? ""}\t${m.name}\n`;
}

/** Runs the remote command line; resolves with the exit code. */
export async function runRemote(host: string, argv: readonly string[]): Promise<number> {
  const client = new MmClient({ host });
  let code = 0;
  let afterDashes: string[] | undefined;
  const program = new Command("mm")
    .description(`mm through the API at ${host}`)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command("ps")
    .option("-a, --all", "include machines that are not running", false)
    .option("-q, --quiet", "ids only", false)
    .option("--json", "JSON", false)
    .action(async (opts) => {
      const all = (await client.json<Machine[]>("GET", "/v1/machines")).filter(
        (m) => opts.all || m.state === "running" || m.state === "starting",
      );
      if (opts.json) process.stdout.write(`${JSON.stringify(all, null, 2)}\n`);
      else if (opts.quiet) process.stdout.write(all.map((m) => `${m.id}\n`).join(""));
      else process.stdout.write(`MACHINE ID\tIMAGE\tSTATUS\tACCEL\tNAME\n${all.map(row).join("")}`);
    });

  program
    .command("inspect")
    .argument("<machines...>")
    .action(async (refs) => {
      const out = [];
      for (const r of refs) out.push(await client.json<Machine>("GET", `/v1/machines/${encodeURIComponent(r)}`));
      process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    });

  program
    .command("run")
    .argument("[image]")
    .argument("[command...]")
    .option("-d, --detach", "required over --host: the machine runs on the server", false)
    .option("--name <name>")
    .option("-e, --env <KEY=VALUE>", "environment (repeatable)", collect, [] as string[])
    .option("-p, --publish <spec>", "publish a port (repeatable)", collect, [] as string[])
    .option("--network <mode>")
    .option("--insecure-registry <host:port>", "plain-HTTP loopback registry", collect, [] as string[])
    .action(async (image, operands, opts) => {
      const command = afterDashes ?? operands;
      if (!opts.detach) throw new MmApiError("MM_USAGE", "over --host, mm run needs -d", "add -d, then mm exec", 400);
      const m = await client.json<Machine>("POST", "/v1/machines", {
        body: {
          ...(image !== undefined && image !== "mm/busybox" && { image }),
          ...(opts.name !== undefined && { name: opts.name }),
          ...(command.length > 0 && { command }),
          ...(opts.env.length > 0 && { env: opts.env }),
          ...(opts.publish.length > 0 && { publish: opts.publish }),
          ...(opts.network !== undefined && { network: opts.network }),
          ...(opts.insecureRegistry.length > 0 && { insecureRegistries: opts.insecureRegistry }),
        },
      });
      process.stdout.write(`${m.id}\n`);
    });

  program
    .command("exec")
    .argument("<machine>")
    .argument("<command...>")
    .option("-i, --interactive", "pass stdin to the command", false)
    .option("-e, --env <KEY=VALUE>", "environment (repeatable)", collect, [] as string[])
    .option("-u, --user <user>")
    .option("-w, --workdir <dir>")
    .action(async (ref, command, opts) => {
      const sb = await Sandbox.connect(ref, client);
      const p = sb.execStream(command, {
        ...(opts.env.length > 0 && { env: opts.env }),
        ...(opts.user !== undefined && { user: opts.user }),
        ...(opts.workdir !== undefined && { workdir: opts.workdir }),
      });
      if (opts.interactive) {
        process.stdin.on("data", (d: Buffer) => p.write(d));
        process.stdin.on("end", () => p.end());
      } else p.end();
      for await (const c of p.output) (c.stream === "stdout" ? process.stdout : process.stderr).write(c.data);
      code = await p.exited;
      process.stdin.destroy();
    });

  for (const [name, method, path] of [
    ["stop", "POST", "/stop"],
    ["start", "POST", "/start"],
  ] as const) {
    program
      .command(name)
      .argument("<machines...>")
      .action(async (refs) => {
        for (const r of refs) {
          await client.json(method, `/v1/machines/${encodeURIComponent(r)}${path}`);
          process.stdout.write(`${r}\n`);
        }
      });
  }

  program
    .command("rm")
    .argument("<machines...>")
    .option("-f, --force", "remove running machines too", false)
    .action(async (refs, opts) => {
      for (const r of refs) {
        await client.json("DELETE", `/v1/machines/${encodeURIComponent(r)}`, {
          query: { force: String(opts.force) },
        });
        process.stdout.write(`${r}\n`);
      }
    });

  program
    .command("logs")
    .argument("<machine>")
    .option("-f, --follow", "follow until the machine ends", false)
    .action(async (ref, opts) => {
      const sb = await Sandbox.connect(ref, client);
      for await (const e of sb.logs({ follow: opts.follow })) {
        if (e.stream !== "console") (e.stream === "stderr" ? process.stderr : process.stdout).write(e.data);
      }
    });

  program
    .command("cp")
    .description("copy one file: HOSTFILE MACHINE:/path, or MACHINE:/path HOSTFILE")
    .argument("<src>")
    .argument("<dest>")
    .action(async (src, dest) => {
      const { readFile, writeFile } = await import("node:fs/promises");
      const guest = (x: string) => /^([^/:]+):(\/.*)$/.exec(x);
      const into = guest(dest);
      const from = guest(src);
      if (into && !from) {
        const sb = await Sandbox.connect(into[1] as string, client);
        await sb.files.write(into[2] as string, await readFile(src));
      } else if (from && !into) {
        const sb = await Sandbox.connect(from[1] as string, client);
        await writeFile(dest, await sb.files.read(from[2] as string));
      } else {
        throw new MmApiError("MM_USAGE", "one side must be MACHINE:/path, the other a host file", "", 400);
      }
    });

  const snapshot = program.command("snapshot");
  snapshot
    .command("create")
    .argument("<machine>")
    .option("--tag <tag>")
    .action(async (ref, opts) => {
      const s = await client.json<{ id: string }>("POST", `/v1/machines/${encodeURIComponent(ref)}/snapshots`, {
        body: { ...(opts.tag !== undefined && { tag: opts.tag }) },
      });
      process.stdout.write(`${s.id}\n`);
    });
  snapshot.command("ls").action(async () => {
    for (const s of await client.json<{ id: string; machine: string; tag: string | null; createdAt: string }[]>(
      "GET",
      "/v1/snapshots",
    )) {
      process.stdout.write(`${s.id.slice(0, 12)}\t${s.machine}\t${s.tag ?? ""}\t${s.createdAt}\n`);
    }
  });

  snapshot
    .command("rm")
    .argument("<snapshots...>")
    .action(async (refs) => {
      for (const r of refs) {
        const s2 = await client.json<{ id: string }>("DELETE", `/v1/snapshots/${encodeURIComponent(r)}`);
        process.stdout.write(`${s2.id}\n`);
      }
    });

  snapshot
    .command("gc")
    .argument("<machine>")
    .option("--keep <n>", "snapshots to keep, newest first", "3")
    .action(async (machine, opts) => {
      const r = await client.json<{ removed: { id: string }[] }>("POST", "/v1/snapshots/gc", {
        body: { machine, keep: Number(opts.keep) },
      });
      for (const x of r.removed) process.stdout.write(`${x.id}\n`);
    });

  program
    .command("pull")
    .argument("<image>")
    .option("--insecure-registry <host:port>", "plain-HTTP loopback registry", collect, [] as string[])
    .action(async (image, opts) => {
      const i = await client.json<{ reference: string; digest: string }>("POST", "/v1/images/pull", {
        body: {
          reference: image,
          ...(opts.insecureRegistry.length > 0 && { insecureRegistries: opts.insecureRegistry }),
        },
      });
      process.stdout.write(`${i.reference}@${i.digest}\n`);
    });

  program
    .command("update")
    .argument("<machine>")
    .requiredOption("-m, --memory <MiB>", "the memory the guest keeps, MiB")
    .action(async (ref, opts) => {
      await client.json("POST", `/v1/machines/${encodeURIComponent(ref)}/memory`, {
        body: { memoryMib: Number(opts.memory) },
      });
      process.stdout.write(`${ref}\n`);
    });

  const template = program.command("template");
  template.command("ls").action(async () => {
    for (const t of await client.json<{ id: string; machine: string; createdAt: string }[]>("GET", "/v1/templates")) {
      process.stdout.write(`${t.id.slice(0, 12)}\t${t.machine}\t${t.createdAt}\n`);
    }
  });
  template
    .command("rm")
    .argument("<templates...>")
    .action(async (refs) => {
      for (const r of refs) {
        const t = await client.json<{ id: string }>("DELETE", `/v1/templates/${encodeURIComponent(r)}`);
        process.stdout.write(`${t.id}\n`);
      }
    });

  const volume = program.command("volume");
  volume.command("ls").action(async () => {
    for (const v of await client.json<{ name: string; sizeBytes: number; attachedTo: string | null }[]>(
      "GET",
      "/v1/volumes",
    )) {
      process.stdout.write(`${v.name}\t${v.sizeBytes}\t${v.attachedTo ?? ""}\n`);
    }
  });
  volume
    .command("create")
    .argument("<name>")
    .option("--size <bytes>", "size in bytes")
    .action(async (name, opts) => {
      await client.json("POST", "/v1/volumes", {
        body: { name, ...(opts.size !== undefined && { sizeBytes: Number(opts.size) }) },
      });
      process.stdout.write(`${name}\n`);
    });
  volume
    .command("inspect")
    .argument("<name>")
    .action(async (name) => {
      process.stdout.write(
        `${JSON.stringify(await client.json("GET", `/v1/volumes/${encodeURIComponent(name)}`), null, 2)}\n`,
      );
    });
  volume
    .command("rm")
    .argument("<names...>")
    .action(async (names) => {
      for (const n of names) {
        await client.json("DELETE", `/v1/volumes/${encodeURIComponent(n)}`);
        process.stdout.write(`${n}\n`);
      }
    });

  program
    .command("port")
    .argument("<machine>")
    .action(async (ref) => {
      const m = await client.json<Machine>("GET", `/v1/machines/${encodeURIComponent(ref)}`);
      for (const p of m.ports) process.stdout.write(`${p}\n`);
    });

  program.command("df").action(async () => {
    for (const u of await client.json<{ type: string; count: number; bytes: number; reclaimableBytes: number }[]>(
      "GET",
      "/v1/df",
    )) {
      process.stdout.write(`${u.type}\t${u.count}\t${u.bytes}\t${u.reclaimableBytes}\n`);
    }
  });

  program
    .command("top")
    .argument("<machine>")
    .action(async (ref) => {
      const ps = await client.json<{ pid: number; ppid: number; user: string; command: string }[]>(
        "GET",
        `/v1/machines/${encodeURIComponent(ref)}/processes`,
      );
      process.stdout.write(
        `PID\tPPID\tUSER\tCOMMAND\n${ps.map((p) => `${p.pid}\t${p.ppid}\t${p.user}\t${p.command}\n`).join("")}`,
      );
    });

  program
    .command("stats")
    .argument("<machine>")
    .action(async (ref) => {
      const st = await client.json("GET", `/v1/machines/${encodeURIComponent(ref)}/stats`);
      process.stdout.write(`${JSON.stringify(st, null, 2)}\n`);
    });

  program
    .command("restore")
    .argument("<snapshot>")
    .argument("<name>")
    .option("-p, --publish <spec>", "publish a port (repeatable)", collect, [] as string[])
    .action(async (snap, name, opts) => {
      const m = await client.json<Machine>("POST", `/v1/snapshots/${encodeURIComponent(snap)}/restore`, {
        body: { name, ...(opts.publish.length > 0 && { publish: opts.publish }) },
      });
      process.stdout.write(`${m.id}\n`);
    });

  program
    .command("fork")
    .argument("<machine>")
    .argument("<name>")
    .option("--count <n>", "clones", "1")
    .option("-p, --publish <spec>", "publish a port (repeatable; one clone only)", collect, [] as string[])
    .action(async (ref, name, opts) => {
      const clones = await client.json<Machine[]>("POST", `/v1/machines/${encodeURIComponent(ref)}/fork`, {
        body: { name, count: Number(opts.count), ...(opts.publish.length > 0 && { publish: opts.publish }) },
      });
      for (const c of clones) process.stdout.write(`${c.id}\n`);
    });

  const sandbox = program.command("sandbox");
  sandbox
    .command("create")
    .argument("[image]")
    .option("--name <name>")
    .option("--timeout <duration>", "hard lifetime (90s, 10m, 2h)", "10m")
    .option("--idle-timeout <duration>", "end it after this long without an exec session")
    .option("--egress <policy>", "allow | deny | CIDR[:port[/proto]],...")
    .option("--network <mode>", "bridge, user or none")
    .option("--cpus <n>", "virtual CPUs")
    .option("-m, --memory <MiB>", "memory in MiB")
    .option("--allow-tcg", "accept TCG emulation (not a hardware boundary)", false)
    .option("--disk-bps <rate>", "throttle its root disk (bytes/s, e.g. 10M)")
    .option("--disk-iops <n>", "throttle its root disk (operations/s)")
    .option("--net-bps <rate>", "limit its network, each way (bytes/s; bridge)")
    .option("--insecure-registry <host:port>", "plain-HTTP loopback registry", collect, [] as string[])
    .option("--json", "print the sandbox as JSON", false)
    .action(async (image, opts) => {
      const sb = await Sandbox.create({
        client,
        ...(image !== undefined && image !== "mm/busybox" && { image }),
        ...(opts.name !== undefined && { name: opts.name }),
        timeoutMs: parseDuration(opts.timeout),
        ...(opts.idleTimeout !== undefined && { idleTimeoutMs: parseDuration(opts.idleTimeout) }),
        ...(opts.egress !== undefined && { egress: opts.egress }),
        ...(opts.network !== undefined && { network: opts.network as "bridge" | "user" | "none" }),
        ...(opts.cpus !== undefined && { cpus: Number(opts.cpus) }),
        ...(opts.memory !== undefined && { memoryMib: Number(opts.memory) }),
        ...parseLimits(opts),
        ...(opts.insecureRegistry.length > 0 && { insecureRegistries: opts.insecureRegistry }),
        allowTcg: opts.allowTcg,
      });
      process.stdout.write(
        opts.json ? `${JSON.stringify({ id: sb.id, name: sb.name, state: sb.info.state })}\n` : `${sb.id}\n`,
      );
    });
  sandbox.command("ls").action(async () => {
    for (const m of await client.json<Machine[]>("GET", "/v1/sandboxes")) process.stdout.write(row(m));
  });
  sandbox
    .command("rm")
    .argument("<sandboxes...>")
    .action(async (refs) => {
      for (const r of refs) {
        await client.json("DELETE", `/v1/machines/${encodeURIComponent(r)}`, { query: { force: "true" } });
        process.stdout.write(`${r}\n`);
      }
    });

  addHostCommands(program, client, template);

  // As locally: in `run … -- CMD` everything after the first `--` is the command (never the image).
  let args = [...argv];
  const dashes = args.indexOf("--");
  if (args[0] === "run" && dashes >= 0) {
    afterDashes = args.slice(dashes + 1);
    args = args.slice(0, dashes);
  }
  try {
    await program.parseAsync(args, { from: "user" });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.unknownCommand") {
        process.stderr.write(
          "mm: MM_USAGE: this command is not available through --host\n  hint: ssh, system install and serve run on the server itself; see mm --host HOST help\n",
        );
        code = 125;
      } else code = e.exitCode === 0 ? 0 : 125;
    } else code = fail(e);
  } finally {
    await client.close();
  }
  return code;
}
