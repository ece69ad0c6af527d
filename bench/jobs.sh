#!/usr/bin/env bash
# bench/jobs.sh: building a set of independent specs in parallel (issue 7).
#
# "Building 4 independent inner images with --jobs 2 against --jobs 1, in one run."
# The script generates 4 specs (--specs) that share no layer key: each has its own
# machine name (part of every key) and its own packages, made from a different seed.
# Each spec has 3 packages layers (--layers), and each layer installs one package:
# a .tar.gz made from one part of bench/cache_fixture.py's Debian-like base of 6,000
# files (--files; seed = the spec's number), so ~2,000 files and ~12 MB a layer,
# ~36 MB an image; gzip -6 keeps ~65% of it. The install command of every layer
# is
#     sleep S; for p in $LAYERFS_PACKAGES; do tar -C "$LAYERFS_ROOT" -xzf "pkgs/$p.tar.gz"; done
# (the sleep only with --install-seconds S > 0): the untar through the layer's
# layerfs mount is the CPU- and FUSE-bound part of a package manager's work, the
# sleep stands for its waits (downloads, locks, a slow mirror); it uses no CPU.
#
# Then it times `layerfs build SPEC1 .. SPEC4 --jobs 1 --cache EMPTY --json` against
# the same with --jobs 2 (--jobs), R times each (--runs), in alternating order
# (1 2, 2 1, 1 2, ...). Every timed build starts from an empty cache dir and no
# output layouts, which are removed (untimed) after it; `sync` before each. One
# untimed build (--jobs 2) before the runs warms the binary and the package tars
# and gives the reference manifests: every run must give the same 4 manifest
# digests, else the script fails (exit 1) after printing the report.
# It prints medians, every run, CPU times (user+sys of the build and everything it
# ran), the sums of the layers' install and commit seconds from --json, the CPU time
# the rest of the machine used during each build (from /proc/stat: more than ~1 s
# means a disturbed run), and the speed-up (median --jobs 1 / median --jobs 2). It
# measures; it asserts no time.
#
# Everything the builds read and write (package tars, specs, cache, outputs) is on
# a fresh ext4 made per run of the script on a loop device (direct I/O) over a
# zero-filled image in the cache dir (default /var/cache/layerfs-bench/jobs-scratch.img,
# 4 GiB), mounted nodiscard, like bench/mount.sh's (see BENCHMARKS.md, "The disk":
# the root fs of the reference VM is mounted `discard`, where writing into blocks an
# rm -rf just freed is several times slower, so each run would pay for the cleanup
# of the one before). --scratch-fs root measures on the work dir's fs as it is.
#
# Needs: root (the install sandbox, the loop device), go, python3, tar, gzip,
# mkfs.ext4, losetup, flock.
set -euo pipefail
umask 022
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
CMDLINE=$(cmdline "$@")

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/jobs.sh [options]
  -n, --runs N          timed builds of the set per --jobs setting, the median is
                        reported (default 3)
  --jobs N              the parallel setting, measured against --jobs 1 (default 2)
  --specs N             independent specs in the set (default 4)
  --layers N            packages layers per spec, one package each (default 3)
  --files N             files per spec, split over its layers (default 6000: ~36 MB)
  --install-seconds S   a `sleep S` at the start of every layer's install, for a
                        package manager's waits (default 0; decimals allowed)
  --layerfs BIN         use a prebuilt layerfs (default: go build ./cmd/layerfs)
  --cache DIR           where the scratch fs image lives (default /var/cache/layerfs-bench)
  --scratch-fs KIND     loop (default): a fresh ext4 (nodiscard) on a loop device over
                        DIR/jobs-scratch.img; root: the work dir's filesystem as it is
  --image-gb N          size of the scratch image when it is made (default 4)
  -w, --workdir DIR     work dir (default a fresh dir under /var/tmp, removed on exit)
  --wait-quiet S        before each timed build, wait up to S seconds for the CPUs to
                        be <10% busy and I/O pressure <5%; default 0 (no waiting)
  --keep                keep the work dir (binary, JSON results, logs); the scratch
                        fs is unmounted anyway
  -h, --help            this text
EOF
}

RUNS=3 JOBS=2 SPECS=4 LAYERS=3 FILES=6000 SLEEP=0 LFS_BIN='' CACHE=/var/cache/layerfs-bench
SCRATCH_FS=loop IMG_GB=4 WORK='' QUIET=0 KEEP=0
EPOCH=1700000000
while (($#)); do
  case $1 in
    -n|--runs) RUNS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --specs) SPECS=$2; shift 2 ;;
    --layers) LAYERS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --install-seconds) SLEEP=$2; shift 2 ;;
    --layerfs) LFS_BIN=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --scratch-fs) SCRATCH_FS=$2; shift 2 ;;
    --image-gb) IMG_GB=$2; shift 2 ;;
    -w|--workdir) WORK=$2; shift 2 ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
for v in RUNS:runs JOBS:jobs SPECS:specs LAYERS:layers FILES:files IMG_GB:image-gb QUIET:wait-quiet; do
  n=${v%%:*}
  [[ ${!n} =~ ^[0-9]+$ ]] || usage_error "--${v#*:} wants a number"
done
[[ $SLEEP =~ ^[0-9]+(\.[0-9]+)?$ ]] || usage_error "--install-seconds wants a number of seconds"
((RUNS >= 1)) || usage_error "--runs wants at least 1"
((JOBS >= 2)) || usage_error "--jobs wants at least 2 (it is measured against --jobs 1)"
((SPECS >= 2)) || usage_error "--specs wants at least 2"
((LAYERS >= 1 && LAYERS <= 9)) || usage_error "--layers wants 1 to 9"
((FILES >= 100 * LAYERS)) || usage_error "--files wants at least 100 per layer"
[[ $SCRATCH_FS == loop || $SCRATCH_FS == root ]] || usage_error "--scratch-fs wants loop or root"

((EUID == 0)) || die "needs root (the install sandbox, the loop device)"
for t in go python3 tar gzip flock sync; do command -v $t >/dev/null || die "$t not found"; done
if [[ $SCRATCH_FS == loop ]]; then
  for t in mkfs.ext4 losetup mount umount; do command -v $t >/dev/null || die "$t not found"; done
fi

mkdir -p "$CACHE"; CACHE=$(cd "$CACHE" && pwd)
exec 9>"$CACHE/jobs-bench.lock"
flock -n 9 || die "another bench/jobs.sh holds $CACHE/jobs-bench.lock"
make_work /var/tmp/layerfs-jobs-bench.XXXXXX

# ---------------------------------------------------------------- mounts and cleanup

LFS=$WORK/bin/layerfs
LOOPDEV=
SCR=$WORK/scratch
RUN=$WORK/run     # start/stop's files, the builds' JSON and stderr
mkdir -p "$WORK/bin" "$RUN"

# shellcheck disable=SC2317  # called by the trap
cleanup() {
  umount_under "$SCR"
  scratch_loop_release
  if ((KEEP)); then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- layerfs

get_layerfs "$LFS" "$LFS_BIN"
[[ $("$LFS" build --help 2>&1) == *--jobs* ]] || die "layerfs build has no --jobs"

# ---------------------------------------------------------------- the scratch fs

mkdir -p "$SCR"
if [[ $SCRATCH_FS == loop ]]; then
  IMG=$CACHE/jobs-scratch.img
  scratch_loop "$IMG" "$IMG_GB" "$SCR"
fi

# ---------------------------------------------------------------- the fixture

# $FIX holds the specs, pkgs/ (the package tars) and out/ (the builds' layouts);
# paths in the specs are relative to it, so no host path enters a key.
FIX=$SCR/specs
LC=$SCR/cache          # the layer cache of one build, empty before each
mkdir -p "$FIX/pkgs"
STAMP="$FILES-files-$LAYERS-layers"
layer_name() { if ((LAYERS == 3)); then local n=(base libs apps); echo "${n[$1 - 1]}"; else echo "l$1"; fi; }
# shellcheck disable=SC2016  # expanded by the install's shell, not here
INSTALL='for p in $LAYERFS_PACKAGES; do tar -C "$LAYERFS_ROOT" -xzf "pkgs/$p.tar.gz"; done'
[[ $SLEEP != 0 ]] && INSTALL="sleep $SLEEP; $INSTALL"
SPEC_FILES=()
declare -A PFILES PBYTES PGZ   # per spec: regular files, their bytes, the tars' bytes
log "fixture: $SPECS specs of $LAYERS packages layers, $FILES files each (bench/cache_fixture.py parts, seeds 1-$SPECS)"
for ((i = 1; i <= SPECS; i++)); do
  g=$SCR/gen/s$i
  python3 "$BENCH/cache_fixture.py" parts "$g" --files "$FILES" --parts "$LAYERS" --seed "$i" 2>/dev/null ||
    die "bench/cache_fixture.py parts (seed $i) failed"
  read -r f _ _ _ b < <(python3 "$BENCH/fixture.py" stats "$g")
  PFILES[$i]=$f PBYTES[$i]=$b PGZ[$i]=0
  versions='' layers=''
  for ((k = 1; k <= LAYERS; k++)); do
    p=s$i-p$k
    tar -C "$g/p$k" --sort=name --numeric-owner -cf - . | gzip -n -6 >"$FIX/pkgs/$p.tar.gz"
    PGZ[$i]=$((PGZ[$i] + $(stat -c %s "$FIX/pkgs/$p.tar.gz")))
    versions+="${versions:+, }$p: \"$STAMP\""
    layers+="  - {name: $(layer_name "$k"), type: packages, packages: [$p]}"$'\n'
  done
  rm -rf "$g"
  cat >"$FIX/spec$i.yaml" <<EOF
# bench/jobs.sh: spec $i of $SPECS, independent of the others (own machine, own packages)
image: oci:out/img$i:bench
machine: layerfs-jobs-bench-$i
arch: amd64
install: '$INSTALL'
versions: {$versions}
layers:
$layers
EOF
  SPEC_FILES+=("$FIX/spec$i.yaml")
done
rm -rf "$SCR/gen"
sync

# ---------------------------------------------------------------- the builds

# shellcheck disable=SC2034  # read by lib.sh
DIV_PLACES=2
# shellcheck disable=SC2034  # read by lib.sh
WAIT_IO=1

# busy CPU ticks of the whole machine so far (user nice system irq softirq steal)
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
HZ=$(getconf CLK_TCK)
# build_set JOBS OUT: one timed build of the set into an empty cache; prints
# "WALL CPU OTHER": OTHER is the CPU time the rest of the machine used meanwhile
# (busy time from /proc/stat minus the build's own); the --json result in OUT,
# stderr in OUT.err
build_set() {
  local rc=0 b0 b1 wall cpu
  b0=$(busy_ticks)
  start
  SOURCE_DATE_EPOCH=$EPOCH "$LFS" build "${SPEC_FILES[@]}" --jobs "$1" --cache "$LC" --quiet --json >"$2" 2>"$2.err" || rc=$?
  b1=$(busy_ticks)
  stop >"$RUN/wallcpu"   # not in $(...): `times` must run in this shell
  read -r wall cpu <"$RUN/wallcpu"
  echo "$wall $cpu $(awk -v a="$b0" -v b="$b1" -v hz="$HZ" -v c="$cpu" 'BEGIN {o = (b - a) / hz - c; printf "%.1f", o < 0 ? 0 : o}')"
  return $rc
}
# summary JSON: "MISSES HITS INSTALL-S COMMIT-S MANIFEST..." (manifests in spec
# order), or "ERROR ..." when a spec failed
summary() {
  python3 - "$1" <<'EOF'
import json, sys
rs = json.load(open(sys.argv[1]))
errs = [f"{r['spec']}: {r['error']}" for r in rs if r.get("error") or not r.get("result")]
if errs:
    print("ERROR " + " | ".join(e.replace("\n", " ") for e in errs))
    sys.exit(0)
ls = [l for r in rs for l in r["result"]["layers"]]
print(sum(r["result"]["misses"] for r in rs), sum(r["result"]["hits"] for r in rs),
      "%.3f" % sum(l["install_seconds"] for l in ls), "%.3f" % sum(l["commit_seconds"] for l in ls),
      " ".join(r["result"]["manifest"] for r in rs))
EOF
}
fresh() { umount_under "$SCR"; rm -rf "$LC" "$FIX/out"; sync; }

declare -A R       # R[j1], R[jN]: wall seconds of each run; C[...]: CPU seconds
declare -A C O INS COM
ROWS=()            # the every-run table
WANT=$((SPECS * LAYERS))
REF='' MISMATCH=()
# one JOBS LABEL RUN ORDER: a timed build with --jobs JOBS, recorded under LABEL
one() {
  local j=$1 key=$2 out=$RUN/$2-$3.json r s miss hit ins com man wall cpu other
  ((QUIET)) && wait_quiet "$QUIET"
  fresh
  r=$(build_set "$j" "$out") || { cat "$out.err" >&2; die "layerfs build --jobs $j failed (run $3)"; }
  s=$(summary "$out")
  [[ $s != ERROR* ]] || die "layerfs build --jobs $j, run $3: ${s#ERROR }"
  read -r miss hit ins com man <<<"$s"
  ((miss == WANT && hit == 0)) || warn "--jobs $j, run $3: $miss misses and $hit hits, want $WANT and 0 (the cache was not empty?)"
  [[ $man == "$REF" ]] || MISMATCH+=("--jobs $j, run $3: $man")
  read -r wall cpu other <<<"$r"
  R[$key]+="$wall " C[$key]+="$cpu " O[$key]+="$other " INS[$key]+="$ins " COM[$key]+="$com "
  ROWS+=("$3|$4|--jobs $j|$wall|$cpu|$other|$ins|$com")
  fresh
}

last_of() { local a; read -ra a <<<"$1"; echo "${a[-1]}"; }

log "warm-up: one untimed build of the set with --jobs $JOBS"
fresh
build_set "$JOBS" "$RUN/warmup.json" >/dev/null || { cat "$RUN/warmup.json.err" >&2; die "the warm-up build failed"; }
s=$(summary "$RUN/warmup.json")
[[ $s != ERROR* ]] || die "warm-up build: ${s#ERROR }"
read -r _ _ _ _ REF <<<"$s"
read -ra REF_LIST <<<"$REF"
((${#REF_LIST[@]} == SPECS)) || die "warm-up build: ${#REF_LIST[@]} manifests, want $SPECS"
# the sizes of the images the set makes (compressed layer blobs), from the warm-up
IMG_GZ=$(python3 - "$FIX/out" "$SPECS" <<'EOF'
import json, os, sys
total = 0
for i in range(1, int(sys.argv[2]) + 1):
    lay = os.path.join(sys.argv[1], f"img{i}")
    def blob(d):
        return os.path.join(lay, "blobs", *d.split(":"))
    idx = json.load(open(os.path.join(lay, "index.json")))
    m = json.load(open(blob(idx["manifests"][0]["digest"])))
    total += sum(l["size"] for l in m["layers"])
print(total)
EOF
)
fresh

((QUIET)) && wait_quiet "$QUIET"
BUSY0=$(cpu_busy) IO0=$(io_pressure)
T_START=$SECONDS
for ((run = 1; run <= RUNS; run++)); do
  if ((run % 2)); then order=(1 "$JOBS"); else order=("$JOBS" 1); fi
  for k in 0 1; do one "${order[k]}" "j${order[k]}" "$run" "$((k + 1)) of 2"; done
  log "run $run/$RUNS ($([[ ${order[0]} == 1 ]] && echo "--jobs 1 first" || echo "--jobs $JOBS first")): --jobs 1 $(last j1) s, --jobs $JOBS $(last "j$JOBS") s; others' CPU meanwhile $(last_of "${O[j1]}") / $(last_of "${O[j$JOBS]}") s"
done
T_RUNS=$((SECONDS - T_START))
BUSY1=$(cpu_busy) IO1=$(io_pressure)

# ---------------------------------------------------------------- report

num() { printf "%'d" "$1"; }
# shellcheck disable=SC2086  # space-separated numbers, split on purpose
cmed() { median ${C[$1]}; }
# shellcheck disable=SC2086
imed() { median ${INS[$1]}; }
# shellcheck disable=SC2086
kmed() { median ${COM[$1]}; }
# shellcheck disable=SC2086
omed() { median ${O[$1]}; }
JN=j$JOBS
tf=0 tb=0 tg=0
for ((i = 1; i <= SPECS; i++)); do tf=$((tf + PFILES[$i])) tb=$((tb + PBYTES[$i])) tg=$((tg + PGZ[$i])); done

echo
echo "== layerfs build of $SPECS independent specs: --jobs $JOBS vs --jobs 1 (issue 7) =="
echo "command : $CMDLINE"
echo "date    : $(date -u +%Y-%m-%dT%H:%M:%SZ)   layerfs: $LFS_REV"
echo "host    : $(machine), $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release), $(go version | awk '{print $3}'), $(tar --version | head -1)"
if [[ $SCRATCH_FS == loop ]]; then
  echo "disk    : package tars, specs, cache and outputs on a fresh ext4 (nodiscard) on $LOOPDEV (direct I/O) over $IMG, on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$CACHE" | cut -c1-60)"
else
  echo "disk    : everything on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$SCR" | cut -c1-60)"
fi
echo "set     : $SPECS specs, no key shared (machine layerfs-jobs-bench-1..$SPECS, own packages), $LAYERS packages layers each, one package a layer"
echo "packages: bench/cache_fixture.py parts --files $FILES --parts $LAYERS --seed 1..$SPECS, each part a tar.gz (gzip -6):"
for ((i = 1; i <= SPECS; i++)); do
  echo "  spec$i: $(num "${PFILES[$i]}") files, $(mb "${PBYTES[$i]}") ($(mb "${PGZ[$i]}") of .tar.gz)"
done
echo "  in all: $(num "$tf") files, $(mb "$tb"); the $SPECS images hold $(mb "$IMG_GZ") of gzip layers"
echo "install : $INSTALL"
echo "          ($([[ $SLEEP == 0 ]] && echo "no waits: --install-seconds 0" || echo "sleep $SLEEP per layer stands for a package manager's waits (no CPU): $(awk -v s="$SLEEP" -v n="$WANT" 'BEGIN {printf "%g", s * n}') s in all"))"
echo "runs    : $RUNS timed builds of the set per setting, order alternating (1 $JOBS, $JOBS 1, ...), each from an empty cache into new layouts, sync before; SOURCE_DATE_EPOCH=$EPOCH; one untimed warm-up (--jobs $JOBS); $T_RUNS s in all"
echo "load    : CPUs ${BUSY0}% busy just before the runs, ${BUSY1}% just after; I/O pressure ${IO0}% / ${IO1}%"
echo "manifest: $( ((${#MISMATCH[@]})) && echo "DIFFER between runs (see below); the warm-up's:" || echo "the same $SPECS in every run and the warm-up, --jobs 1 and --jobs $JOBS:")"
for ((i = 1; i <= SPECS; i++)); do echo "  spec$i ${REF_LIST[i - 1]}"; done
echo
row "layerfs build of $SPECS specs" "median s" "runs (s)" "median CPU s" "CPU runs (s)" "layer installs, sum s" "layer commits, sum s" "others' CPU s" "speed-up"
row "---" "---:" "---" "---:" "---" "---:" "---:" "---:" "---:"
row "--jobs 1" "$(med j1)" "${R[j1]% }" "$(cmed j1)" "${C[j1]% }" "$(imed j1)" "$(kmed j1)" "$(omed j1)" "1.00x"
row "--jobs $JOBS" "$(med "$JN")" "${R[$JN]% }" "$(cmed "$JN")" "${C[$JN]% }" "$(imed "$JN")" "$(kmed "$JN")" "$(omed "$JN")" "$(div "$(med j1)" "$(med "$JN")")x"
echo
echo "speed-up (median --jobs 1 / median --jobs $JOBS): $(div "$(med j1)" "$(med "$JN")")x; CPUs used on average: --jobs 1 $(div "$(cmed j1)" "$(med j1)"), --jobs $JOBS $(div "$(cmed "$JN")" "$(med "$JN")") (of $(nproc))"
echo "(medians; the layer sums add up install_seconds and commit_seconds of --json over the $WANT layers, which overlap in"
echo "time with --jobs $JOBS; others' CPU: the machine's busy CPU time during the build (/proc/stat) minus the build's"
echo "own, so more than ~1 s means other work ran alongside and the run is disturbed)"
echo
echo "every run:"
echo
row run order setting "wall s" "CPU s" "others' CPU s" "layer installs, sum s" "layer commits, sum s"
row "---:" "---" "---" "---:" "---:" "---:" "---:" "---:"
for x in "${ROWS[@]}"; do IFS='|' read -ra f <<<"$x"; row "${f[@]}"; done

if ((${#WARNINGS[@]})); then
  echo
  echo "warnings:"
  for w in "${WARNINGS[@]}"; do echo "  $w"; done
fi
if ((${#MISMATCH[@]})); then
  echo
  echo "MANIFESTS DIFFER from the warm-up's:"
  for m in "${MISMATCH[@]}"; do echo "  $m"; done
  exit 1
fi
exit 0
