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
  encodeExec,
  encodeExit,
  encodeFrame,
  encodeHello,
  encodeIdentity,
  encodeWinsize,
  errorCodeForGuest,
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
          assert.deepEqual(cfg, { version: 5, args, env, cwd: "/w", user: "1:2", hostname: "h", stayUp, stdin: false });
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

describe("protocol v2 records", () => {
  const net = { address: "10.88.0.5/16", gateway: "10.88.0.1", dns: ["10.88.0.1"], hosts: ["10.88.0.5 web"] };

  test("network identity round-trips in v2 and is left out for a v1 guest", () => {
    assert.deepEqual(decodeConfig(encodeConfig({ args: ["a"], env: [], network: net })).network, net);
    const v1 = decodeConfig(encodeConfig({ args: ["a"], env: [], network: net }, 1));
    assert.equal(v1.version, 1);
    assert.equal(v1.network, undefined);
  });

  test("v3 fresh-identity records round-trip, and are left out for a v2 guest", () => {
    const fresh = { mac: "52:54:00:12:34:56", clockNs: 1_790_000_000_123_456_789n, seed: Buffer.alloc(32, 7) };
    assert.deepEqual(decodeConfig(encodeConfig({ args: ["a"], env: [], fresh })).fresh, fresh);
    assert.equal(decodeConfig(encodeConfig({ args: ["a"], env: [], fresh }, 2)).fresh, undefined);
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], fresh: { seed: Buffer.alloc(8) } }),
      (e) => isMmError(e, "MM_USAGE"),
    );
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], fresh: { mac: "52:54:00:12:34" } }),
      (e) => isMmError(e, "MM_USAGE"),
    );
  });

  test("v4 MOUNT records round-trip; a v3 guest cannot take volumes", () => {
    const mounts = [
      { serial: "mmv0", path: "/data", readOnly: false },
      { serial: "mmv1", path: "/srv/ro dir", readOnly: true },
    ];
    assert.deepEqual(decodeConfig(encodeConfig({ args: ["a"], env: [], mounts })).mounts, mounts);
    const shared = [
      { serial: "mmfs0", path: "/host", readOnly: true, kind: "virtiofs" as const },
      { serial: "mmfs1", path: "/nine", readOnly: false, kind: "9p" as const },
    ];
    assert.deepEqual(decodeConfig(encodeConfig({ args: ["a"], env: [], mounts: shared })).mounts, shared);
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], mounts: shared }, 4),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], mounts }, 3),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], mounts: [{ serial: "bad serial", path: "/d", readOnly: false }] }),
      (e) => isMmError(e, "MM_USAGE"),
    );
  });

  test("IDENTITY carries hostname, network and fresh records, and needs v3", () => {
    const id = decodeConfig(encodeIdentity({ hostname: "clone-1", network: net, fresh: { mac: "52:54:00:00:00:01" } }));
    assert.deepEqual(
      [id.version, id.hostname, id.network, id.fresh],
      [5, "clone-1", net, { mac: "52:54:00:00:00:01" }],
    );
    assert.deepEqual(id.args, []);
    assert.throws(
      () => encodeIdentity({ fresh: {} }, 2),
      (e) => isMmError(e, "MM_AGENT_PROTOCOL"),
    );
  });

  test("EXEC carries TTY size and the stdin flag", () => {
    const e = decodeConfig(encodeExec({ args: ["sh"], env: ["A=1"], tty: { rows: 24, cols: 80 }, stdin: true }));
    assert.deepEqual([e.args, e.env, e.tty, e.stdin], [["sh"], ["A=1"], { rows: 24, cols: 80 }, true]);
    assert.equal(decodeConfig(encodeExec({ args: ["true"], env: [] })).stdin, false);
  });

  test("too many DNS servers or hosts lines are MM_USAGE", () => {
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], network: { address: "1.2.3.4/8", dns: ["a", "b", "c", "d"] } }),
      (e) => isMmError(e, "MM_USAGE"),
    );
    assert.throws(
      () => encodeConfig({ args: ["a"], env: [], network: { address: "1.2.3.4/8", hosts: Array(17).fill("x") } }),
      (e) => isMmError(e, "MM_USAGE"),
    );
  });

  test("window sizes are clamped to 16 bits", () => {
    assert.deepEqual([...encodeWinsize(70000, -3)], [0xff, 0xff, 0, 0]);
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

  test("guest ERROR codes map to the product's codes", () => {
    assert.equal(errorCodeForGuest("EXEC_NOT_FOUND"), "MM_EXEC_NOT_FOUND");
    assert.equal(errorCodeForGuest("EXEC_DENIED"), "MM_EXEC_DENIED");
    assert.equal(errorCodeForGuest("LOST"), "MM_MACHINE_NOT_RUNNING");
    for (const c of ["CWD", "USER", "NET", "CONFIG", "LIMIT", "whatever"])
      assert.equal(errorCodeForGuest(c), "MM_EXEC_SETUP");
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
