// Host-side tests of protocol v3 (docs/PROTOCOL.md): QUIESCE, RESUME, IDENTITY and the
// NET_MAC, CLOCK and SEED records, against the real mm-init in host-test mode (which
// validates identities but applies none: the host's clock, RNG, hostname and eth0 stay
// as they are).

import assert from "node:assert/strict";
import crypto from "node:crypto";
import os from "node:os";
import { test } from "node:test";
import {
  encodeConfig,
  encodeFrame,
  encodeIdentity,
  encodeRecords,
  record,
  run,
  sleep,
  startSession,
  T,
  TAG,
  u32,
  u64,
} from "./harness.mjs";
import { sh, withMachine } from "./machine.mjs";

const TICKS = sh("while :; do echo tick; sleep 0.02; done");
const Y2001_NS = 978307200n * 1_000_000_000n; // far from today: setting it would show
const AFTER_2020_MS = Date.UTC(2020, 0, 1);

/** The next stream-0 frame other than the workload's output. */
async function nextNotOutput(m) {
  for (;;) {
    const f = await m.nextControl();
    if (f.type !== T.STDOUT) return f;
  }
}

/** Sends QUIESCE; returns once QUIESCED arrived (the workload's output may come first). */
async function quiesce(m) {
  m.send(encodeFrame(T.QUIESCE));
  const f = await nextNotOutput(m);
  assert.equal(f.type, T.QUIESCED);
  assert.equal(f.payload.length, 0);
}

/** Checks that the guest sends nothing for ms milliseconds. */
async function assertSilent(m, ms, what) {
  const before = m.received;
  await sleep(ms);
  assert.equal(m.received, before, what);
}

const gone = (pid) => {
  try {
    process.kill(pid, 0);
    return false;
  } catch (e) {
    return e.code === "ESRCH";
  }
};

async function waitGone(pids, ms = 3000) {
  const deadline = Date.now() + ms;
  while (!pids.every(gone)) {
    assert.ok(Date.now() < deadline, `processes ${pids.filter((p) => !gone(p))} still there`);
    await sleep(20);
  }
}

test("QUIESCE: QUIESCED, then silence while the workload and a session write; RESUME releases the held output", async () => {
  await withMachine({ version: 3, workload: TICKS }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    const e = m.exec(1, { args: sh("while :; do echo tock; sleep 0.02; done") });
    await e.until(() => e.outBytes > 0, "session output");
    await quiesce(m);
    const sessionBytes = e.outBytes;
    await assertSilent(m, 300, "nothing after QUIESCED");
    m.send(encodeFrame(T.RESUME));
    const held = await m.nextControl();
    assert.equal(held.type, T.STDOUT);
    assert.match(held.payload.toString(), /^(tick\n){2,}$/, "ticks written while quiesced, in one read");
    await e.until(() => e.outBytes > sessionBytes, "session output after RESUME");
    e.kill(9);
    assert.deepEqual(await e.exit, { status: 137, signal: 9 });
  });
});

test("an exit while quiesced: output and EXIT come after RESUME; the waits for output and POWEROFF start over", async () => {
  await withMachine({ version: 3, workload: sh("sleep 0.2; echo bye; exit 5") }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    const e = m.exec(1, { args: sh("sleep 0.2; echo session-bye; exit 6") });
    await e.ready;
    await quiesce(m);
    // Both exit now; the 500 ms wait for their output would run out meanwhile. A
    // frame (dropped) wakes the guest up after that, as anything may.
    await assertSilent(m, 700, "no output and no EXIT while quiesced");
    m.send(encodeFrame(T.SIGNAL, u32(15)));
    await assertSilent(m, 300, "still nothing");
    m.send(encodeFrame(T.RESUME));
    const out = await m.nextControl();
    assert.equal(out.type, T.STDOUT);
    assert.equal(out.payload.toString(), "bye\n");
    const exit = await m.nextControl();
    assert.equal(exit.type, T.EXIT);
    assert.equal(exit.payload.readInt32BE(0), 5);
    assert.deepEqual(await e.exit, { status: 6, signal: 0 });
    assert.equal(e.stdout(), "session-bye\n");

    // Without STAY_UP the machine powers off 2 s after EXIT; a quiesce restarts the 2 s.
    await quiesce(m);
    await sleep(2200);
    m.send(encodeFrame(T.SIGNAL, u32(15)));
    await sleep(300);
    assert.equal(m.s.child.exitCode, null, "still up while quiesced");
    const resumed = Date.now();
    m.send(encodeFrame(T.RESUME));
    assert.equal((await m.s.exited).code, 0);
    const waited = Date.now() - resumed;
    assert.ok(waited > 1000 && waited < 4000, `powered off ${waited} ms after RESUME`);
  });
});

test("IDENTITY ends the exec sessions without EXIT, leaves the workload running, answers an empty IDENTITY_RESULT", async () => {
  const hostname = os.hostname();
  await withMachine({ version: 3, workload: TICKS }, async (m) => {
    const workloadPid = (await m.nextControl()).payload.readUInt32BE(0);
    const plain = m.exec(1, { args: ["sleep", "30"], stdin: true });
    const tty = m.exec(2, { args: ["sleep", "30"], tty: { rows: 24, cols: 80 }, stdin: true });
    const group = m.exec(3, { args: sh("sleep 30 & echo $!; wait") });
    await group.until(() => group.stdout().endsWith("\n"), "the background pid");
    await Promise.all([plain.ready, tty.ready]);
    const pids = [plain.pid, tty.pid, group.pid, Number(group.stdout())];

    await quiesce(m);
    m.send(
      encodeIdentity({
        hostname: "fork-1",
        mac: "52:54:00:12:34:56",
        net: { addr: "10.88.0.6/16", gateway: "10.88.0.1", dns: ["10.88.0.1"], hosts: ["10.88.0.6 fork-1"] },
        clockNs: Y2001_NS,
        seed: crypto.randomBytes(64),
      }),
    );
    const result = await m.nextControl();
    assert.equal(result.type, T.IDENTITY_RESULT, "IDENTITY_RESULT comes before the held output");
    assert.equal(result.payload.length, 0, result.payload.toString());
    await waitGone(pids);
    assert.equal((await m.nextControl()).type, T.STDOUT, "the workload's output flows again");
    process.kill(workloadPid, 0);
    await sleep(700);
    for (const e of [plain, tty, group]) assert.equal(e.status, undefined, `no EXIT on stream ${e.stream}`);
    assert.equal(os.hostname(), hostname, "host-test mode sets no hostname");
    assert.ok(Date.now() > AFTER_2020_MS, "host-test mode sets no clock");

    // The streams are free again; IDENTITY without QUIESCE works the same.
    const again = m.exec(1, { args: ["echo", "again"] });
    assert.deepEqual(await again.exit, { status: 0, signal: 0 });
    assert.equal(again.stdout(), "again\n");
    const live = m.exec(4, { args: ["sleep", "30"] });
    await live.ready;
    m.send(encodeIdentity());
    const f = await nextNotOutput(m);
    assert.equal(f.type, T.IDENTITY_RESULT);
    assert.equal(f.payload.length, 0);
    await waitGone([live.pid]);
    await sleep(100);
    assert.equal(live.status, undefined, "no EXIT");
  });
});

test("an IDENTITY that breaks a rule: IDENTITY_RESULT CONFIG or NET, no EXIT, the machine stays up", async () => {
  await withMachine({ version: 3 }, async (m) => {
    const workloadPid = (await m.nextControl()).payload.readUInt32BE(0);
    const cases = [
      [
        encodeIdentity({ mac: "01:00:5e:00:00:01", net: { addr: "10.88.0.6/16" } }),
        /^NET: NET_MAC "01:00:5e:00:00:01" is not a unicast address$/,
      ],
      [encodeIdentity({ mac: "52:54:00:12:34" }), /^NET: NET_MAC "52:54:00:12:34" is not aa:bb:cc:dd:ee:ff$/],
      [encodeIdentity({ net: { gateway: "10.0.0.1" } }), /^NET: NET_GATEWAY without NET_ADDR$/],
      [encodeIdentity({ seed: Buffer.alloc(8) }), /^CONFIG: SEED record is 8 bytes \(must be 16-512\)$/],
      [encodeIdentity({ extra: [record(TAG.CLOCK, u32(1))] }), /^CONFIG: CLOCK record is 4 bytes \(must be 8\)$/],
      [encodeIdentity({ hostname: "" }), /^CONFIG: HOSTNAME is empty$/],
      [encodeIdentity({ version: 2 }), /^CONFIG: IDENTITY version 2 is not the agreed version 3$/],
      [encodeFrame(T.IDENTITY, Buffer.alloc(1)), /^CONFIG: IDENTITY payload of 1 bytes has no version$/],
    ];
    const sessions = [];
    for (const [i, [frame, message]] of cases.entries()) {
      const e = m.exec(i + 1, { args: ["sleep", "30"] });
      await e.ready;
      sessions.push(e);
      if (i % 2 === 0) await quiesce(m); // quiesced or not: the same
      m.send(frame);
      const result = await m.nextControl();
      assert.equal(result.type, T.IDENTITY_RESULT);
      assert.match(result.payload.toString(), message);
      await waitGone([e.pid]);
    }
    await sleep(600);
    assert.ok(
      sessions.every((e) => e.status === undefined),
      "sessions end without EXIT",
    );
    assert.equal(m.control.length, 0, "no EXIT, no ERROR");
    process.kill(workloadPid, 0);
    m.send(encodeFrame(T.POWEROFF));
    assert.equal((await m.s.exited).code, 0);
  });
});

test("CONFIG v3: NET_MAC, CLOCK and SEED are accepted (not applied in host-test mode); bad ones are ERROR + EXIT 127", async () => {
  const hostname = os.hostname();
  const ok = await run({
    args: ["echo", "up"],
    version: 3,
    hostname: "template",
    net: { addr: "10.88.0.5/16", gateway: "10.88.0.1" },
    mac: "52:54:00:AB:cd:EF",
    clockNs: Y2001_NS,
    seed: crypto.randomBytes(512),
  });
  assert.deepEqual(ok.types, [T.READY, T.STDOUT, T.EXIT]);
  assert.equal(ok.stdout, "up\n");
  assert.equal(os.hostname(), hostname);
  assert.ok(Date.now() > AFTER_2020_MS);

  const bad = [
    [{ seed: Buffer.alloc(15) }, /^CONFIG: SEED record is 15 bytes \(must be 16-512\)$/],
    [{ seed: Buffer.alloc(513) }, /^CONFIG: SEED record is 513 bytes \(must be 16-512\)$/],
    [{ seed: Buffer.alloc(16), extra: [record(TAG.SEED, Buffer.alloc(16))] }, /^CONFIG: more than one SEED record$/],
    [{ extra: [record(TAG.CLOCK, Buffer.alloc(9))] }, /^CONFIG: CLOCK record is 9 bytes \(must be 8\)$/],
    [{ clockNs: 1n, extra: [record(TAG.CLOCK, u64(2))] }, /^CONFIG: more than one CLOCK record$/],
    [{ mac: "00:00:00:00:00:00" }, /^NET: NET_MAC "00:00:00:00:00:00" is not a unicast address$/],
    [{ mac: "52:54:00:ab:cd:ef:00" }, /^NET: NET_MAC "52:54:00:ab:cd:ef:00" is not aa:bb:cc:dd:ee:ff$/],
    [{ mac: "52:54:00:ab:cd:ef", extra: [record(TAG.NET_MAC, "52:54:00:ab:cd:ee")] }, /^NET: more than one NET_MAC/],
  ];
  for (const [records, message] of bad) {
    const r = await run({ args: ["/bin/true"], version: 3, ...records });
    assert.deepEqual(r.types, [T.ERROR, T.EXIT]);
    assert.match(r.errors[0], message);
    assert.equal(r.status, 127);
  }
});

test("a v2 or v1 CONFIG keeps its version: v3 frames are unknown types, v3 records unknown tags", async () => {
  const junk = { mac: "junk", extra: [record(TAG.CLOCK, Buffer.alloc(3)), record(TAG.SEED, Buffer.alloc(1))] };
  for (const version of [1, 2]) {
    await withMachine({ version, workload: TICKS, config: junk }, async (m) => {
      assert.equal((await m.nextControl()).type, T.READY);
      const e = version === 2 ? m.exec(1, { args: ["sleep", "30"] }) : undefined;
      await e?.ready;
      m.send(encodeFrame(T.QUIESCE));
      m.send(encodeIdentity({ version }));
      m.send(encodeFrame(T.RESUME));
      m.send(encodeFrame(T.QUIESCE, Buffer.alloc(0), 5)); // another stream: ignored as well
      await sleep(400);
      const types = new Set(m.control.splice(0).map((f) => f.type));
      assert.deepEqual([...types], [T.STDOUT], "output went on: no QUIESCED, no IDENTITY_RESULT");
      if (e) {
        assert.equal(e.status, undefined, "the session lives");
        e.kill(9);
        assert.deepEqual(await e.exit, { status: 137, signal: 9 });
      }
    });
  }
});

test("v3 frame types on a stream other than 0 end the channel", async () => {
  for (const type of [T.QUIESCE, T.QUIESCED, T.RESUME, T.IDENTITY, T.IDENTITY_RESULT]) {
    for (const quiesced of [false, true]) {
      await withMachine({ version: 3 }, async (m) => {
        assert.equal((await m.nextControl()).type, T.READY);
        if (quiesced) await quiesce(m);
        const payload = type === T.IDENTITY ? encodeRecords({ version: 3 }) : Buffer.alloc(0);
        m.send(encodeFrame(type, payload, 2));
        assert.notEqual((await m.s.exited).code, 0);
        assert.match(m.s.log(), new RegExp(`protocol error: frame type ${type} on stream 2`));
      });
    }
  }
});

test("QUIESCE and IDENTITY before CONFIG are ignored; a QUIESCE in the same read as CONFIG is answered", async () => {
  const s = await startSession();
  try {
    assert.equal((await s.next()).type, T.HELLO);
    s.send(Buffer.concat([encodeFrame(T.QUIESCE), encodeIdentity({ hostname: "x" }), encodeFrame(T.RESUME)]));
    await sleep(100);
    s.send(Buffer.concat([encodeConfig({ args: ["sleep", "30"], version: 3 }), encodeFrame(T.QUIESCE)]));
    assert.equal((await s.next()).type, T.READY);
    assert.equal((await s.next()).type, T.QUIESCED);
    await assert.rejects(s.next(300), /no frame within/);
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
  } finally {
    await s.close();
  }
});

test("while quiesced other frames are dropped and a second QUIESCE is ignored; POWEROFF powers off", async () => {
  await withMachine({ version: 3 }, async (m) => {
    const workloadPid = (await m.nextControl()).payload.readUInt32BE(0);
    m.send(encodeFrame(T.RESUME)); // not quiesced: ignored
    await quiesce(m);
    m.send(encodeFrame(T.QUIESCE));
    m.send(encodeFrame(T.SIGNAL, u32(15)));
    m.send(encodeFrame(T.SIGNAL, Buffer.alloc(1))); // dropped unread: no protocol error
    m.send(encodeFrame(T.EXEC, encodeRecords({ version: 3, args: ["echo", "x"] }), 1));
    m.send(encodeConfig({ args: ["true"], version: 3 }));
    await assertSilent(m, 300, "nothing while quiesced, not even a second QUIESCED");
    m.send(encodeFrame(T.RESUME));
    await assertSilent(m, 300, "no READY for the dropped EXEC, no EXIT for the dropped SIGNAL");
    process.kill(workloadPid, 0);
    await quiesce(m);
    m.send(encodeFrame(T.POWEROFF));
    assert.equal((await m.s.exited).code, 0);
    assert.ok(gone(workloadPid));
    assert.equal(m.control.length, 0, "nothing after QUIESCED");
  });
});
