import assert from "node:assert/strict";
import { posix } from "node:path";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import {
  ancestorsOf,
  classifyEntry,
  isWithin,
  normalizeEntryPath,
  type PathInfo,
  type PathLookup,
  resolveInRoot,
} from "./unpack-path.js";

const badLayer = (e: unknown) => isMmError(e, "MM_BAD_LAYER");

test("normalizeEntryPath strips leading / and ./ and clamps .. at the root", () => {
  const cases: [string, string][] = [
    ["etc/passwd", "etc/passwd"],
    ["/etc/passwd", "etc/passwd"],
    ["./etc/passwd", "etc/passwd"],
    ["///./etc//passwd/", "etc/passwd"],
    ["../etc/passwd", "etc/passwd"],
    ["../../../../etc/passwd", "etc/passwd"],
    ["a/../../b", "b"],
    ["a/b/../c", "a/c"],
    ["a/b/../../..", ""],
    [".", ""],
    ["./", ""],
    ["/", ""],
    ["..", ""],
    ["...", "..."],
    ["a/.../b", "a/.../b"],
    [".wh..wh..opq", ".wh..wh..opq"],
  ];
  for (const [input, want] of cases) assert.equal(normalizeEntryPath(input), want, input);
});

test("normalizeEntryPath rejects a NUL byte", () => {
  assert.throws(() => normalizeEntryPath("etc/pass\0wd"), badLayer);
  assert.throws(() => classifyEntry("\0"), badLayer);
});

const segment = fc.constantFrom("a", "b", ".", "..", "", "...", ".wh.a", "x y", "é");
const rawPath = fc.array(segment, { maxLength: 8 }).map((s) => s.join("/"));
const anyPath = fc.oneof(
  rawPath,
  rawPath.map((p) => `/${p}`),
  fc.string({ maxLength: 40 }),
);

test("normalizeEntryPath agrees with posix.normalize under a root, never climbs, and is idempotent", () => {
  fc.assert(
    fc.property(anyPath, (name) => {
      fc.pre(!name.includes("\0"));
      const out = normalizeEntryPath(name);
      const oracle = posix.normalize(`/${name}`).replace(/^\/+/, "").replace(/\/$/, "");
      assert.equal(out, oracle);
      assert.ok(!out.startsWith("/"));
      for (const c of out.split("/")) assert.ok(out === "" || (c !== "" && c !== "." && c !== ".."), out);
      assert.equal(normalizeEntryPath(out), out);
    }),
    { numRuns: 2000 },
  );
});

test("classifyEntry: entries, root, whiteouts, opaque markers, reserved names", () => {
  assert.deepEqual(classifyEntry("./usr/bin/env"), {
    kind: "entry",
    path: "usr/bin/env",
    parent: "usr/bin",
    base: "env",
  });
  assert.deepEqual(classifyEntry("top"), { kind: "entry", path: "top", parent: "", base: "top" });
  for (const root of [".", "./", "/", "..", "a/..", "../.."]) assert.deepEqual(classifyEntry(root), { kind: "root" });
  assert.deepEqual(classifyEntry("etc/.wh.passwd"), { kind: "whiteout", parent: "etc", name: "passwd" });
  assert.deepEqual(classifyEntry("/.wh.etc"), { kind: "whiteout", parent: "", name: "etc" });
  assert.deepEqual(classifyEntry("../../.wh.etc"), { kind: "whiteout", parent: "", name: "etc" });
  assert.deepEqual(classifyEntry("var/.wh..wh..opq"), { kind: "opaque", dir: "var" });
  assert.deepEqual(classifyEntry(".wh..wh..opq"), { kind: "opaque", dir: "" });
  assert.deepEqual(classifyEntry("a/.wh..wh.plnk"), { kind: "reserved", parent: "a", base: ".wh..wh.plnk" });
  assert.deepEqual(classifyEntry("a/.wh..wh."), { kind: "reserved", parent: "a", base: ".wh..wh." });
  assert.deepEqual(classifyEntry(".wh..wh.plnk/123.4"), { kind: "reserved", parent: ".wh..wh.plnk", base: "123.4" });
  assert.deepEqual(classifyEntry(".wh..wh.plnk/x/.wh..wh..opq"), {
    kind: "reserved",
    parent: ".wh..wh.plnk/x",
    base: ".wh..wh..opq",
  });
  // A whiteout of ".", ".." or "" would delete the directory itself or its parent: containerd rejects them.
  for (const bad of ["a/.wh.", "a/.wh..", "a/.wh...", ".wh..", ".wh..."])
    assert.throws(() => classifyEntry(bad), badLayer, bad);
  // A name that only contains ".wh." further in is an ordinary entry.
  assert.deepEqual(classifyEntry("a/x.wh.y"), { kind: "entry", path: "a/x.wh.y", parent: "a", base: "x.wh.y" });
  // "..." is a legal file name, so ".wh...." whites out "...".
  assert.deepEqual(classifyEntry("a/.wh...."), { kind: "whiteout", parent: "a", name: "..." });
});

test("classifyEntry never yields a whiteout that names ., .. or a path", () => {
  fc.assert(
    fc.property(anyPath, (name) => {
      fc.pre(!name.includes("\0"));
      let action: ReturnType<typeof classifyEntry>;
      try {
        action = classifyEntry(name);
      } catch (e) {
        assert.ok(badLayer(e));
        return;
      }
      if (action.kind === "whiteout") {
        assert.ok(!["", ".", ".."].includes(action.name) && !action.name.includes("/"), action.name);
      }
      if (action.kind === "entry") {
        assert.ok(action.base !== "" && !action.path.split("/").includes(".."));
        assert.equal(action.path, action.parent === "" ? action.base : `${action.parent}/${action.base}`);
      }
    }),
    { numRuns: 2000 },
  );
});

test("isWithin and ancestorsOf", () => {
  assert.ok(isWithin("", "a/b"));
  assert.ok(isWithin("a", "a"));
  assert.ok(isWithin("a", "a/b"));
  assert.ok(!isWithin("a", "ab"));
  assert.ok(!isWithin("a/b", "a"));
  assert.deepEqual(ancestorsOf(""), []);
  assert.deepEqual(ancestorsOf("a"), [""]);
  assert.deepEqual(ancestorsOf("a/b/c"), ["", "a", "a/b"]);
});

/** An in-memory tree: in-root path → what is there (parents must be directories). */
type Tree = Map<string, PathInfo>;
const lookupIn =
  (tree: Tree): PathLookup =>
  (p) =>
    p === "" ? { kind: "dir" } : (tree.get(p) ?? { kind: "missing" });

function treeOf(spec: Record<string, string | null>): Tree {
  // value: null → directory, "" → regular file, anything else → symlink target
  const t: Tree = new Map();
  for (const [p, v] of Object.entries(spec)) {
    t.set(p, v === null ? { kind: "dir" } : v === "" ? { kind: "other" } : { kind: "symlink", target: v });
  }
  return t;
}

test("resolveInRoot: containerd RootPath / securejoin cases", () => {
  const tree = treeOf({
    etc: null,
    "etc/passwd": "",
    usr: null,
    "usr/lib": null,
    toRoot: "/",
    toDotDot: "..",
    escape: "../../../../../etc",
    absEtc: "/etc",
    rel: "usr/lib",
    "usr/up": "../../../..",
    "usr/abs": "/etc",
    chain1: "chain2",
    chain2: "chain3",
    chain3: "/usr/lib",
    loopA: "loopB",
    loopB: "loopA",
    self: "self",
    dangling: "/nonexistent/deeper",
    lnkfile: "etc/passwd",
  });
  const l = lookupIn(tree);
  const follow = { followFinal: true } as const;
  const cases: [string, string, boolean][] = [
    // [path, want, followFinal]
    ["etc/passwd", "etc/passwd", true],
    ["toRoot", "", true],
    ["toRoot/etc/passwd", "etc/passwd", false],
    ["toRoot/../../../etc", "etc", true],
    ["toDotDot/etc", "etc", true],
    ["toDotDot", "", true],
    ["escape/passwd", "etc/passwd", false],
    ["absEtc/passwd", "etc/passwd", false],
    ["rel/x", "usr/lib/x", false],
    ["usr/up/etc", "etc", true],
    ["usr/abs/passwd", "etc/passwd", true],
    ["chain1/x", "usr/lib/x", false],
    ["chain1", "usr/lib", true],
    ["chain1", "chain1", false], // last component is not followed
    ["toRoot", "toRoot", false],
    ["dangling/x", "nonexistent/deeper/x", false],
    ["dangling", "nonexistent/deeper", true],
    ["missing/a/../b", "missing/b", true],
    ["lnkfile", "etc/passwd", true],
    ["/../../etc/./passwd", "etc/passwd", true],
    ["", "", true],
  ];
  for (const [p, want, followFinal] of cases) {
    assert.equal(resolveInRoot(p, l, followFinal ? follow : {}), want, `${p} (followFinal=${followFinal})`);
  }
  for (const p of ["loopA", "loopA/x", "self/x"]) assert.throws(() => resolveInRoot(p, l, follow), badLayer, p);
  assert.equal(resolveInRoot("loopA", l), "loopA"); // not followed, so no loop
  // The budget counts every link followed.
  assert.equal(resolveInRoot("chain1/x", l, { maxSymlinks: 3 }), "usr/lib/x");
  assert.throws(() => resolveInRoot("chain1/x", l, { maxSymlinks: 2 }), badLayer);
  assert.throws(() => resolveInRoot("a\0b", l), badLayer);
  assert.throws(() => resolveInRoot("bad/x", lookupIn(treeOf({ bad: "a\0b" }))), badLayer);
});

// ---- property: resolveInRoot agrees with a chroot'ed kernel walk over random trees ----

type RefResult = { ok: true; path: string } | { ok: false; why: "enoent" | "enotdir" | "eloop" };

/** Resolution as the kernel does it under chroot(root), walking node by node. */
function kernelWalk(tree: Tree, path: string, followFinal: boolean, budget: number): RefResult {
  let links = 0;
  const walk = (start: string, comps: string[], followLast: boolean): RefResult => {
    let cur = start;
    for (let i = 0; i < comps.length; i++) {
      const c = comps[i]!;
      const last = i === comps.length - 1;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        cur = cur.includes("/") ? cur.slice(0, cur.lastIndexOf("/")) : "";
        continue;
      }
      const next = cur === "" ? c : `${cur}/${c}`;
      const info = tree.get(next) ?? { kind: "missing" };
      const restIsEmpty = comps.slice(i + 1).every((r) => r === "" || r === ".");
      if (info.kind === "missing") {
        if (last || restIsEmpty) return { ok: true, path: next };
        return { ok: false, why: "enoent" };
      }
      if (info.kind === "symlink" && (!(last || restIsEmpty) || followLast)) {
        if (++links > budget) return { ok: false, why: "eloop" };
        const r = walk(info.target.startsWith("/") ? "" : cur, info.target.split("/"), true);
        if (!r.ok) return r;
        cur = r.path;
        continue;
      }
      if (info.kind === "other" && !(last || restIsEmpty)) return { ok: false, why: "enotdir" };
      cur = next;
    }
    return { ok: true, path: cur };
  };
  return walk("", path.split("/"), followFinal);
}

const name = fc.constantFrom("a", "b", "c");
const targetPart = fc.constantFrom("a", "b", "c", "..", ".", "");
const target = fc
  .tuple(fc.boolean(), fc.array(targetPart, { minLength: 1, maxLength: 5 }))
  .map(([abs, parts]) => `${abs ? "/" : ""}${parts.join("/")}`)
  .filter((t) => t !== "");
const node = fc.oneof(
  fc.constant<PathInfo>({ kind: "dir" }),
  fc.constant<PathInfo>({ kind: "other" }),
  target.map((t): PathInfo => ({ kind: "symlink", target: t })),
);
const randomTree = fc
  .array(fc.tuple(fc.array(name, { minLength: 1, maxLength: 3 }), node), { maxLength: 14 })
  .map((items) => {
    const t: Tree = new Map();
    for (const [parts, info] of items.sort((x, y) => x[0].length - y[0].length)) {
      const p = parts.join("/");
      const parent = parts.slice(0, -1).join("/");
      if (t.has(p)) continue;
      if (parent !== "" && t.get(parent)?.kind !== "dir") continue;
      t.set(p, info);
    }
    return t;
  });
const queryPath = fc
  .tuple(fc.boolean(), fc.array(fc.constantFrom("a", "b", "c", "..", "."), { maxLength: 6 }))
  .map(([abs, parts]) => `${abs ? "/" : ""}${parts.join("/")}`);

test("resolveInRoot matches a chroot'ed kernel walk and never leaves a symlink in the parents", () => {
  const budget = 40;
  fc.assert(
    fc.property(randomTree, queryPath, fc.boolean(), (tree, p, followFinal) => {
      const ref = kernelWalk(tree, p, followFinal, budget);
      let got: string;
      try {
        got = resolveInRoot(p, lookupIn(tree), { followFinal, maxSymlinks: budget });
      } catch (e) {
        assert.ok(badLayer(e));
        assert.ok(!ref.ok, `resolveInRoot threw but the kernel resolves ${p} to ${ref.ok && ref.path}`);
        return;
      }
      if (ref.ok) assert.equal(got, ref.path, `path ${JSON.stringify(p)} followFinal=${followFinal}`);
      else assert.notEqual(ref.why, "eloop", `kernel loops on ${p} but resolveInRoot gave ${got}`);
      // Invariants whatever the kernel would say: an in-root path, no symlink above the last component.
      const parts = got === "" ? [] : got.split("/");
      for (const c of parts) assert.ok(c !== "" && c !== "." && c !== "..", got);
      for (const a of ancestorsOf(got)) assert.notEqual(tree.get(a)?.kind, "symlink", `${a} in ${got}`);
      if (followFinal && got !== "") assert.notEqual(tree.get(got)?.kind, "symlink", got);
    }),
    { numRuns: 3000 },
  );
});
