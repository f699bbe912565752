import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { isMmError } from "./errors.js";
import {
  MAX_CPUS,
  MIN_MEMORY_MIB,
  parseCpus,
  parseDiskSize,
  parseMemory,
  parseMount,
  parseRestart,
  parseSignal,
  restartDelayMs,
  validateEnv,
  validateName,
  workloadArgv,
} from "./spec.js";

test("memory sizes: bare MiB and units", () => {
  const cases: [string, number][] = [
    ["256", 256],
    ["512M", 512],
    ["512m", 512],
    ["512MiB", 512],
    ["1G", 1024],
    ["2gb", 2048],
    [" 64 ", 64],
  ];
  for (const [text, mib] of cases) assert.equal(parseMemory(text), mib, text);
});

test("bad memory sizes are MM_INVALID_MEMORY", () => {
  for (const text of ["", "abc", "-1", "1.5G", "12K", "63", "0", "2T", "1048577", "99999999999999999999G"]) {
    assert.throws(
      () => parseMemory(text),
      (e) => isMmError(e, "MM_INVALID_MEMORY"),
      text,
    );
  }
});

test("any MiB count in range parses to itself", () => {
  fc.assert(fc.property(fc.integer({ min: MIN_MEMORY_MIB, max: 1024 * 1024 }), (n) => parseMemory(String(n)) === n));
});

test("CPU counts", () => {
  assert.equal(parseCpus("1"), 1);
  assert.equal(parseCpus(String(MAX_CPUS)), MAX_CPUS);
  for (const t of ["0", "-1", "1.5", "x", "", String(MAX_CPUS + 1)]) {
    assert.throws(
      () => parseCpus(t),
      (e) => isMmError(e, "MM_INVALID_CPUS"),
      t,
    );
  }
});

test("names", () => {
  for (const n of ["a", "web-1", "my_vm.2", "A".repeat(63)]) assert.equal(validateName(n), n);
  for (const n of ["", "-x", ".x", "a b", "a/b", "A".repeat(64), "ü"]) {
    assert.throws(
      () => validateName(n),
      (e) => isMmError(e, "MM_INVALID_NAME"),
      n,
    );
  }
});

test("env entries must be KEY=VALUE", () => {
  assert.deepEqual(validateEnv(["A=1", "B="]), ["A=1", "B="]);
  for (const e of ["A", "=1", ""])
    assert.throws(
      () => validateEnv([e]),
      (x) => isMmError(x, "MM_USAGE"),
    );
});

test("disk sizes: MiB, G and T; bad ones are MM_INVALID_DISK_SIZE", () => {
  assert.equal(parseDiskSize("512"), 512);
  assert.equal(parseDiskSize("10G"), 10240);
  assert.equal(parseDiskSize("1T"), 1024 * 1024);
  for (const t of ["", "10X", "63", "17T", "-1G", "1.5G"]) {
    assert.throws(
      () => parseDiskSize(t),
      (e) => isMmError(e, "MM_INVALID_DISK_SIZE"),
      t,
    );
  }
});

test("argv follows Docker's entrypoint/cmd rules", () => {
  const imageConfig = { entrypoint: ["/ep"], cmd: ["default"], env: [], exposedPorts: [] };
  assert.deepEqual(workloadArgv({ imageConfig, command: [] }), ["/ep", "default"]);
  assert.deepEqual(workloadArgv({ imageConfig, command: ["x"] }), ["/ep", "x"]);
  assert.deepEqual(workloadArgv({ imageConfig, entrypoint: ["/other"], command: [] }), ["/other"]);
  assert.deepEqual(workloadArgv({ imageConfig, entrypoint: [], command: ["sh"] }), ["sh"]);
  assert.deepEqual(workloadArgv({ imageConfig: { ...imageConfig, entrypoint: [] }, command: [] }), ["default"]);
});

test("stop signals by name or number", () => {
  assert.equal(parseSignal(undefined), 15);
  assert.equal(parseSignal("SIGINT"), 2);
  assert.equal(parseSignal("quit"), 3);
  assert.equal(parseSignal("9"), 9);
  for (const bad of ["SIGFOO", "0", "65"])
    assert.throws(
      () => parseSignal(bad),
      (e) => isMmError(e, "MM_USAGE"),
    );
});

test("-v NAME:/path and /host:/path parse as Docker's; reserved and relative paths are MM_INVALID_VOLUME", () => {
  assert.deepEqual(parseMount("data:/var/lib/db"), {
    kind: "volume",
    name: "data",
    path: "/var/lib/db",
    readOnly: false,
  });
  assert.deepEqual(parseMount("cfg:/etc/app/:ro"), { kind: "volume", name: "cfg", path: "/etc/app", readOnly: true });
  assert.deepEqual(parseMount("/srv/www/:/www:ro"), { kind: "bind", source: "/srv/www", path: "/www", readOnly: true });
  assert.deepEqual(parseMount("/:/host").kind, "bind");
  for (const bad of [
    "data",
    "./rel:/x",
    "data:rel",
    "data:/",
    "data:/a/../b",
    "data:/proc/x",
    "data:/.mm",
    "data:/x:rx",
    "-bad:/x",
    "a:/b:ro:x",
    "/a/../b:/x",
  ]) {
    assert.throws(
      () => parseMount(bad),
      (e) => isMmError(e, "MM_INVALID_VOLUME"),
      bad,
    );
  }
});

test("--restart takes Docker's policies; back-off doubles from 100 ms to 10 s", () => {
  assert.deepEqual(parseRestart("no"), { policy: "no" });
  assert.deepEqual(parseRestart("always"), { policy: "always" });
  assert.deepEqual(parseRestart("unless-stopped"), { policy: "unless-stopped" });
  assert.deepEqual(parseRestart("on-failure"), { policy: "on-failure" });
  assert.deepEqual(parseRestart("on-failure:5"), { policy: "on-failure", maxRetries: 5 });
  for (const bad of ["", "sometimes", "always:3", "on-failure:", "on-failure:-1", "on-failure:x"]) {
    assert.throws(
      () => parseRestart(bad),
      (e) => isMmError(e, "MM_USAGE"),
      bad,
    );
  }
  assert.deepEqual([1, 2, 3, 4, 8, 20].map(restartDelayMs), [100, 200, 400, 800, 10_000, 10_000]);
});

test("rates: plain bytes or K/M/G per second, at least 1K", async () => {
  const { parseRate } = await import("./spec.js");
  assert.equal(parseRate("1024", "r"), 1024);
  assert.equal(parseRate("512K", "r"), 512 * 1024);
  assert.equal(parseRate("10M", "r"), 10 * 1024 * 1024);
  assert.equal(parseRate("1.5m", "r"), 1.5 * 1024 * 1024);
  assert.equal(parseRate("2GB", "r"), 2 * 1024 ** 3);
  for (const bad of ["", "fast", "100", "-1M", "1T"])
    assert.throws(() => parseRate(bad, "r"), /MM_USAGE|bytes per second/, bad);
});
