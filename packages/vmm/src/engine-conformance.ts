// The Engine conformance suite: every engine (QEMU today; Firecracker or Cloud
// Hypervisor later) must pass these cases against a real guest. An engine that
// cannot support a case must skip it with the reason, never silently.

import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeHello, FrameDecoder, FrameType, isMmError } from "@mm/core";
import { PROBE_MARKER } from "./accel.js";
import type { Accel, DiskSpec, Engine } from "./engine.js";

export interface ConformanceFixture {
  readonly kernel: string;
  /** An ext4 image holding mm-init at /.mm/init. */
  readonly rootDisk: DiskSpec;
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

  test("a kernel that does not exist is MM_QEMU_FAILED with the VMM's own words", async () => {
    await assert.rejects(
      makeEngine().boot({ ...base("nokernel"), kernel: "/nonexistent/vmlinux" }),
      (e) => isMmError(e, "MM_QEMU_FAILED") && /vmlinux/.test(e.message),
    );
  });
}
