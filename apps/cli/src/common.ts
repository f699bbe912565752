// Small helpers the command files share.

import { MmError, parseRate } from "@mm/core";

/** commander's collector for repeatable options. */
export const collect = (v: string, prev: string[]) => [...prev, v];

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

/** Parses a duration: 90s, 10m, 2h, or milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new MmError("MM_USAGE", `duration "${text}": use e.g. 90s, 10m, 2h`);
  const n = Number(m[1]);
  return n * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "ms"] as number);
}
