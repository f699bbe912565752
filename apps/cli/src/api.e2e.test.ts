// The REST API (`mm serve`) and the TypeScript SDK end to end: a real server on its unix
// socket (inside the test's network namespace) and one on loopback TCP with a token,
// every route checked for authentication, bodies capped, paths checked, and sandboxes
// driven through the SDK: exec (buffered and streamed), files, processes, events,
// lifetime, kill.

import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type Machine, MmApiError, MmClient, Sandbox } from "@micromachines/sdk";
import { harness, startServer, until } from "./test-helpers.js";

const h = harness("mm-api-");
const token = randomBytes(16).toString("hex");
let unixServer: ChildProcess;
let tcpServer: ChildProcess;
let socket = "";
let tcpBase = "";

const client = () => new MmClient({ host: `unix://${socket}` });

before(async () => {
  socket = join(h.state, "api.sock");
  // A small body cap, so that the oversized request fits in the socket's buffer and the
  // client reads the 413 rather than a reset.
  unixServer = (await startServer(h, ["--body-limit", "65536"], true)).child;
  const tcp = await startServer(
    h,
    ["--socket", join(h.state, "api-tcp.sock"), "--tcp", "127.0.0.1:0", "--token", token],
    false,
  );
  tcpServer = tcp.child;
  tcpBase = tcp.addresses.find((a) => a.startsWith("http://")) as string;
});

after(async () => {
  tcpServer?.kill("SIGTERM");
  unixServer?.kill("SIGTERM");
  await h.cleanup();
});

describe("the API's edges", () => {
  test("the socket is 0600 and the version answers without a token", async () => {
    const { statSync } = await import("node:fs");
    assert.equal(statSync(socket).mode & 0o777, 0o600);
    const c = client();
    assert.deepEqual(await c.json("GET", "/v1/version"), { version: "0.1.0", api: "v1" });
    await c.close();
  });

  test("every route × auth: TCP without or with a wrong token is 401, with it (and on the socket) it is not", async () => {
    const c = client();
    const doc = await c.json<{ paths: Record<string, Record<string, unknown>> }>("GET", "/v1/openapi.json");
    const routes = Object.entries(doc.paths).flatMap(([path, methods]) =>
      Object.keys(methods).map((m) => ({
        method: m.toUpperCase(),
        path: path.replace(/\{ref\}|\{id\}/g, "nosuch").replace("{pid}", "1"),
      })),
    );
    routes.push({ method: "GET", path: "/v1/openapi.json" }, { method: "GET", path: "/v1/machines/nosuch/exec/ws" });
    assert.ok(routes.length >= 20, `only ${routes.length} routes`);
    for (const r of routes) {
      const call = async (auth?: string) =>
        fetch(`${tcpBase}${r.path}${r.path.includes("files") ? "?path=/x" : ""}`, {
          method: r.method,
          headers: {
            ...(auth && { authorization: auth }),
            ...(r.method !== "GET" && r.method !== "DELETE" && { "content-type": "application/json" }),
          },
          ...(r.method !== "GET" && r.method !== "DELETE" && { body: "{}" }),
        });
      for (const bad of [undefined, "Bearer wrong", `Bearer ${token}x`, token]) {
        const res = await call(bad);
        assert.equal(res.status, 401, `${r.method} ${r.path} with ${bad ?? "no token"}`);
        assert.equal(((await res.json()) as { error: { code: string } }).error.code, "MM_UNAUTHORIZED");
      }
      const ok = await call(`Bearer ${token}`);
      assert.notEqual(ok.status, 401, `${r.method} ${r.path} with the token`);
      await ok.body?.cancel();
    }
    await c.close();
  });

  test("an oversized body is 413 MM_BODY_TOO_LARGE; a bad one is 400 MM_USAGE; an unknown route 404", async () => {
    const c = client();
    await assert.rejects(
      c.json("POST", "/v1/machines", { body: { name: "x".repeat(100_000) } }),
      (e) => e instanceof MmApiError && e.status === 413 && e.code === "MM_BODY_TOO_LARGE",
    );
    await assert.rejects(
      c.json("POST", "/v1/sandboxes", { body: { timeoutMs: "soon" } }),
      (e) => e instanceof MmApiError && e.status === 400 && e.code === "MM_USAGE" && /timeoutMs/.test(e.message),
    );
    await assert.rejects(
      c.json("GET", "/v1/nothing"),
      (e) => e instanceof MmApiError && e.status === 404 && e.code === "MM_NO_SUCH_ROUTE",
    );
    await assert.rejects(
      c.json("GET", "/v1/machines/nosuch"),
      (e) => e instanceof MmApiError && e.status === 404 && e.code === "MM_NO_SUCH_MACHINE",
    );
    await c.close();
  });
});

describe("sandboxes through the SDK", () => {
  let sb: Sandbox;
  before(async () => {
    sb = await Sandbox.create({ client: { host: `unix://${socket}` }, allowTcg: true, timeoutMs: 600_000 });
  });
  after(async () => {
    await sb?.kill();
  });

  test("exec: output, exit code, stdin, env and workdir", async () => {
    const r = await sb.exec(["sh", "-c", "echo $((6 * 7)); echo oops >&2; exit 3"]);
    assert.deepEqual([r.stdout, r.stderr, r.exitCode], ["42\n", "oops\n", 3]);
    const echo = await sb.exec(["sh", "-c", 'cat; echo "$GREETING from $(pwd)"'], {
      stdin: "piped\n",
      env: ["GREETING=hello"],
      workdir: "/tmp",
    });
    assert.equal(echo.stdout, "piped\nhello from /tmp\n");
  });

  test("files: bytes written are the bytes read; traversal is refused; a missing file is MM_GUEST_FILE", async () => {
    const data = randomBytes(300_000);
    assert.equal(await sb.files.write("/tmp/blob.bin", data), data.length);
    assert.deepEqual(Buffer.from(await sb.files.read("/tmp/blob.bin")), data);
    assert.equal((await sb.exec(["sh", "-c", "wc -c < /tmp/blob.bin"])).stdout.trim(), String(data.length));
    for (const bad of ["/tmp/../etc/shadow", "relative.txt", "/tmp/./x"]) {
      await assert.rejects(sb.files.write(bad, "x"), (e) => e instanceof MmApiError && e.code === "MM_INVALID_PATH");
      await assert.rejects(sb.files.read(bad), (e) => e instanceof MmApiError && e.code === "MM_INVALID_PATH");
    }
    await assert.rejects(sb.files.read("/no/such/file"), (e) => e instanceof MmApiError && e.code === "MM_GUEST_FILE");
  });

  test("processes are listed and one is killed", async () => {
    await sb.exec(["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"]);
    const sleeper = await until(async () => (await sb.processes()).find((p) => p.command === "sleep 1000"), 10_000);
    await sb.killProcess(sleeper.pid, "KILL");
    await until(async () => ((await sb.processes()).some((p) => p.pid === sleeper.pid) ? undefined : true), 10_000);
    await assert.rejects(sb.killProcess(999_999), (e) => e instanceof MmApiError && e.code === "MM_NO_SUCH_PROCESS");
  });

  test("execStream: stdin streamed in, output streamed out, exit code at the end", async () => {
    const p = sb.execStream(["sh", "-c", "while read l; do echo got $l; done; echo bye >&2; exit 7"]);
    p.write("one\n");
    p.write("two\n");
    p.end();
    let out = "";
    let err = "";
    for await (const chunk of p.output) {
      if (chunk.stream === "stdout") out += Buffer.from(chunk.data).toString();
      else err += Buffer.from(chunk.data).toString();
    }
    assert.equal(await p.exited, 7);
    assert.equal(out, "got one\ngot two\n");
    assert.equal(err, "bye\n");
  });

  test("logs, stats, memory, volumes and templates over the API", async () => {
    const c = client();
    await sb.exec(["sh", "-c", "echo to-the-console > /dev/console"]);
    // The console reaches the log as QEMU writes it out: a moment later.
    await until(async () => {
      const logs = await c.json<{ stream: string; data: string }[]>("GET", `/v1/machines/${sb.id}/logs`);
      // Console output comes in chunks as the serial port delivers it: joined, as `mm logs` does.
      const text = logs.map((l) => Buffer.from(l.data, "base64").toString()).join("");
      return text.includes("to-the-console") || undefined;
    }, 10_000);
    let now = "";
    for await (const e of sb.logs({ follow: false })) now += Buffer.from(e.data).toString();
    assert.match(now, /to-the-console/);
    // Following a machine's log: lines as they come, and the end when it ends.
    const m = await c.json<{ id: string }>("POST", "/v1/machines", {
      body: { command: ["sh", "-c", "echo one; sleep 1; echo two"] },
    });
    const followed = await Sandbox.connect(m.id, c);
    let text = "";
    for await (const e of followed.logs()) if (e.stream === "stdout") text += Buffer.from(e.data).toString();
    assert.equal(text, "one\ntwo\n");
    await c.json("DELETE", `/v1/machines/${m.id}`, { query: { force: "true" } });
    const stats = await c.json<{ id: string; memory: { hostRssBytes: number } }>("GET", `/v1/machines/${sb.id}/stats`);
    assert.equal(stats.id, sb.id);
    assert.ok(stats.memory.hostRssBytes > 0);
    const mem = await c.json<{ balloonBytes: number | null }>("POST", `/v1/machines/${sb.id}/memory`, {
      body: { memoryMib: 200 },
    });
    assert.ok(mem.balloonBytes !== undefined);
    const vol = await c.json<{ name: string; sizeBytes: number }>("POST", "/v1/volumes", {
      body: { name: "apivol", sizeBytes: 64 * 2 ** 20 },
    });
    assert.deepEqual(vol.name, "apivol");
    assert.ok((await c.json<{ name: string }[]>("GET", "/v1/volumes")).some((v) => v.name === "apivol"));
    await c.json("DELETE", "/v1/volumes/apivol");
    assert.ok(!(await c.json<{ name: string }[]>("GET", "/v1/volumes")).some((v) => v.name === "apivol"));
    assert.ok(Array.isArray(await c.json("GET", "/v1/templates")));
    await c.close();
  });

  test("an AbortSignal cancels a request", async () => {
    const ac = new AbortController();
    const pending = sb.exec(["sleep", "5"], { signal: ac.signal });
    setTimeout(() => ac.abort(), 200);
    await assert.rejects(
      pending,
      (e) => (e as Error).name === "AbortError" || (e as { code?: string }).code === "UND_ERR_ABORTED",
    );
  });
});

describe("sandbox lifetime and TCG", () => {
  test("a sandbox ends itself when its lifetime is over (a timeout event, then gone)", async () => {
    const sb = await Sandbox.create({ client: { host: `unix://${socket}` }, allowTcg: true, timeoutMs: 2000 });
    const c = client();
    await until(
      async () => {
        try {
          await c.json("GET", `/v1/machines/${sb.id}`);
          return undefined;
        } catch (e) {
          return e instanceof MmApiError && e.code === "MM_NO_SUCH_MACHINE" ? true : undefined;
        }
      },
      30_000,
      "the sandbox to end",
    );
    const events = await c.json<{ machineId: string; type: string }[]>("GET", "/v1/events");
    assert.ok(events.some((e) => e.machineId === sb.id && e.type === "timeout"));
    await c.close();
  });

  test("mm serve --pool 1: a default create claims a booted sandbox with its own lifetime; the pool refills; SIGTERM removes the rest", async () => {
    const sock = join(h.state, "api-pool.sock");
    const server = await startServer(h, ["--socket", sock, "--pool", "1"], true);
    const c = new MmClient({ host: `unix://${sock}` });
    const POOL_MS = 3_600_000;
    const pooled = async () =>
      (await c.json<Machine[]>("GET", "/v1/machines")).filter(
        (m) => m.sandbox?.timeoutMs === POOL_MS && m.state === "running",
      );
    try {
      const [first] = await until(
        async () => ((await pooled()).length === 1 ? pooled() : undefined),
        60_000,
        "the pool",
      );
      assert.ok(first);
      assert.ok(!(await c.json<Machine[]>("GET", "/v1/sandboxes")).some((m) => m.id === first.id), "not listed yet");
      const asked = new Date().toISOString();
      const sb = await Sandbox.create({ client: c, allowTcg: true, timeoutMs: 4000 });
      assert.equal(sb.id, first.id, "the create claimed the pooled sandbox");
      assert.ok((sb.info.startedAt as string) < asked, "it was booted before the create");
      assert.deepEqual(sb.info.sandbox, { timeoutMs: 4000 });
      assert.equal((await sb.exec(["echo", "claimed"])).stdout, "claimed\n");
      assert.ok((await c.json<Machine[]>("GET", "/v1/sandboxes")).some((m) => m.id === sb.id));
      // A create that asks for more than the defaults boots its own.
      const named = await Sandbox.create({ client: c, allowTcg: true, name: "not-from-pool" });
      assert.notEqual(named.id, first.id);
      await named.kill();
      // The pool refills; the claimed one ends on its own lifetime, counted from the claim.
      const [second] = await until(
        async () => ((await pooled()).some((m) => m.id !== first.id) ? pooled() : undefined),
        60_000,
        "the pool to refill",
      );
      await until(
        async () => ((await c.json<Machine[]>("GET", "/v1/machines")).some((m) => m.id === sb.id) ? undefined : true),
        30_000,
        "the claimed sandbox to end",
      );
      const events = await c.json<{ machineId: string; type: string; detail: { timeoutMs?: number } | null }[]>(
        "GET",
        "/v1/events",
      );
      assert.ok(events.some((e) => e.machineId === sb.id && e.type === "claim"));
      assert.ok(events.some((e) => e.machineId === sb.id && e.type === "timeout" && e.detail?.timeoutMs === 4000));
      // SIGTERM: the unclaimed one goes with the server.
      const ended = new Promise((r) => server.child.on("exit", r));
      server.child.kill("SIGTERM");
      await ended;
      const left = await client().json<Machine[]>("GET", "/v1/machines");
      assert.ok(!left.some((m) => m.id === second?.id), "the pool's sandbox was removed");
    } finally {
      server.child.kill("SIGTERM");
      await c.close();
    }
  });

  test("an idle timeout ends a sandbox only after that long without an exec session", async () => {
    const sb = await Sandbox.create({ client: { host: `unix://${socket}` }, allowTcg: true, idleTimeoutMs: 2500 });
    // Busy for 5 s, one exec a second: it stays.
    for (let i = 0; i < 5; i++) {
      assert.equal((await sb.exec(["true"])).exitCode, 0, `exec ${i}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    const c = client();
    await until(
      async () =>
        c.json("GET", `/v1/machines/${sb.id}`).then(
          () => undefined,
          (e) => (e instanceof MmApiError && e.code === "MM_NO_SUCH_MACHINE" ? true : undefined),
        ),
      30_000,
      "the idle sandbox to end",
    );
    const events = await c.json<{ machineId: string; type: string; detail: { idleMs?: number } | null }[]>(
      "GET",
      "/v1/events",
    );
    assert.ok(events.some((e) => e.machineId === sb.id && e.type === "timeout" && e.detail?.idleMs === 2500));
    await c.close();
  });

  test("without allowTcg, a host that only has TCG refuses to make sandboxes (403 MM_TCG_REFUSED)", async () => {
    const probe = await Sandbox.create({ client: { host: `unix://${socket}` }, allowTcg: true });
    const accel = probe.info.accel;
    await probe.kill();
    if (accel === "tcg") {
      await assert.rejects(
        Sandbox.create({ client: { host: `unix://${socket}` } }),
        (e) => e instanceof MmApiError && e.status === 403 && e.code === "MM_TCG_REFUSED",
      );
    } else {
      await (await Sandbox.create({ client: { host: `unix://${socket}` } })).kill();
    }
  });

  test("examples/untrusted-code.mjs runs a submission as nobody, with no network, and cleans up", async () => {
    const { execFile } = await import("node:child_process");
    const example = join(import.meta.dirname, "../../../examples/untrusted-code.mjs");
    const before = (await client().json<unknown[]>("GET", "/v1/machines")).length;
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        process.execPath,
        [example, "echo hi from $(id -un); ip -o link | grep -c eth0"],
        { env: { ...process.env, MM_HOST: `unix://${socket}`, MM_ALLOW_TCG: "1" } },
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(stdout)),
      ),
    );
    assert.match(out, /^hi from nobody\n0\n\[exit 1 in sandbox \S+\]\n$/);
    assert.equal((await client().json<unknown[]>("GET", "/v1/machines")).length, before, "the sandbox is gone");
  });

  test("the CLI through the API: --host (and MM_HOST) for run -d, ps, exec, sandbox, rm, doctor, wait, events…", async () => {
    const host = `unix://${socket}`;
    const remote = (args: string[], env: NodeJS.ProcessEnv = {}) => h.mm(["--host", host, ...args], env);
    const run = await remote(["run", "-d", "--name", "viaapi", "--", "sleep", "600"]);
    assert.equal(run.code, 0, run.stderr);
    assert.match((await remote(["ps"])).stdout, /\tviaapi\n/);
    const ex = await remote(["exec", "viaapi", "--", "sh", "-c", "echo out; echo err >&2; exit 4"]);
    assert.deepEqual([ex.code, ex.stdout, ex.stderr], [4, "out\n", "err\n"]);
    const piped = await h.mm(["exec", "-i", "viaapi", "--", "cat"], { MM_HOST: host }, "through stdin\n");
    assert.equal(piped.stdout, "through stdin\n", piped.stderr);
    // The same options as locally: durations, limits.
    const sb = await remote([
      "sandbox",
      "create",
      "--allow-tcg",
      "--timeout",
      "2m",
      "--idle-timeout",
      "90s",
      "--disk-bps",
      "8M",
    ]);
    assert.equal(sb.code, 0, sb.stderr);
    assert.match((await remote(["sandbox", "ls"])).stdout, new RegExp(sb.stdout.trim()));
    const [sbInfo] = JSON.parse((await remote(["inspect", sb.stdout.trim()])).stdout) as {
      sandbox: { timeoutMs: number; idleMs?: number };
    }[];
    assert.deepEqual(sbInfo?.sandbox, { timeoutMs: 120_000, idleMs: 90_000 });
    assert.equal((await remote(["sandbox", "rm", sb.stdout.trim()])).code, 0);
    // Files, logs, snapshots and forks through the API too.
    const { mkdtempSync, readFileSync, rmSync, writeFileSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const tmp = mkdtempSync(join(tmpdir(), "mm-remote-"));
    writeFileSync(join(tmp, "in.txt"), "host bytes\n");
    assert.equal((await remote(["cp", join(tmp, "in.txt"), "viaapi:/tmp/in.txt"])).code, 0);
    assert.equal((await remote(["exec", "viaapi", "--", "cat", "/tmp/in.txt"])).stdout, "host bytes\n");
    assert.equal((await remote(["cp", "viaapi:/tmp/in.txt", join(tmp, "back.txt")])).code, 0);
    assert.equal(readFileSync(join(tmp, "back.txt"), "utf8"), "host bytes\n");
    const snap = await remote(["snapshot", "create", "--tag", "remote", "viaapi"]);
    assert.equal(snap.code, 0, snap.stderr);
    assert.match((await remote(["snapshot", "ls"])).stdout, /\tviaapi\tremote\t/);
    const forked = await remote(["fork", "-p", "18097:80", "viaapi", "viaclone"]);
    assert.equal(forked.code, 0, forked.stderr);
    assert.equal((await remote(["port", "viaclone"])).stdout, "80/tcp -> 0.0.0.0:18097\n");
    assert.equal((await remote(["exec", "viaclone", "--", "cat", "/tmp/in.txt"])).stdout, "host bytes\n");
    assert.equal((await remote(["rm", "-f", "viaclone"])).code, 0);
    const printer = await remote([
      "run",
      "-d",
      "--name",
      "printer",
      "--",
      "sh",
      "-c",
      "echo first; sleep 1; echo second",
    ]);
    assert.equal(printer.code, 0, printer.stderr);
    assert.equal((await remote(["logs", "-f", "printer"])).stdout, "first\nsecond\n");
    await remote(["rm", "-f", "printer"]);
    assert.equal((await remote(["volume", "create", "remotevol"])).code, 0);
    assert.match((await remote(["volume", "ls"])).stdout, /^remotevol\t/m);
    assert.match((await remote(["volume", "inspect", "remotevol"])).stdout, /"name": "remotevol"/);
    assert.equal((await remote(["volume", "rm", "remotevol"])).code, 0);
    assert.match((await remote(["top", "viaapi"])).stdout, /sleep 600/);
    assert.match((await remote(["df"])).stdout, /^images\t\d+\t\d+\t\d+$/m);
    const pub = await remote(["run", "-d", "--name", "pub", "-p", "18099:80", "--", "sleep", "60"]);
    assert.equal(pub.code, 0, pub.stderr);
    assert.equal((await remote(["port", "pub"])).stdout, "80/tcp -> 0.0.0.0:18099\n");
    await remote(["rm", "-f", "pub"]);
    assert.match((await remote(["stats", "viaapi"])).stdout, /"cpuPercent"/);
    assert.equal((await remote(["update", "viaapi", "--memory", "200"])).code, 0);
    const snapId = snap.stdout.trim();
    assert.equal((await remote(["snapshot", "rm", snapId])).code, 0);
    assert.doesNotMatch((await remote(["snapshot", "ls"])).stdout, /\tremote\t/);
    assert.equal((await remote(["snapshot", "create", "viaapi"])).code, 0);
    assert.equal((await remote(["snapshot", "create", "viaapi"])).code, 0);
    const gc = await remote(["snapshot", "gc", "viaapi", "--keep", "1"]);
    assert.equal(gc.code, 0, gc.stderr);
    assert.equal(gc.stdout.trim().split("\n").length, 1, "one of two removed");
    // The host's commands: doctor, system start-all, wait, events.
    const checks = JSON.parse((await remote(["doctor", "--json"])).stdout) as { name: string; ok: boolean }[];
    for (const name of ["guest kernel", "acceleration", "VMM jail"]) {
      assert.ok(
        checks.some((c) => c.name === name),
        `doctor checks ${name}`,
      );
    }
    const startAll = await remote(["system", "start-all"]);
    assert.equal(startAll.code, 0, startAll.stderr);
    const waiter = await remote(["run", "-d", "--name", "waiter", "--", "sh", "-c", "sleep 1; exit 7"]);
    assert.equal(waiter.code, 0, waiter.stderr);
    assert.equal((await remote(["wait", "waiter"])).stdout, "7\n");
    const events = await remote(["events", "--since", "10m", "--until", "0s", "--machine", "waiter"]);
    assert.match(events.stdout, / machine create waiter \(id=/);
    assert.match(events.stdout, / machine exit waiter \(id=.*exitCode=7/);
    assert.equal((await remote(["rm", "waiter"])).code, 0);
    const unsupported = await remote(["ssh", "viaapi"]);
    assert.equal(unsupported.code, 125);
    assert.match(unsupported.stderr, /not available through --host/);
    const missing = await remote(["inspect", "nosuch"]);
    assert.equal(missing.code, 125);
    assert.match(missing.stderr, /MM_NO_SUCH_MACHINE/);
    assert.equal((await remote(["rm", "-f", "viaapi"])).code, 0);
    rmSync(tmp, { recursive: true, force: true });
  });

  test("SIGTERM stops the server gracefully: it exits 0 and removes its socket", async () => {
    const extra = join(h.state, "api-term.sock");
    const s = await startServer(h, ["--socket", extra], true);
    let stderr = "";
    s.child.stderr?.on("data", (d) => {
      stderr += d;
    });
    const ended = new Promise<[number | null, string | null]>((r) => s.child.on("exit", (c, sig) => r([c, sig])));
    s.child.kill("SIGTERM");
    assert.deepEqual(await ended, [0, null], stderr);
    assert.equal(existsSync(extra), false);
  });
});
