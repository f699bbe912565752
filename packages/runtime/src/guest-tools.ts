// Tools mm gives every machine, whatever its image (glibc, musl, distroless): a static
// busybox for set-up scripts and an SSH server (Debian's dropbear, patchelf'd to its own
// loader and libraries, so the image's libc is never used). They live on ONE read-only
// ext4 shared by all machines, attached as a second disk (virtio serial "mm-tools") and
// mounted by mm-init at /.mm/tools: image root filesystems carry only mm-init.

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, copyFile, mkdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { promisify } from "node:util";
import { mke2fsAsRoot } from "./exec-tool.js";
import type { Paths } from "./paths.js";

const run = promisify(execFile);
const TOOLS_VERSION = "3";
export const TOOLS_SERIAL = "mm-tools";
export const GUEST_TOOLS_DIR = "/.mm/tools";
export const GUEST_BUSYBOX = `${GUEST_TOOLS_DIR}/bin/busybox`;
export const GUEST_DROPBEAR = `${GUEST_TOOLS_DIR}/ssh/dropbear`;
const DROPBEAR = "/usr/sbin/dropbear";

export interface GuestTools {
  /** The shared read-only ext4 to attach to every machine. */
  readonly disk: string;
  /** False when dropbear-bin or patchelf is missing on the host: `--ssh` is then refused. */
  readonly ssh: boolean;
}

async function identity(p: string): Promise<string | null> {
  const s = await stat(p).catch(() => null);
  return s ? `${p}:${s.ino}:${s.size}:${s.mtimeMs}` : null;
}

/** Libraries a binary loads, with the loader, from `ldd` (the host's own binary, never the image's). */
async function sharedLibraries(binary: string): Promise<string[]> {
  const { stdout } = await run("ldd", [binary]);
  return [...stdout.matchAll(/(\/\S+)\s+\(0x/g)].map((m) => m[1] as string);
}

/** The tools disk, built once per (busybox, dropbear build) and remembered by file identity. */
export async function guestTools(paths: Paths, busybox = "/bin/busybox"): Promise<GuestTools> {
  const [busyboxId, dropbearId, patchelf] = await Promise.all([
    identity(busybox),
    identity(DROPBEAR),
    identity("/usr/bin/patchelf"),
  ]);
  const ssh = Boolean(dropbearId && patchelf);
  const id = [TOOLS_VERSION, busyboxId, ssh ? dropbearId : "no-ssh"].join("|");
  const dir = join(paths.state, "guest-tools");
  const index = join(dir, "index.json");
  // `ldd` and hashing cost ~10 ms per boot; the disk they lead to is remembered.
  const remembered = await readFile(index, "utf8").then(
    (t) => JSON.parse(t) as { id: string; disk: string },
    () => null,
  );
  if (remembered?.id === id && (await stat(remembered.disk).catch(() => null))) return { disk: remembered.disk, ssh };

  const libs = ssh ? await sharedLibraries(DROPBEAR) : [];
  const key = createHash("sha256")
    .update([id, ...(await Promise.all(libs.map(identity)))].join("\n"))
    .digest("hex")
    .slice(0, 16);
  const disk = join(dir, `tools-${key}.ext4`);
  if (!(await stat(disk).catch(() => null))) {
    const work = join(dir, `.build-${process.pid}`);
    await rm(work, { recursive: true, force: true });
    await mkdir(join(work, "root", "bin"), { recursive: true });
    await copyFile(busybox, join(work, "root", "bin", "busybox"));
    await chmod(join(work, "root", "bin", "busybox"), 0o755);
    if (ssh) {
      await mkdir(join(work, "root", "ssh", "lib"), { recursive: true });
      const dropbear = join(work, "root", "ssh", "dropbear");
      await copyFile(DROPBEAR, dropbear);
      for (const lib of libs) await copyFile(lib, join(work, "root", "ssh", "lib", basename(lib)));
      const loader = libs.find((l) => basename(l).startsWith("ld-linux")) ?? "/lib64/ld-linux-x86-64.so.2";
      await run("patchelf", [
        "--set-interpreter",
        `${GUEST_TOOLS_DIR}/ssh/lib/${basename(loader)}`,
        // DT_RPATH, not RUNPATH: it also applies to the libraries' own dependencies.
        "--force-rpath",
        "--set-rpath",
        `${GUEST_TOOLS_DIR}/ssh/lib`,
        dropbear,
      ]);
    }
    const image = join(work, "tools.ext4");
    await mke2fsAsRoot(
      ["-q", "-F", "-t", "ext4", "-L", TOOLS_SERIAL, "-E", "root_owner=0:0", "-d", join(work, "root"), image, "32M"],
      "building the guest tools disk",
    );
    await chmod(image, 0o444);
    await rename(image, disk).catch(() => undefined); // a concurrent build may have won
    await rm(work, { recursive: true, force: true });
  }
  const tmp = `${index}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify({ id, disk }));
  await rename(tmp, index);
  return { disk, ssh };
}
