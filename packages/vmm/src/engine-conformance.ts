// The Engine conformance suite: every engine (QEMU today; Firecracker or Cloud
// Hypervisor later) must pass these cases against a real guest. An engine that
// cannot support a case must skip it with the reason, never silently.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, linkSync, mkdirSync, readFileSync } from "node:fs";
import type { Socket } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import {
  decodeExit,
  decodeGuestError,
  decodeHello,
  encodeConfig,
  encodeFrame,
  FrameDecoder,
  FrameType,
  isMmError,
} from "@mm/core";
import { PROBE_MARKER } from "./accel.js";
import type { Accel, DiskSpec, Engine } from "./engine.js";
import { QEMU_SANDBOX } from "./jail.js";

export interface ConformanceFixture {
  readonly kernel: string;
  /** An ext4 image holding mm-init at /.mm/init. */
  readonly rootDisk: DiskSpec;
  /** A scratch directory for disks and captures (the snapshot case). */
  readonly scratch: string;
  readonly runDir: (name: string) => string;
  readonly accel: Accel;
}

export function engineConformance(makeEngine: () => Engine, fixture: () => ConformanceFixture): void {
  const base = (name: string, over: Record<string, unknown> = {}) => {
    const f = fixture();
    return {
      id: `conf-${name}`,
      runDir: f.runDir(name),
      kernel: f.kernel,
      kernelArgs: [] as string[],
      rootDisk: f.rootDisk,
      cpus: 1,
      memoryMib: 128,
      accel: f.accel,
      agentChannel: false,
      ...over,
    };
  };

  test("boots the kernel to mm-init, which powers off: the VMM exits 0 by itself", async () => {
    let console = "";
    const vm = await makeEngine().boot({
      ...base("probe"),
      kernelArgs: ["mm.probe=1"],
      onConsole: (d: Buffer) => {
        console += d.toString();
      },
    });
    assert.ok(vm.pid > 0);
    const exit = await vm.exited;
    assert.match(console, new RegExp(PROBE_MARKER));
    assert.equal(exit.code, 0, `exit ${JSON.stringify(exit)}`);
  });

  test("the agent channel carries the guest's HELLO", async () => {
    const vm = await makeEngine().boot(base("agent", { agentChannel: true }));
    try {
      assert.ok(vm.channel);
      const decoder = new FrameDecoder();
      const hello = await new Promise<Buffer>((resolve, reject) => {
        vm.channel?.on("data", (d: Buffer) => {
          for (const f of decoder.push(d)) if (f.type === FrameType.HELLO) resolve(f.payload);
        });
        vm.exited.then(() => reject(new Error("VMM exited before HELLO")));
      });
      assert.equal(decodeHello(hello).minVersion, 1);
    } finally {
      await vm.kill();
    }
  });

  test("QMP answers while the guest runs", async () => {
    const vm = await makeEngine().boot(base("qmp", { agentChannel: true }));
    try {
      const status = (await vm.qmp("query-status")) as { status: string; running: boolean };
      assert.equal(status.running, true);
    } finally {
      await vm.kill();
    }
  });

  test("terminate() ends a running guest and resolves exited", async () => {
    const vm = await makeEngine().boot(base("term", { agentChannel: true }));
    const exit = await vm.terminate(3000);
    assert.ok(exit.code !== undefined);
    assert.equal(await vm.exited, exit);
  });

  test("kill() ends the VMM at once", async () => {
    const vm = await makeEngine().boot(base("kill", { agentChannel: true }));
    const exit = await vm.kill();
    assert.equal(exit.signal, "SIGKILL");
    assert.throws(() => process.kill(vm.pid, 0));
  });

  test("snapshot: a paused machine's root disk is frozen, its state saved and its RAM file captured; a second VMM restores the capture copy-on-write and both guests answer", async () => {
    const f = fixture();
    const dir = join(f.scratch, "snap");
    mkdirSync(dir, { recursive: true });
    const qemuImg = (...a: string[]) => execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", ...a]);
    const overlay = (path: string, backing: string, fmt: string) =>
      qemuImg("-u", "-b", backing, "-F", fmt, path, "64M");
    overlay(join(dir, "a0.qcow2"), f.rootDisk.path, f.rootDisk.format);
    const spec = (name: string, root: string, ram: string, shared: boolean, incoming: boolean) =>
      base(name, {
        agentChannel: true,
        rootDisk: { path: root, format: "qcow2", readOnly: false },
        memoryFile: { path: ram, shared },
        incoming,
      });
    const a = await makeEngine().boot(spec("snap-a", join(dir, "a0.qcow2"), join(dir, "a.ram"), true, false));
    let b: Awaited<ReturnType<Engine["boot"]>> | null = null;
    try {
      const aChan = channelOf(a.channel);
      assert.equal((await aChan.next(FrameType.HELLO)).type, FrameType.HELLO);
      // Capture: pause, freeze the disk (the frozen layer is a link to the old overlay), save, copy RAM.
      await a.pause();
      linkSync(join(dir, "a0.qcow2"), join(dir, "layer.qcow2"));
      overlay(join(dir, "a1.qcow2"), join(dir, "layer.qcow2"), "qcow2");
      await a.freezeRoot(join(dir, "a1.qcow2"));
      await a.saveState(join(dir, "state"), { ignoreSharedMemory: true });
      execFileSync("cp", ["--sparse=always", join(dir, "a.ram"), join(dir, "capture.ram")]);
      await a.resume();
      const before = createHash("sha256")
        .update(readFileSync(join(dir, "capture.ram")))
        .digest("hex");

      overlay(join(dir, "b.qcow2"), join(dir, "layer.qcow2"), "qcow2");
      b = await makeEngine().boot(spec("snap-b", join(dir, "b.qcow2"), join(dir, "capture.ram"), false, true));
      await b.loadState(join(dir, "state"), { ignoreSharedMemory: true });
      await b.resume();
      // The restored guest never says HELLO again: it waits for CONFIG, as its original does.
      for (const vm of [a, b]) {
        const chan = vm === a ? aChan : channelOf(vm.channel);
        vm.channel?.write(encodeFrame(FrameType.CONFIG, encodeConfig({ args: ["/nonexistent"], env: [] }, 2)));
        assert.equal(decodeGuestError((await chan.next(FrameType.ERROR)).payload).code, "EXEC_NOT_FOUND");
        assert.equal(decodeExit((await chan.next(FrameType.EXIT)).payload).status, 127);
      }
      const after = createHash("sha256")
        .update(readFileSync(join(dir, "capture.ram")))
        .digest("hex");
      assert.equal(after, before, "the clone must not write to the capture it maps");
    } finally {
      await a.kill();
      await b?.kill();
    }
  });

  test("loading a truncated state fails with MM_ENGINE_IO and leaves no VMM running", async () => {
    const f = fixture();
    const dir = join(f.scratch, "snap");
    const truncated = join(dir, "state.truncated");
    execFileSync("sh", ["-c", `head -c 3000 "$1" > "$2"`, "sh", join(dir, "state"), truncated]);
    execFileSync("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-b",
      join(dir, "layer.qcow2"),
      "-F",
      "qcow2",
      join(dir, "c.qcow2"),
      "64M",
    ]);
    const vm = await makeEngine().boot(
      base("snap-c", {
        agentChannel: true,
        rootDisk: { path: join(dir, "c.qcow2"), format: "qcow2", readOnly: false },
        memoryFile: { path: join(dir, "capture.ram"), shared: false },
        incoming: true,
      }),
    );
    try {
      await assert.rejects(vm.loadState(truncated, { ignoreSharedMemory: true }), (e) => isMmError(e, "MM_ENGINE_IO"));
    } finally {
      await vm.kill();
    }
  });

  test("seccomp: a VMM told to spawn a process (migrate to exec:) is refused or dies, alone", async () => {
    const f = fixture();
    const marker = join(f.scratch, `spawned-${process.pid}`);
    // Agent channels keep both guests waiting for CONFIG; paused at once, they stay up.
    const victim = await makeEngine().boot(base("seccomp-a", { agentChannel: true, sandbox: QEMU_SANDBOX }));
    const bystander = await makeEngine().boot(base("seccomp-b", { agentChannel: true, sandbox: QEMU_SANDBOX }));
    try {
      assert.equal(readFileSync(`/proc/${victim.pid}/status`, "utf8").match(/^Seccomp:\s+(\d)/m)?.[1], "2");
      await victim.pause();
      const outcome = await victim
        .qmp("migrate", { uri: `exec:touch ${marker}` })
        .then(async () => {
          for (let i = 0; i < 50; i++) {
            const st = (await victim.qmp("query-migrate")) as { status?: string };
            if (st.status === "failed" || st.status === "cancelled") return "failed";
            await new Promise((r) => setTimeout(r, 20));
          }
          return "no failure";
        })
        .catch(() => "refused or died");
      assert.notEqual(outcome, "no failure");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(existsSync(marker), false, "the VMM spawned a process");
      // The other VMM runs on.
      assert.deepEqual(Object.keys((await bystander.qmp("query-status")) as object).includes("status"), true);
    } finally {
      await victim.kill();
      await bystander.kill();
    }
  });

  test("a kernel that does not exist is MM_QEMU_FAILED with the VMM's own words", async () => {
    await assert.rejects(
      makeEngine().boot({ ...base("nokernel"), kernel: "/nonexistent/vmlinux" }),
      (e) => isMmError(e, "MM_QEMU_FAILED") && /vmlinux/.test(e.message),
    );
  });
}

/** Frames from a VMM's agent channel, awaited one type at a time (test helper). */
function channelOf(sock: Socket | null): { next(type: number): Promise<{ type: number; payload: Buffer }> } {
  if (!sock) throw new Error("no agent channel");
  const decoder = new FrameDecoder();
  const queue: { type: number; payload: Buffer }[] = [];
  const waiters: (() => void)[] = [];
  sock.on("data", (d: Buffer) => {
    for (const fr of decoder.push(d)) queue.push(fr);
    for (const w of waiters.splice(0)) w();
  });
  return {
    async next(type) {
      const deadline = Date.now() + 30_000;
      for (;;) {
        const i = queue.findIndex((fr) => fr.type === type);
        if (i >= 0) return queue.splice(i, 1)[0] as { type: number; payload: Buffer };
        if (Date.now() > deadline) throw new Error(`no frame of type ${type} within 30 s`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 1000);
        });
      }
    },
  };
}
