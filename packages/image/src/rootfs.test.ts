// End to end: real layer blobs (gzip + zstd) → buildImageRootfs → an ext4 inspected
// with debugfs (e2fsprogs), never mounted.

import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";
import { gzipSync, zstdCompressSync } from "node:zlib";
import { isMmError } from "@mm/core";
import { buildImageRootfs, defaultJournalBytes, type RootfsEvent, rootfsGeometry, rootfsPrefix } from "./rootfs.js";
import { tarArchive } from "./tar-build.test-util.js";
import { findOnPath } from "./unpack.js";

const GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";
const DIGEST = `sha256:${"ab".repeat(32)}`;
const MIB = 1024 * 1024;

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function stateDir(): string {
  const d = mkdtempSync(join(tmpdir(), "mm-rootfs-"));
  dirs.push(d);
  return d;
}

const hasXattrTool = findOnPath("setfattr") !== null;
const cap = Buffer.from("0100000200200000000000000000000000000000", "hex");

function writeLayers(dir: string) {
  const lower = tarArchive([
    { name: "bin/", type: "5" },
    { name: "bin/sh", data: "#!not-run", mode: 0o755 },
    { name: "usr/bin/sudo", data: "sudo", mode: 0o4755 },
    { name: "usr/bin/crontab", data: "cron", mode: 0o2755, gid: 102 },
    { name: "home/user/", type: "5", mode: 0o750, uid: 1000, gid: 1000 },
    { name: "home/user/notes", data: "mine", mode: 0o600, uid: 1000, gid: 1000 },
    { name: "lib64", type: "2", linkname: "usr/lib" },
    { name: "etc/", type: "5" },
    { name: "etc/removed", data: "gone soon" },
    { name: "etc/kept", data: "kept" },
    { name: "var/cache/apt/", type: "5" },
    { name: "var/cache/apt/pkgcache.bin", data: "old" },
    { name: "bin/ping", data: "ping", mode: 0o755, pax: { "SCHILY.xattr.security.capability": cap } },
    { name: "../../../escape-attempt", data: "clamped" },
  ]);
  const upper = tarArchive([
    { name: "etc/.wh.removed" },
    { name: "var/cache/apt/.wh..wh..opq" },
    { name: "var/cache/apt/fresh", data: "new" },
    { name: "dev/", type: "5" },
    { name: "dev/null", type: "3", devmajor: 1, devminor: 3, mode: 0o666 },
    { name: "usr/bin/sudoedit", type: "1", linkname: "usr/bin/sudo" },
    // Hostile: try to redirect mm-init and a mount point elsewhere in the image.
    { name: ".mm", type: "2", linkname: "/bin" },
    { name: "proc", type: "2", linkname: "/etc" },
  ]);
  const l1 = join(dir, "layer1");
  const l2 = join(dir, "layer2");
  writeFileSync(l1, gzipSync(lower));
  writeFileSync(l2, zstdCompressSync(upper));
  return [
    { path: l1, mediaType: GZIP, digest: "sha256:l1" },
    { path: l2, mediaType: ZSTD, digest: "sha256:l2" },
  ];
}

const debugfs = (img: string, cmd: string) =>
  execFileSync("debugfs", ["-R", cmd, img], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });

function inode(img: string, path: string) {
  const out = debugfs(img, `stat ${path}`);
  const m = (re: RegExp) => re.exec(out)?.[1];
  return {
    type: m(/Type: (\S+)/),
    mode: Number.parseInt(m(/Mode:\s+([0-7]+)/) ?? "NaN", 8),
    uid: Number(m(/User:\s+(\d+)/)),
    gid: Number(m(/Group:\s+(\d+)/)),
    links: Number(m(/Links: (\d+)/)),
    linkTarget: m(/Fast link dest: "([^"]*)"/),
    device: m(/Device major\/minor number: (\S+)/),
    raw: out,
  };
}

const extraFiles = [{ path: "/.mm/init", content: "#!mm-init stand-in", mode: 0o755 }];

test("two layers and mm-init become one ext4 with owners, modes, links, devices and whiteouts", async () => {
  const state = stateDir();
  const layers = writeLayers(state);
  const events: RootfsEvent[] = [];
  const r = await buildImageRootfs({
    stateDir: state,
    image: { digest: DIGEST, layers },
    extraFiles,
    onEvent: (e) => events.push(e),
  });
  assert.equal(r.cached, false);
  assert.match(r.path, new RegExp(`/rootfs/${rootfsPrefix(DIGEST)}-[0-9a-f]{16}\\.ext4$`));
  assert.equal(r.sizeBytes, 64 * MIB, "small content gets the 64 MiB floor");
  assert.equal(statSync(r.path).size, r.sizeBytes);
  assert.equal(statSync(r.path).mode & 0o777, 0o444);
  assert.deepEqual(readdirSync(join(state, "tmp")), [], "staging removed");
  assert.deepEqual(
    events.map((e) => e.type),
    ["layer-applied", "layer-applied", "populated", "built"],
  );
  execFileSync("e2fsck", ["-fn", r.path], { stdio: "ignore" }); // throws unless clean

  const img = r.path;
  const sudo = inode(img, "/usr/bin/sudo");
  assert.equal(sudo.type, "regular");
  assert.equal(sudo.mode, 0o4755);
  assert.equal(sudo.uid, 0);
  assert.equal(sudo.links, 2, "sudoedit is a hardlink across layers");
  assert.equal(inode(img, "/usr/bin/crontab").mode, 0o2755);
  assert.equal(inode(img, "/usr/bin/crontab").gid, 102);
  const home = inode(img, "/home/user");
  assert.deepEqual([home.type, home.mode, home.uid, home.gid], ["directory", 0o750, 1000, 1000]);
  const notes = inode(img, "/home/user/notes");
  assert.deepEqual([notes.mode, notes.uid, notes.gid], [0o600, 1000, 1000]);
  const lib64 = inode(img, "/lib64");
  assert.equal(lib64.type, "symlink");
  assert.equal(lib64.linkTarget, "usr/lib");
  const devnull = inode(img, "/dev/null");
  assert.equal(devnull.type, "character");
  assert.equal(devnull.mode, 0o666);
  assert.match(devnull.device ?? "", /^0?1:0?3$/);
  const root = inode(img, "/");
  assert.deepEqual([root.mode, root.uid, root.gid], [0o755, 0, 0]);

  // mm-init at exactly /.mm/init: the image's /.mm symlink was replaced, not followed.
  const mm = inode(img, "/.mm");
  assert.equal(mm.type, "directory");
  const init = inode(img, "/.mm/init");
  assert.deepEqual([init.type, init.mode, init.uid, init.gid], ["regular", 0o755, 0, 0]);
  assert.equal(debugfs(img, "cat /.mm/init"), "#!mm-init stand-in");
  assert.match(debugfs(img, "stat /bin/init"), /^$/, "nothing landed in /bin");
  // Mount points are real directories.
  for (const p of ["/proc", "/sys", "/dev", "/tmp", "/run"]) assert.equal(inode(img, p).type, "directory", p);
  assert.equal(inode(img, "/tmp").mode, 0o1777);

  // Whiteout and opaque directory.
  assert.equal(inode(img, "/etc/removed").type, undefined);
  assert.equal(inode(img, "/etc/kept").type, "regular");
  const apt = debugfs(img, "ls /var/cache/apt");
  assert.match(apt, /fresh/);
  assert.doesNotMatch(apt, /pkgcache/);
  assert.equal(inode(img, "/escape-attempt").type, "regular");
  const top = new Set(debugfs(img, "ls /").split(/\s+/));
  for (const name of ["bin", "usr", "home", "lib64", "etc", "var", "dev", ".mm", "proc", "sys", "tmp", "run"]) {
    assert.ok(top.has(name), name);
  }
  if (hasXattrTool) {
    assert.match(debugfs(img, "ea_get /bin/ping security.capability"), /01 00 00 02 00 20/);
  }

  // Second call: cached, no rebuild.
  const again = await buildImageRootfs({ stateDir: state, image: { digest: DIGEST, layers }, extraFiles });
  assert.deepEqual(again, { path: r.path, sizeBytes: r.sizeBytes, cached: true });
  // A different mm-init gets its own base; the first one is left alone.
  const other = await buildImageRootfs({
    stateDir: state,
    image: { digest: DIGEST, layers },
    extraFiles: [{ ...extraFiles[0]!, content: "#!newer init" }],
  });
  assert.notEqual(other.path, r.path);
  assert.ok(existsSync(r.path));
});

test("concurrent builds of one image, in this process and in another, converge on one file", async () => {
  const state = stateDir();
  const layers = writeLayers(state);
  const opts = { stateDir: state, image: { digest: DIGEST, layers }, extraFiles };
  const rootfsJs = join(fileURLToPath(new URL(".", import.meta.url)), "rootfs.js");
  const child = () =>
    new Promise<string>((resolve, reject) => {
      execFile(
        process.execPath,
        [
          "--input-type=module",
          "-e",
          `import { buildImageRootfs } from ${JSON.stringify(rootfsJs)};
           const r = await buildImageRootfs(${JSON.stringify(opts)});
           process.stdout.write(r.path);`,
        ],
        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout)),
      );
    });
  const [a, b, c, d] = await Promise.all([child(), child(), buildImageRootfs(opts), buildImageRootfs(opts)]);
  assert.equal(a, c.path);
  assert.equal(b, c.path);
  assert.equal(d.path, c.path);
  assert.deepEqual(readdirSync(join(state, "rootfs")), [c.path.split("/").pop()]);
  assert.deepEqual(readdirSync(join(state, "tmp")), []);
  execFileSync("e2fsck", ["-fn", c.path], { stdio: "ignore" });
});

test("a bad layer leaves no base and no staging behind", async () => {
  const state = stateDir();
  const bad = join(state, "bad");
  writeFileSync(bad, gzipSync(Buffer.from("garbage ".repeat(200))));
  const unknown = join(state, "unknown");
  writeFileSync(unknown, "x");
  for (const [layer, code] of [
    [{ path: bad, mediaType: GZIP }, "MM_BAD_LAYER"],
    [{ path: unknown, mediaType: "application/vnd.oci.image.layer.v1.tar+lz4" }, "MM_UNSUPPORTED_MEDIA_TYPE"],
    [{ path: join(state, "missing"), mediaType: GZIP }, "MM_ROOTFS_FAILED"],
  ] as const) {
    await assert.rejects(buildImageRootfs({ stateDir: state, image: { digest: DIGEST, layers: [layer] } }), (e) =>
      isMmError(e, code),
    );
    assert.deepEqual(readdirSync(join(state, "rootfs")), []);
    assert.deepEqual(readdirSync(join(state, "tmp")), []);
  }
  await assert.rejects(buildImageRootfs({ stateDir: state, image: { digest: "sha256:../../etc", layers: [] } }), (e) =>
    isMmError(e, "MM_INTERNAL"),
  );
});

test("staging left by a dead builder is removed by the next build", async () => {
  const state = stateDir();
  const stale = join(state, "tmp", "rootfs-999999999-abc");
  execFileSync("mkdir", ["-p", join(stale, "root", "etc")]);
  await buildImageRootfs({ stateDir: state, image: { digest: DIGEST, layers: [] }, extraFiles });
  assert.ok(!existsSync(stale));
});

test("geometry: content + 30% free after ext4's own overhead, 64 MiB floor, MiB-rounded", () => {
  assert.deepEqual(rootfsGeometry({ dataBytes: 0, inodes: 0 }), { sizeBytes: 64 * MIB, inodes: 4096 });
  const base = 1000 * MIB + 40_000 * 256;
  const g = rootfsGeometry({ dataBytes: 1000 * MIB, inodes: 40_000 });
  assert.equal(g.sizeBytes % MIB, 0);
  const overhead = defaultJournalBytes(g.sizeBytes / 4096) + g.inodes * 256;
  assert.ok(g.sizeBytes - overhead >= base * 1.3, `${g.sizeBytes} leaves less than 30% free`);
  assert.ok(g.sizeBytes <= base * 1.3 * 1.1, `${g.sizeBytes} is more than needed`);
  assert.ok(g.inodes >= 40_000 * 1.3);
  const many = rootfsGeometry({ dataBytes: 10 * MIB, inodes: 200_000 });
  assert.ok(many.inodes >= 260_000, "many small files get enough inodes");
  assert.equal(defaultJournalBytes(16384), 4 * MIB);
  assert.equal(defaultJournalBytes(300_000), 32 * MIB);
});

test("content above the floor gets 30% of it free in the ext4", async () => {
  const state = stateDir();
  const layer = join(state, "big");
  const data = Buffer.alloc(60 * MIB, 0x61);
  writeFileSync(layer, gzipSync(tarArchive([{ name: "big", data }]), { level: 1 }));
  const r = await buildImageRootfs({
    stateDir: state,
    image: { digest: DIGEST, layers: [{ path: layer, mediaType: GZIP }] },
    extraFiles,
  });
  assert.ok(r.sizeBytes > 64 * MIB);
  const header = execFileSync("dumpe2fs", ["-h", r.path], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const free = Number(/Free blocks:\s+(\d+)/.exec(header)?.[1]) * 4096;
  assert.ok(free >= 0.3 * data.length, `${free} bytes free for ${data.length} of content`);
  assert.ok(free <= 0.5 * data.length, `${free} bytes free is more headroom than asked for`);
});
