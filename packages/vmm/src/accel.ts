// Chooses KVM or TCG. /dev/kvm existing is not enough: nested or paravirtual KVM
// can expose it yet fail on a stock kernel seconds into boot. So KVM is used only
// after the real guest kernel has booted to mm-init under it; the verdict is cached
// per host and kernel build.

import { createHash } from "node:crypto";
import { mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { cpus, hostname, release } from "node:os";
import { join } from "node:path";
import { MmError } from "@mm/core";
import type { Accel, DiskSpec, Engine } from "./engine.js";
import { kvmDeviceUsable } from "./host.js";

export const PROBE_MARKER = "mm-init: probe ok";
export const TCG_WARNING =
  "warning: KVM is not usable on this host; running under TCG emulation, which is NOT a security boundary";

export interface AccelDecision {
  readonly accel: Accel;
  readonly source: "env" | "cache" | "probe" | "no-kvm-device";
  readonly reason: string;
}

export function parseAccelOverride(value: string | undefined): Accel | undefined {
  if (value === undefined || value === "") return undefined;
  if (value === "kvm" || value === "tcg") return value;
  throw new MmError("MM_INVALID_ACCEL", `"${value}"`);
}

export interface ProbeInput {
  readonly engine: Engine;
  readonly kernel: string;
  /**
   * A root disk holding mm-init at /.mm/init, mounted read-only. A function is called
   * only if a probe actually boots (not for an override, a missing /dev/kvm or a cached
   * verdict), so callers need not build the disk on every run.
   */
  readonly rootDisk: DiskSpec | (() => Promise<DiskSpec>);
  readonly runDir: string;
  readonly cacheDir: string;
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly kvmDevice?: string;
}

export async function chooseAccel(input: ProbeInput): Promise<AccelDecision> {
  const forced = parseAccelOverride((input.env ?? process.env).MM_ACCEL);
  if (forced) return { accel: forced, source: "env", reason: `MM_ACCEL=${forced}` };
  if (!(await kvmDeviceUsable(input.kvmDevice))) {
    return { accel: "tcg", source: "no-kvm-device", reason: "/dev/kvm is missing or not accessible" };
  }
  const key = await probeKey(input.kernel);
  const file = join(input.cacheDir, "accel", `${key}.json`);
  try {
    const cached = JSON.parse(await readFile(file, "utf8")) as { accel: Accel; reason: string };
    if (cached.accel === "kvm" || cached.accel === "tcg") return { ...cached, source: "cache" };
  } catch {
    // no verdict yet
  }
  const verdict = await probeKvm(input);
  await mkdir(join(input.cacheDir, "accel"), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, JSON.stringify({ ...verdict, probedAt: new Date().toISOString() }));
  await rename(tmp, file);
  return { ...verdict, source: "probe" };
}

/** Identifies (host, kernel build, QEMU build): a change to any of them re-probes. */
async function probeKey(kernel: string): Promise<string> {
  const k = await stat(kernel);
  const q = await stat("/usr/bin/qemu-system-x86_64").catch(() => null);
  const facts = {
    v: 1,
    host: hostname(),
    release: release(),
    cpu: cpus()[0]?.model ?? "",
    kernel: [kernel, k.size, k.mtimeMs],
    qemu: q ? [q.size, q.mtimeMs] : null,
  };
  return createHash("sha256").update(JSON.stringify(facts)).digest("hex").slice(0, 32);
}

export async function probeKvm(input: ProbeInput): Promise<{ accel: Accel; reason: string }> {
  const timeoutMs = input.timeoutMs ?? Number(process.env.MM_KVM_PROBE_TIMEOUT_MS ?? 8000);
  let console = "";
  let sawMarker!: () => void;
  const marker = new Promise<void>((resolve) => {
    sawMarker = resolve;
  });
  // Outside the try below: failing to make the disk is not a verdict on KVM.
  const rootDisk = typeof input.rootDisk === "function" ? await input.rootDisk() : input.rootDisk;
  const started = Date.now();
  let vm: Awaited<ReturnType<Engine["boot"]>>;
  try {
    vm = await input.engine.boot({
      id: "kvm-probe",
      runDir: input.runDir,
      kernel: input.kernel,
      kernelArgs: ["mm.probe=1"],
      rootDisk,
      cpus: 1,
      memoryMib: 128,
      accel: "kvm",
      agentChannel: false,
      onConsole: (d) => {
        console = (console + d.toString("utf8")).slice(-4096);
        if (console.includes(PROBE_MARKER)) sawMarker();
      },
    });
  } catch (e) {
    const msg = (e as Error).message;
    // Keep the VMM's own words (the last line that says "error"), on one line.
    const line = msg.split("\n").find((l) => /error/i.test(l) && !/^the VMM/.test(l)) ?? msg.split("\n")[0] ?? "";
    return { accel: "tcg", reason: `KVM start failed: ${line.replace(/^.*qemu-system-x86_64: /, "").slice(0, 160)}` };
  }
  let timer: NodeJS.Timeout | undefined;
  const outcome = await Promise.race([
    marker.then(() => "ok" as const),
    vm.exited.then(() => (console.includes(PROBE_MARKER) ? ("ok" as const) : ("died" as const))),
    new Promise<"timeout">((r) => {
      timer = setTimeout(() => r("timeout"), timeoutMs);
    }),
  ]);
  clearTimeout(timer);
  await vm.kill();
  const ms = Date.now() - started;
  if (outcome === "ok") return { accel: "kvm", reason: `guest kernel booted to init under KVM in ${ms} ms` };
  const tail = console.trim().split("\n").slice(-1)[0] ?? "";
  return {
    accel: "tcg",
    reason:
      outcome === "timeout"
        ? `guest kernel did not reach init under KVM within ${timeoutMs} ms`
        : `guest died under KVM${tail ? `: ${tail.slice(0, 160)}` : ""}`,
  };
}
