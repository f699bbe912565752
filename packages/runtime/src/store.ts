// The single-host state store: SQLite (WAL) under the state root. Every lifecycle
// step writes here before and after it acts, so a crash leaves a readable record.

import { mkdirSync } from "node:fs";
import { DatabaseSync } from "node:sqlite";
import { type MachineEvent, type MachineSpec, type MachineState, MmError, nextState } from "@mm/core";
import { mapFsError } from "./fs-errors.js";
import type { JailSummary } from "./jail.js";
import { databasePath, type Paths } from "./paths.js";

export interface MachineRecord {
  readonly id: string;
  readonly name: string;
  readonly spec: MachineSpec;
  readonly state: MachineState;
  readonly accel: string | null;
  readonly supervisorPid: number | null;
  readonly supervisorStart: string | null;
  readonly vmmPid: number | null;
  readonly exitCode: number | null;
  readonly exitSignal: number | null;
  readonly error: { code: string; message: string } | null;
  readonly stopTimeoutS: number | null;
  readonly createdAt: string;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  /** The machine's writable root overlay (null: `root.qcow2` in its directory). */
  readonly rootDisk: string | null;
  /** How the last boot started: "cold", or "template:ID", "snapshot:ID", "fork:ID". */
  readonly bootMode: string | null;
  /** Restarts in a row under the machine's restart policy. */
  readonly restartCount: number;
  /** Stopped by `mm stop` (a restart policy leaves it stopped; unless-stopped also across host restarts). */
  readonly userStopped: boolean;
  /** Its shared host directories as the last boot served them (driver, daemon state). */
  readonly shares: ShareState[] | null;
  /** `mm update --memory`: what the balloon leaves the guest, kept across restarts (null: all of it). */
  readonly memoryTargetMib: number | null;
  /** The VMM's jail as the last boot set it up (null: not jailed). */
  readonly jail: JailSummary | null;
}

export interface ShareState {
  readonly source: string;
  readonly path: string;
  readonly readOnly: boolean;
  readonly driver: string;
  /** "running", or "ended: …" when its virtio-fs daemon died. */
  readonly state: string;
}

interface Row {
  id: string;
  name: string;
  spec: string;
  state: string;
  accel: string | null;
  supervisor_pid: number | null;
  supervisor_start: string | null;
  vmm_pid: number | null;
  exit_code: number | null;
  exit_signal: number | null;
  error: string | null;
  stop_timeout_s: number | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  root_disk: string | null;
  boot_mode: string | null;
  restart_count: number | null;
  user_stopped: number | null;
  shares: string | null;
  memory_target_mib: number | null;
  jail: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS machines (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  spec TEXT NOT NULL,
  state TEXT NOT NULL,
  accel TEXT,
  supervisor_pid INTEGER,
  supervisor_start TEXT,
  vmm_pid INTEGER,
  exit_code INTEGER,
  exit_signal INTEGER,
  error TEXT,
  stop_timeout_s INTEGER,
  created_at TEXT NOT NULL,
  started_at TEXT,
  finished_at TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS leases (
  machine_id TEXT PRIMARY KEY,
  ip TEXT NOT NULL UNIQUE,
  mac TEXT NOT NULL,
  tap TEXT NOT NULL,
  subnet TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS jail_slots (
  machine_id TEXT PRIMARY KEY,
  slot INTEGER NOT NULL UNIQUE
) STRICT;
CREATE TABLE IF NOT EXISTS settings (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  time TEXT NOT NULL,
  machine_id TEXT NOT NULL,
  machine TEXT NOT NULL,
  type TEXT NOT NULL,
  detail TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS volumes (
  name TEXT PRIMARY KEY,
  size_bytes INTEGER NOT NULL,
  created_at TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS snapshots (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL,
  machine TEXT NOT NULL,
  tag TEXT NOT NULL,
  template_key TEXT UNIQUE,
  meta TEXT NOT NULL,
  created_at TEXT NOT NULL
) STRICT;
`;

/** Columns added after the first release: added in place to older databases. */
const ADDED_COLUMNS = [
  ["machines", "root_disk", "TEXT"],
  ["machines", "boot_mode", "TEXT"],
  ["machines", "restart_count", "INTEGER"],
  ["machines", "user_stopped", "INTEGER"],
  ["machines", "shares", "TEXT"],
  ["machines", "memory_target_mib", "INTEGER"],
  ["machines", "jail", "TEXT"],
] as const;

export interface Lease {
  readonly machineId: string;
  readonly ip: string;
  readonly mac: string;
  readonly tap: string;
  readonly subnet: string;
}

function toRecord(r: Row): MachineRecord {
  return {
    id: r.id,
    name: r.name,
    spec: JSON.parse(r.spec) as MachineSpec,
    state: r.state as MachineState,
    accel: r.accel,
    supervisorPid: r.supervisor_pid,
    supervisorStart: r.supervisor_start,
    vmmPid: r.vmm_pid,
    exitCode: r.exit_code,
    exitSignal: r.exit_signal,
    error: r.error ? (JSON.parse(r.error) as { code: string; message: string }) : null,
    stopTimeoutS: r.stop_timeout_s,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    rootDisk: r.root_disk ?? null,
    bootMode: r.boot_mode ?? null,
    restartCount: r.restart_count ?? 0,
    userStopped: r.user_stopped === 1,
    shares: r.shares ? (JSON.parse(r.shares) as ShareState[]) : null,
    memoryTargetMib: r.memory_target_mib ?? null,
    jail: r.jail ? (JSON.parse(r.jail) as JailSummary) : null,
  };
}

/** A lifecycle event (`mm events`), written in the same step as the change it reports. */
export interface MachineEventRow {
  readonly seq: number;
  readonly time: string;
  readonly machineId: string;
  readonly machine: string;
  /** create, start, ready, stop, exit, fail, destroy, snapshot, restore, fork */
  readonly type: string;
  readonly detail: Record<string, unknown> | null;
}

/** The event a state change reports. */
const STATE_EVENT: Record<MachineState, string> = {
  created: "create",
  starting: "start",
  running: "ready",
  stopping: "stop",
  exited: "exit",
  failed: "fail",
};

export interface VolumeRow {
  readonly name: string;
  readonly sizeBytes: number;
  readonly createdAt: string;
}

export interface SnapshotRow {
  readonly id: string;
  readonly kind: "snapshot" | "template" | "fork";
  readonly machine: string;
  readonly tag: string;
  readonly templateKey: string | null;
  readonly meta: string;
  readonly createdAt: string;
}

export interface TransitionFields {
  accel?: string | null;
  supervisorPid?: number | null;
  supervisorStart?: string | null;
  vmmPid?: number | null;
  exitCode?: number | null;
  exitSignal?: number | null;
  error?: { code: string; message: string } | null;
  stopTimeoutS?: number | null;
  startedAt?: string | null;
  finishedAt?: string | null;
  rootDisk?: string | null;
  bootMode?: string | null;
  restartCount?: number;
  userStopped?: number;
  shares?: ShareState[] | null;
  memoryTargetMib?: number | null;
  jail?: JailSummary | null;
}

const COLUMNS: Record<keyof TransitionFields, string> = {
  accel: "accel",
  supervisorPid: "supervisor_pid",
  supervisorStart: "supervisor_start",
  vmmPid: "vmm_pid",
  exitCode: "exit_code",
  exitSignal: "exit_signal",
  error: "error",
  stopTimeoutS: "stop_timeout_s",
  startedAt: "started_at",
  finishedAt: "finished_at",
  rootDisk: "root_disk",
  bootMode: "boot_mode",
  restartCount: "restart_count",
  userStopped: "user_stopped",
  shares: "shares",
  memoryTargetMib: "memory_target_mib",
  jail: "jail",
};

export class Store {
  private readonly db: DatabaseSync;

  constructor(paths: Paths) {
    try {
      mkdirSync(paths.state, { recursive: true, mode: 0o711 });
      this.db = new DatabaseSync(databasePath(paths), { timeout: 10_000 });
      this.db.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;");
      this.db.exec(SCHEMA);
      for (const [table, column, type] of ADDED_COLUMNS) {
        const cols = this.db.prepare(`PRAGMA table_info(${table})`).all() as { name: string }[];
        if (!cols.some((c) => c.name === column)) this.db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${type}`);
      }
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (!err.code && /readonly|unable to open|disk I\/O/i.test(err.message)) {
        throw new MmError("MM_STATE_UNWRITABLE", `${paths.state}: ${err.message}`, { cause: e });
      }
      if (!err.code && /full/i.test(err.message)) throw new MmError("MM_DISK_FULL", err.message, { cause: e });
      throw mapFsError(e, `opening the state store in ${paths.state}`);
    }
  }

  close(): void {
    this.db.close();
  }

  insert(id: string, spec: MachineSpec): MachineRecord {
    try {
      this.db
        .prepare("INSERT INTO machines (id, name, spec, state, created_at) VALUES (?, ?, ?, 'created', ?)")
        .run(id, spec.name, JSON.stringify(spec), new Date().toISOString());
      this.addEvent(id, spec.name, "create", { image: spec.image });
    } catch (e) {
      if (/UNIQUE constraint failed: machines.name/.test((e as Error).message)) {
        throw new MmError("MM_NAME_IN_USE", `"${spec.name}"`);
      }
      throw e;
    }
    return this.get(id);
  }

  get(id: string): MachineRecord {
    const row = this.db.prepare("SELECT * FROM machines WHERE id = ?").get(id) as Row | undefined;
    if (!row) throw new MmError("MM_NO_SUCH_MACHINE", id);
    return toRecord(row);
  }

  /** Finds by exact name, exact id, or unique id prefix (as Docker does). */
  find(ref: string): MachineRecord {
    const byName = this.db.prepare("SELECT * FROM machines WHERE name = ? OR id = ?").get(ref, ref) as Row | undefined;
    if (byName) return toRecord(byName);
    if (/^[0-9a-f]{3,}$/.test(ref)) {
      const rows = this.db.prepare("SELECT * FROM machines WHERE id LIKE ?").all(`${ref}%`) as unknown as Row[];
      if (rows.length === 1) return toRecord(rows[0] as Row);
      if (rows.length > 1) throw new MmError("MM_NO_SUCH_MACHINE", `"${ref}" matches ${rows.length} machines`);
    }
    throw new MmError("MM_NO_SUCH_MACHINE", `"${ref}"`);
  }

  list(): MachineRecord[] {
    return (this.db.prepare("SELECT * FROM machines ORDER BY created_at").all() as unknown as Row[]).map(toRecord);
  }

  /**
   * Applies a lifecycle event atomically: reads the current state, checks the
   * transition is legal, and writes the new state with the given fields.
   */
  transition(id: string, event: MachineEvent, fields: TransitionFields = {}): MachineRecord {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const current = this.get(id);
      const state = nextState(current.state, event);
      this.write(id, state, fields);
      if (state !== current.state) this.stateEvent(current, state, fields);
      this.db.exec("COMMIT");
    } catch (e) {
      this.db.exec("ROLLBACK");
      throw e;
    }
    return this.get(id);
  }

  /**
   * A pooled sandbox becomes the claimer's, with its timeouts: true for exactly one
   * claimer (the spec is compared and swapped in one statement), false if it is gone or
   * already claimed.
   */
  claimPooled(id: string, sandbox: { timeoutMs: number; idleMs?: number }): boolean {
    const row = this.db.prepare("SELECT spec FROM machines WHERE id = ?").get(id) as { spec: string } | undefined;
    if (!row) return false;
    const spec = JSON.parse(row.spec) as MachineSpec;
    if (!spec.sandbox?.pooled) return false;
    const claimed: MachineSpec = { ...spec, sandbox: { ...sandbox } };
    const r = this.db
      .prepare("UPDATE machines SET spec = ? WHERE id = ? AND spec = ?")
      .run(JSON.stringify(claimed), id, row.spec) as { changes: number | bigint };
    if (Number(r.changes) !== 1) return false;
    this.addEvent(id, spec.name, "claim", { timeoutMs: sandbox.timeoutMs, idleMs: sandbox.idleMs ?? null });
    return true;
  }

  /** Updates fields without a state change (e.g. a stop request's timeout). */
  update(id: string, fields: TransitionFields): MachineRecord {
    this.write(id, undefined, fields);
    return this.get(id);
  }

  /** Forces a state, bypassing the state machine: only for reconciling after a crash. */
  force(id: string, state: MachineState, fields: TransitionFields = {}): MachineRecord {
    const current = this.get(id);
    this.write(id, state, fields);
    if (state !== current.state) this.stateEvent(current, state, fields);
    return this.get(id);
  }

  remove(id: string): void {
    const rec = this.db.prepare("SELECT name FROM machines WHERE id = ?").get(id) as { name: string } | undefined;
    if (rec) this.addEvent(id, rec.name, "destroy", null);
    this.db.prepare("DELETE FROM machines WHERE id = ?").run(id);
    this.db.prepare("DELETE FROM leases WHERE machine_id = ?").run(id);
    this.db.prepare("DELETE FROM jail_slots WHERE machine_id = ?").run(id);
  }

  /** Runs `fn` holding the database's write lock: concurrent mm processes queue here. */
  exclusive<T>(fn: () => T): T {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const r = fn();
      this.db.exec("COMMIT");
      return r;
    } catch (e) {
      this.db.exec("ROLLBACK");
      throw e;
    }
  }

  setting(key: string): string | undefined {
    return (this.db.prepare("SELECT value FROM settings WHERE key = ?").get(key) as { value: string } | undefined)
      ?.value;
  }

  setSetting(key: string, value: string): void {
    this.db
      .prepare("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
      .run(key, value);
  }

  lease(machineId: string): Lease | undefined {
    const r = this.db.prepare("SELECT * FROM leases WHERE machine_id = ?").get(machineId) as
      | { machine_id: string; ip: string; mac: string; tap: string; subnet: string }
      | undefined;
    return r && { machineId: r.machine_id, ip: r.ip, mac: r.mac, tap: r.tap, subnet: r.subnet };
  }

  leases(): Lease[] {
    return (
      this.db.prepare("SELECT * FROM leases").all() as {
        machine_id: string;
        ip: string;
        mac: string;
        tap: string;
        subnet: string;
      }[]
    ).map((r) => ({ machineId: r.machine_id, ip: r.ip, mac: r.mac, tap: r.tap, subnet: r.subnet }));
  }

  /**
   * The machine's jail slot (its VMM's uid and gid are JAIL_ID_BASE + slot): the lowest
   * free one, taken on first use and kept until the machine is removed.
   */
  jailSlot(machineId: string): number {
    return this.exclusive(() => {
      const row = this.db.prepare("SELECT slot FROM jail_slots WHERE machine_id = ?").get(machineId) as
        | { slot: number }
        | undefined;
      if (row) return row.slot;
      const used = new Set(
        (this.db.prepare("SELECT slot FROM jail_slots").all() as { slot: number }[]).map((r) => r.slot),
      );
      let slot = 0;
      while (used.has(slot)) slot++;
      this.db.prepare("INSERT INTO jail_slots (machine_id, slot) VALUES (?, ?)").run(machineId, slot);
      return slot;
    });
  }

  addLease(l: Lease): void {
    this.db
      .prepare("INSERT INTO leases (machine_id, ip, mac, tap, subnet) VALUES (?, ?, ?, ?, ?)")
      .run(l.machineId, l.ip, l.mac, l.tap, l.subnet);
  }

  addSnapshot(s: SnapshotRow): void {
    try {
      this.db
        .prepare(
          "INSERT INTO snapshots (id, kind, machine, tag, template_key, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .run(s.id, s.kind, s.machine, s.tag, s.templateKey, s.meta, s.createdAt);
    } catch (e) {
      if (/UNIQUE constraint failed/.test((e as Error).message)) {
        throw new MmError("MM_SNAPSHOT_EXISTS", `${s.kind} ${s.templateKey ?? s.id}`);
      }
      throw e;
    }
  }

  addEvent(machineId: string, machine: string, type: string, detail: Record<string, unknown> | null): void {
    this.db
      .prepare("INSERT INTO events (time, machine_id, machine, type, detail) VALUES (?, ?, ?, ?, ?)")
      .run(new Date().toISOString(), machineId, machine, type, detail ? JSON.stringify(detail) : null);
  }

  /** Events after `afterSeq`, oldest first (at most `limit`). */
  events(afterSeq = 0, limit = 10_000): MachineEventRow[] {
    return (
      this.db.prepare("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?").all(afterSeq, limit) as {
        seq: number;
        time: string;
        machine_id: string;
        machine: string;
        type: string;
        detail: string | null;
      }[]
    ).map((r) => ({
      seq: r.seq,
      time: r.time,
      machineId: r.machine_id,
      machine: r.machine,
      type: r.type,
      detail: r.detail ? (JSON.parse(r.detail) as Record<string, unknown>) : null,
    }));
  }

  private stateEvent(rec: MachineRecord, state: MachineState, fields: TransitionFields): void {
    const detail =
      state === "exited"
        ? { exitCode: fields.exitCode ?? null, signal: fields.exitSignal ?? null }
        : state === "failed"
          ? { error: fields.error?.code ?? null, message: fields.error?.message ?? null }
          : null;
    this.addEvent(rec.id, rec.spec.name, STATE_EVENT[state], detail);
  }

  addVolume(v: VolumeRow): void {
    try {
      this.db
        .prepare("INSERT INTO volumes (name, size_bytes, created_at) VALUES (?, ?, ?)")
        .run(v.name, v.sizeBytes, v.createdAt);
    } catch (e) {
      if (/UNIQUE constraint failed/.test((e as Error).message)) throw new MmError("MM_VOLUME_EXISTS", `"${v.name}"`);
      throw e;
    }
  }

  volumes(): VolumeRow[] {
    return (
      this.db.prepare("SELECT * FROM volumes ORDER BY name").all() as {
        name: string;
        size_bytes: number;
        created_at: string;
      }[]
    ).map((r) => ({ name: r.name, sizeBytes: r.size_bytes, createdAt: r.created_at }));
  }

  removeVolume(name: string): void {
    this.db.prepare("DELETE FROM volumes WHERE name = ?").run(name);
  }

  snapshots(): SnapshotRow[] {
    return (this.db.prepare("SELECT * FROM snapshots ORDER BY created_at").all() as unknown as SnapshotDbRow[]).map(
      toSnapshot,
    );
  }

  snapshot(id: string): SnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM snapshots WHERE id = ?").get(id) as SnapshotDbRow | undefined;
    return r && toSnapshot(r);
  }

  templateByKey(key: string): SnapshotRow | undefined {
    const r = this.db.prepare("SELECT * FROM snapshots WHERE template_key = ?").get(key) as SnapshotDbRow | undefined;
    return r && toSnapshot(r);
  }

  removeSnapshot(id: string): void {
    this.db.prepare("DELETE FROM snapshots WHERE id = ?").run(id);
  }

  private write(id: string, state: MachineState | undefined, fields: TransitionFields): void {
    const sets: string[] = [];
    const values: (string | number | null)[] = [];
    if (state) {
      sets.push("state = ?");
      values.push(state);
    }
    for (const [k, v] of Object.entries(fields) as [keyof TransitionFields, unknown][]) {
      if (v === undefined) continue;
      sets.push(`${COLUMNS[k]} = ?`);
      values.push(v === null ? null : typeof v === "object" ? JSON.stringify(v) : (v as string | number));
    }
    if (sets.length === 0) return;
    values.push(id);
    this.db.prepare(`UPDATE machines SET ${sets.join(", ")} WHERE id = ?`).run(...values);
  }
}

interface SnapshotDbRow {
  id: string;
  kind: string;
  machine: string;
  tag: string;
  template_key: string | null;
  meta: string;
  created_at: string;
}

function toSnapshot(r: SnapshotDbRow): SnapshotRow {
  return {
    id: r.id,
    kind: r.kind as SnapshotRow["kind"],
    machine: r.machine,
    tag: r.tag,
    templateKey: r.template_key,
    meta: r.meta,
    createdAt: r.created_at,
  };
}
