// SSH into machines: the host makes each machine's host key (so the first connection
// is verified, never "trust on first use"), the supervisor installs it and the user's
// public keys through the agent channel, and starts the bundled dropbear. `mm ssh` then
// runs the real OpenSSH client against a per-machine known_hosts file.

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { type ExecConfig, MmError } from "@mm/core";
import type { AgentSession, GuestExec } from "./agent-session.js";
import { GUEST_BUSYBOX, GUEST_DROPBEAR } from "./guest-tools.js";

const run = promisify(execFile);
export const SSH_PORT = 22;
const GUEST_HOST_KEY = "/.mm/ssh/run/host_key";

export const hostKeyPath = (machineDir: string) => join(machineDir, "ssh_host_ed25519");
export const knownHostsPath = (machineDir: string) => join(machineDir, "known_hosts");
export const hostKeyAlias = (id: string) => `mm-${id}`;

/** The machine's host key (made once with dropbearkey) and its known_hosts line. */
export async function ensureHostKey(machineDir: string, id: string): Promise<Buffer> {
  const key = hostKeyPath(machineDir);
  if (!existsSync(key)) await run("dropbearkey", ["-t", "ed25519", "-f", key]);
  const { stdout } = await run("dropbearkey", ["-y", "-f", key]);
  const line = stdout.split("\n").find((l) => l.startsWith("ssh-ed25519 "));
  if (!line) throw new MmError("MM_INTERNAL", "dropbearkey printed no public key");
  const { writeFile } = await import("node:fs/promises");
  await writeFile(knownHostsPath(machineDir), `${hostKeyAlias(id)} ${line.split(" ").slice(0, 2).join(" ")}\n`, {
    mode: 0o600,
  });
  return readFile(key);
}

/**
 * The invoking user's public key: under sudo, SUDO_USER's, as the user expects.
 * Returns the key text and the private key file beside it, if any.
 */
export async function defaultPublicKey(
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ key: string; identityFile?: string }> {
  const home = env.SUDO_USER ? await userHome(env.SUDO_USER) : (env.HOME ?? homedir());
  for (const name of ["id_ed25519", "id_ecdsa", "id_rsa"]) {
    const pub = join(home, ".ssh", `${name}.pub`);
    if (existsSync(pub)) return readPublicKey(pub);
  }
  throw new MmError("MM_USAGE", `no public key in ${join(home, ".ssh")}`, {
    hint: "create one with ssh-keygen -t ed25519, or pass --ssh-key FILE.pub",
  });
}

export async function readPublicKey(file: string): Promise<{ key: string; identityFile?: string }> {
  const text = (await readFile(file, "utf8").catch(() => "")).trim();
  if (!/^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+/.test(text)) {
    throw new MmError("MM_USAGE", `${file} is not an OpenSSH public key`);
  }
  const priv = file.replace(/\.pub$/, "");
  return { key: text.split("\n")[0] as string, ...(priv !== file && existsSync(priv) && { identityFile: priv }) };
}

async function userHome(user: string): Promise<string> {
  const passwd = await readFile("/etc/passwd", "utf8").catch(() => "");
  const line = passwd.split("\n").find((l) => l.startsWith(`${user}:`));
  return line?.split(":")[5] || homedir();
}

/** Runs a short set-up command in the guest and waits for it (output is discarded). */
export function runInGuest(
  session: AgentSession,
  cfg: ExecConfig,
  input?: Buffer,
  timeoutMs = 30_000,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const exec: GuestExec = session.openExec({ ...cfg, ...(input && { stdin: true }) });
    // Every wait on the guest has a deadline: a guest that never answers fails the set-up.
    const timer = setTimeout(() => {
      exec.signal(9);
      reject(new MmError("MM_EXEC_SETUP", `${cfg.args.join(" ").slice(0, 60)}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    exec.on("exit", () => clearTimeout(timer));
    exec.on("lost", () => clearTimeout(timer));
    const drop = (d: Buffer) => exec.grant(d.length);
    exec.on("stdout", drop);
    exec.on("stderr", drop);
    exec.on("exit", (st) => resolve(st.status));
    exec.on("guestError", (e) => reject(new MmError("MM_EXEC_SETUP", `${e.code}: ${e.message}`)));
    exec.on("lost", () => reject(new MmError("MM_ENGINE_IO", "the agent channel closed during set-up")));
    if (input) {
      exec.write(input);
      exec.endInput();
    }
  });
}

const SETUP_SCRIPT = `
set -e
B=${GUEST_BUSYBOX}
umask 077
$B mkdir -p /.mm/ssh/run
$B cat > ${GUEST_HOST_KEY}
home=$($B awk -F: -v u="$MM_SSH_USER" '$1 == u { print $6 }' /etc/passwd)
[ -n "$home" ] || { echo "no user $MM_SSH_USER in /etc/passwd" >&2; exit 3; }
$B mkdir -p "$home/.ssh"
printf '%s\\n' "$MM_SSH_KEYS" > "$home/.ssh/authorized_keys"
$B chown -R "$MM_SSH_USER" "$home/.ssh"
$B chmod 700 "$home/.ssh"; $B chmod 600 "$home/.ssh/authorized_keys"
`;

const WAIT_SCRIPT = `B=${GUEST_BUSYBOX}; for i in $($B seq 100); do $B netstat -ltn | $B grep -q ':${SSH_PORT} ' && exit 0; $B usleep 20000; done; exit 1`;

/** Installs the host key and authorized keys, starts dropbear, waits until it listens. */
export async function startSshServer(
  session: AgentSession,
  hostKey: Buffer,
  ssh: { authorizedKeys: readonly string[]; user: string },
): Promise<void> {
  const env = [
    `MM_SSH_USER=${ssh.user}`,
    `MM_SSH_KEYS=${ssh.authorizedKeys.join("\n")}`,
    "PATH=/.mm/bin:/usr/sbin:/usr/bin:/sbin:/bin",
  ];
  const status = await runInGuest(
    session,
    { args: [GUEST_BUSYBOX, "sh", "-c", SETUP_SCRIPT], env, user: "0:0" },
    hostKey,
  );
  if (status !== 0) throw new MmError("MM_EXEC_SETUP", `SSH set-up in the guest exited ${status}`);
  // The server runs as a session of the supervisor's own for the machine's lifetime.
  const server = session.openExec({
    args: [GUEST_DROPBEAR, "-F", "-E", "-s", "-p", String(SSH_PORT), "-r", GUEST_HOST_KEY],
    env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    user: "0:0",
  });
  const drop = (d: Buffer) => server.grant(d.length);
  server.on("stdout", drop);
  server.on("stderr", drop);
  const up = await runInGuest(session, { args: [GUEST_BUSYBOX, "sh", "-c", WAIT_SCRIPT], env: [], user: "0:0" });
  if (up !== 0) throw new MmError("MM_EXEC_SETUP", "the SSH server did not start listening");
}
