// The whole of mm's host firewall as one nftables ruleset, built from a plan of the machines
// on the bridge. Pure: host-net.ts applies the text with `nft -f -` in one atomic transaction.
//
// Two tables, both owned by mm and replaced as a whole on every change:
//   bridge mm — layer 2, per TAP: only the machine's own MAC and IPv4 address may leave its
//               port (IP and ARP checked, every other ethertype dropped, like libvirt's
//               clean-traffic), and frames go port to port only between machines of one group.
//   inet mm   — layer 3: masquerade for egress, DNAT for published ports (from outside and
//               from the host itself), per-machine egress policy, nothing routed into the
//               subnet except published ports, and no guest access to the host's own addresses.
// Policy decisions (docs/adr/0006-host-network.md):
//   - Guests reach no service of the host: only replies to connections the host opened, and
//     ICMP echo to the gateway (for diagnosis). Guests use the host's resolvers as DNS, which
//     are reached as egress, not as a host service.
//   - A published port reached from another guest (through a host address) is egress for that
//     guest: its egress policy decides, matched on the address it dialled (before DNAT).
//   - Guest to guest traffic, bridged or routed through the host, needs a common group.

import { MmError } from "@mm/core";
import {
  cidrContains,
  cidrSize,
  formatCidr,
  isLocalUnicastMac,
  parseCidr,
  parseIpv4,
  parseSubnet,
  TAP_PREFIX,
  validateInterfaceName,
} from "./ipam.js";
import { formatPublished, mappingsClash, type Protocol } from "./ports.js";

/** Where one machine may open connections beyond the bridge. */
export type EgressPolicy = "allow" | "deny" | { readonly allow: readonly EgressRule[] };

/** An allowed destination: a CIDR, optionally only some ports (of tcp and udp unless `proto`). */
export interface EgressRule {
  readonly cidr: string;
  readonly proto?: Protocol;
  readonly ports?: readonly number[];
}

export interface MachineNet {
  readonly id: string;
  /** The machine's port on the bridge (its TAP); must start with TAP_PREFIX. */
  readonly tap: string;
  readonly ip: string;
  readonly mac: string;
  /** Machines sharing a group name can reach each other; without one, a machine reaches no guest. */
  readonly group?: string;
  readonly egress: EgressPolicy;
  /** Bytes per second the machine may send and receive, each way (none: no limit). */
  readonly rateBytes?: number;
}

export interface PublishedPort {
  /** A host address, or none for every host address. */
  readonly hostIp?: string;
  readonly hostPort: number;
  readonly proto: Protocol;
  readonly guestIp: string;
  readonly guestPort: number;
}

export interface NetPlan {
  readonly bridge: string;
  readonly subnet: string;
  readonly gateway: string;
  readonly machines: readonly MachineNet[];
  readonly published: readonly PublishedPort[];
}

/** The name of both tables mm owns (`inet mm` and `bridge mm`). */
export const NFT_TABLE = "mm";

const MACHINE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const GROUP = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/** Checks a `--network` group name (Docker's network name rule, at most 64 characters). */
export function validateGroupName(name: string): string {
  if (!GROUP.test(name)) {
    throw new MmError("MM_INVALID_NETWORK", `bad network name ${JSON.stringify(name)}`, {
      hint: "use 1-64 characters: letters, digits, '_', '.', '-', starting with a letter or digit",
    });
  }
  return name;
}

function invalid(detail: string): MmError {
  return new MmError("MM_INVALID_NETWORK", `network plan: ${detail}`, {
    hint: "this is a bug in the caller of @mm/net; please report it",
  });
}

function checkPort(n: number, what: string): void {
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw invalid(`${what} ${n} is not a port`);
}

/** Canonical dotted quad (rejects leading zeros and the like via parseIpv4). */
function canonicalIp(text: string, what: string): number {
  try {
    return parseIpv4(text);
  } catch {
    throw invalid(`${what} ${JSON.stringify(text)} is not an IPv4 address`);
  }
}

/** Checks a plan for what the ruleset relies on; throws MM_INVALID_NETWORK naming the first problem. */
export function validatePlan(plan: NetPlan): void {
  validateInterfaceName(plan.bridge);
  if (plan.bridge.startsWith(TAP_PREFIX)) throw invalid(`bridge ${plan.bridge} uses the TAP prefix ${TAP_PREFIX}`);
  const subnet = parseSubnet(plan.subnet);
  const broadcast = subnet.network + cidrSize(subnet) - 1;
  const gw = canonicalIp(plan.gateway, "gateway");
  if (!cidrContains(subnet, gw) || gw === subnet.network || gw === broadcast) {
    throw invalid(`gateway ${plan.gateway} is not a host address of ${plan.subnet}`);
  }
  const seen = { id: new Set<string>(), tap: new Set<string>(), ip: new Set<number>(), mac: new Set<string>() };
  for (const m of plan.machines) {
    if (!MACHINE_ID.test(m.id)) throw invalid(`machine id ${JSON.stringify(m.id)}`);
    validateInterfaceName(m.tap);
    if (!m.tap.startsWith(TAP_PREFIX)) throw invalid(`TAP ${m.tap} of ${m.id} does not start with ${TAP_PREFIX}`);
    const ip = canonicalIp(m.ip, `address of ${m.id}`);
    if (!cidrContains(subnet, ip) || ip === subnet.network || ip === broadcast || ip === gw) {
      throw invalid(`address ${m.ip} of ${m.id} is not a guest address of ${plan.subnet}`);
    }
    if (!isLocalUnicastMac(m.mac)) throw invalid(`MAC ${m.mac} of ${m.id} is not a locally administered unicast MAC`);
    if (m.group !== undefined && !GROUP.test(m.group)) throw invalid(`group ${JSON.stringify(m.group)} of ${m.id}`);
    if (typeof m.egress === "object") {
      for (const r of m.egress.allow) {
        try {
          parseCidr(r.cidr);
        } catch {
          throw invalid(`egress CIDR ${JSON.stringify(r.cidr)} of ${m.id}`);
        }
        if (r.proto !== undefined && r.proto !== "tcp" && r.proto !== "udp")
          throw invalid(`egress protocol of ${m.id}`);
        if (r.ports !== undefined) {
          if (r.ports.length === 0) throw invalid(`empty egress port list of ${m.id}`);
          for (const p of r.ports) checkPort(p, `egress port of ${m.id}`);
        }
      }
    } else if (m.egress !== "allow" && m.egress !== "deny") {
      throw invalid(`egress policy of ${m.id}`);
    }
    if (m.rateBytes !== undefined && (!Number.isInteger(m.rateBytes) || m.rateBytes < 1024 || m.rateBytes > 2 ** 40)) {
      throw invalid(`rate of ${m.id} (whole bytes per second, at least 1024)`);
    }
    for (const [key, value] of [
      ["id", m.id],
      ["tap", m.tap],
      ["ip", ip],
      ["mac", m.mac],
    ] as const) {
      const set = seen[key] as Set<string | number>;
      if (set.has(value)) throw invalid(`two machines share the ${key} ${m[key]}`);
      set.add(value);
    }
  }
  plan.published.forEach((p, i) => {
    if (p.hostIp !== undefined) canonicalIp(p.hostIp, "published host address");
    checkPort(p.hostPort, "published host port");
    checkPort(p.guestPort, "published guest port");
    if (p.proto !== "tcp" && p.proto !== "udp") throw invalid(`published protocol ${JSON.stringify(p.proto)}`);
    if (!seen.ip.has(canonicalIp(p.guestIp, "published guest address"))) {
      throw invalid(`published port ${p.hostPort}/${p.proto} targets ${p.guestIp}, which no machine has`);
    }
    const clash = plan.published.slice(0, i).find((q) => mappingsClash(q, p));
    if (clash) throw invalid(`${formatPublished(p)} clashes with ${formatPublished(clash)}`);
  });
}

const byIp = (a: MachineNet, b: MachineNet) => parseIpv4(a.ip) - parseIpv4(b.ip);

function publishedOrder(a: PublishedPort, b: PublishedPort): number {
  return a.proto.localeCompare(b.proto) || a.hostPort - b.hostPort || (a.hostIp ?? "").localeCompare(b.hostIp ?? "");
}

/** Groups with at least two members (a lone member has nobody to reach), by name. */
function groupsOf(machines: readonly MachineNet[]): [string, MachineNet[]][] {
  const groups = new Map<string, MachineNet[]>();
  for (const m of machines) if (m.group !== undefined) groups.set(m.group, [...(groups.get(m.group) ?? []), m]);
  return [...groups].filter(([, ms]) => ms.length > 1).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

function list(items: readonly (string | number)[]): string {
  return items.length === 1 ? `${items[0]}` : `{ ${items.join(", ")} }`;
}

/** A quarter second's worth, at least 16 KiB: room for a TCP window's burst. */
const burstOf = (rate: number) => Math.max(16 * 1024, Math.round(rate / 4));

function egressVerdict(m: MachineNet): string {
  if (m.egress === "allow") return "accept";
  if (m.egress === "deny") return "drop";
  return `jump egress_${m.tap}`;
}

/** One allow-list entry, matched on the address and port the guest dialled (before any DNAT). */
function egressRule(r: EgressRule): string {
  const dst = `ct original ip daddr ${formatCidr(parseCidr(r.cidr)).replace(/\/32$/, "")}`;
  if (r.ports === undefined) return r.proto ? `${dst} meta l4proto ${r.proto} accept` : `${dst} accept`;
  const ports = [...new Set(r.ports)].sort((a, b) => a - b);
  return `${dst} meta l4proto ${r.proto ?? "{ tcp, udp }"} ct original proto-dst ${list(ports)} accept`;
}

function set(name: string, type: string, elements: readonly string[], comment?: string): string[] {
  return [
    `\tset ${name} {`,
    `\t\ttype ${type}`,
    ...(comment ? [`\t\tcomment "${comment}"`] : []),
    ...(elements.length ? [`\t\telements = { ${elements.join(", ")} }`] : []),
    "\t}",
  ];
}

function chain(name: string, body: readonly string[]): string[] {
  return [`\tchain ${name} {`, ...body.map((l) => `\t\t${l}`), "\t}"];
}

/**
 * The complete ruleset for `nft -f -`: deletes both mm tables (creating them first, so the
 * delete cannot fail) and defines them anew, all in one transaction. Deterministic: the same
 * plan in any order gives the same text.
 */
export function buildRuleset(plan: NetPlan): string {
  validatePlan(plan);
  const br = `"${plan.bridge}"`;
  const subnet = plan.subnet;
  const machines = [...plan.machines].sort(byIp);
  const published = [...plan.published].sort(publishedOrder);
  const groups = groupsOf(machines);
  const custom = machines.filter((m) => typeof m.egress === "object");

  const inet: string[][] = [
    set(
      "published",
      "ipv4_addr . inet_proto . inet_service",
      published.map((p) => `${p.guestIp} . ${p.proto} . ${p.guestPort}`),
    ),
    ...groups.map(([name, ms], i) =>
      set(
        `group_${i}`,
        "ipv4_addr",
        ms.map((m) => m.ip),
        `group ${name}`,
      ),
    ),
    // Before conntrack: nothing from the bridge claims an outside source or a loopback
    // destination (mm enables route_localnet on the bridge for host-to-published-port).
    chain("guard", [
      "type filter hook prerouting priority raw; policy accept;",
      `iifname ${br} ip saddr != ${subnet} drop`,
      `iifname ${br} ip daddr 127.0.0.0/8 drop`,
      `iifname ${br} meta nfproto ipv6 drop`,
    ]),
    chain("prerouting", [
      "type nat hook prerouting priority dstnat; policy accept;",
      ...(published.length ? ["meta nfproto ipv4 fib daddr type local jump published_ports"] : []),
    ]),
    chain("output", [
      "type nat hook output priority -100; policy accept;",
      ...(published.length ? ["meta nfproto ipv4 fib daddr type local jump published_ports"] : []),
    ]),
    ...(published.length
      ? [
          chain(
            "published_ports",
            published.map(
              (p) =>
                `${p.hostIp ? `ip daddr ${p.hostIp} ` : ""}${p.proto} dport ${p.hostPort} dnat ip to ${p.guestIp}:${p.guestPort}`,
            ),
          ),
        ]
      : []),
    chain("postrouting", [
      "type nat hook postrouting priority srcnat; policy accept;",
      `ip saddr ${subnet} oifname != ${br} masquerade`,
      // A guest reaching a published port through a host address: the reply must come back
      // through the host to be un-DNATed, so the target sees the gateway as the source.
      `oifname ${br} ip saddr ${subnet} ct status dnat masquerade`,
      // The host itself reaching a published port on 127.0.0.1.
      `oifname ${br} ip saddr 127.0.0.0/8 masquerade`,
    ]),
    chain("forward", [
      "type filter hook forward priority filter; policy accept;",
      // Throughput limits (policing: what is over the rate is dropped, and TCP backs off).
      ...machines
        .filter((m) => m.rateBytes !== undefined)
        .flatMap((m) => [
          `ip saddr ${m.ip} limit rate over ${m.rateBytes} bytes/second burst ${burstOf(m.rateBytes as number)} bytes drop`,
          `ip daddr ${m.ip} limit rate over ${m.rateBytes} bytes/second burst ${burstOf(m.rateBytes as number)} bytes drop`,
        ]),
      // Every packet a guest originates is judged, established or not: a conntrack entry
      // left by an earlier machine with the same address must not carry a new one's traffic.
      `iifname ${br} jump from_guests`,
      "ct state established,related accept",
      `oifname ${br} jump to_guests`,
    ]),
    chain("from_guests", [
      // The guest answering a connection opened towards it (a published port, the host).
      "ct direction reply accept",
      "ct status dnat jump egress",
      `oifname ${br} jump between_guests`,
      "jump egress",
    ]),
    chain("between_guests", [...groups.map((_, i) => `ip saddr @group_${i} ip daddr @group_${i} accept`), "drop"]),
    chain("egress", [
      ...(machines.length
        ? [`ip saddr vmap { ${machines.map((m) => `${m.ip} : ${egressVerdict(m)}`).join(", ")} }`]
        : []),
      "drop",
    ]),
    ...custom.map((m) =>
      chain(`egress_${m.tap}`, [
        `comment "machine ${m.id}"`,
        ...(typeof m.egress === "object" ? m.egress.allow.map(egressRule) : []),
        "drop",
      ]),
    ),
    chain("to_guests", ["ct status dnat ip daddr . meta l4proto . th dport @published accept", "drop"]),
    chain("input", ["type filter hook input priority filter; policy accept;", `iifname ${br} jump guest_to_host`]),
    chain("guest_to_host", [
      "ct state established,related accept",
      `ip daddr ${plan.gateway} icmp type echo-request accept`,
      "drop",
    ]),
  ];

  const bridge: string[][] = [
    ...groups.map(([name, ms], i) =>
      set(
        `group_${i}`,
        "ifname",
        ms.map((m) => `"${m.tap}"`),
        `group ${name}`,
      ),
    ),
    chain("prerouting", [
      "type filter hook prerouting priority filter; policy accept;",
      ...(machines.length
        ? [`iifname vmap { ${machines.map((m) => `"${m.tap}" : jump port_${m.tap}`).join(", ")} }`]
        : []),
      // A port mm did not plan (yet): nothing passes until the machine is in the ruleset.
      `iifname "${TAP_PREFIX}*" drop`,
    ]),
    ...machines.map((m) =>
      chain(`port_${m.tap}`, [
        `comment "machine ${m.id}"`,
        `ether saddr != ${m.mac} drop`,
        "arp htype != 1 drop",
        "arp ptype != ip drop",
        "arp hlen != 6 drop",
        "arp plen != 4 drop",
        `arp saddr ether != ${m.mac} drop`,
        `arp saddr ip != ${m.ip} drop`,
        `ip saddr != ${m.ip} drop`,
        "ether type { ip, arp } accept",
        "drop",
      ]),
    ),
    chain("forward", [
      "type filter hook forward priority filter; policy accept;",
      ...groups.map((_, i) => `iifname @group_${i} oifname @group_${i} accept`),
      `iifname "${TAP_PREFIX}*" drop`,
      `oifname "${TAP_PREFIX}*" drop`,
    ]),
  ];

  const table = (family: string, parts: string[][]) =>
    [`table ${family} ${NFT_TABLE} {`, parts.map((p) => p.join("\n")).join("\n\n"), "}"].join("\n");
  return [
    "# mm's host firewall (generated by @mm/net from the machines on the bridge; replaced as a whole)",
    removalRuleset().trimEnd(),
    "",
    table("inet", inet),
    "",
    table("bridge", bridge),
    "",
  ].join("\n");
}

/** Deletes both mm tables if present, for `nft -f -` (creating them first makes the delete safe). */
export function removalRuleset(): string {
  return [
    `add table inet ${NFT_TABLE}`,
    `delete table inet ${NFT_TABLE}`,
    `add table bridge ${NFT_TABLE}`,
    `delete table bridge ${NFT_TABLE}`,
    "",
  ].join("\n");
}
