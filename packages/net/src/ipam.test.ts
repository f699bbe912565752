import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import {
  allocateAddress,
  bridgeName,
  chooseSubnet,
  cidrContains,
  cidrSize,
  cidrsOverlap,
  formatCidr,
  formatIpv4,
  gatewayCidrOf,
  gatewayOf,
  isLocalUnicastMac,
  macFor,
  overlappingRoute,
  parseCidr,
  parseIpv4,
  parseSubnet,
  tapName,
  validateInterfaceName,
} from "./ipam.js";

const code = (c: string) => (e: unknown) => isMmError(e) && e.code === c;
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const cidr = fc
  .tuple(u32, fc.integer({ min: 0, max: 32 }))
  .map(([a, prefix]) => parseCidr(`${formatIpv4(a)}/${prefix}`));

test("IPv4 addresses parse and format", () => {
  assert.equal(parseIpv4("10.88.0.1"), 0x0a580001);
  assert.equal(parseIpv4("255.255.255.255"), 0xffffffff);
  assert.equal(formatIpv4(0x0a580001), "10.88.0.1");
  for (const bad of [
    "",
    "1.2.3",
    "1.2.3.4.5",
    "256.0.0.1",
    "01.2.3.4",
    "1.2.3.-4",
    " 1.2.3.4",
    "a.b.c.d",
    "1..2.3",
    "::1",
  ]) {
    assert.throws(() => parseIpv4(bad), code("MM_INVALID_NETWORK"), bad);
  }
  fc.assert(fc.property(u32, (n) => parseIpv4(formatIpv4(n)) === n));
});

test("CIDRs: host bits cleared (or refused when strict), bare address is /32", () => {
  assert.deepEqual(parseCidr("10.88.3.4/16"), { network: 0x0a580000, prefix: 16 });
  assert.deepEqual(parseCidr("10.1.2.3"), { network: 0x0a010203, prefix: 32 });
  assert.deepEqual(parseCidr("1.2.3.4/0"), { network: 0, prefix: 0 });
  assert.equal(formatCidr(parseCidr("172.30.9.9/12")), "172.16.0.0/12");
  assert.throws(() => parseCidr("10.88.3.4/16", { strict: true }), /did you mean 10\.88\.0\.0\/16/);
  for (const bad of ["10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08", "10.0.0.0/-1", "10.0.0.0/1.5"]) {
    assert.throws(() => parseCidr(bad), code("MM_INVALID_NETWORK"), bad);
  }
  assert.throws(() => parseSubnet("10.0.0.0/31"), /from 8 to 30/);
  assert.throws(() => parseSubnet("10.0.0.0/7"), /from 8 to 30/);
});

test("overlap is symmetric and means sharing an address", () => {
  fc.assert(
    fc.property(cidr, cidr, (a, b) => {
      const overlap = cidrsOverlap(a, b);
      assert.equal(overlap, cidrsOverlap(b, a));
      assert.equal(overlap, cidrContains(a, b.network) || cidrContains(b, a.network));
    }),
  );
  assert.ok(cidrsOverlap(parseCidr("10.0.0.0/8"), parseCidr("10.88.1.0/24")));
  assert.ok(!cidrsOverlap(parseCidr("10.88.0.0/16"), parseCidr("10.89.0.0/16")));
});

test("the default subnet avoids the host's prefixes", () => {
  assert.equal(chooseSubnet([]), "10.88.0.0/16");
  assert.equal(chooseSubnet(["0.0.0.0/0", "192.168.1.0/24", "fe80::/64"]), "10.88.0.0/16", "default and IPv6 ignored");
  assert.equal(chooseSubnet(["10.88.5.0/24"]), "10.89.0.0/16");
  assert.equal(chooseSubnet(["10.88.0.0/15", "10.90.0.0/15"]), "172.30.0.0/16");
  assert.equal(chooseSubnet(["10.0.0.0/8", "172.30.0.0/15"]), "172.16.0.0/16", "falls back beyond the list");
  assert.throws(() => chooseSubnet(["10.0.0.0/8", "172.16.0.0/12"]), code("MM_INVALID_NETWORK"));
  fc.assert(
    fc.property(fc.array(cidr.filter((c) => c.prefix >= 8)), (taken) => {
      let chosen: string;
      try {
        chosen = chooseSubnet(taken.map(formatCidr));
      } catch (e) {
        assert.ok(isMmError(e, "MM_INVALID_NETWORK"));
        return;
      }
      const c = parseSubnet(chosen);
      assert.ok(!taken.some((t) => cidrsOverlap(t, c)), chosen);
    }),
  );
  assert.equal(overlappingRoute("10.88.0.0/16", ["0.0.0.0/0", "10.88.7.0/24"]), "10.88.7.0/24");
  assert.equal(overlappingRoute("10.88.0.0/16", ["0.0.0.0/0", "10.89.0.0/24"]), undefined);
});

test("gateway is the first host address", () => {
  assert.equal(gatewayOf("10.88.0.0/16"), "10.88.0.1");
  assert.equal(gatewayCidrOf("172.30.4.0/22"), "172.30.4.1/22");
});

test("allocation: lowest free, skipping network, gateway and broadcast; preferred; exhaustion", () => {
  assert.equal(allocateAddress("10.88.0.0/16", new Set()), "10.88.0.2");
  assert.equal(allocateAddress("10.88.0.0/16", new Set(["10.88.0.2", "10.88.0.4", "junk"])), "10.88.0.3");
  assert.equal(allocateAddress("10.88.0.0/16", new Set(), "10.88.7.7"), "10.88.7.7");
  assert.throws(() => allocateAddress("10.88.0.0/16", new Set(["10.88.7.7"]), "10.88.7.7"), code("MM_ADDRESS_IN_USE"));
  for (const bad of ["10.88.0.0", "10.88.0.1", "10.88.255.255", "10.89.0.2"]) {
    assert.throws(() => allocateAddress("10.88.0.0/16", new Set(), bad), code("MM_INVALID_NETWORK"), bad);
  }
  assert.equal(allocateAddress("192.168.0.0/30", new Set()), "192.168.0.2");
  assert.throws(() => allocateAddress("192.168.0.0/30", new Set(["192.168.0.2"])), code("MM_ADDRESS_EXHAUSTED"));
});

const smallSubnet = fc
  .tuple(u32, fc.integer({ min: 24, max: 30 }))
  .map(([a, p]) => formatCidr(parseCidr(`${formatIpv4(a)}/${p}`)));

test("property: filling a subnet gives distinct guest addresses, then MM_ADDRESS_EXHAUSTED", () => {
  fc.assert(
    fc.property(smallSubnet, (subnet) => {
      const c = parseSubnet(subnet);
      const reserved = new Set([c.network, c.network + 1, c.network + cidrSize(c) - 1].map(formatIpv4));
      const used = new Set<string>();
      for (let i = 0; i < cidrSize(c) - 3; i++) {
        const ip = allocateAddress(subnet, used);
        assert.ok(!used.has(ip), `duplicate ${ip}`);
        assert.ok(!reserved.has(ip), `reserved ${ip}`);
        assert.ok(cidrContains(c, parseIpv4(ip)), `${ip} outside ${subnet}`);
        used.add(ip);
      }
      assert.throws(() => allocateAddress(subnet, used), code("MM_ADDRESS_EXHAUSTED"));
    }),
    { numRuns: 30 },
  );
});

test("property: release then reuse: the lowest released address comes back first", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 200 }),
      fc.uniqueArray(fc.nat(), { minLength: 1, maxLength: 20 }),
      (n, picks) => {
        const subnet = "10.88.0.0/16";
        const used = new Set<string>();
        const order: string[] = [];
        for (let i = 0; i < n; i++) {
          const ip = allocateAddress(subnet, used);
          used.add(ip);
          order.push(ip);
        }
        const released = [...new Set(picks.map((p) => order[p % n] as string))];
        for (const ip of released) used.delete(ip);
        const lowest = released.map(parseIpv4).sort((a, b) => a - b)[0] as number;
        assert.equal(allocateAddress(subnet, used), formatIpv4(lowest));
        for (const _ of released) used.add(allocateAddress(subnet, used));
        assert.equal(used.size, n, "every released address was reused before a new one");
        assert.equal(allocateAddress(subnet, used), formatIpv4(parseIpv4("10.88.0.2") + n));
      },
    ),
  );
});

test("property: MACs are locally administered unicast, stable, distinct per id", () => {
  fc.assert(
    fc.property(fc.string({ minLength: 1 }), (id) => {
      const mac = macFor(id);
      assert.match(mac, /^02(:[0-9a-f]{2}){5}$/);
      assert.ok(isLocalUnicastMac(mac));
      assert.equal(macFor(id), mac);
    }),
  );
  const macs = new Set(Array.from({ length: 5000 }, (_, i) => macFor(`machine-${i}`)));
  assert.equal(macs.size, 5000);
  assert.ok(!isLocalUnicastMac("03:00:00:00:00:01"), "multicast");
  assert.ok(!isLocalUnicastMac("00:16:3e:00:00:01"), "universally administered");
});

test("names: TAPs fit IFNAMSIZ with mm's prefix; the bridge defaults to mm0", () => {
  fc.assert(
    fc.property(fc.string({ minLength: 1 }), (id) => {
      const tap = tapName(id);
      assert.match(tap, /^mmt[0-9a-f]{12}$/);
      assert.equal(validateInterfaceName(tap), tap);
    }),
  );
  assert.notEqual(tapName("a"), tapName("b"));
  assert.equal(bridgeName(), "mm0");
  assert.equal(bridgeName("br-mm"), "br-mm");
  for (const bad of ["", "sixteen-chars-xx", "has space", 'q"uote', "..", "mmtfoo"]) {
    if (bad === "") continue;
    assert.throws(() => bridgeName(bad), code("MM_INVALID_NETWORK"), bad);
  }
});
