// applyLayer against the real file system, with hostile layers in the spirit of
// containerd's archive breakout tests. Every test unpacks into <tmp>/root next to a
// sentinel directory <tmp>/sentinel, and checks afterwards that nothing outside the
// root was created, changed or removed.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, test } from "node:test";
import { gzipSync, zstdCompressSync } from "node:zlib";
import { type ErrorCode, isMmError } from "@mm/core";
import { type RawEntry, tarArchive, tarHeader } from "./tar-build.test-util.js";
import {
  applyLayer,
  DEFAULT_MAX_LAYER_BYTES,
  findOnPath,
  type LayerStats,
  layerCompression,
  mapUnpackError,
  maxLayerBytesFromEnv,
} from "./unpack.js";

const TAR = "application/vnd.oci.image.layer.v1.tar";
const GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";

const bases: string[] = [];
after(() => {
  for (const b of bases) rmSync(b, { recursive: true, force: true });
});

interface Sandbox {
  readonly base: string;
  readonly root: string;
  readonly sentinel: string;
  /** Unpacks layers in order. */
  apply(entries: readonly RawEntry[], options?: { mediaType?: string; maxBytes?: number }): Promise<LayerStats>;
  /** Asserts the sentinel and everything beside the root are as they were. */
  check(): void;
  at(path: string): string;
}

type Snapshot = Map<string, string>;
function snapshot(dir: string): Snapshot {
  const out: Snapshot = new Map();
  const walk = (p: string, rel: string) => {
    const st = lstatSync(p);
    let what = `${st.mode}:${st.uid}:${st.gid}:${st.nlink}:${st.mtimeMs}`;
    if (st.isSymbolicLink()) what += `->${readlinkSync(p)}`;
    else if (st.isFile()) what += `=${readFileSync(p, "utf8")}`;
    out.set(rel, what);
    if (st.isDirectory()) for (const n of readdirSync(p).sort()) walk(join(p, n), `${rel}/${n}`);
  };
  walk(dir, "");
  return out;
}

function sandbox(): Sandbox {
  const base = mkdtempSync(join(tmpdir(), "mm-unpack-"));
  bases.push(base);
  const root = join(base, "root");
  const sentinel = join(base, "sentinel");
  mkdirSync(root, { mode: 0o755 });
  mkdirSync(join(sentinel, "sub"), { recursive: true });
  writeFileSync(join(sentinel, "keep"), "sentinel");
  writeFileSync(join(sentinel, "sub", "deep"), "sentinel");
  const before = snapshot(sentinel);
  return {
    base,
    root,
    sentinel,
    at: (p) => join(root, p),
    apply: (entries, options = {}) => {
      const mediaType = options.mediaType ?? TAR;
      const raw = tarArchive(entries);
      const data = mediaType === GZIP ? gzipSync(raw) : mediaType === ZSTD ? zstdCompressSync(raw) : raw;
      return applyLayer(root, Readable.from([data]), mediaType, {
        maxBytes: options.maxBytes ?? 64 * 1024 * 1024,
      });
    },
    check: () => {
      assert.deepEqual(readdirSync(base).sort(), ["root", "sentinel"], "nothing created beside the root");
      assert.deepEqual(snapshot(sentinel), before, "sentinel untouched");
      assert.ok(lstatSync(root).isDirectory(), "root is still a real directory");
    },
  };
}

const rejectsWith = async (p: Promise<unknown>, code: ErrorCode) =>
  assert.rejects(p, (e) => {
    assert.ok(isMmError(e, code), `expected ${code}, got ${(e as Error)?.message ?? e}`);
    return true;
  });

const file = (name: string, data = name, extra: Partial<RawEntry> = {}): RawEntry => ({ name, data, ...extra });
const dir = (name: string, extra: Partial<RawEntry> = {}): RawEntry => ({ name, type: "5", ...extra });
const sym = (name: string, linkname: string): RawEntry => ({ name, type: "2", linkname });
const hard = (name: string, linkname: string): RawEntry => ({ name, type: "1", linkname });
const read = (p: string) => readFileSync(p, "utf8");

test("plain layer: files, dirs, symlinks land where they should", async () => {
  const s = sandbox();
  const stats = await s.apply([
    dir("etc/"),
    file("etc/hostname", "box\n"),
    sym("bin", "usr/bin"),
    file("usr/bin/sh", "#!"),
  ]);
  assert.equal(read(s.at("etc/hostname")), "box\n");
  assert.equal(readlinkSync(s.at("bin")), "usr/bin");
  assert.equal(read(s.at("bin/sh")), "#!");
  assert.equal(stats.files, 2);
  assert.equal(stats.entries, 4);
  assert.equal(stats.fileBytes, 6);
  s.check();
});

test("../ and absolute names are clamped inside the root", async () => {
  const s = sandbox();
  await s.apply([
    file("../escape"),
    file("../sentinel/pwned"),
    file("a/../../sentinel/pwned2"),
    file("/abs-file"),
    file(`${s.sentinel}/pwned3`),
    dir(`../../../../..${s.sentinel}/evil/`),
  ]);
  assert.equal(read(s.at("escape")), "../escape");
  assert.equal(read(s.at("sentinel/pwned")), "../sentinel/pwned");
  assert.equal(read(s.at("sentinel/pwned2")), "a/../../sentinel/pwned2");
  assert.equal(read(s.at("abs-file")), "/abs-file");
  assert.ok(existsSync(s.at(`${s.sentinel}/pwned3`)));
  assert.ok(statSync(s.at(`${s.sentinel}/evil`)).isDirectory());
  s.check();
});

// Escapes aim at the sandbox's sentinel (by its absolute host path, or "../sentinel"
// from the root), so a regression fails the sentinel check instead of touching the host.
test("a file written through a symlink to /, .., or a host path stays inside", async () => {
  const s = sandbox();
  await s.apply([
    sym("toroot", "/"),
    file(`toroot${s.sentinel}/through-root`),
    sym("up", ".."),
    file("up/through-up"),
    sym("far", "../../../../.."),
    file(`far${s.sentinel}/through-far`),
    sym("host", s.sentinel),
    file("host/through-host"),
    dir("host/sub/"),
    file("host/sub/deep", "overwritten?"),
  ]);
  assert.ok(existsSync(s.at(`${s.sentinel}/through-root`)));
  assert.ok(existsSync(s.at("through-up")));
  assert.ok(existsSync(s.at(`${s.sentinel}/through-far`)));
  assert.ok(existsSync(s.at(`${s.sentinel}/through-host`)));
  assert.equal(read(s.at(`${s.sentinel}/sub/deep`)), "overwritten?");
  for (const l of ["toroot", "up", "far", "host"]) assert.ok(lstatSync(s.at(l)).isSymbolicLink(), l);
  s.check();
});

test("symlink chains resolve inside the root; a loop is a bad layer", async () => {
  const s = sandbox();
  await s.apply([
    sym("c1", "c2"),
    sym("c2", "sub/c3"),
    sym("sub/c3", "../../sentinel"),
    file("c1/via-chain"),
    sym("abs1", "/abs2"),
    sym("abs2", `${s.sentinel}/sub`),
    file("abs1/via-abs-chain"),
  ]);
  assert.ok(existsSync(s.at("sentinel/via-chain")));
  assert.ok(existsSync(s.at(`${s.sentinel}/sub/via-abs-chain`)));
  s.check();
  const t = sandbox();
  await rejectsWith(t.apply([sym("l1", "l2"), sym("l2", "l1"), file("l1/x")]), "MM_BAD_LAYER");
  t.check();
});

test("hardlinks: to outside is rejected, to a symlink links the symlink itself", async () => {
  const s = sandbox();
  await rejectsWith(s.apply([hard("h1", "../sentinel/keep")]), "MM_BAD_LAYER");
  await rejectsWith(s.apply([hard("h2", `${s.sentinel}/keep`)]), "MM_BAD_LAYER");
  await rejectsWith(s.apply([sym("d", s.sentinel), hard("h3", "d/keep")]), "MM_BAD_LAYER");
  await rejectsWith(s.apply([sym("d2", "../sentinel"), hard("h4", "d2/keep")]), "MM_BAD_LAYER");
  assert.equal(lstatSync(join(s.sentinel, "keep")).nlink, 1);
  s.check();

  const t = sandbox();
  await t.apply([
    sym("sl", `${t.sentinel}/keep`),
    hard("hl", "sl"),
    file("f", "data"),
    hard("hf", "./f"),
    hard("habs", "/f"),
  ]);
  assert.ok(lstatSync(t.at("hl")).isSymbolicLink());
  assert.equal(readlinkSync(t.at("hl")), `${t.sentinel}/keep`);
  assert.equal(lstatSync(t.at("hl")).ino, lstatSync(t.at("sl")).ino);
  assert.equal(lstatSync(t.at("hf")).ino, lstatSync(t.at("f")).ino);
  assert.equal(lstatSync(t.at("habs")).ino, lstatSync(t.at("f")).ino);
  assert.equal(lstatSync(t.at("f")).nlink, 3);
  t.check();

  const u = sandbox();
  await rejectsWith(u.apply([dir("d/"), hard("hd", "d")]), "MM_BAD_LAYER"); // hardlink to a directory
  await rejectsWith(u.apply([hard("hr", "/")]), "MM_BAD_LAYER");
  await rejectsWith(u.apply([hard("hm", "missing")]), "MM_BAD_LAYER");
  u.check();
});

test("a symlink replacing a directory redirects later entries inside the root only", async () => {
  const s = sandbox();
  await s.apply([dir("d/"), file("d/lower")]);
  await s.apply([sym("d", s.sentinel), file("d/keep", "pwned"), sym("e", "../sentinel"), file("e/keep", "pwned")]);
  assert.ok(lstatSync(s.at("d")).isSymbolicLink());
  assert.equal(read(s.at(`${s.sentinel}/keep`)), "pwned");
  assert.equal(read(s.at("sentinel/keep")), "pwned");
  s.check();
  // Same within one layer.
  const t = sandbox();
  await t.apply([dir("d/"), file("d/x"), sym("d", ".."), file("d/y")]);
  assert.ok(lstatSync(t.at("d")).isSymbolicLink());
  assert.ok(existsSync(t.at("y")));
  t.check();
});

test("a symlink (or file) named . / or ./ cannot replace the root", async () => {
  const s = sandbox();
  await s.apply([sym(".", s.sentinel), sym("./", s.sentinel), sym("/", "../sentinel"), file(".", "x"), file("after")]);
  await s.apply([{ name: ".", type: "5", mode: 0o777 }]);
  assert.ok(lstatSync(s.root).isDirectory());
  assert.equal(lstatSync(s.root).mode & 0o7777, 0o755, "root entries are ignored, as containerd does");
  assert.equal(read(s.at("after")), "after");
  s.check();
});

test("a file replaces a symlink without following it; a dir replaces a file; dirs merge", async () => {
  const s = sandbox();
  await s.apply([
    sym("f", `${s.sentinel}/keep`),
    sym("g", "../sentinel/keep"),
    file("h"),
    dir("k/", { mode: 0o700 }),
    file("k/child"),
  ]);
  await s.apply([file("f", "pwned"), file("g", "pwned"), dir("h/"), dir("k/", { mode: 0o750, uid: 7 })]);
  assert.ok(lstatSync(s.at("f")).isFile());
  assert.equal(read(s.at("f")), "pwned");
  assert.ok(lstatSync(s.at("g")).isFile());
  assert.ok(lstatSync(s.at("h")).isDirectory());
  assert.equal(read(s.at("k/child")), "k/child", "an existing directory keeps its children");
  assert.equal(lstatSync(s.at("k")).mode & 0o7777, 0o750);
  assert.equal(lstatSync(s.at("k")).uid, 7);
  s.check();
});

test("a file replacing a directory removes it without following symlinks inside", async () => {
  const s = sandbox();
  await s.apply([
    dir("d/"),
    sym("d/out", s.sentinel),
    sym("d/out2", "../.."),
    dir("d/sub/"),
    sym("d/sub/o", `${s.sentinel}/keep`),
  ]);
  await s.apply([file("d", "now a file")]);
  assert.equal(read(s.at("d")), "now a file");
  s.check();
});

test("an entry whose parent is a regular file is a bad layer", async () => {
  const s = sandbox();
  await rejectsWith(s.apply([file("f"), file("f/x")]), "MM_BAD_LAYER");
  s.check();
});

test("whiteouts: delete lower files and dirs, never through or beyond a symlink", async () => {
  const s = sandbox();
  await s.apply([
    file("etc/passwd"),
    file("etc/group"),
    dir("var/cache/"),
    file("var/cache/x"),
    sym("w", s.sentinel),
    sym("w2", ".."),
    sym("wd", "etc"),
    dir("dd/"),
    sym("dd/out", s.sentinel),
  ]);
  await s.apply([
    file("etc/.wh.passwd"),
    file("var/.wh.cache"),
    file("w/.wh.keep"), // resolves to <root>/<sentinel>/keep: nothing there
    file("w/.wh.sub"),
    file("w2/.wh.sentinel"),
    file(".wh.w2"), // removes the symlink itself, not its target
    file("wd/.wh.group"), // through an in-root symlink: removes etc/group
    file(".wh.dd"), // recursive removal does not follow dd/out
    file(".wh.nothing-here"),
  ]);
  assert.ok(!existsSync(s.at("etc/passwd")));
  assert.ok(!existsSync(s.at("etc/group")));
  assert.ok(!existsSync(s.at("var/cache")));
  assert.ok(existsSync(s.at("var")));
  assert.ok(lstatSync(s.at("w")).isSymbolicLink());
  assert.ok(!existsSync(s.at("w2")) && !existsSync(s.at("dd")));
  assert.ok(!existsSync(s.at(".wh.passwd")) && !existsSync(s.at("etc/.wh.passwd")), "markers are not written");
  s.check();
});

test("whiteouts of ., .. and empty names are rejected", async () => {
  for (const name of [".wh..", ".wh...", "etc/.wh..", "etc/.wh...", "etc/.wh."]) {
    const s = sandbox();
    await s.apply([file("etc/passwd")]);
    await rejectsWith(s.apply([file(name)]), "MM_BAD_LAYER");
    assert.ok(existsSync(s.at("etc/passwd")), name);
    s.check();
  }
});

test("opaque directories: hide lower contents, keep this layer's, never leave the root", async () => {
  const s = sandbox();
  await s.apply([
    file("etc/passwd"),
    file("etc/lower/deep"),
    dir("etc/kept/"),
    file("etc/kept/lower-child"),
    file("lowervar/lib/x"),
    sym("lnk", "/lowervar"),
    sym("out", s.sentinel),
    file(`${s.sentinel.slice(1)}/in-root-copy`),
  ]);
  await s.apply([
    file("etc/before-marker"),
    dir("etc/kept/"),
    file("etc/.wh..wh..opq"),
    file("etc/after-marker"),
    file("etc/kept/new-child"),
    file("lnk/.wh..wh..opq"), // opaque through an in-root symlink: clears <root>/lowervar
    file("out/.wh..wh..opq"), // resolves to <root>/<sentinel>, never the host sentinel
    file("missing/.wh..wh..opq"),
    file("etc/.wh..wh.plnk"), // reserved: ignored
    dir(".wh..wh.plnk/"),
    file(".wh..wh.plnk/1234"),
  ]);
  assert.deepEqual(readdirSync(s.at("etc")).sort(), ["after-marker", "before-marker", "kept"]);
  assert.deepEqual(readdirSync(s.at("etc/kept")), ["new-child"]);
  assert.deepEqual(readdirSync(s.at("lowervar")), []);
  assert.deepEqual(readdirSync(s.at(s.sentinel.slice(1))), []);
  assert.ok(!existsSync(s.at("missing")));
  assert.ok(!existsSync(s.at(".wh..wh.plnk")));
  s.check();
});

test("opaque root: everything lower goes, this layer's siblings stay", async () => {
  const s = sandbox();
  await s.apply([file("a"), file("b/c"), sym("l", "../sentinel")]);
  await s.apply([file("z"), file(".wh..wh..opq"), file("y/x")]);
  assert.deepEqual(readdirSync(s.root).sort(), ["y", "z"]);
  s.check();
});

test("a whiteout does not delete what the same layer wrote", async () => {
  const s = sandbox();
  await s.apply([file("d/lower")]);
  await s.apply([file("same"), file(".wh.same"), file("d/upper"), file(".wh.d")]);
  assert.ok(existsSync(s.at("same")));
  assert.deepEqual(readdirSync(s.at("d")), ["upper"], "the lower child is hidden, the same-layer one kept");
  s.check();
});

test("hardlinks across layers and within a layer share the inode", async () => {
  const s = sandbox();
  await s.apply([file("usr/bin/perl", "perl"), file("a/one", "1"), hard("a/two", "a/one")]);
  await s.apply([hard("usr/bin/perl5", "usr/bin/perl"), hard("usr/bin/perl5.36", "/usr/bin/perl5")]);
  const ino = lstatSync(s.at("usr/bin/perl")).ino;
  assert.equal(lstatSync(s.at("usr/bin/perl5")).ino, ino);
  assert.equal(lstatSync(s.at("usr/bin/perl5.36")).ino, ino);
  assert.equal(lstatSync(s.at("usr/bin/perl")).nlink, 3);
  assert.equal(lstatSync(s.at("a/two")).ino, lstatSync(s.at("a/one")).ino);
  // A whiteout of one name leaves the others.
  await s.apply([file("usr/bin/.wh.perl")]);
  assert.equal(read(s.at("usr/bin/perl5")), "perl");
  assert.equal(lstatSync(s.at("usr/bin/perl5")).nlink, 2);
  s.check();
});

test("device nodes and fifos are created inside the root only, with modes and owners", async () => {
  const s = sandbox();
  await s.apply([
    { name: "dev/null", type: "3", devmajor: 1, devminor: 3, mode: 0o666 },
    { name: "dev/loop-test", type: "4", devmajor: 7, devminor: 200, mode: 0o660, gid: 6 },
    { name: "run/fifo", type: "6", mode: 0o620, uid: 1000 },
    sym("devlink", s.sentinel),
    { name: "devlink/null", type: "3", devmajor: 1, devminor: 3 },
    { name: "../sentinel/zero", type: "3", devmajor: 1, devminor: 5 },
  ]);
  const n = lstatSync(s.at("dev/null"));
  assert.ok(n.isCharacterDevice());
  assert.equal(n.rdev, (1 << 8) | 3);
  assert.equal(n.mode & 0o7777, 0o666);
  const b = lstatSync(s.at("dev/loop-test"));
  assert.ok(b.isBlockDevice());
  assert.equal(b.rdev, (7 << 8) | 200);
  assert.equal(b.gid, 6);
  assert.equal(b.mode & 0o7777, 0o660);
  const f = lstatSync(s.at("run/fifo"));
  assert.ok(f.isFIFO());
  assert.equal(f.uid, 1000);
  assert.equal(f.mode & 0o7777, 0o620);
  assert.ok(lstatSync(s.at(`${s.sentinel}/null`)).isCharacterDevice());
  assert.ok(lstatSync(s.at("sentinel/zero")).isCharacterDevice());
  s.check();
  await rejectsWith(s.apply([{ name: "dev/huge", type: "3", devmajor: 5000, devminor: 1 }]), "MM_BAD_LAYER");
});

test("a rootless build skips device nodes with a warning and still makes fifos", async () => {
  const s = sandbox();
  const warnings: string[] = [];
  await applyLayer(
    s.root,
    Readable.from([
      tarArchive([
        { name: "dev/", type: "5", mode: 0o755 },
        { name: "dev/null", type: "3", devmajor: 1, devminor: 3, mode: 0o666 },
        { name: "dev/sda", type: "4", devmajor: 8, devminor: 0 },
        { name: "run/fifo", type: "6", mode: 0o600 },
      ]),
    ]),
    TAR,
    { skipDeviceNodes: true, onWarning: (w) => warnings.push(w) },
  );
  assert.deepEqual(readdirSync(s.at("dev")), []);
  assert.ok(lstatSync(s.at("run/fifo")).isFIFO());
  assert.equal(warnings.length, 2);
  assert.match(warnings[0] as string, /device node "dev\/null" skipped/);
  s.check();
});

test("ownership, setuid/setgid/sticky and mtimes are preserved", async () => {
  const s = sandbox();
  await s.apply([
    dir("usr/", { mtime: 1_500_000_000 }),
    file("usr/bin/passwd", "x", { mode: 0o4755, uid: 0, gid: 0 }),
    file("usr/bin/wall", "x", { mode: 0o2755, uid: 0, gid: 5 }),
    file("usr/bin/owned", "x", { mode: 0o6711, uid: 1000, gid: 1001, mtime: 1_600_000_000 }),
    dir("tmp/", { mode: 0o1777 }),
    dir("srv/shared/", { mode: 0o2775, uid: 33, gid: 33 }),
    { name: "home/u/link", type: "2", linkname: "/etc/passwd", uid: 1000, gid: 100 },
    file("usr/zz-late", "changes usr's mtime unless dir times go last"),
  ]);
  const mode = (p: string) => lstatSync(s.at(p)).mode & 0o7777;
  assert.equal(mode("usr/bin/passwd"), 0o4755);
  assert.equal(mode("usr/bin/wall"), 0o2755);
  assert.equal(mode("usr/bin/owned"), 0o6711, "setuid survives chown because chmod comes after");
  assert.equal(lstatSync(s.at("usr/bin/owned")).uid, 1000);
  assert.equal(lstatSync(s.at("usr/bin/owned")).gid, 1001);
  assert.equal(lstatSync(s.at("usr/bin/owned")).mtimeMs, 1_600_000_000_000);
  assert.equal(mode("tmp"), 0o1777);
  assert.equal(mode("srv/shared"), 0o2775);
  assert.equal(lstatSync(s.at("srv/shared")).uid, 33);
  assert.equal(mode("srv"), 0o755, "implicit parents are 0755");
  assert.equal(lstatSync(s.at("home/u/link")).uid, 1000);
  assert.equal(lstatSync(s.at("home/u/link")).gid, 100);
  assert.equal(lstatSync(s.at("usr")).mtimeMs, 1_500_000_000_000);
  s.check();
});

const getfattr = findOnPath("getfattr");
const setfattr = findOnPath("setfattr");

test("PAX xattrs are applied byte for byte (setfattr)", {
  skip: !setfattr || !getfattr ? "needs setfattr/getfattr (Debian package attr)" : false,
}, async () => {
  const s = sandbox();
  const binary = Buffer.from([0x00, 0xff, 0x0a, 0x3d, 0x20, 0x41]);
  // VFS_CAP_REVISION_2 with cap_net_raw (bit 13) permitted and effective.
  const cap = Buffer.from("0100000200200000000000000000000000000000", "hex");
  const stats = await s.apply([
    file("bin/ping", "elf", {
      mode: 0o755,
      uid: 0,
      pax: { "SCHILY.xattr.security.capability": cap, "SCHILY.xattr.user.bin": binary },
    }),
    dir("data/", { pax: { "SCHILY.xattr.user.dir": "d" } }),
    file("bin/owned", "x", { uid: 1000, mode: 0o4755, pax: { "SCHILY.xattr.user.empty": "" } }),
  ]);
  const get = (p: string, name: string) =>
    Buffer.from(
      execFileSync(getfattr!, ["-h", "--absolute-names", "--only-values", "-n", name, s.at(p)], { encoding: "buffer" }),
    );
  assert.deepEqual(get("bin/ping", "security.capability"), cap, "chown before xattrs, or it would be cleared");
  assert.deepEqual(get("bin/ping", "user.bin"), binary);
  assert.deepEqual(get("data", "user.dir"), Buffer.from("d"));
  assert.deepEqual(get("bin/owned", "user.empty"), Buffer.alloc(0));
  assert.equal(lstatSync(s.at("bin/owned")).mode & 0o7777, 0o4755);
  assert.equal(stats.xattrsSet, 4);
  assert.equal(stats.xattrsSkipped, 0);
  s.check();
});

test("xattrs are skipped with a warning when setfattr is unavailable or refuses", async () => {
  const s = sandbox();
  const warnings: string[] = [];
  const stats = await applyLayer(
    s.root,
    Readable.from([tarArchive([file("f", "x", { pax: { "SCHILY.xattr.user.a": "1", "SCHILY.xattr.user.b": "2" } })])]),
    TAR,
    { setfattr: null, onWarning: (w) => warnings.push(w) },
  );
  assert.equal(stats.xattrsSkipped, 2);
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /setfattr/);
  assert.ok(existsSync(s.at("f")));
  if (setfattr) {
    const w2: string[] = [];
    const st2 = await applyLayer(
      s.root,
      Readable.from([tarArchive([file("g", "x", { pax: { "SCHILY.xattr.bogus-namespace.a": "1" } })])]),
      TAR,
      { onWarning: (w) => w2.push(w) },
    );
    assert.equal(st2.xattrsSkipped, 1);
    assert.match(w2[0]!, /bogus-namespace/);
  }
  s.check();
});

/** A tar whose decompressed size is huge but whose compressed form is small: gzip/zstd members repeated. */
function bomb(kind: "gzip" | "zstd", files: number, fileBytes: number): Buffer {
  const compress = kind === "gzip" ? (b: Buffer) => gzipSync(b, { level: 9 }) : (b: Buffer) => zstdCompressSync(b);
  const zeros = compress(Buffer.alloc(fileBytes));
  const parts: Buffer[] = [];
  for (let i = 0; i < files; i++) parts.push(compress(tarHeader({ name: `bomb/f${i}`, size: fileBytes })), zeros);
  return Buffer.concat(parts);
}

function du(dir: string): number {
  let total = 0;
  const walk = (p: string) => {
    const st = lstatSync(p);
    total += st.blocks * 512;
    if (st.isDirectory()) for (const n of readdirSync(p)) walk(join(p, n));
  };
  walk(dir);
  return total;
}

for (const kind of ["gzip", "zstd"] as const) {
  test(`${kind} bomb stops at the cap, early, with bounded writes`, async () => {
    const s = sandbox();
    const cap = 8 * 1024 * 1024;
    const data = bomb(kind, 4096, 1024 * 1024); // 4 GiB + headers decompressed
    let fed = 0;
    async function* source() {
      for (let i = 0; i < data.length; i += 16384) {
        const chunk = data.subarray(i, i + 16384);
        fed += chunk.length;
        yield chunk;
      }
    }
    const t0 = Date.now();
    await rejectsWith(
      applyLayer(s.root, source(), kind === "gzip" ? GZIP : ZSTD, { maxBytes: cap }),
      "MM_LAYER_TOO_LARGE",
    );
    const elapsed = Date.now() - t0;
    assert.ok(du(s.root) <= cap + 1024 * 1024, `wrote ${du(s.root)} bytes`);
    assert.ok(fed < data.length / 4, `read ${fed} of ${data.length} compressed bytes before stopping`);
    assert.ok(elapsed < 20_000, `took ${elapsed} ms`);
    s.check();
  });
}

test("an entry declaring more than the cap is refused before its data is read", async () => {
  const s = sandbox();
  const header = tarHeader({ name: "huge", size: 1024 * 1024 * 1024 * 64 });
  await rejectsWith(applyLayer(s.root, Readable.from([header]), TAR, { maxBytes: 1024 * 1024 }), "MM_LAYER_TOO_LARGE");
  assert.ok(!existsSync(s.at("huge")));
  s.check();
});

test("multi-frame zstd layers decode completely (Node's decoder alone stops after one frame)", async () => {
  const s = sandbox();
  const frames = [
    zstdCompressSync(tarArchive([file("one", "1")], false)),
    Buffer.from([0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]), // a skippable frame
    zstdCompressSync(tarArchive([file("two", "2")], false)),
    zstdCompressSync(Buffer.alloc(1024)),
  ];
  await applyLayer(s.root, Readable.from([Buffer.concat(frames)]), ZSTD);
  assert.deepEqual(readdirSync(s.root).sort(), ["one", "two"]);
  s.check();
});

test("truncated, garbage and mislabelled layers are bad layers", async () => {
  const good = tarArchive([file("a", "x".repeat(3000)), file("b", "y")]);
  const cases: [string, Buffer, string][] = [
    ["tar cut mid-data", good.subarray(0, 1500), TAR],
    ["tar cut mid-header", good.subarray(0, 3584 + 100), TAR],
    ["garbage", Buffer.from("this is not a tar archive at all, just text ".repeat(40)), TAR],
    ["bad checksum", tarArchive([{ name: "x", data: "x", badChecksum: true }]), TAR],
    ["gzip cut", gzipSync(good).subarray(0, 60), GZIP],
    ["garbage gzip", Buffer.from("not gzip data ".repeat(100)), GZIP],
    ["gzip labelled zstd", gzipSync(good), ZSTD],
    ["zstd cut", zstdCompressSync(good).subarray(0, 30), ZSTD],
    ["garbage zstd", Buffer.from("not zstd data ".repeat(100)), ZSTD],
    ["gzip inside gzip", gzipSync(gzipSync(good)), GZIP],
    ["unsupported entry type", tarArchive([{ name: "sparse", type: "S" }]), TAR],
    [
      "malformed pax",
      Buffer.concat([
        tarHeader({ name: "p", type: "x", size: 512 }),
        Buffer.alloc(512, 0x41),
        tarHeader({ name: "f" }),
      ]),
      TAR,
    ],
    ["NUL in a PAX path", tarArchive([file("x", "x", { pax: { path: "a\0b" } })]), TAR],
  ];
  for (const [what, data, mediaType] of cases) {
    const s = sandbox();
    await assert.rejects(applyLayer(s.root, Readable.from([data]), mediaType), (e) => {
      assert.ok(isMmError(e, "MM_BAD_LAYER"), `${what}: ${(e as Error).message}`);
      return true;
    });
    s.check();
  }
});

test("unknown media types are refused before anything is read", async () => {
  const s = sandbox();
  let pulled = false;
  async function* source() {
    pulled = true;
    yield tarArchive([file("x")]);
  }
  for (const mt of ["application/vnd.oci.image.layer.v1.tar+bzip2", "application/octet-stream", ""]) {
    await rejectsWith(applyLayer(s.root, source(), mt), "MM_UNSUPPORTED_MEDIA_TYPE");
  }
  assert.equal(pulled, false);
  assert.deepEqual(readdirSync(s.root), []);
  s.check();
});

test("an empty layer and the empty-layer tar apply cleanly", async () => {
  const s = sandbox();
  assert.equal((await applyLayer(s.root, Readable.from([Buffer.alloc(0)]), TAR)).entries, 0);
  assert.equal((await applyLayer(s.root, Readable.from([gzipSync(Buffer.alloc(1024))]), GZIP)).entries, 0);
  s.check();
});

test("long names via PAX and header-only types carrying a size", async () => {
  const s = sandbox();
  const long = `${"d".repeat(120)}/${"f".repeat(150)}`;
  await s.apply([
    file("placeholder", "long", { pax: { path: long } }),
    { name: "ln", type: "2", linkname: "placeholder", pax: { linkpath: `/${long}` } },
    file("../x", "clamped", { pax: { path: `../../${long}-2` } }),
  ]);
  assert.equal(read(s.at(long)), "long");
  assert.equal(readlinkSync(s.at("ln")), `/${long}`);
  assert.equal(read(s.at(`${long}-2`)), "clamped");
  // A symlink whose header claims 512 bytes of data has none (Go's archive/tar): the next block is a header.
  const t = sandbox();
  await applyLayer(
    t.root,
    Readable.from([
      Buffer.concat([tarHeader({ name: "l", type: "2", linkname: "x", size: 512 }), tarArchive([file("next")])]),
    ]),
    TAR,
  );
  assert.ok(existsSync(t.at("next")));
  s.check();
  t.check();
});

test("media types, the env cap and error mapping", () => {
  assert.equal(layerCompression("application/vnd.docker.image.rootfs.diff.tar.gzip"), "gzip");
  assert.equal(layerCompression("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"), "zstd");
  assert.equal(layerCompression("application/vnd.oci.image.layer.v1.tar"), "none");
  assert.equal(maxLayerBytesFromEnv({}), DEFAULT_MAX_LAYER_BYTES);
  assert.equal(maxLayerBytesFromEnv({ MM_MAX_LAYER_BYTES: "1048576" }), 1048576);
  assert.equal(maxLayerBytesFromEnv({ MM_MAX_LAYER_BYTES: "2G" }), 2 * 1024 ** 3);
  assert.equal(maxLayerBytesFromEnv({ MM_MAX_LAYER_BYTES: "512MiB" }), 512 * 1024 ** 2);
  for (const bad of ["-1", "0", "lots", "1.5G"]) {
    assert.throws(
      () => maxLayerBytesFromEnv({ MM_MAX_LAYER_BYTES: bad }),
      (e) => isMmError(e, "MM_USAGE"),
      bad,
    );
  }
  const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
  assert.equal(mapUnpackError(enospc, "x").code, "MM_DISK_FULL");
  assert.equal(mapUnpackError(Object.assign(new Error("x"), { code: "EDQUOT" }), "x").code, "MM_DISK_FULL");
  assert.equal(mapUnpackError(Object.assign(new Error("x"), { code: "ENOTDIR" }), "x").code, "MM_BAD_LAYER");
  assert.equal(mapUnpackError(Object.assign(new Error("x"), { code: "EIO" }), "x").code, "MM_ROOTFS_FAILED");
});
