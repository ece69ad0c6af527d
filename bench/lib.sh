# shellcheck shell=bash
# bench/lib.sh: helpers shared by the benchmark scripts of bench/, sourced by each
# of them relative to its own location:
#   . "$(dirname "$0")/lib.sh"
# It only defines things (and BENCH, REPO, WARNINGS); the scripts set the shell
# options. Some helpers use the sourcing script's variables, named at each one:
# RUN (start/stop), R (med/last), QUIET, KEEP and usage (common_option), WORK
# (make_work), and the settings DIV_PLACES (div) and WAIT_IO (wait_quiet).

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by the scripts
REPO=$(dirname "$BENCH")

# ---------------------------------------------------------------- messages

log() { echo "# $*" >&2; }
die() { echo "${0##*/}: $*" >&2; exit 1; }
usage_error() { echo "${0##*/}: $*" >&2; exit 2; }   # a bad option value
WARNINGS=()
warn() { log "WARNING: $*"; WARNINGS+=("$*"); }

# ---------------------------------------------------------------- options

# The options every script takes, for the last arm of its option loop:
#   *) common_option "$@"; shift "$OPT_WORDS" ;;
# OPT_WORDS is how many words the option took; anything else is a usage error.
# shellcheck disable=SC2034  # QUIET and KEEP are the script's
common_option() {
  case $1 in
    --wait-quiet) QUIET=$2; OPT_WORDS=2 ;;
    --keep) KEEP=1; OPT_WORDS=1 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
}

# cmdline ARGS...: the command line "$0 ARGS" for the report, each argument quoted
# (printf %q) unless it is plain
cmdline() {
  local a line=$0
  for a in "$@"; do
    if [[ $a =~ ^[][A-Za-z0-9_./,=:+@-]+$ ]]; then line+=" $a"; else line+=" $(printf '%q' "$a")"; fi
  done
  echo "$line"
}

# make_work TEMPLATE: WORK (-w) made and absolute, or without one a fresh
# mktemp -d TEMPLATE
make_work() {
  if [[ -z $WORK ]]; then
    WORK=$(mktemp -d "$1")
  else
    mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
  fi
}

# build_layerfs OUT [HINT]: go build ./cmd/layerfs of this checkout into OUT
build_layerfs() {
  log "building layerfs from $REPO"
  (cd "$REPO" && go build -o "$1" ./cmd/layerfs) || die "go build ./cmd/layerfs failed${2:+ ($2)}"
}

# get_layerfs OUT BIN [HINT]: BIN copied to OUT, or without BIN this checkout
# built there; sets LFS_REV to the commit ("+dirty" with uncommitted changes
# outside bench/, integration/ and the docs), "-" for a given binary
get_layerfs() {
  LFS_REV=-
  if [[ -n $2 ]]; then
    cp "$2" "$1"
    return
  fi
  build_layerfs "$1" "${3:-}"
  LFS_REV=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo uncommitted)
  if [[ -n $(cd "$REPO" && git status --porcelain -- . ':!bench' ':!integration' ':!BENCHMARKS.md' ':!README.md' 2>/dev/null) ]]; then LFS_REV+=+dirty; fi
}

# ---------------------------------------------------------------- numbers

# median NUMBERS...: to 3 decimals; empty words are skipped, "-" when none is left
median() { printf '%s\n' "$@" | { grep . || true; } | sort -g | awk '{a[NR]=$1} END {if (NR == 0) {print "-"; exit} printf "%.3f\n", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# div A B: A/B to DIV_PLACES decimals (default 2); "-" when A or B is "-" (the
# median of no runs) or B <= 0
div() { awk -v a="$1" -v b="$2" -v p="${DIV_PLACES:-2}" 'BEGIN {if (a == "-" || b == "-" || b <= 0) print "-"; else printf "%." p "f", a/b}'; }
mb() { awk -v a="$1" 'BEGIN {printf "%.1f MB", a/1e6}'; }
# markdown rows, so the output pastes into BENCHMARKS.md as it is
row() { printf '| %s ' "$@"; echo '|'; }

# R[KEY] = space-separated seconds of each run (the script declares R)
# shellcheck disable=SC2086  # R's values are space-separated numbers, split on purpose
med() { median ${R[$1]:-}; }
last() { local a; read -ra a <<<"${R[$1]}"; echo "${a[-1]}"; }

# start/stop around a timed command: stop prints "WALL CPU", CPU being the
# user+sys seconds of the children waited for in between (bash's `times`,
# which runs without a fork when redirected); the files go to $RUN
start() { times >"$RUN/times.0"; T0=$EPOCHREALTIME; }
stop() {
  local t1=$EPOCHREALTIME
  times >"$RUN/times.1"
  awk -v a="$T0" -v b="$t1" 'function s(x, m) {sub(/s$/, "", x); split(x, m, "m"); return m[1] * 60 + m[2]}
    FNR == 2 {c[++n] = s($1) + s($2)} END {printf "%.3f %.3f\n", b - a, c[2] - c[1]}' "$RUN/times.0" "$RUN/times.1"
}

# ---------------------------------------------------------------- the machine

# percent of CPU time not idle over the next 3 s, all processes
cpu_busy() {
  local a b
  a=$(head -1 /proc/stat); sleep 3; b=$(head -1 /proc/stat)
  # fields: cpu user nice system idle iowait irq softirq steal guest guest_nice
  echo "$a $b" | awk '{for (i = 2; i <= 9; i++) {t0 += $i; t1 += $(i + 11)}
    id0 = $5 + $6; id1 = $16 + $17; printf "%.0f", 100 * (1 - (id1 - id0) / (t1 - t0 + 1e-9))}'
}
io_pressure() {  # "some avg10" of /proc/pressure/io, as an integer percent (0 without PSI)
  awk '/^some/ {split($2, a, "="); printf "%.0f", a[2]; found = 1} END {if (!found) print 0}' /proc/pressure/io 2>/dev/null || echo 0
}
# wait_quiet MAXSECONDS: until the CPUs are <10% busy and, with WAIT_IO=1 (set by
# cache.sh and mount.sh), tasks stall on I/O <5% of the time
wait_quiet() {
  local t0=$SECONDS b io=0 what
  while b=$(cpu_busy); if ((${WAIT_IO:-0})); then io=$(io_pressure); fi; ((b >= 10 || io >= 5)); do
    what="${b}% busy"
    ((${WAIT_IO:-0})) && what+=", I/O pressure ${io}%"
    if ((SECONDS - t0 >= $1)); then log "CPUs still $what after $1 s; measuring anyway"; return; fi
    if ((${WAIT_IO:-0})); then log "CPUs $what (other work); waiting"; else log "CPUs $what with other work; waiting"; fi
    sleep 7
  done
}

# "N CPUs (MODEL), M GiB RAM, Linux RELEASE", for the report's header
machine() {
  echo "$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, Linux $(uname -r)"
}

# ---------------------------------------------------------------- the scratch fs

# umount_under DIR: unmount everything mounted below DIR (not DIR), deepest
# first; layerfs mounts with $LFS (when the script set it and it is built)
umount_under() {
  local p
  while read -r p; do
    if [[ -n ${LFS:-} && -x $LFS ]]; then "$LFS" umount "$p" 2>/dev/null && continue; fi
    umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true
  done < <(awk -v w="$1/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r)
}

# scratch_loop IMG GB DIR: a fresh ext4 (nodiscard) on a loop device (direct I/O)
# over IMG, a zero-filled image of GB GiB made once, mounted nodiscard at DIR
# (BENCHMARKS.md, "The disk"); scratch_loop_release, from the cleanup trap,
# unmounts it and frees the device. Sets LOOPDEV and SCRATCH_DIR.
scratch_loop() {
  local img=$1 gb=$2 dev
  SCRATCH_DIR=$3
  while read -r dev; do losetup -d "${dev%%:*}" 2>/dev/null || true; done < <(losetup -j "$img" 2>/dev/null)
  if [[ ! -f $img ]]; then
    log "scratch fs: writing a $gb GiB zero-filled image $img (once)"
    dd if=/dev/zero of="$img.tmp" bs=16M count=$((gb * 64)) conv=fsync status=none
    mv "$img.tmp" "$img"
  fi
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$img" || die "mkfs.ext4 $img failed"
  LOOPDEV=$(losetup --find --show --direct-io=on "$img") || die "losetup $img failed"
  mkdir -p "$SCRATCH_DIR"
  mount -o nodiscard "$LOOPDEV" "$SCRATCH_DIR" || die "mount $LOOPDEV failed"
}
scratch_loop_release() {
  if [[ -n ${SCRATCH_DIR:-} ]] && mountpoint -q "$SCRATCH_DIR" 2>/dev/null; then
    umount "$SCRATCH_DIR" 2>/dev/null || umount -l "$SCRATCH_DIR" 2>/dev/null || true
  fi
  if [[ -n ${LOOPDEV:-} ]]; then losetup -d "$LOOPDEV" 2>/dev/null || true; fi
}
