// Registry images end to end: real docker-registry processes on 127.0.0.1 (plain and
// token-authenticated) holding images built from Debian packages (test/fixtures),
// pulled by mm, unpacked into per-image ext4s and booted in real guests.

import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, describe, test } from "node:test";
import { CLI, harness, startServer, until } from "./test-helpers.js";

type Expect = {
  path: string;
  type: "file" | "dir" | "symlink" | "absent";
  content?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  target?: string;
  sameFileAs?: string;
};
type Fixture = {
  ref: string;
  digest: string;
  expect: Expect[];
  commands: { argv: string[]; stdout: string }[];
  manifests?: { digest: string; platform: { architecture: string } }[];
  layout: string;
  ociRef: string;
  authRef?: string;
  layers: { digest: string }[];
};

const fixtures = resolve(import.meta.dirname, "../../../test/fixtures");
// The registries listen on the host's loopback, so this suite runs mm there, without networking.
const h = harness("mm-cli-", { netns: false });
const work = mkdtempSync(join(tmpdir(), "mm-images-"));
let regs: { plain: string; auth: string; user: string; password: string; stop(): Promise<void> };
let images: Record<string, Fixture>;
let insecure: string[];

before(async () => {
  const { startRegistries } = await import(join(fixtures, "registry.mjs"));
  const { buildFixtureImages, pushFixtureImages } = await import(join(fixtures, "images.mjs"));
  regs = await startRegistries({ dir: work });
  images = (await pushFixtureImages(regs, await buildFixtureImages({ log: () => undefined }))).images;
  insecure = ["--insecure-registry", regs.plain, "--insecure-registry", regs.auth];
});
after(async () => {
  await h.cleanup();
  await regs?.stop();
  rmSync(work, { recursive: true, force: true });
});

const fx = (name: string) => images[name] as Fixture;

/** One guest checks every expected path and prints what it found, one block per path. */
function checkScript(expect: Expect[]): string {
  const fn =
    'c(){ echo "@@$1"; if [ -e "$2" ] || [ -L "$2" ]; then stat -c "%F|%a|%u|%g|%i" "$2"; ' +
    '[ -L "$2" ] && readlink "$2"; [ -f "$2" ] && ! [ -L "$2" ] && base64 "$2" | tr -d "\\n"; echo; ' +
    '[ -n "$3" ] && stat -c "same:%i" "$3"; else echo MISSING; fi; }';
  return [fn, ...expect.map((e, i) => `c ${i} '${e.path}' '${e.sameFileAs ?? ""}'`), "true"].join("\n");
}

function verify(expect: Expect[], out: string): void {
  const blocks = out.split(/^@@/m).slice(1);
  assert.equal(blocks.length, expect.length, out);
  for (const [i, e] of expect.entries()) {
    const lines = (blocks[i] as string).split("\n").slice(1);
    const where = `${e.path}: ${lines.join(" / ")}`;
    if (e.type === "absent") {
      assert.equal(lines[0], "MISSING", where);
      continue;
    }
    const [kind, mode, uid, gid, ino] = (lines[0] ?? "").split("|");
    const kinds = { file: "regular file", dir: "directory", symlink: "symbolic link" } as const;
    assert.equal(kind?.replace("regular empty file", "regular file"), kinds[e.type], where);
    if (e.mode !== undefined) assert.equal(mode, (e.mode & 0o7777).toString(8), where);
    if (e.uid !== undefined) assert.equal(Number(uid), e.uid, where);
    if (e.gid !== undefined) assert.equal(Number(gid), e.gid, where);
    if (e.type === "symlink") assert.equal(lines[1], e.target, where);
    if (e.content !== undefined) assert.equal(Buffer.from(lines[1] ?? "", "base64").toString(), e.content, where);
    if (e.sameFileAs) assert.ok(lines.includes(`same:${ino}`), `${where}: not a hardlink of ${e.sameFileAs}`);
  }
}

/**
 * Checks an image's files and commands from a cold boot, from the run that makes the
 * image's template, and from the template: all three must see the same.
 */
async function checkImage(name: string) {
  const f = fx(name);
  // /dev is the guest kernel's devtmpfs at run time, as in a container: not the image's.
  const expect = f.expect.filter((e) => !e.path.startsWith("/dev/"));
  for (const mode of [["--cold"], [], []]) {
    const r = await h.mm([
      "run",
      "--rm",
      ...mode,
      ...insecure,
      "--entrypoint",
      "sh",
      f.ref,
      "--",
      "-c",
      checkScript(expect),
    ]);
    assert.equal(r.code, 0, r.stderr);
    verify(expect, r.stdout);
  }
  for (const c of f.commands) {
    for (const mode of [["--cold"], []]) {
      const out = await h.mm([
        "run",
        "--rm",
        ...mode,
        ...insecure,
        "--entrypoint",
        c.argv[0] as string,
        f.ref,
        "--",
        ...c.argv.slice(1),
      ]);
      assert.equal(out.stdout, c.stdout, `${mode.join("")} ${c.argv.join(" ")}: ${out.stderr}`);
    }
  }
  const templates = JSON.parse((await h.mm(["template", "ls", "--json"])).stdout) as { image: string }[];
  // Templates are keyed by content: the same image from the other fixture registry shares one.
  const repo = (ref: string) => ref.replace(/^[^/]+\//, "");
  assert.ok(
    templates.some((t) => repo(t.image) === repo(f.ref)),
    `a template of ${f.ref} among ${templates.map((t) => t.image)}`,
  );
}

describe("pull", () => {
  test("pulls by tag, verified, and lists the image", async () => {
    const r = await h.mm(["pull", "-q", ...insecure, fx("busybox").ref]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`@${fx("busybox").digest}\\n$`));
    const list = JSON.parse((await h.mm(["images", "--json"])).stdout) as { reference: string; digest: string }[];
    assert.ok(list.some((i) => i.digest === fx("busybox").digest));
  });

  test("--json prints progress events as JSON lines", async () => {
    const r = await h.mm(["pull", "--json", ...insecure, fx("web").ref]);
    assert.equal(r.code, 0, r.stderr);
    const events = r.stderr
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { type: string });
    assert.ok(events.some((e) => e.type === "resolved") && events.some((e) => e.type === "layer-done"));
  });

  test("a multi-platform index gives this host's variant; --platform picks another", async () => {
    const multi = fx("multi");
    const amd = multi.manifests?.find((m) => m.platform.architecture === "amd64");
    const arm = multi.manifests?.find((m) => m.platform.architecture === "arm64");
    const r = await h.mm(["pull", "-q", ...insecure, multi.ref]);
    assert.match(r.stdout, new RegExp(`@${amd?.digest}\\n$`), r.stderr);
    const a = await h.mm(["pull", "-q", "--platform", "linux/arm64", ...insecure, multi.ref]);
    assert.match(a.stdout, new RegExp(`@${arm?.digest}\\n$`), a.stderr);
  });

  test("on a terminal, pull draws one progress bar per layer", async () => {
    // util-linux `script` gives mm a pseudo-terminal, as a user's shell would.
    const state = join(work, "tty-state");
    const cmd = `MM_STATE=${state} ${process.execPath} ${CLI} pull ${insecure.join(" ")} ${fx("layers").ref}`;
    const r = await h.mm([], {}, undefined, ["script", "-qec", cmd, "/dev/null"]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const layerBars = fx("layers").layers.filter((l) => r.stdout.includes(l.digest.slice(7, 19)));
    assert.equal(layerBars.length, fx("layers").layers.length, r.stdout);
    assert.match(r.stdout, /█/);
  });

  test("a disk filling up mid-pull is MM_DISK_FULL, and the store stays usable", async () => {
    const small = join(work, "small");
    mkdirSync(small);
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=6m", "tmpfs", small]);
    try {
      const r = await h.mm(["pull", "-q", ...insecure, fx("python").ref], { MM_STATE: small });
      assert.equal(r.code, 125);
      assert.match(r.stderr, /MM_DISK_FULL/);
      const list = await h.mm(["images", "--json"], { MM_STATE: small });
      assert.equal(list.code, 0, list.stderr);
      assert.deepEqual(JSON.parse(list.stdout), []);
      const ok = await h.mm(["pull", "-q", ...insecure, fx("busybox").ref], { MM_STATE: small });
      assert.equal(ok.code, 0, `a small image still fits after the failed pull: ${ok.stderr}`);
    } finally {
      execFileSync("umount", [small]);
    }
  });

  test("an index without this platform is MM_NO_MATCHING_PLATFORM", async () => {
    const r = await h.mm(["pull", "-q", ...insecure, fx("armonly").ref]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_NO_MATCHING_PLATFORM/);
    assert.match(r.stderr, /arm64/);
  });

  test("an unknown repository is MM_IMAGE_NOT_FOUND", async () => {
    const r = await h.mm(["pull", "-q", ...insecure, `${regs.plain}/nothing/here:latest`]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_IMAGE_NOT_FOUND/);
  });

  test("plain HTTP is refused without --insecure-registry", async () => {
    const r = await h.mm(["pull", "-q", fx("busybox").ref]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_(INSECURE_REGISTRY|REGISTRY_UNAVAILABLE)/);
    assert.match(r.stderr, /insecure-registry/);
  });
});

describe("token-authenticated registry", () => {
  const authRef = () => fx("busybox").authRef as string;

  test("anonymous pull is MM_REGISTRY_AUTH", async () => {
    const r = await h.mm(["pull", "-q", ...insecure, authRef()]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_REGISTRY_AUTH/);
  });

  test("a wrong password is refused at login and nothing is stored", async () => {
    const r = await h.mm(["login", "-u", regs.user, "--password-stdin", ...insecure, regs.auth], {}, "wrong\n");
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_REGISTRY_AUTH/);
    assert.match((await h.mm(["pull", "-q", ...insecure, authRef()])).stderr, /MM_REGISTRY_AUTH/);
  });

  test("login (bearer token flow) then pull and run", async () => {
    const login = await h.mm(
      ["login", "-u", regs.user, "--password-stdin", ...insecure, regs.auth],
      {},
      `${regs.password}\n`,
    );
    assert.equal(login.code, 0, login.stderr);
    assert.match(login.stdout, /Login Succeeded/);
    const r = await h.mm(["run", "--rm", ...insecure, authRef(), "--", "cat", "/etc/mm-fixture"]);
    assert.equal(r.stdout, "busybox\n", r.stderr);
    assert.equal((await h.mm(["logout", regs.auth])).code, 0);
  });
});

describe("booting pulled images", () => {
  test("busybox: files, owners, modes and users as built", () => checkImage("busybox"));
  test("layers: whiteouts, opaque dirs, hardlinks, setuid and ownership across 4 layers", () => checkImage("layers"));
  test("python (Debian rootfs, zstd layer) runs python3", () => checkImage("python"));

  test("web: Entrypoint, User, WorkingDir, Env and ExposedPorts honoured; StopSignal used by stop", async () => {
    const web = fx("web");
    await checkImage("web");
    const who = await h.mm(["run", "--rm", ...insecure, "--entrypoint", "sh", web.ref, "--", "-c", "id -un; pwd"]);
    assert.equal(who.stdout, "app\n/www\n", who.stderr);
    const d = await h.mm(["run", "-d", "--name", "web1", ...insecure, web.ref]);
    assert.equal(d.code, 0, d.stderr);
    assert.match((await h.mm(["ps"])).stdout, /8080\/tcp\s+\S+\s+web1$/m);
    const ps = await h.mm(["run", "--rm", "--name", "probe", "--", "true"]);
    assert.equal(ps.code, 0);
    assert.equal((await h.mm(["stop", "web1"])).code, 0);
    const rec = JSON.parse((await h.mm(["inspect", "web1"])).stdout)[0] as { exitCode: number };
    assert.equal(rec.exitCode, 130, "httpd ended by SIGINT, the image's StopSignal");
  });
});

describe("image housekeeping", () => {
  test("rmi refuses an image a machine uses; rm then rmi then prune frees its blobs", async () => {
    const web = fx("web");
    const r = await h.mm(["rmi", web.ref]);
    assert.equal(r.code, 125);
    assert.match(r.stderr, /MM_IMAGE_IN_USE/);
    assert.equal((await h.mm(["rm", "web1"])).code, 0);
    assert.equal((await h.mm(["rmi", web.ref])).code, 0);
    const p = JSON.parse((await h.mm(["image", "prune", "--json"])).stdout) as { freedBytes: number; removed: number };
    assert.ok(p.removed > 0 && p.freedBytes > 0, JSON.stringify(p));
    const again = await h.mm(["run", "--rm", "--pull", "never", web.ref, "--", "true"]);
    assert.match(again.stderr, /MM_NO_SUCH_IMAGE/);
  });

  test("import a `docker save` archive (written by skopeo) and run it", async () => {
    const archive = join(work, "saved.tar");
    await new Promise<void>((res, rej) =>
      execFile("skopeo", ["copy", "--quiet", fx("web").ociRef, `docker-archive:${archive}:saved/web:1`], (e) =>
        e ? rej(e) : res(),
      ),
    );
    const r = await h.mm(["image", "import", archive]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /saved\/web:1@sha256:/);
    const run = await h.mm([
      "run",
      "--rm",
      "--pull",
      "never",
      "--entrypoint",
      "sh",
      "saved/web:1",
      "--",
      "-c",
      'echo "$MM_FIXTURE $(id -un) $(pwd)"',
    ]);
    assert.equal(run.stdout, "web app /www\n", `the image config survived the archive: ${run.stderr}`);
  });

  test("import an OCI layout directory and run it without a registry", async () => {
    const r = await h.mm(["image", "import", fx("busybox").layout, "local/imported:1"]);
    assert.equal(r.code, 0, r.stderr);
    const run = await h.mm(["run", "--rm", "--pull", "never", "local/imported:1", "--", "cat", "/etc/mm-fixture"]);
    assert.equal(run.stdout, "busybox\n", run.stderr);
  });
});

describe("image commands through the API (mm --host)", () => {
  test("login, logout, pull, images, import, template create, rmi and prune, served by mm serve", async () => {
    const sock = join(work, "api.sock");
    const authRef = () => fx("busybox").authRef as string;
    const server = (await startServer(h, ["--socket", sock], false)).child;
    const remote = (args: string[], input?: string) => h.mm(["--host", `unix://${sock}`, ...args], {}, input);
    try {
      const wrong = await remote(["login", "-u", regs.user, "--password-stdin", ...insecure, regs.auth], "wrong\n");
      assert.equal(wrong.code, 125);
      assert.match(wrong.stderr, /MM_REGISTRY_AUTH/);
      const login = await remote(
        ["login", "-u", regs.user, "--password-stdin", ...insecure, regs.auth],
        `${regs.password}\n`,
      );
      assert.equal(login.code, 0, login.stderr);
      // The server keeps the credentials: its pulls of the private image work.
      const pulled = await remote(["pull", ...insecure, authRef()]);
      assert.equal(pulled.code, 0, pulled.stderr);
      assert.ok((await remote(["images", "-q"])).stdout.split("\n").includes(authRef()), "the pulled image is listed");
      assert.equal((await remote(["logout", regs.auth])).stdout, `Removed login credentials for ${regs.auth}\n`);
      assert.equal((await remote(["logout", regs.auth])).stdout, `Not logged in to ${regs.auth}\n`);

      // An archive sent to the server; a directory is refused with a hint.
      const archive = join(work, "remote-saved.tar");
      execFileSync("skopeo", ["copy", "--quiet", fx("busybox").ociRef, `docker-archive:${archive}:remote/saved:1`]);
      const imported = await remote(["image", "import", archive]);
      assert.equal(imported.code, 0, imported.stderr);
      assert.match(imported.stdout, /^docker\.io\/remote\/saved:1@sha256:/);
      const dir = await remote(["image", "import", fx("busybox").layout]);
      assert.equal(dir.code, 125);
      assert.match(dir.stderr, /MM_USAGE.*directory/s);

      const made = await remote(["template", "create", "--network", "none", "--json", "remote/saved:1"]);
      assert.equal(made.code, 0, made.stderr);
      const t = JSON.parse(made.stdout) as { id: string; existed: boolean };
      assert.equal(t.existed, false);
      const again = JSON.parse(
        (await remote(["template", "create", "--network", "none", "--json", "remote/saved:1"])).stdout,
      );
      assert.deepEqual([again.id, again.existed], [t.id, true]);
      assert.match((await remote(["template", "ls"])).stdout, new RegExp(`^${t.id.slice(0, 12)}\\t`, "m"));

      // rmi takes the image's templates along; prune frees its blobs.
      assert.match((await remote(["rmi", "remote/saved:1"])).stdout, /^Untagged: docker\.io\/remote\/saved:1\n$/);
      assert.doesNotMatch((await remote(["template", "ls"])).stdout, new RegExp(t.id.slice(0, 12)));
      const missing = await remote(["rmi", "remote/saved:1"]);
      assert.match(missing.stderr, /MM_NO_SUCH_IMAGE/);
      const prune = JSON.parse((await remote(["image", "prune", "--json"])).stdout) as { removed: number };
      assert.ok(prune.removed > 0, JSON.stringify(prune));
    } finally {
      server.kill("SIGTERM");
    }
  });
});

describe("a sandbox pool of a registry image", () => {
  test("mm serve --pool 1 --pool-image IMAGE: a create of that image claims the booted one; another image does not", async () => {
    const sock = join(work, "api-pool.sock");
    const ref = fx("busybox").ref;
    const server = (await startServer(h, ["--socket", sock, "--pool", "1", "--pool-image", ref, ...insecure], false))
      .child;
    const remote = (args: string[]) => h.mm(["--host", `unix://${sock}`, ...args]);
    type M = { id: string; state: string; sandbox: { timeoutMs: number } | null };
    const pooled = async () =>
      (JSON.parse((await remote(["ps", "-a", "--json"])).stdout) as M[]).filter(
        (m) => m.state === "running" && m.sandbox?.timeoutMs === 3_600_000,
      );
    try {
      const [first] = await until(
        async () => ((await pooled()).length === 1 ? pooled() : undefined),
        90_000,
        "the pool",
      );
      const other = await remote(["sandbox", "create", "--allow-tcg"]);
      assert.equal(other.code, 0, other.stderr);
      assert.notEqual(other.stdout.trim(), first?.id, "the default image is not the pool's");
      const claimed = await remote(["sandbox", "create", "--allow-tcg", ...insecure, ref]);
      assert.equal(claimed.code, 0, claimed.stderr);
      assert.equal(claimed.stdout.trim(), first?.id, "a create of the pool's image claims the booted one");
      const fixture = await remote(["exec", claimed.stdout.trim(), "--", "cat", "/etc/mm-fixture"]);
      assert.equal(fixture.stdout, "busybox\n", fixture.stderr);
      assert.equal((await remote(["sandbox", "rm", other.stdout.trim(), claimed.stdout.trim()])).code, 0);
    } finally {
      server.kill("SIGTERM");
      await new Promise((r) => server.once("exit", r));
    }
  });
});
