// Registry credentials and tokens: mm's own store ($MM_STATE/auth.json, written by `mm login`),
// Docker's ~/.docker/config.json, WWW-Authenticate challenges and the bearer-token dance.

import { mkdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { MmError } from "@mm/core";
import { normalizeRegistryName } from "./reference.js";

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** Finds the credentials for a registry (normalised name, e.g. "docker.io", "localhost:5000"). */
export type CredentialLookup = (registry: string) => Promise<Credentials | undefined>;

const AUTH_FILE = "auth.json";
/** Token responses and credential files are small; a huge one is hostile or broken. */
const MAX_AUTH_JSON_BYTES = 1024 * 1024;

/** Where Docker keeps config.json: $DOCKER_CONFIG, else ~/.docker. */
export function dockerConfigDir(env: NodeJS.ProcessEnv = process.env, home: string = homedir()): string {
  return env.DOCKER_CONFIG || join(home, ".docker");
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
}

function decodeEntry(entry: unknown): Credentials | undefined {
  if (typeof entry !== "object" || entry === null) return undefined;
  const e = entry as AuthEntry;
  if (typeof e.auth === "string" && e.auth !== "") {
    const text = Buffer.from(e.auth, "base64").toString("utf8");
    const colon = text.indexOf(":");
    if (colon > 0) return { username: text.slice(0, colon), password: text.slice(colon + 1) };
  }
  if (typeof e.username === "string" && e.username !== "" && typeof e.password === "string") {
    return { username: e.username, password: e.password };
  }
  return undefined;
}

async function readAuths(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return {};
    throw e;
  }
  if (text.length > MAX_AUTH_JSON_BYTES) throw new MmError("MM_REGISTRY_AUTH", `${file} is larger than 1 MiB`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new MmError("MM_REGISTRY_AUTH", `${file} is not valid JSON: ${(e as Error).message}`);
  }
  const auths = (doc as { auths?: unknown } | null)?.auths;
  return typeof auths === "object" && auths !== null ? (auths as Record<string, unknown>) : {};
}

function findEntry(auths: Record<string, unknown>, registry: string): Credentials | undefined {
  const want = normalizeRegistryName(registry);
  const direct = decodeEntry(auths[want]);
  if (direct) return direct;
  for (const [key, entry] of Object.entries(auths)) {
    if (normalizeRegistryName(key) === want) {
      const c = decodeEntry(entry);
      if (c) return c;
    }
  }
  return undefined;
}

/** Credentials `mm login` stored for a registry. */
export async function getStoredCredentials(stateDir: string, registry: string): Promise<Credentials | undefined> {
  return findEntry(await readAuths(join(stateDir, AUTH_FILE)), registry);
}

/** Credentials from Docker's config.json (inline `auth` or username/password; helpers are not run). */
export async function getDockerCredentials(configDir: string, registry: string): Promise<Credentials | undefined> {
  return findEntry(await readAuths(join(configDir, "config.json")), registry);
}

export interface CredentialSources {
  /** $MM_STATE: mm's own store is consulted first. */
  readonly stateDir?: string;
  /** Docker's config directory; default $DOCKER_CONFIG or ~/.docker. */
  readonly dockerConfigDir?: string;
  readonly env?: NodeJS.ProcessEnv;
}

/** mm's store first, then Docker's config, as a `docker login`-ed user expects. */
export async function getCredentials(
  registry: string,
  sources: CredentialSources = {},
): Promise<Credentials | undefined> {
  if (sources.stateDir) {
    const own = await getStoredCredentials(sources.stateDir, registry);
    if (own) return own;
  }
  return getDockerCredentials(sources.dockerConfigDir ?? dockerConfigDir(sources.env), registry);
}

export function credentialLookup(sources: CredentialSources = {}): CredentialLookup {
  return (registry) => getCredentials(registry, sources);
}

async function writeAuths(stateDir: string, auths: Record<string, unknown>): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  const file = join(stateDir, AUTH_FILE);
  const temp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}`;
  try {
    // Created 0600 from the start: the secret is never readable by others, not even briefly.
    await writeFile(temp, `${JSON.stringify({ auths }, null, 2)}\n`, { mode: 0o600, flag: "wx", flush: true });
    await rename(temp, file);
  } catch (e) {
    await rm(temp, { force: true });
    throw e;
  }
}

/** Stores credentials for `mm login` in $MM_STATE/auth.json (mode 0600), replacing old ones. */
export async function login(stateDir: string, registry: string, credentials: Credentials): Promise<void> {
  if (credentials.username === "" || credentials.username.includes(":")) {
    throw new MmError("MM_USAGE", "the user name must be non-empty and must not contain ':'");
  }
  const auths = await readAuths(join(stateDir, AUTH_FILE));
  const key = normalizeRegistryName(registry);
  for (const k of Object.keys(auths)) if (normalizeRegistryName(k) === key) delete auths[k];
  auths[key] = { auth: Buffer.from(`${credentials.username}:${credentials.password}`).toString("base64") };
  await writeAuths(stateDir, auths);
}

/** Forgets stored credentials for `mm logout`; false when there were none. */
export async function logout(stateDir: string, registry: string): Promise<boolean> {
  const auths = await readAuths(join(stateDir, AUTH_FILE));
  const key = normalizeRegistryName(registry);
  const keys = Object.keys(auths).filter((k) => normalizeRegistryName(k) === key);
  if (keys.length === 0) return false;
  for (const k of keys) delete auths[k];
  await writeAuths(stateDir, auths);
  return true;
}

export interface AuthChallenge {
  /** Lowercased: "bearer", "basic". */
  readonly scheme: string;
  /** Parameter names lowercased: realm, service, scope, error. */
  readonly params: Readonly<Record<string, string>>;
}

/** Parses a WWW-Authenticate header (RFC 7235): one or more challenges with quoted or bare params. */
export function parseWwwAuthenticate(header: string): AuthChallenge[] {
  const out: { scheme: string; params: Record<string, string> }[] = [];
  let i = 0;
  const n = header.length;
  const skip = (chars: string) => {
    while (i < n && chars.includes(header[i]!)) i++;
  };
  const token = (): string => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  while (i < n) {
    skip(" \t,");
    const scheme = token();
    if (scheme === "") {
      i++; // not a token character: skip it rather than loop
      continue;
    }
    const challenge = { scheme: scheme.toLowerCase(), params: {} as Record<string, string> };
    out.push(challenge);
    for (;;) {
      skip(" \t");
      const save = i;
      const name = token();
      skip(" \t");
      if (name === "" || header[i] !== "=") {
        // The next challenge starts here (token68 forms are not used by registries).
        i = save;
        break;
      }
      i++; // '='
      skip(" \t");
      let value = "";
      if (header[i] === '"') {
        i++;
        while (i < n && header[i] !== '"') {
          if (header[i] === "\\" && i + 1 < n) i++;
          value += header[i];
          i++;
        }
        i++; // closing quote
      } else {
        const start = i;
        while (i < n && header[i] !== "," && header[i] !== " " && header[i] !== "\t") i++;
        value = header.slice(start, i);
      }
      challenge.params[name.toLowerCase()] = value;
      skip(" \t");
      if (header[i] !== ",") break;
      i++;
    }
  }
  return out;
}

export function basicAuthorization(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;
}

/** Plain HTTP is for loopback only (127.0.0.0/8, ::1, localhost). Works on "host", "host:port", "[v6]:port". */
export function isLoopbackHost(hostPort: string): boolean {
  let host = hostPort.toLowerCase();
  if (host.startsWith("[")) host = host.slice(1, host.indexOf("]") === -1 ? undefined : host.indexOf("]"));
  else if (host.split(":").length === 2) host = host.slice(0, host.indexOf(":"));
  if (host === "localhost" || host === "::1" || host === "0:0:0:0:0:0:0:1") return true;
  const m = /^127\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (!m) return false;
  return m.slice(1).every((o) => Number(o) <= 255);
}

/** Sends one token request; the registry client supplies it with its retry and TLS policy. */
export type TokenRequest = (url: URL, headers: Readonly<Record<string, string>>) => Promise<Response>;

interface CachedToken {
  readonly value: string;
  readonly expiresAt: number;
}

/** Tokens are refreshed this long before they expire, so a request never carries a stale one. */
const EXPIRY_SLACK_MS = 5_000;
/** The distribution spec's default when a token response omits expires_in. */
const DEFAULT_TOKEN_SECONDS = 60;

/**
 * Per-registry authorisation for one client: remembers each registry's challenge so later
 * requests authenticate up front, and caches bearer tokens per scope until they expire.
 */
export class RegistryAuth {
  readonly #challenges = new Map<string, AuthChallenge>();
  readonly #tokens = new Map<string, CachedToken>();
  readonly #inflight = new Map<string, Promise<CachedToken>>();

  constructor(
    private readonly options: {
      readonly credentials: CredentialLookup;
      readonly request: TokenRequest;
      /** Whether a realm URL may be used for this registry (scheme policy); throws to refuse. */
      readonly checkRealm: (url: URL, registry: string) => void;
      readonly now?: () => number;
    },
  ) {}

  #now(): number {
    return this.options.now?.() ?? Date.now();
  }

  /** The Authorization header for a request, when the registry is known to want one. */
  async authorization(registry: string, repository: string): Promise<string | undefined> {
    const challenge = this.#challenges.get(registry);
    if (!challenge) return undefined;
    return this.#authorize(registry, repository, challenge, false);
  }

  /**
   * Answers a 401: remembers the challenge and returns the header to retry with.
   * `stale` is the header the refused request carried (a cached token is then refetched once).
   */
  async challenged(
    registry: string,
    repository: string,
    wwwAuthenticate: string | null,
    stale: string | undefined,
  ): Promise<string> {
    const challenges = parseWwwAuthenticate(wwwAuthenticate ?? "");
    const challenge = challenges.find((c) => c.scheme === "bearer") ?? challenges.find((c) => c.scheme === "basic");
    if (!challenge) {
      throw new MmError(
        "MM_REGISTRY_PROTOCOL",
        `${registry} answered 401 without a usable WWW-Authenticate challenge (${JSON.stringify(wwwAuthenticate)})`,
      );
    }
    this.#challenges.set(registry, challenge);
    // The challenge's scope is used when it is about this repository (it may ask for more,
    // e.g. a registry-wide catalog scope, which a token request must then carry).
    const asked = challenge.params.scope;
    const scope = asked && (!repository || asked.includes(`repository:${repository}:`)) ? asked : undefined;
    const header = await this.#authorize(registry, repository, challenge, stale !== undefined, scope);
    if (header === stale) {
      throw new MmError("MM_REGISTRY_AUTH", `${registry} refused the credentials for ${repository}`);
    }
    return header;
  }

  async #authorize(
    registry: string,
    repository: string,
    c: AuthChallenge,
    refresh: boolean,
    askedScope?: string,
  ): Promise<string> {
    if (c.scheme === "basic") {
      const creds = await this.options.credentials(registry);
      if (!creds) throw new MmError("MM_REGISTRY_AUTH", `${registry} requires a login (HTTP Basic)`);
      return basicAuthorization(creds);
    }
    const realm = c.params.realm;
    if (!realm) throw new MmError("MM_REGISTRY_PROTOCOL", `${registry}'s Bearer challenge has no realm`);
    const scope = repository ? `repository:${repository}:pull` : "";
    const key = `${realm}\n${c.params.service ?? ""}\n${scope}`;
    const cached = this.#tokens.get(key);
    if (!refresh && cached && cached.expiresAt > this.#now()) return `Bearer ${cached.value}`;
    let pending = this.#inflight.get(key);
    if (!pending) {
      pending = this.#fetchToken(registry, realm, c.params.service, askedScope ?? scope).finally(() =>
        this.#inflight.delete(key),
      );
      this.#inflight.set(key, pending);
    }
    const token = await pending;
    this.#tokens.set(key, token);
    return `Bearer ${token.value}`;
  }

  async #fetchToken(registry: string, realm: string, service: string | undefined, scope: string): Promise<CachedToken> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new MmError("MM_REGISTRY_PROTOCOL", `${registry}'s token realm is not a URL: ${JSON.stringify(realm)}`);
    }
    this.options.checkRealm(url, registry);
    if (service) url.searchParams.set("service", service);
    for (const s of scope.split(" ").filter(Boolean)) url.searchParams.append("scope", s);
    const creds = await this.options.credentials(registry);
    const headers: Record<string, string> = { accept: "application/json" };
    if (creds) headers.authorization = basicAuthorization(creds);
    const started = this.#now();
    const res = await this.options.request(url, headers);
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw new MmError(
        "MM_REGISTRY_AUTH",
        creds
          ? `${url.host} refused the credentials for ${registry} (HTTP ${res.status})`
          : `${url.host} refused an anonymous token for ${scope} (HTTP ${res.status}); log in with \`mm login ${registry}\``,
      );
    }
    if (res.status !== 200) {
      await res.body?.cancel();
      throw new MmError(
        "MM_REGISTRY_PROTOCOL",
        `token endpoint ${url.origin}${url.pathname} answered HTTP ${res.status}`,
      );
    }
    const text = await res.text();
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      if (text.length > MAX_AUTH_JSON_BYTES) throw new Error("larger than 1 MiB");
      doc = JSON.parse(text);
    } catch (e) {
      throw new MmError("MM_REGISTRY_PROTOCOL", `token response is not JSON: ${(e as Error).message}`);
    }
    const value = typeof doc?.token === "string" && doc.token ? doc.token : doc?.access_token;
    if (typeof value !== "string" || value === "") {
      throw new MmError("MM_REGISTRY_PROTOCOL", "token response has neither token nor access_token");
    }
    const seconds = typeof doc.expires_in === "number" && doc.expires_in > 0 ? doc.expires_in : DEFAULT_TOKEN_SECONDS;
    return { value, expiresAt: started + Math.max(1_000, seconds * 1000 - EXPIRY_SLACK_MS) };
  }
}
