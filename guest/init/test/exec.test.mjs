// Host-side tests of protocol v2 (docs/PROTOCOL.md): exec sessions, flow control and
// network records, against the real mm-init in host-test mode. The client
// (machine.mjs) keeps to the guest's credit and checks that the guest keeps to ours.

import assert from "node:assert/strict";
import crypto from "node:crypto";
import { test } from "node:test";
import {
  encodeFrame,
  encodeRecords,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
  record,
  sleep,
  T,
  TAG,
  u32,
  winsize,
} from "./harness.mjs";
import { STAY_UP, sh, withMachine } from "./machine.mjs";

test("two concurrent sessions: interleaved output, each on its own stream", async () => {
  await withMachine({}, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    const loop = (tag) => sh(`for i in 1 2 3 4 5; do echo ${tag}$i; sleep 0.05; done; echo ${tag}-err >&2; exit 3`);
    const a = m.exec(1, { args: loop("a") });
    const b = m.exec(7, { args: loop("b") });
    const [ea, eb] = await Promise.all([a.exit, b.exit]);
    assert.deepEqual(ea, { status: 3, signal: 0 });
    assert.deepEqual(eb, { status: 3, signal: 0 });
    assert.equal(a.stdout(), "a1\na2\na3\na4\na5\n");
    assert.equal(b.stdout(), "b1\nb2\nb3\nb4\nb5\n");
    assert.equal(Buffer.concat(a.err).toString(), "a-err\n");
    assert.equal(a.frames[0].type, T.READY);
    assert.ok(a.pid > 1 && b.pid > 1 && a.pid !== b.pid);
    // Interleaved: b's output started before a's ended.
    assert.ok(m.outputOrder.indexOf(7) < m.outputOrder.lastIndexOf(1), `order ${m.outputOrder}`);
    // the workload was not disturbed
    assert.equal(m.control.length, 0);
  });
});

test("stdin round trip of 20 MB through cat, within both windows, checksum intact", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const data = crypto.randomBytes(20 * 1024 * 1024);
    const e = m.exec(1, { args: ["cat"], stdin: true });
    const hash = crypto.createHash("sha256");
    let received = 0;
    const onFrame = e.onFrame.bind(e);
    e.onFrame = (f) => {
      if (f.type === T.STDOUT) {
        hash.update(f.payload);
        received += f.payload.length;
        e.out = []; // keep memory flat; the hash has it
      }
      onFrame(f);
    };
    await e.ready;
    await e.write(data);
    e.end();
    assert.deepEqual(await e.exit, { status: 0, signal: 0 });
    assert.equal(received, data.length);
    assert.equal(hash.digest("hex"), crypto.createHash("sha256").update(data).digest("hex"));
    assert.ok(e.windowsReceived > 0, "the guest granted stdin credit");
  });
});

test("a session without credit stalls alone: other sessions and the workload go on", async () => {
  await withMachine({ workload: sh("while :; do echo tick; sleep 0.05; done") }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    const total = 1_000_000;
    const stalled = m.exec(1, { args: ["head", "-c", String(total), "/dev/zero"] }, { grant: false });
    await stalled.until(() => stalled.outBytes === INITIAL_WINDOW, "a full window of output");
    await sleep(300);
    assert.equal(stalled.outBytes, INITIAL_WINDOW, "nothing beyond the window");
    m.control.length = 0;
    const other = m.exec(2, { args: ["echo", "still here"] });
    assert.deepEqual(await other.exit, { status: 0, signal: 0 });
    assert.equal(other.stdout(), "still here\n");
    const tick = await m.nextControl();
    assert.equal(tick.type, T.STDOUT, "the workload's output still flows");
    assert.equal(stalled.status, undefined, "the stalled session is still running");
    stalled.grantOutput(total);
    assert.deepEqual(await stalled.exit, { status: 0, signal: 0 });
    assert.equal(stalled.outBytes, total);
  });
});

test("a slow reader loses nothing: EXIT waits while the host grants no credit", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const size = INITIAL_WINDOW + 40_000; // the rest fits the pipe: the process exits
    const e = m.exec(1, { args: ["head", "-c", String(size), "/dev/zero"] }, { grant: false });
    await e.until(() => e.outBytes === INITIAL_WINDOW, "a full window");
    await sleep(700); // past the 500 ms drain wait
    assert.equal(e.status, undefined, "no EXIT while output is pending");
    e.grantOutput(1000);
    await e.until(() => e.outBytes === INITIAL_WINDOW + 1000, "the next 1000 bytes");
    await sleep(700);
    assert.equal(e.status, undefined, "still no EXIT");
    e.grantOutput(size);
    assert.deepEqual(await e.exit, { status: 0, signal: 0 });
    assert.equal(e.outBytes, size);
  });
});

test("TTY: stty size shows the initial size and the size after RESIZE; tty is /dev/pts/N", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const t = m.exec(1, { args: ["tty"], tty: { rows: 33, cols: 77 } });
    assert.deepEqual(await t.exit, { status: 0, signal: 0 });
    assert.match(t.stdout(), /^\/dev\/pts\/\d+\r\n$/);

    const e = m.exec(2, {
      args: sh('stty size; echo "TERM=$TERM"; read line; stty size'),
      tty: { rows: 33, cols: 77 },
      stdin: true,
    });
    await e.until(() => e.stdout().includes("TERM=xterm"), "first size");
    assert.match(e.stdout(), /^33 77\r\nTERM=xterm\r\n/);
    e.resize(40, 100);
    await e.write(Buffer.from("go\n"));
    assert.deepEqual(await e.exit, { status: 0, signal: 0 });
    assert.match(e.stdout(), /go\r\n40 100\r\n$/);
    assert.equal(e.err.length, 0, "a TTY has no separate stderr");
  });
});

test("TTY: ^C from the host reaches the process group; end of input is ^D", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const sleeper = m.exec(1, { args: ["sleep", "30"], tty: { rows: 24, cols: 80 }, stdin: true });
    await sleeper.ready;
    await sleep(100);
    await sleeper.write(Buffer.from([3]));
    assert.deepEqual(await sleeper.exit, { status: 130, signal: 2 }, m.s.log());

    const cat = m.exec(2, { args: ["cat"], tty: { rows: 24, cols: 80 }, stdin: true });
    await cat.ready;
    await cat.write(Buffer.from("hello\n"));
    await cat.until(() => cat.stdout() === "hello\r\nhello\r\n", "echo and cat's copy");
    cat.end();
    assert.deepEqual(await cat.exit, { status: 0, signal: 0 }, m.s.log());
  });
});

test("SIGNAL ends a session's process group (EXIT 143) while the workload keeps running", async () => {
  await withMachine({}, async (m) => {
    const ready = await m.nextControl();
    const workloadPid = ready.payload.readUInt32BE(0);
    const e = m.exec(3, { args: sh("sleep 30 & sleep 30; echo not reached") });
    await e.ready;
    await sleep(100);
    e.kill(15);
    assert.deepEqual(await e.exit, { status: 143, signal: 15 });
    assert.equal(e.stdout(), "");
    process.kill(workloadPid, 0); // still there
    assert.equal(m.control.length, 0, "no frame on stream 0");
    e.kill(15); // after EXIT: no such session, ignored
    const again = m.exec(3, { args: ["true"] }); // the stream may be reused after EXIT
    assert.deepEqual(await again.exit, { status: 0, signal: 0 });
  });
});

test("a session's spawn failures are ERROR + EXIT on its stream; the channel stays up", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const missing = m.exec(1, { args: ["mm-no-such-program"] });
    assert.deepEqual(await missing.exit, { status: 127, signal: 0 });
    assert.deepEqual(
      missing.frames.map((f) => f.type),
      [T.ERROR, T.EXIT],
    );
    assert.match(missing.errors[0], /^EXEC_NOT_FOUND: mm-no-such-program: executable file not found in \$PATH/);

    const badEnv = m.exec(2, { args: ["true"], env: ["NOEQUALS"] });
    assert.deepEqual(await badEnv.exit, { status: 127, signal: 0 });
    assert.match(badEnv.errors[0], /^CONFIG: ENV record 1 is not KEY=VALUE/);

    const badTty = m.exec(3, { args: ["true"], extra: [record(TAG.TTY, Buffer.alloc(3))] });
    assert.deepEqual(await badTty.exit, { status: 127, signal: 0 });
    assert.match(badTty.errors[0], /^CONFIG: TTY record is 3 bytes/);

    const badCwd = m.exec(4, { args: ["true"], cwd: "/nonexistent" });
    assert.deepEqual(await badCwd.exit, { status: 127, signal: 0 });
    assert.match(badCwd.errors[0], /^CWD: /);

    const ok = m.exec(1, { args: ["echo", "fine"], env: ["A=1"] });
    assert.deepEqual(await ok.exit, { status: 0, signal: 0 });
    assert.equal(ok.stdout(), "fine\n");
  });
});

test("sessions beyond 64 are ERROR LIMIT + EXIT 126", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const running = [];
    for (let i = 1; i <= 64; i++) running.push(m.exec(i, { args: ["sleep", "30"] }));
    await Promise.all(running.map((e) => e.ready));
    assert.ok(running.every((e) => e.pid > 0));
    const over = m.exec(65, { args: ["true"] });
    assert.deepEqual(await over.exit, { status: 126, signal: 0 });
    assert.deepEqual(over.errors, ["LIMIT: more than 64 exec sessions"]);
    running[0].kill(9);
    await running[0].exit;
    const fits = m.exec(66, { args: ["true"] });
    assert.deepEqual(await fits.exit, { status: 0, signal: 0 });
  });
});

test("stdin the process no longer reads is dropped and credited; no STDIN record means /dev/null", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const e = m.exec(1, { args: ["head", "-c", "10"], stdin: true });
    await e.ready;
    await e.write(crypto.randomBytes(2 * 1024 * 1024)); // completes only if credit keeps coming
    assert.deepEqual(await e.exit, { status: 0, signal: 0 });
    assert.equal(e.outBytes, 10);

    const n = m.exec(2, { args: ["wc", "-c"] });
    assert.deepEqual(await n.exit, { status: 0, signal: 0 });
    assert.equal(n.stdout().trim(), "0");
  });
});

test("STDIN beyond the granted credit ends the channel", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    const e = m.exec(1, { args: ["sleep", "30"], stdin: true });
    await e.ready;
    // The pipe takes at most 64 KiB, so the guest cannot have granted more than that.
    const chunk = Buffer.alloc(MAX_PAYLOAD);
    for (let i = 0; i < 6; i++) m.send(encodeFrame(T.STDIN, chunk, 1));
    assert.notEqual((await m.s.exited).code, 0);
    assert.match(m.s.log(), /STDIN of 65536 bytes on stream 1 exceeds its credit/);
  });
});

test("EXEC on stream 0 or on a stream in use ends the channel", async () => {
  await withMachine({}, async (m) => {
    await m.nextControl();
    m.send(encodeFrame(T.EXEC, encodeRecords({ version: 2, args: ["true"] }), 0));
    assert.notEqual((await m.s.exited).code, 0);
    assert.match(m.s.log(), /EXEC on stream 0/);
  });
  await withMachine({}, async (m) => {
    await m.nextControl();
    const e = m.exec(5, { args: ["sleep", "30"] });
    await e.ready;
    m.send(encodeFrame(T.EXEC, encodeRecords({ version: 2, args: ["true"] }), 5));
    assert.notEqual((await m.s.exited).code, 0);
    assert.match(m.s.log(), /EXEC on stream 5, which is in use/);
  });
});

test("short SIGNAL, RESIZE or WINDOW payloads end the channel; frames for unknown streams are ignored", async () => {
  for (const type of [T.SIGNAL, T.RESIZE, T.WINDOW]) {
    await withMachine({}, async (m) => {
      await m.nextControl();
      m.send(encodeFrame(T.WINDOW, u32(5), 9)); // no session 9: ignored
      m.send(encodeFrame(T.STDIN, Buffer.from("x"), 9));
      m.send(encodeFrame(T.RESIZE, winsize(1, 1), 9));
      const e = m.exec(1, { args: ["true"] });
      assert.deepEqual(await e.exit, { status: 0, signal: 0 });
      m.send(encodeFrame(type, Buffer.alloc(3), 1));
      assert.notEqual((await m.s.exited).code, 0, `type ${type}`);
    });
  }
});

test("a v1 CONFIG keeps v1: EXEC is an unknown type and ignored", async () => {
  await withMachine({ version: 1, workload: sh("sleep 0.3; echo done") }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    m.send(encodeFrame(T.EXEC, encodeRecords({ version: 1, args: ["echo", "no"] }), 1));
    m.send(encodeFrame(T.WINDOW, Buffer.alloc(0), 1));
    const out = await m.nextControl();
    assert.equal(out.type, T.STDOUT);
    assert.equal(out.payload.toString(), "done\n");
    assert.equal((await m.nextControl()).type, T.EXIT);
  });
});

test("sessions outlive the workload with STAY_UP, and end with the machine at POWEROFF", async () => {
  await withMachine({ workload: ["true"], flags: STAY_UP }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    assert.equal((await m.nextControl()).type, T.EXIT);
    await sleep(100);
    const e = m.exec(1, { args: ["echo", "after"] });
    assert.deepEqual(await e.exit, { status: 0, signal: 0 });
    assert.equal(e.stdout(), "after\n");
  });
  await withMachine({ workload: ["true"] }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    assert.equal((await m.nextControl()).type, T.EXIT);
    const e = m.exec(1, { args: ["sleep", "30"] });
    const pid = await e.ready;
    m.send(encodeFrame(T.POWEROFF));
    assert.equal((await m.s.exited).code, 0);
    assert.throws(() => process.kill(pid, 0), { code: "ESRCH" });
  });
});

test("NET records: valid ones are accepted (not applied in host-test mode), bad ones are ERROR NET + EXIT 127", async () => {
  const net = {
    addr: "10.88.0.5/16",
    gateway: "10.88.0.1",
    dns: ["10.88.0.1", "2001:db8::53"],
    hosts: ["10.88.0.5 web"],
  };
  await withMachine({ workload: ["echo", "up"], net }, async (m) => {
    assert.equal((await m.nextControl()).type, T.READY);
    assert.equal((await m.nextControl()).payload.toString(), "up\n");
  });
  const bad = [
    [{ addr: "10.88.0.5/33" }, /^NET: NET_ADDR "10.88.0.5\/33": prefix length must be 1-32/],
    [{ addr: "10.88.0.5" }, /^NET: NET_ADDR "10.88.0.5" is not a.b.c.d\/len/],
    [{ addr: "10.88.0.5/16", gateway: "10.99.0.1" }, /^NET: NET_GATEWAY is not another address/],
    [{ dns: ["1.1.1.1", "1.1.1.1", "1.1.1.1", "1.1.1.1"] }, /^NET: more than 3 DNS records/],
    [{ hosts: ["10.0.0.1 web\n10.0.0.2 evil"] }, /^NET: HOSTS .*bad host name/s],
  ];
  for (const [badNet, message] of bad) {
    await withMachine({ workload: ["true"], net: badNet, flags: STAY_UP }, async (m) => {
      const error = await m.nextControl();
      assert.equal(error.type, T.ERROR);
      assert.match(error.payload.toString(), message);
      const exit = await m.nextControl();
      assert.equal(exit.type, T.EXIT);
      assert.equal(exit.payload.readInt32BE(0), 127);
      // No sessions are served after a NET error (and STAY_UP is ignored: below).
      m.exec(1, { args: ["true"] });
      await sleep(100);
      m.send(encodeFrame(T.POWEROFF));
      assert.equal((await m.s.exited).code, 0);
    });
  }
  await withMachine({ workload: ["true"], net: { addr: "300.1.1.1/8" }, flags: STAY_UP }, async (m) => {
    assert.equal((await m.nextControl()).type, T.ERROR);
    assert.equal((await m.nextControl()).type, T.EXIT);
    const started = Date.now();
    assert.equal((await m.s.exited).code, 0);
    assert.ok(Date.now() - started < 4000, "powered off without POWEROFF, STAY_UP notwithstanding");
  });
});
