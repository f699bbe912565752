#!/usr/bin/env node
// Rewrites the table in docs/errors.md from the registry in packages/core (run after
// adding a code; packages/core/src/errors.test.ts fails until the two agree).

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dirname, "..");
const { ERRORS } = await import(join(root, "packages/core/dist/errors.js"));
const file = join(root, "docs/errors.md");
const doc = readFileSync(file, "utf8");
const head = doc.slice(0, doc.indexOf("| `MM_"));
const rows = Object.entries(ERRORS).map(
  ([k, v]) => `| \`${k}\` | ${v.summary} | ${v.hint.replaceAll("|", "\\|")} | ${v.exit} |`,
);
writeFileSync(file, `${head}${rows.join("\n")}\n`);
