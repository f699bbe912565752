// Host-side tests of protocol v5 (docs/PROTOCOL.md): MOUNT records whose flags name a
// kind — a block disk as in v4, a virtio-fs share or a 9p share — against the real
// mm-init in host-test mode, which validates them but mounts nothing (and makes no
// mount point) on the host. The mount(2) arguments of each kind are covered by
// test/disk-test.c; mounting itself needs a guest.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import { test } from "node:test";
import {
  collectUntilExit,
  encodeConfig,
  encodeFrame,
  encodeIdentity,
  MOUNT_KIND,
  mountRecord,
  run,
  sleep,
  startSession,
  T,
} from "./harness.mjs";
import { STAY_UP, sh, withMachine } from "./machine.mjs";

const { BLOCK, VIRTIOFS, P9 } = MOUNT_KIND;

/** A mount point that does not exist on the host: host-test mode must not make it. */
const nowhere = () => `/mm-init-test-${crypto.randomBytes(6).toString("hex")}`;

/** The next stream-0 frame other than the workload's output. */
async function nextNotOutput(m) {
  for (;;) {
    const f = await m.nextControl();
    if (f.type !== T.STDOUT) return f;
  }
}

/** Runs a CONFIG that must be refused: ERROR `CONFIG: …` matching message, EXIT 127. */
async function refused(config, message, what) {
  const r = await run({ args: ["/bin/true"], ...config });
  assert.deepEqual(r.types, [T.ERROR, T.EXIT], what);
  assert.match(r.errors[0], message, what);
  assert.equal(r.status, 127, what);
}

test("CONFIG v5 with virtio-fs, 9p and block MOUNTs: accepted, validated only in host-test mode, the workload runs", async () => {
  const root = nowhere();
  const mounts = [
    { tag: "mm-share-src", path: `${root}/src`, kind: VIRTIOFS },
    { tag: "conf_1.b", path: `${root}/src/conf/`, kind: VIRTIOFS, readOnly: true },
    { tag: "ABCDEFGHIJKLMNOPQRST", path: "/mnt/9p", kind: P9 },
    { tag: "ro9p", path: "/mnt/ro", kind: P9, readOnly: true },
    { serial: "mm-vol-data", path: `${root}/data`, kind: BLOCK },
  ];
  const s = await startSession({ env: { MM_INIT_CMDLINE: "mm.debug=1" } });
  try {
    const hello = await s.next();
    assert.equal(hello.type, T.HELLO);
    assert.equal(hello.payload.readUInt16BE(2), 5);
    s.send(encodeConfig({ args: sh("echo up"), version: 5, net: { addr: "10.88.0.5/16" }, mounts }));
    const r = await collectUntilExit(s);
    assert.deepEqual(r.types, [T.READY, T.STDOUT, T.EXIT]);
    assert.equal(r.stdout, "up\n");
    assert.equal(r.status, 0);
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
    const log = s.log();
    for (const line of [
      `virtio-fs share mm-share-src at ${root}/src: not mounted in host-test mode`,
      `virtio-fs share conf_1.b at ${root}/src/conf/, read-only: not mounted in host-test mode`,
      "9p share ABCDEFGHIJKLMNOPQRST at /mnt/9p: not mounted in host-test mode",
      "9p share ro9p at /mnt/ro, read-only: not mounted in host-test mode",
      `volume mm-vol-data at ${root}/data: not mounted in host-test mode`,
    ]) {
      assert.ok(log.includes(line), `${line}\n${log}`);
    }
    assert.ok(!fs.existsSync(root), "no mount point made on the host");
  } finally {
    await s.close();
  }
});

test("under v5 a MOUNT of kind 3 or with an undefined flag bit is ERROR CONFIG + EXIT 127", async () => {
  const share = { tag: "src", path: "/src" };
  const cases = [
    ["kind 3", 0x06, /^CONFIG: MOUNT flags 0x06: kind 3 is not defined \(0 block, 1 virtio-fs, 2 9p\)$/],
    ["kind 3, read-only", 0x07, /^CONFIG: MOUNT flags 0x07: kind 3 is not defined/],
    ["bit 3", 0x08, /^CONFIG: MOUNT flags 0x08: only bits 0-2 \(read-only, kind\) are defined$/],
    ["virtio-fs and bit 7", 0x82, /^CONFIG: MOUNT flags 0x82: only bits 0-2/],
    ["9p and bit 4", 0x14, /^CONFIG: MOUNT flags 0x14: only bits 0-2/],
    ["every bit", 0xff, /^CONFIG: MOUNT flags 0xff: only bits 0-2/],
  ];
  for (const [what, flags, message] of cases) {
    await refused({ version: 5, mounts: [{ ...share, flags }] }, message, what);
  }
});

test("under v4 the kind bits are still undefined: a share is ERROR CONFIG + EXIT 127", async () => {
  for (const [kind, readOnly, flags] of [
    [VIRTIOFS, false, "0x02"],
    [P9, false, "0x04"],
    [P9, true, "0x05"],
  ]) {
    await refused(
      { version: 4, mounts: [{ tag: "src", path: "/src", kind, readOnly }] },
      new RegExp(`^CONFIG: MOUNT flags ${flags}: only bit 0 \\(read-only\\) is defined$`),
      `v4, flags ${flags}`,
    );
  }
});

test("a share's tag follows the serial's rule: 1-20 of A-Z a-z 0-9 _ . -", async () => {
  for (const kind of [VIRTIOFS, P9]) {
    const at = (tag) => ({ version: 5, mounts: [{ tag, path: "/src", kind }] });
    for (const tag of ["my share", "../src", "src:1", "tag\n", "é", "*"]) {
      await refused(at(tag), /^CONFIG: MOUNT tag has a byte outside A-Z a-z 0-9 _ \. -$/, `kind ${kind}: ${tag}`);
    }
    await refused(at(""), /^CONFIG: MOUNT tag is 0 bytes \(must be 1-20\)$/, `kind ${kind}: empty`);
    await refused(at("x".repeat(21)), /^CONFIG: MOUNT tag is 21 bytes \(must be 1-20\)$/, `kind ${kind}: 21`);
    const ok = await run({ args: ["/bin/true"], ...at("x".repeat(20)) });
    assert.deepEqual(ok.types, [T.READY, T.EXIT], `kind ${kind}: 20 bytes are fine`);
  }
});

test("a share's mount point follows v4's rules", async () => {
  const cases = [
    ["relative", /^CONFIG: MOUNT path "relative" is not absolute$/],
    ["/", /^CONFIG: MOUNT path "\/" is the root directory$/],
    ["/src/../etc", /^CONFIG: MOUNT path "\/src\/\.\.\/etc" has a \.\. component$/],
    ["/proc/x", /^CONFIG: MOUNT path "\/proc\/x" is in \/proc \(reserved\)$/],
    ["/.mm/tools", /^CONFIG: MOUNT path "\/\.mm\/tools" is in \/\.mm \(reserved\)$/],
  ];
  for (const kind of [VIRTIOFS, P9]) {
    for (const [path, message] of cases) {
      await refused({ version: 5, mounts: [{ tag: "src", path, kind }] }, message, `kind ${kind}: ${path}`);
    }
  }
});

test("no name, no mount point twice and at most 16 MOUNTs, across kinds", async () => {
  const cases = [
    [
      "a serial and a virtio-fs tag",
      [
        { serial: "data", path: "/a", kind: BLOCK },
        { tag: "data", path: "/b", kind: VIRTIOFS },
      ],
      /^CONFIG: two MOUNT records name data \(a serial and a tag\)$/,
    ],
    [
      "a 9p tag and a serial",
      [
        { tag: "data", path: "/a", kind: P9 },
        { serial: "data", path: "/b", kind: BLOCK, readOnly: true },
      ],
      /^CONFIG: two MOUNT records name data \(a tag and a serial\)$/,
    ],
    [
      "a virtio-fs tag and a 9p tag",
      [
        { tag: "src", path: "/a", kind: VIRTIOFS },
        { tag: "src", path: "/b", kind: P9 },
      ],
      /^CONFIG: two MOUNT records for tag src$/,
    ],
    [
      "a volume and a share at the same place",
      [
        { serial: "vol", path: "/data", kind: BLOCK },
        { tag: "src", path: "//data/.", kind: VIRTIOFS },
      ],
      /^CONFIG: two MOUNT records at "\/\/data\/\."$/,
    ],
    [
      "two shares at the same place",
      [
        { tag: "a", path: "/x/", kind: P9 },
        { tag: "b", path: "/x", kind: VIRTIOFS, readOnly: true },
      ],
      /^CONFIG: two MOUNT records at "\/x"$/,
    ],
  ];
  for (const [what, mounts, message] of cases) {
    await refused({ version: 5, mounts }, message, what);
  }
  const kinds = [BLOCK, VIRTIOFS, P9];
  const seventeen = Array.from({ length: 17 }, (_, i) => ({ tag: `m${i}`, path: `/mnt/${i}`, kind: kinds[i % 3] }));
  await refused({ version: 5, mounts: seventeen }, /^CONFIG: more than 16 MOUNT records$/, "17 of mixed kinds");
  const sixteen = await run({ args: ["/bin/true"], version: 5, mounts: seventeen.slice(0, 16) });
  assert.deepEqual(sixteen.types, [T.READY, T.EXIT], "16 of mixed kinds are fine");
  const nested = await run({
    args: ["/bin/true"],
    version: 5,
    mounts: [
      { serial: "vol", path: "/data", kind: BLOCK },
      { tag: "Vol", path: "/data/share", kind: VIRTIOFS },
      { tag: "vol9", path: "/data/share/9p", kind: P9 },
    ],
  });
  assert.deepEqual(nested.types, [T.READY, T.EXIT], "nested mount points and names differing in case are fine");
});

test("after a MOUNT error under v5 no sessions are served and STAY_UP is ignored", async () => {
  await withMachine(
    { version: 5, workload: ["true"], flags: STAY_UP, config: { mounts: [{ tag: "src", path: "/src", flags: 0x06 }] } },
    async (m) => {
      const error = await m.nextControl();
      assert.equal(error.type, T.ERROR);
      assert.match(error.payload.toString(), /^CONFIG: MOUNT flags 0x06: kind 3 is not defined/);
      assert.equal((await m.nextControl()).payload.readInt32BE(0), 127);
      const started = Date.now();
      const e = m.exec(1, { args: ["true"] }); // ignored: the machine is going down
      assert.equal((await m.s.exited).code, 0);
      assert.ok(Date.now() - started < 4000, "powered off without POWEROFF, STAY_UP notwithstanding");
      assert.deepEqual(e.frames, [], "no answer to EXEC");
    },
  );
});

test("under v5, EXEC and IDENTITY ignore MOUNT records; v2 and v3 frames work as before", async () => {
  const junk = mountRecord({ tag: "bad tag!", path: "relative", flags: 0x06 });
  await withMachine(
    {
      version: 5,
      workload: sh("while :; do echo tick; sleep 0.05; done"),
      config: { mounts: [{ tag: "src", path: "/src", kind: VIRTIOFS }] },
    },
    async (m) => {
      assert.equal((await m.nextControl()).type, T.READY);
      const e = m.exec(1, { args: ["echo", "session"], extra: [junk] });
      assert.deepEqual(await e.exit, { status: 0, signal: 0 });
      assert.equal(e.stdout(), "session\n");

      m.send(encodeFrame(T.QUIESCE));
      assert.equal((await nextNotOutput(m)).type, T.QUIESCED);
      m.send(encodeIdentity({ version: 5, hostname: "fork-1", extra: [junk] }));
      const result = await nextNotOutput(m);
      assert.equal(result.type, T.IDENTITY_RESULT);
      assert.equal(result.payload.toString(), "", "IDENTITY applied: MOUNT ignored");
      await sleep(100);
      assert.equal((await m.nextControl()).type, T.STDOUT, "output flows again");
    },
  );
});
