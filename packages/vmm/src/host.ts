// Facts about the host that the engine needs: the TSC frequency and whether /dev/kvm can be opened.

import { constants as fsc } from "node:fs";
import { access, readFile } from "node:fs/promises";

/** Parses the host TSC frequency (kHz) out of /proc/cpuinfo text; pure. */
export function tscKhzFromCpuinfo(cpuinfo: string): number | undefined {
  if (!/\bflags\s*:.*\bconstant_tsc\b/.test(cpuinfo)) return undefined;
  const m = /^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo);
  if (!m) return undefined;
  const khz = Math.round(Number(m[1]) * 1000);
  return Number.isFinite(khz) && khz > 0 ? khz : undefined;
}

export async function hostTscKhz(): Promise<number | undefined> {
  const fromEnv = Number(process.env.MM_TSC_KHZ);
  if (Number.isFinite(fromEnv) && fromEnv > 0) return fromEnv;
  try {
    const sysfs = Number((await readFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz", "utf8")).trim());
    if (Number.isFinite(sysfs) && sysfs > 0) return sysfs;
  } catch {
    // not exposed by this kernel; fall back to cpuinfo
  }
  // "cpu MHz" is the TSC rate only where the TSC is constant and no cpufreq driver
  // scales the reported clock (typical in VMs); elsewhere, pass nothing.
  if (
    await access("/sys/devices/system/cpu/cpu0/cpufreq").then(
      () => true,
      () => false,
    )
  )
    return undefined;
  try {
    return tscKhzFromCpuinfo(await readFile("/proc/cpuinfo", "utf8"));
  } catch {
    return undefined;
  }
}

export async function kvmDeviceUsable(path = "/dev/kvm"): Promise<boolean> {
  try {
    await access(path, fsc.R_OK | fsc.W_OK);
    return true;
  } catch {
    return false;
  }
}
