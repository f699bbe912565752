// A machine's place on the host network: a stable lease (address, MAC, TAP name) in the
// state store, the TAP on mm's bridge while it runs, and mm's whole nftables ruleset,
// rebuilt from the store and applied atomically under the store's write lock, so
// concurrent `mm run`s never see each other's half-applied rules.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { isActive, MmError, type NetworkIdentity, type NetworkSpec } from "@mm/core";
import {
  allocateAddress,
  bridgeName,
  buildRuleset,
  chooseSubnet,
  createTap,
  deleteTap,
  enableForwarding,
  ensureBridge,
  gatewayCidrOf,
  gatewayOf,
  hostRoutes,
  listTaps,
  macFor,
  type NetPlan,
  parseCidr,
  tapName,
} from "@mm/net";
import type { Lease, MachineRecord, Store } from "./store.js";

export { checkPortConflicts, formatPortLine, formatPublishedList, parsePublish } from "@mm/net";

/** Parses `--egress`: allow, deny, or a comma list of CIDR[:port[/proto]] entries. */
export function parseEgress(text: string): NetworkSpec["egress"] {
  if (text === "allow" || text === "deny") return text;
  const allow = text.split(",").map((item) => {
    const m = /^(\d+\.\d+\.\d+\.\d+(?:\/\d+)?)(?::(\d+)(?:\/(tcp|udp))?)?$/.exec(item.trim());
    if (!m)
      throw new MmError("MM_INVALID_NETWORK", `--egress entry "${item}"`, {
        hint: "use allow, deny, or CIDR[:port[/tcp|udp]],...",
      });
    const cidr = (m[1] as string).includes("/") ? (m[1] as string) : `${m[1]}/32`;
    parseCidr(cidr);
    return { cidr, ...(m[2] && { ports: [Number(m[2])] }), ...(m[3] && { proto: m[3] as "tcp" | "udp" }) };
  });
  return { allow };
}

export const NO_NETWORK: NetworkSpec = { mode: "none", egress: "allow", publish: [] };

export function networkOf(rec: MachineRecord): NetworkSpec {
  return rec.spec.network ?? NO_NETWORK;
}

/** The host's resolvers, minus loopback ones (127.0.0.53 means nothing inside a guest). */
export function hostResolvers(resolvConf: string): string[] {
  return [...resolvConf.matchAll(/^\s*nameserver\s+(\S+)/gm)]
    .map((m) => m[1] as string)
    .filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a) && !a.startsWith("127."))
    .slice(0, 3);
}

export interface HostNetworkConfig {
  readonly bridge: string;
  readonly subnet: string;
}

export class HostNetwork {
  constructor(
    private readonly store: Store,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  /** The bridge and subnet, chosen once per state root (a /16 no host route overlaps) and kept. */
  async config(): Promise<HostNetworkConfig> {
    const bridge = bridgeName(this.env.MM_BRIDGE || this.store.setting("bridge") || undefined);
    let subnet = this.env.MM_SUBNET || this.store.setting("subnet");
    if (!subnet) subnet = chooseSubnet(await hostRoutes({ exceptDevice: bridge }));
    this.store.exclusive(() => {
      if (!this.store.setting("subnet")) this.store.setSetting("subnet", subnet as string);
      if (!this.store.setting("bridge")) this.store.setSetting("bridge", bridge);
    });
    return { bridge, subnet: this.store.setting("subnet") as string };
  }

  /** The machine's lease, allocated on first use in a transaction and kept until `rm`. */
  lease(machineId: string, subnet: string): Lease {
    return this.store.exclusive(() => {
      const existing = this.store.lease(machineId);
      if (existing) return existing;
      const used = new Set(this.store.leases().map((l) => l.ip));
      const lease = {
        machineId,
        ip: allocateAddress(subnet, used),
        mac: macFor(machineId),
        tap: tapName(machineId),
        subnet,
      };
      this.store.addLease(lease);
      return lease;
    });
  }

  /** Bridge, forwarding and the machine's TAP; then the ruleset including it. */
  async attach(
    rec: MachineRecord,
    hostname: string,
    tapUser?: number,
  ): Promise<{ lease: Lease; identity: NetworkIdentity }> {
    const cfg = await this.config();
    const lease = this.lease(rec.id, cfg.subnet);
    await ensureBridge(cfg.bridge, gatewayCidrOf(cfg.subnet));
    await enableForwarding(cfg.bridge);
    await createTap(lease.tap, cfg.bridge, tapUser === undefined ? {} : { user: tapUser });
    await this.applyRules(cfg, rec.id);
    const prefix = parseCidr(cfg.subnet).prefix;
    const net = networkOf(rec);
    const dns = net.dns ?? hostResolvers(readResolvConf());
    return {
      lease,
      identity: {
        address: `${lease.ip}/${prefix}`,
        gateway: gatewayOf(cfg.subnet),
        dns,
        hosts: [`${lease.ip} ${hostname}`],
      },
    };
  }

  /**
   * Finds what mm left on the host network without a running machine behind it (TAPs of
   * machines that died with their supervisor) and, with `fix`, removes it and rebuilds
   * the ruleset from the store. Returns what it found (or removed).
   */
  async leftovers(fix: boolean): Promise<string[]> {
    const live = new Set(
      this.store
        .list()
        .filter((r) => isActive(r.state))
        .flatMap((r) => {
          const l = this.store.lease(r.id);
          return l ? [l.tap] : [];
        }),
    );
    const stray = (await listTaps()).filter((t) => !live.has(t));
    if (fix) {
      for (const t of stray) await deleteTap(t).catch(() => false);
      if (this.store.setting("subnet")) await this.applyRules(await this.config());
    }
    return stray.map((t) => `tap ${t}`);
  }

  /** Removes the TAP and the machine's rules (its lease stays: same address next boot). */
  async detach(rec: MachineRecord): Promise<void> {
    const lease = this.store.lease(rec.id);
    if (!lease) return;
    const cfg = await this.config();
    await deleteTap(lease.tap).catch(() => false);
    await this.applyRules(cfg, undefined, rec.id);
  }

  /**
   * Rebuilds mm's whole ruleset from the store (the machines that run, plus `including`)
   * and applies it while holding the store's write lock, so that two supervisors never
   * apply plans built from different views of the machines.
   */
  private async applyRules(cfg: HostNetworkConfig, including?: string, excluding?: string): Promise<void> {
    this.store.exclusive(() => applyRulesetSync(buildRuleset(this.plan(cfg, including, excluding))));
  }

  private plan(cfg: HostNetworkConfig, including?: string, excluding?: string): NetPlan {
    const leases = new Map(this.store.leases().map((l) => [l.machineId, l]));
    const machines = this.store
      .list()
      .filter((r) => r.id !== excluding && (r.id === including || isActive(r.state)) && networkOf(r).mode === "bridge");
    const plan: NetPlan = {
      bridge: cfg.bridge,
      subnet: cfg.subnet,
      gateway: gatewayOf(cfg.subnet),
      machines: machines.flatMap((r) => {
        const l = leases.get(r.id);
        const n = networkOf(r);
        return l
          ? [
              {
                id: r.id,
                tap: l.tap,
                ip: l.ip,
                mac: l.mac,
                egress: n.egress,
                ...(n.group && { group: n.group }),
                ...(r.spec.limits?.netBps !== undefined && { rateBytes: r.spec.limits.netBps }),
              },
            ]
          : [];
      }),
      published: machines.flatMap((r) => {
        const l = leases.get(r.id);
        return l ? networkOf(r).publish.map((p) => ({ ...p, guestIp: l.ip })) : [];
      }),
    };
    return plan;
  }
}

/** `nft -f -` (atomic), synchronously: it runs inside a store transaction. */
function applyRulesetSync(ruleset: string): void {
  try {
    execFileSync("nft", ["-f", "-"], { input: ruleset, stdio: ["pipe", "ignore", "pipe"] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === "ENOENT") throw new MmError("MM_TOOL_MISSING", "nft (apt-get install nftables)");
    const text = err.stderr?.toString().trim() || err.message;
    if (/Operation not permitted|Permission denied/.test(text)) throw new MmError("MM_NET_PERMISSION", text);
    throw new MmError("MM_NET_SETUP", `nft: ${text}`);
  }
}

export function readResolvConf(): string {
  try {
    return readFileSync("/etc/resolv.conf", "utf8");
  } catch {
    return "";
  }
}
