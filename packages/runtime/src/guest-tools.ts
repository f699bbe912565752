// Tools mm puts into every root filesystem under /.mm, next to mm-init, so that mm's own
// features work on any image (glibc, musl, distroless): a static busybox for set-up
// scripts, and an SSH server (Debian's dropbear with its loader and libraries bundled
// privately: patchelf points it at /.mm/ssh/lib, so the image's libc is never used).

import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { promisify } from "node:util";
import type { Paths } from "./paths.js";

const run = promisify(execFile);
const BUNDLE_VERSION = "2";
export const GUEST_BUSYBOX = "/.mm/bin/busybox";
export const GUEST_DROPBEAR = "/.mm/ssh/dropbear";
const DROPBEAR = "/usr/sbin/dropbear";

export interface GuestFile {
  readonly path: string;
  readonly source: string;
  readonly mode: number;
}

export interface GuestTools {
  readonly files: readonly GuestFile[];
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

export async function guestTools(paths: Paths, busybox = "/bin/busybox"): Promise<GuestTools> {
  const files: GuestFile[] = [{ path: GUEST_BUSYBOX, source: busybox, mode: 0o755 }];
  const [dropbearId, patchelf] = await Promise.all([identity(DROPBEAR), identity("/usr/bin/patchelf")]);
  if (!dropbearId || !patchelf) return { files, ssh: false };
  // `ldd` costs ~10 ms per boot; the bundle it leads to is remembered per dropbear build.
  const index = join(paths.state, "guest-tools", "index.json");
  const remembered = await readFile(index, "utf8").then(
    (t) => JSON.parse(t) as { id: string; dir: string },
    () => null,
  );
  if (remembered?.id === `${BUNDLE_VERSION}:${dropbearId}` && (await stat(remembered.dir).catch(() => null))) {
    return { files: [...files, ...(await bundleFiles(remembered.dir))], ssh: true };
  }
  const libs = await sharedLibraries(DROPBEAR);
  const key = createHash("sha256")
    .update([BUNDLE_VERSION, dropbearId, ...(await Promise.all(libs.map(identity)))].join("\n"))
    .digest("hex")
    .slice(0, 16);
  const dir = join(paths.state, "guest-tools", `ssh-${key}`);
  if (!(await stat(dir).catch(() => null))) {
    const tmp = `${dir}.${process.pid}.tmp`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(join(tmp, "lib"), { recursive: true });
    await copyFile(DROPBEAR, join(tmp, "dropbear"));
    for (const lib of libs) await copyFile(lib, join(tmp, "lib", basename(lib)));
    const loader = libs.find((l) => basename(l).startsWith("ld-linux")) ?? "/lib64/ld-linux-x86-64.so.2";
    await run("patchelf", [
      "--set-interpreter",
      `/.mm/ssh/lib/${basename(loader)}`,
      // DT_RPATH, not RUNPATH: it also applies to the libraries' own dependencies.
      "--force-rpath",
      "--set-rpath",
      "/.mm/ssh/lib",
      join(tmp, "dropbear"),
    ]);
    await rename(tmp, dir).catch(async () => rm(tmp, { recursive: true, force: true }));
  }
  const tmpIndex = `${index}.${process.pid}.tmp`;
  await writeFile(tmpIndex, JSON.stringify({ id: `${BUNDLE_VERSION}:${dropbearId}`, dir }));
  await rename(tmpIndex, index);
  return { files: [...files, ...(await bundleFiles(dir))], ssh: true };
}

async function bundleFiles(dir: string): Promise<GuestFile[]> {
  const libs = (await readdir(join(dir, "lib"))).sort();
  return [
    { path: GUEST_DROPBEAR, source: join(dir, "dropbear"), mode: 0o755 },
    ...libs.map((lib) => ({ path: `/.mm/ssh/lib/${lib}`, source: join(dir, "lib", lib), mode: 0o755 })),
  ];
}
