#!/usr/bin/env bash
# Build the MicroMachines guest kernel from Debian's linux-source-6.1 package.
#
#   guest/kernel/build.sh               build (or reuse) and print the result
#   guest/kernel/build.sh --print-hash  print the cache key and exit
#   guest/kernel/build.sh --force       rebuild even if cached
#
# Output (cached by a hash of mm.config, this script and the source package
# version):
#   ${MM_CACHE:-/var/cache/mm}/kernels/<hash>/vmlinux    stripped ELF, PVH entry
#   ${MM_CACHE:-/var/cache/mm}/kernels/<hash>/config     the full .config
#   ${MM_CACHE:-/var/cache/mm}/kernels/<hash>/meta.json  {hash,sourceVersion,builtAt,seconds}
#   ${MM_CACHE:-/var/cache/mm}/kernels/default -> <hash>
set -euo pipefail

readonly SOURCE_PKG=linux-source-6.1
readonly ARCH=x86_64
readonly HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly FRAGMENT="$HERE/mm.config"
readonly SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
readonly CACHE="${MM_CACHE:-/var/cache/mm}"
readonly KERNELS="$CACHE/kernels"

die() { printf 'kernel: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,14s/^# \{0,1\}//p' "$SELF"
}

print_hash=0
force=0
for arg in "$@"; do
  case "$arg" in
    --print-hash) print_hash=1 ;;
    --force) force=1 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

# --- inputs ---------------------------------------------------------------
[[ -f "$FRAGMENT" ]] || die "missing config fragment $FRAGMENT"

tarball="/usr/src/$SOURCE_PKG.tar.xz"
if [[ ! -f "$tarball" ]]; then
  others=$(compgen -G '/usr/src/linux-source-*.tar.xz' | tr '\n' ' ' || true)
  die "kernel source $tarball not found${others:+ (found: $others)}
hint: apt-get install $SOURCE_PKG"
fi

source_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PKG" 2>/dev/null || true)
[[ -n "$source_version" ]] ||
  die "package $SOURCE_PKG is not installed (but $tarball exists)
hint: apt-get install $SOURCE_PKG"

hash=$(
  {
    printf 'mm-kernel\n'
    printf 'fragment %s\n' "$(sha256sum < "$FRAGMENT" | cut -d' ' -f1)"
    printf 'build.sh %s\n' "$(sha256sum < "$SELF" | cut -d' ' -f1)"
    printf 'source %s %s\n' "$SOURCE_PKG" "$source_version"
  } | sha256sum | cut -c1-16
)

if (( print_hash )); then
  printf '%s\n' "$hash"
  exit 0
fi

out="$KERNELS/$hash"

is_cached() {
  [[ -s "$out/vmlinux" && -s "$out/config" && -s "$out/meta.json" ]]
}

point_default() {
  # Atomic: a new symlink renamed over the old one.
  ln -sfn "$hash" "$KERNELS/.default.$$"
  mv -Tf "$KERNELS/.default.$$" "$KERNELS/default"
}

if (( ! force )) && is_cached; then
  [[ "$(readlink "$KERNELS/default" 2>/dev/null || true)" == "$hash" ]] || point_default
  printf 'kernel %s cached\n' "$hash"
  exit 0
fi

# --- tools ----------------------------------------------------------------
missing=()
for tool in make gcc ld flex bison bc perl tar xz strip flock; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ! printf '#include <gelf.h>\n' | gcc -E -x c - >/dev/null 2>&1; then
  missing+=("libelf headers")
fi
(( ${#missing[@]} == 0 )) ||
  die "missing build tools: ${missing[*]}
hint: apt-get install build-essential flex bison bc libelf-dev"

# --- one build at a time ----------------------------------------------------
mkdir -p "$KERNELS" 2>/dev/null && [[ -w "$KERNELS" ]] ||
  die "cannot write to $KERNELS (set MM_CACHE to a writable directory)"
exec 9>"$KERNELS/.lock"
if ! flock -n 9; then
  printf 'kernel %s: waiting for another build to finish\n' "$hash" >&2
  flock 9
fi
if (( ! force )) && is_cached; then  # built by whoever held the lock
  [[ "$(readlink "$KERNELS/default" 2>/dev/null || true)" == "$hash" ]] || point_default
  printf 'kernel %s cached\n' "$hash"
  exit 0
fi
# We hold the lock, so any build or staging directory left is from a crash.
rm -rf "$KERNELS"/.build.* "$KERNELS"/.stage.*

build=$(mktemp -d "$KERNELS/.build.XXXXXX")
stage=""
cleanup() {
  rm -rf "$build"
  [[ -z "$stage" ]] || rm -rf "$stage"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- progress -----------------------------------------------------------------
start=$SECONDS
tty=0
[[ -t 2 ]] && tty=1

elapsed() {
  local s=$((SECONDS - start))
  printf '%dm%02ds' $((s / 60)) $((s % 60))
}

phase() {  # phase MESSAGE: one line per phase (erasing a TTY status line)
  if (( tty )); then
    printf '\r\033[Kkernel %s: %s\n' "$hash" "$1" >&2
  else
    printf 'kernel %s: %s\n' "$hash" "$1" >&2
  fi
}

status() {  # status MESSAGE: a self-overwriting line, only on a TTY
  (( tty )) && printf '\r\033[Kkernel %s: %s' "$hash" "$1" >&2
  return 0
}

fail_with_log() {  # fail_with_log WHAT LOG
  (( tty )) && printf '\r\033[K' >&2
  cp -f "$2" "$KERNELS/last-failed-build.log" 2>/dev/null || true
  {
    printf 'kernel %s: %s failed; last lines of the log:\n' "$hash" "$1"
    grep -E -m 40 'error|Error|ERROR' "$2" || tail -n 40 "$2"
    printf 'full log: %s\n' "$KERNELS/last-failed-build.log"
  } >&2
  exit 1
}

src="$build/src"
log="$build/build.log"
# Keep the build host out of `uname -v`.
export KBUILD_BUILD_USER=mm KBUILD_BUILD_HOST=micromachines KBUILD_BUILD_VERSION=1
mkdir "$src"

# --- unpack -------------------------------------------------------------------
phase "unpacking $SOURCE_PKG $source_version"
tar -xJf "$tarball" -C "$src" --strip-components=1 ||
  die "could not unpack $tarball"

# --- configure ----------------------------------------------------------------
phase "configuring (ARCH=$ARCH tinyconfig + $(basename "$FRAGMENT"))"
{
  make -C "$src" ARCH="$ARCH" tinyconfig &&
    (cd "$src" && scripts/kconfig/merge_config.sh -m .config "$FRAGMENT") &&
    make -C "$src" ARCH="$ARCH" olddefconfig
} >"$log" 2>&1 || fail_with_log configuration "$log"

# Every line of the fragment must have survived: a dependency the fragment
# does not satisfy silently drops an option otherwise.
lost=()
while IFS= read -r line; do
  if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    grep -qxF -- "$line" "$src/.config" ||
      lost+=("$line (got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$src/.config" || echo 'absent'))")
  elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    if grep -qE "^${BASH_REMATCH[1]}=" "$src/.config"; then
      lost+=("$line (got: $(grep -E "^${BASH_REMATCH[1]}=" "$src/.config"))")
    fi
  fi
done <"$FRAGMENT"
if (( ${#lost[@]} )); then
  {
    printf 'kernel %s: these fragment options did not end up in the final .config\n' "$hash"
    printf '(an unmet dependency, a "select", or a misspelt name):\n'
    printf '  %s\n' "${lost[@]}"
  } >&2
  exit 1
fi

# --- compile ------------------------------------------------------------------
jobs=$(nproc)
expected=0
[[ -r "$KERNELS/.objcount" ]] && expected=$(tr -cd '0-9' <"$KERNELS/.objcount")
expected=${expected:-0}
phase "compiling with $jobs jobs"
count=0
set +e
make -C "$src" ARCH="$ARCH" -j"$jobs" vmlinux 2>&1 | tee -a "$log" | {
  n=0 last=-1
  while IFS= read -r line; do
    case "$line" in
      '  CC '*|'  AS '*|'  AR '*|'  LD '*|'  HOSTCC '*|'  HOSTLD '*) n=$((n + 1)) ;;
      *) continue ;;
    esac
    (( tty )) || continue
    if (( expected > 0 )); then
      pct=$((n * 100 / expected)); (( pct > 99 )) && pct=99
      (( pct == last )) && continue
      last=$pct
      status "compiling: $pct% ($n/$expected steps, $(elapsed))"
    else
      (( n % 10 == 0 )) || continue
      status "compiling: $n steps ($(elapsed))"
    fi
  done
  printf '%d\n' "$n" >"$build/objcount"
}
rc=${PIPESTATUS[0]}
set -e
(( rc == 0 )) || fail_with_log compilation "$log"
[[ -s "$build/objcount" ]] && cp -f "$build/objcount" "$KERNELS/.objcount"

# --- install ------------------------------------------------------------------
phase "installing"
stage=$(mktemp -d "$KERNELS/.stage.XXXXXX")
strip -o "$stage/vmlinux" "$src/vmlinux"
cp "$src/.config" "$stage/config"
seconds=$((SECONDS - start))
printf '{"hash":"%s","sourceVersion":"%s","builtAt":"%s","seconds":%d}\n' \
  "$hash" "$source_version" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$seconds" >"$stage/meta.json"
chmod 0755 "$stage"
chmod 0644 "$stage"/*
rm -rf "$out"
mv -T "$stage" "$out"
stage=""
point_default
rm -f "$KERNELS/last-failed-build.log"

phase "done in $(elapsed)"
printf 'kernel %s built in %ds: %s\n' "$hash" "$seconds" "$out/vmlinux"
