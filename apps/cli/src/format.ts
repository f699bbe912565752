// Human-readable renderings for the CLI (tables, durations, statuses). Pure.

import type { MachineRecord } from "@mm/runtime";

export function ago(iso: string | null, now = Date.now()): string {
  if (!iso) return "";
  return `${duration(now - Date.parse(iso))} ago`;
}

export function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s <= 1 ? "1 second" : `${s} seconds`;
  const m = Math.round(s / 60);
  if (m < 60) return m === 1 ? "1 minute" : `${m} minutes`;
  const h = Math.round(m / 60);
  if (h < 48) return h === 1 ? "1 hour" : `${h} hours`;
  return `${Math.round(h / 24)} days`;
}

export function statusText(r: MachineRecord, now = Date.now()): string {
  switch (r.state) {
    case "created":
      return "Created";
    case "starting":
      return "Starting";
    case "running":
      return `Up ${r.startedAt ? duration(now - Date.parse(r.startedAt)) : ""}`.trim();
    case "stopping":
      return "Stopping";
    case "exited":
      return `Exited (${r.exitCode ?? "?"}) ${ago(r.finishedAt, now)}`.trim();
    case "failed":
      return `Failed (${r.error?.code ?? "?"}) ${ago(r.finishedAt, now)}`.trim();
    default: {
      const never: never = r.state;
      return String(never);
    }
  }
}

export function commandText(r: MachineRecord, max = 24): string {
  const c = r.spec.command.length > 0 ? r.spec.command.join(" ") : "(image default)";
  const q = JSON.stringify(c);
  return q.length > max ? `${q.slice(0, max - 4)}…"` : q;
}
