import assert from "node:assert/strict";
import { test } from "node:test";
import { isMmError } from "./errors.js";
import { isActive, MACHINE_STATES, type MachineEvent, type MachineState, nextState } from "./lifecycle.js";

const EVENTS: MachineEvent[] = ["boot", "ready", "stop", "exit", "fail", "restart"];
const LEGAL: Record<MachineState, Partial<Record<MachineEvent, MachineState>>> = {
  created: { boot: "starting", fail: "failed" },
  starting: { ready: "running", stop: "stopping", exit: "exited", fail: "failed" },
  running: { stop: "stopping", exit: "exited", fail: "failed" },
  stopping: { stop: "stopping", exit: "exited", fail: "failed" },
  exited: { restart: "created" },
  failed: { restart: "created" },
};

test("every (state, event) pair: the legal ones move, the rest are MM_INVALID_TRANSITION", () => {
  for (const s of MACHINE_STATES) {
    for (const e of EVENTS) {
      const want = LEGAL[s][e];
      if (want) assert.equal(nextState(s, e), want, `${s} --${e}-->`);
      else
        assert.throws(
          () => nextState(s, e),
          (x) => isMmError(x, "MM_INVALID_TRANSITION"),
          `${s} --${e}--> should fail`,
        );
    }
  }
});

test("active states are the ones with a VMM", () => {
  assert.deepEqual(MACHINE_STATES.filter(isActive), ["starting", "running", "stopping"]);
});
