import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { createCgroups, layoutAt, memoryProcsFile } from "./jail.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const fakeRoot = () => {
  const d = mkdtempSync(join(tmpdir(), "mm-cgroot-"));
  dirs.push(d);
  return d;
};

test("cgroup v2: the unified hierarchy with cpu, memory and pids; controllers enabled on the way down", async () => {
  const root = fakeRoot();
  writeFileSync(join(root, "cgroup.controllers"), "cpuset cpu io memory pids\n");
  writeFileSync(join(root, "cgroup.subtree_control"), "");
  const layout = await layoutAt("m1", root);
  assert.deepEqual(layout, { version: 2, dir: join(root, "mm", "m1") });
  if (!layout) return;
  await createCgroups(layout);
  assert.equal(readFileSync(join(root, "cgroup.subtree_control"), "utf8"), "+cpu +memory +pids");
  assert.equal(readFileSync(join(root, "mm", "cgroup.subtree_control"), "utf8"), "+cpu +memory +pids");
  assert.equal(memoryProcsFile(layout), join(root, "mm", "m1", "cgroup.procs"));
});

test("cgroup v2 without the memory controller: no layout (the jail runs without limits)", async () => {
  const root = fakeRoot();
  writeFileSync(join(root, "cgroup.controllers"), "cpu pids\n");
  assert.equal(await layoutAt("m1", root), null);
});

test("cgroup v1 (hybrid): one directory per controller", async () => {
  const root = fakeRoot();
  for (const c of ["cpu", "memory", "pids"]) {
    mkdirSync(join(root, c));
    writeFileSync(join(root, c, "cgroup.procs"), "");
  }
  const layout = await layoutAt("m1", root);
  assert.deepEqual(layout, {
    version: 1,
    dirs: { cpu: join(root, "cpu/mm/m1"), memory: join(root, "memory/mm/m1"), pids: join(root, "pids/mm/m1") },
  });
  if (layout) assert.equal(memoryProcsFile(layout), join(root, "memory/mm/m1/cgroup.procs"));
});
