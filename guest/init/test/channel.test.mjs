// Host-side tests of mm-init's channel protocol (docs/PROTOCOL.md): the real binary
// runs in host-test mode (not PID 1) against a unix socket server played by this file.
// Run: make -C guest/init && node --test guest/init/test/ (or make -C guest/init check)

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import {
  BIN,
  collectUntilExit,
  DEFAULT_PATH,
  encodeConfig,
  encodeFrame,
  IS_ROOT,
  MAX_PAYLOAD,
  run,
  sh,
  sleep,
  startSession,
  T,
  u32,
} from "./harness.mjs";

// ---- tests ----

test("HELLO announces versions 1..5 and the agent name", async () => {
  const s = await startSession();
  try {
    const hello = await s.next();
    assert.equal(hello.type, T.HELLO);
    assert.equal(hello.stream, 0);
    assert.equal(hello.payload.readUInt16BE(0), 1);
    assert.equal(hello.payload.readUInt16BE(2), 5);
    assert.equal(hello.payload.subarray(4).toString(), "mm-init/0.5");
  } finally {
    await s.close();
  }
});

test("runs the workload: READY first, then stdout, stderr and EXIT status", async () => {
  const r = await run(sh("echo out; echo err >&2; exit 7"));
  assert.equal(r.types[0], T.READY);
  assert.ok(r.ready > 1);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
  assert.equal(r.status, 7);
  assert.equal(r.signal, 0);
  assert.deepEqual(r.errors, []);
  assert.ok(r.frames.every((f) => f.stream === 0));
});

test("a missing binary is ERROR EXEC_NOT_FOUND and EXIT 127", async () => {
  const byPath = await run({ args: ["/nonexistent/nope"] });
  assert.deepEqual(byPath.types, [T.ERROR, T.EXIT]);
  assert.match(byPath.errors[0], /^EXEC_NOT_FOUND: \/nonexistent\/nope: /);
  assert.equal(byPath.status, 127);

  const byName = await run({ args: ["mm-no-such-program"] });
  assert.match(byName.errors[0], /^EXEC_NOT_FOUND: mm-no-such-program: .*PATH/);
  assert.equal(byName.status, 127);
});

test("a long ERROR is cut to 1024 bytes of valid UTF-8", async () => {
  const r = await run({ args: [`/${"é/".repeat(400)}x`] });
  const payload = r.frames.find((f) => f.type === T.ERROR).payload;
  assert.ok(payload.length <= 1024 && payload.length > 1000, `${payload.length} bytes`);
  assert.ok(Buffer.from(payload.toString("utf8")).equals(payload), "valid UTF-8");
  assert.equal(r.status, 127);
});

test("a file that cannot be executed is ERROR EXEC_DENIED and EXIT 126", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mm-init-noexec-"));
  try {
    fs.writeFileSync(path.join(dir, "prog"), "#!/bin/sh\necho hi\n", { mode: 0o644 });
    const r = await run({ args: [path.join(dir, "prog")] });
    assert.match(r.errors[0], /^EXEC_DENIED: .*prog: Permission denied/);
    assert.equal(r.status, 126);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("argv[0] is looked up in the workload PATH, not mm-init's", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mm-init-path-"));
  try {
    fs.writeFileSync(path.join(dir, "mm-test-prog"), '#!/bin/sh\necho "found $0 $1"\n', { mode: 0o755 });
    const r = await run({ args: ["mm-test-prog", "arg1"], env: [`PATH=/nonexistent:${dir}:/bin`] });
    assert.equal(r.stdout, `found ${dir}/mm-test-prog arg1\n`);
    assert.equal(r.status, 0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("SIGNAL SIGTERM ends `sleep 30` with EXIT 143 signal 15", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig({ args: ["sleep", "30"] }));
    const ready = await s.next();
    assert.equal(ready.type, T.READY);
    s.send(encodeFrame(T.SIGNAL, u32(15)));
    const r = await collectUntilExit(s);
    assert.equal(r.status, 143);
    assert.equal(r.signal, 15);
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
  } finally {
    await s.close();
  }
});

test("signals sent to mm-init are forwarded to the workload", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig(sh('trap "echo got-usr1; exit 3" USR1; while :; do sleep 0.05; done')));
    assert.equal((await s.next()).type, T.READY);
    await sleep(200); // let sh install its trap
    s.child.kill("SIGUSR1");
    const r = await collectUntilExit(s);
    assert.equal(r.stdout, "got-usr1\n");
    assert.equal(r.status, 3);
  } finally {
    await s.close();
  }
});

test("a frame longer than 5+65536 ends the channel and mm-init exits non-zero", async () => {
  for (const phase of ["before CONFIG", "while running"]) {
    const s = await startSession();
    try {
      await s.next();
      if (phase === "while running") {
        s.send(encodeConfig({ args: ["sleep", "30"] }));
        assert.equal((await s.next()).type, T.READY);
      }
      const header = Buffer.alloc(9);
      header.writeUInt32BE(5 + MAX_PAYLOAD + 1, 0);
      header.writeUInt8(T.STDIN, 4);
      s.send(header);
      assert.equal(await s.next(), null, "guest closes the channel");
      const { code } = await s.exited;
      assert.notEqual(code, 0, phase);
      assert.match(s.log(), /frame length 65542 out of range/);
    } finally {
      await s.close();
    }
  }
});

test("a frame shorter than 5 bytes is a protocol error too", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(Buffer.from([0, 0, 0, 4, 1, 0, 0, 0]));
    assert.notEqual((await s.exited).code, 0);
  } finally {
    await s.close();
  }
});

test("a CONFIG with 257 ARGs is ERROR CONFIG and EXIT 127; 256 are fine", async () => {
  const many = (n) => ["/bin/true", ...Array.from({ length: n - 1 }, (_, i) => `a${i}`)];
  const bad = await run({ args: many(257) });
  assert.deepEqual(bad.types, [T.ERROR, T.EXIT]);
  assert.match(bad.errors[0], /^CONFIG: more than 256 ARG records/);
  assert.equal(bad.status, 127);

  const ok = await run({ args: many(256) });
  assert.equal(ok.status, 0);
});

test("CONFIG limits: NUL in a string, a relative CWD, an unknown version", async () => {
  const nul = await run({ args: ["/bin/true"], env: ["A=x\0y"] });
  assert.match(nul.errors[0], /^CONFIG: .*NUL/);
  assert.equal(nul.status, 127);
  const rel = await run({ args: ["/bin/true"], cwd: "tmp" });
  assert.match(rel.errors[0], /^CONFIG: .*not absolute/);
  const v6 = await run({ args: ["/bin/true"], version: 6 });
  assert.match(v6.errors[0], /^CONFIG: version 6 is not supported \(this agent speaks 1\.\.5\)/);
  const long = await run({ args: ["/bin/echo", "x".repeat(4097)] });
  assert.match(long.errors[0], /^CONFIG: ARG record is 4097 bytes/);
});

test("the environment is exactly the ENV records, plus default PATH and HOME", async () => {
  const home = os.userInfo().homedir || "/";
  const plain = await run({ args: ["/usr/bin/env"], env: ["FOO=bar", "EMPTY="] });
  assert.deepEqual(plain.stdout.trim().split("\n"), ["FOO=bar", "EMPTY=", `PATH=${DEFAULT_PATH}`, `HOME=${home}`]);

  const custom = await run({ args: ["/usr/bin/env"], env: ["PATH=/custom:/bin", "HOME=/h"] });
  assert.deepEqual(custom.stdout.trim().split("\n"), ["PATH=/custom:/bin", "HOME=/h"]);
});

test("CWD sets the working directory (default /); a bad one is ERROR CWD, 127", async () => {
  assert.equal((await run(sh("pwd", { cwd: "/tmp" }))).stdout, "/tmp\n");
  assert.equal((await run(sh("pwd"))).stdout, "/\n");
  const bad = await run({ args: ["/bin/true"], cwd: "/nonexistent/dir" });
  assert.match(bad.errors[0], /^CWD: \/nonexistent\/dir: No such file or directory/);
  assert.equal(bad.status, 127);
});

test("USER: numeric uid, uid:gid and names from /etc/passwd", {
  skip: !IS_ROOT && "needs root to change user",
}, async () => {
  const numeric = await run(sh("id -u; id -g; echo $HOME", { user: "65534" }));
  const nobody = fs
    .readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .find((l) => l.split(":")[2] === "65534");
  const [, , , gid = "0", , home = "/"] = nobody?.split(":") ?? [];
  assert.equal(numeric.stdout, `65534\n${nobody ? gid : 0}\n${nobody ? home : "/"}\n`);

  const pair = await run(sh("id -u; id -g; id -G", { user: "4242:4343" }));
  assert.equal(pair.stdout, "4242\n4343\n4343\n");

  if (nobody) {
    const byName = await run(sh("id -u", { user: nobody.split(":")[0] }));
    assert.equal(byName.stdout, "65534\n");
  }
  const unknown = await run({ args: ["/bin/true"], user: "mm-no-such-user" });
  assert.match(unknown.errors[0], /^USER: unknown user "mm-no-such-user"/);
  assert.equal(unknown.status, 127);
});

test("output larger than one frame is split into frames of at most 65536 bytes", async () => {
  const r = await run({ args: ["/usr/bin/head", "-c", "200000", "/dev/zero"] });
  const out = r.frames.filter((f) => f.type === T.STDOUT);
  assert.equal(
    out.reduce((n, f) => n + f.payload.length, 0),
    200000,
  );
  assert.ok(out.every((f) => f.payload.length <= MAX_PAYLOAD));
});

test("EXIT comes ≤ 500 ms after exit when a background process holds stdout", async () => {
  const started = Date.now();
  const r = await run(sh("sleep 5 & echo hi"));
  assert.equal(r.stdout, "hi\n");
  assert.equal(r.status, 0);
  assert.ok(Date.now() - started < 3000, "EXIT did not wait for the background sleep");
});

test("without POWEROFF, mm-init shuts down 2 s after EXIT", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig({ args: ["/bin/true"] }));
    await collectUntilExit(s);
    const exitAt = Date.now();
    const { code } = await s.exited;
    const waited = Date.now() - exitAt;
    assert.equal(code, 0);
    assert.ok(waited >= 1800 && waited < 4000, `waited ${waited} ms`);
  } finally {
    await s.close();
  }
});

test("STAY_UP keeps serving after EXIT until POWEROFF", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig({ args: ["/bin/true"], flags: 1 }));
    const r = await collectUntilExit(s);
    assert.equal(r.status, 0);
    await sleep(2500);
    assert.equal(s.child.exitCode, null, "still running after 2.5 s");
    s.send(encodeFrame(T.SIGNAL, u32(15))); // no workload: ignored
    s.send(encodeFrame(T.SIGNAL, u32(9999))); // no such signal: ignored
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
  } finally {
    await s.close();
  }
});

test("output written after EXIT is not sent (the host accepts none)", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig({ ...sh("(sleep 0.8; echo late; echo late >&2) & echo early"), flags: 1 }));
    const r = await collectUntilExit(s);
    assert.equal(r.stdout, "early\n");
    await assert.rejects(s.next(1500), /no frame within/);
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
  } finally {
    await s.close();
  }
});

test("unknown frame types and other streams are ignored; CONFIG may arrive in pieces", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeFrame(0x7f, Buffer.from("from the future")));
    s.send(encodeFrame(T.POWEROFF, Buffer.alloc(0), 5)); // stream 5: not ours in v1
    const config = encodeConfig(sh("echo pieces"));
    for (const cut of [
      [0, 2],
      [2, 11],
      [11, config.length],
    ]) {
      s.send(config.subarray(...cut));
      await sleep(30);
    }
    const r = await collectUntilExit(s);
    assert.equal(r.stdout, "pieces\n");
  } finally {
    await s.close();
  }
});

test("POWEROFF while the workload runs ends it and exits 0", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig({ args: ["sleep", "30"] }));
    const pid = (await s.next()).payload.readUInt32BE(0);
    s.send(encodeFrame(T.POWEROFF));
    assert.equal((await s.exited).code, 0);
    assert.throws(() => process.kill(pid, 0), { code: "ESRCH" });
  } finally {
    await s.close();
  }
});

test("the host closing the socket ends the workload; mm-init exits non-zero", async () => {
  const s = await startSession();
  try {
    await s.next();
    s.send(encodeConfig({ args: ["sleep", "30"] }));
    const pid = (await s.next()).payload.readUInt32BE(0);
    s.conn.end();
    assert.notEqual((await s.exited).code, 0);
    assert.throws(() => process.kill(pid, 0), { code: "ESRCH" });
  } finally {
    await s.close();
  }
});

test('mm.probe=1 prints "mm-init: probe ok" and stops before the channel', async () => {
  const child = spawn(BIN, [], { env: { MM_INIT_CMDLINE: "quiet mm.probe=1" }, stdio: ["ignore", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => {
    err += d;
  });
  const code = await new Promise((resolve) => child.on("exit", resolve));
  assert.equal(code, 0);
  assert.equal(err, "mm-init: probe ok\n");
});

test("mm.debug=1 logs each step", async () => {
  const s = await startSession({ env: { MM_INIT_CMDLINE: "mm.debug=1" } });
  try {
    await s.next();
    s.send(encodeConfig({ args: ["/bin/true"] }));
    await collectUntilExit(s);
    s.send(encodeFrame(T.POWEROFF));
    await s.exited;
    assert.match(s.log(), /mm-init: workload \/bin\/true: pid \d+/);
    assert.match(s.log(), /mm-init: EXIT status 0 signal 0/);
  } finally {
    await s.close();
  }
});
