// fast-check generators of valid network plans, shared by the pure and the kernel tests.

import fc from "fast-check";
import { cidrSize, formatCidr, formatIpv4, gatewayOf, macFor, parseSubnet, tapName } from "./ipam.js";
import type { EgressPolicy, EgressRule, MachineNet, NetPlan, PublishedPort } from "./nft-plan.js";

const SUBNETS = ["10.88.0.0/16", "172.30.0.0/24", "192.168.7.0/28", "10.0.0.0/8"];

const egressRule: fc.Arbitrary<EgressRule> = fc.record(
  {
    cidr: fc
      .tuple(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 32 }))
      .map(([a, p]) => formatCidr({ network: p === 0 ? 0 : (a & (0xffffffff << (32 - p))) >>> 0, prefix: p })),
    proto: fc.constantFrom("tcp" as const, "udp" as const),
    ports: fc.uniqueArray(fc.integer({ min: 1, max: 65535 }), { minLength: 1, maxLength: 4 }),
  },
  { requiredKeys: ["cidr"] },
);

export const egressPolicy: fc.Arbitrary<EgressPolicy> = fc.oneof(
  fc.constant("allow" as const),
  fc.constant("deny" as const),
  fc.record({ allow: fc.array(egressRule, { maxLength: 3 }) }),
);

export function planArbitrary(maxMachines = 10): fc.Arbitrary<NetPlan> {
  return fc.constantFrom(...SUBNETS).chain((subnet) => {
    const c = parseSubnet(subnet);
    const hosts = Math.min(cidrSize(c) - 3, 5000);
    return fc
      .uniqueArray(
        fc.record({
          id: fc.stringMatching(/^[a-z0-9][a-z0-9_.-]{0,20}$/),
          offset: fc.integer({ min: 2, max: hosts + 1 }),
          group: fc.option(fc.constantFrom("a", "b", "web.1"), { nil: undefined }),
          egress: egressPolicy,
        }),
        { maxLength: Math.min(maxMachines, hosts), selector: (m) => m.id },
      )
      .map((ms) => {
        const seen = new Set<number>();
        return ms.filter((m) => !seen.has(m.offset) && seen.add(m.offset));
      })
      .chain((ms) => {
        const machines: MachineNet[] = ms.map((m) => ({
          id: m.id,
          tap: tapName(m.id),
          ip: formatIpv4(c.network + m.offset),
          mac: macFor(m.id),
          egress: m.egress,
          ...(m.group ? { group: m.group } : {}),
        }));
        const published: fc.Arbitrary<PublishedPort[]> = machines.length
          ? fc.uniqueArray(
              fc.record(
                {
                  hostIp: fc.constantFrom("127.0.0.1", "192.0.2.1"),
                  hostPort: fc.integer({ min: 1, max: 65535 }),
                  proto: fc.constantFrom("tcp" as const, "udp" as const),
                  guestIp: fc.constantFrom(...machines.map((m) => m.ip)),
                  guestPort: fc.integer({ min: 1, max: 65535 }),
                },
                { requiredKeys: ["hostPort", "proto", "guestIp", "guestPort"] },
              ),
              { maxLength: 5, selector: (p) => p.hostPort },
            )
          : fc.constant([]);
        return published.map(
          (p): NetPlan => ({ bridge: "mm0", subnet, gateway: gatewayOf(subnet), machines, published: p }),
        );
      });
  });
}
