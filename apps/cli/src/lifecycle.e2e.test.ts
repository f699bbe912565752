// Detached machines: run -d, ps, inspect, stop, start, rm, logs -f, wait, signals.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { harness, processesMatching, until } from "./test-helpers.js";

const h = harness();
after(() => h.cleanup());

const inspect = async (name: string) => {
  const r = await h.mm(["inspect", name]);
  assert.equal(r.code, 0, r.stderr);
  return (
    JSON.parse(r.stdout) as { id: string; state: string; exitCode: number | null; pids: { vmm: number | null } }[]
  )[0]!;
};

describe("a detached machine", () => {
  let id = "";

  test("run -d returns once the guest is running and prints its id", async () => {
    const r = await h.mm(["run", "-d", "--name", "bg", "--", "sleep", "300"]);
    assert.equal(r.code, 0, r.stderr);
    id = r.stdout.trim();
    assert.match(id, /^[0-9a-f]{12}$/);
    const m = await inspect("bg");
    assert.equal(m.state, "running");
    assert.ok(m.pids.vmm && (await processesMatching(`mm-${id}`)).includes(m.pids.vmm));
  });

  test("ps lists it, by name and id prefix", async () => {
    const ps = await h.mm(["ps"]);
    assert.match(ps.stdout, /^MACHINE ID\s+IMAGE\s+COMMAND\s+STATUS\s+PORTS\s+ACCEL\s+NAME$/m);
    assert.match(ps.stdout, new RegExp(`^${id}\\s+mm/busybox\\s+"sleep 300"\\s+Up .*\\s+(tcg|kvm)\\s+bg$`, "m"));
    assert.equal((await inspect(id.slice(0, 5))).id, id);
  });

  test("its name is taken while it exists", async () => {
    const r = await h.mm(["run", "--name", "bg", "--", "true"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_NAME_IN_USE/);
  });

  test("rm refuses a running machine", async () => {
    const r = await h.mm(["rm", "bg"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_MACHINE_RUNNING/);
  });

  test("stop sends SIGTERM to the workload: Exited (143), VMM gone", async () => {
    const r = await h.mm(["stop", "-t", "5", "bg"]);
    assert.equal(r.code, 0, r.stderr);
    const m = await inspect("bg");
    assert.deepEqual([m.state, m.exitCode], ["exited", 143]);
    assert.deepEqual(await processesMatching(`mm-${id}`), []);
    assert.match((await h.mm(["ps", "-a"])).stdout, /Exited \(143\)/);
    assert.doesNotMatch((await h.mm(["ps"])).stdout, /\bbg$/m);
  });

  test("start boots it again, rm -f kills and removes it", async () => {
    const s = await h.mm(["start", "bg"]);
    assert.equal(s.code, 0, s.stderr);
    assert.equal((await inspect("bg")).state, "running");
    const r = await h.mm(["rm", "-f", "bg"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match((await h.mm(["inspect", "bg"])).stderr, /MM_NO_SUCH_MACHINE/);
    await until(async () => (await processesMatching(id)).length === 0 || undefined, 10_000, "no process left");
  });
});

describe("output and endings", () => {
  test("logs -f follows the workload until it exits; wait prints the exit code", async () => {
    assert.equal(
      (await h.mm(["run", "-d", "--name", "talker", "--", "sh", "-c", "echo one; sleep 1; echo two >&2; exit 3"])).code,
      0,
    );
    const f = await h.mm(["logs", "-f", "talker"]);
    assert.equal(f.stdout, "one\n");
    assert.equal(f.stderr, "two\n");
    assert.equal((await h.mm(["wait", "talker"])).stdout, "3\n");
    const withConsole = await h.mm(["logs", "--console", "talker"]);
    assert.ok(withConsole.stdout.length >= "one\n".length);
    await h.mm(["rm", "talker"]);
  });

  test("run -d --rm removes the machine once it exits", async () => {
    const r = await h.mm(["run", "-d", "--rm", "--name", "ephemeral", "--", "sleep", "1"]);
    assert.equal(r.code, 0, r.stderr);
    await until(
      async () => ((await h.mm(["ps", "-a"])).stdout.includes("ephemeral") ? undefined : true),
      60_000,
      "removal",
    );
  });

  test("Ctrl-C on a foreground run reaches the workload (exit 130)", async () => {
    const child = h.spawnMm(["run", "--name", "sigint", "--", "sleep", "300"]);
    const done = new Promise<number | null>((r) => child.on("close", (c) => r(c)));
    await until(
      async () => ((await h.mm(["ps"])).stdout.match(/Up .* sigint$/m) ? true : undefined),
      60_000,
      "running",
    );
    child.kill("SIGINT");
    assert.equal(await done, 130);
    await h.mm(["rm", "sigint"]);
  });
});
