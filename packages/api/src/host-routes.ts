// The API's routes for what belongs to the host rather than to one machine: removing,
// pruning and importing images, making templates, registry logins, and the host's own
// checks and restarts (`mm rmi`, `mm image prune|import`, `mm template create`, `mm
// login|logout`, `mm doctor`, `mm system start-all`).

import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { parseMemory } from "@mm/core";
import { doctor, type Runtime, type Snapshot as RuntimeSnapshot } from "@mm/runtime";
import type {
  FastifyBaseLogger,
  FastifyInstance,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from "fastify";
import type { ZodTypeProvider } from "fastify-type-provider-zod";
import { z } from "zod";
import { cappedBody } from "./raw-body.js";
import { ErrorBody, Image, Machine, Snapshot } from "./schemas.js";

export type Api = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  ZodTypeProvider
>;

const Check = z
  .object({ name: z.string(), ok: z.boolean(), detail: z.string(), hint: z.string().optional() })
  .meta({ id: "Check" });

export function hostRoutes(
  app: Api,
  rt: Runtime,
  deps: {
    readonly errors: Record<number, typeof ErrorBody>;
    readonly importLimit: number;
    readonly toSnapshot: (s: RuntimeSnapshot) => z.infer<typeof Snapshot>;
    readonly toMachines: (ids: readonly string[]) => z.infer<typeof Machine>[];
  },
): void {
  const { errors } = deps;
  const insecure = z.array(z.string()).optional();

  app.delete(
    "/v1/images/:reference",
    {
      schema: {
        params: z.object({ reference: z.string().min(1).describe("image reference, URL-encoded") }),
        querystring: z.object({ force: z.enum(["true", "false"]).optional() }),
        response: { 200: z.object({ reference: z.string() }), ...errors },
      },
    },
    async (req) => ({ reference: (await rt.removeImage(req.params.reference, req.query.force === "true")).reference }),
  );

  app.post(
    "/v1/images/prune",
    { schema: { response: { 200: z.object({ removed: z.number(), freedBytes: z.number() }), ...errors } } },
    async () => rt.pruneImages(),
  );

  // A `docker save` tarball as the raw body, kept in the state directory while it is read.
  app.post(
    "/v1/images/import",
    {
      schema: {
        querystring: z.object({ reference: z.string().min(1).optional() }),
        response: { 200: z.array(Image), ...errors, 413: ErrorBody },
      },
    },
    async (req) => {
      const body = cappedBody(req, deps.importLimit, "the archive (docker save, or a tar of an OCI layout)");
      const dir = join(rt.paths.state, "tmp");
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const file = join(dir, `import-${randomBytes(6).toString("hex")}.tar`);
      try {
        await pipeline(body, createWriteStream(file, { mode: 0o600 }));
        const images = await rt.images.import(file, req.query.reference);
        return images.map((i) => ({
          reference: i.reference,
          digest: i.digest,
          sizeBytes: i.manifest.layers.reduce((n, l) => n + l.size, i.manifest.config.size),
        }));
      } finally {
        await rm(file, { force: true });
      }
    },
  );

  app.post(
    "/v1/templates",
    {
      schema: {
        body: z
          .object({
            image: z.string().min(1).optional(),
            cpus: z.number().int().min(1).max(64).optional(),
            memoryMib: z.number().int().min(64).optional(),
            diskSizeMib: z.number().int().min(1).optional(),
            network: z.enum(["bridge", "user", "none"]).optional(),
            insecureRegistries: insecure,
          })
          .strict(),
        response: { 200: z.object({ template: Snapshot, existed: z.boolean() }), ...errors },
      },
    },
    async (req) => {
      const b = req.body;
      const image =
        b.image === undefined
          ? undefined
          : await rt.images.ensure(b.image, { pull: "missing", insecureRegistries: [...(b.insecureRegistries ?? [])] });
      const r = await rt.createTemplate({
        ...(image && { image }),
        ...(b.cpus !== undefined && { cpus: b.cpus }),
        ...(b.memoryMib !== undefined && { memoryMib: parseMemory(String(b.memoryMib)) }),
        ...(b.diskSizeMib !== undefined && { diskSizeMib: b.diskSizeMib }),
        ...(b.network !== undefined && { network: { mode: b.network } }),
      });
      return { template: deps.toSnapshot(r.template), existed: r.existed };
    },
  );

  // Registry credentials are the server's: checked against the registry, then kept (0600).
  app.post(
    "/v1/logins",
    {
      schema: {
        body: z
          .object({
            registry: z.string().min(1),
            username: z.string().min(1),
            password: z.string(),
            insecureRegistries: insecure,
          })
          .strict(),
        response: { 200: z.object({ registry: z.string() }), ...errors },
      },
    },
    async (req) => {
      const b = req.body;
      await rt.images.login(b.registry, b.username, b.password, {
        insecureRegistries: [...(b.insecureRegistries ?? [])],
      });
      return { registry: b.registry };
    },
  );
  app.delete(
    "/v1/logins/:registry",
    {
      schema: {
        params: z.object({ registry: z.string().min(1) }),
        response: { 200: z.object({ removed: z.boolean() }), ...errors },
      },
    },
    async (req) => ({ removed: await rt.images.logout(req.params.registry) }),
  );

  app.get("/v1/system/doctor", { schema: { response: { 200: z.array(Check), ...errors } } }, async () => doctor(rt));
  app.post("/v1/system/doctor/fix", { schema: { response: { 200: z.array(Check), ...errors } } }, async () =>
    doctor(rt, { fix: true }),
  );
  app.post("/v1/system/start-all", { schema: { response: { 200: z.array(Machine), ...errors } } }, async () =>
    deps.toMachines((await rt.startAll()).map((r) => r.id)),
  );
}
