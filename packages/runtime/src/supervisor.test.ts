import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import type { MachineSpec } from "@mm/core";
import { DEFAULT_IMAGE_CONFIG, elfNeedsInterpreter } from "./default-image.js";
import type { MachineRecord } from "./store.js";
import { hostnameFor, workloadConfig } from "./supervisor.js";

const rec = (
  over: Partial<MachineSpec>,
  imageConfig: MachineSpec["imageConfig"] = DEFAULT_IMAGE_CONFIG,
): MachineRecord =>
  ({
    id: "aaaa11112222",
    spec: {
      imageConfig,
      name: "web_1",
      image: "mm/busybox",
      cpus: 1,
      memoryMib: 256,
      command: [],
      env: [],
      autoRemove: false,
      ...over,
    },
  }) as unknown as MachineRecord;

test("the image's command runs unless the user gives one", () => {
  assert.deepEqual(workloadConfig(rec({})).args, ["sh"]);
  assert.deepEqual(workloadConfig(rec({ command: ["echo", "hi"] })).args, ["echo", "hi"]);
});

test("-e overrides the image's variable of the same name, keeps the others", () => {
  const cfg = workloadConfig(
    rec({ env: ["PATH=/x", "A=1"] }, { entrypoint: [], cmd: ["sh"], env: ["PATH=/bin", "B=2"], exposedPorts: [] }),
  );
  assert.deepEqual(cfg.env, ["PATH=/x", "B=2", "A=1", "HOSTNAME=web-1"]);
});

test("workdir and user: the user's flag wins over the image", () => {
  const img = { entrypoint: [], cmd: ["sh"], env: [], workdir: "/srv", user: "nobody", exposedPorts: [] };
  assert.deepEqual([workloadConfig(rec({}, img)).cwd, workloadConfig(rec({}, img)).user], ["/srv", "nobody"]);
  const c = workloadConfig(rec({ workdir: "/tmp", user: "0:0" }, img));
  assert.deepEqual([c.cwd, c.user], ["/tmp", "0:0"]);
});

test("hostnames are valid DNS labels made from names", () => {
  assert.equal(hostnameFor("web_1"), "web-1");
  assert.equal(hostnameFor("My.App"), "my-app");
  assert.equal(hostnameFor("___"), "mm");
  assert.equal(hostnameFor("a".repeat(70)).length, 63);
});

test("ELF check: a dynamic binary needs an interpreter", () => {
  assert.equal(elfNeedsInterpreter(readFileSync(process.execPath)), true);
  assert.throws(() => elfNeedsInterpreter(Buffer.from("#!/bin/sh\n")));
});

test("an image with neither entrypoint nor command, and none given, is MM_USAGE", () => {
  assert.throws(
    () => workloadConfig(rec({}, { entrypoint: [], cmd: [], env: [], exposedPorts: [] })),
    (e) => (e as { code?: string }).code === "MM_USAGE",
  );
});
