// The host network shell against the real kernel, inside namespaces this file creates:
//   <p>        the "host": bridge, TAPs, nftables, a service on :9000, uplink 10.200.0.1/24
//   <p>-out    the outside world at 10.200.0.2, serving :8080 and :8081
//   <p>-g1..g3 stand-in guests, each a namespace whose veth peer is a port of the bridge
// and proves the firewall with real packets. Nothing leaves these namespaces.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import fc from "fast-check";
import { chooseSubnet, gatewayCidrOf, gatewayOf, macFor, tapName } from "./ipam.js";
import { Namespaces } from "./netns.test-util.js";
import { buildRuleset, type MachineNet, type NetPlan } from "./nft-plan.js";
import { planArbitrary } from "./plan-arbitrary.test-util.js";

const ns = new Namespaces();
let host = "";
let out = "";
const guests: { name: string; ns: string; m: MachineNet }[] = [];
let plan: NetPlan;
const BRIDGE = "mm0";
const HOST_UPLINK = "10.200.0.1";
const OUTSIDE = "10.200.0.2";
const SPARE_SUFFIX = 250;

before(async () => {
  host = await ns.add();
  out = await ns.add("out");
  await ns.must(host, ["ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", out]);
  await ns.must(host, ["ip", "addr", "add", `${HOST_UPLINK}/24`, "dev", "up0"]);
  await ns.must(host, ["ip", "link", "set", "up0", "up"]);
  await ns.must(out, ["ip", "addr", "add", `${OUTSIDE}/24`, "dev", "eth0"]);
  await ns.must(out, ["ip", "link", "set", "eth0", "up"]);
});

after(async () => {
  const left = await ns.removeAll();
  assert.deepEqual(left, [], "every namespace of this file is gone");
});

test("hostRoutes sees this namespace's prefixes and chooseSubnet avoids them", async () => {
  // (a veth pair stands in for any other interface: this kernel may lack the dummy driver)
  await ns.must(host, ["ip", "link", "add", "x0", "type", "veth", "peer", "name", "x1"]);
  await ns.must(host, ["ip", "addr", "add", "10.88.5.1/24", "dev", "x0"]);
  await ns.must(host, ["ip", "link", "set", "x0", "up"]);
  const routes = (await ns.call(host, "hostRoutes", [])) as { ok: true; value: string[] };
  assert.ok(routes.ok);
  assert.ok(routes.value.includes("10.88.5.0/24"), routes.value.join(" "));
  assert.ok(routes.value.includes("10.200.0.0/24"), routes.value.join(" "));
  assert.equal(chooseSubnet(routes.value), "10.89.0.0/16");
});

test("ensureBridge creates the bridge, is idempotent, converges its address, refuses a non-bridge", async () => {
  const subnet = "10.89.0.0/16";
  const gw = gatewayCidrOf(subnet);
  assert.deepEqual(await ns.call(host, "ensureBridge", [BRIDGE, gw]), { ok: true, value: { created: true } });
  assert.deepEqual(await ns.call(host, "ensureBridge", [BRIDGE, gw]), { ok: true, value: { created: false } });
  await ns.must(host, ["ip", "addr", "add", "192.0.2.7/24", "dev", BRIDGE]);
  await ns.must(host, ["ip", "link", "set", BRIDGE, "down"]);
  assert.deepEqual(await ns.call(host, "ensureBridge", [BRIDGE, gw]), { ok: true, value: { created: false } });
  const [link] = JSON.parse(await ns.must(host, ["ip", "-json", "-details", "addr", "show", "dev", BRIDGE]));
  assert.equal(link.linkinfo.info_kind, "bridge");
  assert.ok(link.flags.includes("UP"));
  assert.deepEqual(
    link.addr_info.filter((a: { family: string }) => a.family === "inet").map((a: { local: string }) => a.local),
    ["10.89.0.1"],
  );
  const r = await ns.call(host, "ensureBridge", ["x0", gw]);
  assert.equal(r.ok, false);
  assert.equal(!r.ok && r.code, "MM_NET_SETUP");
  // The bridge's own route does not count against the subnet: the choice is stable.
  const routes = (await ns.call(host, "hostRoutes", [{ exceptDevice: BRIDGE }])) as { value: string[] };
  assert.ok(!routes.value.some((c) => c.startsWith("10.89.")), routes.value.join(" "));
  assert.equal(chooseSubnet(routes.value), subnet);
  await ns.must(host, ["ip", "link", "del", "x0"]);
});

test("createTap makes a TAP on the bridge (owner, MTU), idempotently; deleteTap is idempotent", async () => {
  const tap = tapName("tap-test");
  assert.deepEqual(await ns.call(host, "createTap", [tap, BRIDGE, { mtu: 1400, user: 65534 }]), {
    ok: true,
    value: { created: true },
  });
  assert.deepEqual(await ns.call(host, "createTap", [tap, BRIDGE, { mtu: 1400, user: 65534 }]), {
    ok: true,
    value: { created: false },
  });
  const [link] = JSON.parse(await ns.must(host, ["ip", "-json", "-details", "link", "show", "dev", tap]));
  assert.equal(link.linkinfo.info_kind, "tun");
  assert.equal(link.linkinfo.info_data.type, "tap");
  assert.ok(["nobody", 65534].includes(link.linkinfo.info_data.user), String(link.linkinfo.info_data.user));
  assert.equal(link.master, BRIDGE);
  assert.equal(link.mtu, 1400);
  assert.ok(link.flags.includes("UP"));
  assert.deepEqual(await ns.call(host, "listTaps", []), { ok: true, value: [tap] });
  const r = await ns.call(host, "createTap", ["up0", BRIDGE]);
  assert.equal(!r.ok && r.code, "MM_NET_SETUP", "a veth is not taken for a TAP");
  assert.deepEqual(await ns.call(host, "deleteTap", [tap]), { ok: true, value: true });
  assert.deepEqual(await ns.call(host, "deleteTap", [tap]), { ok: true, value: false });
});

test("missing tools and missing privileges are told apart", async () => {
  const noPath = { env: { PATH: "/nonexistent" } };
  const a = await ns.call(host, "ensureBridge", ["mmx0", "10.77.0.1/16"], noPath);
  assert.ok(!a.ok && a.code === "MM_TOOL_MISSING" && /iproute2/.test(a.message), JSON.stringify(a));
  const b = await ns.call(host, "applyRuleset", ["add table inet mm\n"], noPath);
  assert.ok(!b.ok && b.code === "MM_TOOL_MISSING" && /nftables/.test(b.message), JSON.stringify(b));
  const nobody = {
    wrap: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"],
  };
  for (const [fn, args] of [
    ["ensureBridge", ["mmx0", "10.77.0.1/16"]],
    ["createTap", [tapName("nobody"), BRIDGE]],
    ["applyRuleset", ["add table inet mmx\n"]],
    ["enableForwarding", [BRIDGE]],
  ] as const) {
    const r = await ns.call(host, fn, args, nobody);
    assert.ok(!r.ok && r.code === "MM_NET_PERMISSION", `${fn}: ${JSON.stringify(r)}`);
  }
});

test("every generated ruleset is accepted by the kernel (nft -c, random plans)", async () => {
  await fc.assert(
    fc.asyncProperty(planArbitrary(), async (p) => {
      const r = await ns.run(host, ["nft", "-c", "-f", "-"], buildRuleset(p));
      assert.equal(r.code, 0, r.stderr);
    }),
    { numRuns: 25 },
  );
});

// --- the firewall, with stand-in guests --------------------------------------------------

const SUBNET = "10.89.0.0/16";
const GW = gatewayOf(SUBNET);
const ipOf = (i: number) => `10.89.0.${i}`;
const SPARE = ipOf(SPARE_SUFFIX);

async function addGuest(name: string, index: number, group: string | undefined, egress: MachineNet["egress"]) {
  const g = await ns.add(name);
  const id = `${ns.prefix}-${name}`;
  const m: MachineNet = {
    id,
    tap: tapName(id),
    ip: ipOf(index + 2),
    mac: macFor(id),
    egress,
    ...(group ? { group } : {}),
  };
  await ns.must(host, ["ip", "link", "add", m.tap, "type", "veth", "peer", "name", "eth0", "netns", g]);
  await ns.must(host, ["ip", "link", "set", m.tap, "master", BRIDGE, "up"]);
  await ns.must(g, ["sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad"]);
  await ns.must(g, ["ip", "link", "set", "eth0", "address", m.mac]);
  await ns.must(g, ["ip", "addr", "add", `${m.ip}/16`, "dev", "eth0"]);
  await ns.must(g, ["ip", "link", "set", "eth0", "up"]);
  await ns.must(g, ["ip", "route", "add", "default", "via", GW]);
  guests.push({ name, ns: g, m });
  return g;
}

const g = (name: string) => {
  const found = guests.find((x) => x.name === name);
  assert.ok(found, name);
  return found;
};

interface Check {
  readonly what: string;
  readonly run: () => Promise<string | boolean>;
  readonly want: string | boolean | RegExp;
}

/** Runs checks a few at a time and reports every mismatch at once. */
async function expectAll(checks: readonly Check[]): Promise<void> {
  const wrong: string[] = [];
  for (let i = 0; i < checks.length; i += 6) {
    await Promise.all(
      checks.slice(i, i + 6).map(async (c) => {
        const got = await c.run();
        const ok = c.want instanceof RegExp ? typeof got === "string" && c.want.test(got) : got === c.want;
        if (!ok) wrong.push(`${c.what}: got ${JSON.stringify(got)}, want ${String(c.want)}`);
      }),
    );
  }
  assert.deepEqual(wrong, [], `${wrong.length} of ${checks.length} checks failed`);
}

const tcp = (from: string, to: string, port: number, src?: string) => () => ns.connect(from, "tcp", to, port, src);
const udp = (from: string, to: string, port: number) => () => ns.connect(from, "udp", to, port);
const ping =
  (from: string, to: string, ...flags: string[]) =>
  () =>
    ns.ping(from, to, ...flags);
const REFUSED_OR_DROPPED = /^error: (ETIMEDOUT|ECONNREFUSED|EHOSTUNREACH)/;

async function linkLocal(guestNs: string): Promise<string> {
  const [link] = JSON.parse(await ns.must(guestNs, ["ip", "-json", "-6", "addr", "show", "dev", "eth0"]));
  return link.addr_info.find((a: { scope: string }) => a.scope === "link").local;
}

/** g1 claims g3's address in an ARP request to the host; returns the MAC the host then holds for g3. */
async function arpPoison(): Promise<string> {
  const [g1, g3] = [g("g1"), g("g3")];
  await ns.must(host, ["ip", "neigh", "replace", g3.m.ip, "lladdr", g3.m.mac, "dev", BRIDGE, "nud", "reachable"]);
  await ns.must(g1.ns, ["ip", "addr", "add", `${g3.m.ip}/32`, "dev", "eth0"]);
  await ns.run(g1.ns, ["busybox", "arping", "-c", "2", "-w", "2", "-s", g3.m.ip, "-I", "eth0", GW]);
  await ns.must(g1.ns, ["ip", "addr", "del", `${g3.m.ip}/32`, "dev", "eth0"]);
  const [entry] = JSON.parse(await ns.must(host, ["ip", "-json", "neigh", "show", g3.m.ip, "dev", BRIDGE]));
  await ns.must(host, ["ip", "neigh", "del", g3.m.ip, "dev", BRIDGE]);
  return entry?.lladdr ?? "";
}

test("stand-in guests: without mm's rules everything would pass (so the checks below are not vacuous)", async () => {
  await ns.call(host, "enableForwarding", [BRIDGE]).then((r) => assert.ok(r.ok, JSON.stringify(r)));
  await addGuest("g1", 0, "a", "allow");
  await addGuest("g2", 1, "a", "deny");
  await addGuest("g3", 2, undefined, { allow: [{ cidr: `${OUTSIDE}/32`, proto: "tcp", ports: [8080, 9999] }] });
  await ns.must(out, ["ip", "route", "add", SUBNET, "via", HOST_UPLINK]);
  await Promise.all([
    ns.serve(host, "tcp:9000", "udp:9053"),
    ns.serve(out, "tcp:8080", "tcp:8081"),
    ns.serve(g("g1").ns, "tcp:80", "udp:53"),
    ns.serve(g("g2").ns, "tcp:80"),
    ns.serve(g("g3").ns, "tcp:80"),
  ]);
  await ns.must(g("g1").ns, ["ip", "addr", "add", `${SPARE}/32`, "dev", "eth0"]);
  plan = {
    bridge: BRIDGE,
    subnet: SUBNET,
    gateway: GW,
    machines: guests.map((x) => x.m),
    published: [
      { hostPort: 8080, proto: "tcp", guestIp: g("g1").m.ip, guestPort: 80 },
      { hostPort: 5353, proto: "udp", guestIp: g("g1").m.ip, guestPort: 53 },
      { hostIp: HOST_UPLINK, hostPort: 8082, proto: "tcp", guestIp: g("g2").m.ip, guestPort: 80 },
      { hostIp: "127.0.0.1", hostPort: 8083, proto: "tcp", guestIp: g("g1").m.ip, guestPort: 80 },
    ],
  };
  const [g1, g2, g3] = [g("g1"), g("g2"), g("g3")];
  const g2ll = await linkLocal(g2.ns);
  await expectAll([
    { what: "g1 -> g3 (no common group)", run: ping(g1.ns, g3.m.ip), want: true },
    { what: "g1 -> g2 from a spare address", run: ping(g1.ns, g2.m.ip, "-I", SPARE), want: true },
    { what: "g1 -> host service", run: tcp(g1.ns, GW, 9000), want: g1.m.ip },
    { what: "g2 (deny) -> outside", run: tcp(g2.ns, OUTSIDE, 8080), want: g2.m.ip },
    { what: "g1 -> g2 over IPv6", run: ping(g1.ns, g2ll, "-6", "-I", "eth0"), want: true },
  ]);
  assert.equal(await arpPoison(), g1.m.mac, "without rules, g1 can take g3's address in the host's ARP table");
});

test("host port check sees the host's listeners", async () => {
  const free = (hostPort: number, proto: string) => ns.call(host, "hostPortFree", [{ hostPort, proto }]);
  assert.deepEqual(await free(9000, "tcp"), { ok: true, value: false });
  assert.deepEqual(await free(9001, "tcp"), { ok: true, value: true });
  assert.deepEqual(await free(9053, "udp"), { ok: true, value: false });
  assert.deepEqual(await free(9054, "udp"), { ok: true, value: true });
  const r = await ns.call(host, "hostPortFree", [{ hostIp: "192.0.2.99", hostPort: 80, proto: "tcp" }]);
  assert.equal(!r.ok && r.code, "MM_INVALID_PORT");
});

async function brNetfilter(on: boolean): Promise<boolean> {
  const file = "/proc/sys/net/bridge/bridge-nf-call-iptables";
  const r = await ns.run(host, ["sh", "-c", `test -e ${file} && echo ${on ? 1 : 0} > ${file}`]);
  return r.code === 0;
}

for (const mode of ["without br_netfilter", "with br_netfilter"] as const) {
  test(`mm's rules, ${mode}: groups, host isolation, egress, published ports, anti-spoofing`, async (t) => {
    if (!(await brNetfilter(mode === "with br_netfilter"))) {
      t.skip("br_netfilter is not loaded on this kernel (mm does not load modules in tests)");
      return;
    }
    const applied = await ns.call(host, "applyRuleset", [buildRuleset(plan)]);
    assert.ok(applied.ok, JSON.stringify(applied));
    const [g1, g2, g3] = [g("g1"), g("g2"), g("g3")];
    await expectAll([
      // Groups: g1 and g2 share "a"; g3 has none.
      { what: "g1 -> g2 ping", run: ping(g1.ns, g2.m.ip), want: true },
      { what: "g2 -> g1 ping", run: ping(g2.ns, g1.m.ip), want: true },
      { what: "g1 -> g2 tcp", run: tcp(g1.ns, g2.m.ip, 80), want: g1.m.ip },
      { what: "g1 -> g3 ping", run: ping(g1.ns, g3.m.ip), want: false },
      { what: "g3 -> g1 ping", run: ping(g3.ns, g1.m.ip), want: false },
      { what: "g1 -> g3 tcp", run: tcp(g1.ns, g3.m.ip, 80), want: REFUSED_OR_DROPPED },
      // The host: ICMP echo to the gateway only; the host itself reaches guests.
      { what: "g1 -> gateway ping", run: ping(g1.ns, GW), want: true },
      { what: "g1 -> host service on the gateway", run: tcp(g1.ns, GW, 9000), want: REFUSED_OR_DROPPED },
      { what: "g1 -> host service on the uplink", run: tcp(g1.ns, HOST_UPLINK, 9000), want: REFUSED_OR_DROPPED },
      { what: "g3 -> host service on the gateway", run: tcp(g3.ns, GW, 9000), want: REFUSED_OR_DROPPED },
      { what: "g1 -> host udp service", run: udp(g1.ns, GW, 9053), want: REFUSED_OR_DROPPED },
      { what: "host -> g1 tcp", run: tcp(host, g1.m.ip, 80), want: GW },
      // Egress: g1 allow (masqueraded), g2 deny, g3 only outside:8080/tcp.
      { what: "g1 -> outside tcp (masqueraded)", run: tcp(g1.ns, OUTSIDE, 8080), want: HOST_UPLINK },
      { what: "g1 -> outside ping", run: ping(g1.ns, OUTSIDE), want: true },
      { what: "g2 -> outside tcp", run: tcp(g2.ns, OUTSIDE, 8080), want: REFUSED_OR_DROPPED },
      { what: "g2 -> outside ping", run: ping(g2.ns, OUTSIDE), want: false },
      { what: "g3 -> outside:8080", run: tcp(g3.ns, OUTSIDE, 8080), want: HOST_UPLINK },
      { what: "g3 -> outside:8081", run: tcp(g3.ns, OUTSIDE, 8081), want: REFUSED_OR_DROPPED },
      { what: "g3 -> outside ping", run: ping(g3.ns, OUTSIDE), want: false },
      // Published ports, from outside (source kept), from the host itself, from other guests.
      { what: "outside -> :8080 (g1)", run: tcp(out, HOST_UPLINK, 8080), want: OUTSIDE },
      { what: "outside -> :5353/udp (g1)", run: udp(out, HOST_UPLINK, 5353), want: OUTSIDE },
      { what: "outside -> uplink:8082 (g2, deny-egress)", run: tcp(out, HOST_UPLINK, 8082), want: OUTSIDE },
      {
        what: "outside -> gateway:8082 (published on the uplink only)",
        run: tcp(out, GW, 8082),
        want: REFUSED_OR_DROPPED,
      },
      { what: "outside -> g1 directly", run: tcp(out, g1.m.ip, 80), want: REFUSED_OR_DROPPED },
      { what: "host -> uplink:8080", run: tcp(host, HOST_UPLINK, 8080), want: HOST_UPLINK },
      { what: "host -> 127.0.0.1:8080", run: tcp(host, "127.0.0.1", 8080), want: GW },
      { what: "host -> gateway:8080", run: tcp(host, GW, 8080), want: GW },
      { what: "host -> 127.0.0.1:8083 (published on loopback)", run: tcp(host, "127.0.0.1", 8083), want: GW },
      { what: "outside -> uplink:8083 (loopback only)", run: tcp(out, HOST_UPLINK, 8083), want: REFUSED_OR_DROPPED },
      { what: "g1 -> uplink:8082 (hairpin to g2)", run: tcp(g1.ns, HOST_UPLINK, 8082), want: GW },
      { what: "g2 (deny) -> uplink:8080 (hairpin)", run: tcp(g2.ns, HOST_UPLINK, 8080), want: REFUSED_OR_DROPPED },
      { what: "g3 (allow-list) -> gateway:8080", run: tcp(g3.ns, GW, 8080), want: REFUSED_OR_DROPPED },
      // Spoofed source addresses from g1 get nowhere; IPv6 is not forwarded between guests.
      { what: "g1 -> g2 ping from a spare address", run: ping(g1.ns, g2.m.ip, "-I", SPARE), want: false },
      { what: "g1 -> gateway ping from a spare address", run: ping(g1.ns, GW, "-I", SPARE), want: false },
      {
        what: "g1 -> outside tcp from a spare address",
        run: tcp(g1.ns, OUTSIDE, 8080, SPARE),
        want: REFUSED_OR_DROPPED,
      },
      { what: "g1 -> g2 over IPv6", run: ping(g1.ns, await linkLocal(g2.ns), "-6", "-I", "eth0"), want: false },
    ]);
    // A spoofed MAC gets nowhere either; the real one works again afterwards.
    await ns.must(g1.ns, ["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"]);
    await expectAll([
      { what: "g1 (MAC spoofed) -> g2", run: ping(g1.ns, g2.m.ip), want: false },
      { what: "g1 (MAC spoofed) -> gateway", run: ping(g1.ns, GW), want: false },
      { what: "g1 (MAC spoofed) -> outside", run: tcp(g1.ns, OUTSIDE, 8080), want: REFUSED_OR_DROPPED },
    ]);
    await ns.must(g1.ns, ["ip", "link", "set", "eth0", "address", g1.m.mac]);
    await expectAll([{ what: "g1 (MAC restored) -> g2", run: ping(g1.ns, g2.m.ip), want: true }]);
    assert.equal(await arpPoison(), g3.m.mac, "g1's ARP claim to g3's address is dropped at the bridge");
  });
}

test("a machine not yet in the ruleset gets nothing through its port", async () => {
  await addGuest("g4", 3, "a", "allow");
  const g4 = g("g4");
  await expectAll([
    { what: "g4 (unplanned) -> g1", run: ping(g4.ns, g("g1").m.ip), want: false },
    { what: "g4 (unplanned) -> gateway", run: ping(g4.ns, GW), want: false },
  ]);
  plan = { ...plan, machines: [...plan.machines, g4.m] };
  const applied = await ns.call(host, "applyRuleset", [buildRuleset(plan)]);
  assert.ok(applied.ok, JSON.stringify(applied));
  await expectAll([{ what: "g4 (planned, group a) -> g1", run: ping(g4.ns, g("g1").m.ip), want: true }]);
});

test("removeAll takes away TAPs, tables and bridge, and a second run finds nothing", async () => {
  const r = (await ns.call(host, "removeAll", [plan])) as { ok: true; value: string[] };
  assert.ok(r.ok, JSON.stringify(r));
  assert.deepEqual(r.value, [
    ...plan.machines.map((m) => `tap ${m.tap}`),
    "nftables tables inet mm and bridge mm",
    `bridge ${BRIDGE}`,
  ]);
  assert.deepEqual(await ns.call(host, "listRuleset", []), { ok: true, value: "" });
  assert.deepEqual(await ns.call(host, "listTaps", []), { ok: true, value: [] });
  assert.deepEqual(await ns.call(host, "removeAll", [plan]), { ok: true, value: [] });
});

test("ensureHostNetwork sets up bridge, forwarding and rules from a plan, and refuses a bad plan untouched", async () => {
  const bad = await ns.call(host, "ensureHostNetwork", [{ ...plan, gateway: "10.1.0.1" }]);
  assert.equal(!bad.ok && bad.code, "MM_INVALID_NETWORK");
  assert.equal(await ns.run(host, ["ip", "link", "show", BRIDGE]).then((r) => r.code), 1, "no bridge made");
  await ns.must(host, ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"]);
  assert.deepEqual(await ns.call(host, "ensureHostNetwork", [plan]), { ok: true, value: null });
  assert.deepEqual(await ns.call(host, "ensureHostNetwork", [plan]), { ok: true, value: null });
  assert.equal((await ns.must(host, ["cat", "/proc/sys/net/ipv4/ip_forward"])).trim(), "1");
  assert.equal((await ns.must(host, ["cat", `/proc/sys/net/ipv4/conf/${BRIDGE}/route_localnet`])).trim(), "1");
  const listed = (await ns.call(host, "listRuleset", [])) as { ok: true; value: string };
  assert.match(listed.value, /table inet mm \{[\s\S]*table bridge mm \{/);
  const r = (await ns.call(host, "removeAll", [plan])) as { ok: true; value: string[] };
  assert.deepEqual(r.value, ["nftables tables inet mm and bridge mm", `bridge ${BRIDGE}`]);
});
