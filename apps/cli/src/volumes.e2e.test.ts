// Named volumes end to end with real guests: data outlives machines, read-only mounts
// refuse writes, a volume is attached to one running machine at a time and removed only
// when no machine names it. No network needed: the suite runs without a NIC.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { harness } from "./test-helpers.js";

const h = harness("mm-vol-", { netns: false });
after(() => h.cleanup());
const ok = (r: { code: number | null; stderr: string }, what: string) =>
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);

describe("volumes", () => {
  test("create, ls and inspect", async () => {
    ok(await h.mm(["volume", "create", "data", "--size", "64M"]), "create");
    const again = await h.mm(["volume", "create", "data"]);
    assert.equal(again.code, 125);
    assert.match(again.stderr, /MM_VOLUME_EXISTS/);
    const [v] = JSON.parse((await h.mm(["volume", "inspect", "data"])).stdout) as {
      name: string;
      sizeBytes: number;
      usedBy: string[];
    }[];
    assert.deepEqual([v?.name, v?.sizeBytes, v?.usedBy], ["data", 64 * 2 ** 20, []]);
    assert.equal((await h.mm(["volume", "ls", "-q"])).stdout, "data\n");
  });

  test("data written by one machine is read by the next, after the first is gone", async () => {
    const w = await h.mm([
      "run",
      "--rm",
      "-v",
      "data:/data",
      "--",
      "sh",
      "-c",
      "echo kept > /data/f; df -k /data | tail -1",
    ]);
    ok(w, "writer");
    assert.match(w.stdout, /\/data$/m);
    const r = await h.mm(["run", "--rm", "-v", "data:/srv/in/here", "--", "cat", "/srv/in/here/f"]);
    ok(r, "reader");
    assert.equal(r.stdout, "kept\n");
  });

  test("a read-only mount refuses writes in the guest", async () => {
    const r = await h.mm(["run", "--rm", "-v", "data:/data:ro", "--", "sh", "-c", "cat /data/f; echo x > /data/g"]);
    assert.notEqual(r.code, 0);
    assert.equal(r.stdout, "kept\n");
    assert.match(r.stderr, /Read-only file system/);
  });

  test("one running machine at a time; exec sees the mount; snapshot refuses; rm refused while named", async () => {
    ok(await h.mm(["run", "-d", "--name", "holder", "-v", "data:/data", "--", "sleep", "600"]), "holder");
    const second = await h.mm(["run", "--rm", "-v", "data:/data", "--", "true"]);
    assert.equal(second.code, 125);
    assert.match(second.stderr, /MM_VOLUME_IN_USE.*holder/s);
    const e = await h.mm(["exec", "holder", "cat", "/data/f"]);
    assert.equal(e.stdout, "kept\n", e.stderr);
    const [v] = JSON.parse((await h.mm(["volume", "inspect", "data"])).stdout) as { attachedTo: string }[];
    assert.equal(v?.attachedTo, "holder");
    const snap = await h.mm(["snapshot", "create", "holder"]);
    assert.equal(snap.code, 125);
    assert.match(snap.stderr, /MM_SNAPSHOT_FAILED.*volumes/s);
    const rm = await h.mm(["volume", "rm", "data"]);
    assert.equal(rm.code, 125);
    assert.match(rm.stderr, /MM_VOLUME_IN_USE.*holder/s);
    ok(await h.mm(["stop", "-t", "1", "holder"]), "stop");
    assert.equal((await h.mm(["volume", "rm", "data"])).code, 125, "a stopped machine still names it");
    ok(await h.mm(["rm", "holder"]), "rm machine");
    ok(await h.mm(["volume", "rm", "data"]), "volume rm");
    assert.equal((await h.mm(["volume", "ls", "-q"])).stdout, "");
  });

  test("bad -v values and missing volumes are refused before anything boots", async () => {
    for (const [arg, code] of [
      ["/nonexistent/dir:/x", /MM_INVALID_VOLUME.*does not exist/s],
      ["data:relative", /MM_INVALID_VOLUME/],
      ["data:/proc/x", /MM_INVALID_VOLUME/],
      ["nope:/x", /MM_NO_SUCH_VOLUME/],
    ] as const) {
      const r = await h.mm(["run", "--rm", "-v", arg, "--", "true"]);
      assert.equal(r.code, 125, arg);
      assert.match(r.stderr, code, arg);
    }
    assert.equal((await h.mm(["ps", "-a", "-q"])).stdout, "");
  });
});
