// Where a downloaded blob's bytes go: a file that hashes what it holds as it is written, so
// a blob is verified in the same pass that stores it, and a partial file can be resumed.

import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { MmError } from "@mm/core";

/** What RegistryClient.fetchBlob writes into. */
export interface BlobSink {
  /** Bytes held so far: where a resumed download continues. */
  readonly offset: number;
  write(chunk: Uint8Array): Promise<void>;
  /** Drops what is held, for a download that must start over. */
  restart(): Promise<void>;
  /** "sha256:<hex>" of the bytes held so far. */
  digest(): string;
}

export type OpenFile = (path: string, flags: string, mode?: number) => Promise<FileHandle>;

/** Maps a failed write to the product's codes: a full disk must read as one. */
export function mapWriteError(e: unknown, what: string): unknown {
  if (e instanceof MmError) return e;
  const err = e as NodeJS.ErrnoException;
  switch (err?.code) {
    case "ENOSPC":
    case "EDQUOT":
      return new MmError("MM_DISK_FULL", `${what}: ${err.message}`, { cause: e });
    case "EACCES":
    case "EPERM":
    case "EROFS":
      return new MmError("MM_STATE_UNWRITABLE", `${what}: ${err.message}`, { cause: e });
    default:
      return e;
  }
}

export class FileBlobSink implements BlobSink {
  #hash: Hash = createHash("sha256");
  #offset = 0;
  #closed = false;

  protected constructor(
    readonly path: string,
    protected readonly file: FileHandle,
  ) {}

  /**
   * Opens `path` for writing. With `resume`, bytes already in the file are kept (and hashed),
   * up to `maxBytes`; a longer file is emptied since it cannot be a prefix of the blob.
   */
  static async open(
    path: string,
    options: { resume?: boolean; maxBytes?: number; openFile?: OpenFile } = {},
  ): Promise<FileBlobSink> {
    const sink = new FileBlobSink(path, await openForAppend(path, options));
    await sink.adopt(options.resume ?? false, options.maxBytes);
    return sink;
  }

  protected async adopt(resume: boolean, maxBytes = Number.POSITIVE_INFINITY): Promise<void> {
    const { size } = await this.file.stat();
    if (!resume || size > maxBytes) {
      if (size > 0) await this.file.truncate(0);
      return;
    }
    if (size === 0) return;
    for await (const chunk of createReadStream(this.path, { start: 0, end: size - 1 })) {
      this.#hash.update(chunk as Buffer);
    }
    this.#offset = size;
  }

  get offset(): number {
    return this.#offset;
  }

  async write(chunk: Uint8Array): Promise<void> {
    let done = 0;
    try {
      while (done < chunk.byteLength) {
        const { bytesWritten } = await this.file.write(chunk, done, chunk.byteLength - done, this.#offset + done);
        done += bytesWritten;
      }
    } catch (e) {
      throw mapWriteError(e, `writing ${this.path}`);
    }
    this.#hash.update(chunk);
    this.#offset += chunk.byteLength;
  }

  async restart(): Promise<void> {
    await this.file.truncate(0);
    this.#hash = createHash("sha256");
    this.#offset = 0;
  }

  digest(): string {
    return `sha256:${this.#hash.copy().digest("hex")}`;
  }

  async sync(): Promise<void> {
    try {
      await this.file.sync();
    } catch (e) {
      throw mapWriteError(e, `syncing ${this.path}`);
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.file.close();
  }
}

async function openForAppend(path: string, options: { resume?: boolean; openFile?: OpenFile }): Promise<FileHandle> {
  const openFile = options.openFile ?? open;
  try {
    // "r+" keeps what a resumed file holds; a new file is created with "w+".
    return await openFile(path, "r+", 0o644).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return openFile(path, "w+", 0o644);
      throw e;
    });
  } catch (e) {
    throw mapWriteError(e, `opening ${path}`);
  }
}
