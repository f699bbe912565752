// Images on this host: pulls from registries, imports, the local list, removal and
// garbage collection, and the read-only ext4 each machine of an image boots from.
// packages/image does the work; this module adds mm's state layout and policy.

import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { DEFAULT_IMAGE, type ImageRunConfig, MmError } from "@mm/core";
import {
  buildImageRootfs,
  ContentStore,
  credentialLookup,
  formatReference,
  getImage,
  type ImageConfigFile,
  importDockerArchive,
  importOciLayout,
  login,
  logout,
  type Platform,
  type PullEvent,
  type PulledImage,
  parsePlatform,
  parseReference,
  pull,
  RegistryClient,
  rootfsPrefix,
} from "@mm/image";
import type { Paths } from "./paths.js";

export type { PullEvent } from "@mm/image";

export interface PullPolicyOptions {
  readonly platform?: string;
  /** Registries (host:port) that may be reached over plain HTTP; loopback only. */
  readonly insecureRegistries?: readonly string[];
  readonly onEvent?: (e: PullEvent) => void;
  /** missing (default): pull only what is not here; always: check the registry; never: local only. */
  readonly pull?: "missing" | "always" | "never";
}

export interface ImageSummary {
  readonly reference: string;
  readonly digest: string;
  readonly sizeBytes: number;
  readonly pulledAt: string;
  readonly platform: string;
}

export function runConfigOf(config: ImageConfigFile): ImageRunConfig {
  const c = config.config ?? {};
  return {
    entrypoint: [...(c.Entrypoint ?? [])],
    cmd: [...(c.Cmd ?? [])],
    env: [...(c.Env ?? [])],
    exposedPorts: Object.keys(c.ExposedPorts ?? {}).sort(),
    ...(c.WorkingDir ? { workdir: c.WorkingDir } : {}),
    ...(c.User ? { user: c.User } : {}),
    ...(c.StopSignal ? { stopSignal: c.StopSignal } : {}),
  };
}

const REGISTRY_BASE = /^sha256-[0-9a-f]{64}-[0-9a-f]{16}\.ext4$/;

export class Images {
  readonly store: ContentStore;

  constructor(
    private readonly paths: Paths,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {
    this.store = new ContentStore(join(paths.state, "content"));
  }

  private client(opts: PullPolicyOptions, credentials?: { username: string; password: string }): RegistryClient {
    const insecure = [
      ...(opts.insecureRegistries ?? []),
      ...(this.env.MM_INSECURE_REGISTRIES ?? "").split(",").filter(Boolean),
    ];
    return new RegistryClient({
      insecureRegistries: insecure,
      credentials: credentials
        ? async () => credentials
        : credentialLookup({ stateDir: this.paths.state, env: this.env }),
    });
  }

  private platform(opts: PullPolicyOptions): Platform | undefined {
    return opts.platform ? parsePlatform(opts.platform) : undefined;
  }

  async pull(reference: string, opts: PullPolicyOptions = {}): Promise<PulledImage> {
    const platform = this.platform(opts);
    return pull(reference, {
      store: this.store,
      client: this.client(opts),
      ...(platform && { platform }),
      ...(opts.onEvent && { onEvent: opts.onEvent }),
    });
  }

  /** The local image, or null. */
  async local(reference: string): Promise<PulledImage | null> {
    try {
      return await getImage(this.store, reference);
    } catch (e) {
      if (e instanceof MmError && e.code === "MM_NO_SUCH_IMAGE") return null;
      throw e;
    }
  }

  /** What `mm run IMAGE` needs: the local image, pulled first as the policy says. */
  async ensure(reference: string, opts: PullPolicyOptions = {}): Promise<PulledImage> {
    const policy = opts.pull ?? "missing";
    if (policy !== "always") {
      const here = await this.local(reference);
      if (here) return here;
      if (policy === "never")
        throw new MmError("MM_NO_SUCH_IMAGE", formatReference(parseReference(reference)), {
          hint: "pull it first (`mm pull`), or drop --pull never",
        });
    }
    return this.pull(reference, opts);
  }

  /** The image stored under this machine's digest (no network). */
  async byDigest(reference: string, digest: string): Promise<PulledImage> {
    const ref = parseReference(reference);
    return getImage(this.store, { registry: ref.registry, repository: ref.repository, digest });
  }

  /** The image's shared read-only ext4, with mm-init injected at /.mm/init. */
  async rootfs(image: PulledImage, initBinary: string, onWarning?: (m: string) => void): Promise<string> {
    const r = await buildImageRootfs({
      stateDir: this.paths.state,
      image: {
        digest: image.digest,
        layers: image.manifest.layers.map((l) => ({
          path: this.store.path(l.digest),
          mediaType: l.mediaType,
          digest: l.digest,
        })),
      },
      extraFiles: [{ path: "/.mm/init", source: initBinary, mode: 0o755 }],
      ...(onWarning && { onWarning }),
    });
    return r.path;
  }

  async list(): Promise<ImageSummary[]> {
    const out: ImageSummary[] = [];
    for (const rec of await this.store.listRefs()) {
      const img = await getImage(this.store, rec.reference).catch(() => null);
      if (!img) continue;
      const size = img.manifest.layers.reduce((n, l) => n + l.size, img.manifest.config.size);
      const p = rec.platform ?? { os: img.config.os, architecture: img.config.architecture };
      out.push({
        reference: rec.reference,
        digest: rec.digest,
        sizeBytes: size,
        pulledAt: rec.pulledAt,
        platform: `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`,
      });
    }
    return out.sort((a, b) => a.reference.localeCompare(b.reference));
  }

  /** Removes a reference; refuses while a machine uses the image unless forced. */
  async remove(
    reference: string,
    inUse: ReadonlySet<string>,
    force = false,
  ): Promise<{ reference: string; digest: string }> {
    const name = formatReference(parseReference(reference));
    const rec = await this.store.getRef(name);
    if (!rec) throw new MmError("MM_NO_SUCH_IMAGE", name);
    if (inUse.has(rec.digest) && !force) throw new MmError("MM_IMAGE_IN_USE", name);
    await this.store.removeRef(name);
    return { reference: name, digest: rec.digest };
  }

  /** Deletes blobs and root filesystems no image reference or machine needs. */
  /** `keepFiles`: root filesystems a disk layer is built on (a snapshot's or a machine's). */
  async prune(
    inUse: ReadonlySet<string>,
    keepFiles: ReadonlySet<string> = new Set(),
  ): Promise<{ freedBytes: number; removed: number }> {
    const kept = new Set(inUse);
    for (const rec of await this.store.listRefs()) kept.add(rec.digest);
    const gc = await this.store.gc(kept);
    let freed = gc.freedBytes;
    let removed = gc.removed.length;
    const dir = join(this.paths.state, "rootfs");
    const keptPrefixes = [...kept].map((d) => rootfsPrefix(d));
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      if (!name.endsWith(".ext4") || !name.startsWith("sha256-")) continue;
      if (keptPrefixes.some((p) => name.startsWith(p))) continue;
      // Only registry images' bases (sha256-<digest>-<key>.ext4) are collected. The embedded
      // image's bases are kept: machines do not record which base their overlay uses yet,
      // so an old one may still be in use (docs/STATUS.md).
      if (!REGISTRY_BASE.test(name)) continue;
      const p = join(dir, name);
      if (keepFiles.has(p)) continue;
      freed += ((await stat(p).catch(() => null))?.blocks ?? 0) * 512;
      await rm(p, { force: true });
      removed++;
    }
    return { freedBytes: freed, removed };
  }

  async import(path: string, reference?: string): Promise<PulledImage[]> {
    const st = await stat(path).catch(() => null);
    if (!st) throw new MmError("MM_BAD_ARCHIVE", `${path} does not exist`);
    const opts = { store: this.store, ...(reference !== undefined && { reference }) };
    return st.isDirectory() ? importOciLayout(path, opts) : importDockerArchive(path, opts);
  }

  async login(registry: string, username: string, password: string, opts: PullPolicyOptions = {}): Promise<void> {
    await this.client(opts, { username, password }).checkLogin(registry);
    await login(this.paths.state, registry, { username, password });
  }

  logout(registry: string): Promise<boolean> {
    return logout(this.paths.state, registry);
  }
}

export const isDefaultImage = (image: string | undefined) => image === undefined || image === DEFAULT_IMAGE;
