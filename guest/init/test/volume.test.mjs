// Host-side tests of protocol v4 (docs/PROTOCOL.md): MOUNT records in CONFIG, against
// the real mm-init in host-test mode, which validates them but mounts nothing (and
// makes no mount point) on the host. Mounting itself is covered by test/disk-test.c
// (disk lookup, mount points) and needs a guest for the mount(2).

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import { test } from "node:test";
import {
  collectUntilExit,
  encodeConfig,
  encodeFrame,
  encodeIdentity,
  mountRecord,
  record,
  run,
  sleep,
  startSession,
  T,
  TAG,
} from "./harness.mjs";
import { STAY_UP, sh, withMachine } from "./machine.mjs";

/** The next stream-0 frame other than the workload's output. */
async function nextNotOutput(m) {
  for (;;) {
    const f = await m.nextControl();
    if (f.type !== T.STDOUT) return f;
  }
}

/** A mount point that does not exist on the host: host-test mode must not make it. */
const nowhere = () => `/mm-init-test-${crypto.randomBytes(6).toString("hex")}`;

test("CONFIG v4 with MOUNT records: accepted, validated only in host-test mode, the workload runs", async () => {
  const root = nowhere();
  const mounts = [
    { serial: "mm-vol-data", path: `${root}/data` },
    { serial: "cache_2.b", path: `${root}/data/cache/`, readOnly: true },
    { serial: "ABCDEFGHIJKLMNOPQRST", path: "/var/lib/app" },
  ];
  const s = await startSession({ env: { MM_INIT_CMDLINE: "mm.debug=1" } });
  try {
    assert.equal((await s.next()).type, T.HELLO);
    s.send(encodeConfig({ args: sh("echo up"), version: 4, net: { addr: "10.88.0.5/16" }, mounts }));
    const r = await collectUntilExit(s);
    assert.deepEqual(r.types, [T.READY, T.STDOUT, T.EXIT]);
    assert.equal(r.stdout, "up\n");
    assert.equal(r.status, 0);
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
    const log = s.log();
    assert.ok(log.includes(`volume mm-vol-data at ${root}/data: not mounted in host-test mode`), log);
    assert.ok(log.includes(`volume cache_2.b at ${root}/data/cache/, read-only: not mounted in host-test mode`), log);
    assert.ok(log.includes("volume ABCDEFGHIJKLMNOPQRST at /var/lib/app: not mounted"), log);
    assert.ok(!fs.existsSync(root), "no mount point made on the host");
  } finally {
    await s.close();
  }
});

test("a MOUNT record that breaks a rule is ERROR CONFIG + EXIT 127", async () => {
  const ok = { serial: "vol", path: "/data" };
  const raw = (bytes) => record(TAG.MOUNT, Buffer.from(bytes));
  const seventeen = Array.from({ length: 17 }, (_, i) => ({ serial: `v${i}`, path: `/data/${i}` }));
  const cases = [
    [
      "flags bit 1",
      { mounts: [{ ...ok, flags: 2 }] },
      /^CONFIG: MOUNT flags 0x02: only bit 0 \(read-only\) is defined$/,
    ],
    ["flags 0x81", { mounts: [{ ...ok, flags: 0x81 }] }, /^CONFIG: MOUNT flags 0x81: only bit 0/],
    [
      "a space in the serial",
      { mounts: [{ ...ok, serial: "my vol" }] },
      /^CONFIG: MOUNT serial has a byte outside A-Z a-z 0-9 _ \. -$/,
    ],
    ["a slash in the serial", { mounts: [{ ...ok, serial: "../vdb" }] }, /^CONFIG: MOUNT serial has a byte outside/],
    [
      "a serial of 21 bytes",
      { mounts: [{ ...ok, serial: "x".repeat(21) }] },
      /^CONFIG: MOUNT serial is 21 bytes \(must be 1-20\)$/,
    ],
    ["an empty serial", { mounts: [{ ...ok, serial: "" }] }, /^CONFIG: MOUNT serial is 0 bytes \(must be 1-20\)$/],
    ["no NUL after the serial", { extra: [raw("\0vol/data")] }, /^CONFIG: MOUNT record has no NUL after the serial$/],
    ["no flags byte", { extra: [raw("")] }, /^CONFIG: MOUNT record is empty \(no flags\)$/],
    ["a NUL in the path", { extra: [raw("\0vol\0/da\0ta")] }, /^CONFIG: MOUNT path contains a NUL byte$/],
    ["a relative path", { mounts: [{ ...ok, path: "data" }] }, /^CONFIG: MOUNT path "data" is not absolute$/],
    ["an empty path", { mounts: [{ ...ok, path: "" }] }, /^CONFIG: MOUNT path "" is not absolute$/],
    [
      "a .. component",
      { mounts: [{ ...ok, path: "/data/../etc" }] },
      /^CONFIG: MOUNT path "\/data\/\.\.\/etc" has a \.\. component$/,
    ],
    ["/", { mounts: [{ ...ok, path: "/" }] }, /^CONFIG: MOUNT path "\/" is the root directory$/],
    ["//.", { mounts: [{ ...ok, path: "//." }] }, /^CONFIG: MOUNT path "\/\/\." is the root directory$/],
    ["/proc/x", { mounts: [{ ...ok, path: "/proc/x" }] }, /^CONFIG: MOUNT path "\/proc\/x" is in \/proc \(reserved\)$/],
    ["/sys", { mounts: [{ ...ok, path: "/sys" }] }, /^CONFIG: MOUNT path "\/sys" is in \/sys \(reserved\)$/],
    [
      "/dev/shm",
      { mounts: [{ ...ok, path: "/dev/shm" }] },
      /^CONFIG: MOUNT path "\/dev\/shm" is in \/dev \(reserved\)$/,
    ],
    ["/.mm/x", { mounts: [{ ...ok, path: "/.mm/x" }] }, /^CONFIG: MOUNT path "\/\.mm\/x" is in \/\.mm \(reserved\)$/],
    [
      "//./proc",
      { mounts: [{ ...ok, path: "//./proc" }] },
      /^CONFIG: MOUNT path "\/\/\.\/proc" is in \/proc \(reserved\)$/,
    ],
    [
      "a path of 4097 bytes",
      { mounts: [{ ...ok, path: `/${"p".repeat(4096)}` }] },
      /^CONFIG: MOUNT path is 4097 bytes \(max 4096\)$/,
    ],
    [
      "the same serial twice",
      { mounts: [ok, { serial: "vol", path: "/other", readOnly: true }] },
      /^CONFIG: two MOUNT records for serial vol$/,
    ],
    [
      "the same path twice",
      { mounts: [ok, { serial: "vol2", path: "/data/" }] },
      /^CONFIG: two MOUNT records at "\/data\/"$/,
    ],
    ["17 records", { mounts: seventeen }, /^CONFIG: more than 16 MOUNT records$/],
  ];
  for (const [what, records, message] of cases) {
    const r = await run({ args: ["/bin/true"], version: 4, ...records });
    assert.deepEqual(r.types, [T.ERROR, T.EXIT], what);
    assert.match(r.errors[0], message, what);
    assert.equal(r.status, 127, what);
  }
  const sixteen = await run({ args: ["/bin/true"], version: 4, mounts: seventeen.slice(0, 16) });
  assert.deepEqual(sixteen.types, [T.READY, T.EXIT], "16 records are fine");
});

test("after a MOUNT error no sessions are served and STAY_UP is ignored", async () => {
  await withMachine(
    { version: 4, workload: ["true"], flags: STAY_UP, config: { mounts: [{ serial: "vol", path: "/proc" }] } },
    async (m) => {
      const error = await m.nextControl();
      assert.equal(error.type, T.ERROR);
      assert.match(error.payload.toString(), /^CONFIG: MOUNT path "\/proc" is in \/proc/);
      assert.equal((await m.nextControl()).payload.readInt32BE(0), 127);
      const started = Date.now();
      const e = m.exec(1, { args: ["true"] }); // ignored: the machine is going down
      assert.equal((await m.s.exited).code, 0);
      assert.ok(Date.now() - started < 4000, "powered off without POWEROFF, STAY_UP notwithstanding");
      assert.deepEqual(e.frames, [], "no answer to EXEC");
    },
  );
});

test("v1 to v3 CONFIGs ignore a MOUNT record (an unknown tag), however broken", async () => {
  const broken = [
    mountRecord({ serial: "bad serial!", path: "/proc", flags: 0xff }),
    record(TAG.MOUNT, Buffer.alloc(0)),
    ...Array.from({ length: 17 }, () => mountRecord({ serial: "same", path: "/same" })),
  ];
  for (const version of [1, 2, 3]) {
    const r = await run({ args: sh("echo ran"), version, extra: broken });
    assert.deepEqual(r.types, [T.READY, T.STDOUT, T.EXIT], `v${version}`);
    assert.equal(r.stdout, "ran\n");
  }
});

test("under v4, EXEC and IDENTITY ignore MOUNT records; v2 and v3 frames work as before", async () => {
  const junk = mountRecord({ serial: "!", path: "relative", flags: 0x80 });
  await withMachine(
    {
      version: 4,
      workload: sh("while :; do echo tick; sleep 0.05; done"),
      config: { mounts: [{ serial: "v", path: "/data" }] },
    },
    async (m) => {
      assert.equal((await m.nextControl()).type, T.READY);
      const e = m.exec(1, { args: ["echo", "session"], extra: [junk] });
      assert.deepEqual(await e.exit, { status: 0, signal: 0 });
      assert.equal(e.stdout(), "session\n");

      m.send(encodeFrame(T.QUIESCE));
      assert.equal((await nextNotOutput(m)).type, T.QUIESCED);
      m.send(encodeIdentity({ version: 4, hostname: "fork-1", extra: [junk] }));
      const result = await nextNotOutput(m);
      assert.equal(result.type, T.IDENTITY_RESULT);
      assert.equal(result.payload.toString(), "", "IDENTITY applied: MOUNT ignored");
      await sleep(100);
      assert.equal((await m.nextControl()).type, T.STDOUT, "output flows again");
    },
  );
});
