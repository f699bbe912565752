import assert from "node:assert/strict";
import { test } from "node:test";
import { systemdUnit } from "./day2-commands.js";
import { parseTime } from "./events-format.js";

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

test("system units: the host's waits for the network; a user's starts with the user's manager", () => {
  const host = systemdUnit("/n", "/mm.mjs", "/var/lib/mm", "/var/cache/mm");
  assert.match(host, /^After=network-online\.target$/m);
  assert.match(host, /^WantedBy=multi-user\.target$/m);
  assert.match(host, /^ExecStart=\/n \/mm\.mjs system start-all$/m);
  const user = systemdUnit("/n", "/mm.mjs", "/home/u/.local/state/mm", "/home/u/.cache/mm", true);
  assert.doesNotMatch(user, /network-online/);
  assert.match(user, /^WantedBy=default\.target$/m);
  assert.match(user, /^Environment=MM_STATE=\/home\/u\/\.local\/state\/mm$/m);
});
