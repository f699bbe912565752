// `mm exec`: runs a command in a running machine over the agent channel, like
// `docker exec`: -i streams stdin, -t gives it a terminal (raw mode, resizes follow
// the window), signals reach the process, and the exit status passes through.

import { constants as osc } from "node:os";
import { errorCodeForGuest, MmError } from "@mm/core";
import type { ExecClient, Runtime } from "@mm/runtime";

export interface ExecOptions {
  readonly interactive: boolean;
  readonly tty: boolean;
  readonly env: readonly string[];
  readonly user?: string;
  readonly workdir?: string;
}

/** Runs the session to its end; resolves with the exit status. */
export async function execCommand(
  rt: Runtime,
  ref: string,
  argv: readonly string[],
  opts: ExecOptions,
): Promise<number> {
  if (argv.length === 0) throw new MmError("MM_USAGE", "no command given: mm exec NAME -- CMD...");
  const client: ExecClient = await rt.exec(ref);
  const stdin = process.stdin;
  const tty = opts.tty;
  const raw = tty && opts.interactive && stdin.isTTY;
  client.start({
    args: argv,
    env: [...opts.env],
    ...(opts.user !== undefined && { user: opts.user }),
    ...(opts.workdir !== undefined && { cwd: opts.workdir }),
    ...(tty && { tty: { rows: process.stdout.rows || 24, cols: process.stdout.columns || 80 } }),
    ...(opts.interactive && { stdin: true }),
  });

  const out = (stream: NodeJS.WriteStream) => (d: Buffer) => {
    stream.write(d, () => client.ack(d.length));
  };
  client.on("stdout", out(process.stdout));
  client.on("stderr", out(process.stderr));

  const onResize = () => client.resize(process.stdout.rows || 24, process.stdout.columns || 80);
  const forward = (sig: NodeJS.Signals) => () => client.signal(osc.signals[sig]);
  const handlers: [NodeJS.Signals, () => void][] = tty
    ? []
    : [
        ["SIGINT", forward("SIGINT")],
        ["SIGTERM", forward("SIGTERM")],
        ["SIGHUP", forward("SIGHUP")],
      ];
  for (const [sig, h] of handlers) process.on(sig, h);
  if (tty) process.stdout.on("resize", onResize);
  if (opts.interactive) {
    if (raw) stdin.setRawMode(true);
    stdin.on("data", (d: Buffer) => {
      if (!client.write(d)) stdin.pause();
    });
    client.on("drain", () => stdin.resume());
    stdin.on("end", () => client.end());
  }

  let guestError: { code: string; message: string } | null = null;
  client.on("guestError", (e) => {
    guestError = e;
  });
  try {
    const status = await new Promise<number>((resolve, reject) => {
      client.on("exit", (st) => resolve(st.status));
      client.on("lost", (e) =>
        reject(new MmError("MM_MACHINE_NOT_RUNNING", `the session ended without an exit status: ${e.message}`)),
      );
    });
    const g = guestError as { code: string; message: string } | null;
    if (g) throw Object.assign(new MmError(errorCodeForGuest(g.code), g.message), { exitStatus: status });
    return status;
  } finally {
    if (raw) stdin.setRawMode(false);
    if (opts.interactive) stdin.pause();
    stdin.unref?.();
    process.stdout.off("resize", onResize);
    for (const [sig, h] of handlers) process.off(sig, h);
    client.close();
  }
}
