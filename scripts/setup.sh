#!/usr/bin/env bash
# One command from a fresh Debian 12 / Ubuntu 24.04 host to a booted microVM:
# installs the packages mm needs, Node 24 (through npm), builds the TypeScript,
# the guest init and the guest kernel (cached), then boots the default image and
# prints from inside it. Idempotent: a second run only checks, and says so.
#   scripts/setup.sh            set up and boot the demo
#   scripts/setup.sh --no-demo  set up only (used by scripts/test.sh)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
demo=1
for a in "$@"; do
  case "$a" in
    --no-demo) demo=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup: unknown flag $a" >&2; exit 2 ;;
  esac
done

if [ -t 1 ]; then bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'; else bold=""; dim=""; off=""; fi
t0=$(date +%s)
step() { printf '%s==>%s %s\n' "$bold" "$off" "$*"; }
did() { printf '    %s%s%s\n' "$dim" "$*" "$off"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian packages
packages=(qemu-system-x86 qemu-utils e2fsprogs musl-tools busybox-static util-linux attr coreutils iproute2 nftables curl dropbear-bin patchelf openssh-client passt uidmap
  linux-source bc flex bison libelf-dev libssl-dev make gcc libc6-dev xz-utils cpio)
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
step "Debian packages"
if [ ${#missing[@]} -gt 0 ]; then
  did "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  did "installed ${#missing[@]} packages"
else
  did "all ${#packages[@]} present"
fi

# 2. npm packages, Node 24 among them (the npm package `node` ships the binary)
step "npm packages (and Node 24)"
stamp=node_modules/.mm-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x node_modules/.bin/node ]; then
  did "up to date"
else
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  echo "$want" > "$stamp"
  did "installed from package-lock.json"
fi
node_bin="$root/node_modules/.bin/node"
did "node $("$node_bin" --version)"
export PATH="$root/node_modules/.bin:$PATH"

# 3. TypeScript
step "TypeScript build"
npm run -s build
did "packages built (tsc -b, incremental) and the CLI bundled (esbuild: apps/cli/dist/mm.mjs)"

# 4. guest init
step "guest init (mm-init, static musl)"
make -s -C guest/init
make -s -C host/jail
did "$(ls -l guest/init/build/mm-init | awk '{print $5}') bytes: guest/init/build/mm-init; host/jail/build/mm-jail, mm-seal"

# 5. guest kernel
step "guest kernel"
guest/kernel/build.sh

step "ready in $(( $(date +%s) - t0 )) s"
if [ "$demo" = 1 ]; then
  step "booting the default image: bin/mm run --rm -- sh -c '…'"
  bin/mm run --rm --network none -- sh -c 'echo "hello from inside a microVM: $(uname -sr), $(nproc) vCPU, $(free -m | awk "/Mem/{print \$2}") MiB"'
fi
