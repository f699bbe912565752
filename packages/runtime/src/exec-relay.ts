// The supervisor's exec endpoint: a unix socket (0600) per running machine. Each client
// connection is one exec session; frames use the agent protocol's format, so the relay
// only renumbers streams, checks shapes and credit, and passes bytes through.
//
//   mm exec ──(stream 1)──▶ relay ──(stream N)──▶ mm-init
//           ◀── STDOUT/WINDOW/EXIT ──  ◀──────────

import { chmod, rm } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { decodeU32, encodeExit, encodeFrame, encodeU32, FrameDecoder, FrameType, MmError } from "@mm/core";
import type { AgentSession, GuestExec } from "./agent-session.js";

/** Output credit granted on a client's behalf after it hung up, so the process can finish. */
const DRAIN_GRANT = 1 << 30;
const CLIENT_STREAM = 1;

export async function serveExecRelay(
  path: string,
  session: () => AgentSession | null,
  /** Told when a client connects and when it goes (a sandbox's idle timer counts the gaps). */
  activity?: { readonly opened: () => void; readonly closed: () => void },
): Promise<Server> {
  await rm(path, { force: true });
  const server = createServer((socket) => {
    activity?.opened();
    socket.once("close", () => activity?.closed());
    relay(socket, session());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  await chmod(path, 0o600);
  return server;
}

function relay(client: Socket, session: AgentSession | null): void {
  const decoder = new FrameDecoder();
  let exec: GuestExec | null = null;
  let done = false;
  const send = (type: number, payload?: Buffer) => {
    if (!client.destroyed) client.write(encodeFrame(type, payload, CLIENT_STREAM));
  };
  const fail = (code: string, message: string, status: number) => {
    send(FrameType.ERROR, Buffer.from(`${code}: ${message}`.slice(0, 1024)));
    send(FrameType.EXIT, encodeExit({ status, signal: 0 }));
    done = true;
    client.end();
  };

  client.on("data", (d: Buffer) => {
    try {
      for (const f of decoder.push(d)) {
        if (f.stream !== CLIENT_STREAM) throw new MmError("MM_AGENT_PROTOCOL", `client used stream ${f.stream}`);
        if (!exec) {
          if (f.type !== FrameType.EXEC) throw new MmError("MM_AGENT_PROTOCOL", "the first frame must be EXEC");
          if (!session || session.isClosed) return fail("NOT_RUNNING", "the machine is not running", 125);
          exec = session.openExecRaw(f.payload);
          wire(exec);
          continue;
        }
        switch (f.type) {
          case FrameType.STDIN:
            if (f.payload.length === 0) exec.endInput();
            else if (f.payload.length > exec.stdinCredit)
              throw new MmError("MM_AGENT_PROTOCOL", "stdin beyond its window");
            else exec.write(f.payload);
            break;
          case FrameType.RESIZE:
            if (f.payload.length !== 4) throw new MmError("MM_AGENT_PROTOCOL", "RESIZE must be 4 bytes");
            exec.resize(f.payload.readUInt16BE(0), f.payload.readUInt16BE(2));
            break;
          case FrameType.SIGNAL:
            exec.signal(decodeU32(f.payload, "SIGNAL"));
            break;
          case FrameType.WINDOW:
            exec.grant(decodeU32(f.payload, "WINDOW"));
            break;
          default:
            throw new MmError("MM_AGENT_PROTOCOL", `frame type ${f.type} from an exec client`);
        }
      }
    } catch (e) {
      const err = e instanceof MmError ? e : new MmError("MM_INTERNAL", String(e));
      if (!exec) return fail(err.code === "MM_USAGE" ? "EXEC" : "PROTOCOL", err.message, 126);
      client.destroy();
    }
  });

  client.on("close", () => {
    if (exec && !done) {
      // A hung-up client is a hung-up terminal: SIGHUP, and let the output drain away.
      exec.signal(1);
      exec.grant(DRAIN_GRANT);
    }
  });
  client.on("error", () => undefined);

  function wire(e: GuestExec): void {
    e.on("ready", ({ pid }) => send(FrameType.READY, encodeU32(pid)));
    e.on("stdout", (d) => send(FrameType.STDOUT, d));
    e.on("stderr", (d) => send(FrameType.STDERR, d));
    e.on("window", (n) => send(FrameType.WINDOW, encodeU32(n)));
    e.on("guestError", (g) => send(FrameType.ERROR, Buffer.from(`${g.code}: ${g.message}`.slice(0, 1024))));
    e.on("exit", (st) => {
      done = true;
      send(FrameType.EXIT, encodeExit(st));
      client.end();
    });
    e.on("lost", () => fail("LOST", "the machine stopped", 137));
  }
}
