// Builds an image's root filesystem inside a user namespace, for rootless mm (see
// userns.ts). Runs as that namespace's root, with the user's subordinate ids mapped, so
// the layers' owners, modes and set-uid bits land in the ext4 exactly as with real root.
// Reads the build's options as JSON on stdin; writes JSON lines on stdout.

import { MmError } from "@mm/core";
import { buildImageRootfs } from "./rootfs.js";
import { decodeBuildRequest, type WorkerMessage } from "./userns.js";

const send = (m: WorkerMessage) => process.stdout.write(`${JSON.stringify(m)}\n`);

let input = "";
for await (const chunk of process.stdin) input += chunk;
try {
  const options = decodeBuildRequest(input);
  const result = await buildImageRootfs({
    ...options,
    rootless: true,
    onEvent: (event) => send({ event }),
    onWarning: (warning) => send({ warning }),
  });
  send({ result });
} catch (e) {
  const err = e instanceof MmError ? e : new MmError("MM_ROOTFS_FAILED", (e as Error).message ?? String(e));
  send({ error: err.toJSON() });
  process.exitCode = 1;
}
