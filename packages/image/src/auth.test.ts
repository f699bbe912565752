import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import {
  credentialLookup,
  dockerConfigDir,
  getCredentials,
  isLoopbackHost,
  login,
  logout,
  parseWwwAuthenticate,
  RegistryAuth,
} from "./auth.js";

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "mm-auth-"));
  dirs.push(d);
  return d;
}
const b64 = (s: string) => Buffer.from(s).toString("base64");

test("WWW-Authenticate: Docker Hub's Bearer challenge, Basic, several at once, escapes", () => {
  assert.deepEqual(
    parseWwwAuthenticate(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
    ),
    [
      {
        scheme: "bearer",
        params: {
          realm: "https://auth.docker.io/token",
          service: "registry.docker.io",
          scope: "repository:library/busybox:pull",
        },
      },
    ],
  );
  assert.deepEqual(parseWwwAuthenticate('Basic realm="Registry Realm"'), [
    { scheme: "basic", params: { realm: "Registry Realm" } },
  ]);
  assert.deepEqual(
    parseWwwAuthenticate(
      'Bearer realm="https://ghcr.io/token", service = ghcr.io ,scope="a:b:pull,push", Basic realm=x',
    ),
    [
      { scheme: "bearer", params: { realm: "https://ghcr.io/token", service: "ghcr.io", scope: "a:b:pull,push" } },
      { scheme: "basic", params: { realm: "x" } },
    ],
  );
  assert.deepEqual(parseWwwAuthenticate('Bearer realm="a\\"b",Error="insufficient_scope"'), [
    { scheme: "bearer", params: { realm: 'a"b', error: "insufficient_scope" } },
  ]);
  assert.deepEqual(parseWwwAuthenticate(""), []);
  assert.deepEqual(parseWwwAuthenticate("Negotiate"), [{ scheme: "negotiate", params: {} }]);
});

test("parseWwwAuthenticate terminates on any input", () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 200 }), (s) => {
      const out = parseWwwAuthenticate(s);
      assert.ok(Array.isArray(out));
    }),
    { numRuns: 2000 },
  );
});

test("loopback hosts are 127.0.0.0/8, ::1 and localhost, with or without a port", () => {
  for (const h of [
    "localhost",
    "localhost:5000",
    "127.0.0.1",
    "127.0.0.1:5000",
    "127.255.0.9:1",
    "[::1]:5000",
    "[::1]",
    "::1",
  ]) {
    assert.ok(isLoopbackHost(h), h);
  }
  for (const h of [
    "10.0.0.1:5000",
    "128.0.0.1",
    "127.0.0.256",
    "localhost.example.com",
    "example.com",
    "[::2]:5000",
    "0.0.0.0",
  ]) {
    assert.ok(!isLoopbackHost(h), h);
  }
});

test("Docker's config.json: base64 auth, username/password, Docker Hub's legacy key, DOCKER_CONFIG", async () => {
  const docker = tempDir();
  writeFileSync(
    join(docker, "config.json"),
    JSON.stringify({
      auths: {
        "https://index.docker.io/v1/": { auth: b64("hubuser:hub:pass") },
        "ghcr.io": { username: "gh", password: "tok" },
        "http://localhost:5000": { auth: b64("local:pw") },
        "quay.io": { auth: "" },
      },
      credsStore: "desktop",
    }),
  );
  const env = { DOCKER_CONFIG: docker };
  assert.equal(dockerConfigDir(env), docker);
  assert.equal(dockerConfigDir({}, "/home/u"), "/home/u/.docker");
  assert.deepEqual(await getCredentials("docker.io", { env }), { username: "hubuser", password: "hub:pass" });
  assert.deepEqual(await getCredentials("ghcr.io", { env }), { username: "gh", password: "tok" });
  assert.deepEqual(await getCredentials("localhost:5000", { env }), { username: "local", password: "pw" });
  assert.equal(await getCredentials("quay.io", { env }), undefined);
  assert.equal(await getCredentials("example.com", { env }), undefined);
  assert.equal(await getCredentials("docker.io", { env: { DOCKER_CONFIG: join(docker, "none") } }), undefined);
  writeFileSync(join(docker, "config.json"), "{not json");
  await assert.rejects(getCredentials("docker.io", { env }), (e) => isMmError(e, "MM_REGISTRY_AUTH"));
});

test("mm login writes $MM_STATE/auth.json 0600, is consulted before Docker's, and logout forgets", async () => {
  const state = join(tempDir(), "state");
  const docker = tempDir();
  writeFileSync(join(docker, "config.json"), JSON.stringify({ auths: { "ghcr.io": { auth: b64("docker:one") } } }));
  const sources = { stateDir: state, dockerConfigDir: docker };
  assert.deepEqual(await getCredentials("ghcr.io", sources), { username: "docker", password: "one" });

  await login(state, "https://GHCR.io/", { username: "mm", password: "two" });
  await login(state, "index.docker.io", { username: "hub", password: "three" });
  assert.equal(statSync(join(state, "auth.json")).mode & 0o777, 0o600);
  const file = JSON.parse(readFileSync(join(state, "auth.json"), "utf8"));
  assert.deepEqual(Object.keys(file.auths).sort(), ["docker.io", "ghcr.io"]);
  assert.deepEqual(await credentialLookup(sources)("ghcr.io"), { username: "mm", password: "two" });
  assert.deepEqual(await getCredentials("docker.io", sources), { username: "hub", password: "three" });

  await login(state, "ghcr.io", { username: "mm", password: "four" });
  assert.deepEqual(await getCredentials("ghcr.io", sources), { username: "mm", password: "four" });
  assert.equal(await logout(state, "ghcr.io"), true);
  assert.equal(await logout(state, "ghcr.io"), false);
  assert.deepEqual(await getCredentials("ghcr.io", sources), { username: "docker", password: "one" }, "Docker's again");
  assert.equal(statSync(join(state, "auth.json")).mode & 0o777, 0o600);
  await assert.rejects(login(state, "x.io", { username: "a:b", password: "p" }), (e) => isMmError(e, "MM_USAGE"));
});

function fakeAuth(responses: (Response | (() => Response))[], creds = false, now = () => 0) {
  const calls: { url: URL; headers: Readonly<Record<string, string>> }[] = [];
  const auth = new RegistryAuth({
    credentials: async () => (creds ? { username: "u", password: "p" } : undefined),
    request: async (url, headers) => {
      calls.push({ url, headers });
      const r = responses.shift();
      if (!r) throw new Error("no more responses");
      return typeof r === "function" ? r() : r;
    },
    checkRealm: (url) => {
      if (url.protocol !== "https:") throw new Error(`refused ${url}`);
    },
    now,
  });
  return { auth, calls };
}
const bearer = 'Bearer realm="https://auth.example/token",service="reg"';

test("token responses: access_token alone works, expires_in defaults to 60 s, errors are typed", async () => {
  let t = 0;
  const { auth, calls } = fakeAuth(
    [
      Response.json({ access_token: "A1" }),
      Response.json({ token: "T2", expires_in: 3600 }),
      new Response("nope", { status: 401 }),
      Response.json({ nothing: true }),
      new Response("{", { status: 200 }),
      new Response("", { status: 500 }),
    ],
    true,
    () => t,
  );
  assert.equal(await auth.challenged("reg.example", "a/b", bearer, undefined), "Bearer A1");
  assert.equal(calls[0]!.url.searchParams.get("scope"), "repository:a/b:pull");
  assert.equal(calls[0]!.headers.authorization, `Basic ${b64("u:p")}`);
  assert.equal(await auth.authorization("reg.example", "a/b"), "Bearer A1", "cached");
  t = 56_000;
  assert.equal(await auth.authorization("reg.example", "a/b"), "Bearer T2", "refreshed after 60 s − slack");
  assert.equal(calls.length, 2);
  await assert.rejects(auth.challenged("reg.example", "c/d", bearer, undefined), (e) =>
    isMmError(e, "MM_REGISTRY_AUTH"),
  );
  await assert.rejects(auth.challenged("reg.example", "c/d", bearer, undefined), (e) =>
    isMmError(e, "MM_REGISTRY_PROTOCOL"),
  );
  await assert.rejects(auth.challenged("reg.example", "c/d", bearer, undefined), (e) =>
    isMmError(e, "MM_REGISTRY_PROTOCOL"),
  );
  await assert.rejects(auth.challenged("reg.example", "c/d", bearer, undefined), (e) =>
    isMmError(e, "MM_REGISTRY_PROTOCOL"),
  );
});

test("challenges without a realm, with an unknown scheme, or an http realm are refused", async () => {
  const { auth } = fakeAuth([]);
  await assert.rejects(auth.challenged("r", "a", null, undefined), (e) => isMmError(e, "MM_REGISTRY_PROTOCOL"));
  await assert.rejects(auth.challenged("r", "a", "Negotiate", undefined), (e) => isMmError(e, "MM_REGISTRY_PROTOCOL"));
  await assert.rejects(auth.challenged("r", "a", "Bearer service=x", undefined), (e) =>
    isMmError(e, "MM_REGISTRY_PROTOCOL"),
  );
  await assert.rejects(auth.challenged("r", "a", 'Bearer realm="http://evil.example/t"', undefined), /refused/);
  await assert.rejects(auth.challenged("r", "a", 'Basic realm="x"', undefined), (e) =>
    isMmError(e, "MM_REGISTRY_AUTH"),
  );
});

test("concurrent requests share one token fetch", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => {
    release = r;
  });
  const calls: URL[] = [];
  const auth = new RegistryAuth({
    credentials: async () => undefined,
    request: async (url) => {
      calls.push(url);
      await gate;
      return Response.json({ token: "shared" });
    },
    checkRealm: () => {},
  });
  const all = Promise.all([1, 2, 3].map(() => auth.challenged("r", "a/b", bearer, undefined)));
  release();
  assert.deepEqual(await all, ["Bearer shared", "Bearer shared", "Bearer shared"]);
  assert.equal(calls.length, 1);
});

test("a stale header that is refused again is MM_REGISTRY_AUTH (Basic cannot be refreshed)", async () => {
  const { auth } = fakeAuth([], true);
  const h = await auth.challenged("r", "a", 'Basic realm="x"', undefined);
  assert.equal(h, `Basic ${b64("u:p")}`);
  await assert.rejects(auth.challenged("r", "a", 'Basic realm="x"', h), (e) => isMmError(e, "MM_REGISTRY_AUTH"));
});

test("a corrupt own store is reported, a missing one is empty", async () => {
  const state = tempDir();
  assert.equal(await getCredentials("x.io", { stateDir: state, dockerConfigDir: state }), undefined);
  mkdirSync(state, { recursive: true });
  writeFileSync(join(state, "auth.json"), "[]");
  assert.equal(await getCredentials("x.io", { stateDir: state, dockerConfigDir: state }), undefined);
});
