// The API's request and response shapes: one zod schema each, which validates requests,
// serialises responses and becomes the OpenAPI document (GET /v1/openapi.json).

import { z } from "zod";

export const ErrorBody = z
  .object({
    error: z.object({
      code: z.string().describe("stable error code (docs/errors.md)"),
      message: z.string(),
      hint: z.string(),
    }),
  })
  .meta({ id: "Error" });

export const Machine = z
  .object({
    id: z.string(),
    name: z.string(),
    image: z.string(),
    state: z.string().describe("created, starting, running, stopping, exited, failed"),
    ip: z.string().nullable(),
    accel: z.string().nullable(),
    exitCode: z.number().int().nullable(),
    error: z.object({ code: z.string(), message: z.string() }).nullable(),
    sandbox: z.object({ timeoutMs: z.number().int(), idleMs: z.number().int().optional() }).nullable(),
    ports: z.array(z.string()).describe("published ports, as `mm port` prints them"),
    createdAt: z.string(),
    startedAt: z.string().nullable(),
    finishedAt: z.string().nullable(),
  })
  .meta({ id: "Machine" });

const Network = z.enum(["bridge", "user", "none"]);

export const MachineCreate = z
  .object({
    image: z.string().min(1).optional().describe("image reference; the embedded busybox image when absent"),
    name: z.string().optional(),
    command: z.array(z.string()).optional().describe("argv; the image's default command when absent"),
    env: z.array(z.string()).optional().describe("KEY=VALUE"),
    cpus: z.number().int().min(1).max(64).optional(),
    memoryMib: z.number().int().min(64).optional(),
    network: Network.optional(),
    publish: z.array(z.string()).optional().describe("[ip:]hostPort:guestPort[/proto], as `-p`"),
    diskBps: z.number().int().min(1024).optional().describe("root disk throttle, bytes/s"),
    diskIops: z.number().int().min(1).optional().describe("root disk throttle, operations/s"),
    netBps: z.number().int().min(1024).optional().describe("network limit each way, bytes/s (bridge)"),
    insecureRegistries: z.array(z.string()).optional(),
  })
  .strict()
  .meta({ id: "MachineCreate" });

export const SandboxCreate = z
  .object({
    image: z.string().min(1).optional(),
    name: z.string().optional(),
    timeoutMs: z
      .number()
      .int()
      .min(1000)
      .max(7 * 24 * 3600 * 1000)
      .optional()
      .describe("hard lifetime (default 10 min)"),
    idleTimeoutMs: z.number().int().min(1000).optional().describe("ended after this long without an exec session"),
    cpus: z.number().int().min(1).max(64).optional(),
    memoryMib: z.number().int().min(64).optional(),
    egress: z.string().optional().describe("allow, deny, or CIDR[:port[/proto]],... (bridge network, root)"),
    network: Network.optional(),
    allowTcg: z
      .boolean()
      .optional()
      .describe("accept TCG emulation (not a hardware boundary) where KVM is missing; refused otherwise"),
    diskBps: z.number().int().min(1024).optional().describe("root disk throttle, bytes/s"),
    diskIops: z.number().int().min(1).optional().describe("root disk throttle, operations/s"),
    netBps: z.number().int().min(1024).optional().describe("network limit each way, bytes/s (bridge)"),
    insecureRegistries: z.array(z.string()).optional(),
  })
  .strict()
  .meta({ id: "SandboxCreate" });

export const ExecRequest = z
  .object({
    argv: z.array(z.string()).min(1),
    env: z.array(z.string()).optional(),
    user: z.string().optional(),
    workdir: z.string().optional(),
    stdin: z.string().optional().describe("bytes for the process's stdin, base64"),
  })
  .strict()
  .meta({ id: "ExecRequest" });

export const ExecResult = z
  .object({
    exitCode: z.number().int(),
    signal: z.number().int().nullable(),
    stdout: z.string().describe("base64"),
    stderr: z.string().describe("base64"),
    truncated: z.boolean().describe("output beyond the cap was dropped"),
  })
  .meta({ id: "ExecResult" });

export const Process = z
  .object({ pid: z.number().int(), ppid: z.number().int(), user: z.string(), command: z.string() })
  .meta({ id: "Process" });

export const Snapshot = z
  .object({
    id: z.string(),
    kind: z.string(),
    machine: z.string(),
    tag: z.string().nullable(),
    createdAt: z.string(),
  })
  .meta({ id: "Snapshot" });

export const Event = z
  .object({
    seq: z.number().int(),
    time: z.string(),
    machineId: z.string(),
    machine: z.string(),
    type: z.string(),
    detail: z.record(z.string(), z.unknown()).nullable(),
  })
  .meta({ id: "Event" });

export const Image = z
  .object({ reference: z.string(), digest: z.string(), sizeBytes: z.number() })
  .meta({ id: "Image" });

export const Ref = z.object({ ref: z.string().min(1).describe("machine name or id (prefix)") });
