#!/usr/bin/env bash
# bench/views.sh: the merged-view benchmark of issue 5.
#
# In one run it times, interleaved, the listing of every path (with metadata)
# of a 3-layer image of ~15,000 files, read straight from its layer blobs:
#   1. layerfs ls -l -R oci:LAYOUT:bench > /dev/null
#   2. umoci unpack --image LAYOUT:bench BUNDLE && find BUNDLE/rootfs -ls > /dev/null
#      (the bundle is removed, untimed, after each run), once with BUNDLE in the
#      work dir's file system and once on a tmpfs: the disk's cost (on a `discard`
#      ext4 the first write into blocks just freed is several times slower, see
#      "The disk" in BENCHMARKS.md) is not umoci's
#   3. crane export - - < IMAGE.docker.tar | tar -t > /dev/null: crane reads no OCI
#      layout, only a registry or a docker tarball on stdin (which it first copies
#      to a temp file); the tarball is made once, untimed, by skopeo copy
#   4. crane export 127.0.0.1:PORT/views:bench - | tar -t > /dev/null, from Debian's
#      docker-registry on 127.0.0.1 (pushed once, untimed, by skopeo); skipped
#      when docker-registry is not installed
#   5. for each layer blob: tar -tzf BLOB > /dev/null: GNU tar's decompress and
#      list, without merging anything; a floor for what any of the above can do
# and prints medians, every run, CPU times and ratios against layerfs. It
# measures; it asserts nothing.
#
# The image: bench/cache_fixture.py splits bench/fixture.py's 15,000-file
# Debian-like base (seed 1) into three trees by package; `layerfs commit` makes
# them layers 1, 2 and 3 (each committed over the ones before, so a layer holds
# only its own files plus the directories they need).
# crane is built from the go-containerregistry module (the version of go.mod)
# in a temporary module; `go get` fetches its cobra dependency from the module
# proxy once.
#
# Needs: root (umoci unpack keeps owners), go, python3, umoci, skopeo, tar, gzip;
# docker-registry for row 4.
set -euo pipefail
umask 022
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
CMDLINE=$(cmdline "$@")

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/views.sh [options]
  -n N             timed runs per tool, the median is reported (default 5)
  -w, --workdir D  work in D and keep it; the fixture and crane in D are
                   reused when they match (default: a fresh dir under /tmp,
                   removed on exit)
  --warmup N       untimed warm-up runs per tool (default 1)
  --files N        files of the image (default 15000)
  --no-registry    skip the crane-from-registry row
  --wait-quiet S   before each round of runs, wait up to S seconds for other
                   processes to leave the CPUs idle (<10% busy over 3 s);
                   default 0 (no waiting)
  --keep           keep the temporary work dir
  -h, --help       this text
EOF
}

RUNS=5 WARMUP=1 FILES=15000 REGISTRY=1 KEEP=0 WORK='' QUIET=0 SEED=1 EPOCH=1700000000
while (($#)); do
  case $1 in
    -n) RUNS=$2; shift 2 ;;
    -w|--workdir) WORK=$2; KEEP=1; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --no-registry) REGISTRY=0; shift ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || usage_error "-n wants a positive number"

(( EUID == 0 )) || die "needs root: umoci unpack keeps the image's owners"
for t in go python3 umoci skopeo tar gzip find; do
  command -v $t >/dev/null || die "$t not found (apt-get install -y umoci skopeo)"
done
[[ -f $BENCH/cache_fixture.py && -f $BENCH/fixture.py ]] || die "bench/fixture.py and bench/cache_fixture.py make the fixture; one is missing"
if ((REGISTRY)) && ! command -v docker-registry >/dev/null; then
  log "docker-registry not found (apt-get install -y docker-registry): skipping the registry row"
  REGISTRY=0
fi

make_work /tmp/layerfs-views.XXXXXX
RUN=$WORK/run
mkdir -p "$RUN"

REGISTRY_PID=
cleanup() {
  if [[ -n $REGISTRY_PID ]]; then kill "$REGISTRY_PID" 2>/dev/null || true; wait "$REGISTRY_PID" 2>/dev/null || true; fi
  mountpoint -q "$RUN/tmpfs" 2>/dev/null && umount "$RUN/tmpfs"
  rm -rf "$RUN"
  if ((KEEP)); then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- helpers

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- tools

LAYERFS=$WORK/layerfs
build_layerfs "$LAYERFS"

GGCR=$(cd "$REPO" && go list -m -f '{{.Version}}' github.com/google/go-containerregistry) || die "go-containerregistry is not in go.mod"
CRANE=$WORK/crane-$GGCR
if [[ ! -x $CRANE ]]; then
  log "building crane $GGCR from the go-containerregistry module"
  src=$WORK/crane-src
  rm -rf "$src"; mkdir -p "$src"
  (cd "$src" && go mod init layerfs-bench/crane >/dev/null 2>&1 &&
    go get "github.com/google/go-containerregistry/cmd/crane@$GGCR" >/dev/null 2>&1 &&
    go build -o "$CRANE" github.com/google/go-containerregistry/cmd/crane) || die "building crane failed (it needs its cobra dependency from the module proxy)"
  rm -rf "$src"
fi

# ---------------------------------------------------------------- fixture

STAMP=$( (cat "$BENCH/fixture.py" "$BENCH/cache_fixture.py"; echo "$SEED $FILES $EPOCH") | md5sum | cut -c1-16)
FIX=$WORK/fixture
LAYOUT=$FIX/layout
if [[ -f $FIX/stamp && $(<"$FIX/stamp") == "$STAMP" ]]; then
  log "reusing the fixture in $FIX"
else
  rm -rf "$FIX"; mkdir -p "$FIX"
  log "generating ~$FILES files in 3 parts"
  python3 "$BENCH/cache_fixture.py" parts "$FIX/parts" --files "$FILES" --parts 3 --seed "$SEED" 2>&1 | sed 's/^/# /' >&2
  lowers=() prev=
  for k in 1 2 3; do
    tag=l$k; ((k == 3)) && tag=bench
    SOURCE_DATE_EPOCH=$EPOCH "$LAYERFS" commit --upper "$FIX/parts/p$k" "${lowers[@]}" \
      --image "oci:$LAYOUT:$tag" ${prev:+--base "oci:$LAYOUT:$prev"} >/dev/null
    lowers+=(--lower "$FIX/parts/p$k") prev=$tag
  done
  skopeo copy -q "oci:$LAYOUT:bench" "docker-archive:$FIX/bench.docker.tar:views:bench" >/dev/null
  echo "$STAMP" >"$FIX/stamp"
fi

if ((REGISTRY)); then
  PORT=$(free_port)
  mkdir -p "$WORK/registry"
  cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
EOF
  docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
  REGISTRY_PID=$!
  for _ in $(seq 50); do
    curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 || die "docker-registry did not start (see $WORK/registry.log)"
  skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:bench" "docker://127.0.0.1:$PORT/views:bench" >/dev/null
  REMOTE=127.0.0.1:$PORT/views:bench
fi

# What every tool sees, so that the rows list the same image.
BLOBS=()
while read -r d; do BLOBS+=("$LAYOUT/blobs/sha256/${d#sha256:}"); done < <(
  "$LAYERFS" inspect --json --no-count "oci:$LAYOUT:bench" | python3 -c 'import json, sys; [print(l["digest"]) for l in json.load(sys.stdin)["layers"]]')
paths_layerfs=$("$LAYERFS" ls -R "oci:$LAYOUT:bench" | wc -l)
umoci unpack --image "$LAYOUT:bench" "$RUN/bundle" >/dev/null
paths_umoci=$(find "$RUN/bundle/rootfs" -mindepth 1 | wc -l)
rm -rf "$RUN/bundle"
paths_crane=$("$CRANE" export - - <"$FIX/bench.docker.tar" | tar -t | wc -l)
entries=$(for b in "${BLOBS[@]}"; do tar -tzf "$b"; done | wc -l)
bytes=0
for b in "${BLOBS[@]}"; do bytes=$((bytes + $(stat -c %s "$b"))); done
ubytes=$(for b in "${BLOBS[@]}"; do gzip -dc "$b"; done | wc -c)

# ---------------------------------------------------------------- the runs

run_layerfs() { start; "$LAYERFS" ls -l -R "oci:$LAYOUT:bench" >/dev/null; stop; }
run_umoci() {
  rm -rf "$RUN/bundle"; sync
  start; umoci unpack --image "$LAYOUT:bench" "$RUN/bundle" >/dev/null && find "$RUN/bundle/rootfs" -ls >/dev/null; stop
  rm -rf "$RUN/bundle"
}
run_umoci_tmpfs() {
  rm -rf "$RUN/tmpfs/bundle"
  start; umoci unpack --image "$LAYOUT:bench" "$RUN/tmpfs/bundle" >/dev/null && find "$RUN/tmpfs/bundle/rootfs" -ls >/dev/null; stop
  rm -rf "$RUN/tmpfs/bundle"
}
run_crane() { start; "$CRANE" export - - <"$FIX/bench.docker.tar" | tar -t >/dev/null; stop; }
run_crane_registry() { start; "$CRANE" export "$REMOTE" - | tar -t >/dev/null; stop; }
run_tar() { start; for b in "${BLOBS[@]}"; do tar -tzf "$b" >/dev/null; done; stop; }

mkdir -p "$RUN/tmpfs"
mount -t tmpfs -o size=4g,mode=0755 layerfs-views "$RUN/tmpfs" || die "mount tmpfs on $RUN/tmpfs failed"
TOOLS=(layerfs umoci umoci_tmpfs crane)
((REGISTRY)) && TOOLS+=(crane_registry)
TOOLS+=(tar)
declare -A LABEL=(
  [layerfs]="layerfs ls -l -R"
  [umoci]="umoci unpack + find -ls (bundle on the work dir's fs)"
  [umoci_tmpfs]="umoci unpack + find -ls (bundle on tmpfs)"
  [crane]="crane export (docker tarball) \| tar -t"
  [crane_registry]="crane export (local registry) \| tar -t"
  [tar]="tar -tzf of each layer blob (floor)"
)
declare -A WALL CPU

log "warm-up: $WARMUP run(s) per tool"
for _ in $(seq "$WARMUP"); do for t in "${TOOLS[@]}"; do "run_$t" >/dev/null; done; done
load_before=$(cpu_busy)
for i in $(seq "$RUNS"); do
  ((QUIET > 0)) && wait_quiet "$QUIET"
  for t in "${TOOLS[@]}"; do
    r=$("run_$t")
    WALL[$t]+="${r% *} " CPU[$t]+="${r#* } "
  done
  log "round $i of $RUNS done"
done
load_after=$(cpu_busy)

# ---------------------------------------------------------------- report

git_rev=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=
if [[ -n $(cd "$REPO" && git status --porcelain 2>/dev/null) ]]; then dirty=" + uncommitted changes"; fi
echo "## layerfs ls -l -R vs umoci unpack + find vs crane export | tar -t"
echo
echo "command: $CMDLINE (layerfs at $git_rev$dirty), $(date -u +%Y-%m-%d)"
echo "work dir: $WORK on $(findmnt -no FSTYPE -T "$WORK") ($(findmnt -no OPTIONS -T "$WORK" | grep -o discard || echo nodiscard))"
echo "machine: $(machine)"
echo "tools: $(go version | cut -d' ' -f3), $(umoci --version), crane $GGCR, $(skopeo --version), $(tar --version | head -1)"
echo "CPUs ${load_before}% busy just before the runs, ${load_after}% just after"
echo
echo "image: 3 layers, $(mb "$bytes") gzip ($(mb "$ubytes") uncompressed), $entries tar entries;"
echo "paths listed: layerfs $paths_layerfs, umoci rootfs $paths_umoci, crane export $paths_crane"
echo
echo "| tool | median s | runs (s) | median CPU s | time vs layerfs |"
echo "| --- | ---: | --- | ---: | ---: |"
# shellcheck disable=SC2086 # the runs are one word each
base=$(median ${WALL[layerfs]})
for t in "${TOOLS[@]}"; do
  # shellcheck disable=SC2086
  m=$(median ${WALL[$t]}) c=$(median ${CPU[$t]})
  echo "| ${LABEL[$t]} | $m | ${WALL[$t]% } | $c | $(div "$m" "$base")x |"
done
