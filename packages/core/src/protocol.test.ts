import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { isMmError } from "./errors.js";
import {
  decodeConfig,
  decodeExit,
  decodeGuestError,
  decodeHello,
  encodeConfig,
  encodeExit,
  encodeFrame,
  encodeHello,
  FrameDecoder,
  FrameType,
  MAX_ARGS,
  MAX_ENV,
  MAX_PAYLOAD,
  MAX_STRING,
} from "./protocol.js";

describe("frames", () => {
  test("a frame round-trips whatever the chunking", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            type: fc.integer({ min: 0, max: 255 }),
            stream: fc.nat(),
            payload: fc.uint8Array({ maxLength: 300 }),
          }),
          {
            maxLength: 8,
          },
        ),
        fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 20 }),
        (frames, cuts) => {
          const wire = Buffer.concat(frames.map((f) => encodeFrame(f.type, Buffer.from(f.payload), f.stream)));
          const d = new FrameDecoder();
          const out = [];
          let off = 0;
          let i = 0;
          while (off < wire.length) {
            const n = cuts[i++ % cuts.length] as number;
            out.push(...d.push(wire.subarray(off, off + n)));
            off += n;
          }
          assert.equal(out.length, frames.length);
          out.forEach((f, k) => {
            const want = frames[k] as (typeof frames)[number];
            assert.equal(f.type, want.type);
            assert.equal(f.stream, want.stream >>> 0);
            assert.deepEqual([...f.payload], [...want.payload]);
          });
        },
      ),
    );
  });

  test("the largest payload passes, one byte more is refused by the encoder", () => {
    const f = encodeFrame(FrameType.STDOUT, Buffer.alloc(MAX_PAYLOAD));
    assert.equal(new FrameDecoder().push(f)[0]?.payload.length, MAX_PAYLOAD);
    assert.throws(() => encodeFrame(FrameType.STDOUT, Buffer.alloc(MAX_PAYLOAD + 1)), RangeError);
  });

  for (const len of [0, 4, 5 + MAX_PAYLOAD + 1, 0xffffffff]) {
    test(`a length of ${len} is a protocol error before any payload is buffered`, () => {
      const h = Buffer.alloc(4);
      h.writeUInt32BE(len);
      assert.throws(
        () => new FrameDecoder().push(h),
        (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
      );
    });
  }
});

describe("CONFIG", () => {
  test("round-trips args, env, cwd, user, hostname and flags", () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !s.includes("\0")),
          { minLength: 1, maxLength: 20 },
        ),
        fc.array(
          fc.tuple(
            fc.stringMatching(/^[A-Z_]{1,10}$/),
            fc.string({ maxLength: 30 }).filter((s) => !s.includes("\0")),
          ),
          {
            maxLength: 10,
          },
        ),
        fc.boolean(),
        (args, envPairs, stayUp) => {
          const env = envPairs.map(([k, v]) => `${k}=${v}`);
          const cfg = decodeConfig(encodeConfig({ args, env, cwd: "/w", user: "1:2", hostname: "h", stayUp }));
          assert.deepEqual(cfg, { version: 1, args, env, cwd: "/w", user: "1:2", hostname: "h", stayUp });
        },
      ),
    );
  });

  const bad: [string, Parameters<typeof encodeConfig>[0]][] = [
    ["no command", { args: [], env: [] }],
    ["too many args", { args: Array(MAX_ARGS + 1).fill("a"), env: [] }],
    ["too many env", { args: ["a"], env: Array(MAX_ENV + 1).fill("A=1") }],
    ["a NUL in an arg", { args: ["a\0b"], env: [] }],
    ["an over-long arg", { args: ["x".repeat(MAX_STRING + 1)], env: [] }],
    ["env without =", { args: ["a"], env: ["NOPE"] }],
    ["relative cwd", { args: ["a"], env: [], cwd: "tmp" }],
    ["long hostname", { args: ["a"], env: [], hostname: "h".repeat(65) }],
    ["over 64 KiB in all", { args: Array(20).fill("x".repeat(4000)), env: [] }],
  ];
  for (const [what, cfg] of bad) {
    test(`refuses ${what} with MM_USAGE`, () => {
      assert.throws(
        () => encodeConfig(cfg),
        (e) => isMmError(e, "MM_USAGE"),
      );
    });
  }

  test("ignores unknown tags and rejects truncated records", () => {
    const good = encodeConfig({ args: ["a"], env: [] });
    const withUnknown = Buffer.concat([good, Buffer.from([99, 0, 2, 1, 2])]);
    assert.deepEqual(decodeConfig(withUnknown).args, ["a"]);
    assert.throws(
      () => decodeConfig(Buffer.concat([good, Buffer.from([1, 0, 9, 1])])),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
  });
});

describe("guest messages", () => {
  test("HELLO round-trips and rejects nonsense", () => {
    assert.deepEqual(decodeHello(encodeHello({ minVersion: 1, maxVersion: 2, agent: "mm-init/0.1" })), {
      minVersion: 1,
      maxVersion: 2,
      agent: "mm-init/0.1",
    });
    assert.throws(
      () => decodeHello(Buffer.alloc(3)),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
    assert.throws(
      () => decodeHello(encodeHello({ minVersion: 3, maxVersion: 1, agent: "" })),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
    assert.throws(
      () => decodeHello(Buffer.alloc(4 + 65)),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
  });

  test("EXIT accepts shell statuses only", () => {
    assert.deepEqual(decodeExit(encodeExit({ status: 143, signal: 15 })), { status: 143, signal: 15 });
    for (const e of [
      { status: -1, signal: 0 },
      { status: 256, signal: 0 },
      { status: 0, signal: 65 },
    ]) {
      assert.throws(
        () => decodeExit(encodeExit(e)),
        (x) => isMmError(x, "MM_AGENT_PROTOCOL"),
      );
    }
    assert.throws(
      () => decodeExit(Buffer.alloc(9)),
      (x) => isMmError(x, "MM_AGENT_PROTOCOL"),
    );
  });

  test("ERROR splits CODE: message and caps its size", () => {
    assert.deepEqual(decodeGuestError(Buffer.from("EXEC_NOT_FOUND: /bin/x: No such file")), {
      code: "EXEC_NOT_FOUND",
      message: "/bin/x: No such file",
    });
    assert.equal(decodeGuestError(Buffer.from("garbage")).code, "UNKNOWN");
    assert.throws(
      () => decodeGuestError(Buffer.alloc(1025)),
      (x) => isMmError(x, "MM_AGENT_PROTOCOL"),
    );
  });
});
