import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { generatedName, machineId } from "./ids.js";
import { validateName } from "./spec.js";

test("ids are 12 hex characters", () => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 6, maxLength: 6 }), (b) => /^[0-9a-f]{12}$/.test(machineId(b))));
  assert.throws(() => machineId(new Uint8Array(5)), RangeError);
});

test("generated names are valid machine names", () => {
  fc.assert(fc.property(fc.uint8Array({ minLength: 3, maxLength: 3 }), (b) => validateName(generatedName(b)) !== ""));
});
