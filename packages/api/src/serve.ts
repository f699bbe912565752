// The API server's process side: listens (unix socket 0600, TCP only with a token), and
// shuts down gracefully. `mm serve` loads this module only when it runs (it is bundled
// apart from the CLI, whose every other command then starts without fastify).

import { chmod, rm } from "node:fs/promises";
import { MmError } from "@mm/core";
import { Runtime } from "@mm/runtime";
import { buildServer } from "./server.js";

export interface ServeOptions {
  readonly version: string;
  readonly socket: string;
  readonly tcp?: { readonly host: string; readonly port: number };
  readonly token?: string;
  readonly bodyLimit?: number;
  /** argv that starts a detached supervisor (the CLI's own `__supervise`). */
  readonly supervisorCommand: readonly string[];
  /** Sandboxes kept booted ahead for creates that ask only for the defaults (`--pool`). */
  readonly pool?: number;
  /** The pool's image (`--pool-image`; default: the embedded one) and where it may come from. */
  readonly poolImage?: { readonly reference: string; readonly insecureRegistries: readonly string[] };
  /** Where the pool's failures are told (stderr). */
  readonly onWarning?: (message: string) => void;
}

export interface Serving {
  readonly addresses: readonly string[];
  /** Stops accepting, lets requests in flight finish, removes the socket. */
  close(): Promise<void>;
}

export async function serve(opts: ServeOptions): Promise<Serving> {
  if (opts.tcp && !opts.token) {
    throw new MmError("MM_USAGE", "TCP needs a token (--token or MM_API_TOKEN)", {
      hint: "TCP is reachable by other users of the host: the API refuses to serve it unauthenticated",
    });
  }
  const rt = new Runtime({ supervisorCommand: opts.supervisorCommand });
  const make = () =>
    buildServer(rt, {
      version: opts.version,
      ...(opts.token && { token: opts.token }),
      ...(opts.bodyLimit !== undefined && { bodyLimit: opts.bodyLimit }),
    });
  const unix = await make();
  await rm(opts.socket, { force: true });
  // Created 0600 from the start: there is no moment another user could connect.
  const umask = process.umask(0o177);
  try {
    await unix.listen({ path: opts.socket });
  } finally {
    process.umask(umask);
  }
  await chmod(opts.socket, 0o600);
  const addresses = [`unix://${opts.socket}`];
  // Fastify serves one listener per instance: TCP gets a second instance of the same routes.
  const tcp = opts.tcp ? await make() : null;
  if (tcp && opts.tcp) {
    await tcp.listen({ host: opts.tcp.host, port: opts.tcp.port });
    const a = tcp.server.address();
    addresses.push(`http://${opts.tcp.host}:${typeof a === "object" && a ? a.port : opts.tcp.port}`);
  }
  // The pool: refilled in the background after every claim (checked twice a second);
  // a failure is told once per kind and retried after a pause.
  let closing = false;
  let filling: Promise<void> = Promise.resolve();
  let timer: NodeJS.Timeout | null = null;
  const size = opts.pool ?? 0;
  if (size > 0) {
    let lastError = "";
    // The pool's image, resolved (pulled if missing) once: not again on every check.
    let resolved: ReturnType<Runtime["images"]["ensure"]> | Promise<undefined> | null = null;
    const image = () => {
      const ref = opts.poolImage;
      resolved ??= ref
        ? rt.images.ensure(ref.reference, { pull: "missing", insecureRegistries: [...ref.insecureRegistries] })
        : Promise.resolve(undefined);
      // A failed pull is tried again at the next check.
      return resolved.catch((e: unknown) => {
        resolved = null;
        throw e;
      });
    };
    const tick = () => {
      filling = image()
        .then((img) => rt.fillPool(size, img))
        .then(
          () => {
            lastError = "";
            if (!closing) timer = setTimeout(tick, 500);
          },
          (e: Error) => {
            if (e.message !== lastError) opts.onWarning?.(`the sandbox pool could not fill: ${e.message}`);
            lastError = e.message;
            if (!closing) timer = setTimeout(tick, 5000);
          },
        );
    };
    tick();
  }
  return {
    addresses,
    async close() {
      closing = true;
      if (timer) clearTimeout(timer);
      await Promise.all([unix.close(), tcp?.close()]);
      await filling;
      await rt.drainPool();
      await rm(opts.socket, { force: true });
      rt.close();
    },
  };
}
