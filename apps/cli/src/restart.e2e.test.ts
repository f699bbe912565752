// Restart policies and host restarts, with real guests in the test's network namespace:
// a crashing workload backs off and gives up after N, `always` restarts until `mm stop`,
// and after every mm and QEMU process is killed (a host reboot, simulated),
// `mm system start-all` brings back the machines due, with the same addresses.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { harness, processesMatching, until } from "./test-helpers.js";

const h = harness("mm-restart-");
after(() => h.cleanup());
const ok = (r: { code: number | null; stderr: string }, what: string) =>
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);

type M = { id: string; name: string; state: string; ip: string | null; pids: { supervisor: number | null } };
const inspect = async (name: string): Promise<M> => (JSON.parse((await h.mm(["inspect", name])).stdout) as M[])[0] as M;
type Ev = { type: string; machine: string; detail: Record<string, unknown> | null };
const events = async (machine: string): Promise<Ev[]> => {
  const r = await h.mm(["events", "--since", "1h", "--until", "0s", "--json", "--machine", machine]);
  return r.stdout.trim()
    ? r.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Ev)
    : [];
};

describe("restart policies", () => {
  test("on-failure:3: a crashing workload is restarted 3 times with growing back-off, then left exited", async () => {
    ok(await h.mm(["run", "-d", "--restart", "on-failure:3", "--name", "crashy", "--", "sh", "-c", "exit 1"]), "run");
    const done = await until(async () => {
      const evs = await events("crashy");
      return evs.some((e) => e.type === "restart" && e.detail?.gaveUp) ? evs : undefined;
    }, 90_000);
    const restarts = done.filter((e) => e.type === "restart");
    assert.deepEqual(
      restarts.map((e) => e.detail?.attempt ?? "gave up"),
      [1, 2, 3, "gave up"],
    );
    assert.deepEqual(
      restarts.slice(0, 3).map((e) => e.detail?.delayMs),
      [100, 200, 400],
    );
    assert.match(String(restarts[3]?.detail?.reason), /exit code 1.*on-failure:3 reached/);
    assert.equal(done.filter((e) => e.type === "start").length, 4);
    await until(async () => ((await inspect("crashy")).state === "exited" ? true : undefined), 10_000);
  });

  test("always: a workload that ends is booted again, until mm stop", async () => {
    ok(await h.mm(["run", "-d", "--restart", "always", "--name", "phoenix", "--", "sh", "-c", "sleep 1"]), "run");
    await until(async () => ((await events("phoenix")).some((e) => e.type === "restart") ? true : undefined), 60_000);
    await until(async () => ((await inspect("phoenix")).state === "running" ? true : undefined), 30_000);
    ok(await h.mm(["stop", "-t", "1", "phoenix"]), "stop");
    const n = (await events("phoenix")).filter((e) => e.type === "start").length;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await events("phoenix")).filter((e) => e.type === "start").length, n, "no boot after mm stop");
    assert.notEqual((await inspect("phoenix")).state, "running");
  });

  test("--restart needs -d (and no --rm); bad policies are MM_USAGE", async () => {
    for (const args of [
      ["--restart", "always"],
      ["-d", "--rm", "--restart", "always"],
      ["-d", "--restart", "sometimes"],
    ]) {
      const r = await h.mm(["run", ...args, "--", "true"]);
      assert.equal(r.code, 125, args.join(" "));
      assert.match(r.stderr, /MM_USAGE/);
    }
  });
});

describe("host restart", () => {
  test("after every mm and QEMU process is killed, system start-all brings back always and unless-stopped machines at their addresses", async () => {
    const run = (name: string, policy: string[]) =>
      h.mm(["run", "-d", ...policy, "--name", name, "--", "sleep", "600"]).then((r) => ok(r, name));
    await run("keeper", ["--restart", "always"]);
    await run("steady", ["--restart", "unless-stopped"]);
    await run("resting", ["--restart", "unless-stopped"]);
    await run("plain", []);
    ok(await h.mm(["stop", "-t", "1", "resting"]), "stop resting");
    const before = new Map<string, string | null>();
    for (const n of ["keeper", "steady"]) before.set(n, (await inspect(n)).ip);
    // The "reboot": every supervisor dies at once, and their VMMs with them (pdeathsig).
    for (const n of ["keeper", "steady", "plain"]) {
      const m = await inspect(n);
      process.kill(m.pids.supervisor as number, "SIGKILL");
    }
    for (const n of ["keeper", "steady", "plain"]) {
      const id = (await inspect(n)).id;
      await until(async () => ((await processesMatching(`mm-${id}`)).length === 0 ? true : undefined), 10_000);
      assert.equal((await inspect(n)).state, "failed");
    }
    const r = await h.mm(["system", "start-all"]);
    ok(r, "start-all");
    // As in Docker, `always` also brings back a machine stopped by hand (phoenix, above);
    // `unless-stopped` does not (resting).
    assert.deepEqual(r.stdout.trim().split("\n").sort(), ["keeper running", "phoenix running", "steady running"]);
    for (const n of ["keeper", "steady"]) {
      const m = await inspect(n);
      assert.equal(m.state, "running");
      assert.equal(m.ip, before.get(n), `${n} keeps its address`);
    }
    assert.notEqual((await inspect("resting")).state, "running");
    assert.equal((await inspect("plain")).state, "failed");
  });

  test("system install writes a unit that runs start-all at boot", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mm-unit-"));
    try {
      ok(await h.mm(["system", "install", "--unit-dir", dir]), "install");
      const unit = readFileSync(join(dir, "mm.service"), "utf8");
      assert.match(unit, /^ExecStart=\S+node \S+mm\.mjs system start-all$/m);
      assert.match(unit, new RegExp(`^Environment=MM_STATE=${h.state}$`, "m"));
      assert.match(unit, /^WantedBy=multi-user\.target$/m);
      assert.equal((await h.mm(["system", "install", "--print"])).stdout, unit);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
