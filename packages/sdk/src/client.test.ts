import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { defaultHost, MmApiError, MmClient } from "./client.js";

// A stand-in server on a unix socket: what the client sends, and answers in the API's shape.
const dir = mkdtempSync(join(tmpdir(), "mm-sdk-"));
const socket = join(dir, "api.sock");
const seen: { method?: string; url?: string; auth?: string; type?: string; body: string }[] = [];
const server = createServer((req, res) => {
  let body = "";
  req.on("data", (d) => {
    body += d;
  });
  req.on("end", () => {
    seen.push({
      method: req.method,
      url: req.url,
      auth: req.headers.authorization,
      type: req.headers["content-type"],
      body,
    });
    if (req.url?.startsWith("/v1/missing")) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(
        JSON.stringify({ error: { code: "MM_NO_SUCH_MACHINE", message: "no such machine: x", hint: "mm ps -a" } }),
      );
    } else if (req.url?.startsWith("/v1/broken")) {
      res.writeHead(502);
      res.end("bad gateway");
    } else if (req.url?.startsWith("/v1/lines")) {
      res.writeHead(200, { "content-type": "application/x-ndjson" });
      res.end('{"n":1}\n{"n":2}\n');
    } else {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ ok: true }));
    }
  });
});
await new Promise<void>((r) => server.listen(socket, r));
after(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

test("JSON over the unix socket: method, path, query, body; the token is sent when given", async () => {
  const c = new MmClient({ host: `unix://${socket}`, token: "t0k" });
  assert.deepEqual(await c.json("POST", "/v1/x", { body: { a: 1 }, query: { force: "true" } }), { ok: true });
  const last = seen.at(-1);
  assert.deepEqual(
    [last?.method, last?.url, last?.auth, last?.type, last?.body],
    ["POST", "/v1/x?force=true", "Bearer t0k", "application/json", '{"a":1}'],
  );
  await c.close();
});

test("errors carry the API's code, message, hint and status; other failures keep their status", async () => {
  const c = new MmClient({ host: `unix://${socket}` });
  await assert.rejects(c.json("GET", "/v1/missing"), (e) => {
    assert.ok(e instanceof MmApiError);
    assert.deepEqual([e.code, e.status, e.hint], ["MM_NO_SUCH_MACHINE", 404, "mm ps -a"]);
    return true;
  });
  await assert.rejects(c.json("GET", "/v1/broken"), (e) => e instanceof MmApiError && e.status === 502);
  await c.close();
});

test("JSON lines stream as an async iterator", async () => {
  const c = new MmClient({ host: `unix://${socket}` });
  const got: unknown[] = [];
  for await (const l of c.lines("/v1/lines")) got.push(l);
  assert.deepEqual(got, [{ n: 1 }, { n: 2 }]);
  await c.close();
});

test("the default host: MM_HOST, else root's or the user's socket; other schemes are refused", () => {
  assert.equal(defaultHost({ MM_HOST: "http://h:1" }), "http://h:1");
  assert.match(defaultHost({ HOME: "/home/u" }), /^unix:\/\/.*api\.sock$/);
  assert.throws(() => new MmClient({ host: "ftp://x" }), TypeError);
});
