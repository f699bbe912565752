import assert from "node:assert/strict";
import { test } from "node:test";
import { parseTime } from "./day2-commands.js";

test("--since/--until take durations ago or absolute times; nonsense is MM_USAGE", () => {
  const now = Date.parse("2026-11-23T12:00:00Z");
  assert.equal(parseTime("90s", now), now - 90_000);
  assert.equal(parseTime("10m", now), now - 600_000);
  assert.equal(parseTime("2h", now), now - 7_200_000);
  assert.equal(parseTime("0s", now), now);
  assert.equal(parseTime("2026-11-23T11:00:00Z", now), now - 3_600_000);
  for (const bad of ["", "10", "5d", "yesterday"]) {
    assert.throws(
      () => parseTime(bad, now),
      (e: Error & { code?: string }) => e.code === "MM_USAGE",
      bad,
    );
  }
});
