// The host's commands through `mm serve` (`mm --host …`): images (rmi, image ls|prune|
// import), templates, registry logins, doctor, system start-all, and the machine-level
// `wait` and `events` that poll the server.

import { createReadStream, statSync } from "node:fs";
import type { Command } from "@commander-js/extra-typings";
import { type Machine, MmApiError, type MmClient } from "@micromachines/sdk";
import { collect } from "./common.js";
import { type EventRow, printEvents } from "./events-format.js";

const enc = encodeURIComponent;

interface Check {
  name: string;
  ok: boolean;
  detail: string;
  hint?: string;
}

/** Adds the host's commands to `program`; `template create` goes under the given `template`. */
export function addHostCommands(program: Command, client: MmClient, template: Command): void {
  const listImages = async (opts: { quiet?: boolean; json?: boolean }) => {
    const images = await client.json<{ reference: string; digest: string; sizeBytes: number }[]>("GET", "/v1/images");
    if (opts.json) process.stdout.write(`${JSON.stringify(images, null, 2)}\n`);
    else
      for (const i of images) {
        process.stdout.write(
          opts.quiet ? `${i.reference}\n` : `${i.reference}\t${i.digest.slice(7, 19)}\t${i.sizeBytes}\n`,
        );
      }
  };

  program
    .command("rmi")
    .argument("<images...>")
    .option("-f, --force", "remove even if machines use the image", false)
    .action(async (refs, opts) => {
      for (const r of refs) {
        const out = await client.json<{ reference: string }>("DELETE", `/v1/images/${enc(r)}`, {
          query: { force: String(opts.force) },
        });
        process.stdout.write(`Untagged: ${out.reference}\n`);
      }
    });

  const image = program.command("image");
  for (const list of [program.command("images"), image.command("ls")]) {
    list.option("-q, --quiet", "references only", false).option("--json", "JSON", false).action(listImages);
  }
  image
    .command("prune")
    .option("--json", "JSON", false)
    .action(async (opts) => {
      const r = await client.json<{ removed: number; freedBytes: number }>("POST", "/v1/images/prune");
      process.stdout.write(
        opts.json
          ? `${JSON.stringify(r)}\n`
          : `Removed ${r.removed} items, freed ${(r.freedBytes / 2 ** 20).toFixed(1)} MiB\n`,
      );
    });
  image
    .command("import")
    .argument("<archive>", "a `docker save` tarball (sent to the server)")
    .argument("[reference]")
    .action(async (path, reference) => {
      if (statSync(path).isDirectory()) {
        throw new MmApiError(
          "MM_USAGE",
          `${path} is a directory`,
          "over --host, send an archive: docker save, or run mm image import on the server",
          400,
        );
      }
      const images = await client.json<{ reference: string; digest: string }[]>("POST", "/v1/images/import", {
        raw: createReadStream(path),
        ...(reference !== undefined && { query: { reference } }),
      });
      for (const i of images) process.stdout.write(`${i.reference}@${i.digest}\n`);
    });

  template
    .command("create")
    .argument("[image]")
    .option("--cpus <n>", "virtual CPUs of the machines it serves", "1")
    .option("-m, --memory <MiB>", "memory of the machines it serves, MiB", "256")
    .option("--network <mode>", "bridge, user or none")
    .option("--disk-size <MiB>", "root disk size of the machines it serves, MiB")
    .option("--insecure-registry <host:port>", "plain-HTTP loopback registry", collect, [] as string[])
    .option("--json", "JSON", false)
    .action(async (img, opts) => {
      const r = await client.json<{ template: { id: string }; existed: boolean }>("POST", "/v1/templates", {
        body: {
          ...(img !== undefined && img !== "mm/busybox" && { image: img }),
          cpus: Number(opts.cpus),
          memoryMib: Number(opts.memory),
          ...(opts.network !== undefined && { network: opts.network }),
          ...(opts.diskSize !== undefined && { diskSizeMib: Number(opts.diskSize) }),
          ...(opts.insecureRegistry.length > 0 && { insecureRegistries: opts.insecureRegistry }),
        },
      });
      process.stdout.write(
        opts.json ? `${JSON.stringify({ ...r.template, existed: r.existed })}\n` : `${r.template.id}\n`,
      );
    });

  program
    .command("login")
    .argument("<registry>")
    .requiredOption("-u, --username <user>")
    .option("--password-stdin", "read the password from standard input", false)
    .option("--insecure-registry <host:port>", "plain-HTTP loopback registry", collect, [] as string[])
    .action(async (registry, opts) => {
      if (!opts.passwordStdin) {
        throw new MmApiError("MM_USAGE", "pass the password on standard input", "add --password-stdin", 400);
      }
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      const password = Buffer.concat(chunks)
        .toString("utf8")
        .replace(/\r?\n$/, "");
      await client.json("POST", "/v1/logins", {
        body: {
          registry,
          username: opts.username,
          password,
          ...(opts.insecureRegistry.length > 0 && { insecureRegistries: opts.insecureRegistry }),
        },
      });
      process.stdout.write("Login Succeeded\n");
    });
  program
    .command("logout")
    .argument("<registry>")
    .action(async (registry) => {
      const r = await client.json<{ removed: boolean }>("DELETE", `/v1/logins/${enc(registry)}`);
      process.stdout.write(
        r.removed ? `Removed login credentials for ${registry}\n` : `Not logged in to ${registry}\n`,
      );
    });

  program
    .command("doctor")
    .option("--json", "JSON", false)
    .option("--fix", "remove leftovers and rebuild the firewall, on the server", false)
    .action(async (opts) => {
      const checks = opts.fix
        ? await client.json<Check[]>("POST", "/v1/system/doctor/fix")
        : await client.json<Check[]>("GET", "/v1/system/doctor");
      if (opts.json) process.stdout.write(`${JSON.stringify(checks, null, 2)}\n`);
      else
        for (const c of checks) {
          process.stdout.write(
            `${c.ok ? "ok  " : "FAIL"}  ${c.name}: ${c.detail}\n${c.hint ? `      fix: ${c.hint}\n` : ""}`,
          );
        }
      if (checks.some((c) => !c.ok)) process.exitCode = 1;
    });

  program
    .command("system")
    .command("start-all")
    .action(async () => {
      for (const m of await client.json<Machine[]>("POST", "/v1/system/start-all")) {
        process.stdout.write(`${m.name} ${m.state}\n`);
      }
    });

  program
    .command("wait")
    .argument("<machines...>")
    .action(async (refs) => {
      for (const r of refs) {
        const m = await client.json<Machine>("GET", `/v1/machines/${enc(r)}/wait`);
        process.stdout.write(`${m.exitCode ?? -1}\n`);
      }
    });

  program
    .command("events")
    .option("--since <time>", "from this time or this long ago (10m, 2h, RFC 3339)")
    .option("--until <time>", "up to this time, then return (without it: keep following)")
    .option("--machine <name>", "only this machine's events")
    .option("--json", "one JSON object per line", false)
    .action((opts) =>
      printEvents((after) => client.json<EventRow[]>("GET", "/v1/events", { query: { after: String(after) } }), opts),
    );
}
