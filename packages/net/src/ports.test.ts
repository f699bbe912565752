import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "@mm/core";
import fc from "fast-check";
import { formatIpv4 } from "./ipam.js";
import {
  checkPortConflicts,
  formatPortLine,
  formatPublished,
  formatPublishedList,
  type PortMapping,
  parsePublish,
} from "./ports.js";

const code = (c: string) => (e: unknown) => isMmError(e) && e.code === c;

test("-p forms Docker accepts", () => {
  const cases: [string, PortMapping][] = [
    ["8080:80", { hostPort: 8080, guestPort: 80, proto: "tcp" }],
    ["8080:80/tcp", { hostPort: 8080, guestPort: 80, proto: "tcp" }],
    ["53:53/udp", { hostPort: 53, guestPort: 53, proto: "udp" }],
    ["127.0.0.1:8080:80", { hostIp: "127.0.0.1", hostPort: 8080, guestPort: 80, proto: "tcp" }],
    ["0.0.0.0:8080:80", { hostPort: 8080, guestPort: 80, proto: "tcp" }],
    ["10.0.0.5:5353:53/udp", { hostIp: "10.0.0.5", hostPort: 5353, guestPort: 53, proto: "udp" }],
    ["65535:1", { hostPort: 65535, guestPort: 1, proto: "tcp" }],
  ];
  for (const [spec, want] of cases) assert.deepEqual(parsePublish(spec), want, spec);
});

test("bad -p values are MM_INVALID_PORT with a reason", () => {
  const cases: [string, RegExp][] = [
    ["80", /host port too/],
    ["", /invalid port mapping/],
    ["0:80", /bad host port/],
    ["8080:0", /bad guest port/],
    ["65536:80", /bad host port/],
    ["8080:80/sctp", /tcp or udp/],
    ["8080:80/TCP", /tcp or udp/],
    ["8000-8010:80", /ranges are not supported/],
    ["[::1]:8080:80", /IPv6/],
    ["1.2.3:8080:80", /bad host address/],
    ["a:b", /bad host port/],
    ["1:2:3:4", /invalid port mapping/],
    ["+80:80", /bad host port/],
    ["8080:80/", /tcp or udp/],
  ];
  for (const [spec, why] of cases) {
    assert.throws(
      () => parsePublish(spec),
      (e) => code("MM_INVALID_PORT")(e) && why.test((e as Error).message + (e as { hint: string }).hint),
      spec,
    );
  }
});

const mapping: fc.Arbitrary<PortMapping> = fc.record(
  {
    hostIp: fc.integer({ min: 1, max: 0xffffffff }).map(formatIpv4),
    hostPort: fc.integer({ min: 1, max: 65535 }),
    guestPort: fc.integer({ min: 1, max: 65535 }),
    proto: fc.constantFrom("tcp" as const, "udp" as const),
  },
  { requiredKeys: ["hostPort", "guestPort", "proto"] },
);

test("property: what mm ps prints parses back to the same mapping", () => {
  fc.assert(
    fc.property(mapping, (m) => {
      const shown = formatPublished(m);
      const [host, guest] = shown.split("->") as [string, string];
      assert.deepEqual(parsePublish(`${host}:${guest}`), { ...m });
    }),
  );
});

test("display as docker ps and docker port show it", () => {
  const web: PortMapping = { hostPort: 8080, guestPort: 80, proto: "tcp" };
  const dns: PortMapping = { hostIp: "127.0.0.1", hostPort: 5353, guestPort: 53, proto: "udp" };
  assert.equal(formatPublished(web), "0.0.0.0:8080->80/tcp");
  assert.equal(formatPortLine(dns), "53/udp -> 127.0.0.1:5353");
  assert.equal(formatPublishedList([web, dns]), "127.0.0.1:5353->53/udp, 0.0.0.0:8080->80/tcp");
  assert.equal(formatPublishedList([]), "");
});

test("conflicts: same protocol and port on a shared host address", () => {
  const p = (s: string) => parsePublish(s);
  assert.throws(() => checkPortConflicts([p("8080:80")], [p("8080:81")]), code("MM_PORT_IN_USE"));
  assert.throws(() => checkPortConflicts([p("127.0.0.1:8080:80")], [p("8080:81")]), code("MM_PORT_IN_USE"));
  assert.throws(() => checkPortConflicts([p("8080:80"), p("127.0.0.1:8080:81")]), code("MM_PORT_IN_USE"));
  checkPortConflicts([p("8080:80")], [p("8080:80/udp"), p("8081:80")]);
  checkPortConflicts([p("127.0.0.1:8080:80"), p("127.0.0.2:8080:80")]);
});
