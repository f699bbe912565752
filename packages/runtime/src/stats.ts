// `mm stats` and `mm top`: what a machine costs, from the host's view (the VMM's CPU
// time and memory from /proc, disk I/O from QMP via the supervisor, network from its
// TAP) and from the guest's (its /proc/meminfo and process list, over the agent channel).

import { readFile } from "node:fs/promises";
import { MmError } from "@mm/core";
import { requestVmStats } from "./control.js";
import { GUEST_BUSYBOX } from "./guest-tools.js";
import { controlSocket } from "./paths.js";
import type { Runtime } from "./runtime.js";
import type { MachineRecord } from "./store.js";

export interface MachineStats {
  readonly id: string;
  readonly name: string;
  /** Of one host CPU, as `docker stats` shows it (a 2-vCPU guest can reach 200). */
  readonly cpuPercent: number;
  readonly memory: {
    /** The VMM's resident and proportional set sizes on the host. */
    readonly hostRssBytes: number;
    readonly hostPssBytes: number;
    /** The guest's own view: MemTotal − MemAvailable, and MemTotal. */
    readonly guestUsedBytes: number | null;
    readonly guestTotalBytes: number | null;
    /** What the balloon leaves the guest (its boot memory unless `mm update --memory`). */
    readonly balloonBytes: number | null;
  };
  readonly disk: { readonly readBytes: number; readonly writtenBytes: number };
  /** The guest's view of its NIC (what its TAP sent is what the guest received). */
  readonly net: { readonly rxBytes: number; readonly txBytes: number } | null;
}

const CLOCK_TICKS = 100; // USER_HZ: /proc/PID/stat counts in 1/100 s on Linux

async function cpuTicks(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces) start after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

async function rollup(pid: number): Promise<{ rss: number; pss: number }> {
  const text = await readFile(`/proc/${pid}/smaps_rollup`, "utf8");
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(text)?.[1] ?? 0) * 1024;
  return { rss: kb("Rss"), pss: kb("Pss") };
}

async function tapCounters(tap: string): Promise<{ rxBytes: number; txBytes: number } | null> {
  const read = (f: string) => readFile(`/sys/class/net/${tap}/statistics/${f}`, "utf8").then(Number);
  try {
    const [hostRx, hostTx] = await Promise.all([read("rx_bytes"), read("tx_bytes")]);
    return { rxBytes: hostTx, txBytes: hostRx };
  } catch {
    return null;
  }
}

/** Runs a command in the guest and collects its output (small outputs: stats, ps). */
export async function execCapture(
  rt: Runtime,
  ref: string,
  args: readonly string[],
): Promise<{ status: number; stdout: string; stderr: string }> {
  const client = await rt.exec(ref);
  let stdout = "";
  let stderr = "";
  client.on("stdout", (d) => {
    stdout += d.toString();
    client.ack(d.length);
  });
  client.on("stderr", (d) => {
    stderr += d.toString();
    client.ack(d.length);
  });
  try {
    const status = await new Promise<number>((resolve, reject) => {
      client.on("exit", (st) => resolve(st.status));
      client.on("guestError", (e) => reject(new MmError("MM_EXEC_SETUP", `${e.code}: ${e.message}`)));
      client.on("lost", (e) => reject(new MmError("MM_MACHINE_NOT_RUNNING", e.message)));
      client.start({ args: [...args], env: [], user: "0:0" });
    });
    return { status, stdout, stderr };
  } finally {
    client.close();
  }
}

async function guestMemory(rt: Runtime, rec: MachineRecord): Promise<{ used: number; total: number } | null> {
  try {
    const r = await execCapture(rt, rec.id, [GUEST_BUSYBOX, "cat", "/proc/meminfo"]);
    const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, "m").exec(r.stdout)?.[1] ?? Number.NaN) * 1024;
    const total = kb("MemTotal");
    const available = kb("MemAvailable");
    return Number.isFinite(total) && Number.isFinite(available) ? { used: total - available, total } : null;
  } catch {
    return null; // the guest did not answer: host figures only
  }
}

/** One sample per running machine, CPU measured over `intervalMs`. */
export async function sampleStats(
  rt: Runtime,
  recs: readonly MachineRecord[],
  intervalMs = 500,
): Promise<MachineStats[]> {
  const running = recs.filter((r) => r.state === "running" && r.vmmPid);
  const t0 = await Promise.all(running.map((r) => cpuTicks(r.vmmPid as number).catch(() => 0)));
  const start = performance.now();
  await new Promise((r) => setTimeout(r, intervalMs));
  return Promise.all(
    running.map(async (r, i) => {
      const pid = r.vmmPid as number;
      const elapsedS = (performance.now() - start) / 1000;
      const ticks = (await cpuTicks(pid).catch(() => t0[i] as number)) - (t0[i] as number);
      const [mem, guest, disks, lease] = await Promise.all([
        rollup(pid).catch(() => ({ rss: 0, pss: 0 })),
        guestMemory(rt, r),
        requestVmStats(controlSocket(rt.paths, r.id)).catch(() => ({ disks: [], balloonBytes: null })),
        Promise.resolve(rt.store.lease(r.id)),
      ]);
      return {
        id: r.id,
        name: r.spec.name,
        cpuPercent: Math.round((ticks / CLOCK_TICKS / elapsedS) * 1000) / 10,
        memory: {
          hostRssBytes: mem.rss,
          hostPssBytes: mem.pss,
          guestUsedBytes: guest?.used ?? null,
          guestTotalBytes: guest?.total ?? null,
          balloonBytes: disks.balloonBytes,
        },
        disk: {
          readBytes: disks.disks.reduce((a, d) => a + d.readBytes, 0),
          writtenBytes: disks.disks.reduce((a, d) => a + d.writtenBytes, 0),
        },
        net: lease ? await tapCounters(lease.tap) : null,
      };
    }),
  );
}

/** `mm top`: the guest's processes, as its (mm's own) busybox ps lists them. */
export async function guestProcesses(rt: Runtime, ref: string): Promise<string> {
  const rec = rt.find(ref);
  if (rec.state !== "running") throw new MmError("MM_MACHINE_NOT_RUNNING", `${rec.spec.name} is ${rec.state}`);
  const r = await execCapture(rt, rec.id, [GUEST_BUSYBOX, "ps", "-o", "pid,ppid,user,stat,vsz,rss,args"]);
  if (r.status !== 0) throw new MmError("MM_EXEC_SETUP", `ps in the guest failed: ${r.stderr.trim()}`);
  // As `docker top`: the machine's processes, not the guest kernel's threads (kthreadd,
  // pid 2, and its children) nor the ps that lists them.
  const [head = "", ...rows] = r.stdout.trimEnd().split("\n");
  const mine = rows.filter((l) => {
    const [pid, ppid] = l.trim().split(/\s+/);
    return pid !== "2" && ppid !== "2" && !l.includes(`${GUEST_BUSYBOX} ps `);
  });
  return `${[head, ...mine].join("\n")}\n`;
}
