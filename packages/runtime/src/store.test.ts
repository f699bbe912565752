import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { isMmError, type MachineSpec } from "@mm/core";
import { Store } from "./store.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function store(): Store {
  const d = mkdtempSync(join(tmpdir(), "mm-store-"));
  dirs.push(d);
  return new Store({ state: d, cache: join(d, "cache") });
}
const spec = (name: string): MachineSpec => ({
  name,
  image: "mm/busybox",
  imageConfig: { entrypoint: [], cmd: ["sh"], env: [], exposedPorts: [] },
  cpus: 1,
  memoryMib: 256,
  command: ["true"],
  env: [],
  autoRemove: false,
});

test("insert, find by name, id and id prefix", () => {
  const s = store();
  s.insert("aaaa11112222", spec("web"));
  s.insert("bbbb11112222", spec("db"));
  assert.equal(s.find("web").id, "aaaa11112222");
  assert.equal(s.find("bbbb11112222").spec.name, "db");
  assert.equal(s.find("aaa").spec.name, "web");
  assert.throws(
    () => s.find("zzz"),
    (e) => isMmError(e, "MM_NO_SUCH_MACHINE"),
  );
  s.close();
});

test("an ambiguous id prefix is refused", () => {
  const s = store();
  s.insert("abc111111111", spec("a"));
  s.insert("abc222222222", spec("b"));
  assert.throws(
    () => s.find("abc"),
    (e) => isMmError(e, "MM_NO_SUCH_MACHINE") && /matches 2/.test(e.message),
  );
  s.close();
});

test("a taken name is MM_NAME_IN_USE and leaves no second record", () => {
  const s = store();
  s.insert("aaaa11112222", spec("web"));
  assert.throws(
    () => s.insert("cccc11112222", spec("web")),
    (e) => isMmError(e, "MM_NAME_IN_USE"),
  );
  assert.equal(s.list().length, 1);
  s.close();
});

test("transitions follow the lifecycle and write their fields atomically", () => {
  const s = store();
  s.insert("aaaa11112222", spec("web"));
  const r = s.transition("aaaa11112222", "boot", { supervisorPid: 42, startedAt: "t" });
  assert.equal(r.state, "starting");
  assert.equal(r.supervisorPid, 42);
  assert.throws(
    () => s.transition("aaaa11112222", "restart", { exitCode: 3 }),
    (e) => isMmError(e, "MM_INVALID_TRANSITION"),
  );
  assert.equal(s.get("aaaa11112222").exitCode, null, "a refused transition writes nothing");
  s.transition("aaaa11112222", "ready");
  const done = s.transition("aaaa11112222", "exit", { exitCode: 7, error: { code: "X", message: "y" } });
  assert.deepEqual([done.state, done.exitCode, done.error], ["exited", 7, { code: "X", message: "y" }]);
  s.close();
});

test("two handles on one state root see each other's writes (WAL)", () => {
  const d = mkdtempSync(join(tmpdir(), "mm-store-"));
  dirs.push(d);
  const a = new Store({ state: d, cache: d });
  const b = new Store({ state: d, cache: d });
  a.insert("aaaa11112222", spec("web"));
  assert.equal(b.find("web").state, "created");
  b.transition("aaaa11112222", "boot");
  assert.equal(a.get("aaaa11112222").state, "starting");
  a.close();
  b.close();
});

test("a pooled sandbox is claimed once: a second handle's claim fails; a claimed or plain one is not claimable", () => {
  const d = mkdtempSync(join(tmpdir(), "mm-store-"));
  dirs.push(d);
  const a = new Store({ state: d, cache: d });
  const b = new Store({ state: d, cache: d });
  a.insert("aaaa11112222", { ...spec("pooled"), sandbox: { timeoutMs: 3_600_000, pooled: true } });
  a.insert("bbbb11112222", { ...spec("plain"), sandbox: { timeoutMs: 60_000 } });
  const wins = [a.claimPooled("aaaa11112222", { timeoutMs: 5000 }), b.claimPooled("aaaa11112222", { timeoutMs: 9000 })];
  assert.deepEqual(wins, [true, false]);
  assert.deepEqual(b.get("aaaa11112222").spec.sandbox, { timeoutMs: 5000 });
  assert.equal(a.claimPooled("bbbb11112222", { timeoutMs: 1 }), false);
  assert.equal(a.claimPooled("cccc11112222", { timeoutMs: 1 }), false);
  assert.ok(a.events().some((e) => e.type === "claim" && e.machine === "pooled"));
  a.close();
  b.close();
});

test("an unusable state root is MM_STATE_UNWRITABLE", () => {
  const d = mkdtempSync(join(tmpdir(), "mm-store-"));
  dirs.push(d);
  writeFileSync(join(d, "file"), "");
  assert.throws(
    () => new Store({ state: join(d, "file", "state"), cache: d }),
    (e) => isMmError(e, "MM_STATE_UNWRITABLE"),
  );
});
