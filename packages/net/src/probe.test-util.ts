// A tiny TCP/UDP peer for the network tests, run inside a namespace with `ip netns exec`:
//   serve tcp:80 udp:53 ...           answers each connection or datagram with the sender's address
//   connect tcp|udp HOST PORT [MS] [SRC]  prints that answer, or "error: CODE" and exits 1

import { createSocket } from "node:dgram";
import { connect, createServer } from "node:net";

const [mode, ...args] = process.argv.slice(2);

function fail(code: string): never {
  process.stdout.write(`error: ${code}\n`);
  process.exit(1);
}

if (mode === "serve") {
  let pending = args.length;
  const ready = () => {
    if (--pending === 0) process.stdout.write("ready\n");
  };
  for (const spec of args) {
    const [proto, port] = spec.split(":");
    if (proto === "udp") {
      const s = createSocket("udp4");
      s.on("message", (_msg, from) => s.send(`${from.address}\n`, from.port, from.address));
      s.bind(Number(port), ready);
    } else {
      createServer((c) => {
        c.on("error", () => {});
        c.end(`${c.remoteAddress}\n`);
      }).listen(Number(port), "0.0.0.0", ready);
    }
  }
} else if (mode === "connect") {
  const [proto, host = "", port = "0", ms = "1500", source] = args;
  setTimeout(() => fail("ETIMEDOUT"), Number(ms)).unref();
  const done = (text: string) => {
    process.stdout.write(text.endsWith("\n") ? text : `${text}\n`);
    process.exit(0);
  };
  if (proto === "udp") {
    const s = createSocket("udp4");
    s.on("error", (e: NodeJS.ErrnoException) => fail(e.code ?? "EUDP"));
    s.on("message", (msg) => done(msg.toString()));
    s.bind({ port: 0, ...(source ? { address: source } : {}) }, () => s.send("?", Number(port), host));
    setTimeout(() => {}, Number(ms)); // keep the loop alive while waiting for the answer
  } else {
    let text = "";
    const c = connect({ host, port: Number(port), ...(source ? { localAddress: source } : {}) });
    c.on("data", (b) => {
      text += b.toString();
    });
    c.on("end", () => done(text));
    c.on("error", (e: NodeJS.ErrnoException) => fail(e.code ?? "ECONN"));
  }
} else {
  process.stderr.write("usage: probe serve tcp:PORT|udp:PORT ... | probe connect tcp|udp HOST PORT [MS] [SRC]\n");
  process.exit(2);
}
