// `mm exec` end to end against a real guest: output and status, stdin streaming with
// a checksum, a terminal that follows resizes, signals, concurrency and errors.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { harness, until } from "./test-helpers.js";

const h = harness("mm-exec-");
const runtimeDist = resolve(import.meta.dirname, "../../../packages/runtime/dist/index.js");
let id = "";

before(async () => {
  const r = await h.mm(["run", "-d", "--name", "box", "--network", "none", "--", "sleep", "3600"]);
  assert.equal(r.code, 0, r.stderr);
  id = r.stdout.trim();
});
after(() => h.cleanup());

describe("mm exec", () => {
  test("runs a command and passes its output and status through", async () => {
    const r = await h.mm(["exec", "box", "--", "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert.deepEqual([r.code, r.stdout, r.stderr], [5, "out\n", "err\n"]);
  });

  test("-e, -u and -w set the environment, user and directory", async () => {
    const r = await h.mm([
      "exec",
      "-e",
      "A=1",
      "-u",
      "65534",
      "-w",
      "/tmp",
      "box",
      "--",
      "sh",
      "-c",
      'echo "$A $(id -u) $(pwd)"',
    ]);
    assert.equal(r.stdout, "1 65534 /tmp\n", r.stderr);
  });

  test("a missing command is 127 with MM_EXEC_NOT_FOUND", async () => {
    const r = await h.mm(["exec", "box", "--", "/no/such"]);
    assert.equal(r.code, 127);
    assert.match(r.stderr, /MM_EXEC_NOT_FOUND/);
  });

  test("many sessions at once", async () => {
    const rs = await Promise.all(
      [1, 2, 3, 4, 5].map((n) => h.mm(["exec", "box", "--", "sh", "-c", `sleep 0.3; echo ${n}`])),
    );
    assert.deepEqual(
      rs.map((r) => r.stdout),
      ["1\n", "2\n", "3\n", "4\n", "5\n"],
    );
  });

  test("-i streams 100 MB through the guest and back, byte for byte", async () => {
    const child = h.spawnMm(["exec", "-i", "box", "--", "cat"], {}, "pipe");
    const sent = createHash("sha256");
    const got = createHash("sha256");
    let received = 0;
    child.stdout?.on("data", (d: Buffer) => {
      got.update(d);
      received += d.length;
    });
    const done = new Promise<number | null>((r) => child.on("close", (c) => r(c)));
    const total = 100 * 1024 * 1024;
    const chunk = randomBytes(1024 * 1024);
    for (let i = 0; i < total / chunk.length; i++) {
      const piece = Buffer.from(chunk);
      piece.writeUInt32BE(i, 0);
      sent.update(piece);
      if (!child.stdin?.write(piece)) await new Promise((r) => child.stdin?.once("drain", r));
    }
    child.stdin?.end();
    assert.equal(await done, 0);
    assert.equal(received, total);
    assert.equal(got.digest("hex"), sent.digest("hex"));
  });

  test("Ctrl-C reaches the process, not the machine", async () => {
    const child = h.spawnMm(["exec", "box", "--", "sleep", "300"]);
    const done = new Promise<number | null>((r) => child.on("close", (c) => r(c)));
    await new Promise((r) => setTimeout(r, 1500));
    child.kill("SIGINT");
    assert.equal(await done, 130);
    const m = JSON.parse((await h.mm(["inspect", "box"])).stdout)[0] as { state: string };
    assert.equal(m.state, "running");
  });

  test("a terminal session sees its size, and resizes (stty size)", async () => {
    const { ExecClient } = (await import(runtimeDist)) as typeof import("@mm/runtime");
    const client = await ExecClient.connect(join(h.state, "run", id, "exec.sock"));
    let out = "";
    client.on("stdout", (d) => {
      out += d.toString();
      client.ack(d.length);
    });
    const status = new Promise<number>((r) => client.on("exit", (st) => r(st.status)));
    client.start({
      args: ["sh", "-c", "stty size; tty; read x; stty size"],
      env: [],
      tty: { rows: 24, cols: 80 },
      stdin: true,
    });
    await until(() => (out.includes("/dev/pts/") ? true : undefined), 30_000, "first stty size");
    client.resize(40, 100);
    client.write(Buffer.from("\n"));
    assert.equal(await status, 0);
    assert.match(out, /^24 80\r?\n\/dev\/pts\/\d+\r?\n[\s\S]*40 100\r?\n$/);
  });

  test("mm cp copies a directory in and a large file out, byte for byte", async () => {
    const { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const dir = mkdtempSync(join(tmpdir(), "mm-cp-"));
    try {
      mkdirSync(join(dir, "tree/sub"), { recursive: true });
      writeFileSync(join(dir, "tree/a.txt"), "alpha\n");
      writeFileSync(join(dir, "tree/sub/b.txt"), "beta\n");
      assert.equal((await h.mm(["cp", join(dir, "tree"), "box:/tmp"])).code, 0);
      assert.equal((await h.mm(["cp", join(dir, "tree"), "box:/tmp/renamed"])).code, 0);
      const seen = await h.mm([
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "cat /tmp/tree/a.txt /tmp/tree/sub/b.txt /tmp/renamed/sub/b.txt",
      ]);
      assert.equal(seen.stdout, "alpha\nbeta\nbeta\n", seen.stderr);
      assert.equal((await h.mm(["exec", "box", "--", "sh", "-c", "head -c 5000000 /dev/urandom > /tmp/big"])).code, 0);
      const sum = (await h.mm(["exec", "box", "--", "md5sum", "/tmp/big"])).stdout.split(" ")[0];
      const out = await h.mm(["cp", "box:/tmp/big", join(dir, "big")]);
      assert.equal(out.code, 0, out.stderr);
      const { createHash } = await import("node:crypto");
      assert.equal(
        createHash("md5")
          .update(readFileSync(join(dir, "big")))
          .digest("hex"),
        sum,
      );
      const tree = await h.mm(["cp", "box:/tmp/tree", join(dir, "back")]);
      assert.equal(tree.code, 0, tree.stderr);
      assert.equal(readFileSync(join(dir, "back/sub/b.txt"), "utf8"), "beta\n");
      const missing = await h.mm(["cp", "box:/nope", dir]);
      assert.equal(missing.code, 125);
      assert.match(missing.stderr, /no such file or directory: \/nope/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a guest answering mm cp with a hostile archive cannot write outside the destination", async () => {
    const { mkdtempSync, mkdirSync, writeFileSync, readdirSync, rmSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const tarUtil = resolve(import.meta.dirname, "../../../packages/image/dist/tar-build.test-util.js");
    const { tarArchive } = (await import(tarUtil)) as { tarArchive: (e: object[]) => Buffer };
    const dir = mkdtempSync(join(tmpdir(), "mm-cp-evil-"));
    try {
      mkdirSync(join(dir, "sentinel"));
      mkdirSync(join(dir, "dest"));
      writeFileSync(
        join(dir, "evil.tar"),
        tarArchive([
          { name: "x/../../sentinel/dotdot", data: "escaped\n" },
          { name: "/abs-escape", data: "escaped\n" },
          { name: "x/link", type: "2", linkname: "../../sentinel" },
          { name: "x/link/through-symlink", data: "escaped\n" },
          { name: "x/hard", type: "1", linkname: "../../sentinel/../evil.tar" },
        ]),
      );
      assert.equal((await h.mm(["cp", join(dir, "evil.tar"), "box:/tmp/evil.tar"])).code, 0);
      // The guest (root in its VM) covers mm's read-only tools disk with a tmpfs holding a
      // "busybox" that answers every copy with that archive.
      const swap = await h.mm([
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "mkdir -p /tmp/x /tmp/real && cp /.mm/tools/bin/busybox /tmp/real/busybox && mount -t tmpfs fake /.mm/tools && " +
          "mkdir /.mm/tools/bin && printf '#!/tmp/real/busybox sh\\ncat /tmp/evil.tar\\n' > /.mm/tools/bin/busybox && " +
          "chmod 755 /.mm/tools/bin/busybox",
      ]);
      assert.equal(swap.code, 0, swap.stderr);
      const served = await h.mm(["exec", "box", "--", "/.mm/tools/bin/busybox", "tar"]);
      assert.match(served.stdout, /sentinel\/dotdot/, "the guest really serves the hostile archive");
      await h.mm(["cp", "box:/tmp/x", join(dir, "dest")]);
      assert.deepEqual(readdirSync(join(dir, "sentinel")), [], "nothing was written through the archive");
      assert.ok(!readdirSync(dir).includes("abs-escape"));
    } finally {
      await h.mm(["exec", "box", "--", "umount", "/.mm/tools"]);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("exec into a machine that is not running is MM_MACHINE_NOT_RUNNING", async () => {
    assert.equal((await h.mm(["run", "--name", "done", "--network", "none", "--", "true"])).code, 0);
    const r = await h.mm(["exec", "done", "--", "true"]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_MACHINE_NOT_RUNNING/);
  });
});
