// Published ports: Docker's `-p [hostIP:]hostPort:guestPort[/tcp|udp]`, its display in
// `mm ps` and `mm port`, and the conflict check between mappings. Pure.

import { MmError } from "@mm/core";
import { formatIpv4, isIpv4, parseIpv4 } from "./ipam.js";

export type Protocol = "tcp" | "udp";

/** One published port. No `hostIp` means every host address (Docker's 0.0.0.0). */
export interface PortMapping {
  readonly hostIp?: string;
  readonly hostPort: number;
  readonly guestPort: number;
  readonly proto: Protocol;
}

const PORT = /^\d{1,5}$/;

function parsePort(text: string, which: string, spec: string): number {
  if (/^\d+-\d+$/.test(text)) {
    throw new MmError("MM_INVALID_PORT", `${JSON.stringify(spec)}: port ranges are not supported yet`, {
      hint: "publish each port with its own -p",
    });
  }
  const n = Number(text);
  if (!PORT.test(text) || n < 1 || n > 65535) {
    throw new MmError("MM_INVALID_PORT", `${JSON.stringify(spec)}: bad ${which} port ${JSON.stringify(text)}`);
  }
  return n;
}

/** Parses one `-p` value. The host address, when given, must be IPv4; 0.0.0.0 means all. */
export function parsePublish(spec: string): PortMapping {
  let rest = spec;
  let proto: Protocol = "tcp";
  const slash = rest.lastIndexOf("/");
  if (slash >= 0) {
    const p = rest.slice(slash + 1);
    if (p !== "tcp" && p !== "udp") {
      throw new MmError(
        "MM_INVALID_PORT",
        `${JSON.stringify(spec)}: protocol must be tcp or udp, not ${JSON.stringify(p)}`,
      );
    }
    proto = p;
    rest = rest.slice(0, slash);
  }
  if (rest.startsWith("[")) {
    throw new MmError("MM_INVALID_PORT", `${JSON.stringify(spec)}: IPv6 host addresses are not supported yet`);
  }
  const parts = rest.split(":");
  let hostIp: string | undefined;
  if (parts.length === 3) {
    const ip = parts.shift() as string;
    if (!isIpv4(ip))
      throw new MmError("MM_INVALID_PORT", `${JSON.stringify(spec)}: bad host address ${JSON.stringify(ip)}`);
    hostIp = formatIpv4(parseIpv4(ip));
    if (hostIp === "0.0.0.0") hostIp = undefined;
  }
  if (parts.length !== 2) {
    const hint =
      parts.length === 1
        ? "give the host port too: -p HOSTPORT:GUESTPORT (picking a free one is not supported yet)"
        : undefined;
    throw new MmError("MM_INVALID_PORT", JSON.stringify(spec), hint ? { hint } : undefined);
  }
  const hostPort = parsePort(parts[0] as string, "host", spec);
  const guestPort = parsePort(parts[1] as string, "guest", spec);
  return hostIp === undefined ? { hostPort, guestPort, proto } : { hostIp, hostPort, guestPort, proto };
}

/** As `docker ps` shows a mapping: "0.0.0.0:8080->80/tcp". */
export function formatPublished(m: PortMapping): string {
  return `${m.hostIp ?? "0.0.0.0"}:${m.hostPort}->${m.guestPort}/${m.proto}`;
}

/** `mm ps`'s PORTS column: every mapping, comma-separated, in a stable order. */
export function formatPublishedList(ms: readonly PortMapping[]): string {
  return sortMappings(ms).map(formatPublished).join(", ");
}

/** As `docker port NAME` prints a mapping: "80/tcp -> 0.0.0.0:8080". */
export function formatPortLine(m: PortMapping): string {
  return `${m.guestPort}/${m.proto} -> ${m.hostIp ?? "0.0.0.0"}:${m.hostPort}`;
}

export function sortMappings(ms: readonly PortMapping[]): PortMapping[] {
  return [...ms].sort(
    (a, b) =>
      a.guestPort - b.guestPort ||
      a.proto.localeCompare(b.proto) ||
      a.hostPort - b.hostPort ||
      (a.hostIp ?? "").localeCompare(b.hostIp ?? ""),
  );
}

/** Two mappings clash when they take the same protocol and host port on a common host address. */
export function mappingsClash(a: PortMapping, b: PortMapping): boolean {
  return (
    a.proto === b.proto &&
    a.hostPort === b.hostPort &&
    (a.hostIp === undefined || b.hostIp === undefined || a.hostIp === b.hostIp)
  );
}

/**
 * Throws MM_PORT_IN_USE if a wanted mapping clashes with one already published on the host or
 * with another wanted one (`-p 8080:80 -p 8080:81`).
 */
export function checkPortConflicts(wanted: readonly PortMapping[], published: readonly PortMapping[] = []): void {
  wanted.forEach((w, i) => {
    const other = [...published, ...wanted.slice(0, i)].find((p) => mappingsClash(p, w));
    if (other) {
      throw new MmError("MM_PORT_IN_USE", `${formatPublished(w)} clashes with ${formatPublished(other)}`);
    }
  });
}
