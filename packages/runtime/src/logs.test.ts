import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { LogWriter, readLog, TextTail } from "./logs.js";

const dir = mkdtempSync(join(tmpdir(), "mm-logs-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("entries keep their stream and bytes, binary included", () => {
  const p = join(dir, "a.log");
  const w = new LogWriter(p, 1 << 20);
  w.write("stdout", Buffer.from("out\n"));
  w.write("stderr", Buffer.from([0xff, 0x00, 0x80]));
  w.write("console", Buffer.from("boot\n"));
  w.close();
  const got = readLog(p).map((e) => [e.stream, [...e.data]]);
  assert.deepEqual(got, [
    ["stdout", [...Buffer.from("out\n")]],
    ["stderr", [0xff, 0x00, 0x80]],
    ["console", [...Buffer.from("boot\n")]],
  ]);
});

test("a flooding guest keeps the log under twice the cap", () => {
  const p = join(dir, "flood.log");
  const cap = 64 * 1024;
  const w = new LogWriter(p, cap);
  for (let i = 0; i < 2000; i++) w.write("console", Buffer.alloc(1000, 65));
  w.close();
  const total = statSync(p).size + statSync(`${p}.1`).size;
  assert.ok(statSync(p).size <= cap && total <= 2 * cap, `total ${total}`);
  assert.ok(readLog(p).length > 0);
});

test("a torn last line (crash mid-write) is skipped, the rest is read", () => {
  const p = join(dir, "torn.log");
  const w = new LogWriter(p, 1 << 20);
  w.write("stdout", Buffer.from("ok"));
  w.close();
  appendFileSync(p, '{"t":1,"s":"o","b":"aGVs');
  assert.deepEqual(
    readLog(p).map((e) => e.data.toString()),
    ["ok"],
  );
});

test("TextTail keeps only the end", () => {
  const t = new TextTail(5);
  t.push("hello ");
  t.push("world");
  assert.equal(t.toString(), "world");
});
