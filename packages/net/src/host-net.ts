// The thin I/O shell over iproute2 and nftables: bridge, TAP devices, forwarding, ruleset.
// Everything acts on the current network namespace (tests run it under `ip netns exec`).
// Each step measures, acts, then verifies, so running it twice, or after a crash, converges.

import { spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { MmError } from "@mm/core";
import { parseCidr, parseSubnet, TAP_PREFIX, validateInterfaceName } from "./ipam.js";
import { buildRuleset, type NetPlan, removalRuleset } from "./nft-plan.js";
import type { PortMapping } from "./ports.js";

const PACKAGES: Record<string, string> = { ip: "iproute2", nft: "nftables" };
const NOT_FOUND = /does not exist|Cannot find device|No such device/;
const DENIED = /Operation not permitted|Permission denied|EPERM|EACCES/;

class ToolFailure extends Error {
  constructor(
    readonly stderr: string,
    message: string,
  ) {
    super(message);
  }
}

/** Runs `ip` or `nft` with optional stdin; resolves with stdout, rejects with a ToolFailure or MmError. */
function run(tool: "ip" | "nft", args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") {
        reject(new MmError("MM_TOOL_MISSING", `${tool} (Debian package ${PACKAGES[tool]})`, { cause: e }));
      } else reject(new MmError("MM_NET_SETUP", `${tool} ${args.join(" ")}: ${e.message}`, { cause: e }));
    });
    child.stdin.on("error", () => {}); // the exit status tells what went wrong
    child.on("close", (code) => {
      const stderr = Buffer.concat(err).toString().trim();
      if (code === 0) return resolve(Buffer.concat(out).toString());
      reject(new ToolFailure(stderr, `${tool} ${args.join(" ")}: ${stderr || `exit status ${code}`}`));
    });
    child.stdin.end(input ?? "");
  });
}

/** Maps a tool failure to the error the user sees. */
function failed(e: unknown): MmError {
  if (e instanceof MmError) return e;
  if (e instanceof ToolFailure && DENIED.test(e.stderr)) {
    return new MmError("MM_NET_PERMISSION", `${e.message} (needs root or CAP_NET_ADMIN)`, { cause: e });
  }
  return new MmError("MM_NET_SETUP", e instanceof Error ? e.message : String(e), { cause: e });
}

async function act(tool: "ip" | "nft", args: readonly string[], input?: string): Promise<string> {
  try {
    return await run(tool, args, input);
  } catch (e) {
    throw failed(e);
  }
}

/** What `ip -json -details link show` says about one interface (the fields mm reads). */
export interface LinkInfo {
  readonly ifname: string;
  readonly flags: readonly string[];
  readonly mtu: number;
  readonly master?: string;
  readonly address?: string;
  readonly linkinfo?: { readonly info_kind?: string; readonly info_data?: { readonly type?: string } };
}

/** The interface, or undefined if there is none of that name. */
export async function linkInfo(name: string): Promise<LinkInfo | undefined> {
  validateInterfaceName(name);
  try {
    const [link] = JSON.parse(await run("ip", ["-json", "-details", "link", "show", "dev", name])) as LinkInfo[];
    return link;
  } catch (e) {
    if (e instanceof ToolFailure && NOT_FOUND.test(e.stderr)) return undefined;
    throw failed(e);
  }
}

async function ipv4Addresses(name: string): Promise<string[]> {
  const rows = JSON.parse(await act("ip", ["-json", "-4", "addr", "show", "dev", name])) as {
    addr_info?: { local: string; prefixlen: number }[];
  }[];
  return (rows[0]?.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`);
}

/** Tolerates the loser of a creation race: "File exists" means another `mm run` made it first. */
async function create(args: readonly string[]): Promise<boolean> {
  try {
    await run("ip", args);
    return true;
  } catch (e) {
    if (e instanceof ToolFailure && /File exists/.test(e.stderr)) return false;
    throw failed(e);
  }
}

/**
 * Makes `name` a bridge that is up with exactly the IPv4 address `gatewayCidr` (e.g.
 * 10.88.0.1/16): creates it if missing, replaces stale IPv4 addresses (mm owns the bridge),
 * refuses to touch an interface of that name that is not a bridge.
 */
export async function ensureBridge(name: string, gatewayCidr: string): Promise<{ created: boolean }> {
  parseCidr(gatewayCidr);
  let link = await linkInfo(name);
  let created = false;
  if (!link) created = await create(["link", "add", "name", name, "type", "bridge"]);
  link = await linkInfo(name);
  if (link?.linkinfo?.info_kind !== "bridge") {
    throw new MmError("MM_NET_SETUP", `${name} exists and is not a bridge`, {
      hint: "rename or remove that interface, or configure another bridge name for mm",
    });
  }
  const addrs = await ipv4Addresses(name);
  for (const a of addrs) if (a !== gatewayCidr) await act("ip", ["addr", "del", a, "dev", name]);
  if (!addrs.includes(gatewayCidr)) await create(["addr", "add", gatewayCidr, "dev", name]);
  if (!link.flags.includes("UP")) await act("ip", ["link", "set", "dev", name, "up"]);
  const after = await linkInfo(name);
  const nowAddrs = await ipv4Addresses(name);
  if (!after?.flags.includes("UP") || nowAddrs.length !== 1 || nowAddrs[0] !== gatewayCidr) {
    throw new MmError(
      "MM_NET_SETUP",
      `bridge ${name} did not come up with ${gatewayCidr} (has ${nowAddrs.join(", ")})`,
    );
  }
  return { created };
}

export interface TapOptions {
  readonly mtu?: number;
  /** The uid allowed to open the TAP (QEMU after it dropped privileges). */
  readonly user?: number;
}

/**
 * Creates the TAP device `name` (QEMU opens it with `-netdev tap,ifname=NAME,script=no,
 * downscript=no`), enslaves it to `bridge` and sets it up. An existing TAP of that name is
 * reused; anything else of that name is an error.
 */
export async function createTap(name: string, bridge: string, options: TapOptions = {}): Promise<{ created: boolean }> {
  validateInterfaceName(name);
  let link = await linkInfo(name);
  let created = false;
  if (!link) {
    const user = options.user === undefined ? [] : ["user", String(options.user)];
    created = await create(["tuntap", "add", "dev", name, "mode", "tap", ...user]);
    link = await linkInfo(name);
  }
  if (link?.linkinfo?.info_kind !== "tun" || link.linkinfo.info_data?.type !== "tap") {
    throw new MmError("MM_NET_SETUP", `${name} exists and is not a TAP device`);
  }
  const mtu = options.mtu === undefined ? [] : ["mtu", String(options.mtu)];
  if (link.master !== bridge || (options.mtu !== undefined && link.mtu !== options.mtu) || !link.flags.includes("UP")) {
    await act("ip", ["link", "set", "dev", name, "master", bridge, ...mtu, "up"]);
  }
  const after = await linkInfo(name);
  if (after?.master !== bridge || !after.flags.includes("UP")) {
    throw new MmError("MM_NET_SETUP", `TAP ${name} is not up on ${bridge}`);
  }
  return { created };
}

/** Deletes an interface if it exists; true if it did. */
export async function deleteLink(name: string): Promise<boolean> {
  validateInterfaceName(name);
  try {
    await run("ip", ["link", "del", "dev", name]);
    return true;
  } catch (e) {
    if (e instanceof ToolFailure && NOT_FOUND.test(e.stderr)) return false;
    throw failed(e);
  }
}

export const deleteTap = deleteLink;
export const deleteBridge = deleteLink;

/** The TAP devices mm created (by name prefix) in this namespace, for `mm doctor` to compare with its records. */
export async function listTaps(): Promise<string[]> {
  const links = JSON.parse(await act("ip", ["-json", "link", "show"])) as { ifname: string }[];
  return links.map((l) => l.ifname).filter((n) => n.startsWith(TAP_PREFIX));
}

/** Applies a ruleset from nft-plan.ts in one transaction (all or nothing). */
export async function applyRuleset(text: string): Promise<void> {
  await act("nft", ["-f", "-"], text);
}

/** Checks a ruleset against the kernel without applying it (`nft -c`). */
export async function checkRuleset(text: string): Promise<void> {
  await act("nft", ["-c", "-f", "-"], text);
}

/** Removes mm's nftables tables (no error if they are absent). */
export async function removeRuleset(): Promise<void> {
  await applyRuleset(removalRuleset());
}

/** The text of mm's tables as nft lists them ("" when absent), for `mm doctor` and tests. */
export async function listRuleset(): Promise<string> {
  const out = await act("nft", ["list", "tables"]);
  const ours = out.split("\n").filter((l) => /^table (inet|bridge) mm$/.test(l.trim()));
  const parts = await Promise.all(ours.map((l) => act("nft", ["list", ...l.trim().split(" ")])));
  return parts.join("");
}

/**
 * Removes everything a plan put on the host: the machines' TAPs, mm's tables and the bridge.
 * Idempotent; returns what it removed, for `mm doctor` to report.
 */
export async function removeAll(plan: Pick<NetPlan, "bridge" | "machines">): Promise<string[]> {
  const removed: string[] = [];
  for (const m of plan.machines) if (await deleteLink(m.tap)) removed.push(`tap ${m.tap}`);
  if ((await listRuleset()) !== "") {
    await removeRuleset();
    removed.push("nftables tables inet mm and bridge mm");
  }
  if (await deleteLink(plan.bridge)) removed.push(`bridge ${plan.bridge}`);
  return removed;
}

/**
 * The IPv4 prefixes this namespace routes or holds addresses in (all tables; default routes
 * left out), for chooseSubnet. Routes through `exceptDevice` (mm's own bridge) are left out.
 */
export async function hostRoutes(options: { exceptDevice?: string } = {}): Promise<string[]> {
  const routes = JSON.parse(await act("ip", ["-json", "-4", "route", "show", "table", "all"])) as {
    dst: string;
    dev?: string;
  }[];
  const addrs = JSON.parse(await act("ip", ["-json", "-4", "addr", "show"])) as {
    ifname: string;
    addr_info?: { local: string; prefixlen: number }[];
  }[];
  const out = new Set<string>();
  for (const r of routes) {
    if (r.dst === "default" || r.dev === options.exceptDevice) continue;
    try {
      const c = parseCidr(r.dst);
      if (c.prefix > 0) out.add(r.dst.includes("/") ? r.dst : `${r.dst}/32`);
    } catch {
      // not an IPv4 prefix (e.g. a multicast or unreachable entry without one)
    }
  }
  for (const link of addrs) {
    if (link.ifname === options.exceptDevice) continue;
    for (const a of link.addr_info ?? []) out.add(`${a.local}/${a.prefixlen}`);
  }
  return [...out].sort();
}

async function writeSysctl(path: string, value: string): Promise<void> {
  try {
    if ((await readFile(path, "utf8")).trim() === value) return;
    await writeFile(path, value);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM" || code === "EROFS") {
      throw new MmError("MM_NET_PERMISSION", `cannot write ${path} (needs root or CAP_NET_ADMIN)`, { cause: e });
    }
    throw new MmError("MM_NET_SETUP", `writing ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Turns on IPv4 forwarding in this namespace, and route_localnet on the bridge so that the host
 * reaches published ports on 127.0.0.1 (the ruleset drops loopback-addressed packets arriving
 * from the bridge, which is what route_localnet would otherwise let through).
 */
export async function enableForwarding(bridge: string): Promise<void> {
  validateInterfaceName(bridge);
  await writeSysctl("/proc/sys/net/ipv4/ip_forward", "1");
  await writeSysctl(`/proc/sys/net/ipv4/conf/${bridge}/route_localnet`, "1");
}

/**
 * Brings the host side of a plan into being: the bridge with the gateway address, forwarding,
 * and the ruleset. The plan is checked before anything is touched. Machines' TAPs are
 * separate (createTap), and can come before or after: an unplanned TAP passes nothing.
 */
export async function ensureHostNetwork(plan: NetPlan): Promise<void> {
  const ruleset = buildRuleset(plan);
  await ensureBridge(plan.bridge, `${plan.gateway}/${parseSubnet(plan.subnet).prefix}`);
  await enableForwarding(plan.bridge);
  await applyRuleset(ruleset);
}

/**
 * Whether a host socket already holds the mapping's port (a published port would shadow it):
 * tries to bind it, and lets go at once.
 */
export function hostPortFree(m: Pick<PortMapping, "hostIp" | "hostPort" | "proto">): Promise<boolean> {
  const host = m.hostIp ?? "0.0.0.0";
  return new Promise((resolve, reject) => {
    const settle = (e?: NodeJS.ErrnoException) => {
      if (!e) return resolve(true);
      if (e.code === "EADDRINUSE") return resolve(false);
      if (e.code === "EADDRNOTAVAIL") {
        return reject(new MmError("MM_INVALID_PORT", `${host} is not an address of this host`, { cause: e }));
      }
      reject(new MmError("MM_NET_SETUP", `checking port ${host}:${m.hostPort}/${m.proto}: ${e.message}`, { cause: e }));
    };
    if (m.proto === "udp") {
      const s = createSocket("udp4");
      s.once("error", (e) => {
        s.close();
        settle(e);
      });
      s.bind({ address: host, port: m.hostPort, exclusive: true }, () => s.close(() => settle()));
    } else {
      const s = createServer();
      s.once("error", settle);
      s.listen({ host, port: m.hostPort, exclusive: true }, () => s.close(() => settle()));
    }
  });
}
