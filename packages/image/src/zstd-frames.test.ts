import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { constants, zstdCompressSync } from "node:zlib";
import { isMmError } from "@mm/core";
import { frameHeaderRest, zstdDecompress, zstdFrames } from "./zstd-frames.js";

async function* chunks(data: Buffer, size: number): AsyncGenerator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

async function collect(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of it) parts.push(c);
  return Buffer.concat(parts);
}

test("every frame is decoded, skippable frames are skipped, in any chunking", async () => {
  const a = randomBytes(5000);
  const b = Buffer.from("second frame ".repeat(1000));
  const skippable = Buffer.concat([
    Buffer.from([0x5f, 0x2a, 0x4d, 0x18]),
    Buffer.from([3, 0, 0, 0]),
    Buffer.from("abc"),
  ]);
  const stream = Buffer.concat([
    zstdCompressSync(a),
    skippable,
    zstdCompressSync(b),
    zstdCompressSync(Buffer.alloc(0)),
    zstdCompressSync(b, { params: { [constants.ZSTD_c_checksumFlag]: 1 } }),
  ]);
  for (const size of [1, 7, 4096, stream.length]) {
    assert.deepEqual(await collect(zstdDecompress(chunks(stream, size))), Buffer.concat([a, b, b]), `chunk ${size}`);
  }
  let frames = 0;
  for await (const f of zstdFrames(chunks(stream, 1000))) {
    frames++;
    await collect(f);
  }
  assert.equal(frames, 4);
});

test("frame header sizes follow RFC 8878", () => {
  assert.equal(frameHeaderRest(0x00), 1); // window descriptor only
  assert.equal(frameHeaderRest(0x20), 1); // single segment: 1-byte content size
  assert.equal(frameHeaderRest(0x20 | 0xc0 | 0x03), 12); // 8-byte size + 4-byte dictionary id
  assert.equal(frameHeaderRest(0x40 | 0x01), 1 + 1 + 2);
  assert.throws(
    () => frameHeaderRest(0x08),
    (e) => isMmError(e, "MM_BAD_LAYER"),
  );
});

test("truncated and foreign data is MM_BAD_LAYER", async () => {
  const good = zstdCompressSync(randomBytes(5000));
  for (const [what, data] of [
    ["cut", good.subarray(0, good.length - 3)],
    ["cut header", good.subarray(0, 5)],
    ["not zstd", Buffer.from("hello world, definitely not zstd")],
    ["trailing junk", Buffer.concat([good, Buffer.from("junk")])],
  ] as const) {
    await assert.rejects(collect(zstdDecompress(chunks(data, 100))), (e) => isMmError(e, "MM_BAD_LAYER"), what);
  }
});
