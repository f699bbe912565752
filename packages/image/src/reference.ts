// Image references as Docker reads them: "busybox" means docker.io/library/busybox:latest.
// Pure: the grammar of distribution/reference plus Docker's normalisation, no I/O.

import { MmError } from "@mm/core";
import type { ImageReference } from "./types.js";

export const DOCKER_HUB = "docker.io";
/** The host Docker Hub's registry API answers on. */
export const DOCKER_HUB_API_HOST = "registry-1.docker.io";
/** The key Docker writes Docker Hub credentials under in ~/.docker/config.json. */
export const DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/";
const LEGACY_DOCKER_HUB = "index.docker.io";
const DEFAULT_TAG = "latest";
/** distribution/reference's NameTotalLengthMax: registry + "/" + repository. */
export const MAX_NAME_LENGTH = 255;

// distribution/reference/regexp.go, written out.
const ALNUM = "[a-z0-9]+";
const SEPARATOR = "(?:[._]|__|[-]+)";
const PATH_COMPONENT = `${ALNUM}(?:${SEPARATOR}${ALNUM})*`;
const PATH = new RegExp(`^${PATH_COMPONENT}(?:/${PATH_COMPONENT})*$`);
const DOMAIN_COMPONENT = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:]+\\])(?::([0-9]+))?$`);
const TAG = /^[\w][\w.-]{0,127}$/;
const ANY_DIGEST = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;
const SHA256_DIGEST = /^sha256:[a-f0-9]{64}$/;
const IMAGE_ID = /^[a-f0-9]{64}$/;

function bad(text: string, why: string): MmError {
  const shown = text.length > 300 ? `${text.slice(0, 300)}…` : text;
  return new MmError("MM_BAD_REFERENCE", `${JSON.stringify(shown)}: ${why}`);
}

/** Docker's rule: the first component is a registry when it looks like a host. */
function looksLikeRegistry(component: string): boolean {
  return /[.:]/.test(component) || component === "localhost" || component.toLowerCase() !== component;
}

/**
 * Parses what a user types after `mm run` / `mm pull`, normalised as Docker does:
 * no registry → docker.io; a one-component Docker Hub name gets "library/"; no tag and no
 * digest → "latest". Anything outside the distribution grammar is MM_BAD_REFERENCE.
 */
export function parseReference(text: string): ImageReference {
  if (typeof text !== "string" || text.length === 0) throw bad(String(text), "empty reference");
  if (IMAGE_ID.test(text)) throw bad(text, "a 64-hex-digit image ID is not a repository name");

  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (SHA256_DIGEST.test(digest)) {
      // fine
    } else if (ANY_DIGEST.test(digest) && !digest.startsWith("sha256:")) {
      throw bad(text, `unsupported digest algorithm "${digest.split(":")[0]}" (only sha256)`);
    } else {
      throw bad(text, "a digest is sha256: followed by 64 lowercase hex digits");
    }
  }

  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(text, `invalid tag "${tag}" (letters, digits, '_', '.', '-'; at most 128)`);
  }

  const slash = rest.indexOf("/");
  let registry = DOCKER_HUB;
  let repository = rest;
  if (slash !== -1 && looksLikeRegistry(rest.slice(0, slash))) {
    registry = rest.slice(0, slash);
    repository = rest.slice(slash + 1);
  }
  if (registry === LEGACY_DOCKER_HUB) registry = DOCKER_HUB;
  if (!DOMAIN.test(registry)) throw bad(text, `invalid registry "${registry}"`);
  const port = DOMAIN.exec(registry)?.[1];
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) {
    throw bad(text, `invalid port ${port} in registry "${registry}"`);
  }
  if (registry === DOCKER_HUB && repository !== "" && !repository.includes("/")) {
    repository = `library/${repository}`;
  }
  if (repository === "") throw bad(text, "no repository name");
  if (repository.toLowerCase() !== repository) throw bad(text, "the repository name must be lowercase");
  if (!PATH.test(repository)) {
    throw bad(
      text,
      "the repository name is lowercase letters and digits in '/'-separated components, " +
        "joined by '.', '_', '__' or dashes",
    );
  }
  if (registry.length + 1 + repository.length > MAX_NAME_LENGTH) {
    throw bad(text, `the name is longer than ${MAX_NAME_LENGTH} characters`);
  }
  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** The fully qualified form: docker.io/library/busybox:latest, host:5000/a/b@sha256:… */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag !== undefined ? `:${ref.tag}` : ""}${
    ref.digest !== undefined ? `@${ref.digest}` : ""
  }`;
}

/** Docker's "familiar" form for display: busybox:latest, user/app:1, ghcr.io/o/r:tag. */
export function familiarReference(ref: ImageReference): string {
  let name = `${ref.registry}/${ref.repository}`;
  const first = ref.repository.split("/")[0] ?? "";
  if (ref.registry === DOCKER_HUB && !looksLikeRegistry(first)) {
    name = ref.repository.startsWith("library/") ? ref.repository.slice("library/".length) : ref.repository;
  }
  return `${name}${ref.tag !== undefined ? `:${ref.tag}` : ""}${ref.digest !== undefined ? `@${ref.digest}` : ""}`;
}

/** The host[:port] that serves a registry's /v2/ API. */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API_HOST : registry;
}

/** The tag or digest to ask the registry for: the digest when pinned (Docker ignores the tag then). */
export function manifestSelector(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG;
}

/** Normalises the registry names users write in `mm login` / config keys: scheme, path and Docker Hub aliases. */
export function normalizeRegistryName(name: string): string {
  let host = name.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, "");
  const slash = host.indexOf("/");
  if (slash !== -1) host = host.slice(0, slash);
  host = host.toLowerCase();
  if (host === LEGACY_DOCKER_HUB || host === DOCKER_HUB_API_HOST || host === DOCKER_HUB) return DOCKER_HUB;
  return host;
}
