// A machine's log: console and workload output as JSON lines, bounded on disk.
// The guest controls what it writes, so the file rotates once at `maxBytes`
// and keeps at most one previous file: at most 2 × maxBytes per machine.

import { closeSync, existsSync, openSync, readFileSync, readSync, renameSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";

export type LogStream = "stdout" | "stderr" | "console";
const CODE: Record<LogStream, string> = { stdout: "o", stderr: "e", console: "c" };
const STREAM: Record<string, LogStream> = { o: "stdout", e: "stderr", c: "console" };

export const DEFAULT_LOG_MAX_BYTES = 8 * 1024 * 1024;

export interface LogEntry {
  readonly time: number;
  readonly stream: LogStream;
  readonly data: Buffer;
}

export const logFile = (machineDir: string) => join(machineDir, "machine.log");

export class LogWriter {
  private fd: number;
  private size: number;

  constructor(
    private readonly path: string,
    private readonly maxBytes = Number(process.env.MM_LOG_MAX_BYTES) || DEFAULT_LOG_MAX_BYTES,
  ) {
    this.fd = openSync(path, "a", 0o600);
    this.size = statSync(path).size;
  }

  write(stream: LogStream, data: Buffer): void {
    const line = `${JSON.stringify({ t: Date.now(), s: CODE[stream], b: data.toString("base64") })}\n`;
    if (this.size + line.length > this.maxBytes && this.size > 0) this.rotate();
    this.size += writeSync(this.fd, line);
  }

  close(): void {
    closeSync(this.fd);
  }

  private rotate(): void {
    closeSync(this.fd);
    renameSync(this.path, `${this.path}.1`);
    this.fd = openSync(this.path, "a", 0o600);
    this.size = 0;
  }
}

export function parseLogLines(text: string): LogEntry[] {
  const out: LogEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    try {
      const r = JSON.parse(line) as { t: number; s: string; b: string };
      const stream = STREAM[r.s];
      if (stream) out.push({ time: r.t, stream, data: Buffer.from(r.b, "base64") });
    } catch {
      // a torn last line after a crash: skip it
    }
  }
  return out;
}

/** Reads the whole log (previous rotation first). */
export function readLog(path: string): LogEntry[] {
  const parts = [`${path}.1`, path].filter((p) => existsSync(p)).map((p) => readFileSync(p, "utf8"));
  return parseLogLines(parts.join(""));
}

/** A bounded tail of text (for error messages built from console output). */
export class TextTail {
  private text = "";
  constructor(private readonly max = 16384) {}
  push(d: Buffer | string): void {
    this.text = (this.text + d.toString()).slice(-this.max);
  }
  toString(): string {
    return this.text;
  }
}

/**
 * A machine's log as `mm logs` and the API give it: what is there now, then (with
 * `follow`) each batch appended, read from the last offset (a rotation starts it over),
 * until `active()` says the machine has ended — read once more after that, since the
 * supervisor writes output before it records the end.
 */
export async function* tailLog(path: string, follow: boolean, active: () => boolean): AsyncGenerator<LogEntry[]> {
  let offset = statSync(path, { throwIfNoEntry: false })?.size ?? 0;
  yield readLog(path);
  if (!follow) return;
  let partial = "";
  for (;;) {
    const running = active();
    const size = statSync(path, { throwIfNoEntry: false })?.size ?? 0;
    if (size < offset) offset = 0; // rotated
    if (size > offset) {
      const fd = openSync(path, "r");
      const buf = Buffer.alloc(size - offset);
      readSync(fd, buf, 0, buf.length, offset);
      closeSync(fd);
      offset = size;
      const text = partial + buf.toString("utf8");
      const cut = text.lastIndexOf("\n") + 1;
      partial = text.slice(cut);
      yield parseLogLines(text.slice(0, cut));
    }
    if (!running) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}
