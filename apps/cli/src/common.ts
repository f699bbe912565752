// Small helpers the command files share.

import { MmError, parseRate } from "@mm/core";
import type { MachineRecord } from "@mm/runtime";

/** commander's collector for repeatable options. */
export const collect = (v: string, prev: string[]) => [...prev, v];

/** A detached start that ended in `failed` is that failure's error, for the CLI to print. */
export function failedStart(r: MachineRecord): MachineRecord {
  if (r.state === "failed") {
    throw new MmError((r.error?.code as MmError["code"]) ?? "MM_INTERNAL", r.error?.message.replace(/^[^:]*: /, ""));
  }
  return r;
}

/** `--disk-bps`, `--disk-iops`, `--net-bps` (run and sandbox create). */
export function parseLimits(opts: { diskBps?: string; diskIops?: string; netBps?: string }) {
  const iops = opts.diskIops === undefined ? undefined : Number(opts.diskIops);
  if (iops !== undefined && (!Number.isInteger(iops) || iops < 1)) {
    throw new MmError("MM_USAGE", `--disk-iops "${opts.diskIops}": a whole number of operations per second`);
  }
  return {
    ...(opts.diskBps !== undefined && { diskBps: parseRate(opts.diskBps, "--disk-bps") }),
    ...(iops !== undefined && { diskIops: iops }),
    ...(opts.netBps !== undefined && { netBps: parseRate(opts.netBps, "--net-bps") }),
  };
}
