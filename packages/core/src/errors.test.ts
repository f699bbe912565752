import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { ERRORS, MmError } from "./errors.js";

const doc = readFileSync(new URL("../../../docs/errors.md", import.meta.url), "utf8");

test("docs/errors.md lists exactly the codes in the registry", () => {
  const documented = [...doc.matchAll(/^\| `(MM_[A-Z_]+)` \|/gm)].map((m) => m[1]).sort();
  assert.deepEqual(documented, Object.keys(ERRORS).sort());
});

test("every code has a hint and an exit status", () => {
  for (const [code, def] of Object.entries(ERRORS)) {
    assert.ok(def.hint.length > 10, code);
    assert.ok(def.exit >= 1 && def.exit <= 255, code);
  }
});

test("an error carries code, hint and cause", () => {
  const cause = new Error("x");
  const e = new MmError("MM_NAME_IN_USE", '"web"', { cause });
  assert.equal(e.code, "MM_NAME_IN_USE");
  assert.match(e.message, /already in use: "web"/);
  assert.equal(e.cause, cause);
  assert.deepEqual(Object.keys(e.toJSON()), ["code", "message", "hint"]);
});
