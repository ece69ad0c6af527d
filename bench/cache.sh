#!/usr/bin/env bash
# bench/cache.sh: the layer cache benchmark of issue 4.
#
# In one run it times, side by side:
#  1. restoring a cached layer of 1,500, 15,000 and 150,000 files (bench/fixture.py's
#     Debian-like base, seed 1: ~9 MB, ~95 MB, ~950 MB), from the rootfs/ of a real
#     `layerfs build` cache entry:
#       layerfs mount   `layerfs mount --lower ROOTFS --upper EMPTY MNT` (it returns
#                       once the mount serves) plus a `stat MNT/etc`: from nothing to
#                       a usable root. This is what a build does with a cached layer
#                       that a later layer needs as a lower.
#       layerfs build   a whole `layerfs build` of a 1-layer spec whose layer is a
#                       cache hit, into a new output layout: process start, key,
#                       lookup, blob hardlink, image write. The layer is a packages
#                       layer (install: cp -a of the fixture), so its key is computed
#                       from the spec alone and the hit reads no file of the layer.
#       cp -a           `cp -a ROOTFS/. DEST/` into an empty dir on the same fs: what
#                       the Yocto class does on a hit;
#       rsync -a        `rsync -a ROOTFS/ DEST/`, its other variant;
#     and, separately, each restore followed by a read of every file of the result
#     (bench/mountwalk.go read; in the mount for layerfs, in DEST for cp and rsync;
#     by default up to 15,000 files, see --read-max):
#     the mount gives access lazily and FUSE reads cost more than native ones, so
#     this column is the honest one for a consumer that reads the whole layer;
#  2. the rebuild of a 3-layer image (packages layers whose install is a cp -a of a
#     third of the 15,000-file base each) with every layer a hit, against the cold
#     build of the same spec with an empty cache (new output layout each time).
# It prints medians of N interleaved runs, every run, the ratios and the targets of
# issue 4 (flat; >= 20x faster than cp -a at 15,000 files, >= 100x at 150,000). It
# measures; it asserts no time.
#
# Fixtures, the layerfs cache holding the cached layers, and everything the runs
# write live on an ext4 made once in a zero-filled image in the cache dir (default
# /var/cache/layerfs-bench/cache-bench.img, 12 GiB), on a loop device with direct
# I/O, mounted nodiscard: the root fs of the reference VM is mounted `discard`,
# where the first write into just-freed blocks is several times slower (see
# BENCHMARKS.md, "The disk"), so each cp -a would pay for the rm -rf of the one
# before. bench/mount.sh makes a fresh fs per run; here the fs is kept, because
# the fixtures and the cache entries (a cold build of the 150,000-file layer
# through a FUSE mount takes minutes) are made once and reused.
#
# Needs: root, go, python3, cp, rsync (apt-get install -y rsync), mkfs.ext4, losetup,
# flock.
set -euo pipefail
umask 022
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
CMDLINE=$(cmdline "$@")

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/cache.sh [options]
  -n, --runs N       timed runs of every measurement, the median is reported (default 5)
  --big-runs N       runs at the largest size (default 3: a cp -a plus an rsync -a of
                     150,000 files and their removal take about a minute per run)
  --sizes LIST       restore fixture sizes in files, comma-separated
                     (default 1500,15000,150000)
  --read-max N       the "restore + read everything" column only for sizes <= N
                     (default 15000: reading 150,000 files through the mount takes
                     ~45 s a run; 0 turns the column off)
  --rebuild-files N  files of the 3-layer rebuild fixture (default 15000; 0 skips it)
  --rebuild-runs N   runs of the cold build / rebuild pair (default: --runs)
  --no-build         skip the 1-layer hit build rows
  --layerfs BIN      use a prebuilt layerfs (default: go build ./cmd/layerfs)
  --cache DIR        fixture cache dir (default /var/cache/layerfs-bench)
  --image-gb N       size of the fixture fs image when it is made (default 12)
  --check            exit 3 when a target is missed
  --wait-quiet S     before each round of runs, wait up to S seconds for the CPUs to
                     be <10% busy and I/O pressure <5%; default 0 (no waiting)
  --keep             keep the work dir (binaries, logs) and the run dir on the fixture fs
  -h, --help         this text
EOF
}

RUNS=5 BIG_RUNS=3 SIZES=1500,15000,150000 READ_MAX=15000 RB_FILES=15000 RB_RUNS=
DO_BUILD=1 LFS_BIN='' CACHE=/var/cache/layerfs-bench IMG_GB=12 CHECK=0 QUIET=0 KEEP=0
SEED=1 EPOCH=1700000000
while (($#)); do
  case $1 in
    -n|--runs) RUNS=$2; shift 2 ;;
    --big-runs) BIG_RUNS=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --read-max) READ_MAX=$2; shift 2 ;;
    --rebuild-files) RB_FILES=$2; shift 2 ;;
    --rebuild-runs) RB_RUNS=$2; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --layerfs) LFS_BIN=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --image-gb) IMG_GB=$2; shift 2 ;;
    --check) CHECK=1; shift ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
RB_RUNS=${RB_RUNS:-$RUNS}
for v in RUNS BIG_RUNS READ_MAX RB_FILES RB_RUNS IMG_GB QUIET; do
  [[ ${!v} =~ ^[0-9]+$ ]] || usage_error "${v,,} wants a number"
done
((RUNS >= 1)) || usage_error "--runs wants at least 1"
IFS=, read -r -a SZ <<<"$SIZES"
for s in "${SZ[@]}"; do [[ $s =~ ^[1-9][0-9]*$ ]] || usage_error "--sizes wants numbers"; done
mapfile -t SZ < <(printf '%s\n' "${SZ[@]}" | sort -n | uniq)
BIG=${SZ[-1]}

((EUID == 0)) || die "needs root (loop device, mounts, the build sandbox)"
for t in go python3 cp rsync mkfs.ext4 losetup flock mount umount; do
  command -v $t >/dev/null || die "$t not found$([[ $t == rsync ]] && echo ' (apt-get install -y rsync)')"
done

mkdir -p "$CACHE"; CACHE=$(cd "$CACHE" && pwd)
IMG=$CACHE/cache-bench.img     # the fixture fs, made once
FSM=$CACHE/cache-bench.mnt     # where it is mounted during a run
exec 9>"$CACHE/cache-bench.lock"
flock -n 9 || die "another bench/cache.sh holds $CACHE/cache-bench.lock"
WORK=$(mktemp -d /var/tmp/layerfs-cache-bench.XXXXXX)

# ---------------------------------------------------------------- mounts and cleanup

LFS=$WORK/bin/layerfs
WALK=$WORK/bin/mountwalk
LOOPDEV=
SCR=$FSM/run            # what the runs write; removed at the start and the end

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  if mountpoint -q "$FSM" 2>/dev/null; then
    umount_under "$FSM"
    ((KEEP)) || rm -rf "$SCR"
    umount "$FSM" 2>/dev/null || umount -l "$FSM" 2>/dev/null || true
  fi
  [[ -n $LOOPDEV ]] && losetup -d "$LOOPDEV" 2>/dev/null
  if ((KEEP)); then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

# shellcheck disable=SC2034  # read by lib.sh
DIV_PLACES=1   # div: the ratios of this report have one decimal
# shellcheck disable=SC2034  # read by lib.sh
WAIT_IO=1      # wait_quiet: also for I/O pressure <5%
add() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a + b}'; }

# R[what/size] = space-separated seconds of each run
declare -A R
# timed KEY CMD...: run CMD, append its wall time to R[KEY]; stdout to $WORK/out
timed() {
  local key=$1 t0 t1 rc=0
  shift
  t0=$EPOCHREALTIME
  "$@" >"$WORK/out" 2>"$WORK/err" || rc=$?
  t1=$EPOCHREALTIME
  R[$key]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') "
  if ((rc)); then cat "$WORK/err" >&2; fi
  return $rc
}
walk_entries() { awk '{print $2}' "$WORK/out"; }   # of the walker's output

# json_get FILE EXPR: a field of a `layerfs build --json` result (python expression over r)
json_get() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# ---------------------------------------------------------------- layerfs

mkdir -p "$WORK/bin"
(cd "$REPO" && go build -o "$WALK" bench/mountwalk.go) || die "build bench/mountwalk.go failed"
get_layerfs "$LFS" "$LFS_BIN"
"$LFS" build --help >/dev/null 2>&1 || die "layerfs has no 'build' verb"
"$LFS" mount --help >/dev/null 2>&1 || die "layerfs has no 'mount' verb"

# ---------------------------------------------------------------- the fixture fs

# A killed run may have left it mounted.
if mountpoint -q "$FSM" 2>/dev/null; then
  log "unmounting $FSM, left by an earlier run"
  umount_under "$FSM"
  umount "$FSM" || die "umount $FSM failed"
fi
while read -r dev; do losetup -d "${dev%%:*}" 2>/dev/null || true; done < <(losetup -j "$IMG" 2>/dev/null)
if [[ ! -f $IMG.done ]]; then
  log "fixture fs: a $IMG_GB GiB zero-filled image $IMG, ext4 (once)"
  rm -f "$IMG"
  dd if=/dev/zero of="$IMG.tmp" bs=16M count=$((IMG_GB * 64)) conv=fsync status=none
  # -i 8192: room for ~4 copies of the 150,000-file tree
  mkfs.ext4 -q -F -i 8192 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$IMG.tmp" || die "mkfs.ext4 failed"
  mv "$IMG.tmp" "$IMG"
  touch "$IMG.done"
fi
mkdir -p "$FSM"
LOOPDEV=$(losetup --find --show --direct-io=on "$IMG") || die "losetup $IMG failed"
mount -o nodiscard "$LOOPDEV" "$FSM" || die "mount $LOOPDEV failed"
rm -rf "$SCR"; mkdir -p "$SCR"

# ---------------------------------------------------------------- fixtures (made once)

FIX=$FSM/fixtures
LC=$FSM/lcache     # the layerfs cache holding the cached layers of section 1
mkdir -p "$FIX" "$LC"
# What each fixture is made from: the restore trees from fixture.py alone, the parts
# from both scripts.
STAMP=$( (cat "$BENCH/fixture.py"; echo "seed $SEED") | md5sum | cut -c1-12)
PSTAMP=$( (cat "$BENCH/fixture.py" "$BENCH/cache_fixture.py"; echo "seed $SEED") | md5sum | cut -c1-12)
export SOURCE_DATE_EPOCH=$EPOCH   # every build: the keys and the digests stay put

fresh_stamp() { [[ -f $1.stamp && $(<"$1.stamp") == "$2" ]]; }
make_base() {  # N: $FIX/base-N, the N-file base of fixture.py
  local d=$FIX/base-$1
  fresh_stamp "$d" "$STAMP" && return 0
  log "fixture: fixture.py base of $1 files into $d (once)"
  rm -rf "$d" "$d.tmp" "$d.stamp"
  python3 "$BENCH/fixture.py" base "$d.tmp" --files "$1" --seed "$SEED"
  mv "$d.tmp" "$d"; sync
  echo "$STAMP" >"$d.stamp"
}
make_parts() {  # N: $FIX/rebuild-N/parts/p1..p3
  local d=$FIX/rebuild-$1/parts
  fresh_stamp "$d" "$PSTAMP" && return 0
  log "fixture: the $1-file base split into 3 parts in $d (once)"
  rm -rf "$d" "$d.tmp" "$d.stamp"; mkdir -p "$(dirname "$d")"
  python3 "$BENCH/cache_fixture.py" parts "$d.tmp" --files "$1" --seed "$SEED" 2>&1 | sed 's/^/#   /' >&2
  mv "$d.tmp" "$d"; sync
  echo "$PSTAMP" >"$d.stamp"
}
# The specs. Their install commands use paths relative to the spec (builds run them
# there), so no host path enters the keys; the fixture's stamp is the package
# "version", so that a changed fixture is a miss and not a stale hit.
write_hit_spec() {  # N
  mkdir -p "$FIX/hit-$1"
  cat >"$FIX/hit-$1/spec.yaml" <<EOF
# bench/cache.sh: one packages layer holding the $1-file base (a cache hit after the first build)
image: oci:out:bench
machine: layerfs-cache-bench
install: cp -a ../base-$1/. "\$LAYERFS_ROOT"/
versions: {restore-$1: "$STAMP"}
layers:
  - {name: restore, type: packages, packages: [restore-$1]}
EOF
}
write_rebuild_spec() {  # N
  cat >"$FIX/rebuild-$1/spec.yaml" <<EOF
# bench/cache.sh: the $1-file base as 3 packages layers, a third of it each
image: oci:out:bench
machine: layerfs-cache-bench
install: cp -a "parts/\$LAYERFS_PACKAGES/." "\$LAYERFS_ROOT"/
versions: {p1: "$PSTAMP", p2: "$PSTAMP", p3: "$PSTAMP"}
layers:
  - {name: base, type: packages, packages: [p1]}
  - {name: libs, type: packages, packages: [p2]}
  - {name: apps, type: packages, packages: [p3]}
EOF
}

declare -A ROOTFS ENTRIES NFILES NBYTES NDIRS NLINKS
for n in "${SZ[@]}"; do
  make_base "$n"
  write_hit_spec "$n"
  # The cached layer: the build's cache entry. The first build of a stamp misses
  # and makes it (cp -a through a layerfs mount, commit, insert: minutes at 150,000
  # files); later ones hit.
  J=$WORK/hit-$n.json
  rm -rf "$SCR/o"
  t0=$SECONDS
  "$LFS" build "$FIX/hit-$n/spec.yaml" --cache "$LC" --image "oci:$SCR/o:bench" --quiet --json >"$J" 2>"$WORK/err" ||
    { cat "$WORK/err" >&2; die "layerfs build of $FIX/hit-$n/spec.yaml failed"; }
  if [[ $(json_get "$J" 'r["hits"]') != 1 ]]; then
    log "fixture: cache entry of the $n-file layer built in $((SECONDS - t0)) s (once)"
  fi
  key=$(json_get "$J" 'r["layers"][0]["key"]')
  ROOTFS[$n]=$LC/${key:0:16}-restore/rootfs
  [[ -d ${ROOTFS[$n]} ]] || die "no cache entry dir ${ROOTFS[$n]} after the build"
  read -r f d l _ b < <(python3 "$BENCH/fixture.py" stats "${ROOTFS[$n]}")
  NFILES[$n]=$f NDIRS[$n]=$d NLINKS[$n]=$l NBYTES[$n]=$b
  rm -rf "$SCR/o"
done
if ((RB_FILES)); then
  make_parts "$RB_FILES"
  write_rebuild_spec "$RB_FILES"
fi
# entries of old stamps or layerfs versions, unused for 30 days
"$LFS" cache prune --cache "$LC" --older-than 720h >/dev/null 2>&1 || true
sync

# ---------------------------------------------------------------- the measurements

READS=()
for n in "${SZ[@]}"; do ((n <= READ_MAX)) && READS+=("$n"); done
reads() { local x; for x in "${READS[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }
check_walk() {  # WHAT N: the walker's output in $WORK/out against the cached rootfs
  local got
  got=$(walk_entries)
  [[ $got == "${ENTRIES[$2]}" ]] || warn "$1: the walk saw $got entries, want ${ENTRIES[$2]} (wrong result: figure not comparable)"
}

lfs_restore() {  # ROOTFS MNT: nothing to a usable root
  "$LFS" mount --lower "$1" --upper "$SCR/u" --workdir "$SCR/w" "$2" && stat "$2/etc" >/dev/null
}
restore_layerfs() {  # N
  local n=$1 m=$SCR/m
  mkdir -p "$m"
  sync
  timed "mount/$n" lfs_restore "${ROOTFS[$n]}" "$m" || die "layerfs mount of ${ROOTFS[$n]} failed"
  if reads "$n"; then
    sync
    timed "mount+read/$n" "$WALK" read "$m" || warn "reading the layerfs mount failed"
    check_walk "layerfs mount, $n files" "$n"
  fi
  "$LFS" umount "$m" || die "layerfs umount $m failed"
  [[ -z $(find "$SCR/u" -mindepth 1 -print -quit) ]] || warn "layerfs, $n files: the restore wrote to the upper: $(find "$SCR/u" -mindepth 1 | head -5 | tr '\n' ' ')"
  rm -rf "$SCR/u" "$SCR/w" "$m"
}
restore_copy() {  # TOOL N
  local tool=$1 n=$2 d=$SCR/d
  mkdir -p "$d"
  sync
  case $tool in
    cp) timed "cp/$n" cp -a "${ROOTFS[$n]}/." "$d/" || die "cp -a failed" ;;
    rsync) timed "rsync/$n" rsync -a "${ROOTFS[$n]}/" "$d/" || die "rsync -a failed" ;;
  esac
  if reads "$n"; then
    sync
    timed "$tool+read/$n" "$WALK" read "$d" || warn "reading the $tool copy failed"
  else
    "$WALK" stat "$d" >"$WORK/out"
  fi
  check_walk "$tool, $n files" "$n"
  rm -rf "$d"
}
hit_build() {  # N
  local n=$1 o=$SCR/o j=$WORK/hit.json
  sync
  timed "build/$n" "$LFS" build "$FIX/hit-$n/spec.yaml" --cache "$LC" --image "oci:$o:bench" --quiet --json ||
    die "layerfs build (hit) of $n files failed"
  cp "$WORK/out" "$j"
  [[ $(json_get "$j" 'r["hits"]') == 1 ]] || warn "build of the $n-file layer: not a cache hit"
  rm -rf "$o"
}

# warm-up: the cached rootfs in the page cache (a native read walk, which also counts
# its entries), one mount and one hit build each
log "warm-up: a read of each cached rootfs, one layerfs mount and one hit build each"
for n in "${SZ[@]}"; do
  "$WALK" read "${ROOTFS[$n]}" >"$WORK/out" || die "reading ${ROOTFS[$n]} failed"
  ENTRIES[$n]=$(walk_entries)
  mkdir -p "$SCR/m"; lfs_restore "${ROOTFS[$n]}" "$SCR/m"; "$LFS" umount "$SCR/m"; rm -rf "$SCR/u" "$SCR/w" "$SCR/m"
  ((DO_BUILD)) && { "$LFS" build "$FIX/hit-$n/spec.yaml" --cache "$LC" --image "oci:$SCR/o:bench" --quiet --json >/dev/null 2>&1 || die "warm-up build failed"; rm -rf "$SCR/o"; }
done

((QUIET)) && wait_quiet "$QUIET"
BUSY0=$(cpu_busy) IO0=$(io_pressure)
T_START=$SECONDS
for ((run = 1; run <= RUNS; run++)); do
  for n in "${SZ[@]}"; do
    ((n == BIG && ${#SZ[@]} > 1 && run > BIG_RUNS)) && continue
    ((QUIET)) && wait_quiet "$QUIET"
    restore_layerfs "$n"
    restore_copy cp "$n"
    restore_copy rsync "$n"
    ((DO_BUILD)) && hit_build "$n"
    msg="run $run/$RUNS, $n files: layerfs mount $(last "mount/$n") s"
    ((DO_BUILD)) && msg+=", build (hit) $(last "build/$n") s"
    msg+=", cp -a $(last "cp/$n") s, rsync -a $(last "rsync/$n") s"
    reads "$n" && msg+="; then read all: layerfs $(last "mount+read/$n"), cp $(last "cp+read/$n"), rsync $(last "rsync+read/$n") s"
    log "$msg"
  done
done
T_RESTORE=$((SECONDS - T_START))
BUSY1=$(cpu_busy) IO1=$(io_pressure)

# ---------------------------------------------------------------- 3-layer rebuild

declare -A RBL   # per-layer install/commit seconds of the cold builds
RB_MAN_OK=1
if ((RB_FILES)); then
  spec=$FIX/rebuild-$RB_FILES/spec.yaml
  ((QUIET)) && wait_quiet "$QUIET"
  BUSY2=$(cpu_busy) IO2=$(io_pressure)
  T_START=$SECONDS
  for ((run = 1; run <= RB_RUNS; run++)); do
    ((QUIET)) && wait_quiet "$QUIET"
    rm -rf "$SCR/rbc" "$SCR/rb1" "$SCR/rb2"
    sync
    timed cold "$LFS" build "$spec" --cache "$SCR/rbc" --image "oci:$SCR/rb1:bench" --quiet --json || die "cold build failed"
    cp "$WORK/out" "$WORK/cold.json"
    [[ $(json_get "$WORK/cold.json" 'r["misses"]') == 3 ]] || warn "cold build: not 3 misses"
    for i in 0 1 2; do
      RBL[install/$i]+="$(json_get "$WORK/cold.json" "r['layers'][$i]['install_seconds']") "
      RBL[commit/$i]+="$(json_get "$WORK/cold.json" "r['layers'][$i]['commit_seconds']") "
    done
    RB_NAMES=$(json_get "$WORK/cold.json" '" ".join(l["name"] for l in r["layers"])')
    sync
    timed rebuild "$LFS" build "$spec" --cache "$SCR/rbc" --image "oci:$SCR/rb2:bench" --quiet --json || die "rebuild failed"
    cp "$WORK/out" "$WORK/hit3.json"
    [[ $(json_get "$WORK/hit3.json" 'r["hits"]') == 3 ]] || warn "rebuild: not 3 hits"
    [[ $(json_get "$WORK/cold.json" 'r["manifest"]') == $(json_get "$WORK/hit3.json" 'r["manifest"]') ]] || RB_MAN_OK=0
    RB_MANIFEST=$(json_get "$WORK/hit3.json" 'r["manifest"]')
    log "run $run/$RB_RUNS, 3 layers of $RB_FILES files: cold $(last cold) s, rebuild $(last rebuild) s"
    rm -rf "$SCR/rbc" "$SCR/rb1" "$SCR/rb2"
  done
  T_REBUILD=$((SECONDS - T_START))
  BUSY3=$(cpu_busy) IO3=$(io_pressure)
  ((RB_MAN_OK)) || warn "the rebuild's manifest differs from the cold build's"
fi

# ---------------------------------------------------------------- report

num() { printf "%'d" "$1"; }
echo
echo "== layerfs layer cache benchmark (issue 4) =="
echo "command : $CMDLINE"
echo "date    : $(date -u +%Y-%m-%dT%H:%M:%SZ)   layerfs: $LFS_REV"
echo "host    : $(machine), $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release)"
echo "tools   : $(cp --version | head -1), $(rsync --version | head -1 | awk '{print "rsync", $3}'), $(go version | awk '{print $3}')"
echo "disk    : fixtures, layerfs cache, copies, uppers and outputs on one ext4 ($(findmnt -no FSTYPE,OPTIONS -T "$FSM" | cut -c1-50)) on $LOOPDEV (direct I/O) over $IMG, which is on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$CACHE" | cut -c1-60)"
echo "caches  : warm (page cache not dropped; a read of each cached rootfs, a mount and a hit build before the runs); sync before each timed run; SOURCE_DATE_EPOCH=$EPOCH"
echo "runs    : $RUNS of each, interleaved (layerfs mount, cp -a, rsync -a$( ((DO_BUILD)) && echo ', layerfs build') per size), median reported; $((BIG_RUNS < RUNS ? BIG_RUNS : RUNS)) at $(num "$BIG") files; section took $T_RESTORE s"
echo "load    : CPUs ${BUSY0}% busy just before the runs, ${BUSY1}% just after; I/O pressure ${IO0}% / ${IO1}%"
echo
echo "fixture : bench/fixture.py base --seed $SEED, as the rootfs/ of a layerfs cache entry (cp -a through a layerfs mount):"
for n in "${SZ[@]}"; do
  echo "  $(num "$n"): $(num "${NFILES[$n]}") files, $(num "${NDIRS[$n]}") dirs, $(num "${NLINKS[$n]}") symlinks, $(mb "${NBYTES[$n]}") ($(num "${ENTRIES[$n]}") entries)"
done
echo
echo "Restore a cached layer, medians (s):"
echo
hdr=(files "layerfs mount + stat")
sep=("---:" "---:")
((DO_BUILD)) && { hdr+=("layerfs build (hit)"); sep+=("---:"); }
hdr+=("cp -a" "rsync -a" "cp / mount" "rsync / mount")
sep+=("---:" "---:" "---:" "---:")
((DO_BUILD)) && { hdr+=("cp / build" "rsync / build"); sep+=("---:" "---:"); }
row "${hdr[@]}"; row "${sep[@]}"
for n in "${SZ[@]}"; do
  r=("$(num "$n")" "$(med "mount/$n")")
  ((DO_BUILD)) && r+=("$(med "build/$n")")
  r+=("$(med "cp/$n")" "$(med "rsync/$n")" "$(div "$(med "cp/$n")" "$(med "mount/$n")")x" "$(div "$(med "rsync/$n")" "$(med "mount/$n")")x")
  ((DO_BUILD)) && r+=("$(div "$(med "cp/$n")" "$(med "build/$n")")x" "$(div "$(med "rsync/$n")" "$(med "build/$n")")x")
  row "${r[@]}"
done
if ((${#READS[@]})); then
  echo
  echo "Restore, then read every file of the result (medians of the sums, s; each part is timed after a sync):"
  echo
  row files "layerfs mount + read" "cp -a + read" "rsync -a + read" "read alone: layerfs / cp copy" "cp+read / mount+read" "rsync+read / mount+read"
  row "---:" "---:" "---:" "---:" "---:" "---:" "---:"
  for n in "${READS[@]}"; do
    declare -a S1=() S2=() S3=()
    read -ra a <<<"${R[mount/$n]}"; read -ra b <<<"${R[mount+read/$n]}"; for i in "${!a[@]}"; do S1+=("$(add "${a[i]}" "${b[i]}")"); done
    read -ra a <<<"${R[cp/$n]}"; read -ra b <<<"${R[cp+read/$n]}"; for i in "${!a[@]}"; do S2+=("$(add "${a[i]}" "${b[i]}")"); done
    read -ra a <<<"${R[rsync/$n]}"; read -ra b <<<"${R[rsync+read/$n]}"; for i in "${!a[@]}"; do S3+=("$(add "${a[i]}" "${b[i]}")"); done
    R[sum-mount/$n]="${S1[*]}" R[sum-cp/$n]="${S2[*]}" R[sum-rsync/$n]="${S3[*]}"
    row "$(num "$n")" "$(med "sum-mount/$n")" "$(med "sum-cp/$n")" "$(med "sum-rsync/$n")" \
      "$(med "mount+read/$n") / $(med "cp+read/$n")" "$(div "$(med "sum-cp/$n")" "$(med "sum-mount/$n")")x" "$(div "$(med "sum-rsync/$n")" "$(med "sum-mount/$n")")x"
  done
fi
echo
echo "every run (s):"
for n in "${SZ[@]}"; do
  for k in mount build cp rsync mount+read cp+read rsync+read; do
    [[ -n ${R[$k/$n]:-} ]] && printf '  %-8s %-11s %s\n' "$n" "$k" "${R[$k/$n]}"
  done
done

MISSED=0
verdict() {  # LABEL VALUE OP LIMIT
  local v
  v=$(awk -v r="$2" -v op="$3" -v l="$4" 'BEGIN {if (r == "-") print "-"; else if (op == ">=") print (r >= l) ? "met" : "MISSED"; else print (r <= l) ? "met" : "MISSED"}')
  [[ $v == MISSED ]] && MISSED=1
  printf '  %-52s %8s  %s\n' "$1" "${2}x" "$v"
}
echo
echo "targets of issue 4 (ratios of medians; restore = layerfs mount + stat):"
if ((${#SZ[@]} > 1)); then
  verdict "flat: mount at $(num "$BIG") / at $(num "${SZ[0]}") files <= 1.5x" "$(div "$(med "mount/$BIG")" "$(med "mount/${SZ[0]}")")" "<=" 1.5
  ((DO_BUILD)) && printf '  %-52s %8s\n' "(build (hit) at $(num "$BIG") / at $(num "${SZ[0]}") files)" "$(div "$(med "build/$BIG")" "$(med "build/${SZ[0]}")")x"
fi
for n in "${SZ[@]}"; do
  lim=
  ((n == 15000)) && lim=20
  ((n == 150000)) && lim=100
  [[ -n $lim ]] || continue
  verdict "cp -a / layerfs mount at $(num "$n") files >= ${lim}x" "$(div "$(med "cp/$n")" "$(med "mount/$n")")" ">=" "$lim"
  ((DO_BUILD)) && printf '  %-52s %8s\n' "(cp -a / layerfs build (hit) at $(num "$n") files)" "$(div "$(med "cp/$n")" "$(med "build/$n")")x"
  reads "$n" && printf '  %-52s %8s\n' "(with a read of everything after each)" "$(div "$(med "sum-cp/$n")" "$(med "sum-mount/$n")")x"
done

if ((RB_FILES)); then
  read -r pf _ _ _ pb < <(python3 "$BENCH/fixture.py" stats "$FIX/rebuild-$RB_FILES/parts/p1")
  echo
  echo "== 3-layer image, cold build vs rebuild with every layer a hit =="
  echo "spec    : $FIX/rebuild-$RB_FILES/spec.yaml: layers $RB_NAMES, each a cp -a of a third of the $(num "$RB_FILES")-file base"
  echo "          (fixture: bench/cache_fixture.py parts; p1 alone: $(num "$pf") files, $(mb "$pb"))"
  echo "runs    : $RB_RUNS pairs (a cold build with an empty cache, then the rebuild from that cache; new output layout each time); section took $T_REBUILD s"
  echo "load    : CPUs ${BUSY2}% busy just before, ${BUSY3}% just after; I/O pressure ${IO2}% / ${IO3}%"
  echo "manifest: $([[ $RB_MAN_OK == 1 ]] && echo "identical in the cold build and the rebuild: $RB_MANIFEST" || echo "DIFFERS between the cold build and the rebuild")"
  echo
  row build "median s" "runs (s)" "cold / rebuild"
  row "---" "---:" "---" "---:"
  row "cold (3 misses)" "$(med cold)" "${R[cold]}" "1.0x"
  row "rebuild (3 hits)" "$(med rebuild)" "${R[rebuild]}" "$(div "$(med cold)" "$(med rebuild)")x"
  echo
  echo "cold build, per layer (medians from --json, s):"
  i=0
  for name in $RB_NAMES; do
    # shellcheck disable=SC2086
    echo "  $name: install (mount + cp -a through it) $(median ${RBL[install/$i]}), commit $(median ${RBL[commit/$i]})"
    i=$((i + 1))
  done
fi

if ((${#WARNINGS[@]})); then
  echo
  echo "warnings:"
  for w in "${WARNINGS[@]}"; do echo "  $w"; done
fi

((CHECK && MISSED)) && exit 3
exit 0
