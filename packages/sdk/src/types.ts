// The API's shapes as the SDK sees them (the server's zod schemas, packages/api, are the
// source; GET /v1/openapi.json describes the same).

export interface Machine {
  readonly id: string;
  readonly name: string;
  readonly image: string;
  readonly state: string;
  readonly ip: string | null;
  readonly accel: string | null;
  readonly exitCode: number | null;
  readonly error: { readonly code: string; readonly message: string } | null;
  readonly sandbox: { readonly timeoutMs: number; readonly idleMs?: number } | null;
  /** Published ports, as `mm port` prints them ("80/tcp -> 0.0.0.0:8080"). */
  readonly ports: readonly string[];
  readonly createdAt: string;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
}

export interface ExecResult {
  readonly exitCode: number;
  readonly signal: number | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly truncated: boolean;
}

export interface Process {
  readonly pid: number;
  readonly ppid: number;
  readonly user: string;
  readonly command: string;
}

export interface MachineEvent {
  readonly seq: number;
  readonly time: string;
  readonly machineId: string;
  readonly machine: string;
  readonly type: string;
  readonly detail: Record<string, unknown> | null;
}

export interface LogEntry {
  /** Milliseconds since the epoch. */
  readonly time: number;
  readonly stream: "stdout" | "stderr" | "console";
  readonly data: Uint8Array;
}
