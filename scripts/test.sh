#!/usr/bin/env bash
# The test command (README, .ci/run): sets up what the tests need, then runs every
# suite with node's own test runner. Real guests boot under QEMU (KVM or TCG).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh --no-demo
test/fixtures/install.sh
export PATH="$root/node_modules/.bin:$PATH"
biome lint .   # lint rules (layering among them) gate CI; formatting is `npm run format`
exec node --test --test-concurrency=1 --test-timeout=600000 \
  "packages/*/dist/**/*.test.js" "apps/*/dist/**/*.test.js" "guest/init/test/*.test.mjs" "scripts/*.test.mjs" "test/fixtures/*.test.mjs"
