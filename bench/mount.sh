#!/usr/bin/env bash
# bench/mount.sh: the mount benchmark of issue 3.
#
# In one run, on native disk, the kernel's overlayfs (kovl), fuse-overlayfs (fovl)
# and `layerfs mount`, it times:
#   untar       tar -xf of a tar of the Go toolchain tree (~16,700 entries, ~245 MB)
#               into an empty dir / a fresh mount over an empty lower
#   stat cold   lstat of every entry (bench/mountwalk.go: one process, fstatat on the
#               parent's fd, never a fork per file) of the extracted tree, held in the
#               lower of a fresh mount, after `echo 3 > /proc/sys/vm/drop_caches`
#   stat warm   the same walk again, in the same mount
#   read cold   read every file to its end, after drop_caches (data from the disk)
#   read warm   the same in a fresh mount, the backing page cache warm (FUSE overhead,
#               not the disk)
#   dpkg        dpkg --root=MNT -i of real .debs (perl, with perl-base upgraded, and
#               hello: 7 packages, ~2,900 paths, maintainer scripts and the ldconfig
#               trigger) into a debootstrap --variant=minbase rootfs: a cp -a copy of
#               it on native, the lower of a fresh mount otherwise
#   debootstrap debootstrap --variant=minbase from a tarball of its .debs (made once
#               with --make-tarball: no network in the timed part) into an empty dir /
#               a fresh mount over an empty lower
#   untar-user  the untar as a normal user (tar --no-same-owner), for the FUSE mounts
#               made by that user (rootless: no passthrough, no default_permissions)
# layerfs is `layerfs mount --driver fuse`: this measures the FUSE path, the kernel's
# overlayfs (kovl) is the reference.
# and then, for the FUSE daemons, the resident memory (VmRSS) after a stat of every
# entry in a mount over 3 lowers holding >= 100,000 entries, and the mount time over
# them. It prints medians of N runs (interleaved), per-run figures, and the ratios
# against the targets of issue 3. It measures; it asserts no time.
#
# Fixtures live in a cache dir (default /var/cache/layerfs-bench) and are made once:
# the corpus tar, its extraction, the 100k-entry lowers, the rootfs (debootstrap from
# the mirror apt is configured with) and the .debs (apt-get download). What the runs
# write goes to a fresh ext4 on a loop device (see --scratch-fs and the comment at
# SCR below for why).
#
# Needs: root, go, python3, tar, fuse-overlayfs, debootstrap, apt-get, dpkg,
# mkfs.ext4, losetup.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/mount.sh [options]
  -n N               timed runs of every measurement, the median is reported (default 3;
                     0 measures only memory and, with --requests, request counts)
  --configs LIST     which mounts, comma-separated (default native,kovl,fovl,layerfs;
                     layerfs is dropped with a note when `layerfs mount` is not there)
  --layerfs BIN      use a prebuilt layerfs (default: go build ./cmd/layerfs)
  --cache DIR        fixture cache (default /var/cache/layerfs-bench)
  -w, --workdir DIR  scratch dir (default a fresh dir under /var/tmp, removed on exit)
  --corpus DIR       tree to tar for the untar/stat/read corpus (default /usr/local/go,
                     else `go env GOROOT`)
  --mirror URL       Debian mirror for debootstrap (default: the one apt is configured with)
  --suite NAME       Debian suite of the rootfs (default: the host's, e.g. bookworm)
  --no-dpkg          skip the dpkg install and debootstrap (and their fixtures)
  --no-rootless      skip the untar as a normal user
  --no-rss           skip the 100,000-entry memory measurement
  --scratch-fs KIND  where the written dirs live (native targets, uppers, workdirs):
                     loop (default): a fresh ext4 (mkfs per run, mounted nodiscard) on a
                       loop device (direct I/O) over an 8 GiB zero-filled image in the
                       cache dir; root: the scratch dir on the root filesystem as it is
  --requests         after the timed runs, count FUSE requests per opcode of one untar
                     and one warm stat per FUSE mount (layerfs --debug, fuse-overlayfs -d)
  --check            exit 3 when a target is missed
  --wait-quiet S     before each round of runs, wait up to S seconds for other
                     processes to leave the CPUs idle (<10% busy over 3 s);
                     default 0 (no waiting)
  --keep             keep the scratch dir
  -h, --help         this text
EOF
}

RUNS=3 CONFIGS=native,kovl,fovl,layerfs LFS_BIN= CACHE=/var/cache/layerfs-bench WORK= KEEP=0
CORPUS= MIRROR= SUITE= DO_DPKG=1 DO_ROOTLESS=1 DO_RSS=1 REQUESTS=0 CHECK=0 QUIET=0 SCRATCH_FS=loop
while (($#)); do
  case $1 in
    -n) RUNS=$2; shift 2 ;;
    --configs) CONFIGS=$2; shift 2 ;;
    --layerfs) LFS_BIN=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    -w|--workdir) WORK=$2; KEEP=1; shift 2 ;;
    --corpus) CORPUS=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --suite) SUITE=$2; shift 2 ;;
    --no-dpkg) DO_DPKG=0; shift ;;
    --no-rootless) DO_ROOTLESS=0; shift ;;
    --no-rss) DO_RSS=0; shift ;;
    --scratch-fs) SCRATCH_FS=$2; shift 2 ;;
    --requests) REQUESTS=1; shift ;;
    --check) CHECK=1; shift ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
[[ $RUNS =~ ^[0-9]+$ ]] || usage_error "-n wants a number"
[[ $SCRATCH_FS == loop || $SCRATCH_FS == root ]] || usage_error "--scratch-fs wants loop or root"

(( EUID == 0 )) || die "needs root (mounts, drop_caches, dpkg --root)"
for t in go python3 tar mount umount; do command -v $t >/dev/null || die "$t not found"; done

IFS=, read -r -a CFGS <<<"$CONFIGS"
for c in "${CFGS[@]}"; do
  case $c in native|kovl|fovl|layerfs) ;; *) die "unknown config $c (native, kovl, fovl, layerfs)" ;; esac
done
has_cfg() { local c; for c in "${CFGS[@]}"; do [[ $c == "$1" ]] && return 0; done; return 1; }
drop_cfg() { local c out=(); for c in "${CFGS[@]}"; do [[ $c == "$1" ]] || out+=("$c"); done; CFGS=("${out[@]}"); }
if has_cfg fovl; then command -v fuse-overlayfs >/dev/null || die "fuse-overlayfs not found (apt-get install fuse-overlayfs)"; fi
if ((DO_DPKG)); then
  for t in debootstrap dpkg apt-get; do command -v $t >/dev/null || die "$t not found (apt-get install debootstrap), or use --no-dpkg"; done
fi

mkdir -p "$CACHE"; CACHE=$(cd "$CACHE" && pwd)
make_work /var/tmp/layerfs-mount-bench.XXXXXX

# ---------------------------------------------------------------- mounts and cleanup

LFS=$WORK/bin/layerfs
WALK=$WORK/bin/mountwalk
MOUNTS=()          # every mount point made, for the exit trap
LOOPDEV=           # the scratch filesystem's loop device
BGPIDS=()          # foreground daemons started by --requests

umount_any() {  # MNT: unmount whatever is there (layerfs, FUSE or kernel), lazily at worst
  local m=$1
  mountpoint -q "$m" 2>/dev/null || return 0
  if [[ -x $LFS ]] && grep -q " $m fuse\.layerfs\| $m fuse layerfs" /proc/self/mounts 2>/dev/null; then
    "$LFS" umount "$m" 2>/dev/null && return 0
  fi
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}
cleanup() {
  local i p
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount_any "${MOUNTS[i]}"; done
  # anything else below WORK (a submount left by a failed dpkg, say)
  while read -r p; do umount -l "$p" 2>/dev/null || true; done < <(awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/self/mounts | sort -r)
  for p in "${BGPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -n $LOOPDEV ]] && losetup -d "$LOOPDEV" 2>/dev/null
  if ((KEEP)); then log "scratch dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# union_mount CFG MNT UPPER WORKDIR LOWER...: a fresh mount, lowers base first
union_mount() {
  local cfg=$1 mnt=$2 up=$3 wd=$4 i
  shift 4
  local lowers=("$@") rev=() args=()
  for ((i = ${#lowers[@]} - 1; i >= 0; i--)); do rev+=("${lowers[i]}"); done
  local ld
  ld=$(IFS=:; echo "${rev[*]}")
  mkdir -p "$mnt" "$up" "$wd"
  MOUNTS+=("$mnt")
  case $cfg in
    kovl) mount -t overlay overlay -o "lowerdir=$ld,upperdir=$up,workdir=$wd,redirect_dir=off,metacopy=off,index=off" "$mnt" ;;
    fovl)
      # (it warns "unknown argument ignored: lazytime" on every mount)
      # dev and suid as the kernel's overlayfs and layerfs mount (debootstrap refuses nodev)
      fuse-overlayfs -o "lowerdir=$ld,upperdir=$up,workdir=$wd,dev,suid" "$mnt" 2>"$WORK/mount.err" ||
        { cat "$WORK/mount.err" >&2; die "fuse-overlayfs mount at $mnt failed"; } ;;
    layerfs)
      for i in "${lowers[@]}"; do args+=(--lower "$i"); done
      "$LFS" mount --driver fuse "${args[@]}" --upper "$up" --workdir "$wd" "$mnt" ;;
    *) die "union_mount: $cfg" ;;
  esac
}
union_umount() {  # CFG MNT
  case $1 in
    layerfs) "$LFS" umount "$2" || die "layerfs umount $2 failed" ;;
    *) umount "$2" || die "umount $2 failed" ;;
  esac
}

# daemon_pid CFG MNT: the pid of the FUSE daemon serving MNT. layerfs: from
# `layerfs mounts --json` (any object naming MNT with a pid field); otherwise the
# process with /dev/fuse open whose command line names MNT.
daemon_pid() {
  python3 - "$1" "$2" "$LFS" <<'EOF'
import json, os, subprocess, sys
cfg, mnt, lfs = sys.argv[1:4]
def find(o):
    if isinstance(o, dict):
        if mnt in [v for v in o.values() if isinstance(v, str)]:
            for k, v in o.items():
                if "pid" in k.lower() and isinstance(v, int) and v > 0:
                    return v
        for v in o.values():
            r = find(v)
            if r: return r
    elif isinstance(o, list):
        for v in o:
            r = find(v)
            if r: return r
    return None
if cfg == "layerfs":
    try:
        out = subprocess.run([lfs, "mounts", "--json"], capture_output=True, text=True, timeout=20).stdout
        p = find(json.loads(out))
        if p and os.path.exists(f"/proc/{p}"):
            print(p); sys.exit(0)
    except Exception:
        pass
m = mnt.encode()
for p in sorted(os.listdir("/proc"), key=lambda s: (len(s), s)):
    if not p.isdigit():
        continue
    try:
        args = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        if not any(a == m or a.endswith(b"=" + m) for a in args):
            continue
        if any(os.readlink(f"/proc/{p}/fd/{f}") == "/dev/fuse" for f in os.listdir(f"/proc/{p}/fd")):
            print(p); sys.exit(0)
    except OSError:
        continue
sys.exit(1)
EOF
}
TICK=$(getconf CLK_TCK)
proc_cpu() { awk -v t="$TICK" '{sub(/.*\) /, ""); printf "%.3f\n", ($12 + $13) / t}' "/proc/$1/stat"; }
proc_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# ---------------------------------------------------------------- helpers

# shellcheck disable=SC2034  # read by lib.sh
WAIT_IO=1   # wait_quiet: also for I/O pressure <5%
sub_() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a - b}'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# results: R[op/cfg] = space-separated seconds of each run; D[op/cfg] the daemon's
# CPU seconds (user+sys) during each run
declare -A R D
# timed OP CFG PID CMD...: run CMD, append its wall time (and the daemon's CPU time
# when PID is not -) to R and D; the command's stdout goes to $WORK/out
timed() {
  local op=$1 cfg=$2 pid=$3 c0= c1 t0 t1 rc=0
  shift 3
  [[ $pid != - ]] && c0=$(proc_cpu "$pid")
  t0=$EPOCHREALTIME
  "$@" >"$WORK/out" || rc=$?
  t1=$EPOCHREALTIME
  R[$op/$cfg]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}') "
  if [[ -n $c0 ]]; then
    c1=$(proc_cpu "$pid")
    D[$op/$cfg]+="$(sub_ "$c1" "$c0") "
  fi
  return $rc
}

# ---------------------------------------------------------------- layerfs

mkdir -p "$WORK/bin"
(cd "$REPO" && go build -o "$WALK" bench/mountwalk.go) || die "build bench/mountwalk.go failed"
LFS_REV=-
if has_cfg layerfs || ((DO_RSS)); then
  get_layerfs "$LFS" "$LFS_BIN" "or --configs without layerfs"
  if ! "$LFS" mount --help >/dev/null 2>&1; then
    warn "layerfs at $LFS_REV has no working 'mount' verb yet: its rows are skipped"
    drop_cfg layerfs
    rm -f "$LFS"
  fi
fi
((${#CFGS[@]})) || die "no configuration left to measure"
FUSE_CFGS=()
for c in "${CFGS[@]}"; do [[ $c == fovl || $c == layerfs ]] && FUSE_CFGS+=("$c"); done

# The rootless runs: a normal user mounts (through fusermount3) and untars. /dev/fuse
# is made 0666, as a distribution's udev leaves it.
BENCH_USER=layerfs-bench
if ((DO_ROOTLESS)) && ((${#FUSE_CFGS[@]})); then
  for t in runuser fusermount3; do command -v $t >/dev/null || die "$t not found (apt-get install fuse3 util-linux), or use --no-rootless"; done
  id "$BENCH_USER" >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh "$BENCH_USER" || die "useradd $BENCH_USER failed"
  chmod 0666 /dev/fuse
  chmod 0711 "$WORK"; chmod 0755 "$WORK/bin"
else
  DO_ROOTLESS=0
fi
as_user() { runuser -u "$BENCH_USER" -- "$@"; }

# ---------------------------------------------------------------- fixtures (cached)

if [[ -z $CORPUS ]]; then
  if [[ -d /usr/local/go ]]; then CORPUS=/usr/local/go; else CORPUS=$(go env GOROOT); fi
fi
CORPUS=$(cd "$CORPUS" && pwd)
CKEY=$(basename "$CORPUS")-$( (head -1 "$CORPUS/VERSION" 2>/dev/null || echo x; echo "$CORPUS") | md5sum | cut -c1-8)
TARBALL=$CACHE/corpus-$CKEY.tar
TREE=$CACHE/corpus-$CKEY.tree
BIG=$CACHE/corpus-$CKEY.100k

if [[ ! -f $TARBALL ]]; then
  log "corpus: tar of $CORPUS -> $TARBALL (once)"
  tar -C "$(dirname "$CORPUS")" -cf "$TARBALL.tmp" "$(basename "$CORPUS")"
  mv "$TARBALL.tmp" "$TARBALL"
fi
TAR_ENTRIES=$(tar -tf "$TARBALL" | wc -l)
TAR_BYTES=$(stat -c %s "$TARBALL")
if [[ ! -f $TREE/.done ]]; then
  log "corpus: extracting it once into $TREE (the lower of the stat and read runs)"
  rm -rf "$TREE"; mkdir -p "$TREE"
  tar -C "$TREE" -xf "$TARBALL"
  touch "$TREE/.done"
fi
# the lower holds the tree and the .done stamp
read -r _ TREE_ENTRIES _ TREE_DIRS _ TREE_FILES _ TREE_BYTES < <("$WALK" stat "$TREE")

if ((DO_RSS)) && [[ ! -f $BIG/.done ]]; then
  copies=$(( (100000 + TREE_ENTRIES - 2) / (TREE_ENTRIES - 1) ))
  log "100k lowers: $copies extractions of the corpus over 3 lowers in $BIG (once)"
  rm -rf "$BIG"; mkdir -p "$BIG/l1" "$BIG/l2" "$BIG/l3"
  for ((i = 0; i < copies; i++)); do
    d=$BIG/l$((i % 3 + 1))/copy$i
    mkdir -p "$d"; tar -C "$d" -xf "$TARBALL"
  done
  touch "$BIG/.done"
fi

apt_mirror() {  # print "URI SUITE" of the first Debian main source apt uses
  python3 - <<'EOF'
import glob, os, re
entries = []
def add(uri, suite, comps):
    if "main" in comps and not re.search(r"-(security|updates|backports|proposed-updates)$", suite):
        entries.append((uri.rstrip("/"), suite))
if os.path.exists("/etc/apt/sources.list"):
    files = ["/etc/apt/sources.list"]
else:
    files = []
files += sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for f in files:
    for line in open(f):
        line = line.split("#", 1)[0].strip()
        m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
        if m:
            add(m.group(2), m.group(3), m.group(4).split())
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        kv = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            k, v = line.split(":", 1)
            kv[k.strip().lower()] = v.split()
        if "deb" not in kv.get("types", []) or kv.get("enabled", ["yes"])[0] == "no":
            continue
        for uri in kv.get("uris", []):
            for suite in kv.get("suites", []):
                add(uri, suite, kv.get("components", []))
debian = [e for e in entries if "debian" in e[0]]
for uri, suite in debian or entries:
    print(uri, suite)
    break
EOF
}

DEBS=()
if ((DO_DPKG)); then
  if [[ -z $MIRROR || -z $SUITE ]]; then
    read -r m s < <(apt_mirror) || die "no Debian 'main' source found in apt's sources; use --mirror and --suite"
    MIRROR=${MIRROR:-$m} SUITE=${SUITE:-$s}
  fi
  ROOTFS=$CACHE/rootfs-$SUITE-minbase
  if [[ ! -f $ROOTFS.done ]]; then
    log "rootfs: debootstrap --variant=minbase $SUITE from $MIRROR into $ROOTFS (once; a few minutes)"
    rm -rf "$ROOTFS" "$ROOTFS.tmp"; mkdir -p "$CACHE/debootstrap-debs"
    debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap-debs" "$SUITE" "$ROOTFS.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    mv "$ROOTFS.tmp" "$ROOTFS"
    touch "$ROOTFS.done"
  fi
  DEB_PKGS=(perl-base perl libperl5.36 perl-modules-5.36 libgdbm6 libgdbm-compat4 hello)
  mkdir -p "$CACHE/debs"
  for p in "${DEB_PKGS[@]}"; do
    if ! compgen -G "$CACHE/debs/${p}_*.deb" >/dev/null; then
      log "debs: apt-get download $p (once)"
      (cd "$CACHE/debs" && apt-get download -q "$p" >/dev/null 2>&1) || die "apt-get download $p failed"
    fi
    DEBS+=("$(ls "$CACHE/debs/${p}"_*.deb | tail -1)")
  done
  # debootstrap's .debs once, as a tarball: the timed runs unpack it, offline
  DBS_TARBALL=$CACHE/debootstrap-$SUITE-minbase.tgz
  if [[ ! -f $DBS_TARBALL ]]; then
    log "debootstrap: --make-tarball of $SUITE minbase from $MIRROR -> $DBS_TARBALL (once)"
    rm -rf "$WORK/dbs-tmp"
    debootstrap --variant=minbase --make-tarball="$DBS_TARBALL.tmp.tgz" "$SUITE" "$WORK/dbs-tmp" "$MIRROR" >"$CACHE/debootstrap-tarball.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-tarball.log" >&2; die "debootstrap --make-tarball failed (log: $CACHE/debootstrap-tarball.log)"; }
    mv "$DBS_TARBALL.tmp.tgz" "$DBS_TARBALL"
    rm -rf "$WORK/dbs-tmp"
  fi
  DEB_FILES=0
  for d in "${DEBS[@]}"; do DEB_FILES=$((DEB_FILES + $(dpkg-deb -c "$d" | wc -l))); done
  ROOTFS_ENTRIES=$(find "$ROOTFS" -mindepth 1 | wc -l)
fi

# ---------------------------------------------------------------- the measurements

# The scratch filesystem. The root fs of this VM is mounted with `discard`, and the
# first write into blocks that were just trimmed is several times slower: one untar
# of the corpus took 0.99 s into blocks never trimmed and 6.7 s right after an
# rm -rf (even 90 s later), so each measurement would pay for the one before it.
# A fresh ext4 on a zero-filled image, mounted nodiscard, writes at the same speed
# every time (measured: 0.90-1.39 s with an rm -rf between the untars).
SCR=$WORK/scratch
mkdir -p "$SCR"
if [[ $SCRATCH_FS == loop ]]; then
  IMG=$CACHE/scratch.img
  if [[ ! -f $IMG ]]; then
    log "scratch fs: writing an 8 GiB zero-filled image $IMG (once)"
    dd if=/dev/zero of="$IMG.tmp" bs=16M count=512 conv=fsync status=none
    mv "$IMG.tmp" "$IMG"
  fi
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$IMG" || die "mkfs.ext4 $IMG failed"
  LOOPDEV=$(losetup --find --show --direct-io=on "$IMG") || die "losetup $IMG failed"
  mount -o nodiscard "$LOOPDEV" "$SCR" || die "mount $LOOPDEV failed"
  MOUNTS+=("$SCR")
fi
EMPTY=$SCR/empty; mkdir -p "$EMPTY"
S=$SCR/s   # scratch of one measurement: m (mount point), u (upper), w (workdir), n (native)
fresh() { rm -rf "$S"; mkdir -p "$S"; }
check_walk() {  # WHAT EXPECTED-ENTRIES: the walker's output in $WORK/out
  local got
  got=$(awk '{print $2}' "$WORK/out")
  [[ $got == "$2" ]] || warn "$1: the walk saw $got entries, want $2 (wrong result: figure not comparable)"
}

# mount_fresh CFG LOWER: a fresh mount of CFG over LOWER at $S/m;
# PID is its daemon's (- for the kernel's overlayfs)
mount_fresh() {
  PID=-
  union_mount "$1" "$S/m" "$S/u" "$S/w" "$2"
  [[ $1 == kovl ]] || PID=$(daemon_pid "$1" "$S/m") || die "$1: no daemon found for $S/m"
}

# empty_target CFG: after fresh, an empty place for CFG to write in, in T (a dir on
# native, else a fresh mount over an empty lower); PID as for mount_fresh
empty_target() {
  fresh
  if [[ $1 == native ]]; then
    PID=- T=$S/n; mkdir -p "$T"
  else
    T=$S/m; mount_fresh "$1" "$EMPTY"
  fi
}

# untar CFG
untar() {
  local cfg=$1 t pid=-
  empty_target "$cfg"; t=$T pid=$PID
  cat "$TARBALL" >/dev/null   # the tar itself comes from the page cache
  sync
  timed untar "$cfg" "$pid" tar -C "$t" -xf "$TARBALL" || warn "untar $cfg: tar failed"
  "$WALK" stat "$t" >"$WORK/out" || warn "untar $cfg: walking the result failed"
  check_walk "untar $cfg" "$((TAR_ENTRIES))"
  [[ $cfg == native ]] || union_umount "$cfg" "$t"
  rm -rf "$S"
}

# statread CFG: stat cold, stat warm, read cold (one mount), read warm (a fresh mount)
statread() {
  local cfg=$1 t pid=-
  fresh
  if [[ $cfg == native ]]; then
    t=$TREE
  else
    t=$S/m; mount_fresh "$cfg" "$TREE"; pid=$PID
  fi
  drop_caches
  timed stat-cold "$cfg" "$pid" "$WALK" stat "$t" || warn "stat-cold $cfg: the walk failed"; check_walk "stat cold $cfg" "$TREE_ENTRIES"
  timed stat-warm "$cfg" "$pid" "$WALK" stat "$t" || warn "stat-warm $cfg: the walk failed"; check_walk "stat warm $cfg" "$TREE_ENTRIES"
  drop_caches
  timed read-cold "$cfg" "$pid" "$WALK" read "$t" || warn "read-cold $cfg: the walk failed"; check_walk "read cold $cfg" "$TREE_ENTRIES"
  if [[ $cfg != native ]]; then
    union_umount "$cfg" "$t"
    rm -rf "$S"; fresh
    mount_fresh "$cfg" "$TREE"; pid=$PID
  fi
  timed read-warm "$cfg" "$pid" "$WALK" read "$t" || warn "read-warm $cfg: the walk failed"; check_walk "read warm $cfg" "$TREE_ENTRIES"
  if [[ $cfg != native ]]; then
    [[ -z $(ls -A "$S/u") ]] || warn "$cfg: reading the lower wrote to the upper: $(ls -A "$S/u" | head -5 | tr '\n' ' ')"
    union_umount "$cfg" "$t"
  fi
  rm -rf "$S"
}

# dpkg_install CFG
dpkg_install() {
  local cfg=$1 t pid=-
  fresh
  if [[ $cfg == native ]]; then
    t=$S/n; cp -a "$ROOTFS" "$t"
  else
    t=$S/m; mount_fresh "$cfg" "$ROOTFS"; pid=$PID
  fi
  sync
  if ! DEBIAN_FRONTEND=noninteractive timed dpkg "$cfg" "$pid" dpkg --root="$t" -i "${DEBS[@]}" 2>"$WORK/dpkg.err"; then
    cat "$WORK/out" "$WORK/dpkg.err" >&2
    die "dpkg -i failed on $cfg"
  fi
  for p in "${DEB_PKGS[@]}"; do
    dpkg --root="$t" -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || warn "dpkg $cfg: $p is not installed afterwards"
  done
  [[ $cfg == native ]] || union_umount "$cfg" "$t"
  rm -rf "$S"
}

# debootstrap_run CFG
debootstrap_run() {
  local cfg=$1 t pid=-
  empty_target "$cfg"; t=$T pid=$PID
  sync
  if ! timed debootstrap "$cfg" "$pid" debootstrap --variant=minbase --unpack-tarball="$DBS_TARBALL" "$SUITE" "$t" "$MIRROR" 2>"$WORK/dbs.err"; then
    tail -20 "$WORK/out" "$WORK/dbs.err" "$t/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    die "debootstrap failed on $cfg"
  fi
  [[ -x $t/bin/sh ]] && dpkg --root="$t" -s dpkg 2>/dev/null | grep -q '^Status: install ok installed' || warn "debootstrap $cfg: no installed dpkg afterwards"
  [[ $cfg == native ]] || union_umount "$cfg" "$t"
  rm -rf "$S"
}

# untar_user CFG: a FUSE mount made by BENCH_USER, and its untar with --no-same-owner
untar_user() {
  local cfg=$1 t pid=- args=()
  fresh
  t=$S/m
  mkdir -p "$t" "$S/u" "$S/w"; chown "$BENCH_USER" "$t" "$S/u" "$S/w"
  MOUNTS+=("$t")
  case $cfg in
    fovl) as_user fuse-overlayfs -o "lowerdir=$EMPTY,upperdir=$S/u,workdir=$S/w" "$t" 2>"$WORK/mount.err" ||
            { cat "$WORK/mount.err" >&2; die "fuse-overlayfs as $BENCH_USER at $t failed"; } ;;
    layerfs) as_user "$LFS" mount --driver fuse --lower "$EMPTY" --upper "$S/u" --workdir "$S/w" "$t" || die "layerfs mount as $BENCH_USER at $t failed" ;;
  esac
  pid=$(daemon_pid "$cfg" "$t") || pid=-
  sync
  timed untar-user "$cfg" "$pid" as_user tar --no-same-owner -C "$t" -xf "$TARBALL" || warn "untar-user $cfg: tar failed"
  # (a rootless mount without allow_other admits its user alone)
  as_user "$WALK" stat "$t" >"$WORK/out" || warn "untar-user $cfg: walking the result failed"
  check_walk "untar-user $cfg" "$((TAR_ENTRIES))"
  case $cfg in
    fovl) as_user fusermount3 -u "$t" || die "fusermount3 -u $t failed" ;;
    layerfs) as_user "$LFS" umount "$t" || die "layerfs umount $t as $BENCH_USER failed" ;;
  esac
  rm -rf "$S"
}

OPS=(untar stat-cold stat-warm read-cold read-warm)
((DO_DPKG)) && OPS+=(dpkg debootstrap)
((DO_ROOTLESS)) && OPS+=(untar-user)

((QUIET)) && wait_quiet "$QUIET"
BUSY0=$(cpu_busy) IO0=$(io_pressure)
if ((RUNS)); then
  log "warm-up: one untimed untar per config"
  for c in "${CFGS[@]}"; do untar "$c"; done
fi
R=() D=()
for ((run = 1; run <= RUNS; run++)); do
  ((QUIET)) && wait_quiet "$QUIET"
  for c in "${CFGS[@]}"; do untar "$c"; done
  log "run $run/$RUNS untar: $(for c in "${CFGS[@]}"; do printf '%s %s s  ' "$c" "$(last "untar/$c")"; done)"
  for c in "${CFGS[@]}"; do statread "$c"; done
  log "run $run/$RUNS stat cold/warm, read cold/warm: $(for c in "${CFGS[@]}"; do printf '%s %s/%s %s/%s  ' "$c" "$(last "stat-cold/$c")" "$(last "stat-warm/$c")" "$(last "read-cold/$c")" "$(last "read-warm/$c")"; done)"
  if ((DO_DPKG)); then
    for c in "${CFGS[@]}"; do dpkg_install "$c"; done
    log "run $run/$RUNS dpkg: $(for c in "${CFGS[@]}"; do printf '%s %s s  ' "$c" "$(last "dpkg/$c")"; done)"
    for c in "${CFGS[@]}"; do debootstrap_run "$c"; done
    log "run $run/$RUNS debootstrap: $(for c in "${CFGS[@]}"; do printf '%s %s s  ' "$c" "$(last "debootstrap/$c")"; done)"
  fi
  if ((DO_ROOTLESS)); then
    for c in "${FUSE_CFGS[@]}"; do untar_user "$c"; done
    log "run $run/$RUNS untar as $BENCH_USER: $(for c in "${FUSE_CFGS[@]}"; do printf '%s %s s  ' "$c" "$(last "untar-user/$c")"; done)"
  fi
done
BUSY1=$(cpu_busy) IO1=$(io_pressure)

# ---------------------------------------------------------------- daemon memory over 100k entries

declare -A RSS0 RSS1 HWM1 MT100K MT0 NENT
if ((DO_RSS)); then
  for c in "${FUSE_CFGS[@]}"; do
    fresh
    t0=$EPOCHREALTIME
    union_mount "$c" "$S/m" "$S/u" "$S/w" "$EMPTY"
    MT0[$c]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}')
    union_umount "$c" "$S/m"
    fresh
    t0=$EPOCHREALTIME
    union_mount "$c" "$S/m" "$S/u" "$S/w" "$BIG/l1" "$BIG/l2" "$BIG/l3"
    MT100K[$c]=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.3f", b - a}')
    pid=$(daemon_pid "$c" "$S/m") || die "$c: no daemon found for $S/m"
    RSS0[$c]=$(proc_kb "$pid" VmRSS)
    "$WALK" stat "$S/m" >"$WORK/out" || warn "$c: the walk over the 100k lowers failed"
    NENT[$c]=$(awk '{print $2}' "$WORK/out")
    RSS1[$c]=$(proc_kb "$pid" VmRSS)
    HWM1[$c]=$(proc_kb "$pid" VmHWM)
    log "$c over ${NENT[$c]} entries: mount ${MT100K[$c]} s, VmRSS ${RSS0[$c]} kB after mount, ${RSS1[$c]} kB after the stat (peak ${HWM1[$c]} kB)"
    union_umount "$c" "$S/m"
    rm -rf "$S"
  done
fi

# ---------------------------------------------------------------- FUSE request counts (optional)

declare -A REQ
# count_requests CFG OP LOGFILE FROMBYTE -> REQ[op/cfg]: "total (OP n, ...)", the top
# opcodes of the requests logged from byte FROMBYTE on
count_requests() {
  REQ[$2/$1]=$(tail -c +"$(($4 + 1))" "$3" | grep -aoE 'rx [0-9]+: [A-Z_0-9]+|opcode: [A-Z_0-9]+' | awk '{print $NF}' |
    sort | uniq -c | sort -rn | awk '{t += $1; if (NR <= 9) s = s (s ? ", " : "") $2 " " $1} END {printf "%d (%s)", t, s}')
}
logsize() { sleep 0.5; stat -c %s "$1"; }   # after the daemon has written the last lines
debug_mount() {  # CFG MNT UPPER WORKDIR LOG LOWER...: a mount whose daemon logs every request
  local cfg=$1 mnt=$2 up=$3 wd=$4 logf=$5 i
  shift 5
  local args=() lowers=("$@") rev=()
  mkdir -p "$mnt" "$up" "$wd"
  MOUNTS+=("$mnt")
  case $cfg in
    fovl)
      for ((i = ${#lowers[@]} - 1; i >= 0; i--)); do rev+=("${lowers[i]}"); done
      fuse-overlayfs -d -o "lowerdir=$(IFS=:; echo "${rev[*]}"),upperdir=$up,workdir=$wd,dev,suid" "$mnt" >"$logf" 2>&1 & ;;
    layerfs)
      for i in "${lowers[@]}"; do args+=(--lower "$i"); done
      "$LFS" mount --driver fuse --foreground --debug "${args[@]}" --upper "$up" --workdir "$wd" "$mnt" >"$logf" 2>&1 & ;;
  esac
  BGPIDS+=($!)
  for ((i = 0; i < 100; i++)); do mountpoint -q "$mnt" && return 0; sleep 0.1; done
  die "$cfg --debug: $mnt not mounted after 10 s"
}
REQ_OPS=(untar stat-cold stat-warm read)
((DO_DPKG)) && REQ_OPS+=(dpkg debootstrap)
if ((REQUESTS)); then
  for c in "${FUSE_CFGS[@]}"; do
    fresh
    L=$WORK/req.log
    debug_mount "$c" "$S/m" "$S/u" "$S/w" "$L" "$EMPTY"
    o=$(logsize "$L")
    tar -C "$S/m" -xf "$TARBALL"
    count_requests "$c" untar "$L" "$o"
    umount_any "$S/m"; wait "${BGPIDS[-1]}" 2>/dev/null || true
    fresh
    debug_mount "$c" "$S/m" "$S/u" "$S/w" "$L" "$TREE"
    drop_caches
    o=$(logsize "$L"); "$WALK" stat "$S/m" >/dev/null; count_requests "$c" stat-cold "$L" "$o"
    o=$(logsize "$L"); "$WALK" stat "$S/m" >/dev/null; count_requests "$c" stat-warm "$L" "$o"
    o=$(logsize "$L"); "$WALK" read "$S/m" >/dev/null; count_requests "$c" read "$L" "$o"
    sleep 0.5
    umount_any "$S/m"; wait "${BGPIDS[-1]}" 2>/dev/null || true
    if ((DO_DPKG)); then
      fresh
      debug_mount "$c" "$S/m" "$S/u" "$S/w" "$L" "$ROOTFS"
      o=$(logsize "$L")
      DEBIAN_FRONTEND=noninteractive dpkg --root="$S/m" -i "${DEBS[@]}" >/dev/null 2>&1 || warn "dpkg under --debug failed on $c"
      count_requests "$c" dpkg "$L" "$o"
      umount_any "$S/m"; wait "${BGPIDS[-1]}" 2>/dev/null || true
      fresh
      debug_mount "$c" "$S/m" "$S/u" "$S/w" "$L" "$EMPTY"
      o=$(logsize "$L")
      debootstrap --variant=minbase --unpack-tarball="$DBS_TARBALL" "$SUITE" "$S/m" "$MIRROR" >/dev/null 2>&1 || warn "debootstrap under --debug failed on $c"
      count_requests "$c" debootstrap "$L" "$o"
      umount_any "$S/m"; wait "${BGPIDS[-1]}" 2>/dev/null || true
    fi
    for op in "${REQ_OPS[@]}"; do log "$c requests, $op: ${REQ[$op/$c]}"; done
    rm -rf "$S" "$L"
  done
fi

# ---------------------------------------------------------------- report

dmed() { median ${D[$1]:-}; }
name() { case $1 in native) echo native ;; kovl) echo "kernel overlayfs" ;; fovl) echo "fuse-overlayfs $FOVL_VER" ;; layerfs) echo "layerfs mount" ;; esac; }
FOVL_VER=$(fuse-overlayfs --version 2>/dev/null | awk '/fuse-overlayfs: version/ {print $3}' || true)
[[ -n $FOVL_VER ]] || FOVL_VER=$(dpkg-query -W -f='${Version}' fuse-overlayfs 2>/dev/null || echo '?')
MB() { awk -v a="$1" 'BEGIN {printf "%.0f MB", a/1e6}'; }

echo
echo "== layerfs mount benchmark (issues 3 and 14) =="
echo "date   : $(date -u +%Y-%m-%dT%H:%M:%SZ)   layerfs: $(has_cfg layerfs && echo "$LFS_REV" || echo 'not measured')"
echo "host   : $(machine), fuse-overlayfs $FOVL_VER"
if [[ $SCRATCH_FS == loop ]]; then
  echo "disk   : written dirs on a fresh ext4 (nodiscard) on $LOOPDEV (direct I/O) over $IMG; lowers and the tar on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$CACHE" | cut -c1-60)"
else
  echo "disk   : everything on $(findmnt -no SOURCE,FSTYPE,OPTIONS -T "$WORK" | cut -c1-60)"
fi
echo "corpus : tar of $CORPUS ($(head -1 "$CORPUS/VERSION" 2>/dev/null || echo ?)): $TAR_ENTRIES entries, $(MB "$TAR_BYTES"); stat/read over its extraction: $TREE_ENTRIES entries ($TREE_FILES files, $(MB "$TREE_BYTES")) in the lower"
((DO_DPKG)) && echo "dpkg   : dpkg --root=MNT -i $(for d in "${DEBS[@]}"; do printf '%s ' "$(basename "$d")"; done)($DEB_FILES paths) into a debootstrap --variant=minbase $SUITE rootfs ($ROOTFS_ENTRIES entries) from $MIRROR"
((DO_DPKG)) && echo "debootstrap: debootstrap --variant=minbase --unpack-tarball=$(basename "$DBS_TARBALL") $SUITE (offline) into an empty dir / a fresh mount over an empty lower"
((DO_ROOTLESS)) && echo "rootless: untar-user is the untar by user $BENCH_USER (tar --no-same-owner) into a FUSE mount that user made (fusermount3; /dev/fuse 0666)"
echo "runs   : $RUNS of each, interleaved across mounts, median reported; walker: bench/mountwalk.go (fstatat per entry, one process)"
echo "load   : CPUs ${BUSY0}% busy just before the runs, ${BUSY1}% just after (3 s samples, all processes); I/O pressure (PSI some avg10) ${IO0}% before, ${IO1}% after"
echo
if ((RUNS)); then
  hdr=(mount); for op in "${OPS[@]}"; do hdr+=("$op s"); done
  row "${hdr[@]}"
  sep=("---"); for op in "${OPS[@]}"; do sep+=("---:"); done
  row "${sep[@]}"
  for c in "${CFGS[@]}"; do
    r=("$(name "$c")"); for op in "${OPS[@]}"; do r+=("$(med "$op/$c")"); done
    row "${r[@]}"
  done
  echo
  echo "every run (s):"
  for op in "${OPS[@]}"; do
    printf '  %-9s' "$op"; for c in "${CFGS[@]}"; do printf '  %s: %s' "$c" "${R[$op/$c]:-}"; done; echo
  done
  if ((${#FUSE_CFGS[@]})); then
    echo "FUSE daemon CPU seconds (user+sys), medians:"
    for op in "${OPS[@]}"; do
      printf '  %-9s' "$op"; for c in "${FUSE_CFGS[@]}"; do printf '  %s: %s' "$c" "$(dmed "$op/$c")"; done; echo
    done
  fi
  echo
  echo "ratios of medians (time / time of the reference; lower is better):"
  for c in "${CFGS[@]}"; do
    [[ $c == native ]] && continue
    printf '  %-16s' "$(name "$c" | cut -c1-16)"
    for op in "${OPS[@]}"; do
      printf '  %s %sx native, %sx kovl' "$op" "$(div "$(med "$op/$c")" "$(med "$op/native")")" "$(div "$(med "$op/$c")" "$(med "$op/kovl")")"
      [[ $op != dpkg && $op != "${OPS[-1]}" ]] && printf ';'
    done
    echo
  done
fi

MISSED=0
verdict() {  # RATIO OP LIMIT -> met/MISSED
  awk -v r="$1" -v l="$2" 'BEGIN {if (r == "-") print "-"; else print (r <= l) ? "met" : "MISSED"}'
}
target() {  # LABEL RATIO LIMIT
  local v
  v=$(verdict "$2" "$3")
  [[ $v == MISSED ]] && MISSED=1
  printf '  %-36s %7s  %s\n' "$1" "${2}x" "$v"
}
echo
if has_cfg layerfs; then
  echo "targets of issue 3 (layerfs mount, ratios of medians):"
  ((RUNS)) && has_cfg fovl && target "untar <= 1/3 of fuse-overlayfs" "$(div "$(med untar/layerfs)" "$(med untar/fovl)")" 0.3334
  ((RUNS)) && has_cfg kovl && {
    target "untar <= 3x kernel overlayfs" "$(div "$(med untar/layerfs)" "$(med untar/kovl)")" 3
    target "read cold <= 1.3x kernel overlayfs" "$(div "$(med read-cold/layerfs)" "$(med read-cold/kovl)")" 1.3
    target "read warm <= 1.3x kernel overlayfs" "$(div "$(med read-warm/layerfs)" "$(med read-warm/kovl)")" 1.3
    target "stat warm <= 1.5x kernel overlayfs" "$(div "$(med stat-warm/layerfs)" "$(med stat-warm/kovl)")" 1.5
  }
  if ((DO_RSS)); then
    v=$(awk -v k="${RSS1[layerfs]}" 'BEGIN {print (k <= 100 * 1024) ? "met" : "MISSED"}')
    [[ $v == MISSED ]] && MISSED=1
    printf '  %-36s %7s  %s\n' "daemon RSS <= 100 MB at 100k entries" "$(awk -v k="${RSS1[layerfs]}" 'BEGIN {printf "%.1f MB", k/1024}')" "$v"
  fi
  if ((RUNS)); then
    echo
    echo "targets of issue 14 (layerfs mount --driver fuse, ratios of medians; the 3-layer build's row is bench/distro.sh's):"
    has_cfg fovl && target "untar <= 0.5x fuse-overlayfs" "$(div "$(med untar/layerfs)" "$(med untar/fovl)")" 0.5
    has_cfg kovl && target "untar <= 3x kernel overlayfs" "$(div "$(med untar/layerfs)" "$(med untar/kovl)")" 3
    has_cfg kovl && target "stat warm <= 1.5x kernel overlayfs" "$(div "$(med stat-warm/layerfs)" "$(med stat-warm/kovl)")" 1.5
    if ((DO_DPKG)); then
      for op in dpkg debootstrap; do
        has_cfg kovl && target "$op <= 1.5x kernel overlayfs" "$(div "$(med "$op/layerfs")" "$(med "$op/kovl")")" 1.5
        has_cfg fovl && target "$op < fuse-overlayfs" "$(div "$(med "$op/layerfs")" "$(med "$op/fovl")")" 0.9999
      done
    fi
    ((DO_ROOTLESS)) && has_cfg fovl && target "untar as a user <= 0.5x fuse-overlayfs" "$(div "$(med untar-user/layerfs)" "$(med untar-user/fovl)")" 0.5
  fi
else
  echo "targets: not checked (layerfs not measured)"
fi
if ((DO_RSS)) && ((${#FUSE_CFGS[@]})); then
  echo
  echo "daemon memory and mount time over 3 lowers holding 100,000+ entries:"
  row mount entries "mount s (empty lower)" "mount s (100k lowers)" "VmRSS after mount" "VmRSS after stat of all" "VmHWM"
  row "---" "---:" "---:" "---:" "---:" "---:" "---:"
  for c in "${FUSE_CFGS[@]}"; do
    row "$(name "$c")" "${NENT[$c]}" "${MT0[$c]}" "${MT100K[$c]}" "$(awk -v k="${RSS0[$c]}" 'BEGIN {printf "%.1f MB", k/1024}')" \
      "$(awk -v k="${RSS1[$c]}" 'BEGIN {printf "%.1f MB", k/1024}')" "$(awk -v k="${HWM1[$c]}" 'BEGIN {printf "%.1f MB", k/1024}')"
  done
fi
if ((REQUESTS)); then
  echo
  echo "FUSE requests logged by the daemon (one untar; in a fresh mount over the tree: a cold"
  echo "stat after drop_caches, a warm stat, a read of every file), total and top opcodes:"
  for c in "${FUSE_CFGS[@]}"; do
    for op in "${REQ_OPS[@]}"; do echo "  $(name "$c"), $op: ${REQ[$op/$c]}"; done
  done
  if ((RUNS)); then
    echo
    echo "daemon CPU per request: the median daemon CPU of the timed runs / the requests of the logged run"
    row mount workload requests "daemon CPU s" "µs per request" "wall s" "wall µs per request"
    row "---" "---" "---:" "---:" "---:" "---:" "---:"
    for c in "${FUSE_CFGS[@]}"; do
      for op in untar stat-warm dpkg debootstrap; do
        n=${REQ[$op/$c]%% *}
        [[ -n $n && -n ${R[$op/$c]:-} ]] || continue
        row "$(name "$c")" "$op" "$n" "$(dmed "$op/$c")" "$(DIV_PLACES=1 div "$(awk -v a="$(dmed "$op/$c")" 'BEGIN {print a * 1e6}')" "$n")" \
          "$(med "$op/$c")" "$(DIV_PLACES=1 div "$(awk -v a="$(med "$op/$c")" 'BEGIN {print a * 1e6}')" "$n")"
      done
    done
  fi
fi
if ((${#WARNINGS[@]})); then
  echo
  echo "WARNINGS (results that were wrong or incomplete):"
  printf '  - %s\n' "${WARNINGS[@]}"
fi
((CHECK && MISSED)) && exit 3
exit 0
