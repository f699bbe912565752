// Host directories shared with guests (`-v /host/dir:/path[:ro]`), with real guests:
// changes are visible both ways, read-only is enforced on the host side, paths and
// symlinks stay inside the directory, no device nodes can be planted, a dead virtio-fs
// daemon is an error in the guest only, and 9p serves where virtio-fs cannot.

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { harness, until } from "./test-helpers.js";

const h = harness("mm-share-", { netns: false });
const top = mkdtempSync(join(tmpdir(), "mm-share-host-"));
const dir = join(top, "shared");
mkdirSync(dir);
writeFileSync(join(top, "secret.txt"), "HOST-SECRET\n");
after(async () => {
  await h.cleanup();
  rmSync(top, { recursive: true, force: true });
});
const ok = (r: { code: number | null; stderr: string }, what: string) =>
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
const sh = async (name: string, script: string) => {
  const r = await h.mm(["exec", name, "sh", "-c", script]);
  return { code: r.code, out: r.stdout.trim(), err: r.stderr };
};
type M = { state: string; shares: { driver: string; state: string }[] | null };
const inspect = async (name: string): Promise<M> => (JSON.parse((await h.mm(["inspect", name])).stdout) as M[])[0] as M;

for (const driver of ["virtio-fs", "9p"] as const) {
  describe(`shared directories over ${driver}`, () => {
    const env: Record<string, string> = driver === "9p" ? { MM_FS: "9p" } : {};
    const name = `share-${driver === "9p" ? "9p" : "vfs"}`;

    test("changes are visible both ways", async () => {
      writeFileSync(join(dir, "from-host"), "hello guest\n");
      ok(await h.mm(["run", "-d", "--name", name, "-v", `${dir}:/mnt/host`, "--", "sleep", "600"], env), "run");
      assert.equal((await inspect(name)).shares?.[0]?.driver, driver);
      assert.equal((await sh(name, "cat /mnt/host/from-host")).out, "hello guest");
      ok(await h.mm(["exec", name, "sh", "-c", "echo hello host > /mnt/host/from-guest"]), "guest write");
      assert.equal(readFileSync(join(dir, "from-guest"), "utf8"), "hello host\n");
      writeFileSync(join(dir, "from-host"), "changed\n");
      assert.equal((await sh(name, "cat /mnt/host/from-host")).out, "changed");
    });

    test("a symlink leading out of the directory resolves in the guest, never to the host's file", async () => {
      symlinkSync("../secret.txt", join(dir, `leak-${driver}`));
      const r = await sh(name, `cat /mnt/host/leak-${driver}; cat /mnt/host/../secret.txt; ls /mnt`);
      assert.doesNotMatch(r.out, /HOST-SECRET/);
      // A guest's own symlink to its /etc/shadow reads the guest's file, inside the guest.
      const g = await sh(name, "ln -sf /etc/passwd /mnt/host/pw && head -1 /mnt/host/pw");
      assert.match(g.out, /^root:/);
    });

    test("the guest cannot plant a device node on the host", async () => {
      const r = await sh(name, `mknod /mnt/host/null-${driver} c 1 3`);
      // virtio-fs refuses it (its daemon has no CAP_MKNOD); 9p (mapped-xattr) keeps it as a
      // plain file with the node's attributes in xattrs. Either way the host has no device.
      if (driver === "virtio-fs") assert.notEqual(r.code, 0, "mknod must fail");
      const st = statSync(join(dir, `null-${driver}`), { throwIfNoEntry: false });
      assert.ok(!st || (!st.isCharacterDevice() && !st.isBlockDevice()), "no device node on the host");
    });

    test("read-only is enforced on the host: even a guest that remounts read-write cannot write", async () => {
      const ro = `${name}-ro`;
      ok(await h.mm(["run", "-d", "--name", ro, "-v", `${dir}:/ro:ro`, "--", "sleep", "600"], env), "run ro");
      const a = await sh(ro, "echo x > /ro/nope");
      assert.notEqual(a.code, 0);
      assert.match(a.err, /Read-only file system/);
      const b = await sh(ro, "mount -o remount,rw /ro; echo x > /ro/nope2");
      assert.notEqual(b.code, 0, "the host's export stays read-only");
      assert.throws(() => readFileSync(join(dir, "nope2")));
      ok(await h.mm(["rm", "-f", ro]), "rm");
    });
  });
}

describe("bad mounts and a dead daemon", () => {
  test("a missing path, a file, / and the state root are refused (the last two unless --force-mount)", async () => {
    writeFileSync(join(top, "file"), "x");
    for (const [src, why] of [
      [join(top, "nope"), /does not exist/],
      [join(top, "file"), /not a directory/],
      ["/", /holds mm's state.*hint: .*--force-mount/s],
      [h.state, /holds mm's state/],
      [join(h.state, "machines"), /holds mm's state/],
    ] as const) {
      const r = await h.mm(["run", "--rm", "-v", `${src}:/x`, "--", "true"]);
      assert.equal(r.code, 125, src);
      assert.match(r.stderr, /MM_INVALID_VOLUME/);
      assert.match(r.stderr, why, src);
    }
    const forced = await h.mm([
      "run",
      "--rm",
      "--force-mount",
      "-v",
      "/:/hostroot:ro",
      "--",
      "ls",
      "/hostroot/etc/hostname",
    ]);
    ok(forced, "forced");
  });

  test("virtiofsd killed: the machine and the host carry on, inspect says so, and the share fails rather than hangs", async () => {
    const name = "share-vfs";
    const pids = (await import("node:child_process"))
      .execFileSync("pgrep", ["-f", "socket-path=.*fs0.sock"], { encoding: "utf8" })
      .trim()
      .split("\n")
      .map(Number);
    for (const p of pids) process.kill(p, "SIGKILL");
    await until(async () => ((await inspect(name)).shares?.[0]?.state.startsWith("ended") ? true : undefined), 10_000);
    assert.equal((await inspect(name)).state, "running");
    assert.equal((await sh(name, "echo alive")).out, "alive");
    // virtio-fs cannot fail requests nobody answers: mm covers the dead share in the guest,
    // so its path fails at once (and says why) instead of waiting forever.
    const read = await until(
      async () => {
        const r = await sh(
          name,
          "cat /mnt/host/MM_SHARE_ENDED 2>&1 && timeout 3 cat /mnt/host/from-host 2>&1; echo rc=$?",
        );
        return /rc=1$/.test(r.out) ? r : undefined;
      },
      10_000,
      "the share to fail",
    );
    assert.match(read.out, /virtio-fs daemon for this share ended/);
    assert.match(read.out, /from-host.*No such file/);
    const write = await sh(name, "echo x > /mnt/host/new; echo rc=$?");
    assert.equal(write.out, "rc=1");
    assert.match(write.err, /Read-only file system/);
    ok(await h.mm(["rm", "-f", name]), "rm -f still works");
  });
});

test("9p under the jail: the VMM keeps its own uid; the share is idmapped, so files stay the owner's", async () => {
  const dir = mkdtempSync(join(tmpdir(), "mm-share-9pjail-"));
  try {
    const { chownSync } = await import("node:fs");
    writeFileSync(join(dir, "theirs"), "owned by 1234\n");
    chownSync(dir, 1234, 1234);
    chownSync(join(dir, "theirs"), 1234, 1234);
    const r = await h.mm(["run", "-d", "--name", "ninep-jail", "-v", `${dir}:/mnt`, "--", "sleep", "600"], {
      MM_FS: "9p",
    });
    assert.equal(r.code, 0, r.stderr);
    const m = JSON.parse((await h.mm(["inspect", "ninep-jail"])).stdout)[0] as {
      pids: { vmm: number };
      jail: { uid: number } | null;
    };
    assert.ok(m.jail && m.jail.uid >= 1_500_000_000, "the VMM runs as the machine's own uid");
    assert.match(readFileSync(`/proc/${m.pids.vmm}/status`, "utf8"), new RegExp(`^Uid:\\s+${m.jail.uid}\\s`, "m"));
    const w = await h.mm(["exec", "ninep-jail", "sh", "-c", "cat /mnt/theirs && echo from the guest > /mnt/mine"]);
    assert.equal(w.stdout, "owned by 1234\n", w.stderr);
    assert.equal(statSync(join(dir, "mine")).uid, 1234, "what the guest writes is the directory owner's on the host");
  } finally {
    await h.mm(["rm", "-f", "ninep-jail"]);
    rmSync(dir, { recursive: true, force: true });
  }
});
