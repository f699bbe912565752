// Platforms ("linux/arm64/v8") and choosing an index entry for one, with the matching
// rules of containerd's platforms package that Docker uses. Pure, no I/O.

import { MmError } from "@mm/core";
import type { Descriptor, Index, Platform } from "./types.js";

const NODE_ARCH: Readonly<Record<string, Platform>> = {
  x64: { os: "linux", architecture: "amd64" },
  arm64: { os: "linux", architecture: "arm64", variant: "v8" },
  arm: { os: "linux", architecture: "arm", variant: "v7" },
  ia32: { os: "linux", architecture: "386" },
  ppc64: { os: "linux", architecture: "ppc64le" },
  s390x: { os: "linux", architecture: "s390x" },
  riscv64: { os: "linux", architecture: "riscv64" },
  loong64: { os: "linux", architecture: "loong64" },
  mips64el: { os: "linux", architecture: "mips64le" },
};

/** The platform a machine on this host runs: always linux (mm boots Linux guests), the host's CPU. */
export function hostPlatform(arch: string = process.arch): Platform {
  const p = NODE_ARCH[arch];
  if (!p) throw new MmError("MM_NO_MATCHING_PLATFORM", `no OCI platform is known for this host's CPU (${arch})`);
  return p;
}

const OS_ALIASES: Readonly<Record<string, string>> = { macos: "darwin" };

/** containerd's normalizeArch: the many spellings of one architecture, and its variant. */
function normalizeArch(architecture: string, variant: string): [string, string] {
  const arch = architecture.toLowerCase();
  const v = variant.toLowerCase();
  switch (arch) {
    case "i386":
      return ["386", ""];
    case "x86_64":
    case "x86-64":
    case "amd64":
      return ["amd64", v === "v1" ? "" : v];
    case "aarch64":
    case "arm64":
      if (v === "8" || v === "v8" || v === "v8.0") return ["arm64", "v8"];
      if (v === "") return ["arm64", ""];
      return ["arm64", v.startsWith("v") ? v : `v${v}`];
    case "armhf":
      return ["arm", "v7"];
    case "armel":
      return ["arm", "v6"];
    case "arm":
      if (v === "" || v === "7") return ["arm", "v7"];
      if (/^[5-8]$/.test(v)) return ["arm", `v${v}`];
      return ["arm", v];
    default:
      return [arch, v];
  }
}

/** A platform in its normal spelling (x86_64 → amd64, aarch64 → arm64, armhf → arm/v7). */
export function normalizePlatform(p: Platform): Platform {
  const os = p.os.toLowerCase();
  const [architecture, variant] = normalizeArch(p.architecture, p.variant ?? "");
  return { os: OS_ALIASES[os] ?? os, architecture, ...(variant ? { variant } : {}) };
}

/**
 * Parses `--platform`: "os/arch[/variant]", or just "arch" (linux assumed) as containerd does.
 * Malformed values are MM_USAGE.
 */
export function parsePlatform(text: string): Platform {
  const parts = text.trim().split("/");
  const ok = /^[A-Za-z0-9_.-]+$/;
  if (parts.length < 1 || parts.length > 3 || !parts.every((s) => ok.test(s))) {
    throw new MmError("MM_USAGE", `invalid platform "${text}": write os/arch[/variant], e.g. linux/arm64/v8`);
  }
  if (parts.length === 1) return normalizePlatform({ os: "linux", architecture: parts[0]! });
  const [os, architecture, variant] = parts as [string, string, string?];
  return normalizePlatform({ os, architecture, ...(variant ? { variant } : {}) });
}

export function formatPlatform(p: Platform): string {
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ""}`;
}

// Architectures whose variants are ordered levels (newer runs older), and the level an
// image without a variant is built for.
const LEVELLED: Readonly<Record<string, number>> = { arm64: 8, arm: 7, amd64: 1 };

function level(variant: string | undefined, arch: string): number | undefined {
  if (!variant) return LEVELLED[arch];
  const m = /^v(\d+(?:\.\d+)?)$/.exec(variant);
  return m ? Number(m[1]) : undefined;
}

/**
 * How well an image built for `have` runs on `want`: undefined when it cannot run,
 * else a rank where 0 is an exact match and larger is a worse (older-variant) fit.
 */
export function platformRank(want: Platform, have: Platform): number | undefined {
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os || w.architecture !== h.architecture) return undefined;
  if (w.architecture in LEVELLED) {
    const wl = level(w.variant, w.architecture);
    const hl = level(h.variant, h.architecture);
    if (wl !== undefined && hl !== undefined) return hl <= wl ? Math.round((wl - hl) * 10) : undefined;
  }
  return (w.variant ?? "") === (h.variant ?? "") ? 0 : undefined;
}

/** Descriptors that name a real platform (BuildKit's attestations use "unknown/unknown"). */
function listed(index: Index): Descriptor[] {
  return index.manifests.filter(
    (d) => d.platform && d.platform.os !== "unknown" && d.platform.architecture !== "unknown",
  );
}

/**
 * Picks the index entry to run on `platform`: the best-ranked match, the first one on ties
 * (registries list the preferred one first). None → MM_NO_MATCHING_PLATFORM naming what there is.
 */
export function selectManifest(index: Index, platform: Platform, what = "the image"): Descriptor {
  let best: Descriptor | undefined;
  let bestRank = Number.POSITIVE_INFINITY;
  for (const d of listed(index)) {
    const r = platformRank(platform, d.platform!);
    if (r !== undefined && r < bestRank) {
      best = d;
      bestRank = r;
    }
  }
  if (best) return best;
  const available = [...new Set(listed(index).map((d) => formatPlatform(d.platform!)))];
  throw new MmError(
    "MM_NO_MATCHING_PLATFORM",
    `${what} has no ${formatPlatform(platform)} variant; available: ${available.length ? available.join(", ") : "none"}`,
  );
}
