#!/usr/bin/env node
// bench/pull: a cold pull-and-build of the fixture images by mm against the shell
// pipeline a user would otherwise write (skopeo copy + umoci unpack + mke2fs -d),
// side by side in one run, plus mm's warm (cached) image resolution for `mm run`.
// Writes the "pull" section of docs/BENCHMARKS.md.   Usage: node bench/pull.mjs [N]

import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, release, tmpdir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { median, writeSection } from "./report.mjs";

const root = resolve(import.meta.dirname, "..");
const N = Number(process.argv[2] ?? 5);
const { startRegistries } = await import(join(root, "test/fixtures/registry.mjs"));
const { buildFixtureImages, pushFixtureImages } = await import(join(root, "test/fixtures/images.mjs"));
const { Images, defaultPaths, initPath } = await import(join(root, "packages/runtime/dist/index.js"));

const work = mkdtempSync(join(tmpdir(), "mm-bench-pull-"));
const regs = await startRegistries({ dir: join(work, "registry") });
const pushed = await pushFixtureImages(regs, await buildFixtureImages({ log: () => undefined }));
const init = initPath(process.env);
const ms = (t) => Number(process.hrtime.bigint() - t) / 1e6;

async function mmCold(ref, i) {
  const state = join(work, `mm-${i}-${ref.split("/").pop().replace(/[:]/g, "_")}`);
  const images = new Images(defaultPaths({ MM_STATE: state, MM_CACHE: join(work, "cache") }), {});
  const t = process.hrtime.bigint();
  const img = await images.pull(ref, { insecureRegistries: [regs.plain] });
  await images.rootfs(img, init);
  const took = ms(t);
  rmSync(state, { recursive: true, force: true });
  return took;
}

function pipelineCold(ref, i) {
  const dir = join(work, `pipe-${i}`);
  mkdirSync(dir, { recursive: true });
  const t = process.hrtime.bigint();
  execFileSync("skopeo", ["copy", "--quiet", "--src-tls-verify=false", `docker://${ref}`, `oci:${dir}/layout:img`]);
  execFileSync("umoci", ["unpack", "--image", `${dir}/layout:img`, `${dir}/bundle`], { stdio: "ignore" });
  const kb = Number(execFileSync("du", ["-sk", `${dir}/bundle/rootfs`], { encoding: "utf8" }).split("\t")[0]);
  const mib = Math.max(64, Math.ceil((kb * 1.3) / 1024) + 16);
  execFileSync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", `${dir}/bundle/rootfs`, `${dir}/rootfs.ext4`, `${mib}M`]);
  // Same end state as mm: the blobs and the ext4 stay, the unpacked tree goes.
  rmSync(`${dir}/bundle`, { recursive: true, force: true });
  const took = ms(t);
  rmSync(dir, { recursive: true, force: true });
  return took;
}

const rows = [];
try {
  // umoci 0.4.7 cannot unpack zstd layers, so the python image is measured for mm alone.
  for (const name of ["busybox", "web", "layers"]) {
    const ref = pushed.images[name].ref;
    const a = [];
    const b = [];
    for (let i = 0; i < N; i++) {
      a.push(pipelineCold(ref, i));
      b.push(await mmCold(ref, i));
    }
    rows.push({ name, pipeline: median(a), mm: median(b), n: N });
  }
  const py = [];
  for (let i = 0; i < Math.min(N, 3); i++) py.push(await mmCold(pushed.images.python.ref, i));
  rows.push({ name: "python (zstd)", pipeline: null, mm: median(py), n: py.length });

  // Warm: what `mm run IMAGE` spends resolving an image already pulled and built.
  const state = join(work, "warm");
  const images = new Images(defaultPaths({ MM_STATE: state, MM_CACHE: join(work, "cache") }), {});
  const ref = pushed.images.web.ref;
  await images.rootfs(await images.pull(ref, { insecureRegistries: [regs.plain] }), init);
  const warm = [];
  for (let i = 0; i < 20; i++) {
    const t = process.hrtime.bigint();
    await images.rootfs(await images.ensure(ref, { insecureRegistries: [regs.plain] }), init);
    warm.push(ms(t));
  }
  rows.push({ name: "warm resolution", warm: median(warm), all: warm });
} finally {
  await regs.stop();
  rmSync(work, { recursive: true, force: true });
}

const fmt = (x) => (x === null ? "—" : `${x.toFixed(0)} ms`);
const table = rows
  .filter((r) => r.warm === undefined)
  .map(
    (r) =>
      `| ${r.name} | ${fmt(r.pipeline)} | ${fmt(r.mm)} | ${r.pipeline ? `**${(r.mm / r.pipeline).toFixed(2)}**` : "—"} |`,
  )
  .join("\n");
const warmRow = rows.find((r) => r.warm !== undefined);
const skopeo = execFileSync("skopeo", ["--version"], { encoding: "utf8" }).trim();
const section = `## pull — cold pull-and-build vs skopeo + umoci + mke2fs; warm resolution

Run: \`node bench/pull.mjs ${N}\` on ${new Date().toISOString().slice(0, 10)}. Machine: ${cpus()[0]?.model} × ${cpus().length}, ${Math.round(totalmem() / 2 ** 30)} GiB,
host kernel ${release()}, ${skopeo}. Registry: Debian's docker-registry on 127.0.0.1 with the
test/fixtures images. Each cold run starts from an empty store; the two sides alternate and
end in the same state (blobs and the ext4 kept, the unpacked tree removed). mm's ext4 also
carries mm-init (its other guest tools live on one shared disk).

| image | pipeline (skopeo copy + umoci unpack + mke2fs -d), median | mm (pull + verify + unpack + ext4), median | ratio mm/pipeline (target ≤ 1.0) |
| --- | --- | --- | --- |
${table}

Warm: resolving an already-pulled image and its built ext4, as \`mm run IMAGE\` does before
booting (20 runs, in-process): median **${warmRow.warm.toFixed(1)} ms** (target ≤ 20 ms).
`;

writeSection("pull", section);
