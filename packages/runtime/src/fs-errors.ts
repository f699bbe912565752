// Maps file-system failures to the product's error codes, so a full disk or an
// unwritable state root reads as such and not as a stack trace.

import { MmError } from "@mm/core";

export function mapFsError(e: unknown, what: string): MmError {
  if (e instanceof MmError) return e;
  const err = e as NodeJS.ErrnoException;
  const text = `${err?.message ?? e}`;
  switch (err?.code) {
    case "ENOSPC":
    case "EDQUOT":
      return new MmError("MM_DISK_FULL", `${what}: ${text}`, { cause: e });
    case "EACCES":
    case "EPERM":
    case "EROFS":
    case "ENOTDIR":
      return new MmError("MM_STATE_UNWRITABLE", `${what}: ${text}`, { cause: e });
    default:
      if (/No space left on device|Could not allocate block|disk quota/i.test(text)) {
        return new MmError("MM_DISK_FULL", `${what}: ${text}`, { cause: e });
      }
      return new MmError("MM_INTERNAL", `${what}: ${text}`, { cause: e });
  }
}
