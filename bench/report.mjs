// Shared by the benchmarks: medians, and replacing one benchmark's section of
// docs/BENCHMARKS.md (each section starts with "## <name> ").

import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export function writeSection(name, section) {
  const file = join(resolve(import.meta.dirname, ".."), "docs/BENCHMARKS.md");
  let doc;
  try {
    doc = readFileSync(file, "utf8");
  } catch {
    doc = "# Benchmarks\n\nSpeed and memory figures, each written by the benchmark named in its heading.\n";
  }
  const start = doc.indexOf(`## ${name} `);
  if (start >= 0) {
    const next = doc.indexOf("\n## ", start + 1);
    doc = doc.slice(0, start) + section + (next >= 0 ? doc.slice(next + 1) : "");
  } else doc = `${doc.trimEnd()}\n\n${section}`;
  writeFileSync(file, doc);
  process.stdout.write(section);
}
