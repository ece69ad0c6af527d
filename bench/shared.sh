#!/usr/bin/env bash
# bench/shared.sh: the shared cache tier benchmark of issue 6.
#
# "On host B, in one run, compare a cold build against a build with every layer a
# remote hit. Report bytes transferred against the layers' sizes."
#
# Two hosts are two layer caches on this machine, sharing one registry: Debian's
# docker-registry, started by the script on 127.0.0.1 (a free port, plain HTTP,
# storage in the scratch fs, stopped on exit). The spec has three packages layers
# installed by a fake package manager (pkg-install, written by the script), whose
# packages are .tar.gz made by the script from bench/fixture.py's Debian-like
# package stream (seed 1; ~45% text, gzip -6 takes a layer to ~60%):
#   base   core1..core4   4 x 10 MB  (~6,000 files)
#   libs   libs1, libs2   2 x 10 MB  (~3,300 files)
#   app    app1           1 x  5 MB  (~1,000 files)
# (--scale multiplies the bytes, and so the file counts). Installing a package is
# `tar -xzf PKG.tar.gz` into the layer's layerfs mount, a line in the package
# database (/var/lib/benchpkg), and, with --install-seconds S, a `sleep S` per
# package (7 packages) standing in for what a real package manager does beyond
# unpacking (maintainer scripts, triggers, dependency resolution).
#
#  host A  cold build with --cache A --cache-to docker://127.0.0.1:PORT/layerfs/cache:
#          fills the registry; timed once ("cold + push") and reported apart;
#          what it uploaded is compared with the layer sizes.
#  host B  with an empty cache B and a new output layout each time, in R rounds
#          (order alternating: cold first in odd rounds, remote-hit first in even):
#            cold        no shared tier: what a host without the tier does
#            remote hit  --cache-from docker://127.0.0.1:PORT/layerfs/cache
#                        --insecure: every layer is pulled from the registry,
#                        checked and unpacked into cache B
#            floor       curl of the 3 layer blobs from the registry to files,
#                        then `tar -xzf` of each into an empty dir: the least a
#                        remote hit can do without pipelining (not layerfs)
#          medians, every run, the ratios cold / remote hit and remote hit / floor.
# Each remote-hit build must give the manifest of the cold builds (and of host A's
# build) and report remote_hits == 3; else the script fails. Bytes: per layer, the
# compressed blob size (--json `size`), what the remote-hit build downloaded and
# host A uploaded (--json `downloaded`, `uploaded`), the overhead over the sizes
# in bytes and %, and the registry's own count (the response bytes of its access
# log during the remote-hit builds).
# Where a remote-hit build's time goes: its stderr lines are timestamped as they
# arrive, and the time between one layer's "OCI Cache HIT (remote)" line and the
# next (from the build's start for the first) is that layer's lookup, download,
# check, unpack and cache insert; after the last one, the image write. The
# registry's CPU time per build is read from /proc.
#
# Everything the builds write (caches, outputs, the registry's storage, the
# packages) lives on a fresh ext4 per run, made on a loop device (direct I/O) over
# a zero-filled image in the cache dir and mounted nodiscard: the root fs of the
# reference VM is mounted `discard`, where the first write into just-freed blocks is
# several times slower (BENCHMARKS.md, "The disk"), so each build would pay for the
# rm -rf of the cache before it. --scratch-fs root measures on the root fs as it is.
#
# Needs: root (the build sandbox, mounts), go, python3, docker-registry
# (apt-get install -y docker-registry), curl, tar, gzip, mkfs.ext4, losetup, flock.
set -euo pipefail
umask 022
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
CMDLINE=$(cmdline "$@")

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/shared.sh [options]
  -n, --runs N          rounds of host B's builds (cold, remote hit, floor), the
                        median is reported (default 3)
  --scale X             multiply the packages' bytes (and file counts) by X
                        (default 1: layers of ~40, ~20 and ~5 MB of files)
  --install-seconds S   a `sleep S` after each package's unpack, to model a package
                        manager's other work (7 packages; default 0)
  --layerfs BIN         use a prebuilt layerfs (default: go build ./cmd/layerfs)
  --cache DIR           where the scratch fs image is kept (default
                        /var/cache/layerfs-bench)
  --scratch-fs KIND     loop (default): a fresh ext4 (mkfs per run, nodiscard) on a
                        loop device over a zero-filled image in the cache dir;
                        root: the work dir on the root fs as it is
  -w, --workdir DIR     work dir (default a fresh dir under /var/tmp, removed on exit)
  --wait-quiet S        before each round, wait up to S seconds for the CPUs to be
                        <10% busy and I/O pressure <5%; default 0 (no waiting)
  --keep                keep the work dir (binary, logs, JSON results, the registry)
  -h, --help            this text
EOF
}

RUNS=3 SCALE=1 INSTALL_S=0 LFS_BIN='' CACHE=/var/cache/layerfs-bench SCRATCH_FS=loop
WORK='' QUIET=0 KEEP=0 SEED=1 EPOCH=1700000000
while (($#)); do
  case $1 in
    -n|--runs) RUNS=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --install-seconds) INSTALL_S=$2; shift 2 ;;
    --layerfs) LFS_BIN=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --scratch-fs) SCRATCH_FS=$2; shift 2 ;;
    -w|--workdir) WORK=$2; KEEP=1; shift 2 ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || usage_error "--runs wants a positive number"
if ! [[ $SCALE =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v s="$SCALE" 'BEGIN {exit !(s > 0 && s <= 100)}'; then
  usage_error "--scale wants a number above 0 (up to 100)"
fi
[[ $INSTALL_S =~ ^[0-9]*\.?[0-9]+$ ]] || usage_error "--install-seconds wants a number of seconds"
[[ $QUIET =~ ^[0-9]+$ ]] || usage_error "--wait-quiet wants a number"
[[ $SCRATCH_FS == loop || $SCRATCH_FS == root ]] || usage_error "--scratch-fs wants loop or root"

((EUID == 0)) || die "needs root (the build sandbox, layerfs mounts, the scratch fs)"
for t in go python3 curl tar gzip sleep; do command -v $t >/dev/null || die "$t not found"; done
command -v docker-registry >/dev/null || die "docker-registry not found (apt-get install -y docker-registry)"
if [[ $SCRATCH_FS == loop ]]; then
  for t in mkfs.ext4 losetup flock mount umount; do command -v $t >/dev/null || die "$t not found"; done
fi
[[ -f $BENCH/fixture.py ]] || die "bench/fixture.py makes the packages; it is missing"

mkdir -p "$CACHE"; CACHE=$(cd "$CACHE" && pwd)
make_work /var/tmp/layerfs-shared-bench.XXXXXX
RUN=$WORK/run    # start/stop's files
mkdir -p "$RUN" "$WORK/bin" "$WORK/json"

# ---------------------------------------------------------------- cleanup

LFS=$WORK/bin/layerfs
SCR=$WORK/scratch   # what the builds write
LOOPDEV=
REGISTRY_PID=
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  local p
  if [[ -n $REGISTRY_PID ]]; then
    kill "$REGISTRY_PID" 2>/dev/null || true
    wait "$REGISTRY_PID" 2>/dev/null || true
  fi
  # a build killed with the script may have left its mounts below the scratch dir
  while read -r p; do
    if [[ -x $LFS ]]; then "$LFS" umount "$p" 2>/dev/null && continue; fi
    umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true
  done < <(awk -v w="$SCR/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r)
  if mountpoint -q "$SCR" 2>/dev/null; then
    if ((KEEP)); then
      log "the scratch fs stays mounted on $SCR (--keep); umount it and losetup -d $LOOPDEV when done"
      LOOPDEV=
    else
      umount "$SCR" 2>/dev/null || umount -l "$SCR" 2>/dev/null || true
    fi
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
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# json_get FILE EXPR: a field of a `layerfs build --json` result (python expression over r)
json_get() { python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }
num() { printf "%'d" "$1"; }
# pct PART WHOLE: PART as a % of WHOLE, 2 decimals
pct() { awk -v a="$1" -v b="$2" 'BEGIN {if (b <= 0) print "-"; else printf "%.2f%%", 100 * a / b}'; }
sub_() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a - b}'; }
# registry_cpu: user+sys seconds the registry process has used so far
registry_cpu() { awk -v hz="$(getconf CLK_TCK)" '{sub(/^.*\) /, ""); printf "%.3f\n", ($12 + $13) / hz}' "/proc/$REGISTRY_PID/stat"; }
# registry_bytes FROM: response bytes of the GET requests the registry logged from
# line FROM of its log on (combined log format: ... "GET /v2/... HTTP/1.1" 200 BYTES ...)
registry_bytes() {
  tail -n +"$1" "$WORK/registry.log" |
    awk '{for (i = 1; i < NF; i++) if ($i ~ /^"(GET|HEAD|PUT|POST|PATCH)$/) {m = substr($i, 2); b = $(i + 4); if (m == "GET" && b ~ /^[0-9]+$/) s += b; n[m]++; break}}
      END {printf "%d", s; for (k in n) printf " %s=%d", k, n[k]; print ""}'
}
registry_lines() { wc -l <"$WORK/registry.log"; }
# stamp FILE: copy stdin to FILE, each line prefixed with the time it arrived
stamp() { local l; while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done >"$1"; }

# R[cold|remote|floor|...] = space-separated seconds of each run (med/last in lib.sh)
declare -A R

# ---------------------------------------------------------------- layerfs

get_layerfs "$LFS" "$LFS_BIN"
[[ $("$LFS" build --help 2>&1) == *--cache-from* ]] || die "this layerfs has no build --cache-from (the shared tier)"

# ---------------------------------------------------------------- the scratch fs

mkdir -p "$SCR"
IMG_GB=$(awk -v s="$SCALE" 'BEGIN {g = int(2 + 1.5 * s + 0.999); print (g < 4) ? 4 : g}')
if [[ $SCRATCH_FS == loop ]]; then
  IMG=$CACHE/shared-scratch.img
  exec 9>"$CACHE/shared-bench.lock"
  flock -n 9 || die "another bench/shared.sh holds $CACHE/shared-bench.lock"
  while read -r dev; do losetup -d "${dev%%:*}" 2>/dev/null || true; done < <(losetup -j "$IMG" 2>/dev/null)
  if [[ ! -f $IMG || $(stat -c %s "$IMG") -lt $((IMG_GB << 30)) ]]; then
    log "scratch fs: writing a $IMG_GB GiB zero-filled image $IMG (once)"
    rm -f "$IMG"
    dd if=/dev/zero of="$IMG.tmp" bs=16M count=$((IMG_GB * 64)) conv=fsync status=none
    mv "$IMG.tmp" "$IMG"
  fi
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$IMG" || die "mkfs.ext4 $IMG failed"
  LOOPDEV=$(losetup --find --show --direct-io=on "$IMG") || die "losetup $IMG failed"
  mount -o nodiscard "$LOOPDEV" "$SCR" || die "mount $LOOPDEV on $SCR failed"
fi

# ---------------------------------------------------------------- the packages and the spec

FIX=$SCR/spec   # spec.yaml, pkg-install, packages/
PKGS=(core1 core2 core3 core4 libs1 libs2 app1)
mkdir -p "$FIX/packages" "$FIX/trees"
log "packages: bench/fixture.py's package stream (seed $SEED), $(printf '%s ' "${PKGS[@]}")at scale $SCALE"
python3 - "$BENCH" "$FIX/trees" "$SEED" "$SCALE" "${PKGS[@]}" >"$WORK/packages.txt" <<'EOF'
# Cut fixture.py's package stream into the benchmark's packages by bytes: core*
# and libs* 10 MB of files each, app* 5 MB (times the scale), every path in one
# package only; the first package also gets the top dirs and merged-usr links.
import os, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
import fixture as fx
out, seed, scale, names = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
seen, i = set(), 0
for k, name in enumerate(names):
    budget = (5e6 if name.startswith("app") else 10e6) * scale
    ents, b = [], 0
    while b < budget:
        for e in fx.package(seed, i):
            if e.path in seen:
                continue
            seen.add(e.path)
            ents.append(e)
            if e.kind == "f":
                b += e.size
        i += 1
    fx.write_tree(os.path.join(out, name), seed, ents, top=k == 0)
    print(name, sum(e.kind == "f" for e in ents), sum(e.kind == "l" for e in ents), b)
EOF
for p in "${PKGS[@]}"; do
  tar -C "$FIX/trees/$p" --sort=name --numeric-owner -cf - . | gzip -n -6 >"$FIX/packages/$p.tar.gz"
done
rm -rf "$FIX/trees"
declare -A PFILES PBYTES PGZ
while read -r p nf _ nb; do PFILES[$p]=$nf PBYTES[$p]=$nb PGZ[$p]=$(stat -c %s "$FIX/packages/$p.tar.gz"); done <"$WORK/packages.txt"
STAMP=$(cat "$FIX"/packages/*.tar.gz | md5sum | cut -c1-12)

cat >"$FIX/pkg-install" <<'EOF'
#!/bin/sh
# pkg-install: the benchmark's package manager. Package NAME is packages/NAME.tar.gz;
# installing it unpacks it into $LAYERFS_ROOT (the layerfs mount of the layers below
# plus an empty upper), owners kept, sleeps $INSTALL_SECONDS (the rest of a real
# package manager's work), and records it in /var/lib/benchpkg.
set -eu
db="$LAYERFS_ROOT/var/lib/benchpkg"
mkdir -p "$db"
for p in $LAYERFS_PACKAGES; do
	[ -e "$db/$p" ] && continue
	tar -C "$LAYERFS_ROOT" --numeric-owner -xzf "packages/$p.tar.gz"
	[ "${INSTALL_SECONDS:-0}" = 0 ] || sleep "$INSTALL_SECONDS"
	echo "$p" >"$db/$p"
done
EOF
chmod 755 "$FIX/pkg-install"
# The version carries the packages' checksum, so that other packages make other keys.
vers=$(for p in "${PKGS[@]}"; do printf '%s: "1.0-%s", ' "$p" "$STAMP"; done)
cat >"$FIX/spec.yaml" <<EOF
# bench/shared.sh: three packages layers, installed by pkg-install
image: oci:out:bench
machine: shared-bench
arch: amd64
install: INSTALL_SECONDS=$INSTALL_S ./pkg-install
versions: {${vers%, }}
layers:
  - {name: base, type: packages, packages: [core1, core2, core3, core4]}
  - {name: libs, type: packages, packages: [libs1, libs2]}
  - {name: app,  type: packages, packages: [app1]}
config:
  env: {PATH: /usr/bin:/bin}
EOF
SPEC=$FIX/spec.yaml
export SOURCE_DATE_EPOCH=$EPOCH
LAYER_NAMES=(base libs app)
NLAYERS=${#LAYER_NAMES[@]}

# ---------------------------------------------------------------- the registry

PORT=$(free_port)
mkdir -p "$SCR/registry"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $SCR/registry
http:
  addr: 127.0.0.1:$PORT
  secret: layerfs-bench-secret
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && break
  kill -0 "$REGISTRY_PID" 2>/dev/null || break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 || die "docker-registry did not start (see $WORK/registry.log)"
TIER=docker://127.0.0.1:$PORT/layerfs/cache
log "registry: docker-registry on 127.0.0.1:$PORT (pid $REGISTRY_PID), tier $TIER"

# ---------------------------------------------------------------- the builds

# build NAME KEY [ARGS...]: `layerfs build SPEC --json --quiet` into $SCR/out-NAME with
# the cache $SCR/cache-NAME (both removed first), timed into R[KEY] and R[KEY-cpu];
# the result in $WORK/json/KEY.N.json, stderr stamped in $WORK/json/KEY.N.log, the
# registry's CPU seconds into R[KEY-regcpu] and the log line it started at in REGLINE
build() {
  local name=$1 key=$2 t n rc=0
  shift 2
  rm -rf "$SCR/cache-$name" "$SCR/out-$name"
  n=$(($(wc -w <<<"${R[$key]:-}") + 1))
  J=$WORK/json/$key.$n.json L=$WORK/json/$key.$n.log
  sync
  REGLINE=$(($(registry_lines) + 1))
  local c0; c0=$(registry_cpu)
  BUILD_T0=$EPOCHREALTIME
  start
  # stderr through the stamper (a pipe, so that the stamper is waited for too)
  "$LFS" build "$SPEC" --cache "$SCR/cache-$name" --image "oci:$SCR/out-$name:bench" --quiet --json "$@" 2>&1 >"$J" | stamp "$L" || rc=$?
  stop >"$RUN/t"   # not $(stop): `times` in a subshell does not see the build
  read -r t <"$RUN/t"
  ((rc == 0)) || { sed 's/^[0-9.]* /  /' "$L" >&2; die "layerfs build ($key) failed"; }
  R[$key]+="${t% *} " R[$key-cpu]+="${t#* } "
  R[$key-regcpu]+="$(sub_ "$(registry_cpu)" "$c0") "
}

# host A: cold, pushing every layer to the tier
((QUIET)) && wait_quiet "$QUIET"
log "host A: cold build with --cache-to $TIER"
build a a --cache-to "$TIER" --insecure
AJ=$J
[[ $(json_get "$AJ" 'r["misses"]') == "$NLAYERS" ]] || die "host A: not $NLAYERS misses"
[[ $(json_get "$AJ" 'sum(1 for l in r["layers"] if l.get("pushed"))') == "$NLAYERS" ]] || die "host A: not every layer was pushed"
MANIFEST=$(json_get "$AJ" 'r["manifest"]')
log "host A: $(last a) s, manifest $MANIFEST, uploaded $(json_get "$AJ" 'r["uploaded"]') bytes"
REG_BLOBS=$(find "$SCR/registry" -path '*/blobs/*' -name data -type f -printf '%s\n' | awk '{s += $1; n++} END {printf "%d %d", n, s}')

# the layers' blobs, for the floor and the uncompressed sizes
declare -a LDIGEST LSIZE LUSIZE
for ((i = 0; i < NLAYERS; i++)); do
  LDIGEST[i]=$(json_get "$AJ" "r['layers'][$i]['digest']")
  LSIZE[i]=$(json_get "$AJ" "r['layers'][$i]['size']")
  LUSIZE[i]=$(gzip -dc "$SCR/out-a/blobs/sha256/${LDIGEST[i]#sha256:}" | wc -c)
done

# the floor: curl the blobs from the registry, then tar -xzf each
floor() {
  local d=$SCR/floor i t
  rm -rf "$d"; mkdir -p "$d/blobs" "$d/root"
  sync
  start
  for ((i = 0; i < NLAYERS; i++)); do
    curl -fsS -o "$d/blobs/$i" "http://127.0.0.1:$PORT/v2/layerfs/cache/blobs/${LDIGEST[i]}" || die "floor: curl of ${LDIGEST[i]} failed"
  done
  stop >"$RUN/t"; read -r t <"$RUN/t"
  start
  for ((i = 0; i < NLAYERS; i++)); do
    tar -C "$d/root" --numeric-owner -xzf "$d/blobs/$i" || die "floor: tar -xzf of layer $i failed"
  done
  local u
  stop >"$RUN/t"; read -r u <"$RUN/t"
  R[floor-dl]+="${t% *} " R[floor-untar]+="${u% *} "
  R[floor]+="$(awk -v a="${t% *}" -v b="${u% *}" 'BEGIN {printf "%.3f", a + b}') "
  R[floor-cpu]+="$(awk -v a="${t#* }" -v b="${u#* }" 'BEGIN {printf "%.3f", a + b}') "
  rm -rf "$d"
}

declare -A PL   # per-layer figures of each run: PL[what/i] = space-separated values
REG_GET_BYTES=() REG_REQS=()
cold_b() {
  build b cold
  [[ $(json_get "$J" 'r["misses"]') == "$NLAYERS" ]] || die "host B, cold: not $NLAYERS misses ($J)"
  [[ $(json_get "$J" 'r["manifest"]') == "$MANIFEST" ]] || die "host B, cold: manifest $(json_get "$J" 'r["manifest"]'), host A's was $MANIFEST"
  [[ $(json_get "$J" 'r["downloaded"] + r["uploaded"]') == 0 ]] || die "host B, cold: moved bytes without a tier"
  for ((i = 0; i < NLAYERS; i++)); do
    PL[install/$i]+="$(json_get "$J" "r['layers'][$i]['install_seconds']") "
    PL[commit/$i]+="$(json_get "$J" "r['layers'][$i]['commit_seconds']") "
  done
  [[ $(registry_lines) -lt $REGLINE ]] || warn "host B, cold: the registry logged requests during a build without a tier"
}
remote_b() {
  local i prev s line g
  build b remote --cache-from "$TIER" --insecure
  [[ $(json_get "$J" 'r["remote_hits"]') == "$NLAYERS" ]] || die "host B, remote hit: remote_hits $(json_get "$J" 'r["remote_hits"]'), want $NLAYERS ($J)"
  [[ $(json_get "$J" 'r["manifest"]') == "$MANIFEST" ]] || die "host B, remote hit: manifest $(json_get "$J" 'r["manifest"]'), host A's was $MANIFEST"
  for ((i = 0; i < NLAYERS; i++)); do
    PL[dl/$i]+="$(json_get "$J" "r['layers'][$i].get('downloaded', 0)") "
    [[ $(json_get "$J" "r['layers'][$i]['size']") == "${LSIZE[i]}" ]] || die "host B, remote hit: layer $i's size differs from host A's"
  done
  R[remote-dl]+="$(json_get "$J" 'r["downloaded"]') "
  sleep 0.3   # the registry's access log lines of the last requests
  read -r g line <<<"$(registry_bytes "$REGLINE")"
  REG_GET_BYTES+=("$g") REG_REQS+=("$line")
  # the stamped HIT (remote) lines: each layer's time, then the image write
  prev=$BUILD_T0 i=0
  while read -r s line; do
    if [[ $line == *"OCI Cache HIT (remote)"* ]]; then
      PL[hit/$i]+="$(sub_ "$s" "$prev") "
      prev=$s i=$((i + 1))
    fi
  done <"$L"
  ((i == NLAYERS)) || warn "host B, remote hit: $i 'HIT (remote)' lines in $L, want $NLAYERS"
  R[remote-tail]+="$(sub_ "$(awk -v t0="$BUILD_T0" -v w="$(last remote)" 'BEGIN {printf "%.6f", t0 + w}')" "$prev") "
}

((QUIET)) && wait_quiet "$QUIET"
BUSY0=$(cpu_busy) IO0=$(io_pressure)
T_START=$SECONDS
for ((run = 1; run <= RUNS; run++)); do
  ((QUIET)) && wait_quiet "$QUIET"
  if ((run % 2)); then cold_b; remote_b; else remote_b; cold_b; fi
  floor
  log "round $run/$RUNS: host B cold $(last cold) s, remote hit $(last remote) s ($(last remote-dl) bytes downloaded), floor $(last floor) s"
done
T_RUNS=$((SECONDS - T_START))
BUSY1=$(cpu_busy) IO1=$(io_pressure)
rm -rf "$SCR/cache-b" "$SCR/out-b"

# ---------------------------------------------------------------- report

sum_of() { local s=0 x; for x in "$@"; do s=$((s + x)); done; echo $s; }
TOTAL_SIZE=$(sum_of "${LSIZE[@]}")
TOTAL_USIZE=$(sum_of "${LUSIZE[@]}")
TOTAL_PBYTES=$(sum_of "${PBYTES[@]}")
TOTAL_PFILES=$(sum_of "${PFILES[@]}")
# shellcheck disable=SC2086
DL=$(median ${R[remote-dl]}); DL=${DL%.*}
UP=$(json_get "$AJ" 'r["uploaded"]')

echo
echo "== layerfs shared cache tier benchmark (issue 6) =="
echo "command : $CMDLINE"
echo "date    : $(date -u +%Y-%m-%dT%H:%M:%SZ)   layerfs: $LFS_REV"
echo "host    : $(machine), $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release)"
echo "tools   : $(go version | awk '{print $3}'), $(docker-registry --version | awk '{print "docker-registry", $3}') on 127.0.0.1:$PORT (plain HTTP, filesystem storage), $(curl --version | head -1 | awk '{print "curl", $2}'), $(tar --version | head -1)"
if [[ $SCRATCH_FS == loop ]]; then
  echo "disk    : caches, outputs, packages and the registry's storage on a fresh ext4 ($(findmnt -no OPTIONS -T "$SCR" | cut -c1-40)) on $LOOPDEV (direct I/O) over $IMG, on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$CACHE" | cut -c1-60)"
else
  echo "disk    : caches, outputs, packages and the registry's storage in $SCR, on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$SCR" | cut -c1-60)"
fi
echo "caches  : warm (page cache not dropped; host A's build read the packages and wrote the registry's blobs); sync before each timed run; SOURCE_DATE_EPOCH=$EPOCH"
echo "runs    : $RUNS rounds on host B (cold and remote hit alternating which goes first, then the floor), empty cache B and new output each build, median reported; took $T_RUNS s"
echo "load    : CPUs ${BUSY0}% busy just before the rounds, ${BUSY1}% just after; I/O pressure ${IO0}% / ${IO1}%"
echo
echo "spec    : 3 packages layers; install: INSTALL_SECONDS=$INSTALL_S ./pkg-install, which per package runs"
echo "          tar --numeric-owner -xzf packages/NAME.tar.gz into the layer's layerfs mount$(awk -v s="$INSTALL_S" 'BEGIN {if (s > 0) printf ", then sleep %s", s}'),"
echo "          and writes /var/lib/benchpkg/NAME (packages: bench/fixture.py's package stream, seed $SEED, scale $SCALE)"
for l in 0 1 2; do
  case $l in 0) ps=(core1 core2 core3 core4) ;; 1) ps=(libs1 libs2) ;; 2) ps=(app1) ;; esac
  nf=0 nb=0 ng=0
  for p in "${ps[@]}"; do nf=$((nf + PFILES[$p])) nb=$((nb + PBYTES[$p])) ng=$((ng + PGZ[$p])); done
  printf '          %-5s %-24s %6s files, %s of files (%s .tar.gz)\n' "${LAYER_NAMES[l]}" "${ps[*]}" "$(num "$nf")" "$(mb "$nb")" "$(mb "$ng")"
done
echo "manifest: every build's (host A, and each cold and remote-hit build of host B): $MANIFEST"
echo
echo "Host B, medians (s):"
echo
row build "median s" "runs (s)" "median CPU s" "cold / this"
row "---" "---:" "---" "---:" "---:"
row "cold, no shared tier ($NLAYERS misses)" "$(med cold)" "${R[cold]% }" "$(med cold-cpu)" "1.0x"
row "remote hit, --cache-from ($NLAYERS remote hits)" "$(med remote)" "${R[remote]% }" "$(med remote-cpu)" "**$(div "$(med cold)" "$(med remote)")x**"
row "floor: curl the $NLAYERS blobs, then tar -xzf each" "$(med floor)" "${R[floor]% }" "$(med floor-cpu)" "$(div "$(med cold)" "$(med floor)")x"
echo
echo "remote hit / floor: $(div "$(med remote)" "$(med floor)")x (floor: download $(med floor-dl) s, tar -xzf $(med floor-untar) s); registry CPU per remote-hit build $(med remote-regcpu) s"
echo
echo "Per layer (medians, s; a remote hit's time is from the stamped log: the time from the line before to its 'OCI Cache HIT (remote)' line):"
echo
row layer "blob (gzip)" "tar (uncompressed)" "cold: install" "cold: commit" "remote hit: lookup + download + check + unpack" "downloaded" "downloaded - blob"
row "---" "---:" "---:" "---:" "---:" "---:" "---:" "---:"
for ((i = 0; i < NLAYERS; i++)); do
  # shellcheck disable=SC2086
  d=$(median ${PL[dl/$i]}); d=${d%.*}
  # shellcheck disable=SC2086
  row "${LAYER_NAMES[i]}" "$(num "${LSIZE[i]}")" "$(num "${LUSIZE[i]}")" "$(median ${PL[install/$i]})" "$(median ${PL[commit/$i]})" "$(median ${PL[hit/$i]})" "$(num "$d")" "+$(num $((d - LSIZE[i])))"
done
echo
echo "remote-hit build after its last layer (image write, exit): $(med remote-tail) s"
echo
echo "Bytes (the layers' blobs: $(num "$TOTAL_SIZE") bytes gzip, $(num "$TOTAL_USIZE") uncompressed, from $(num "$TOTAL_PFILES") files of $(num "$TOTAL_PBYTES") bytes):"
echo
row "" bytes "layer blobs" "over the blobs" "over, %"
row "---" "---:" "---:" "---:" "---:"
row "host B, remote hit: downloaded (--json, median of $RUNS)" "$(num "$DL")" "$(num "$TOTAL_SIZE")" "+$(num $((DL - TOTAL_SIZE)))" "$(pct $((DL - TOTAL_SIZE)) "$TOTAL_SIZE")"
rg=$(median "${REG_GET_BYTES[@]}"); rg=${rg%.*}
row "host B, remote hit: GET response bytes in the registry's access log" "$(num "$rg")" "$(num "$TOTAL_SIZE")" "+$(num $((rg - TOTAL_SIZE)))" "$(pct $((rg - TOTAL_SIZE)) "$TOTAL_SIZE")"
row "host A, cold + push: uploaded (--json)" "$(num "$UP")" "$(num "$TOTAL_SIZE")" "+$(num $((UP - TOTAL_SIZE)))" "$(pct $((UP - TOTAL_SIZE)) "$TOTAL_SIZE")"
read -r nblobs bblobs <<<"$REG_BLOBS"
row "registry storage after host A: $nblobs blobs" "$(num "$bblobs")" "$(num "$TOTAL_SIZE")" "+$(num $((bblobs - TOTAL_SIZE)))" "$(pct $((bblobs - TOTAL_SIZE)) "$TOTAL_SIZE")"
echo
echo "requests per remote-hit build (registry access log): ${REG_REQS[0]}"
echo "host A, cold + push (--cache-to, once, not in the medians): $(last a) s, CPU $(last a-cpu) s, registry CPU $(last a-regcpu) s; per layer install / commit:$(for ((i = 0; i < NLAYERS; i++)); do printf ' %s %s / %s s;' "${LAYER_NAMES[i]}" "$(json_get "$AJ" "r['layers'][$i]['install_seconds']")" "$(json_get "$AJ" "r['layers'][$i]['commit_seconds']")"; done)"
echo "  uploaded per layer:$(for ((i = 0; i < NLAYERS; i++)); do printf ' %s %s (blob %s);' "${LAYER_NAMES[i]}" "$(num "$(json_get "$AJ" "r['layers'][$i].get('uploaded', 0)")")" "$(num "${LSIZE[i]}")"; done)"

if ((${#WARNINGS[@]})); then
  echo
  echo "warnings:"
  for w in "${WARNINGS[@]}"; do echo "  $w"; done
fi
exit 0
