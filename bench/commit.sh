#!/usr/bin/env bash
# bench/commit.sh: the commit benchmark of issue 2.
#
# Commits one overlayfs delta three ways and reports medians, layer sizes and
# ratios:
#   1. layerfs commit --upper UPPER --lower BASE, appending to a copy of a base image
#   2. umoci repack of an (untimed) umoci unpack of the same base image, with the
#      same delta applied to the bundle's rootfs
#   3. tar -C UPPER -c . | pigz -6
# then the same delta over a base 4x larger, to show that layerfs commit time
# does not grow with the base.
#
# Needs: root (kernel overlayfs mount), go, python3, umoci, pigz, tar.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/commit.sh [options]
  -n N             timed runs per tool, the median is reported (default 3)
  -w, --workdir D  work in D and keep it; fixtures in D are reused when they
                   match (default: a fresh dir under /tmp, removed on exit)
  --warmup N       untimed warm-up runs per tool before the timed ones (default 1)
  --files N        files in the base (default 15000); the large base is 4x
  --no-large       skip the base-size section
  --no-layerfs     develop without a working `layerfs commit`: the base image
                   is made by umoci and the layerfs rows are skipped
  --check          exit 3 when a target is missed
  --wait-quiet S   before each round of runs, wait up to S seconds for other
                   processes to leave the CPUs idle (<10% busy over 3 s);
                   default 0 (no waiting)
  --keep           keep the temporary work dir
  -h, --help       this text
EOF
}

RUNS=3 WARMUP=1 FILES=15000 LARGE=1 USE_LAYERFS=1 CHECK=0 KEEP=0 WORK= QUIET=0
LEVEL=6 SEED=1 EPOCH=1700000000
while (($#)); do
  case $1 in
    -n) RUNS=$2; shift 2 ;;
    -w|--workdir) WORK=$2; KEEP=1; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --no-large) LARGE=0; shift ;;
    --no-layerfs) USE_LAYERFS=0; shift ;;
    --check) CHECK=1; shift ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || usage_error "-n wants a positive number"

FIXTURE="python3 $BENCH/fixture.py"

(( EUID == 0 )) || die "needs root, for the kernel overlayfs mount"
for t in go python3 umoci pigz tar; do
  command -v $t >/dev/null || die "$t not found (apt-get install -y umoci pigz)"
done

make_work /tmp/layerfs-bench.XXXXXX

MOUNTS=()
cleanup() {
  local m
  for m in "${MOUNTS[@]}"; do
    mountpoint -q "$m" && umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
  if ((KEEP)); then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

measure() {  # WALLARRAY CPUARRAY CMD...: run CMD (which prints "WALL CPU"), append
  local -n _w=$1 _c=$2
  local r
  shift 2
  r=$("$@")
  _w+=("${r% *}") _c+=("${r#* }")
}
layer_entries() { tar -tzf "$1" | wc -l; }
top_layer() { python3 "$BENCH/layout.py" "$@"; }   # LAYOUT TAG -> "NLAYERS SIZE DIGEST"
blob_path() { echo "$1/blobs/${2%%:*}/${2#*:}"; }

# fingerprint of a tree, to prove that a tool did not change its input
fingerprint() { (cd "$1" && find . -printf '%P %y %s %m %U:%G %T@ %l\n' | LC_ALL=C sort | md5sum | cut -c1-16); }

# ---------------------------------------------------------------- layerfs

LAYERFS=$WORK/layerfs
if ((USE_LAYERFS)); then
  build_layerfs "$LAYERFS" "use --no-layerfs to test the rest"
  "$LAYERFS" commit --help >/dev/null 2>&1 || die "layerfs commit --help fails: the verb is not there yet (use --no-layerfs)"
fi

# The layerfs command lines. The epoch makes the layer bytes reproducible; it
# clamps mtimes and does not change the work done. layerfs has no level flag:
# its gzip level is fixed at 6 (oci/layer.go), the level of pigz -6 and of
# umoci's pgzip default.
layerfs_base() {  # DIR LAYOUT: a plain dir as the first layer of LAYOUT:base
  SOURCE_DATE_EPOCH=$EPOCH "$LAYERFS" commit --upper "$1" --image "oci:$2:base" >/dev/null
}
layerfs_commit() {  # UPPER LOWER LAYOUT: a layout holding :base -> :bench = base + UPPER
  SOURCE_DATE_EPOCH=$EPOCH "$LAYERFS" commit --upper "$1" --lower "$2" \
    --image "oci:$3:bench" --base "oci:$3:base" >/dev/null
}

umoci_base() {  # DIR LAYOUT (--no-layerfs only)
  local b=$WORK/umoci-base-bundle
  rm -rf "$2" "$b"
  umoci init --layout "$2"
  umoci new --image "$2:base"
  umoci unpack --image "$2:base" "$b" >/dev/null
  cp -a "$1/." "$b/rootfs/"
  umoci repack --image "$2:base" "$b"
  rm -rf "$b"
}

# ---------------------------------------------------------------- fixtures

STAMP=$( (cat "$BENCH/fixture.py"; echo "$SEED $FILES $USE_LAYERFS $LEVEL $EPOCH") | md5sum | cut -c1-16)

# make_fixture NAME NFILES: $WORK/NAME/{base,upper,layout} with a stamp
make_fixture() {
  local name=$1 n=$2 d=$WORK/$1
  if [[ -f $d/stamp && $(<"$d/stamp") == "$STAMP" ]]; then
    log "$name: reusing fixture in $d"
    return
  fi
  rm -rf "$d"; mkdir -p "$d"
  log "$name: generating a base of ~$n files"
  $FIXTURE base "$d/base" --files "$n" --seed "$SEED"
  log "$name: applying the delta through kernel overlayfs"
  mkdir -p "$d/upper" "$d/ovl-work" "$d/merged"
  mount -t overlay overlay \
    -o "lowerdir=$d/base,upperdir=$d/upper,workdir=$d/ovl-work,redirect_dir=off,metacopy=off,index=off" \
    "$d/merged"
  MOUNTS+=("$d/merged")
  $FIXTURE delta "$d/merged" --seed "$SEED" --base-files "$FILES" 2>&1 | sed 's/^/# /' >&2
  umount "$d/merged"
  rm -rf "$d/ovl-work" "$d/merged"
  log "$name: base image"
  if ((USE_LAYERFS)); then layerfs_base "$d/base" "$d/layout"; else umoci_base "$d/base" "$d/layout" >/dev/null; fi
  echo "$STAMP" >"$d/stamp"
}

describe_fixture() {  # NAME -> prints lines
  local d=$WORK/$1 f dd l o b up_n up_d up_c up_f up_b lsz
  read -r f dd l o b < <($FIXTURE stats "$d/base")
  read -r _ lsz _ < <(top_layer "$d/layout" base)
  up_n=$(find "$d/upper" -mindepth 1 | wc -l)
  up_d=$(find "$d/upper" -mindepth 1 -type d | wc -l)
  up_c=$(find "$d/upper" -type c | wc -l)
  up_f=$(find "$d/upper" -type f | wc -l)
  up_b=$(find "$d/upper" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  echo "base  : $f files, $dd dirs, $l symlinks, $(mb "$b"); base image layer $(mb "$lsz") gzip"
  echo "upper : $up_n entries ($up_f files, $up_d dirs, $up_c whiteouts), $(mb "$up_b") of file data"
}

make_fixture small "$FILES"
((LARGE)) && make_fixture large $((FILES * 4))

# ---------------------------------------------------------------- the runs

S=$WORK/small
RUN=$WORK/run; mkdir -p "$RUN"
UPPER_FP=$(fingerprint "$S/upper")
BASE_FP=$(fingerprint "$S/base")

run_layerfs() {  # FIXTURE-DIR -> "WALL CPU" seconds; output in $RUN/lf-out
  local d=$1
  rm -rf "$RUN/lf-out"; cp -a "$d/layout" "$RUN/lf-out"; sync
  start
  layerfs_commit "$d/upper" "$d/base" "$RUN/lf-out"
  stop
}
run_umoci() {  # -> "WALL CPU" seconds; output in $RUN/um-out
  rm -rf "$RUN/um-out" "$RUN/um-bundle"; cp -a "$S/layout" "$RUN/um-out"
  umoci unpack --image "$RUN/um-out:base" "$RUN/um-bundle" >/dev/null
  $FIXTURE delta "$RUN/um-bundle/rootfs" --seed "$SEED" --base-files "$FILES" 2>/dev/null
  sync
  start
  umoci repack --image "$RUN/um-out:base" "$RUN/um-bundle" >/dev/null
  stop
}
run_tar() {  # -> "WALL CPU" seconds; output in $RUN/out.tar.gz
  rm -f "$RUN/out.tar.gz"; sync
  start
  tar -C "$S/upper" -c . | pigz -"$LEVEL" >"$RUN/out.tar.gz"
  stop
}

LF=() UM=() TP=() LFC=() UMC=() TPC=()
((QUIET)) && wait_quiet "$QUIET"
BUSY0=$(cpu_busy)
log "warm-up: $WARMUP untimed run(s) of each tool"
tar -C "$S/base" -c . >/dev/null
for ((i = 0; i < WARMUP; i++)); do
  ((USE_LAYERFS)) && run_layerfs "$S" >/dev/null
  run_umoci >/dev/null
  run_tar >/dev/null
done
for ((i = 1; i <= RUNS; i++)); do
  ((QUIET)) && wait_quiet "$QUIET"
  if ((USE_LAYERFS)); then measure LF LFC run_layerfs "$S"; fi
  measure UM UMC run_umoci
  measure TP TPC run_tar
  log "run $i/$RUNS: layerfs $( ((${#LF[@]})) && echo "${LF[-1]}" || echo -) s, umoci ${UM[-1]} s, tar|pigz ${TP[-1]} s"
done

BUSY1=$(cpu_busy)
[[ $(fingerprint "$S/upper") == "$UPPER_FP" ]] || die "the upper changed during the runs"
[[ $(fingerprint "$S/base") == "$BASE_FP" ]] || die "the base changed during the runs"

read -r UM_N UM_SIZE UM_DIG < <(top_layer "$RUN/um-out" base)
UM_ENT=$(layer_entries "$(blob_path "$RUN/um-out" "$UM_DIG")")
TP_SIZE=$(stat -c %s "$RUN/out.tar.gz")
TP_ENT=$(layer_entries "$RUN/out.tar.gz")
UM_MED=$(median "${UM[@]}")
TP_MED=$(median "${TP[@]}")
if ((USE_LAYERFS)); then
  read -r LF_N LF_SIZE LF_DIG < <(top_layer "$RUN/lf-out" bench)
  ((LF_N == 2)) || die "layerfs output has $LF_N layers, want 2 (base + delta)"
  LF_ENT=$(layer_entries "$(blob_path "$RUN/lf-out" "$LF_DIG")")
  LF_MED=$(median "${LF[@]}")
fi

# ---------------------------------------------------------------- the large base

if ((LARGE && USE_LAYERFS)); then
  L=$WORK/large
  LF15=() LF60=() LF15C=() LF60C=()
  ((QUIET)) && wait_quiet "$QUIET"
  BUSY2=$(cpu_busy)
  log "base-size section: layerfs on both bases, interleaved"
  ((WARMUP)) && { run_layerfs "$L" >/dev/null; }
  for ((i = 1; i <= RUNS; i++)); do
    ((QUIET)) && wait_quiet "$QUIET"
    measure LF15 LF15C run_layerfs "$S"
    measure LF60 LF60C run_layerfs "$L"
    log "run $i/$RUNS: small base ${LF15[-1]} s, large base ${LF60[-1]} s"
  done
  BUSY3=$(cpu_busy)
  read -r _ LF60_SIZE LF60_DIG < <(top_layer "$RUN/lf-out" bench)
  LF15_MED=$(median "${LF15[@]}")
  LF60_MED=$(median "${LF60[@]}")
fi

# ---------------------------------------------------------------- report

UM_CMED=$(median "${UMC[@]}")
TP_CMED=$(median "${TPC[@]}")
echo
echo "== layerfs commit benchmark (issue 2) =="
echo "date  : $(date -u +%Y-%m-%dT%H:%M:%SZ)   layerfs: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo uncommitted)$(cd "$REPO" && [[ -n $(git status --porcelain -- . ':!bench' 2>/dev/null) ]] && echo ' +dirty')"
echo "host  : $(machine), umoci $(umoci --version | awk '{print $3}'), pigz $(pigz --version 2>&1 | awk '{print $2}')"
describe_fixture small
echo "caches: warm for all three (page cache not dropped; $WARMUP untimed warm-up run(s) each; sync before each timed run)"
echo "runs  : $RUNS per tool, interleaved; median reported; gzip level $LEVEL for all"
echo "load  : CPUs ${BUSY0}% busy just before the runs, ${BUSY1}% just after (3 s samples, all processes)"
echo
row tool "median s" "runs (s)" "median CPU s" "layer bytes (gzip)" "tar entries" "time vs layerfs"
row "---" "---:" "---" "---:" "---:" "---:" "---:"
if ((USE_LAYERFS)); then
  LF_CMED=$(median "${LFC[@]}")
  row "layerfs commit" "$LF_MED" "${LF[*]}" "$LF_CMED" "$LF_SIZE" "$LF_ENT" "1.00x"
  row "umoci repack" "$UM_MED" "${UM[*]}" "$UM_CMED" "$UM_SIZE" "$UM_ENT" "$(div "$UM_MED" "$LF_MED")x"
  row "tar -c UPPER \\| pigz -$LEVEL" "$TP_MED" "${TP[*]}" "$TP_CMED" "$TP_SIZE" "$TP_ENT" "$(div "$TP_MED" "$LF_MED")x"
else
  row "layerfs commit" "-" "(skipped: --no-layerfs)" "-" "-" "-" "-"
  row "umoci repack" "$UM_MED" "${UM[*]}" "$UM_CMED" "$UM_SIZE" "$UM_ENT" "-"
  row "tar -c UPPER \\| pigz -$LEVEL" "$TP_MED" "${TP[*]}" "$TP_CMED" "$TP_SIZE" "$TP_ENT" "-"
fi
echo
MISSED=0
if ((USE_LAYERFS)); then
  r1=$(div "$UM_MED" "$LF_MED"); r2=$(div "$LF_MED" "$TP_MED")
  p1=$(awk -v r="$r1" 'BEGIN {print (r >= 20) ? "met" : "MISSED"}')
  p2=$(awk -v r="$r2" 'BEGIN {print (r <= 1.2) ? "met" : "MISSED"}')
  [[ $p1 == met && $p2 == met ]] || MISSED=1
  echo "targets (median wall times):"
  echo "  umoci / layerfs   >= 20x : ${r1}x  $p1   (CPU time: $(div "$UM_CMED" "$LF_CMED")x)"
  echo "  layerfs / tarpigz <= 1.2x: ${r2}x  $p2   (CPU time: $(div "$LF_CMED" "$TP_CMED")x)"
else
  echo "targets: not checked (--no-layerfs)"
fi

if ((LARGE && USE_LAYERFS)); then
  echo
  echo "== the same delta on a base 4x larger =="
  describe_fixture large
  echo "load  : CPUs ${BUSY2}% busy just before, ${BUSY3}% just after"
  echo
  row "layerfs commit, base" "median s" "runs (s)" "median CPU s" "layer bytes (gzip)"
  row "---" "---:" "---" "---:" "---:"
  row "$FILES files" "$LF15_MED" "${LF15[*]}" "$(median "${LF15C[@]}")" "$LF_SIZE"
  row "$((FILES * 4)) files" "$LF60_MED" "${LF60[*]}" "$(median "${LF60C[@]}")" "$LF60_SIZE"
  echo
  echo "layerfs commit time, large / small base: $(div "$LF60_MED" "$LF15_MED")x (flat is 1.00x)"
  if [[ $LF60_DIG == "$LF_DIG" ]]; then
    echo "delta layer digest identical on both bases: $LF_DIG"
  else
    echo "delta layer digests differ: small $LF_DIG, large $LF60_DIG"
  fi
fi

((CHECK && MISSED)) && exit 3
exit 0
