// Process identity on Linux: a pid plus its start time, so a reused pid is not
// mistaken for the process mm started.

import { readFileSync } from "node:fs";

/** The start time of a live process (null if there is none, or only its zombie). */
export function processStartTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 2 (comm) may contain spaces and parentheses: parse after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // A zombie (state Z: dead, not yet reaped by its parent) is no supervisor any more.
    if (fields[0] === "Z" || fields[0] === "X") return null;
    return fields[19] ?? null; // field 22 overall: starttime
  } catch {
    return null;
  }
}

export function isSameProcess(pid: number | null, startTime: string | null): boolean {
  if (!pid || pid <= 0) return false;
  const now = processStartTime(pid);
  return now !== null && (startTime === null || now === startTime);
}

export function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
  } catch {
    return "";
  }
}
