// `mm doctor`: checks the host for what mm needs, each failure with the fix.

import { execFile } from "node:child_process";
import { constants as fsc } from "node:fs";
import { access, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { userInfo } from "node:os";
import { join } from "node:path";
import { chooseAccel, findExecutable, kvmDeviceUsable } from "@mm/vmm";
import { defaultImageRootfs, elfNeedsInterpreter } from "./default-image.js";
import { cgroupLayout, cgroupMountDir, jailEnabled, jailExecutor } from "./jail.js";
import { HostNetwork } from "./network.js";
import { initPath, isRootless, kernelPath, runDir } from "./paths.js";
import type { Runtime } from "./runtime.js";

export interface Check {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
  readonly hint?: string;
}

function version(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve) => {
    execFile(cmd, args, (err, out, errOut) => resolve(err ? "" : (`${out}${errOut}`.split("\n")[0]?.trim() ?? "")));
  });
}

async function tool(name: string, pkg: string, versionArgs?: string[]): Promise<Check> {
  const path = await findExecutable(name);
  if (!path) return { name, ok: false, detail: "not found on PATH", hint: `apt-get install ${pkg}` };
  return { name, ok: true, detail: versionArgs ? (await version(path, versionArgs)) || path : path };
}

export async function doctor(rt: Runtime, options: { fix?: boolean } = {}): Promise<Check[]> {
  const checks: Check[] = [];
  const major = Number(process.versions.node.split(".")[0]);
  checks.push({
    name: "node",
    ok: major >= 24,
    detail: `v${process.versions.node}`,
    ...(major < 24 && { hint: "run scripts/setup.sh: it brings Node 24 through npm" }),
  });
  checks.push(await tool("qemu-system-x86_64", "qemu-system-x86", ["--version"]));
  checks.push(await tool("qemu-img", "qemu-utils", ["--version"]));
  checks.push(await tool("mke2fs", "e2fsprogs", ["-V"]));
  checks.push(await tool("setpriv", "util-linux"));

  const bb = await readFile("/bin/busybox").catch(() => null);
  checks.push(
    !bb
      ? { name: "busybox-static", ok: false, detail: "/bin/busybox not found", hint: "apt-get install busybox-static" }
      : elfNeedsInterpreter(bb)
        ? {
            name: "busybox-static",
            ok: false,
            detail: "/bin/busybox is dynamic",
            hint: "apt-get install busybox-static",
          }
        : { name: "busybox-static", ok: true, detail: "/bin/busybox (static)" },
  );

  const kernel = kernelPath(rt.paths, rt.env);
  const kernelOk = await access(kernel, fsc.R_OK).then(
    () => true,
    () => false,
  );
  checks.push({
    name: "guest kernel",
    ok: kernelOk,
    detail: kernel,
    ...(!kernelOk && { hint: "run guest/kernel/build.sh (scripts/setup.sh does it)" }),
  });
  const init = initPath(rt.env);
  const initOk = await access(init, fsc.X_OK).then(
    () => true,
    () => false,
  );
  checks.push({
    name: "guest init",
    ok: initOk,
    detail: init,
    ...(!initOk && { hint: "run make -C guest/init (scripts/setup.sh does it)" }),
  });

  const probe = join(rt.paths.state, `.doctor-${process.pid}`);
  const writable = await mkdir(rt.paths.state, { recursive: true })
    .then(() => writeFile(probe, "ok"))
    .then(() => rm(probe))
    .then(
      () => true,
      () => false,
    );
  checks.push({
    name: "state directory",
    ok: writable,
    detail: rt.paths.state,
    ...(!writable && { hint: "run as root or set MM_STATE to a writable directory" }),
  });

  checks.push(await tool("dropbearkey", "dropbear-bin (for --ssh)"));
  checks.push(await tool("passt", "passt (user-mode networking)"));
  if (isRootless()) {
    checks.push(...(await rootlessChecks()));
  } else {
    checks.push(await jailCheck(rt));
    checks.push(await tool("ip", "iproute2", ["-V"]));
    checks.push(await tool("nft", "nftables", ["--version"]));
  }
  if (!isRootless())
    try {
      const stray = await new HostNetwork(rt.store, rt.env).leftovers(options.fix ?? false);
      checks.push(
        stray.length === 0
          ? { name: "host network", ok: true, detail: "no leftovers (TAPs match running machines)" }
          : options.fix
            ? { name: "host network", ok: true, detail: `removed ${stray.join(", ")}; ruleset rebuilt` }
            : {
                name: "host network",
                ok: false,
                detail: `leftovers: ${stray.join(", ")}`,
                hint: "mm doctor --fix removes them",
              },
      );
    } catch (e) {
      checks.push({
        name: "host network",
        ok: false,
        detail: (e as Error).message,
        hint: "run as root (CAP_NET_ADMIN)",
      });
    }

  const kvm = await kvmDeviceUsable();
  if (kernelOk && initOk && bb && !elfNeedsInterpreter(bb)) {
    try {
      const base = await defaultImageRootfs(rt.paths, init);
      const d = await chooseAccel({
        engine: await rt.engine(),
        kernel,
        rootDisk: { path: base.path, format: "raw", readOnly: true },
        runDir: runDir(rt.paths, "kvm-probe"),
        cacheDir: rt.paths.cache,
        env: rt.env,
      });
      checks.push({
        name: "acceleration",
        ok: true,
        detail: `${d.accel} (${d.source}: ${d.reason})${d.accel === "tcg" ? " — TCG is emulation, not a security boundary" : ""}`,
        ...(d.accel === "tcg" && {
          hint: kvm
            ? "KVM is present but cannot boot the guest here (nested/paravirtual?)"
            : "enable KVM (BIOS, kvm module, /dev/kvm access) for isolation and speed",
        }),
      });
    } catch (e) {
      checks.push({ name: "acceleration", ok: false, detail: (e as Error).message });
    }
  } else {
    checks.push({
      name: "acceleration",
      ok: false,
      detail: "cannot probe without kernel, init and busybox",
      hint: "fix the checks above",
    });
  }
  return checks;
}

/** What features need root, stated; and whether this user can build images (subordinate ids). */
export const ROOT_ONLY_FEATURES = [
  "--network bridge (own address on mm's bridge)",
  "--egress and --network-group (nftables filters)",
  "anti-spoofing filters",
  "virtio-fs shares (9p is used instead)",
  "a VMM user per machine (jail uid switching)",
] as const;

async function rootlessChecks(): Promise<Check[]> {
  const user = userInfo();
  const checks: Check[] = [
    {
      name: "mode",
      ok: true,
      detail: `rootless (uid ${user.uid}): user-mode networking through passt; not available without root: ${ROOT_ONLY_FEATURES.join("; ")}`,
    },
  ];
  checks.push(await tool("newuidmap", "uidmap (rootless image builds)"));
  const ranges = async (file: string) =>
    (await readFile(file, "utf8").catch(() => ""))
      .split("\n")
      .some((l) => l.split(":")[0] === user.username || l.split(":")[0] === String(user.uid));
  const ok = (await ranges("/etc/subuid")) && (await ranges("/etc/subgid"));
  checks.push({
    name: "subordinate ids",
    ok,
    detail: ok ? `${user.username} has ranges in /etc/subuid and /etc/subgid` : `none for ${user.username}`,
    ...(!ok && {
      hint: `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 ${user.username} (as root): images keep their files' owners`,
    }),
  });
  return checks;
}

/** What the jailed VMM (docs/adr/0008) needs here, and whether it is on. */
async function jailCheck(rt: Runtime): Promise<Check> {
  if (!jailEnabled(rt.env)) {
    return {
      name: "VMM jail",
      ok: false,
      detail: "off (MM_JAIL=0)",
      hint: "unset MM_JAIL: every VMM then runs jailed",
    };
  }
  const executor = jailExecutor(rt.env);
  if (!(await findExecutable(executor))) {
    return {
      name: "VMM jail",
      ok: false,
      detail: `${executor} is missing`,
      hint: "make -C host/jail (scripts/setup.sh does it)",
    };
  }
  const cg = await cgroupLayout("doctor", cgroupMountDir(rt.paths));
  return {
    name: "VMM jail",
    ok: true,
    detail: `on: a uid per machine, its own mount namespace, no capabilities, seccomp; cgroups ${
      cg ? (cg.version === 2 ? "v2" : "v1 (cpu, memory, pids)") : "unavailable (no resource limits)"
    }`,
  };
}
