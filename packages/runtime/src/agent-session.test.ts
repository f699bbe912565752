// The host end of the channel against a hostile guest: well-formed conversations work,
// and random or oversized bytes from the guest close that channel and nothing else.

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import {
  encodeExit,
  encodeFrame,
  encodeHello,
  encodeU32,
  FrameDecoder,
  FrameType,
  INITIAL_WINDOW,
  MAX_PAYLOAD,
} from "@mm/core";
import fc from "fast-check";
import { AgentSession, type RestoredChannel } from "./agent-session.js";

const dir = mkdtempSync(join(tmpdir(), "mm-agent-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

/** A connected pair: the host's AgentSession and the raw socket a fake guest writes to. */
async function pair(restored?: RestoredChannel): Promise<{ session: AgentSession; guest: Socket }> {
  const path = join(dir, `s${n++}.sock`);
  const server = createServer();
  await new Promise<void>((r) => server.listen(path, r));
  const accepted = new Promise<Socket>((r) => server.once("connection", r));
  const guest = connect(path);
  const host = await accepted;
  server.close();
  return { session: new AgentSession(host, restored), guest };
}

const hello = (max = 2) => encodeFrame(FrameType.HELLO, encodeHello({ minVersion: 1, maxVersion: max, agent: "fake" }));

test("HELLO negotiates the highest common version", async () => {
  for (const [max, want] of [
    [1, 1],
    [2, 2],
    [3, 3],
    [4, 4],
    [5, 5],
    [9, 5],
  ] as const) {
    const { session, guest } = await pair();
    const got = new Promise<number>((r) => session.once("hello", () => r(session.version)));
    guest.write(hello(max));
    assert.equal(await got, want);
    guest.destroy();
  }
});

test("an exec session's output beyond its window ends the channel", async () => {
  const { session, guest } = await pair();
  await new Promise<void>((r) => {
    session.once("hello", () => r());
    guest.write(hello());
  });
  session.sendConfig({ args: ["sleep", "1"], env: [] });
  const exec = session.openExec({ args: ["cat"], env: [] });
  const err = new Promise<string>((r) => session.once("protocolError", (e) => r(e.code)));
  const big = Buffer.alloc(MAX_PAYLOAD);
  for (let sent = 0; sent <= INITIAL_WINDOW; sent += big.length)
    guest.write(encodeFrame(FrameType.STDOUT, big, exec.stream));
  assert.equal(await err, "MM_AGENT_PROTOCOL");
  guest.destroy();
});

test("within the window, output, WINDOW and EXIT flow to the session", async () => {
  const { session, guest } = await pair();
  await new Promise<void>((r) => {
    session.once("hello", () => r());
    guest.write(hello());
  });
  session.sendConfig({ args: ["sleep", "1"], env: [] });
  const exec = session.openExec({ args: ["cat"], env: [], stdin: true });
  const seen: string[] = [];
  exec.on("stdout", (d) => seen.push(`out:${d}`));
  exec.on("window", (w) => seen.push(`window:${w}`));
  const exit = new Promise<number>((r) => exec.on("exit", (s) => r(s.status)));
  guest.write(encodeFrame(FrameType.STDOUT, Buffer.from("hi"), exec.stream));
  guest.write(encodeFrame(FrameType.WINDOW, encodeU32(10), exec.stream));
  guest.write(encodeFrame(FrameType.EXIT, encodeExit({ status: 3, signal: 0 }), exec.stream));
  assert.equal(await exit, 3);
  assert.deepEqual(seen, ["out:hi", "window:10"]);
  assert.equal(exec.stdinCredit, INITIAL_WINDOW + 10);
  guest.destroy();
});

test("fuzz: random bytes after HELLO never throw on the host; the channel closes or carries on", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 8 }),
      fc.boolean(),
      async (chunks, oversized) => {
        const { session, guest } = await pair();
        const errors: unknown[] = [];
        session.on("protocolError", () => undefined);
        session.on("hello", () => {
          try {
            session.sendConfig({ args: ["x"], env: [] });
          } catch (e) {
            errors.push(e);
          }
        });
        guest.on("error", () => undefined);
        guest.write(hello());
        for (const c of chunks) guest.write(c);
        if (oversized) {
          const h = Buffer.alloc(4);
          h.writeUInt32BE(5 + MAX_PAYLOAD + 1);
          guest.write(h);
        }
        await new Promise((r) => setTimeout(r, 5));
        if (oversized) {
          // The oversized header ends the channel unless the random bytes before it left a
          // frame unfinished (then it is that frame's payload and the channel carries on):
          // wait for the close a moment, never forever.
          await new Promise<void>((r) => {
            if (session.isClosed) return r();
            const t = setTimeout(r, 200);
            session.once("close", () => {
              clearTimeout(t);
              r();
            });
          });
        }
        guest.destroy();
        assert.deepEqual(errors, []);
      },
    ),
    { numRuns: 60 },
  );
});

/** Frames the fake guest receives, in order. */
function received(guest: Socket): { type: number; stream: number }[] {
  const decoder = new FrameDecoder();
  const got: { type: number; stream: number }[] = [];
  guest.on("data", (d: Buffer) => {
    for (const f of decoder.push(d)) got.push({ type: f.type, stream: f.stream });
  });
  return got;
}
const tick = () => new Promise((r) => setTimeout(r, 20));

test("quiesce (v3): host frames wait until RESUME; a guest frame after QUIESCED ends the channel", async () => {
  const { session, guest } = await pair();
  const got = received(guest);
  await new Promise<void>((r) => {
    session.once("hello", () => r());
    guest.write(hello(3));
  });
  session.sendConfig({ args: ["sleep", "1"], env: [] });
  const quiesced = session.quiesce();
  session.signal(15); // held: the guest must see nothing after QUIESCE
  await tick();
  assert.deepEqual(
    got.map((f) => f.type),
    [FrameType.CONFIG, FrameType.QUIESCE],
  );
  guest.write(encodeFrame(FrameType.QUIESCED));
  await quiesced;
  session.unquiesce();
  await tick();
  assert.deepEqual(
    got.map((f) => f.type),
    [FrameType.CONFIG, FrameType.QUIESCE, FrameType.RESUME, FrameType.SIGNAL],
  );
  // Quiesced again: now the guest breaks its promise of silence.
  const again = session.quiesce();
  guest.write(encodeFrame(FrameType.QUIESCED));
  await again;
  const err = new Promise<string>((r) => session.once("protocolError", (e) => r(e.message)));
  guest.write(encodeFrame(FrameType.STDOUT, Buffer.from("x")));
  assert.match(await err, /quiesced guest/);
  guest.destroy();
});

test("identity (v3) resolves with the guest's IDENTITY_RESULT; a v2 guest cannot be quiesced", async () => {
  // A restored guest: it said HELLO to the host its snapshot was taken on.
  const { session, guest } = await pair({ version: 3, phase: "started" });
  const got = received(guest);
  const result = session.identity({ hostname: "clone", fresh: { mac: "52:54:00:00:00:02" } });
  await tick();
  assert.deepEqual(got.at(-1), { type: FrameType.IDENTITY, stream: 0 });
  guest.write(encodeFrame(FrameType.IDENTITY_RESULT, Buffer.from("NET: no eth0")));
  assert.equal(await result, "NET: no eth0");
  guest.destroy();

  const v2 = await pair();
  await new Promise<void>((r) => {
    v2.session.once("hello", () => r());
    v2.guest.write(hello(2));
  });
  await assert.rejects(v2.session.quiesce(), (e: Error & { code?: string }) => e.code === "MM_AGENT_PROTOCOL");
  v2.guest.destroy();
});
