// User-mode networking for rootless machines: passt (Debian package passt) gives the
// guest an Ethernet link over a unix socket and turns its connections into ordinary
// sockets of the user running it, so no bridge, TAP, NAT or root is needed. This file
// is the pure plan (passt's command line and the guest's addressing); the runtime
// starts the process.

import type { PortMapping } from "./ports.js";

/** The guest's side of a user-mode link (as in QEMU's slirp: a private /24 behind the host). */
export const USER_NET = {
  address: "10.0.2.15",
  prefix: 24,
  gateway: "10.0.2.2",
} as const;

export interface PasstPlan {
  /** Where passt listens for QEMU (`-netdev stream`). */
  readonly socket: string;
  readonly pidFile: string;
  readonly logFile: string;
  readonly publish: readonly PortMapping[];
}

/** passt's arguments. */
export function passtArgs(plan: PasstPlan): string[] {
  const forward = (proto: "tcp" | "udp") =>
    plan.publish
      .filter((p) => p.proto === proto)
      .flatMap((p) => [proto === "tcp" ? "-t" : "-u", `${p.hostIp ? `${p.hostIp}/` : ""}${p.hostPort}:${p.guestPort}`]);
  return [
    "--foreground",
    "--quiet",
    "--socket",
    plan.socket,
    "--pid",
    plan.pidFile,
    "--log-file",
    plan.logFile,
    "--ipv4-only",
    "--address",
    USER_NET.address,
    "--netmask",
    String(USER_NET.prefix),
    "--gateway",
    USER_NET.gateway,
    // The gateway is not the host: without this, a guest reaches the user's services on
    // the host's loopback through it (slirp4netns's --disable-host-loopback, by default).
    "--no-map-gw",
    // mm-init configures the address, route and resolvers itself, from CONFIG; the guest
    // reaches the resolvers it is given through passt like any other address.
    "--no-dhcp",
    "--no-ndp",
    "--no-dhcpv6",
    "--no-ra",
    ...forward("tcp"),
    ...forward("udp"),
    // Nothing else is forwarded to the guest (passt's default for -t/-u is none, said here).
    ...(plan.publish.some((p) => p.proto === "tcp") ? [] : ["-t", "none"]),
    ...(plan.publish.some((p) => p.proto === "udp") ? [] : ["-u", "none"]),
  ];
}
