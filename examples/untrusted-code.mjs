#!/usr/bin/env node
// Runs code you do not trust (a user's submission, an AI agent's script) in a sandbox:
// its own kernel, a hard lifetime, no network unless you give it one, and nothing left
// behind. Talks to `mm serve` (MM_HOST, default mm's own socket) through the SDK.
//
//   mm serve &                                  # as root: jailed VMMs, unix socket 0600
//   node examples/untrusted-code.mjs 'echo hello from $(uname -n); id'
//
// Set MM_ALLOW_TCG=1 on a host without KVM (emulation is not a hardware boundary).

import { MmApiError, Sandbox } from "@micromachines/sdk";

const code = process.argv[2] ?? 'echo "hello from $(uname -s) $(uname -r)"; id -u';

const sb = await Sandbox.create({
  timeoutMs: 60_000, // the sandbox ends itself after a minute, whatever happens here
  network: "none", // the submission gets no network at all
  allowTcg: process.env.MM_ALLOW_TCG === "1",
});
try {
  // The submission goes in as a file, runs as an unprivileged user, with a time limit.
  await sb.files.write("/tmp/submission.sh", code);
  const run = await sb.exec(["timeout", "10", "su", "-s", "/bin/sh", "nobody", "-c", "sh /tmp/submission.sh"], {
    workdir: "/tmp",
  });
  process.stdout.write(run.stdout);
  process.stderr.write(run.stderr);
  process.stdout.write(`[exit ${run.exitCode} in sandbox ${sb.name}]\n`);
} catch (e) {
  if (e instanceof MmApiError) process.stderr.write(`${e.code}: ${e.message}\n  hint: ${e.hint}\n`);
  else throw e;
  process.exitCode = 1;
} finally {
  await sb.kill(); // removed with everything the submission wrote
}
