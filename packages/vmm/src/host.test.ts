import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import { parseAccelOverride } from "./accel.js";
import { tscKhzFromCpuinfo } from "./host.js";

test("TSC kHz comes from cpuinfo only when the TSC is constant", () => {
  const ok = "processor\t: 0\ncpu MHz\t\t: 2399.998\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n";
  assert.equal(tscKhzFromCpuinfo(ok), 2399998);
  assert.equal(tscKhzFromCpuinfo(ok.replace(" constant_tsc", "")), undefined);
  assert.equal(tscKhzFromCpuinfo("flags : constant_tsc\n"), undefined);
});

test("MM_ACCEL accepts kvm, tcg or nothing", () => {
  assert.equal(parseAccelOverride(undefined), undefined);
  assert.equal(parseAccelOverride(""), undefined);
  assert.equal(parseAccelOverride("kvm"), "kvm");
  assert.equal(parseAccelOverride("tcg"), "tcg");
  for (const bad of ["KVM", "hvf", "tcg "])
    assert.throws(
      () => parseAccelOverride(bad),
      (e) => isMmError(e, "MM_INVALID_ACCEL"),
    );
});
