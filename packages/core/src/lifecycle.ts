// The machine lifecycle: one state machine, checked exhaustively.
//
//            create            boot ok (READY)         workload exits / poweroff
//   (none) ─────────▶ created ─────────▶ starting ─────────▶ running ─────────▶ exited
//                        ▲                  │                   │                 │
//                        │                  │ VMM dies, panic,  │ mm stop         │ mm start
//                        │                  ▼ timeout           ▼                 │
//                        │               failed ◀────────── stopping ──▶ exited   │
//                        └──────────────────────────────────────────────────────────┘
//   `rm` is legal from created, exited and failed (and from any state with --force).

import { MmError } from "./errors.js";

export const MACHINE_STATES = ["created", "starting", "running", "stopping", "exited", "failed"] as const;
export type MachineState = (typeof MACHINE_STATES)[number];

export type MachineEvent = "boot" | "ready" | "stop" | "exit" | "fail" | "restart";

export function nextState(from: MachineState, event: MachineEvent): MachineState {
  const illegal = (): never => {
    throw new MmError("MM_INVALID_TRANSITION", `cannot ${event} a machine that is ${from}`);
  };
  switch (event) {
    case "boot":
      return from === "created" ? "starting" : illegal();
    case "ready":
      return from === "starting" ? "running" : illegal();
    case "stop":
      return from === "starting" || from === "running" || from === "stopping" ? "stopping" : illegal();
    case "exit":
      return from === "starting" || from === "running" || from === "stopping" ? "exited" : illegal();
    case "fail":
      return from === "created" || from === "starting" || from === "running" || from === "stopping"
        ? "failed"
        : illegal();
    case "restart":
      return from === "exited" || from === "failed" ? "created" : illegal();
    default: {
      const never: never = event;
      throw new MmError("MM_INTERNAL", `unknown event ${String(never)}`);
    }
  }
}

/** States in which a VMM process may exist for the machine. */
export function isActive(state: MachineState): boolean {
  return state === "starting" || state === "running" || state === "stopping";
}
