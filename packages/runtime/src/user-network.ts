// A machine's user-mode network (`--network user`, the default without root): one passt
// process per machine, started by the supervisor before QEMU and ended with it. The
// guest's connections leave as the user's own sockets; published ports are passt's
// forwards on the host. No bridge, TAP, nftables or root.

import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { MmError, type NetworkIdentity } from "@mm/core";
import { macFor, type PortMapping, passtArgs, USER_NET } from "@mm/net";
import { hostResolvers, networkOf, readResolvConf } from "./network.js";
import { waitForSocket } from "./shares.js";
import { SSH_PORT } from "./ssh.js";
import type { MachineRecord } from "./store.js";

export const PASST = "passt";

export interface UserNetwork {
  readonly daemon: ChildProcess;
  readonly nic: { readonly socket: string; readonly mac: string };
  readonly identity: NetworkIdentity;
}

/** Starts the machine's passt and waits until it listens for QEMU. */
export async function startUserNetwork(
  rec: MachineRecord,
  hostname: string,
  runDir: string,
  logDir: string,
  env: NodeJS.ProcessEnv,
  onExit: (how: string) => void,
): Promise<UserNetwork> {
  const net = networkOf(rec);
  const socket = join(runDir, "net.sock");
  const args = passtArgs({
    socket,
    pidFile: join(runDir, "passt.pid"),
    logFile: join(logDir, "passt.log"),
    publish: net.publish,
  });
  // setpriv --pdeathsig: passt dies with the supervisor, as QEMU does.
  const daemon = spawn("setpriv", ["--pdeathsig", "KILL", "--", env.MM_PASST ?? PASST, ...args], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  daemon.stderr?.on("data", (d) => {
    stderr = (stderr + d).slice(-2000);
  });
  const spawnError = new Promise<never>((_, reject) =>
    daemon.once("error", (e) => reject(new MmError("MM_TOOL_MISSING", `setpriv or passt: ${e.message}`))),
  );
  daemon.once("exit", (code, sig) => onExit(sig ? `killed by ${sig}` : `exit status ${code}`));
  try {
    await Promise.race([waitForSocket(socket, daemon, "passt"), spawnError]);
  } catch (e) {
    daemon.kill("SIGKILL");
    if (/not found|ENOENT|No such file/.test(stderr)) {
      throw new MmError("MM_TOOL_MISSING", "passt (apt-get install passt), for user-mode networking");
    }
    if (/External interface not usable|No external routable interface/.test(stderr)) {
      throw new MmError("MM_NET_SETUP", `passt: ${stderr.trim().split("\n").pop()}`, {
        hint: "user-mode networking needs a host interface with a default route; or run with --network none",
      });
    }
    if (stderr.trim()) throw new MmError("MM_NET_SETUP", `passt: ${stderr.trim()}`, { cause: e });
    throw e;
  }
  const dns = net.dns ?? hostResolvers(readResolvConf());
  return {
    daemon,
    nic: { socket, mac: macFor(rec.id) },
    identity: {
      address: `${USER_NET.address}/${USER_NET.prefix}`,
      gateway: USER_NET.gateway,
      dns: [...dns],
      hosts: [`${USER_NET.address} ${hostname}`],
    },
  };
}

/** A free TCP port on the host's loopback, for a rootless machine's SSH forward. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === "object" ? resolve(addr.port) : reject(new Error("no port"))));
    });
  });
}

/** A user-mode machine's published port that `mm ssh` goes through (guest port 22/tcp). */
export function isSshForward(p: PortMapping): boolean {
  return p.guestPort === SSH_PORT && p.proto === "tcp";
}

/**
 * The ports of a user-mode machine with SSH: the guest has no address the host reaches,
 * so its SSH server gets a forward from a free port on the host's loopback (unless the
 * user published port 22 already).
 */
export async function withSshForward(publish: readonly PortMapping[]): Promise<PortMapping[]> {
  if (publish.some(isSshForward)) return [...publish];
  return [...publish, { hostIp: "127.0.0.1", hostPort: await freeLoopbackPort(), guestPort: SSH_PORT, proto: "tcp" }];
}

/** Where `mm ssh` connects: the guest's address on the bridge, or the loopback forward of port 22. */
export function sshEndpoint(rec: MachineRecord, leaseIp: string | undefined): { host: string; port: number } | null {
  const net = networkOf(rec);
  if (net.mode === "user") {
    const fwd = net.publish.find(isSshForward);
    return fwd ? { host: fwd.hostIp ?? "127.0.0.1", port: fwd.hostPort } : null;
  }
  return leaseIp ? { host: leaseIp, port: SSH_PORT } : null;
}
