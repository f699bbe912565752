// Raw request bodies (file uploads, image archives): streamed, never buffered, and cut
// off with MM_BODY_TOO_LARGE past a limit whether or not the client declared a length.

import { type Readable, Transform } from "node:stream";
import { MmError } from "@mm/core";
import type { FastifyRequest } from "fastify";

/** The request's raw body as a stream that fails once it passes `limit` bytes. */
export function cappedBody(req: FastifyRequest, limit: number, what: string): Readable {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > limit) throw new MmError("MM_BODY_TOO_LARGE", `${declared} bytes (limit ${limit})`);
  const body = req.body as NodeJS.ReadableStream | undefined;
  if (!body || typeof (body as { pipe?: unknown }).pipe !== "function") {
    throw new MmError("MM_USAGE", `send ${what} as the body, Content-Type: application/octet-stream`);
  }
  let seen = 0;
  return body.pipe(
    new Transform({
      transform(chunk: Buffer, _enc, cb) {
        seen += chunk.length;
        cb(seen > limit ? new MmError("MM_BODY_TOO_LARGE", `over ${limit} bytes`) : null, chunk);
      },
    }),
  );
}
