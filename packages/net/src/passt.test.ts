import assert from "node:assert/strict";
import { test } from "node:test";
import { passtArgs, USER_NET } from "./passt.js";
import { parsePublish } from "./ports.js";

const base = { socket: "/run/x/net.sock", pidFile: "/run/x/passt.pid", logFile: "/m/passt.log" };

/** The values following each occurrence of `flag`. */
const values = (args: string[], flag: string) => args.flatMap((a, i) => (a === flag ? [args[i + 1]] : []));

test("passt: published ports become -t/-u forwards, bound where -p said", () => {
  const args = passtArgs({
    ...base,
    publish: ["8080:80", "127.0.0.1:2222:22", "5353:53/udp"].map(parsePublish),
  });
  assert.deepEqual(values(args, "-t"), ["8080:80", "127.0.0.1/2222:22"]);
  assert.deepEqual(values(args, "-u"), ["5353:53"]);
  assert.deepEqual(values(args, "--socket"), [base.socket]);
});

test("passt: nothing forwarded without -p; the guest's address is fixed and the gateway is not the host", () => {
  const args = passtArgs({ ...base, publish: [] });
  assert.deepEqual(values(args, "-t"), ["none"]);
  assert.deepEqual(values(args, "-u"), ["none"]);
  assert.deepEqual(values(args, "--address"), [USER_NET.address]);
  assert.deepEqual(values(args, "--gateway"), [USER_NET.gateway]);
  assert.ok(args.includes("--no-map-gw"), "a guest must not reach the host's loopback through the gateway");
  assert.ok(args.includes("--no-dhcp") && args.includes("--foreground"));
});
