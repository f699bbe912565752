// IPv4 address management for the machines' bridge: CIDR arithmetic, the default subnet
// choice, address allocation, and the names and MACs derived from a machine id. Pure.

import { createHash } from "node:crypto";
import { MmError } from "@mm/core";

/** An IPv4 prefix; `network` is the address as an unsigned 32-bit number with host bits zero. */
export interface Cidr {
  readonly network: number;
  readonly prefix: number;
}

/** The bridge mm creates unless configured otherwise. */
export const DEFAULT_BRIDGE = "mm0";
/** Every TAP mm creates starts with this; the firewall treats any other port on its bridge as foreign. */
export const TAP_PREFIX = "mmt";
/** Linux's IFNAMSIZ is 16 including the terminating NUL. */
export const MAX_IFNAME = 15;

/**
 * Tried in order for the default subnet. 10.88/16 first (as Podman does), then neighbours and
 * the top of 172.16/12, which home and office networks rarely use; after these, every other
 * 10.N/16 and 172.16-31/16 is tried before giving up.
 */
export const DEFAULT_SUBNET_CANDIDATES: readonly string[] = [
  "10.88.0.0/16",
  "10.89.0.0/16",
  "10.90.0.0/16",
  "10.91.0.0/16",
  "172.30.0.0/16",
  "172.31.0.0/16",
];

const OCTET = /^(0|[1-9]\d{0,2})$/;
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

/** Parses dotted-quad IPv4 (no leading zeros, which some tools read as octal). */
export function parseIpv4(text: string): number {
  const parts = text.split(".");
  if (parts.length !== 4 || !parts.every((p) => OCTET.test(p) && Number(p) <= 255)) {
    throw new MmError("MM_INVALID_NETWORK", `not an IPv4 address: ${JSON.stringify(text)}`);
  }
  return parts.reduce((n, p) => n * 256 + Number(p), 0);
}

export function isIpv4(text: string): boolean {
  try {
    parseIpv4(text);
    return true;
  } catch {
    return false;
  }
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/**
 * Parses "a.b.c.d/N" (or a bare address, read as /32). Host bits are cleared unless `strict`,
 * in which case they must already be zero (a configured subnet must be written canonically).
 */
export function parseCidr(text: string, options: { strict?: boolean } = {}): Cidr {
  const slash = text.indexOf("/");
  const addr = parseIpv4(slash < 0 ? text : text.slice(0, slash));
  const prefixText = slash < 0 ? "32" : text.slice(slash + 1);
  if (!/^(0|[1-9]\d?)$/.test(prefixText) || Number(prefixText) > 32) {
    throw new MmError("MM_INVALID_NETWORK", `bad prefix length in ${JSON.stringify(text)}`);
  }
  const prefix = Number(prefixText);
  const network = (addr & maskOf(prefix)) >>> 0;
  if (options.strict && network !== addr) {
    throw new MmError(
      "MM_INVALID_NETWORK",
      `${text} has host bits set (did you mean ${formatCidr({ network, prefix })}?)`,
    );
  }
  return { network, prefix };
}

export function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.network)}/${c.prefix}`;
}

export function cidrSize(c: Cidr): number {
  return 2 ** (32 - c.prefix);
}

export function cidrContains(c: Cidr, address: number): boolean {
  return (address & maskOf(c.prefix)) >>> 0 === c.network;
}

export function cidrsOverlap(a: Cidr, b: Cidr): boolean {
  const shorter = Math.min(a.prefix, b.prefix);
  const mask = maskOf(shorter);
  return (a.network & mask) >>> 0 === (b.network & mask) >>> 0;
}

/**
 * A subnet machines can live in: canonical IPv4 CIDR with a prefix from 8 to 30 (a /31 or /32
 * has no room for a gateway and a guest).
 */
export function parseSubnet(text: string): Cidr {
  const c = parseCidr(text, { strict: true });
  if (c.prefix < 8 || c.prefix > 30) {
    throw new MmError("MM_INVALID_NETWORK", `subnet ${text} must have a prefix length from 8 to 30`);
  }
  return c;
}

/**
 * Picks the machines' subnet: the first candidate that overlaps none of `existing` (the host's
 * routes and addresses, as CIDR strings; IPv6 entries and default routes are ignored).
 */
export function chooseSubnet(
  existing: readonly string[],
  candidates: readonly string[] = DEFAULT_SUBNET_CANDIDATES,
): string {
  const taken: Cidr[] = [];
  for (const text of existing) {
    if (text.includes(":")) continue;
    const c = parseCidr(text);
    if (c.prefix > 0) taken.push(c);
  }
  const fallback: string[] = [];
  for (let n = 0; n < 256; n++) fallback.push(`10.${n}.0.0/16`);
  for (let n = 16; n < 32; n++) fallback.push(`172.${n}.0.0/16`);
  for (const text of [...candidates, ...fallback]) {
    const c = parseSubnet(text);
    if (!taken.some((t) => cidrsOverlap(t, c))) return formatCidr(c);
  }
  throw new MmError("MM_INVALID_NETWORK", "every candidate subnet overlaps a host route", {
    hint: "configure the machines' subnet explicitly with a range this host does not use",
  });
}

/** Returns the subnet's first route that overlaps it, if any (to reject a configured subnet). */
export function overlappingRoute(subnet: string, existing: readonly string[]): string | undefined {
  const c = parseSubnet(subnet);
  return existing.find((text) => {
    if (text.includes(":")) return false;
    const r = parseCidr(text);
    return r.prefix > 0 && cidrsOverlap(r, c);
  });
}

/** The host's address on the bridge: the subnet's first host address. */
export function gatewayOf(subnet: string): string {
  return formatIpv4(parseSubnet(subnet).network + 1);
}

/** The gateway with the subnet's prefix, as `ip addr add` takes it (e.g. 10.88.0.1/16). */
export function gatewayCidrOf(subnet: string): string {
  return `${gatewayOf(subnet)}/${parseSubnet(subnet).prefix}`;
}

/**
 * The lowest free guest address in `subnet`, skipping the network address, the gateway and the
 * broadcast address. With `preferred`, that address or an error: MM_ADDRESS_IN_USE when taken,
 * MM_INVALID_NETWORK when it is not a guest address of the subnet. MM_ADDRESS_EXHAUSTED when full.
 * `used` holds dotted-quad strings; anything else in it is ignored.
 */
export function allocateAddress(subnet: string, used: ReadonlySet<string>, preferred?: string): string {
  const c = parseSubnet(subnet);
  const first = c.network + 2;
  const last = c.network + cidrSize(c) - 2;
  const taken = new Set<number>();
  for (const u of used) if (isIpv4(u)) taken.add(parseIpv4(u));
  if (preferred !== undefined) {
    const p = parseIpv4(preferred);
    if (p < first || p > last) {
      throw new MmError("MM_INVALID_NETWORK", `${preferred} is not a guest address of ${subnet}`, {
        hint: `choose an address from ${formatIpv4(first)} to ${formatIpv4(last)}`,
      });
    }
    if (taken.has(p)) throw new MmError("MM_ADDRESS_IN_USE", preferred);
    return formatIpv4(p);
  }
  for (let a = first; a <= last; a++) if (!taken.has(a)) return formatIpv4(a);
  throw new MmError("MM_ADDRESS_EXHAUSTED", `${subnet} has ${last - first + 1} guest addresses, all in use`);
}

function digest(machineId: string): Buffer {
  return createHash("sha256").update(machineId).digest();
}

/**
 * The machine's MAC: 02 (locally administered, unicast) followed by 40 bits of sha256(id).
 * Stable across restarts, forks get their own id and so their own MAC.
 */
export function macFor(machineId: string): string {
  const d = digest(machineId);
  return ["02", ...[...d.subarray(0, 5)].map((b) => b.toString(16).padStart(2, "0"))].join(":");
}

/** The machine's TAP device: "mmt" + 12 hex digits of sha256(id), 15 characters (IFNAMSIZ - 1). */
export function tapName(machineId: string): string {
  return `${TAP_PREFIX}${digest(machineId)
    .toString("hex")
    .slice(0, MAX_IFNAME - TAP_PREFIX.length)}`;
}

/** Checks an interface name as the kernel and nft accept it (and as safe to quote in a ruleset). */
export function validateInterfaceName(name: string): string {
  if (!IFNAME.test(name) || name === "." || name === "..") {
    throw new MmError("MM_INVALID_NETWORK", `bad interface name ${JSON.stringify(name)}`, {
      hint: "use 1-15 characters: letters, digits, '_', '.', '-'",
    });
  }
  return name;
}

/** The bridge's name: the configured one (validated) or "mm0". */
export function bridgeName(configured?: string): string {
  if (configured === undefined || configured === "") return DEFAULT_BRIDGE;
  validateInterfaceName(configured);
  if (configured.startsWith(TAP_PREFIX)) {
    throw new MmError("MM_INVALID_NETWORK", `bridge name ${configured} must not start with ${TAP_PREFIX}`, {
      hint: `names starting with ${TAP_PREFIX} are reserved for machines' TAP devices`,
    });
  }
  return configured;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function isMac(text: string): boolean {
  return MAC.test(text);
}

/** True for a unicast MAC with the locally-administered bit set (the range mm assigns from). */
export function isLocalUnicastMac(text: string): boolean {
  if (!isMac(text)) return false;
  const first = Number.parseInt(text.slice(0, 2), 16);
  return (first & 0b11) === 0b10;
}
