import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import type { BootSpec } from "./engine.js";
import { AGENT_PORT_NAME, buildQemuArgs, escapeOptionValue, kernelCommandLine } from "./qemu-args.js";

const spec = (over: Partial<BootSpec> = {}): BootSpec => ({
  id: "abc123",
  runDir: "/run/mm/abc123",
  kernel: "/k/vmlinux",
  kernelArgs: [],
  rootDisk: { path: "/m/root.qcow2", format: "qcow2", readOnly: false },
  cpus: 2,
  memoryMib: 512,
  accel: "tcg",
  agentChannel: true,
  ...over,
});
const build = (s: BootSpec, tscKhz?: number) =>
  buildQemuArgs({
    spec: s,
    fds: {
      qmp: 3,
      agent: 4,
      sockets: new Map([
        ["/r/fs0.sock", 5],
        ["/run/a,b/net.sock", 6],
      ]),
    },
    pidFile: "/r/qemu.pid",
    ...(tscKhz !== undefined && { tscKhz }),
  });

/** The value following each occurrence of a flag. */
const values = (args: string[], flag: string) => args.flatMap((a, i) => (a === flag ? [args[i + 1] as string] : []));

describe("buildQemuArgs", () => {
  test("microvm with option ROMs off, ACPI, PIC and PIT on (TCG needs them)", () => {
    assert.deepEqual(values(build(spec()), "-M"), ["microvm,x-option-roms=off,acpi=on,pit=on,pic=on,rtc=on"]);
  });

  test("acceleration and CPU model follow the accel", () => {
    const tcg = build(spec({ accel: "tcg" }));
    const kvm = build(spec({ accel: "kvm" }));
    assert.deepEqual([values(tcg, "-accel"), values(tcg, "-cpu")], [["tcg"], ["max"]]);
    assert.deepEqual([values(kvm, "-accel"), values(kvm, "-cpu")], [["kvm"], ["host"]]);
  });

  test("cpus and memory", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.integer({ min: 16, max: 1 << 20 }), (cpus, mem) => {
        const a = build(spec({ cpus, memoryMib: mem }));
        return values(a, "-smp")[0] === String(cpus) && values(a, "-m")[0] === `${mem}M`;
      }),
    );
    for (const bad of [{ cpus: 0 }, { cpus: 1.5 }, { memoryMib: 8 }]) assert.throws(() => build(spec(bad)), RangeError);
  });

  test("RAM in a file: shared or copy-on-write; incoming restores wait for migrate-incoming", () => {
    const a = build(spec({ memoryFile: { path: "/dev/shm/m,1.ram", shared: true }, incoming: true }));
    assert.deepEqual(values(a, "-M"), ["microvm,x-option-roms=off,acpi=on,pit=on,pic=on,rtc=on,memory-backend=mem"]);
    assert.deepEqual(values(a, "-object"), [
      "memory-backend-file,id=mem,size=512M,mem-path=/dev/shm/m,,1.ram,share=on",
    ]);
    assert.deepEqual(values(a, "-incoming"), ["defer"]);
    const cow = build(spec({ memoryFile: { path: "/c.ram", shared: false } }));
    assert.match(values(cow, "-object")[0] as string, /share=off$/);
    assert.deepEqual(values(cow, "-incoming"), []);
  });

  test("RAM handed over as a descriptor (a fork's sealed memfd): mapped through /proc/self/fd", () => {
    const memfd = { memoryFile: { path: "/proc/77/fd/4", shared: false, descriptor: true } };
    const a = buildQemuArgs({
      spec: spec(memfd),
      fds: { qmp: 3, agent: 4, sockets: new Map(), memory: 5 },
      pidFile: "/r/qemu.pid",
    });
    assert.deepEqual(values(a, "-object"), ["memory-backend-file,id=mem,size=512M,mem-path=/proc/self/fd/5,share=off"]);
    // The holder's path never reaches QEMU, and a descriptor must have been passed.
    assert.ok(!a.join(" ").includes("/proc/77"));
    assert.throws(() => build(spec(memfd)), /no descriptor for the guest RAM/);
  });

  test("shared directories: virtio-fs through its daemon's socket (needs shared RAM), or 9p", () => {
    const shares = [
      { kind: "virtiofs" as const, tag: "mmfs0", socket: "/r/fs0.sock" },
      { kind: "9p" as const, tag: "mmfs1", path: "/srv/a,b", readOnly: true },
    ];
    const a = build(spec({ memoryFile: { path: "/m.ram", shared: true }, shares }));
    assert.ok(values(a, "-chardev").includes("socket,id=fs0,fd=5"));
    assert.deepEqual(values(a, "-global"), ["virtio-mmio.force-legacy=false"], "vhost-user needs modern virtio");
    assert.deepEqual(values(build(spec()), "-global"), [], "others keep the layout templates were taken with");
    assert.ok(values(a, "-device").includes("vhost-user-fs-device,chardev=fs0,tag=mmfs0"));
    assert.deepEqual(values(a, "-fsdev"), ["local,id=fs1,path=/srv/a,,b,security_model=mapped-xattr,readonly=on"]);
    assert.ok(values(a, "-device").includes("virtio-9p-device,fsdev=fs1,mount_tag=mmfs1"));
    assert.throws(() => build(spec({ shares })), RangeError, "virtio-fs without shared RAM");
    assert.throws(
      () => build(spec({ shares: [{ kind: "9p", tag: "bad tag", path: "/x", readOnly: false }] })),
      RangeError,
    );
  });

  test("no default devices, no user config, no display, no reboot", () => {
    const a = build(spec());
    for (const f of ["-nodefaults", "-no-user-config", "-no-reboot"]) assert.ok(a.includes(f), f);
    assert.deepEqual(values(a, "-display"), ["none"]);
  });

  test("root disk: format, read-only flag, and commas in paths escaped", () => {
    const rw = values(build(spec()), "-drive")[0] as string;
    assert.match(rw, /^id=root,file=\/m\/root\.qcow2,format=qcow2,if=none,/);
    assert.doesNotMatch(rw, /readonly/);
    const ro = values(
      build(spec({ rootDisk: { path: "/a,b/x.ext4", format: "raw", readOnly: true } })),
      "-drive",
    )[0] as string;
    assert.match(ro, /file=\/a,,b\/x\.ext4,format=raw/);
    assert.match(ro, /,readonly=on$/);
  });

  test("QMP and the agent channel are inherited, connected descriptors (client mode, no path)", () => {
    const chardevs = values(build(spec()), "-chardev");
    assert.ok(chardevs.includes("socket,id=qmp,fd=3"));
    assert.ok(chardevs.includes("socket,id=agent,fd=4"));
    assert.ok(chardevs.every((c) => !c.includes("server")));
    assert.deepEqual(values(build(spec()), "-mon"), ["chardev=qmp,mode=control"]);
  });

  test("the agent port is named for mm-init, and absent when not asked for", () => {
    assert.ok(values(build(spec()), "-device").includes(`virtserialport,chardev=agent,name=${AGENT_PORT_NAME}`));
    const none = build(spec({ agentChannel: false }));
    assert.ok(!values(none, "-device").some((d) => d.startsWith("virtio-serial")));
    assert.ok(!values(none, "-chardev").some((d) => d.includes("agent")));
  });

  test("extra disks follow the root disk (it stays /dev/vda), named by serial", () => {
    const a = build(
      spec({ extraDisks: [{ path: "/t/tools.ext4", format: "raw", readOnly: true, serial: "mm-tools" }] }),
    );
    const drives = values(a, "-drive");
    assert.match(drives[0] as string, /^id=root,/);
    assert.equal(drives[1], "id=disk1,file=/t/tools.ext4,format=raw,if=none,readonly=on");
    assert.ok(values(a, "-device").includes("virtio-blk-device,drive=disk1,serial=mm-tools"));
    assert.throws(
      () => build(spec({ extraDisks: [{ path: "/x", format: "raw", readOnly: true, serial: "a,b" }] })),
      RangeError,
    );
  });

  test("a NIC joins its TAP with the machine's MAC; none without one", () => {
    const a = build(spec({ nic: { tap: "mmtabc123", mac: "02:aa:bb:cc:dd:ee" } }));
    assert.deepEqual(values(a, "-netdev"), ["tap,id=net0,ifname=mmtabc123,script=no,downscript=no"]);
    assert.ok(values(a, "-device").includes("virtio-net-device,netdev=net0,mac=02:aa:bb:cc:dd:ee"));
    assert.deepEqual(values(build(spec()), "-netdev"), []);
    for (const nic of [
      { tap: "a,b", mac: "02:aa:bb:cc:dd:ee" },
      { tap: "x".repeat(16), mac: "02:aa:bb:cc:dd:ee" },
      { tap: "t", mac: "zz" },
    ]) {
      assert.throws(() => build(spec({ nic })), RangeError);
    }
  });

  test("a user-mode NIC is passt's connection, inherited; a socket without a descriptor is refused", () => {
    const a = build(spec({ nic: { socket: "/run/a,b/net.sock", mac: "02:aa:bb:cc:dd:ee" } }));
    assert.deepEqual(values(a, "-netdev"), ["stream,id=net0,server=off,addr.type=fd,addr.str=6"]);
    assert.throws(() => build(spec({ nic: { socket: "/elsewhere.sock", mac: "02:aa:bb:cc:dd:ee" } })), RangeError);
    assert.ok(values(a, "-device").includes("virtio-net-device,netdev=net0,mac=02:aa:bb:cc:dd:ee"));
  });

  test("disk throttling lands on the root drive; nonsense is refused", () => {
    const a = build(
      spec({
        rootDisk: { path: "/m/r.qcow2", format: "qcow2", readOnly: false, throttle: { bps: 1048576, iops: 200 } },
      }),
    );
    assert.match(values(a, "-drive")[0] as string, /,throttling\.bps-total=1048576,throttling\.iops-total=200$/);
    assert.doesNotMatch(values(build(spec()), "-drive")[0] as string, /throttling/);
    assert.throws(
      () => build(spec({ rootDisk: { path: "/m/r", format: "raw", readOnly: false, throttle: { bps: -1 } } })),
      RangeError,
    );
  });

  test("the seccomp filter is passed when asked for", () => {
    assert.deepEqual(values(build(spec({ sandbox: "on,spawn=deny" })), "-sandbox"), ["on,spawn=deny"]);
    assert.deepEqual(values(build(spec()), "-sandbox"), []);
  });

  test("console on stdio, pidfile, process name", () => {
    const a = build(spec());
    assert.deepEqual(values(a, "-serial"), ["chardev:console"]);
    assert.deepEqual(values(a, "-pidfile"), ["/r/qemu.pid"]);
    assert.deepEqual(values(a, "-name"), ["mm-abc123,process=mm-abc123"]);
  });
});

describe("kernelCommandLine", () => {
  test("boots mm-init from the root disk and ends QEMU on reboot or panic", () => {
    const c = kernelCommandLine(spec()).split(" ");
    for (const w of ["console=ttyS0", "root=/dev/vda", "rw", "init=/.mm/init", "reboot=t", "panic=-1"])
      assert.ok(c.includes(w), w);
    assert.ok(
      kernelCommandLine(spec({ rootDisk: { path: "/x", format: "raw", readOnly: true } }))
        .split(" ")
        .includes("ro"),
    );
  });

  test("tsc_early_khz only when known", () => {
    assert.match(kernelCommandLine(spec(), 2399998), / tsc_early_khz=2399998( |$)/);
    assert.doesNotMatch(kernelCommandLine(spec()), /tsc_early_khz/);
    assert.doesNotMatch(kernelCommandLine(spec(), 0), /tsc_early_khz/);
  });

  test("tsc=reliable only for SMP guests under TCG", () => {
    assert.match(kernelCommandLine(spec({ cpus: 2, accel: "tcg" })), / tsc=reliable/);
    assert.doesNotMatch(kernelCommandLine(spec({ cpus: 1, accel: "tcg" })), /tsc=reliable/);
    assert.doesNotMatch(kernelCommandLine(spec({ cpus: 2, accel: "kvm" })), /tsc=reliable/);
  });

  test("extra args are appended; whitespace or quotes in one are refused", () => {
    assert.match(kernelCommandLine(spec({ kernelArgs: ["mm.probe=1"] })), / mm\.probe=1$/);
    for (const bad of ["a b", 'x"', "a\tb"])
      assert.throws(() => kernelCommandLine(spec({ kernelArgs: [bad] })), RangeError);
  });
});

test("escapeOptionValue doubles commas only", () => {
  fc.assert(fc.property(fc.string(), (s) => escapeOptionValue(s).replaceAll(",,", ",") === s));
});
