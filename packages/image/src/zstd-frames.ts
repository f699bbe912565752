// zstd decompression of a whole stream: one or more frames, as RFC 8878 defines it.
// Node 24's ZstdDecompress stops after the first frame and silently drops the rest
// (nodejs/node#64741, unfixed), which would truncate multi-frame layers (zstd:chunked)
// without an error. So frame boundaries are found here — by walking frame and block
// headers, without decompressing — and each frame gets its own decompressor.

import { pipeline, Readable } from "node:stream";
import { createZstdDecompress } from "node:zlib";
import { MmError } from "@mm/core";
import { ByteReader } from "./byte-reader.js";

const ZSTD_MAGIC = 0xfd2fb528;
const SKIPPABLE_MASK = 0xfffffff0;
const SKIPPABLE_MAGIC = 0x184d2a50;

const bad = (detail: string) => new MmError("MM_BAD_LAYER", `zstd: ${detail}`);

/** Bytes of the frame header after the descriptor byte (window, dictionary id, content size). */
export function frameHeaderRest(descriptor: number): number {
  if ((descriptor & 0x08) !== 0) throw bad("reserved bit set in frame header");
  const fcsFlag = descriptor >> 6;
  const singleSegment = (descriptor & 0x20) !== 0;
  const dictFlag = descriptor & 0x03;
  const window = singleSegment ? 0 : 1;
  const dict = [0, 1, 2, 4][dictFlag]!;
  const fcs = [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  return window + dict + fcs;
}

/**
 * Splits a zstd stream into frames: yields, per data frame, an async iterable of that
 * frame's raw bytes (skippable frames are dropped). Each must be consumed before the next.
 */
export async function* zstdFrames(source: AsyncIterable<Uint8Array>): AsyncGenerator<AsyncIterable<Buffer>> {
  const r = new ByteReader(source);
  try {
    for (;;) {
      const magicBytes = await r.read(4);
      if (magicBytes === null) return;
      const magic = magicBytes.readUInt32LE(0);
      if ((magic & SKIPPABLE_MASK) >>> 0 === SKIPPABLE_MAGIC) {
        const size = (await r.read(4))?.readUInt32LE(0);
        if (size === undefined) throw bad("truncated skippable frame");
        await r.skip(size);
        continue;
      }
      if (magic !== ZSTD_MAGIC) throw bad(`not a zstd frame at offset ${r.offset - 4}`);
      let done = false;
      const frame = async function* (): AsyncGenerator<Buffer> {
        yield magicBytes;
        const fhd = await r.read(1);
        if (fhd === null) throw bad("truncated frame header");
        const checksum = (fhd[0]! & 0x04) !== 0;
        const rest = frameHeaderRest(fhd[0]!);
        yield fhd;
        if (rest > 0) {
          const h = await r.read(rest);
          if (h === null) throw bad("truncated frame header");
          yield h;
        }
        for (;;) {
          const bh = await r.read(3);
          if (bh === null) throw bad("truncated block header");
          yield bh;
          const v = bh[0]! | (bh[1]! << 8) | (bh[2]! << 16);
          const last = (v & 1) !== 0;
          const type = (v >> 1) & 3;
          const size = v >>> 3;
          if (type === 3) throw bad("reserved block type");
          yield* r.stream(type === 1 ? 1 : size);
          if (last) break;
        }
        if (checksum) {
          const c = await r.read(4);
          if (c === null) throw bad("truncated checksum");
          yield c;
        }
        done = true;
      };
      yield frame();
      if (!done) throw new Error("zstd frame was not consumed before the next was requested");
    }
  } finally {
    await r.close();
  }
}

/** Decompresses every frame of a zstd stream, in order. */
export async function* zstdDecompress(source: AsyncIterable<Uint8Array>): AsyncGenerator<Buffer> {
  for await (const frame of zstdFrames(source)) {
    const d = createZstdDecompress();
    const out = pipeline(Readable.from(frame), d, () => undefined);
    try {
      for await (const chunk of out) yield chunk as Buffer;
    } finally {
      d.destroy();
    }
  }
}
