// `mm snapshot`, `mm restore`, `mm fork`, `mm template` and `mm df`: thin renderings of
// the runtime's snapshot operations (packages/runtime/src/snapshots.ts).

import { join } from "node:path";
import type { Command } from "@commander-js/extra-typings";
import { DEFAULT_IMAGE, MmError, parseCpus, parseDiskSize, parseMemory } from "@mm/core";
import {
  allocatedBytes,
  type CloneOptions,
  diskUsage,
  failedStart,
  parsePublish,
  type Runtime,
  type Snapshot,
  snapshotsDir,
} from "@mm/runtime";
import { collect } from "./common.js";
import { ago } from "./format.js";

type Table = (head: string[], rows: string[][]) => string;

const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;

function snapshotJson(s: Snapshot) {
  return {
    id: s.id,
    kind: s.kind,
    machine: s.machine,
    tag: s.tag,
    image: s.spec.image,
    memory: s.memory,
    agent: s.agent,
    createdAt: s.createdAt,
    parent: s.parent,
    compat: s.compat,
    files: { layer: s.disk.layer, ram: s.ram, state: s.state, chain: s.disk.chain },
  };
}

/** Resolves (pulling if needed) an image for `mm template create`, as `mm run` does. */
type ResolveImage = (
  rt: Runtime,
  image: string,
  opts: { insecureRegistry: string[]; platform?: string; pull: "missing" },
) => ReturnType<Runtime["images"]["ensure"]>;

/** `-p` of restore and fork; warnings (ports left out) on stderr. */
function cloneOptions(publish: readonly string[]): CloneOptions {
  return {
    ...(publish.length > 0 && { publish: publish.map(parsePublish) }),
    onWarning: (m) => process.stderr.write(`mm: warning: ${m}\n`),
  };
}

export function addSnapshotCommands(
  program: Command,
  runtime: () => Runtime,
  table: Table,
  resolveImage: ResolveImage,
): void {
  const withRuntime =
    <A extends unknown[]>(fn: (rt: Runtime, ...a: A) => Promise<void> | void) =>
    async (...a: A) => {
      const rt = runtime();
      try {
        await fn(rt, ...a);
      } finally {
        rt.close();
      }
    };

  const snap = program.command("snapshot").description("capture machines: running ones live, stopped ones' disks");
  snap
    .command("create")
    .description("snapshot a machine (a running one keeps running; its pause is only the copy)")
    .argument("<machine>")
    .option("--tag <tag>", "a label for the snapshot (restore it as MACHINE:TAG)")
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, machine, opts) => {
        const s = await rt.snapshot(machine, { ...(opts.tag !== undefined && { tag: opts.tag }) });
        process.stdout.write(
          opts.json ? `${JSON.stringify({ ...snapshotJson(s), pausedMs: s.pausedMs })}\n` : `${s.id}\n`,
        );
      }),
    );
  snap
    .command("ls")
    .description("list snapshots (of one machine if named)")
    .argument("[machine]")
    .option("-a, --all", "include templates and fork captures", false)
    .option("-q, --quiet", "print ids only", false)
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, machine, opts) => {
        const list = rt.snapshots({ ...(machine !== undefined && { machine }), all: opts.all });
        if (opts.json) process.stdout.write(`${JSON.stringify(list.map(snapshotJson), null, 2)}\n`);
        else if (opts.quiet) process.stdout.write(list.map((s) => `${s.id}\n`).join(""));
        else {
          const rows: string[][] = [];
          for (const s of list) {
            const size = (await allocatedBytes(join(snapshotsDir(rt.paths), s.id))) + s.disk.layer.bytes;
            rows.push([
              s.id.slice(0, 12),
              s.kind,
              s.machine,
              s.tag,
              s.memory === null ? "disk" : "live",
              mib(size),
              ago(s.createdAt),
            ]);
          }
          process.stdout.write(table(["SNAPSHOT ID", "KIND", "MACHINE", "TAG", "TYPE", "SIZE", "CREATED"], rows));
        }
      }),
    );
  snap
    .command("rm")
    .description("remove snapshots (refused while machines or snapshots made from them exist)")
    .argument("<snapshots...>")
    .action(
      withRuntime(async (rt, refs) => {
        for (const ref of refs) process.stdout.write(`${(await rt.removeSnapshot(ref)).id}\n`);
      }),
    );
  snap
    .command("gc")
    .description("keep a machine's newest N snapshots, remove the older ones")
    .argument("<machine>")
    .requiredOption("--keep <n>", "how many of the newest snapshots to keep")
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, machine, opts) => {
        const keep = Number(opts.keep);
        if (!Number.isInteger(keep) || keep < 0) throw new MmError("MM_USAGE", `--keep "${opts.keep}" is not a count`);
        const r = await rt.gcSnapshots(machine, keep);
        if (opts.json) {
          process.stdout.write(
            `${JSON.stringify({ removed: r.removed.map((s) => s.id), kept: r.kept.map((s) => s.id) })}\n`,
          );
        } else {
          for (const s of r.removed) process.stdout.write(`removed ${s.id.slice(0, 12)} (${s.tag})\n`);
          for (const s of r.kept.filter((k) => !r.removed.includes(k)).slice(keep)) {
            process.stdout.write(`kept ${s.id.slice(0, 12)} (${s.tag}): machines or snapshots are made from it\n`);
          }
        }
      }),
    );

  program
    .command("restore")
    .description("start a new machine from a snapshot; it resumes where the snapshot was, with its own identity")
    .argument("<snapshot>", "snapshot id (or prefix), or MACHINE:TAG")
    .argument("<name>", "name of the new machine")
    .option(
      "-p, --publish <spec>",
      "publish a port (repeatable); without it, the snapshot's ports that no other machine holds",
      collect,
      [] as string[],
    )
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, ref, name, opts) => {
        const r = failedStart(await rt.restore(ref, name, cloneOptions(opts.publish)));
        const ip = rt.store.lease(r.id)?.ip ?? null;
        process.stdout.write(opts.json ? `${JSON.stringify({ id: r.id, name: r.spec.name, ip })}\n` : `${r.id}\n`);
      }),
    );

  program
    .command("fork")
    .description("clone a running machine into live copies (memory shared copy-on-write); it keeps running")
    .argument("<machine>")
    .argument("<name>", "name of the clone (NAME-1..NAME-K with --count)")
    .option("--count <k>", "how many clones", "1")
    .option(
      "-p, --publish <spec>",
      "publish a port (repeatable; one clone only): clones publish none by default",
      collect,
      [] as string[],
    )
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, machine, name, opts) => {
        const count = Number(opts.count);
        const clones = await rt.fork(machine, name, count, cloneOptions(opts.publish));
        for (const c of clones) failedStart(c);
        if (opts.json) {
          const rows = clones.map((c) => ({ id: c.id, name: c.spec.name, ip: rt.store.lease(c.id)?.ip ?? null }));
          process.stdout.write(`${JSON.stringify(rows)}\n`);
        } else {
          process.stdout.write(clones.map((c) => `${c.id}\n`).join(""));
        }
      }),
    );

  const tmpl = program
    .command("template")
    .description("booted images that `mm run` starts from instead of a cold boot");
  tmpl
    .command("create")
    .description("boot an image once and keep it as a template (what an image's first `mm run` does)")
    .argument("[image]", "image (default: the embedded busybox image)")
    .option("--cpus <n>", "virtual CPUs of the machines it serves", "1")
    .option("-m, --memory <size>", "memory of the machines it serves", "256")
    .option("--network <mode>", "bridge, user or none: the machines it serves have a NIC or not")
    .option("--disk-size <size>", "root disk size of the machines it serves")
    .option("--platform <os/arch[/variant]>", "platform to pull")
    .option("--insecure-registry <host:port>", "allow plain HTTP to this loopback registry", collect, [] as string[])
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, image, opts) => {
        const pulled =
          image === undefined || image === DEFAULT_IMAGE
            ? undefined
            : await resolveImage(rt, image, {
                insecureRegistry: opts.insecureRegistry,
                pull: "missing",
                ...(opts.platform !== undefined && { platform: opts.platform }),
              });
        if (opts.network !== undefined && !["bridge", "user", "none"].includes(opts.network)) {
          throw new MmError("MM_USAGE", `--network "${opts.network}": use bridge, user or none`);
        }
        const { template: t, existed } = await rt.createTemplate(
          {
            ...(pulled && { image: pulled }),
            cpus: parseCpus(opts.cpus),
            memoryMib: parseMemory(opts.memory),
            ...(opts.diskSize !== undefined && { diskSizeMib: parseDiskSize(opts.diskSize) }),
            ...(opts.network !== undefined && { network: { mode: opts.network as "bridge" | "user" | "none" } }),
          },
          { onWarning: (m) => process.stderr.write(`mm: ${m}\n`) },
        );
        process.stdout.write(opts.json ? `${JSON.stringify({ ...snapshotJson(t), existed })}\n` : `${t.id}\n`);
      }),
    );
  tmpl
    .command("ls")
    .description("list templates")
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, opts) => {
        const list = rt.templates();
        if (opts.json) {
          process.stdout.write(`${JSON.stringify(list.map(snapshotJson), null, 2)}\n`);
          return;
        }
        const rows: string[][] = [];
        for (const t of list) {
          const size = (await allocatedBytes(join(snapshotsDir(rt.paths), t.id))) + t.disk.layer.bytes;
          const shape = `${t.compat?.cpus ?? "?"} cpu, ${t.compat?.memoryMib ?? "?"} MiB, ${t.compat?.nic ? "bridge" : "no network"}`;
          rows.push([t.id.slice(0, 12), t.spec.image, shape, t.compat?.accel ?? "", mib(size), ago(t.createdAt)]);
        }
        process.stdout.write(table(["TEMPLATE ID", "IMAGE", "SHAPE", "ACCEL", "SIZE", "CREATED"], rows));
      }),
    );
  tmpl
    .command("rm")
    .description("remove templates (the next `mm run` of the image boots cold and makes a new one)")
    .argument("<templates...>")
    .action(
      withRuntime(async (rt, refs) => {
        for (const ref of refs) {
          const t = rt.findSnapshot(ref);
          if (t.kind !== "template") throw new MmError("MM_NO_SUCH_SNAPSHOT", `${ref} is not a template`);
          process.stdout.write(`${(await rt.removeSnapshot(t.id)).id}\n`);
        }
      }),
    );

  const vol = program
    .command("volume")
    .description("named volumes: persistent disks that outlive machines (-v NAME:/path)");
  vol
    .command("create")
    .description("create a volume (an ext4 disk, sparse: it takes the space its data takes)")
    .argument("<name>")
    .option("--size <size>", "capacity (e.g. 512M, 10G)", "1G")
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, name, opts) => {
        const v = await rt.createVolume(name, parseDiskSize(opts.size) * 2 ** 20);
        process.stdout.write(opts.json ? `${JSON.stringify(v)}\n` : `${v.name}\n`);
      }),
    );
  vol
    .command("ls")
    .description("list volumes and the machines that name them")
    .option("-q, --quiet", "print names only", false)
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, opts) => {
        const list = rt.volumes();
        if (opts.json) process.stdout.write(`${JSON.stringify(list, null, 2)}\n`);
        else if (opts.quiet) process.stdout.write(list.map((v) => `${v.name}\n`).join(""));
        else {
          const rows: string[][] = [];
          for (const v of list) {
            rows.push([
              v.name,
              mib(v.sizeBytes),
              mib(await allocatedBytes(v.path)),
              v.attachedTo ?? "",
              v.usedBy.join(", "),
            ]);
          }
          process.stdout.write(table(["VOLUME", "SIZE", "USED ON DISK", "ATTACHED TO", "NAMED BY"], rows));
        }
      }),
    );
  vol
    .command("inspect")
    .description("a volume's record as JSON")
    .argument("<names...>")
    .action(
      withRuntime(async (rt, names) => {
        process.stdout.write(
          `${JSON.stringify(
            names.map((n) => rt.volume(n)),
            null,
            2,
          )}\n`,
        );
      }),
    );
  vol
    .command("rm")
    .description("remove volumes and their data (refused while a machine names them)")
    .argument("<names...>")
    .action(
      withRuntime(async (rt, names) => {
        for (const n of names) process.stdout.write(`${(await rt.removeVolume(n)).name}\n`);
      }),
    );

  program
    .command("df")
    .description("disk and memory used by images, templates, snapshots, machines, and what GC would free")
    .option("--json", "print JSON", false)
    .action(
      withRuntime(async (rt, opts) => {
        const usage = await diskUsage(rt);
        if (opts.json) process.stdout.write(`${JSON.stringify(usage, null, 2)}\n`);
        else
          process.stdout.write(
            table(
              ["TYPE", "COUNT", "SIZE", "RECLAIMABLE"],
              usage.map((u) => [u.type, String(u.count), mib(u.bytes), mib(u.reclaimableBytes)]),
            ),
          );
      }),
    );
}
