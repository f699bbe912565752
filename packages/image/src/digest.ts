// Content digests as OCI writes them ("sha256:<64 lowercase hex>"): checking, computing
// and turning them into file names. mm accepts sha256 only, as Docker and containerd do by default.

import { createHash } from "node:crypto";

const DIGEST = /^sha256:[a-f0-9]{64}$/;

export function isDigest(text: unknown): text is string {
  return typeof text === "string" && DIGEST.test(text);
}

/** The 64 hex characters of a digest that `isDigest` accepted (safe as a file name). */
export function digestHex(digest: string): string {
  if (!isDigest(digest)) throw new RangeError(`not a sha256 digest: ${String(digest).slice(0, 80)}`);
  return digest.slice("sha256:".length);
}

export function sha256Digest(bytes: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** "sha256:0123456789ab" — for messages, as Docker abbreviates. */
export function shortDigest(digest: string): string {
  return digest.slice(0, "sha256:".length + 12);
}
