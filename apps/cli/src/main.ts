#!/usr/bin/env node

// `mm`: the command line. It parses flags, calls the runtime, and renders results;
// it holds no lifecycle logic of its own.

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { fileURLToPath } from "node:url";
import { Command, CommanderError } from "@commander-js/extra-typings";
import {
  DEFAULT_IMAGE,
  isActive,
  isMmError,
  MmError,
  parseCpus,
  parseDiskSize,
  parseMemory,
  parseMount,
  parseRestart,
  validateEnv,
} from "@mm/core";
import {
  checkBinds,
  copyIn,
  copyOut,
  defaultNetworkMode,
  defaultPublicKey,
  doctor,
  failedStart,
  formatPortLine,
  formatPublishedList,
  hostKeyAlias,
  knownHostsPath,
  type MachineRecord,
  machineDir as machineDirOf0,
  parseCopyTarget,
  parseEgress,
  parsePublish,
  type RunOutcome,
  Runtime,
  readPublicKey,
  SSH_PORT,
  type Supervisor,
  sshEndpoint,
  tailLog,
  withSshForward,
} from "@mm/runtime";
import Table from "cli-table3";
import { collect, parseLimits } from "./common.js";
import { addDay2Commands } from "./day2-commands.js";
import { execCommand } from "./exec.js";
import { ago, commandText, statusText } from "./format.js";
import { progressMode, pullRenderer } from "./progress.js";
import { addServeCommands } from "./serve-commands.js";
import { addSnapshotCommands } from "./snapshot-commands.js";

const SELF = fileURLToPath(import.meta.url);

const VERSION = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")).version as string;

function runtime(): Runtime {
  return new Runtime({ supervisorCommand: [process.execPath, SELF, "__supervise"] });
}

function printError(e: unknown, json: boolean): number {
  const err = isMmError(e) ? e : new MmError("MM_INTERNAL", (e as Error)?.stack ?? String(e), { cause: e });
  if (json) process.stderr.write(`${JSON.stringify({ error: err.toJSON() })}\n`);
  else process.stderr.write(`mm: ${err.code}: ${err.message}\n  hint: ${err.hint}\n`);
  return err.exit;
}

function table(head: string[], rows: string[][]): string {
  const t = new Table({
    head,
    chars: {
      top: "",
      "top-mid": "",
      "top-left": "",
      "top-right": "",
      bottom: "",
      "bottom-mid": "",
      "bottom-left": "",
      "bottom-right": "",
      left: "",
      "left-mid": "",
      mid: "",
      "mid-mid": "",
      right: "",
      "right-mid": "",
      middle: "   ",
    },
    style: { head: [], border: [], "padding-left": 0, "padding-right": 0 },
  });
  t.push(...rows);
  return `${t
    .toString()
    .split("\n")
    .map((l) => l.trimEnd())
    .join("\n")}\n`;
}

function writer(stream: NodeJS.WriteStream) {
  return (d: Buffer, drain: () => void) => {
    const ok = stream.write(d);
    if (!ok) stream.once("drain", drain);
    return ok;
  };
}

/** Runs a machine in this process, wiring signals the way `docker run` does. */
async function attach(rt: Runtime, id: string): Promise<RunOutcome> {
  let sup: Supervisor | undefined;
  const onInt = () => sup?.forwardSignal(2);
  const onTerm = () => void sup?.stop(rt.store.get(id).stopTimeoutS ?? 10);
  const onHup = () => sup?.forwardSignal(1);
  process.on("SIGINT", onInt);
  process.on("SIGTERM", onTerm);
  process.on("SIGHUP", onHup);
  try {
    return await rt.runAttached(
      id,
      {
        stdout: writer(process.stdout),
        stderr: writer(process.stderr),
        onWarning: (m) => process.stderr.write(`mm: ${m}\n`),
      },
      (s) => {
        sup = s;
      },
    );
  } finally {
    process.off("SIGINT", onInt);
    process.off("SIGTERM", onTerm);
    process.off("SIGHUP", onHup);
  }
}

export function buildProgram(): Command {
  const program = new Command("mm")
    .description("MicroMachines: containers' UX, virtual machines' isolation")
    .version(VERSION)
    .showSuggestionAfterError(true)
    .enablePositionalOptions()
    // Errors are rendered once, by printError, with their code and hint.
    .configureOutput({ writeErr: () => undefined })
    .exitOverride();

  program
    .command("run")
    .description("create a machine from an image and boot it (default image: the embedded busybox)")
    .argument("[image]", "image to boot (default: the embedded busybox image)")
    .argument("[command...]", "command to run instead of the image's default (or after --)")
    .option("--name <name>", "name of the machine")
    .option("--rm", "remove the machine when it exits", false)
    .option("-d, --detach", "run in the background and print the machine id", false)
    .option("--cpus <n>", "virtual CPUs", "1")
    .option("-m, --memory <size>", "memory (MiB, or with unit: 512M, 1G)", "256")
    .option("-e, --env <KEY=VALUE>", "set an environment variable (repeatable)", collect, [] as string[])
    .option("-w, --workdir <dir>", "working directory inside the guest")
    .option("-u, --user <user>", "user (name or uid[:gid]) to run the command as")
    .option("--disk-size <size>", "size of the machine's root disk (e.g. 2G); grows the image's filesystem")
    .option("--entrypoint <cmd>", 'replace the image\'s entrypoint ("" clears it)')
    .option("--platform <os/arch[/variant]>", "platform to pull (default: this host's)")
    .option("--pull <policy>", "missing | always | never", "missing")
    .option(
      "--insecure-registry <host:port>",
      "allow plain HTTP to this loopback registry (repeatable)",
      collect,
      [] as string[],
    )
    .option("-q, --quiet", "no pull progress", false)
    .option(
      "--network <mode>",
      "bridge (own address, NAT out; root), user (passt; the default without root) or none",
      undefined,
    )
    .option(
      "-p, --publish <[ip:]host:guest[/proto]>",
      "publish a guest port on the host (repeatable)",
      collect,
      [] as string[],
    )
    .option("--network-group <name>", "machines in the same group can reach each other")
    .option("--egress <policy>", "allow | deny | CIDR[:port[/proto]],... the machine may connect to")
    .option("--dns <ip>", "resolver for the guest (repeatable; default: the host's)", collect, [] as string[])
    .option("--ssh", "start an SSH server in the guest for your public key (`mm ssh NAME`)", false)
    .option("--ssh-key <file.pub>", "public key to authorize (default: yours, ~/.ssh/id_*.pub)")
    .option("--ssh-user <user>", "user to log in as", "root")
    .option(
      "-v, --volume <NAME|/host/dir:/path[:ro]>",
      "mount a named volume (`mm volume create`) or share a host directory (repeatable)",
      collect,
      [] as string[],
    )
    .option("--force-mount", "share a host directory even if it is / or holds mm's state", false)
    .option("--restart <policy>", "no | on-failure[:N] | always | unless-stopped (with -d)", "no")
    .option("--cold", "boot the kernel even if the image has a booted template", false)
    .option("--disk-bps <rate>", "throttle the root disk to this many bytes/s (e.g. 10M)")
    .option("--disk-iops <n>", "throttle the root disk to this many operations/s")
    .option("--net-bps <rate>", "limit the network to this many bytes/s each way (bridge)")
    .option("--json", "machine-readable output", false)
    .passThroughOptions()
    .action(async (image, command, opts) => {
      const rt = runtime();
      try {
        const afterDashes = (program as unknown as { _mmAfterDashes?: string[] })._mmAfterDashes;
        const memoryMib = parseMemory(opts.memory);
        const restart = parseRestart(opts.restart);
        const mounts = opts.volume.map(parseMount);
        const volumes = mounts.flatMap((m) =>
          m.kind === "volume" ? [{ name: m.name, path: m.path, readOnly: m.readOnly }] : [],
        );
        const binds = mounts.flatMap((m) =>
          m.kind === "bind" ? [{ source: m.source, path: m.path, readOnly: m.readOnly }] : [],
        );
        await checkBinds(binds, rt.paths, opts.forceMount);
        if (restart.policy !== "no" && (!opts.detach || opts.rm)) {
          throw new MmError(
            "MM_USAGE",
            "--restart needs -d and no --rm: a restarted machine must outlive its workload",
          );
        }
        const cpus = parseCpus(opts.cpus);
        const diskSizeMib = opts.diskSize !== undefined ? parseDiskSize(opts.diskSize) : undefined;
        const pulled =
          image === undefined || image === DEFAULT_IMAGE
            ? undefined
            : await ensureImage(rt, image, { ...opts, pull: pullPolicy(opts.pull) });
        const sshKey =
          opts.ssh || opts.sshKey ? await (opts.sshKey ? readPublicKey(opts.sshKey) : defaultPublicKey()) : undefined;
        const mode = opts.network !== undefined ? networkMode(opts.network) : defaultNetworkMode(rt.env);
        const asked = opts.publish.map(parsePublish);
        const publish = sshKey && mode === "user" ? await withSshForward(asked) : asked;
        const rec = rt.create({
          ...(opts.name !== undefined && { name: opts.name }),
          ...(sshKey && {
            ssh: {
              authorizedKeys: [sshKey.key],
              user: opts.sshUser,
              ...(sshKey.identityFile && { identityFile: sshKey.identityFile }),
            },
          }),
          ...(pulled && { image: pulled }),
          ...(opts.entrypoint !== undefined && { entrypoint: opts.entrypoint === "" ? [] : [opts.entrypoint] }),
          cpus,
          memoryMib,
          command: afterDashes ?? command,
          env: opts.env,
          ...(opts.workdir !== undefined && { workdir: opts.workdir }),
          ...(opts.user !== undefined && { user: opts.user }),
          autoRemove: opts.rm,
          ...(opts.cold && { cold: true }),
          ...(restart.policy !== "no" && { restart }),
          ...(volumes.length > 0 && { volumes }),
          ...(binds.length > 0 && { binds }),
          ...(diskSizeMib !== undefined && { diskSizeMib }),
          limits: parseLimits(opts),
          network: {
            mode,
            publish,
            ...(opts.networkGroup !== undefined && { group: opts.networkGroup }),
            ...(opts.egress !== undefined && { egress: parseEgress(opts.egress) }),
            ...(opts.dns.length > 0 && { dns: opts.dns }),
          },
        });
        if (opts.detach) {
          const r = failedStart(await rt.startDetached(rec.id));
          process.stdout.write(
            opts.json ? `${JSON.stringify(publicRecord(r, rt.store.lease(r.id)?.ip))}\n` : `${r.id}\n`,
          );
          return;
        }
        const outcome = await attach(rt, rec.id);
        if (outcome.error) {
          const code = printError(outcome.error, opts.json);
          process.exitCode = outcome.exitCode ?? code;
        } else {
          process.exitCode = outcome.exitCode ?? 0;
        }
      } finally {
        rt.close();
      }
    });

  program
    .command("ps")
    .description("list machines (running ones; -a for all)")
    .option("-a, --all", "include machines that are not running", false)
    .option("-q, --quiet", "print ids only", false)
    .option("--json", "print JSON", false)
    .action((opts) => {
      const rt = runtime();
      try {
        const all = rt
          .list()
          .filter((r) => opts.all || r.state === "running" || r.state === "starting" || r.state === "stopping");
        if (opts.json)
          process.stdout.write(
            `${JSON.stringify(
              all.map((r) => publicRecord(r, rt.store.lease(r.id)?.ip)),
              null,
              2,
            )}\n`,
          );
        else if (opts.quiet) process.stdout.write(all.map((r) => `${r.id}\n`).join(""));
        else
          process.stdout.write(
            table(
              ["MACHINE ID", "IMAGE", "COMMAND", "STATUS", "PORTS", "ACCEL", "NAME"],
              all.map((r) => [
                r.id,
                imageText(r.spec.image),
                commandText(r),
                statusText(r),
                portsText(r),
                r.accel ?? "",
                r.spec.name,
              ]),
            ),
          );
      } finally {
        rt.close();
      }
    });

  program
    .command("stop")
    .description("stop machines: SIGTERM to the workload, power off after the timeout")
    .argument("<machines...>")
    .option("-t, --time <seconds>", "seconds to wait before powering off", "10")
    .action(async (refs, opts) => {
      const rt = runtime();
      try {
        const t = Number(opts.time);
        if (!Number.isFinite(t) || t < 0)
          throw new MmError("MM_USAGE", `--time "${opts.time}" is not a number of seconds`);
        for (const ref of refs) {
          await rt.stop(ref, t);
          process.stdout.write(`${ref}\n`);
        }
      } finally {
        rt.close();
      }
    });

  program
    .command("start")
    .description("boot stopped machines again, in the background")
    .argument("<machines...>")
    .action(async (refs) => {
      const rt = runtime();
      try {
        for (const ref of refs) {
          const rec = rt.find(ref);
          if (rec.state === "running" || rec.state === "starting") {
            process.stdout.write(`${ref}\n`);
            continue;
          }
          failedStart(await rt.startDetached(rec.id));
          process.stdout.write(`${ref}\n`);
        }
      } finally {
        rt.close();
      }
    });

  program
    .command("rm")
    .description("remove machines and their disks")
    .argument("<machines...>")
    .option("-f, --force", "stop running machines first (kill)", false)
    .action(async (refs, opts) => {
      const rt = runtime();
      try {
        for (const ref of refs) {
          await rt.remove(ref, { force: opts.force });
          process.stdout.write(`${ref}\n`);
        }
      } finally {
        rt.close();
      }
    });

  program
    .command("logs")
    .description("print a machine's output (workload stdout/stderr; --console adds the guest console)")
    .argument("<machine>")
    .option("-f, --follow", "keep printing new output until the machine ends", false)
    .option("--console", "include the guest's serial console", false)
    .action(async (ref, opts) => {
      const rt = runtime();
      try {
        await printLogs(rt, ref, opts.follow, opts.console);
      } finally {
        rt.close();
      }
    });

  program
    .command("exec")
    .description("run a command in a running machine (over the agent channel; no network needed)")
    .argument("<machine>")
    .argument("[command...]", "command and arguments (or after --)")
    .option("-i, --interactive", "send standard input to the command", false)
    .option("-t, --tty", "give the command a terminal", false)
    .option("-e, --env <KEY=VALUE>", "set an environment variable (repeatable)", collect, [] as string[])
    .option("-u, --user <user>", "user (name or uid[:gid])")
    .option("-w, --workdir <dir>", "working directory")
    .passThroughOptions()
    .action(async (machine, command, opts) => {
      const afterDashes = (program as unknown as { _mmAfterDashes?: string[] })._mmAfterDashes;
      const rt = runtime();
      try {
        process.exitCode = await execCommand(rt, machine, afterDashes ?? command, {
          interactive: opts.interactive,
          tty: opts.tty,
          env: validateEnv(opts.env),
          ...(opts.user !== undefined && { user: opts.user }),
          ...(opts.workdir !== undefined && { workdir: opts.workdir }),
        });
      } catch (e) {
        const status = (e as { exitStatus?: number }).exitStatus;
        if (status === undefined) throw e;
        printError(e, false);
        process.exitCode = status;
      } finally {
        rt.close();
      }
    });

  program
    .command("cp")
    .description("copy files or directories between the host and a running machine (NAME:/path on one side)")
    .argument("<src>", "host path or NAME:/path")
    .argument("<dst>", "host path or NAME:/path")
    .action(async (src, dst) => {
      const from = parseCopyTarget(src);
      const to = parseCopyTarget(dst);
      if (Boolean(from.machine) === Boolean(to.machine)) {
        throw new MmError("MM_USAGE", "exactly one side must be NAME:/path", {
          hint: "mm cp ./file web:/tmp/ or mm cp web:/etc/hosts .",
        });
      }
      const rt = runtime();
      try {
        if (to.machine) await copyIn(rt, to.machine, from.path, to.path);
        else await copyOut(rt, from.machine as string, from.path, to.path);
      } finally {
        rt.close();
      }
    });

  program
    .command("ssh")
    .description("log in to a machine started with --ssh, with the real OpenSSH client (host key verified)")
    .argument("<machine>")
    .argument("[command...]", "command to run instead of a login shell (or after --)")
    .option("-i, --identity <file>", "private key (default: the one beside the key given at run, or ssh's own)")
    .passThroughOptions()
    .action(async (machine, command, opts) => {
      const afterDashes = (program as unknown as { _mmAfterDashes?: string[] })._mmAfterDashes;
      const rt = runtime();
      let argv: string[];
      try {
        argv = sshArgv(rt, machine, opts.identity, afterDashes ?? command);
      } finally {
        rt.close();
      }
      process.exitCode = await new Promise<number>((resolve, reject) => {
        const child = spawn("ssh", argv, { stdio: "inherit" });
        child.on("error", (e) => reject(new MmError("MM_TOOL_MISSING", `ssh (openssh-client): ${e.message}`)));
        child.on("close", (code, signal) => resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0)));
      });
    });

  program
    .command("pull")
    .description("pull an image from a registry (verified, content-addressed)")
    .argument("<image>")
    .option("--platform <os/arch[/variant]>", "platform to pull (default: this host's)")
    .option(
      "--insecure-registry <host:port>",
      "allow plain HTTP to this loopback registry (repeatable)",
      collect,
      [] as string[],
    )
    .option("-q, --quiet", "no progress", false)
    .option("--json", "progress and result as JSON lines", false)
    .action(async (image, opts) => {
      const rt = runtime();
      try {
        const img = await ensureImage(rt, image, { ...opts, pull: "always" });
        process.stdout.write(
          opts.json
            ? `${JSON.stringify({ reference: img.reference, digest: img.digest })}\n`
            : `${img.reference}@${img.digest}\n`,
        );
      } finally {
        rt.close();
      }
    });

  program
    .command("images")
    .description("list images on this host")
    .option("-q, --quiet", "print references only", false)
    .option("--json", "print JSON", false)
    .action(listImages);

  program
    .command("rmi")
    .description("remove image references (blobs go with `mm image prune`)")
    .argument("<images...>")
    .option("-f, --force", "remove even if machines use the image", false)
    .action(async (refs, opts) => {
      const rt = runtime();
      try {
        for (const ref of refs) {
          const r = await rt.removeImage(ref, opts.force);
          process.stdout.write(`Untagged: ${r.reference}\n`);
        }
      } finally {
        rt.close();
      }
    });

  const imageCmd = program.command("image").description("manage images");
  imageCmd
    .command("prune")
    .description("delete blobs and root filesystems that no image or machine needs")
    .option("--json", "print JSON", false)
    .action(async (opts) => {
      const rt = runtime();
      try {
        const r = await rt.pruneImages();
        process.stdout.write(
          opts.json
            ? `${JSON.stringify(r)}\n`
            : `Removed ${r.removed} items, freed ${(r.freedBytes / 2 ** 20).toFixed(1)} MiB\n`,
        );
      } finally {
        rt.close();
      }
    });
  imageCmd
    .command("import")
    .description("import an OCI layout directory or a `docker save` tarball")
    .argument("<path>")
    .argument("[reference]", "name to give the image (required if the archive names none)")
    .action(async (path, reference) => {
      const rt = runtime();
      try {
        for (const img of await rt.images.import(path, reference))
          process.stdout.write(`${img.reference}@${img.digest}\n`);
      } finally {
        rt.close();
      }
    });
  imageCmd
    .command("ls")
    .description("list images (same as `mm images`)")
    .option("-q, --quiet", "print references only", false)
    .option("--json", "print JSON", false)
    .action(listImages);

  program
    .command("login")
    .description("log in to a registry (credentials are checked, then kept in $MM_STATE/auth.json, mode 0600)")
    .argument("<registry>")
    .requiredOption("-u, --username <user>", "user name")
    .option("--password-stdin", "read the password from standard input", false)
    .option(
      "--insecure-registry <host:port>",
      "allow plain HTTP to this loopback registry (repeatable)",
      collect,
      [] as string[],
    )
    .action(async (registry, opts) => {
      if (!opts.passwordStdin)
        throw new MmError("MM_USAGE", "pass the password on standard input with --password-stdin");
      const chunks: Buffer[] = [];
      for await (const c of process.stdin) chunks.push(c as Buffer);
      const password = Buffer.concat(chunks)
        .toString("utf8")
        .replace(/\r?\n$/, "");
      const rt = runtime();
      try {
        await rt.images.login(registry, opts.username, password, { insecureRegistries: opts.insecureRegistry });
        process.stdout.write("Login Succeeded\n");
      } finally {
        rt.close();
      }
    });

  program
    .command("logout")
    .description("forget the credentials kept for a registry")
    .argument("<registry>")
    .action(async (registry) => {
      const rt = runtime();
      try {
        const had = await rt.images.logout(registry);
        process.stdout.write(had ? `Removed login credentials for ${registry}\n` : `Not logged in to ${registry}\n`);
      } finally {
        rt.close();
      }
    });

  program
    .command("port")
    .description("list a machine's published ports")
    .argument("<machine>")
    .action((ref) => {
      const rt = runtime();
      try {
        const r = rt.find(ref);
        for (const p of r.spec.network?.publish ?? []) process.stdout.write(`${formatPortLine(p)}\n`);
      } finally {
        rt.close();
      }
    });

  program
    .command("wait")
    .description("wait until machines stop, then print their exit codes")
    .argument("<machines...>")
    .action(async (refs) => {
      const rt = runtime();
      try {
        for (const ref of refs) {
          const rec = await rt.waitFor(rt.find(ref).id, (r) => !isActive(r.state), 24 * 3600 * 1000);
          process.stdout.write(`${rec.exitCode ?? -1}\n`);
        }
      } finally {
        rt.close();
      }
    });

  program
    .command("inspect")
    .description("print a machine's full record as JSON")
    .argument("<machines...>")
    .action((refs) => {
      const rt = runtime();
      try {
        process.stdout.write(
          `${JSON.stringify(
            refs.map((ref) => {
              const r = rt.find(ref);
              return publicRecord(r, rt.store.lease(r.id)?.ip);
            }),
            null,
            2,
          )}\n`,
        );
      } finally {
        rt.close();
      }
    });

  program
    .command("doctor")
    .description("check this host: KVM, QEMU, tools, guest kernel and init, network leftovers")
    .option("--json", "print JSON", false)
    .option("--fix", "remove leftovers (TAPs without a running machine) and rebuild the firewall", false)
    .action(async (opts) => {
      const rt = runtime();
      try {
        const checks = await doctor(rt, { fix: opts.fix });
        if (opts.json) process.stdout.write(`${JSON.stringify(checks, null, 2)}\n`);
        else
          for (const c of checks) {
            process.stdout.write(
              `${c.ok ? "ok  " : "FAIL"}  ${c.name}: ${c.detail}\n${c.hint ? `      fix: ${c.hint}\n` : ""}`,
            );
          }
        if (checks.some((c) => !c.ok)) process.exitCode = 1;
      } finally {
        rt.close();
      }
    });

  addSnapshotCommands(program, runtime, table, ensureImage);
  addDay2Commands(program, runtime, table);
  addServeCommands(program, runtime, VERSION, [process.execPath, SELF, "__supervise"], (rt, image, insecure) =>
    image === undefined || image === DEFAULT_IMAGE
      ? Promise.resolve(undefined)
      : ensureImage(rt, image, { insecureRegistry: insecure, pull: "missing" }),
  );

  program
    .command("__supervise", { hidden: true })
    .argument("<id>")
    .action(async (id) => {
      const rt = runtime();
      let sup: Supervisor | undefined;
      process.on("SIGTERM", () => void sup?.stop(rt.store.get(id).stopTimeoutS ?? 10));
      process.on("SIGINT", () => undefined);
      process.on("SIGHUP", () => undefined);
      try {
        const outcome = await rt.superviseLoop(id, { onWarning: (m) => process.stderr.write(`${m}\n`) }, (s) => {
          sup = s;
        });
        if (outcome.error) process.stderr.write(`${outcome.error.code}: ${outcome.error.message}\n`);
      } finally {
        rt.close();
      }
    });

  return program;
}

const machineDirOf = (rt: Runtime, id: string) => machineDirOf0(rt.paths, id);

async function listImages(opts: { quiet: boolean; json: boolean }): Promise<void> {
  const rt = runtime();
  try {
    const list = await rt.images.list();
    if (opts.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
    else if (opts.quiet) process.stdout.write(list.map((i) => `${i.reference}\n`).join(""));
    else
      process.stdout.write(
        table(
          ["REFERENCE", "DIGEST", "PLATFORM", "SIZE", "PULLED"],
          list.map((i) => [
            i.reference,
            i.digest.slice(0, 19),
            i.platform,
            `${(i.sizeBytes / 2 ** 20).toFixed(1)} MiB`,
            ago(i.pulledAt),
          ]),
        ),
      );
  } finally {
    rt.close();
  }
}

function pullPolicy(p: string): "missing" | "always" | "never" {
  if (p === "missing" || p === "always" || p === "never") return p;
  throw new MmError("MM_USAGE", `--pull "${p}": use missing, always or never`);
}

/** Resolves an image for `run`/`pull`, rendering progress as the output allows. */
async function ensureImage(
  rt: Runtime,
  image: string,
  opts: {
    platform?: string;
    insecureRegistry: string[];
    quiet?: boolean;
    json?: boolean;
    pull: "missing" | "always" | "never";
  },
) {
  const renderer = pullRenderer(progressMode(opts, process.stderr), process.stderr);
  try {
    return await rt.images.ensure(image, {
      pull: opts.pull,
      insecureRegistries: opts.insecureRegistry,
      onEvent: renderer.onEvent,
      ...(opts.platform !== undefined && { platform: opts.platform }),
    });
  } finally {
    renderer.end();
  }
}

/** The OpenSSH command line for `mm ssh`: the machine's own known_hosts, no prompt, no TOFU. */
function sshArgv(rt: Runtime, ref: string, identity: string | undefined, command: readonly string[]): string[] {
  const r = rt.find(ref);
  if (r.state !== "running") throw new MmError("MM_MACHINE_NOT_RUNNING", `${r.spec.name} is ${r.state}`);
  if (!r.spec.ssh)
    throw new MmError("MM_USAGE", `${r.spec.name} was not started with --ssh`, { hint: "mm run --ssh …" });
  const endpoint = sshEndpoint(r, rt.store.lease(r.id)?.ip);
  if (!endpoint) throw new MmError("MM_USAGE", `${r.spec.name} has no network address`);
  const key = identity ?? r.spec.ssh.identityFile;
  return [
    "-o",
    `UserKnownHostsFile=${knownHostsPath(machineDirOf(rt, r.id))}`,
    "-o",
    "GlobalKnownHostsFile=/dev/null",
    "-o",
    `HostKeyAlias=${hostKeyAlias(r.id)}`,
    "-o",
    "StrictHostKeyChecking=yes",
    "-o",
    "LogLevel=ERROR",
    ...(key ? ["-i", key, "-o", "IdentitiesOnly=yes"] : []),
    ...(endpoint.port !== SSH_PORT ? ["-p", String(endpoint.port)] : []),
    `${r.spec.ssh.user}@${endpoint.host}`,
    ...command,
  ];
}

function networkMode(m: string): "bridge" | "user" | "none" {
  if (m === "bridge" || m === "user" || m === "none") return m;
  throw new MmError("MM_USAGE", `--network "${m}": use bridge, user or none`);
}

/** Published ports first (Docker's 0.0.0.0:8080->80/tcp), then ports the image only exposes. */
function portsText(r: MachineRecord): string {
  const published = r.spec.network?.publish ?? [];
  const exposedOnly = r.spec.imageConfig.exposedPorts.filter(
    (e) => !published.some((p) => `${p.guestPort}/${p.proto}` === e),
  );
  return [formatPublishedList(published), ...exposedOnly].filter(Boolean).join(", ");
}

function imageText(image: string): string {
  return image.replace(/^docker\.io\/(library\/)?/, "");
}

function publicRecord(r: MachineRecord, ip?: string) {
  return {
    id: r.id,
    name: r.spec.name,
    image: r.spec.image,
    state: r.state,
    ip: ip ?? null,
    accel: r.accel,
    boot: r.bootMode,
    shares: r.shares,
    // The VMM's jail as its last boot set it up (null: not jailed — rootless, or MM_JAIL=0).
    jail: r.jail,
    memoryTargetMib: r.memoryTargetMib,
    exitCode: r.exitCode,
    error: r.error,
    spec: r.spec,
    pids: { supervisor: r.supervisorPid, vmm: r.vmmPid },
    createdAt: r.createdAt,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
  };
}

async function printLogs(rt: Runtime, ref: string, follow: boolean, withConsole: boolean): Promise<void> {
  for await (const entries of tailLog(rt.logPath(ref), follow, () => isActive(rt.find(ref).state))) {
    for (const e of entries) {
      if (e.stream === "console" && !withConsole) continue;
      (e.stream === "stderr" ? process.stderr : process.stdout).write(e.data);
    }
  }
}

export async function main(argv: string[]): Promise<number> {
  let args = argv.slice(2);
  // `mm --host URL …` or MM_HOST: the commands go to `mm serve` there (remote.ts), except
  // the server's own (`serve`, and the supervisors it starts).
  let host = process.env.MM_HOST;
  if (args[0] === "--host" || args[0] === "-H") {
    host = args[1];
    args = args.slice(2);
  } else if (args[0]?.startsWith("--host=")) {
    host = args[0].slice("--host=".length);
    args = args.slice(1);
  }
  if (host && args[0] !== "serve" && args[0] !== "__supervise") {
    const remote = (await import(new URL("./remote-cli.js", import.meta.url).href)) as typeof import("./remote.js");
    return remote.runRemote(host, args);
  }
  const program = buildProgram();
  // `mm run [IMAGE] -- CMD...`: everything after the first `--` is the workload's argv.
  const dashes = args.indexOf("--");
  if ((args[0] === "run" || args[0] === "exec" || args[0] === "ssh") && dashes >= 0) {
    (program as unknown as { _mmAfterDashes?: string[] })._mmAfterDashes = args.slice(dashes + 1);
    args.splice(dashes);
  }
  const json = args.includes("--json");
  try {
    await program.parseAsync(args, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.code === "commander.help")
        return 0;
      return printError(new MmError("MM_USAGE", e.message.replace(/^error: /, "")), json);
    }
    return printError(e, json);
  }
}

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.exitCode = printError(e, false);
  },
);
