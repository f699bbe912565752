import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import { macFor, tapName } from "./ipam.js";
import { buildRuleset, type MachineNet, type NetPlan, removalRuleset, validateGroupName } from "./nft-plan.js";
import { planArbitrary } from "./plan-arbitrary.test-util.js";

const machine = (id: string, ip: string, egress: MachineNet["egress"], group?: string): MachineNet => ({
  id,
  tap: tapName(id),
  ip,
  mac: macFor(id),
  egress,
  ...(group ? { group } : {}),
});

const EMPTY: NetPlan = { bridge: "mm0", subnet: "10.88.0.0/16", gateway: "10.88.0.1", machines: [], published: [] };
const THREE: NetPlan = {
  bridge: "mm0",
  subnet: "10.88.0.0/16",
  gateway: "10.88.0.1",
  machines: [
    machine("3f2a9c1b7d40", "10.88.0.2", "allow", "web"),
    machine("8e1d0c4a2b93", "10.88.0.3", "deny", "web"),
    machine("c07b5e6f1a28", "10.88.0.4", {
      allow: [
        { cidr: "192.0.2.10/32", proto: "tcp", ports: [443, 80] },
        { cidr: "198.51.100.0/24" },
        { cidr: "203.0.113.0/24", ports: [53] },
      ],
    }),
  ],
  published: [
    { hostPort: 8080, proto: "tcp", guestIp: "10.88.0.2", guestPort: 80 },
    { hostIp: "127.0.0.1", hostPort: 5353, proto: "udp", guestIp: "10.88.0.2", guestPort: 53 },
  ],
};

/** Compares with packages/net/testdata/NAME.nft; MM_UPDATE_GOLDEN=1 rewrites it. */
function golden(name: string, text: string): void {
  const file = new URL(`../testdata/${name}.nft`, import.meta.url);
  if (process.env.MM_UPDATE_GOLDEN === "1") writeFileSync(file, text);
  assert.equal(text, readFileSync(file, "utf8"), `${name}.nft differs (review, then MM_UPDATE_GOLDEN=1)`);
}

test("golden rulesets: an empty host and three machines", () => {
  golden("empty", buildRuleset(EMPTY));
  golden("three-machines", buildRuleset(THREE));
});

test("a machine's rate limit polices both directions at the top of forward; bad rates are refused", () => {
  const limited: NetPlan = {
    ...EMPTY,
    machines: [{ ...machine("3f2a9c1b7d40", "10.88.0.2", "allow"), rateBytes: 65536 }],
  };
  const text = buildRuleset(limited);
  const forward = text.slice(text.indexOf("chain forward"));
  const up = forward.indexOf("ip saddr 10.88.0.2 limit rate over 65536 bytes/second burst 16384 bytes drop");
  const down = forward.indexOf("ip daddr 10.88.0.2 limit rate over 65536 bytes/second burst 16384 bytes drop");
  assert.ok(up > 0 && down > 0, "both directions are limited");
  assert.ok(up < forward.indexOf("ct state established"), "before established traffic is accepted");
  assert.doesNotMatch(buildRuleset(THREE), /limit rate/, "no limit without a rate");
  for (const bad of [0, 512, 1.5]) {
    assert.throws(
      () =>
        buildRuleset({ ...EMPTY, machines: [{ ...machine("3f2a9c1b7d40", "10.88.0.2", "allow"), rateBytes: bad }] }),
      (e) => isMmError(e),
      String(bad),
    );
  }
});

test("the ruleset replaces both tables in one transaction", () => {
  const text = buildRuleset(THREE);
  const head = removalRuleset();
  assert.ok(text.includes(head), "starts by adding then deleting both tables");
  assert.ok(text.indexOf(head) < text.indexOf("table inet mm {"));
  assert.ok(text.indexOf(head) < text.indexOf("table bridge mm {"));
  assert.equal(head, "add table inet mm\ndelete table inet mm\nadd table bridge mm\ndelete table bridge mm\n");
});

function chainBody(text: string, family: string, name: string): string[] {
  const table = text.slice(text.indexOf(`table ${family} mm {`));
  const start = table.indexOf(`\tchain ${name} {\n`);
  assert.ok(start >= 0, `${family} chain ${name} exists`);
  const body = table.slice(start).split("\n");
  return body.slice(1, body.indexOf("\t}")).map((l) => l.trim());
}

test("property: every machine gets its anti-spoofing chain, egress verdict and nothing else's", () => {
  fc.assert(
    fc.property(planArbitrary(), (plan) => {
      const text = buildRuleset(plan);
      for (const m of plan.machines) {
        const port = chainBody(text, "bridge", `port_${m.tap}`);
        for (const rule of [
          `ether saddr != ${m.mac} drop`,
          `arp saddr ether != ${m.mac} drop`,
          `arp saddr ip != ${m.ip} drop`,
          `ip saddr != ${m.ip} drop`,
        ]) {
          assert.ok(port.includes(rule), `${m.id}: ${rule}`);
        }
        assert.equal(port.at(-1), "drop", "other ethertypes dropped");
        assert.ok(text.includes(`"${m.tap}" : jump port_${m.tap}`), `${m.tap} dispatched to its chain`);
        const verdict = m.egress === "allow" ? "accept" : m.egress === "deny" ? "drop" : `jump egress_${m.tap}`;
        assert.ok(text.includes(`${m.ip} : ${verdict}`), `${m.id} egress ${verdict}`);
      }
      assert.ok(chainBody(text, "bridge", "prerouting").includes('iifname "mmt*" drop'), "unplanned ports dropped");
      assert.equal(chainBody(text, "inet", "egress").at(-1), "drop", "unknown sources dropped");
      assert.equal(chainBody(text, "inet", "between_guests").at(-1), "drop");
      assert.equal(chainBody(text, "inet", "to_guests").at(-1), "drop");
      assert.deepEqual(chainBody(text, "inet", "guest_to_host").slice(-1), ["drop"]);
    }),
    { numRuns: 150 },
  );
});

test("property: one DNAT per published port, and none without", () => {
  fc.assert(
    fc.property(planArbitrary(), (plan) => {
      const text = buildRuleset(plan);
      const dnats = text.split("\n").filter((l) => l.includes(" dnat ip to "));
      assert.equal(dnats.length, plan.published.length);
      for (const p of plan.published) {
        const want = `${p.hostIp ? `ip daddr ${p.hostIp} ` : ""}${p.proto} dport ${p.hostPort} dnat ip to ${p.guestIp}:${p.guestPort}`;
        assert.ok(
          dnats.some((l) => l.trim() === want),
          want,
        );
      }
      assert.equal(text.includes("jump published_ports"), plan.published.length > 0);
    }),
    { numRuns: 150 },
  );
});

test("property: guests meet only in groups of two or more, on both layers", () => {
  fc.assert(
    fc.property(planArbitrary(), (plan) => {
      const text = buildRuleset(plan);
      const sizes = new Map<string, number>();
      for (const m of plan.machines) if (m.group) sizes.set(m.group, (sizes.get(m.group) ?? 0) + 1);
      const real = [...sizes].filter(([, n]) => n > 1).length;
      assert.equal((text.match(/comment "group /g) ?? []).length, 2 * real, "one set per group per table");
      for (const m of plan.machines) {
        const inGroup = m.group !== undefined && (sizes.get(m.group) ?? 0) > 1;
        const inSets = text.split("elements = {").slice(1);
        assert.equal(
          inSets.some((e) => e.split("}")[0]?.includes(`"${m.tap}"`)),
          inGroup,
          `${m.id} in a bridge group set`,
        );
      }
    }),
    { numRuns: 150 },
  );
});

test("property: the text depends on the plan, not on its order", () => {
  fc.assert(
    fc.property(
      planArbitrary().chain((p) =>
        fc.tuple(
          fc.constant(p),
          fc.shuffledSubarray([...p.machines], { minLength: p.machines.length }),
          fc.shuffledSubarray([...p.published], { minLength: p.published.length }),
        ),
      ),
      ([plan, machines, published]) => {
        assert.equal(buildRuleset({ ...plan, machines, published }), buildRuleset(plan));
      },
    ),
    { numRuns: 100 },
  );
});

test("plans the ruleset cannot honour are refused (MM_INVALID_NETWORK)", () => {
  const a = THREE.machines[0] as MachineNet;
  const bad: [string, NetPlan][] = [
    ["bridge name", { ...EMPTY, bridge: 'mm0" accept' }],
    ["bridge with the TAP prefix", { ...EMPTY, bridge: "mmtbridge" }],
    ["subnet", { ...EMPTY, subnet: "10.88.0.1/16" }],
    ["gateway outside", { ...EMPTY, gateway: "10.89.0.1" }],
    ["gateway is the network", { ...EMPTY, gateway: "10.88.0.0" }],
    ["duplicate IP", { ...EMPTY, machines: [a, { ...machine("other", a.ip, "allow") }] }],
    ["duplicate TAP", { ...EMPTY, machines: [a, { ...machine("other", "10.88.0.9", "allow"), tap: a.tap }] }],
    ["duplicate MAC", { ...EMPTY, machines: [a, { ...machine("other", "10.88.0.9", "allow"), mac: a.mac }] }],
    ["duplicate id", { ...EMPTY, machines: [a, { ...a, tap: tapName("x"), ip: "10.88.0.9", mac: macFor("x") }] }],
    ["IP is the gateway", { ...EMPTY, machines: [{ ...a, ip: "10.88.0.1" }] }],
    ["IP is the broadcast", { ...EMPTY, machines: [{ ...a, ip: "10.88.255.255" }] }],
    ["IP outside", { ...EMPTY, machines: [{ ...a, ip: "10.89.0.2" }] }],
    ["IP not canonical", { ...EMPTY, machines: [{ ...a, ip: "10.88.0.02" }] }],
    ["TAP without prefix", { ...EMPTY, machines: [{ ...a, tap: "tap0" }] }],
    ["TAP too long", { ...EMPTY, machines: [{ ...a, tap: "mmt0123456789abc" }] }],
    ["multicast MAC", { ...EMPTY, machines: [{ ...a, mac: "03:00:00:00:00:01" }] }],
    ["id with a quote", { ...EMPTY, machines: [{ ...a, id: 'x" drop' }] }],
    ["group with a quote", { ...EMPTY, machines: [{ ...a, group: 'web"' }] }],
    ["egress CIDR", { ...EMPTY, machines: [{ ...a, egress: { allow: [{ cidr: "10.0.0.0/40" }] } }] }],
    ["egress port", { ...EMPTY, machines: [{ ...a, egress: { allow: [{ cidr: "10.0.0.0/8", ports: [0] }] } }] }],
    ["egress no ports", { ...EMPTY, machines: [{ ...a, egress: { allow: [{ cidr: "10.0.0.0/8", ports: [] }] } }] }],
    [
      "published to nobody",
      { ...EMPTY, machines: [a], published: [{ hostPort: 80, proto: "tcp", guestIp: "10.88.0.9", guestPort: 80 }] },
    ],
    [
      "published twice",
      {
        ...EMPTY,
        machines: [a],
        published: [
          { hostPort: 80, proto: "tcp", guestIp: a.ip, guestPort: 80 },
          { hostIp: "127.0.0.1", hostPort: 80, proto: "tcp", guestIp: a.ip, guestPort: 81 },
        ],
      },
    ],
    [
      "published port 0",
      { ...EMPTY, machines: [a], published: [{ hostPort: 0, proto: "tcp", guestIp: a.ip, guestPort: 80 }] },
    ],
  ];
  for (const [what, plan] of bad) {
    assert.throws(
      () => buildRuleset(plan),
      (e) => isMmError(e, "MM_INVALID_NETWORK"),
      what,
    );
  }
});

test("group names follow Docker's network name rule", () => {
  for (const ok of ["a", "web", "my_net.1-2", "x".repeat(64)]) assert.equal(validateGroupName(ok), ok);
  for (const bad of ["", "-a", ".a", "a b", 'a"', "x".repeat(65), "ü"]) {
    assert.throws(
      () => validateGroupName(bad),
      (e) => isMmError(e, "MM_INVALID_NETWORK"),
      bad,
    );
  }
});
