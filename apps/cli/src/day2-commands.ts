// `mm events`, `mm stats` and `mm top`: watching machines on one host.

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, realpathSync, writeFileSync } from "node:fs";
import { homedir, userInfo } from "node:os";
import { join } from "node:path";
import type { Command } from "@commander-js/extra-typings";
import { MmError, parseMemory } from "@mm/core";
import { guestProcesses, isRootless, type MachineStats, type Runtime, sampleStats } from "@mm/runtime";

import { printEvents } from "./events-format.js";

type Table = (head: string[], rows: string[][]) => string;

/**
 * The unit `mm system install` writes: one oneshot that boots the machines due at host
 * start. Without root it is a unit of the user's own systemd instance (started at boot
 * once lingering is enabled for the user).
 */
export function systemdUnit(node: string, cli: string, state: string, cache: string, user = false): string {
  return `[Unit]
Description=MicroMachines: boot the machines whose restart policy says so
${user ? "" : "After=network-online.target\nWants=network-online.target\n"}
[Service]
Type=oneshot
RemainAfterExit=yes
Environment=MM_STATE=${state}
Environment=MM_CACHE=${cache}
ExecStart=${node} ${cli} system start-all

[Install]
WantedBy=${user ? "default.target" : "multi-user.target"}
`;
}

const mib = (b: number | null) => (b === null ? "-" : `${(b / 2 ** 20).toFixed(1)}MiB`);
const bytes = (b: number) =>
  b >= 2 ** 30
    ? `${(b / 2 ** 30).toFixed(2)}GiB`
    : b >= 2 ** 20
      ? `${(b / 2 ** 20).toFixed(1)}MiB`
      : `${(b / 1024).toFixed(1)}KiB`;

function statsRows(list: readonly MachineStats[]): string[][] {
  return list.map((s) => [
    s.id,
    s.name,
    `${s.cpuPercent.toFixed(1)}%`,
    `${mib(s.memory.guestUsedBytes)} / ${mib(s.memory.guestTotalBytes)}`,
    mib(s.memory.hostRssBytes),
    `${bytes(s.disk.readBytes)} / ${bytes(s.disk.writtenBytes)}`,
    s.net ? `${bytes(s.net.rxBytes)} / ${bytes(s.net.txBytes)}` : "-",
  ]);
}

export function addDay2Commands(program: Command, runtime: () => Runtime, table: Table): void {
  program
    .command("events")
    .description(
      "lifecycle events (create, start, ready, stop, exit, fail, destroy, snapshot, restore, fork, restart, oom, timeout, claim)",
    )
    .option("--since <time>", "from this time or this long ago (10m, 2h, RFC 3339)")
    .option("--until <time>", "up to this time, then return (without it: keep following)")
    .option("--machine <name>", "only this machine's events")
    .option("--json", "one JSON object per line", false)
    .action(async (opts) => {
      const rt = runtime();
      try {
        await printEvents((after) => rt.store.events(after), opts);
      } finally {
        rt.close();
      }
    });

  program
    .command("stats")
    .description("CPU, memory (guest and host), disk and network I/O of running machines")
    .argument("[machines...]")
    .option("--no-stream", "print one sample and return")
    .option("--json", "JSON (one array per sample)", false)
    .action(async (refs, opts) => {
      const rt = runtime();
      let stop = false;
      const onInt = () => {
        stop = true;
      };
      process.once("SIGINT", onInt);
      try {
        do {
          const recs = refs.length > 0 ? refs.map((r) => rt.find(r)) : rt.list();
          for (const r of recs) {
            if (refs.length > 0 && r.state !== "running") {
              throw new MmError("MM_MACHINE_NOT_RUNNING", `${r.spec.name} is ${r.state}`);
            }
          }
          const list = await sampleStats(rt, recs, 1000);
          if (opts.json) process.stdout.write(`${JSON.stringify(list)}\n`);
          else {
            if (opts.stream && process.stdout.isTTY) process.stdout.write("\x1b[2J\x1b[H");
            process.stdout.write(
              table(
                [
                  "MACHINE ID",
                  "NAME",
                  "CPU %",
                  "GUEST MEM USED / TOTAL",
                  "VMM RSS",
                  "DISK READ / WRITE",
                  "NET RX / TX",
                ],
                statsRows(list),
              ),
            );
          }
        } while (opts.stream && !stop);
      } finally {
        process.off("SIGINT", onInt);
        rt.close();
      }
    });

  const system = program
    .command("system")
    .description("this host's mm service: machines that come back after a reboot");
  system
    .command("start-all")
    .description("boot the machines whose restart policy says so (run at host start by the unit `install` writes)")
    .action(async () => {
      const rt = runtime();
      try {
        for (const r of await rt.startAll()) process.stdout.write(`${r.spec.name} ${r.state}\n`);
      } finally {
        rt.close();
      }
    });
  system
    .command("install")
    .description("install a systemd unit that runs `mm system start-all` at boot (prints what to do without systemd)")
    .option("--unit-dir <dir>", "where to write mm.service (default: the system's, or the user's without root)")
    .option("--print", "print the unit instead of installing it", false)
    .action(async (opts) => {
      const rt = runtime();
      try {
        const mm = realpathSync(process.argv[1] as string);
        const user = isRootless();
        const unit = systemdUnit(process.execPath, mm, rt.paths.state, rt.paths.cache, user);
        if (opts.print) {
          process.stdout.write(unit);
          return;
        }
        const defaultDir = user
          ? join(process.env.XDG_CONFIG_HOME || join(homedir(), ".config"), "systemd", "user")
          : "/etc/systemd/system";
        const unitDir = opts.unitDir ?? defaultDir;
        const path = join(unitDir, "mm.service");
        mkdirSync(unitDir, { recursive: true });
        writeFileSync(path, unit, { mode: 0o644 });
        process.stdout.write(`wrote ${path}\n`);
        if (existsSync("/run/systemd/system") && unitDir === defaultDir) {
          const ctl = user ? ["--user"] : [];
          execFileSync("systemctl", [...ctl, "daemon-reload"]);
          execFileSync("systemctl", [...ctl, "enable", "mm.service"]);
          process.stdout.write("enabled mm.service: machines with a restart policy come back at boot\n");
          if (user) {
            process.stdout.write(
              `without a login at boot, a user's units start only with lingering: loginctl enable-linger ${userInfo().username}\n`,
            );
          }
        } else {
          process.stdout.write(
            "systemd is not running here: have the host run `mm system start-all` at boot (e.g. from its init scripts)\n",
          );
        }
      } finally {
        rt.close();
      }
    });

  program
    .command("update")
    .description("change a running machine: --memory resizes the guest's memory with its balloon")
    .argument("<machine>")
    .requiredOption("-m, --memory <size>", "the memory the guest keeps (up to what it booted with)")
    .option("--json", "print JSON", false)
    .action(async (ref, opts) => {
      const rt = runtime();
      try {
        const r = await rt.updateMemory(ref, parseMemory(opts.memory));
        process.stdout.write(opts.json ? `${JSON.stringify(r)}\n` : `${ref}\n`);
      } finally {
        rt.close();
      }
    });

  program
    .command("top")
    .description("the processes running in a machine")
    .argument("<machine>")
    .action(async (ref) => {
      const rt = runtime();
      try {
        process.stdout.write(await guestProcesses(rt, ref));
      } finally {
        rt.close();
      }
    });
}
