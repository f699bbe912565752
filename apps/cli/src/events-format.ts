// What `mm events` prints and the times it takes, shared by the local and the remote
// (--host) CLI: nothing here reaches the runtime.

import { MmError } from "@mm/core";

/** An event as the store and the API give it. */
export interface EventRow {
  readonly time: string;
  readonly type: string;
  readonly machine: string;
  readonly machineId: string;
  readonly seq: number;
  readonly detail: Readonly<Record<string, unknown>> | null;
}

/** `10m`, `90s`, `2h` ago, or an absolute time Date can parse (RFC 3339), as `docker events` takes. */
export function parseTime(text: string, now = Date.now()): number {
  const rel = /^(\d+)(ms|s|m|h)$/.exec(text);
  if (rel) return now - Number(rel[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[rel[2] as "ms" | "s" | "m" | "h"];
  // Absolute times must look like one (a date first): Date.parse("10") would be the year 2010.
  const t = /^\d{4}-\d{2}-\d{2}/.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(t)) throw new MmError("MM_USAGE", `"${text}" is neither a duration (10m, 90s) nor a time`);
  return t;
}

export function eventLine(e: EventRow): string {
  const detail = e.detail
    ? Object.entries(e.detail)
        .filter(([, v]) => v !== null && v !== undefined)
        .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : String(v)}`)
        .join(", ")
    : "";
  return `${e.time} machine ${e.type} ${e.machine} (id=${e.machineId}${detail ? `, ${detail}` : ""})\n`;
}

/**
 * `mm events`: prints the events after `--since` (default: now) that `--machine` selects,
 * polling `fetchAfter` every 200 ms until `--until`, or until SIGINT without it.
 */
export async function printEvents(
  fetchAfter: (seq: number) => readonly EventRow[] | Promise<readonly EventRow[]>,
  opts: { readonly since?: string; readonly until?: string; readonly machine?: string; readonly json: boolean },
): Promise<void> {
  const since = opts.since !== undefined ? parseTime(opts.since) : Date.now();
  const until = opts.until !== undefined ? parseTime(opts.until) : null;
  let stop = false;
  const onInt = () => {
    stop = true;
  };
  process.once("SIGINT", onInt);
  try {
    let after = 0;
    for (;;) {
      for (const e of await fetchAfter(after)) {
        after = e.seq;
        const t = Date.parse(e.time);
        if (t < since || (until !== null && t > until)) continue;
        if (opts.machine !== undefined && e.machine !== opts.machine) continue;
        process.stdout.write(opts.json ? `${JSON.stringify(e)}\n` : eventLine(e));
      }
      if (stop || (until !== null && Date.now() >= until)) break;
      await new Promise((r) => setTimeout(r, 200));
    }
  } finally {
    process.off("SIGINT", onInt);
  }
}
