// `mm run --ssh` and `mm ssh` with the real OpenSSH client, inside the test's namespace:
// the host key is known before the first connection, so there is no prompt and no
// StrictHostKeyChecking=no.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { harness } from "./test-helpers.js";

const h = harness("mm-ssh-");
const keys = mkdtempSync(join(tmpdir(), "mm-ssh-keys-"));
after(async () => {
  await h.cleanup();
  rmSync(keys, { recursive: true, force: true });
});

test("--ssh starts a verified SSH server; mm ssh runs a command through it", async () => {
  execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", join(keys, "id")]);
  const r = await h.mm([
    "run",
    "-d",
    "--name",
    "shelly",
    "--ssh",
    "--ssh-key",
    join(keys, "id.pub"),
    "--",
    "sleep",
    "600",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const id = r.stdout.trim();
  const known = readFileSync(join(h.state, "machines", id, "known_hosts"), "utf8");
  assert.match(known, new RegExp(`^mm-${id} ssh-ed25519 \\S+\\n$`));
  // As with ssh itself, the command is one string for the remote user's shell.
  const out = await h.mm(["ssh", "shelly", "--", "echo hello from $(hostname) as $(id -un)"]);
  assert.equal(out.stdout, "hello from shelly as root\n", out.stderr);
  assert.equal(out.code, 0);
  const status = await h.mm(["ssh", "shelly", "--", "exit 9"]);
  assert.equal(status.code, 9, "the remote command's status passes through");
});

test("a machine started without --ssh says so", async () => {
  assert.equal((await h.mm(["run", "-d", "--name", "plain", "--", "sleep", "600"])).code, 0);
  const r = await h.mm(["ssh", "plain", "--", "true"]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /not started with --ssh/);
});
