// Pulls exact byte counts out of an async chunk source, so format readers (tar,
// zstd frames) take only what they need and the source's pace follows theirs.

import { MmError } from "@mm/core";

const bad = (detail: string) => new MmError("MM_BAD_LAYER", detail);

/** Pulls exact byte counts out of an async chunk source. */
export class ByteReader {
  readonly #it: AsyncIterator<Uint8Array>;
  #buf: Buffer = Buffer.alloc(0);
  #eof = false;
  /** Bytes consumed so far (for error messages). */
  offset = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  /** Ensures n bytes are buffered; false if the source ended first. */
  async #fill(n: number): Promise<boolean> {
    const parts: Buffer[] = [this.#buf];
    let have = this.#buf.length;
    while (have < n && !this.#eof) {
      const r = await this.#it.next();
      if (r.done) {
        this.#eof = true;
        break;
      }
      const chunk = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
      parts.push(chunk);
      have += chunk.length;
    }
    if (parts.length > 1) this.#buf = Buffer.concat(parts, have);
    return have >= n;
  }

  /** Exactly n bytes, or null at a clean end of input (nothing left); truncation is an error. */
  async read(n: number): Promise<Buffer | null> {
    if (!(await this.#fill(n))) {
      if (this.#buf.length === 0) return null;
      throw bad(`truncated archive: needed ${n} bytes at offset ${this.offset}, got ${this.#buf.length}`);
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.offset += n;
    return out;
  }

  /** Yields exactly n bytes in chunks as they arrive. */
  async *stream(n: number): AsyncGenerator<Buffer> {
    let left = n;
    while (left > 0) {
      if (this.#buf.length === 0) {
        if (this.#eof || !(await this.#fill(1))) {
          throw bad(`truncated archive: entry data ends ${left} bytes early at offset ${this.offset}`);
        }
      }
      const take = Math.min(left, this.#buf.length);
      const out = this.#buf.subarray(0, take);
      this.#buf = this.#buf.subarray(take);
      this.offset += take;
      left -= take;
      yield out;
    }
  }

  async skip(n: number): Promise<void> {
    for await (const _ of this.stream(n)) {
      // discard
    }
  }

  /** Releases the source (stops decompression early). */
  async close(): Promise<void> {
    await this.#it.return?.();
  }
}
