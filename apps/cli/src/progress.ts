// Renders pull progress: one bar per layer on a TTY (cli-progress), JSON lines with
// --json, and nothing but the final line when piped, so scripts stay quiet.

import type { PullEvent } from "@mm/runtime";
import cliProgress from "cli-progress";

export type ProgressMode = "tty" | "json" | "quiet";

export function progressMode(opts: { json?: boolean; quiet?: boolean }, stream: NodeJS.WriteStream): ProgressMode {
  if (opts.json) return "json";
  if (opts.quiet || !stream.isTTY) return "quiet";
  return "tty";
}

const short = (digest: string) => digest.replace(/^sha256:/, "").slice(0, 12);

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** Returns an event sink and a function to call when the pull has ended. */
export function pullRenderer(
  mode: ProgressMode,
  stream: NodeJS.WriteStream,
): { onEvent: (e: PullEvent) => void; end: () => void } {
  if (mode === "json") {
    return { onEvent: (e) => stream.write(`${JSON.stringify(e)}\n`), end: () => undefined };
  }
  if (mode === "quiet") return { onEvent: () => undefined, end: () => undefined };
  const multi = new cliProgress.MultiBar(
    {
      stream,
      format: " {layer} [{bar}] {percentage}% {done}/{total}",
      barCompleteChar: "█",
      barIncompleteChar: "░",
      hideCursor: true,
      clearOnComplete: false,
      autopadding: true,
      fps: 10,
    },
    cliProgress.Presets.shades_classic,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  const onEvent = (e: PullEvent) => {
    switch (e.type) {
      case "resolved":
        multi.log(`${e.reference}: ${e.digest} (${e.layers} layers)\n`);
        break;
      case "layer-start":
        bars.set(
          e.digest,
          multi.create(Math.max(1, e.size), e.cached ? e.size : 0, {
            layer: short(e.digest),
            done: e.cached ? "cached" : mib(0),
            total: mib(e.size),
          }),
        );
        break;
      case "layer-progress":
        bars.get(e.digest)?.update(e.bytes, { done: mib(e.bytes) });
        break;
      case "layer-done": {
        const bar = bars.get(e.digest);
        bar?.update(bar.getTotal(), { done: "done" });
        break;
      }
      case "retry":
        multi.log(`retrying ${e.what} (attempt ${e.attempt}): ${e.reason}\n`);
        break;
      case "done":
        break;
      default: {
        const never: never = e;
        void never;
      }
    }
  };
  return { onEvent, end: () => multi.stop() };
}
