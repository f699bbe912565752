// Watching machines: `mm events` reports each lifecycle step with its details, `mm stats`
// moves when a guest burns CPU or fills memory, `mm top` lists the guest's processes.
// No network needed: the suite runs without a NIC.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { harness, until } from "./test-helpers.js";

const h = harness("mm-obs-", { netns: false });
after(() => h.cleanup());
const ok = (r: { code: number | null; stderr: string }, what: string) =>
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);

type Ev = { type: string; machine: string; detail: Record<string, unknown> | null };
type St = {
  name: string;
  cpuPercent: number;
  memory: {
    hostRssBytes: number;
    guestUsedBytes: number | null;
    guestTotalBytes: number | null;
    balloonBytes: number | null;
  };
  disk: { readBytes: number; writtenBytes: number };
};
const stats = async (name: string): Promise<St> => {
  const r = await h.mm(["stats", "--no-stream", "--json", name]);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as St[])[0] as St;
};

describe("events", () => {
  test("create, start, ready, exit (with its code), destroy, snapshot and fork are recorded in order", async () => {
    const t0 = new Date().toISOString();
    ok(
      await h
        .mm(["run", "--name", "short", "--", "sh", "-c", "exit 3"])
        .then((r) => ({ ...r, code: r.code === 3 ? 0 : r.code })),
      "run",
    );
    ok(await h.mm(["rm", "short"]), "rm");
    ok(await h.mm(["run", "-d", "--name", "long", "--", "sleep", "600"]), "run -d");
    ok(await h.mm(["snapshot", "create", "long", "--tag", "e"]), "snapshot");
    ok(await h.mm(["fork", "long", "twin"]), "fork");
    const r = await h.mm(["events", "--since", t0, "--until", "0s", "--json"]);
    ok(r, "events");
    const evs = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Ev);
    const of = (m: string) => evs.filter((e) => e.machine === m).map((e) => e.type);
    assert.deepEqual(of("short"), ["create", "start", "ready", "exit", "destroy"]);
    assert.equal(evs.find((e) => e.machine === "short" && e.type === "exit")?.detail?.exitCode, 3);
    assert.deepEqual(of("long"), ["create", "start", "ready", "snapshot", "fork"]);
    assert.deepEqual(evs.find((e) => e.type === "fork")?.detail?.clones, ["twin"]);
    assert.deepEqual(of("twin"), ["create", "start", "ready"]);
    const text = await h.mm(["events", "--since", t0, "--until", "0s", "--machine", "short"]);
    assert.match(text.stdout, /machine exit short \(id=[0-9a-f]{12}, exitCode=3/);
  });

  test("without --until, events follows: a later machine's events appear", async () => {
    const child = h.spawnMm(["events", "--json"]);
    let out = "";
    child.stdout?.on("data", (d) => {
      out += d;
    });
    await new Promise((r) => setTimeout(r, 500));
    ok(await h.mm(["run", "--rm", "--name", "later", "--", "true"]), "run");
    await until(() => (out.includes('"destroy"') ? true : undefined), 20_000, "the destroy event");
    child.kill("SIGINT");
    await new Promise((r) => child.once("close", r));
    assert.deepEqual(
      out
        .trim()
        .split("\n")
        .map((l) => (JSON.parse(l) as Ev).type),
      ["create", "start", "ready", "exit", "destroy"],
    );
  });

  test("a process the guest's OOM killer ends is an oom event", async () => {
    // A 230 MiB buffer filled in a 256 MiB guest: the OOM killer ends dd, the shell goes on.
    const r = await h.mm([
      "run",
      "--name",
      "hungry",
      "--",
      "sh",
      "-c",
      "dd if=/dev/zero of=/dev/null bs=230M count=1; echo after",
    ]);
    assert.match(r.stdout, /after/);
    const evs = await until(async () => {
      const out = (await h.mm(["events", "--since", "10m", "--until", "0s", "--json", "--machine", "hungry"])).stdout;
      const list = out
        .trim()
        .split("\n")
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Ev);
      return list.some((e) => e.type === "oom") ? list : undefined;
    }, 10_000);
    const oom = evs.find((e) => e.type === "oom");
    assert.equal(oom?.detail?.process, "dd", JSON.stringify(oom));
    assert.equal(typeof oom?.detail?.pid, "number");
    ok(await h.mm(["rm", "-f", "hungry"]), "rm");
  });

  test("a bad --since is MM_USAGE", async () => {
    const r = await h.mm(["events", "--since", "yesterday-ish", "--until", "0s"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_USAGE/);
  });
});

describe("stats and top", () => {
  test("stats move when the guest burns CPU and fills memory", async () => {
    const idle = await stats("long");
    assert.ok(idle.cpuPercent < 60, `idle guest at ${idle.cpuPercent}%`);
    assert.ok((idle.memory.guestTotalBytes ?? 0) > 200 * 2 ** 20, JSON.stringify(idle.memory));
    assert.ok(idle.memory.hostRssBytes > 10 * 2 ** 20);
    assert.ok(idle.disk.readBytes > 0, "the boot read the root disk");
    ok(await h.mm(["exec", "long", "sh", "-c", "sh -c 'while :; do :; done' >/dev/null 2>&1 &"]), "burn");
    const busy = await until(
      async () => {
        const s = await stats("long");
        return s.cpuPercent > 60 ? s : undefined;
      },
      20_000,
      "CPU use to show",
    );
    assert.ok(busy.cpuPercent > 60);
    // 96 MiB into the guest's tmpfs: its used memory and the VMM's resident set grow.
    ok(
      await h.mm([
        "exec",
        "long",
        "sh",
        "-c",
        "mkdir -p /m && mount -t tmpfs tmpfs /m && dd if=/dev/zero of=/m/f bs=1M count=96 2>/dev/null",
      ]),
      "fill",
    );
    const full = await stats("long");
    assert.ok(
      (full.memory.guestUsedBytes ?? 0) - (idle.memory.guestUsedBytes ?? 0) > 80 * 2 ** 20,
      `guest used ${idle.memory.guestUsedBytes} -> ${full.memory.guestUsedBytes}`,
    );
    assert.ok(full.memory.hostRssBytes - idle.memory.hostRssBytes > 60 * 2 ** 20, "the VMM's RSS grew");
  });

  test("balloon: memory the guest frees goes back to the host; mm update --memory resizes the guest", async () => {
    const full = await stats("long");
    ok(await h.mm(["exec", "long", "rm", "/m/f"]), "free");
    // Free page reporting hands freed pages back within seconds; the VMM's RSS drops.
    const back = await until(
      async () => {
        const s = await stats("long");
        return full.memory.hostRssBytes - s.memory.hostRssBytes > 50 * 2 ** 20 ? s : undefined;
      },
      30_000,
      "the host to get the memory back",
    );
    assert.ok(back.memory.hostRssBytes < full.memory.hostRssBytes);
    ok(await h.mm(["update", "long", "--memory", "128M"]), "update");
    const small = await until(async () => {
      const s = await stats("long");
      return (s.memory.guestTotalBytes ?? 0) < 140 * 2 ** 20 ? s : undefined;
    }, 20_000);
    assert.equal(small.memory.balloonBytes, 128 * 2 ** 20);
    const over = await h.mm(["update", "long", "--memory", "1G"]);
    assert.equal(over.code, 125);
    assert.match(over.stderr, /MM_INVALID_MEMORY/);
    // The target outlives a restart: the next boot's balloon takes the memory back again.
    ok(await h.mm(["update", "long", "--memory", "160M"]), "update");
    ok(await h.mm(["stop", "-t", "1", "long"]), "stop");
    ok(await h.mm(["start", "long"]), "start");
    await until(
      async () => ((await stats("long")).memory.balloonBytes === 160 * 2 ** 20 ? true : undefined),
      30_000,
      "the kept memory target",
    );
    ok(await h.mm(["update", "long", "--memory", "256M"]), "give it back");
  });

  test("top lists the guest's processes; stats and top of a stopped machine say so", async () => {
    const r = await h.mm(["top", "long"]);
    ok(r, "top");
    assert.match(r.stdout, /PID\s+USER/);
    assert.match(r.stdout, /sleep 600/);
    assert.doesNotMatch(r.stdout, /kthreadd|busybox ps/, "the guest kernel's threads and ps itself are left out");
    ok(await h.mm(["stop", "-t", "1", "twin"]), "stop");
    for (const cmd of [
      ["top", "twin"],
      ["stats", "--no-stream", "twin"],
    ]) {
      const x = await h.mm(cmd);
      assert.equal(x.code, 125, cmd.join(" "));
      assert.match(x.stderr, /MM_MACHINE_NOT_RUNNING/);
    }
  });
});
