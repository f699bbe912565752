// Small helpers the command files share.

import { MmError } from "@mm/core";
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
