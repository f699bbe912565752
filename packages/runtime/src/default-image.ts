// The embedded default image: Debian's static busybox plus mm-init, assembled
// locally into a read-only ext4 (mke2fs -d: no mount, no loop device), built once
// per content hash and shared by every machine that uses it.

import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { type ImageRunConfig, MmError } from "@mm/core";
import { mke2fsAsRoot, runTool } from "./exec-tool.js";
import { mapFsError } from "./fs-errors.js";
import type { Paths } from "./paths.js";

/** Bump when the layout written below changes, so old bases are not reused. */
const BUILDER_VERSION = "2";
export const DEFAULT_ROOTFS_MIB = 256;

export interface BaseRootfs {
  readonly path: string;
  readonly digest: string;
}

export const DEFAULT_IMAGE_CONFIG: ImageRunConfig = {
  entrypoint: [],
  cmd: ["sh"],
  env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
  workdir: "/",
  exposedPorts: [],
};

/** True if the ELF file has a PT_INTERP header, i.e. it needs a dynamic loader. */
export function elfNeedsInterpreter(elf: Buffer): boolean {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) {
    throw new MmError("MM_TOOL_MISSING", "not a 64-bit ELF binary");
  }
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  for (let i = 0; i < phnum; i++) {
    const off = phoff + i * phentsize;
    if (off + 4 > elf.length) break;
    if (elf.readUInt32LE(off) === 3) return true;
  }
  return false;
}

async function readBinary(path: string, what: string, code: "MM_TOOL_MISSING" | "MM_INIT_MISSING"): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch {
    throw new MmError(code, `${what} not found at ${path}`);
  }
}

export async function defaultImageRootfs(
  paths: Paths,
  initBinary: string,
  busybox = "/bin/busybox",
): Promise<BaseRootfs> {
  // Hashing the binaries costs a few ms on every run; their identity (inode, size,
  // mtime) is remembered next to the built image instead, and checked first.
  const identity = await Promise.all([busybox, initBinary].map((p) => stat(p))).then(
    (st) => [BUILDER_VERSION, ...st.map((s) => `${s.ino}:${s.size}:${s.mtimeMs}`)].join(":"),
    () => null,
  );
  const indexFile = join(paths.state, "rootfs", "default-image.json");
  const remembered = await readFile(indexFile, "utf8").then(
    (t) => JSON.parse(t) as { identity: string; digest: string },
    () => null,
  );
  if (identity && remembered?.identity === identity) {
    const path = join(paths.state, "rootfs", `sha256-${remembered.digest}.ext4`);
    if (
      await stat(path).then(
        () => true,
        () => false,
      )
    ) {
      return { path, digest: `sha256:${remembered.digest}` };
    }
  }
  const bb = await readBinary(busybox, "busybox (Debian package busybox-static)", "MM_TOOL_MISSING");
  if (elfNeedsInterpreter(bb)) {
    throw new MmError("MM_TOOL_MISSING", `${busybox} is dynamically linked`, {
      hint: "apt-get install busybox-static (the guest has no C library to load it with)",
    });
  }
  const init = await readBinary(initBinary, "mm-init", "MM_INIT_MISSING");
  const hash = createHash("sha256")
    .update(BUILDER_VERSION)
    .update(createHash("sha256").update(bb).digest())
    .update(createHash("sha256").update(init).digest());
  const digest = hash.digest("hex");
  const path = join(paths.state, "rootfs", `sha256-${digest}.ext4`);
  const result = { path, digest: `sha256:${digest}` };
  const remember = async () => {
    if (!identity) return;
    const tmp = `${indexFile}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify({ identity, digest }));
    await rename(tmp, indexFile);
  };
  if (
    await stat(path).then(
      () => true,
      () => false,
    )
  ) {
    await remember().catch(() => undefined);
    return result;
  }

  const tmpRoot = join(paths.state, "tmp");
  let work: string | undefined;
  try {
    await mkdir(dirname(path), { recursive: true });
    await mkdir(tmpRoot, { recursive: true });
    work = await mkdtemp(join(tmpRoot, "rootfs-"));
    const root = join(work, "root");
    await populate(root, busybox, initBinary);
    const image = join(work, "rootfs.ext4");
    await mke2fsAsRoot(
      ["-q", "-F", "-t", "ext4", "-L", "mm-root", "-d", root, "-E", "root_owner=0:0", image, `${DEFAULT_ROOTFS_MIB}M`],
      "building the default image's ext4",
    );
    await chmod(image, 0o444);
    await rename(image, path);
    await remember();
    return result;
  } catch (e) {
    throw e instanceof MmError ? e : mapFsError(e, "building the default image");
  } finally {
    if (work) await rm(work, { recursive: true, force: true });
  }
}

async function populate(root: string, busybox: string, initBinary: string): Promise<void> {
  for (const d of [
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc",
    "root",
    "proc",
    "sys",
    "dev",
    "run",
    "var/log",
    ".mm",
    ".mm/tools",
  ]) {
    await mkdir(join(root, d), { recursive: true, mode: 0o755 });
  }
  await mkdir(join(root, "tmp"), { mode: 0o1777 });
  await chmod(join(root, "tmp"), 0o1777);
  await chmod(join(root, "root"), 0o700);
  await copyFile(busybox, join(root, "bin", "busybox"));
  await chmod(join(root, "bin", "busybox"), 0o755);
  await copyFile(initBinary, join(root, ".mm", "init"));
  await chmod(join(root, ".mm", "init"), 0o755);
  // Applet names come from the binary itself, so the list matches the busybox we copied.
  const list = await runTool(busybox, ["--list-full"], "listing busybox applets");
  for (const applet of list
    .split("\n")
    .map((s) => s.trim())
    .filter(Boolean)) {
    if (applet === "bin/busybox" || applet.includes("..") || applet.startsWith("/")) continue;
    const target = join(root, applet);
    await mkdir(dirname(target), { recursive: true });
    const depth = applet.split("/").length - 1;
    await symlink(`${"../".repeat(depth)}bin/busybox`, target).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== "EEXIST") throw e;
    });
  }
  await writeFile(
    join(root, "etc", "passwd"),
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
  );
  await writeFile(join(root, "etc", "group"), "root:x:0:\nnogroup:x:65534:\n");
  await writeFile(join(root, "etc", "hostname"), "mm\n");
  await writeFile(
    join(root, "etc", "os-release"),
    'NAME="mm busybox"\nID=mm-busybox\nPRETTY_NAME="MicroMachines default image (busybox)"\n',
  );
}

/** A machine's writable disk: a qcow2 overlay on the shared base, optionally larger than it. */
export async function createOverlay(base: string, overlay: string, sizeMib?: number): Promise<void> {
  if (sizeMib !== undefined) {
    const baseMib = Math.ceil((await stat(base)).size / 2 ** 20);
    if (sizeMib < baseMib) {
      throw new MmError("MM_INVALID_DISK_SIZE", `${sizeMib} MiB is smaller than the image's ${baseMib} MiB`);
    }
  }
  await runTool(
    "qemu-img",
    [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-F",
      "raw",
      "-b",
      base,
      overlay,
      ...(sizeMib !== undefined ? [`${sizeMib}M`] : []),
    ],
    "creating the machine's disk overlay",
  );
}
