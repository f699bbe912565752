// `mm serve`: every capability of the CLI as a local REST API (fastify), on a unix
// socket (0600: the file mode is the authentication) and, only with a token, on TCP.
// Requests are validated by the zod schemas in schemas.ts, which also make the OpenAPI
// document. Every error is `{ error: { code, message, hint } }` with an HTTP status that
// follows the code.

import { timingSafeEqual } from "node:crypto";
import { Transform } from "node:stream";
import swagger from "@fastify/swagger";
import websocket from "@fastify/websocket";
import { isActive, isMmError, MmError, parseMemory } from "@mm/core";
import {
  diskUsage,
  failedStart,
  formatPortLine,
  GUEST_BUSYBOX,
  guestProcesses,
  type MachineRecord,
  parseEgress,
  parsePublish,
  type Runtime,
  type Snapshot as RuntimeSnapshot,
  sampleStats,
  tailLog,
} from "@mm/runtime";
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify";
import {
  hasZodFastifySchemaValidationErrors,
  jsonSchemaTransform,
  serializerCompiler,
  validatorCompiler,
  type ZodTypeProvider,
} from "fastify-type-provider-zod";
import { z } from "zod";
import { downloadFile, execBuffered, guestPath, runSession, uploadFile } from "./exec.js";
import { hostRoutes } from "./host-routes.js";
import { cappedBody } from "./raw-body.js";
import {
  ErrorBody,
  Event,
  ExecRequest,
  ExecResult,
  Image,
  Machine,
  MachineCreate,
  Process,
  Ref,
  SandboxCreate,
  Snapshot,
} from "./schemas.js";

export interface ApiOptions {
  readonly version: string;
  /** Required on TCP connections (`Authorization: Bearer …`); the unix socket needs none. */
  readonly token?: string;
  /** Cap on JSON request bodies (bytes). */
  readonly bodyLimit?: number;
  /** Cap on uploaded files (bytes). */
  readonly fileLimit?: number;
  /** Output kept per stream by a buffered exec (bytes). */
  readonly maxExecOutput?: number;
}

export const DEFAULT_BODY_LIMIT = 1024 * 1024;
export const DEFAULT_FILE_LIMIT = 1024 * 1024 * 1024;
export const DEFAULT_EXEC_OUTPUT = 16 * 1024 * 1024;

/** The HTTP status of an error code. */
export function httpStatus(code: string): number {
  if (code === "MM_UNAUTHORIZED") return 401;
  if (code === "MM_ROOT_REQUIRED" || code === "MM_TCG_REFUSED") return 403;
  if (code.startsWith("MM_NO_SUCH_")) return 404;
  if (code === "MM_BODY_TOO_LARGE") return 413;
  if (code === "MM_GUEST_FILE") return 422;
  if (
    [
      "MM_NAME_IN_USE",
      "MM_MACHINE_RUNNING",
      "MM_MACHINE_NOT_RUNNING",
      "MM_VOLUME_IN_USE",
      "MM_VOLUME_EXISTS",
      "MM_PORT_IN_USE",
      "MM_SNAPSHOT_EXISTS",
      "MM_SNAPSHOT_HAS_CHILDREN",
      "MM_IMAGE_IN_USE",
    ].includes(code)
  )
    return 409;
  if (code === "MM_USAGE" || code.startsWith("MM_INVALID_")) return 400;
  return 500;
}

const errorBody = (e: MmError) => ({ error: { code: e.code, message: e.message, hint: e.hint } });

function toMachine(r: MachineRecord, ip: string | undefined): z.infer<typeof Machine> {
  return {
    id: r.id,
    name: r.spec.name,
    image: r.spec.image,
    state: r.state,
    ip: ip ?? null,
    accel: r.accel,
    exitCode: r.exitCode,
    error: r.error,
    sandbox: r.spec.sandbox ?? null,
    ports: (r.spec.network?.publish ?? []).map(formatPortLine),
    createdAt: r.createdAt,
    startedAt: r.startedAt,
    finishedAt: r.finishedAt,
  };
}

function toSnapshot(s: RuntimeSnapshot): z.infer<typeof Snapshot> {
  return { id: s.id, kind: s.kind, machine: s.machine, tag: s.tag ?? null, createdAt: s.createdAt };
}

const limitsOf = (b: { diskBps?: number | undefined; diskIops?: number | undefined; netBps?: number | undefined }) => ({
  ...(b.diskBps !== undefined && { diskBps: b.diskBps }),
  ...(b.diskIops !== undefined && { diskIops: b.diskIops }),
  ...(b.netBps !== undefined && { netBps: b.netBps }),
});

/**
 * Answers with JSON lines from `batches` until they end or the client goes (`?follow=true`
 * for logs and events).
 */
async function streamLines<T>(
  req: FastifyRequest,
  reply: FastifyReply,
  batches: AsyncGenerator<T[]>,
  toWire: (batch: T[]) => unknown[],
): Promise<FastifyReply> {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { "content-type": "application/x-ndjson" });
  let open = true;
  req.raw.on("close", () => {
    open = false;
  });
  for await (const batch of batches) {
    if (!open) break;
    for (const line of toWire(batch)) res.write(`${JSON.stringify(line)}\n`);
  }
  await batches.return(undefined);
  res.end();
  return reply;
}

/** Bearer token check in constant time (a wrong length is as slow as a wrong byte). */
function tokenMatches(header: string | undefined, token: string): boolean {
  const m = /^Bearer (.+)$/.exec(header ?? "");
  const given = Buffer.from(m?.[1] ?? "");
  const want = Buffer.from(token);
  const padded = Buffer.alloc(want.length);
  given.copy(padded, 0, 0, Math.min(given.length, want.length));
  return timingSafeEqual(padded, want) && given.length === want.length;
}

export async function buildServer(rt: Runtime, options: ApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    logger: false,
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  await app.register(swagger, {
    openapi: {
      openapi: "3.1.0",
      info: { title: "MicroMachines API", version: options.version },
      components: {
        securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      },
      security: [{ bearer: [] }],
    },
    transform: jsonSchemaTransform,
  });
  await app.register(websocket, { options: { maxPayload: 1024 * 1024 } });

  // Files travel as raw bodies: streamed to the guest, never buffered here.
  app.addContentTypeParser("application/octet-stream", (_req, payload, done) => done(null, payload));

  app.addHook("onRequest", async (req) => {
    // A unix-socket peer has no remote address; its access is the socket file's mode.
    const tcp = req.socket.remoteAddress !== undefined;
    if (!tcp) return;
    if (!options.token) throw new MmError("MM_UNAUTHORIZED", "this server takes no TCP requests without a token");
    if (!tokenMatches(req.headers.authorization, options.token)) throw new MmError("MM_UNAUTHORIZED");
  });

  app.setErrorHandler((err, _req, reply) => {
    let e: MmError;
    if (isMmError(err)) e = err;
    else if (hasZodFastifySchemaValidationErrors(err)) e = new MmError("MM_USAGE", err.message);
    else if ((err as { code?: string }).code === "FST_ERR_CTP_BODY_TOO_LARGE") e = new MmError("MM_BODY_TOO_LARGE");
    else if ((err as { statusCode?: number }).statusCode === 400 || (err as { statusCode?: number }).statusCode === 415)
      e = new MmError("MM_USAGE", err instanceof Error ? err.message : String(err));
    else e = new MmError("MM_INTERNAL", err instanceof Error ? err.message : String(err));
    void reply.code(httpStatus(e.code)).type("application/json").send(errorBody(e));
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new MmError("MM_NO_SUCH_ROUTE", `${req.method} ${req.url}`);
    void reply.code(404).send(errorBody(e));
  });

  const errors = { 400: ErrorBody, 401: ErrorBody, 403: ErrorBody, 404: ErrorBody, 409: ErrorBody, 500: ErrorBody };
  const ip = (r: MachineRecord) => rt.store.lease(r.id)?.ip;
  const resolveImage = async (image: string | undefined, insecure: readonly string[] | undefined) =>
    image === undefined
      ? undefined
      : rt.images.ensure(image, { pull: "missing", insecureRegistries: [...(insecure ?? [])] });

  app.get(
    "/v1/version",
    { schema: { response: { 200: z.object({ version: z.string(), api: z.literal("v1") }) } } },
    async () => ({ version: options.version, api: "v1" as const }),
  );

  app.get("/v1/openapi.json", { schema: { hide: true } }, async () => app.swagger());

  // Machines
  app.get("/v1/machines", { schema: { response: { 200: z.array(Machine), ...errors } } }, async () =>
    rt.list().map((r) => toMachine(r, ip(r))),
  );

  app.post(
    "/v1/machines",
    { schema: { body: MachineCreate, response: { 201: Machine, ...errors } } },
    async (req, reply) => {
      const b = req.body;
      const image = await resolveImage(b.image, b.insecureRegistries);
      const rec = rt.create({
        ...(b.name !== undefined && { name: b.name }),
        ...(image && { image }),
        ...(b.command && { command: b.command }),
        ...(b.env && { env: b.env }),
        ...(b.cpus !== undefined && { cpus: b.cpus }),
        ...(b.memoryMib !== undefined && { memoryMib: parseMemory(String(b.memoryMib)) }),
        limits: limitsOf(b),
        network: {
          ...(b.network && { mode: b.network }),
          publish: (b.publish ?? []).map(parsePublish),
        },
      });
      const r = failedStart(await rt.startDetached(rec.id));
      return reply.code(201).send(toMachine(r, ip(r)));
    },
  );

  app.get("/v1/machines/:ref", { schema: { params: Ref, response: { 200: Machine, ...errors } } }, async (req) => {
    const r = rt.find(req.params.ref);
    return toMachine(r, ip(r));
  });

  // `mm wait`: answers once the machine has stopped (a long poll; the client may go first).
  app.get("/v1/machines/:ref/wait", { schema: { params: Ref, response: { 200: Machine, ...errors } } }, async (req) => {
    const id = rt.find(req.params.ref).id;
    let gone = false;
    req.raw.on("close", () => {
      gone = true;
    });
    const r = await rt.waitFor(id, (m) => gone || !isActive(m.state), 24 * 3600 * 1000);
    return toMachine(r, ip(r));
  });

  app.post(
    "/v1/machines/:ref/stop",
    {
      schema: {
        params: Ref,
        body: z
          .object({ timeoutS: z.number().int().min(0).max(3600).optional() })
          .strict()
          .optional(),
        response: { 200: Machine, ...errors },
      },
    },
    async (req) => {
      const r = await rt.stop(req.params.ref, req.body?.timeoutS ?? 10);
      return toMachine(r, ip(r));
    },
  );

  app.post(
    "/v1/machines/:ref/start",
    { schema: { params: Ref, response: { 200: Machine, ...errors } } },
    async (req) => {
      const rec = rt.find(req.params.ref);
      if (rec.state === "running" || rec.state === "starting") {
        throw new MmError("MM_MACHINE_RUNNING", rec.spec.name, { hint: "it is already running" });
      }
      const r = failedStart(await rt.startDetached(rec.id));
      return toMachine(r, ip(r));
    },
  );

  app.delete(
    "/v1/machines/:ref",
    {
      schema: {
        params: Ref,
        querystring: z.object({ force: z.enum(["true", "false"]).optional() }),
        response: { 200: Machine, ...errors },
      },
    },
    async (req) => {
      const r = await rt.remove(req.params.ref, { force: req.query.force === "true" });
      return toMachine(r, undefined);
    },
  );

  // Exec
  app.post(
    "/v1/machines/:ref/exec",
    { schema: { params: Ref, body: ExecRequest, response: { 200: ExecResult, ...errors } } },
    async (req) => {
      const b = req.body;
      const r = await execBuffered(
        rt,
        req.params.ref,
        {
          argv: b.argv,
          ...(b.env && { env: b.env }),
          ...(b.user !== undefined && { user: b.user }),
          ...(b.workdir !== undefined && { workdir: b.workdir }),
          ...(b.stdin !== undefined && { stdin: Buffer.from(b.stdin, "base64") }),
        },
        options.maxExecOutput ?? DEFAULT_EXEC_OUTPUT,
      );
      return {
        exitCode: r.status.status,
        signal: r.status.signal ?? null,
        stdout: r.stdout.toString("base64"),
        stderr: r.stderr.toString("base64"),
        truncated: r.truncated,
      };
    },
  );

  // Streaming exec over a WebSocket. Client → server: a JSON {type:"start", argv, env?,
  // user?, workdir?} first, then binary frames (stdin), {type:"eof"}, {type:"signal",
  // signal}. Server → client: binary frames whose first byte is 1 (stdout) or 2 (stderr),
  // then one JSON {type:"exit", exitCode, signal} (or {type:"error", error}) and a close.
  app.get("/v1/machines/:ref/exec/ws", { websocket: true, schema: { params: Ref, hide: true } }, (socket, req) => {
    const ref = (req.params as { ref: string }).ref;
    let client: Awaited<ReturnType<Runtime["exec"]>> | null = null;
    // Stdin and control frames that arrive while the session is being opened wait here.
    const early: (() => void)[] = [];
    const whenOpen = (f: () => void) => (client ? f() : early.push(f));
    const fail = (e: unknown) => {
      const err = isMmError(e) ? e : new MmError("MM_INTERNAL", String(e));
      socket.send(JSON.stringify({ type: "error", error: errorBody(err).error }));
      socket.close(1011, err.code);
    };
    socket.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) {
        whenOpen(() => client?.write(data));
        return;
      }
      let msg: { type?: string; argv?: string[]; env?: string[]; user?: string; workdir?: string; signal?: number };
      try {
        msg = JSON.parse(data.toString("utf8"));
      } catch {
        return fail(new MmError("MM_USAGE", "a text frame must be JSON"));
      }
      if (msg.type === "start" && !client) {
        const parsed = ExecRequest.omit({ stdin: true }).safeParse({
          argv: msg.argv,
          ...(msg.env && { env: msg.env }),
          ...(msg.user !== undefined && { user: msg.user }),
          ...(msg.workdir !== undefined && { workdir: msg.workdir }),
        });
        if (!parsed.success) return fail(new MmError("MM_USAGE", parsed.error.message));
        rt.exec(ref).then(
          (c) => {
            client = c;
            const session = runSession(c, { ...parsed.data, stdin: true }, (s, d) => {
              socket.send(Buffer.concat([Buffer.from([s === "stdout" ? 1 : 2]), d]));
            });
            for (const f of early.splice(0)) f();
            session.then(
              (st) => {
                socket.send(JSON.stringify({ type: "exit", exitCode: st.status, signal: st.signal ?? null }));
                socket.close(1000);
                c.close();
              },
              (e) => {
                fail(e);
                c.close();
              },
            );
          },
          (e) => fail(e),
        );
      } else if (msg.type === "eof") whenOpen(() => client?.end());
      else if (msg.type === "signal" && typeof msg.signal === "number") {
        const sig = msg.signal;
        whenOpen(() => client?.signal(sig));
      } else fail(new MmError("MM_USAGE", `unexpected message ${JSON.stringify(msg.type)}`));
    });
    socket.on("close", () => client?.close());
  });

  // Files
  const FileQuery = z.object({ path: z.string().min(1) });
  app.put(
    "/v1/machines/:ref/files",
    {
      schema: {
        params: Ref,
        querystring: FileQuery,
        response: { 200: z.object({ path: z.string(), bytes: z.number() }), ...errors, 413: ErrorBody },
      },
    },
    async (req: FastifyRequest<{ Params: { ref: string }; Querystring: { path: string } }>) => {
      const path = guestPath(req.query.path);
      const body = cappedBody(req, options.fileLimit ?? DEFAULT_FILE_LIMIT, "the file");
      const bytes = await uploadFile(rt, req.params.ref, path, body);
      return { path, bytes };
    },
  );

  app.get(
    "/v1/machines/:ref/files",
    { schema: { params: Ref, querystring: FileQuery } },
    async (req: FastifyRequest<{ Params: { ref: string }; Querystring: { path: string } }>, reply: FastifyReply) => {
      const path = guestPath(req.query.path);
      const chunks: Buffer[] = [];
      const sink = new Transform({
        transform(chunk: Buffer, _e, cb) {
          chunks.push(chunk);
          cb();
        },
      });
      await downloadFile(rt, req.params.ref, path, sink);
      return reply.type("application/octet-stream").send(Buffer.concat(chunks));
    },
  );

  // Processes
  app.get(
    "/v1/machines/:ref/processes",
    { schema: { params: Ref, response: { 200: z.array(Process), ...errors } } },
    async (req) => {
      const text = await guestProcesses(rt, req.params.ref);
      return text
        .trimEnd()
        .split("\n")
        .slice(1)
        .map((l) => l.trim().split(/\s+/))
        .map(([pid, ppid, user, _stat, _vsz, _rss, ...cmd]) => ({
          pid: Number(pid),
          ppid: Number(ppid),
          user: user ?? "",
          command: cmd.join(" "),
        }));
    },
  );

  app.post(
    "/v1/machines/:ref/processes/:pid/kill",
    {
      schema: {
        params: Ref.extend({ pid: z.coerce.number().int().min(1) }),
        body: z
          .object({
            signal: z
              .string()
              .regex(/^[A-Z0-9]{1,10}$/)
              .optional(),
          })
          .strict()
          .optional(),
        response: { 200: z.object({ killed: z.number().int() }), ...errors },
      },
    },
    async (req) => {
      const sig = req.body?.signal ?? "TERM";
      const r = await execBuffered(
        rt,
        req.params.ref,
        { argv: [GUEST_BUSYBOX, "kill", "-s", sig, String(req.params.pid)] },
        4096,
      );
      if (r.status.status !== 0) {
        throw new MmError("MM_NO_SUCH_PROCESS", `${req.params.pid}: ${r.stderr.toString().trim()}`);
      }
      return { killed: req.params.pid };
    },
  );

  // Sandboxes
  app.post(
    "/v1/sandboxes",
    { schema: { body: SandboxCreate, response: { 201: Machine, ...errors } } },
    async (req, reply) => {
      const b = req.body;
      const image = await resolveImage(b.image, b.insecureRegistries);
      const r = failedStart(
        await rt.createSandbox({
          ...(b.name !== undefined && { name: b.name }),
          ...(image && { image }),
          ...(b.cpus !== undefined && { cpus: b.cpus }),
          ...(b.memoryMib !== undefined && { memoryMib: b.memoryMib }),
          ...(b.timeoutMs !== undefined && { timeoutMs: b.timeoutMs }),
          ...(b.idleTimeoutMs !== undefined && { idleMs: b.idleTimeoutMs }),
          ...(b.allowTcg !== undefined && { allowTcg: b.allowTcg }),
          limits: limitsOf(b),
          network: {
            ...(b.network && { mode: b.network }),
            ...(b.egress !== undefined && { egress: parseEgress(b.egress) }),
            publish: [],
          },
        }),
      );
      return reply.code(201).send(toMachine(r, ip(r)));
    },
  );

  app.get("/v1/sandboxes", { schema: { response: { 200: z.array(Machine), ...errors } } }, async () =>
    rt
      .list()
      .filter((r) => r.spec.sandbox && !r.spec.sandbox.pooled)
      .map((r) => toMachine(r, ip(r))),
  );

  // Snapshots and forks
  app.post(
    "/v1/machines/:ref/snapshots",
    {
      schema: {
        params: Ref,
        body: z.object({ tag: z.string().optional() }).strict().optional(),
        response: { 201: Snapshot.extend({ pausedMs: z.number().nullable() }), ...errors },
      },
    },
    async (req, reply) => {
      const s = await rt.snapshot(req.params.ref, { ...(req.body?.tag !== undefined && { tag: req.body.tag }) });
      return reply.code(201).send({ ...toSnapshot(s), pausedMs: s.pausedMs });
    },
  );

  app.get("/v1/snapshots", { schema: { response: { 200: z.array(Snapshot), ...errors } } }, async () =>
    rt.snapshots({ all: true }).map(toSnapshot),
  );

  app.post(
    "/v1/snapshots/gc",
    {
      schema: {
        body: z.object({ machine: z.string().min(1), keep: z.number().int().min(0) }).strict(),
        response: { 200: z.object({ removed: z.array(Snapshot), kept: z.array(Snapshot) }), ...errors },
      },
    },
    async (req) => {
      const r = await rt.gcSnapshots(req.body.machine, req.body.keep);
      return { removed: r.removed.map(toSnapshot), kept: r.kept.map(toSnapshot) };
    },
  );

  app.delete(
    "/v1/snapshots/:id",
    { schema: { params: z.object({ id: z.string().min(1) }), response: { 200: Snapshot, ...errors } } },
    async (req) => toSnapshot(await rt.removeSnapshot(req.params.id)),
  );

  app.post(
    "/v1/snapshots/:id/restore",
    {
      schema: {
        params: z.object({ id: z.string().min(1) }),
        body: z
          .object({
            name: z.string().min(1),
            publish: z
              .array(z.string())
              .optional()
              .describe("ports to publish; without it, the snapshot's ports that no other machine holds"),
          })
          .strict(),
        response: { 201: Machine, ...errors },
      },
    },
    async (req, reply) => {
      const r = failedStart(
        await rt.restore(req.params.id, req.body.name, {
          ...(req.body.publish && { publish: req.body.publish.map(parsePublish) }),
        }),
      );
      return reply.code(201).send(toMachine(r, ip(r)));
    },
  );

  app.post(
    "/v1/machines/:ref/fork",
    {
      schema: {
        params: Ref,
        body: z
          .object({
            name: z.string().min(1),
            count: z.number().int().min(1).max(64).optional(),
            publish: z.array(z.string()).optional().describe("ports to publish (one clone only); none by default"),
          })
          .strict(),
        response: { 201: z.array(Machine), ...errors },
      },
    },
    async (req, reply) => {
      const clones = await rt.fork(req.params.ref, req.body.name, req.body.count ?? 1, {
        ...(req.body.publish && { publish: req.body.publish.map(parsePublish) }),
      });
      return reply.code(201).send(clones.map((r) => toMachine(r, ip(r))));
    },
  );

  // Logs, stats, memory
  // Logs: the whole log (JSON), or with ?follow=true a stream of JSON lines that ends
  // when the machine does.
  app.get(
    "/v1/machines/:ref/logs",
    {
      schema: {
        params: Ref,
        querystring: z.object({ follow: z.enum(["true", "false"]).optional() }),
        response: {
          200: z.array(z.object({ time: z.number(), stream: z.string(), data: z.string().describe("base64") })),
          ...errors,
        },
      },
    },
    async (req, reply) => {
      const wire = (e: { time: number; stream: string; data: Buffer }) => ({
        time: e.time,
        stream: e.stream,
        data: e.data.toString("base64"),
      });
      const id = rt.find(req.params.ref).id;
      if (req.query.follow !== "true") return rt.logs(id).map(wire);
      const active = () => {
        try {
          return isActive(rt.find(id).state);
        } catch {
          return false; // removed meanwhile: what was read is all
        }
      };
      return streamLines(req, reply, tailLog(rt.logPath(id), true, active), (batch) => batch.map(wire));
    },
  );

  app.get(
    "/v1/machines/:ref/stats",
    {
      schema: {
        params: Ref,
        response: { 200: z.record(z.string(), z.unknown()).describe("as `mm stats --json`"), ...errors },
      },
    },
    async (req) => {
      const rec = rt.find(req.params.ref);
      if (rec.state !== "running") throw new MmError("MM_MACHINE_NOT_RUNNING", `${rec.spec.name} is ${rec.state}`);
      const [st] = await sampleStats(rt, [rec]);
      if (!st) throw new MmError("MM_MACHINE_NOT_RUNNING", rec.spec.name);
      return st as unknown as Record<string, unknown>;
    },
  );

  app.post(
    "/v1/machines/:ref/memory",
    {
      schema: {
        params: Ref,
        body: z.object({ memoryMib: z.number().int().min(16) }).strict(),
        response: { 200: z.record(z.string(), z.unknown()), ...errors },
      },
    },
    async (req) => (await rt.updateMemory(req.params.ref, req.body.memoryMib)) as unknown as Record<string, unknown>,
  );

  // Volumes and templates
  const Volume = z.object({
    name: z.string(),
    sizeBytes: z.number(),
    usedBy: z.array(z.string()),
    attachedTo: z.string().nullable(),
  });
  const toVolume = (v: ReturnType<Runtime["volume"]>) => ({
    name: v.name,
    sizeBytes: v.sizeBytes,
    usedBy: [...v.usedBy],
    attachedTo: v.attachedTo,
  });
  app.get("/v1/volumes", { schema: { response: { 200: z.array(Volume), ...errors } } }, async () =>
    rt.volumes().map(toVolume),
  );
  app.post(
    "/v1/volumes",
    {
      schema: {
        body: z
          .object({
            name: z.string().min(1),
            sizeBytes: z
              .number()
              .int()
              .min(16 * 2 ** 20)
              .optional(),
          })
          .strict(),
        response: { 201: Volume, ...errors },
      },
    },
    async (req, reply) => reply.code(201).send(toVolume(await rt.createVolume(req.body.name, req.body.sizeBytes))),
  );
  app.delete(
    "/v1/volumes/:name",
    { schema: { params: z.object({ name: z.string().min(1) }), response: { 200: Volume, ...errors } } },
    async (req) => toVolume(await rt.removeVolume(req.params.name)),
  );
  app.get(
    "/v1/df",
    {
      schema: {
        response: {
          200: z.array(
            z.object({ type: z.string(), count: z.number(), bytes: z.number(), reclaimableBytes: z.number() }),
          ),
          ...errors,
        },
      },
    },
    async () => [...(await diskUsage(rt))],
  );

  app.get("/v1/templates", { schema: { response: { 200: z.array(Snapshot), ...errors } } }, async () =>
    rt.templates().map(toSnapshot),
  );
  app.delete(
    "/v1/templates/:id",
    { schema: { params: z.object({ id: z.string().min(1) }), response: { 200: Snapshot, ...errors } } },
    async (req) => {
      const t = rt.findSnapshot(req.params.id);
      if (t.kind !== "template") throw new MmError("MM_NO_SUCH_SNAPSHOT", `${req.params.id} is not a template`);
      return toSnapshot(await rt.removeSnapshot(t.id));
    },
  );
  app.get(
    "/v1/volumes/:name",
    { schema: { params: z.object({ name: z.string().min(1) }), response: { 200: Volume, ...errors } } },
    async (req) => toVolume(rt.volume(req.params.name)),
  );

  // Images
  app.get("/v1/images", { schema: { response: { 200: z.array(Image), ...errors } } }, async () =>
    (await rt.images.list()).map((i) => ({ reference: i.reference, digest: i.digest, sizeBytes: i.sizeBytes })),
  );

  app.post(
    "/v1/images/pull",
    {
      schema: {
        body: z.object({ reference: z.string().min(1), insecureRegistries: z.array(z.string()).optional() }).strict(),
        response: { 200: Image, ...errors },
      },
    },
    async (req) => {
      const img = await rt.images.ensure(req.body.reference, {
        pull: "always",
        insecureRegistries: [...(req.body.insecureRegistries ?? [])],
      });
      return {
        reference: img.reference,
        digest: img.digest,
        sizeBytes: img.manifest.layers.reduce((n, l) => n + l.size, img.manifest.config.size),
      };
    },
  );

  // Events: a page (JSON), or a stream of JSON lines with ?follow=true.
  app.get(
    "/v1/events",
    {
      schema: {
        querystring: z.object({
          after: z.coerce.number().int().min(0).optional(),
          follow: z.enum(["true", "false"]).optional(),
        }),
        response: { 200: z.array(Event), ...errors },
      },
    },
    async (req, reply) => {
      let after = req.query.after ?? 0;
      if (req.query.follow !== "true") return rt.store.events(after);
      async function* poll() {
        for (;;) {
          const batch = rt.store.events(after);
          after = batch.at(-1)?.seq ?? after;
          yield batch;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      return streamLines(req, reply, poll(), (batch) => batch);
    },
  );

  hostRoutes(app, rt, {
    errors,
    importLimit: options.fileLimit ?? DEFAULT_FILE_LIMIT,
    toSnapshot,
    toMachines: (ids) =>
      ids.map((id) => {
        const r = rt.find(id);
        return toMachine(r, ip(r));
      }),
  });

  return app;
}
