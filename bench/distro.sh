#!/usr/bin/env bash
# bench/distro.sh: a real Debian image, cold and rebuilt, by layerfs on each mount
# driver and by its peers (issue 12).
#
# The image has three layers: debootstrap --variant=minbase of Debian 12 (bookworm);
# + python3; + nginx-light and curl (--no-install-recommends). The fixture is made
# once, with network, into --fixture (default /var/cache/layerfs-bench/distro):
# debootstrap --make-tarball, and for each dpkg layer the .debs apt downloads and the
# dpkg calls apt makes, in its order (apt-get -o Debug::pkgDPkgPM=1, its --recursive
# batch expanded in dpkg's sorted order). Every build after that is offline. The
# installs are one script, the same for every tool (install.sh in the work dir):
#     base:  debootstrap --variant=minbase --unpack-tarball=base.tgz bookworm ROOT
#     dpkg:  mount --bind FIXTURE/LAYER ROOT/mnt; chroot ROOT sh -c '. ./dpkg-calls'
#
# The tools, each a cold build from nothing (an empty cache or store), interleaved,
# --runs times (default 3), medians reported:
#   kernel    layerfs build --driver kernel (the default as root: auto)
#   fuse      layerfs build --driver fuse
#   buildah   buildah from/mount/commit per layer, as root on the kernel's overlayfs
#             (its default: buildah 1.28 mounts its containers volatile, no fsync);
#             the OCI layout it would take to write the image is timed apart
#   umoci     the flow layerfs replaces: per layer umoci unpack, install, umoci repack
#   bare      the same install scripts into plain overlayfs mounts (lowerdir=, one
#             per layer), nothing else: the floor; fsyncs as dpkg makes them
#   bare-vol  the same, mounted volatile (fsyncs skipped), as layerfs's builds and
#             buildah's run
# Then, layerfs only (and the peers where they have an equivalent): the rebuild after
# a change of the top layer's install command (kernel, fuse; buildah: from the
# second layer's image; umoci: unpack of the second; bare: the third install), and
# the rebuild with every layer a hit. Each tool's last image runs in podman
# (python3, nginx -v, curl --version). The script prints medians, every run, CPU
# times (user+sys of the tool and what it ran) and the ratios the issue sets targets
# for. It measures; it asserts no time.
#
# Everything written is on a fresh ext4 on a loop device (direct I/O) over a
# zero-filled image in --cache (default /var/cache/layerfs-bench/distro-scratch.img,
# 12 GiB), mounted nodiscard (BENCHMARKS.md, "The disk").
#
# Needs: root, go, debootstrap, chroot, buildah, umoci, podman, runc, mkfs.ext4,
# losetup; network the first time (apt's mirror).
set -euo pipefail
umask 022
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"
CMDLINE=$(cmdline "$@")

# shellcheck disable=SC2317  # called by common_option, in lib.sh
usage() {
  cat <<'EOF'
usage: bench/distro.sh [options]
  -n, --runs N        cold builds per tool, interleaved; the median is reported (default 3)
  --tools LIST        comma-separated, of kernel fuse buildah umoci bare bare-vol
                      (default all)
  --no-rebuilds       skip the rebuilds (top layer changed, all hits)
  --fixture DIR       the fixture (made there once; default /var/cache/layerfs-bench/distro)
  --mirror URL        apt mirror for the fixture (default http://deb.debian.org/debian)
  --layerfs BIN       use a prebuilt layerfs (default: go build ./cmd/layerfs)
  --cache DIR         where the scratch fs image lives (default /var/cache/layerfs-bench)
  --image-gb N        size of the scratch image when it is made (default 12)
  -w, --workdir DIR   work dir (default a fresh dir under /var/tmp, removed on exit)
  --wait-quiet S      before each timed build, wait up to S seconds for the CPUs to
                      be <10% busy and I/O pressure <5%; default 0 (no waiting)
  --keep              keep the work dir; the scratch fs is unmounted anyway
  -h, --help          this text
EOF
}

RUNS=3 TOOLS=kernel,fuse,buildah,umoci,bare,bare-vol REBUILDS=1 FIXTURE=/var/cache/layerfs-bench/distro
MIRROR=http://deb.debian.org/debian LFS_BIN='' CACHE=/var/cache/layerfs-bench IMG_GB=12 WORK='' QUIET=0 KEEP=0
SUITE=bookworm EPOCH=1700000000
while (($#)); do
  case $1 in
    -n|--runs) RUNS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --no-rebuilds) REBUILDS=0; shift ;;
    --fixture) FIXTURE=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --layerfs) LFS_BIN=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --image-gb) IMG_GB=$2; shift 2 ;;
    -w|--workdir) WORK=$2; shift 2 ;;
    *) common_option "$@"; shift "$OPT_WORDS" ;;
  esac
done
[[ $RUNS =~ ^[0-9]+$ ]] && ((RUNS >= 1)) || usage_error "--runs wants a number, at least 1"
[[ $IMG_GB =~ ^[0-9]+$ ]] || usage_error "--image-gb wants a number"
[[ $QUIET =~ ^[0-9]+$ ]] || usage_error "--wait-quiet wants a number of seconds"
IFS=, read -ra TOOL_LIST <<<"$TOOLS"
for t in "${TOOL_LIST[@]}"; do
  case $t in kernel|fuse|buildah|umoci|bare|bare-vol) ;; *) usage_error "--tools: unknown tool $t" ;; esac
done
has_tool() { [[ ",$TOOLS," == *",$1,"* ]]; }

((EUID == 0)) || die "needs root (debootstrap, chroot, mounts, the loop device)"
for t in go debootstrap chroot mkfs.ext4 losetup mount umount flock sync podman runc skopeo; do
  command -v $t >/dev/null || die "$t not found"
done
has_tool buildah && { command -v buildah >/dev/null || die "buildah not found"; }
has_tool umoci && { command -v umoci >/dev/null || die "umoci not found"; }

mkdir -p "$CACHE"; CACHE=$(cd "$CACHE" && pwd)
exec 9>"$CACHE/distro-bench.lock"
flock -n 9 || die "another bench/distro.sh holds $CACHE/distro-bench.lock"
make_work /var/tmp/layerfs-distro-bench.XXXXXX
WAIT_IO=1

LFS=$WORK/bin/layerfs
SCR=$WORK/scratch
RUN=$WORK/run
mkdir -p "$WORK/bin" "$RUN" "$SCR"
LOOPDEV=
BUILDAH_RUNROOT=/run/layerfs-distro-bench-buildah
PODMAN_RUNROOT=/run/lfs-distro-podman  # podman wants it under 50 bytes
# shellcheck disable=SC2317  # called by the trap
cleanup() {
  umount_under "$SCR"
  scratch_loop_release
  rm -rf "$BUILDAH_RUNROOT" "$PODMAN_RUNROOT"
  if ((KEEP)); then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

get_layerfs "$LFS" "$LFS_BIN"

# ---------------------------------------------------------------- the fixture

# make_fixture: debootstrap's tarball, then per dpkg layer its .debs and apt's dpkg
# calls, found by installing each layer into a scratch root (apt-get, network).
make_fixture() {
  local f=$FIXTURE s r
  mkdir -p "$f"
  s=$(mktemp -d /var/tmp/layerfs-distro-fixture.XXXXXX)
  r=$s/root
  log "fixture: debootstrap --make-tarball ($SUITE from $MIRROR)"
  debootstrap --variant=minbase --make-tarball="$f/base.tgz.tmp" "$SUITE" "$s/mk" "$MIRROR" >"$s/mk.log" 2>&1 ||
    { tail "$s/mk.log" >&2; die "debootstrap --make-tarball failed"; }
  mv "$f/base.tgz.tmp" "$f/base.tgz"
  debootstrap --variant=minbase --unpack-tarball="$f/base.tgz" "$SUITE" "$r" >"$s/root.log" 2>&1 ||
    { tail "$s/root.log" >&2; die "debootstrap --unpack-tarball failed"; }
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  echo "deb $MIRROR $SUITE main" >"$r/etc/apt/sources.list"
  chroot "$r" apt-get update -q >/dev/null || die "apt-get update in the scratch root failed"
  fixture_layer "$r" python3 python3
  fixture_layer "$r" web nginx-light curl
  umount_under "$r"
  rm -rf "$s"
  echo "$SUITE $(date -u +%F)" >"$f/stamp"
}
fixture_layer() {  # ROOT NAME PACKAGES...: the layer's .debs and dpkg-calls
  local r=$1 name=$2 d=$FIXTURE/$2 rest f
  shift 2
  log "fixture: layer $name ($*)"
  rm -rf "$d"; mkdir -p "$d"
  rm -f "$r"/var/cache/apt/archives/*.deb
  chroot "$r" apt-get install -y -q --download-only --no-install-recommends "$@" >/dev/null || die "apt-get --download-only $* failed"
  cp "$r"/var/cache/apt/archives/*.deb "$d/"
  chroot "$r" apt-get install -y -q --no-install-recommends -o Debug::pkgDPkgPM=1 "$@" 2>&1 |
    grep '^/usr/bin/dpkg' | sed -e 's|/var/cache/apt/archives/||g' -e 's|--status-fd [0-9]* ||' >"$d/dpkg-calls.raw"
  # apt hands dpkg a big batch as --recursive over a temp dir of links: the debs no
  # other call names, in dpkg's sorted order
  rest=$(cd "$d" && for f in *.deb; do grep -qF -- " $f" dpkg-calls.raw || echo "$f"; done | LC_ALL=C sort | tr '\n' ' ')
  sed -e "s|--recursive /tmp/apt-dpkg-install-[A-Za-z0-9]*|$rest|" "$d/dpkg-calls.raw" >"$d/dpkg-calls"
  rm "$d/dpkg-calls.raw" "$r"/var/cache/apt/archives/*.deb
  # the scratch root gets the layer, as the next layer's install expects it
  mount --bind "$d" "$r/mnt"
  chroot "$r" sh -c 'cd /mnt && export DEBIAN_FRONTEND=noninteractive && set -e && . ./dpkg-calls' >"$d.log" 2>&1 ||
    { umount "$r/mnt"; tail "$d.log" >&2; die "dpkg calls of $name failed in the scratch root"; }
  umount "$r/mnt"; rm -f "$d.log"
}
if [[ ! -f $FIXTURE/stamp ]]; then make_fixture; fi
FIXTURE=$(cd "$FIXTURE" && pwd)
log "fixture: $FIXTURE ($(cat "$FIXTURE/stamp")): base.tgz $(du -h "$FIXTURE/base.tgz" | cut -f1), python3 $(ls "$FIXTURE"/python3/*.deb | wc -l) debs, web $(ls "$FIXTURE"/web/*.deb | wc -l) debs"

# install.sh ROOT LAYER: the one install script of every tool
INSTALL=$WORK/install.sh
cat >"$INSTALL" <<EOF
#!/bin/sh
# bench/distro.sh's installs: ROOT LAYER [REVISION]
set -e
root=\$1 layer=\$2
export PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C
case \$layer in
  base) debootstrap --variant=minbase --unpack-tarball=$FIXTURE/base.tgz $SUITE "\$root" >/dev/null ;;
  *)
    mount --bind "$FIXTURE/\$layer" "\$root/mnt"
    chroot "\$root" sh -c 'cd /mnt && set -e && . ./dpkg-calls' >/dev/null || { umount "\$root/mnt"; exit 1; }
    umount "\$root/mnt" ;;
esac
if [ -n "\${3:-}" ]; then echo "\$3" >"\$root/etc/layerfs-bench-revision"; fi
EOF
chmod 755 "$INSTALL"
LAYERS=(base python3 web)

# the spec: REV changes the top layer's install command
write_spec() {  # FILE REV
  cat >"$1" <<EOF
# bench/distro.sh
image: oci:out:distro
arch: amd64
layers:
  - {name: base,    type: packages, packages: [debootstrap-minbase], install: '$INSTALL "\$LAYERFS_ROOT" base'}
  - {name: python3, type: packages, packages: [python3],             install: '$INSTALL "\$LAYERFS_ROOT" python3'}
  - {name: web,     type: packages, packages: [nginx-light, curl],   install: '$INSTALL "\$LAYERFS_ROOT" web $2'}
EOF
}

# ---------------------------------------------------------------- the scratch fs

scratch_loop "$CACHE/distro-scratch.img" "$IMG_GB" "$SCR"
W=$SCR/w   # the current build's everything

fresh() { umount_under "$SCR"; rm -rf "$W" "$BUILDAH_RUNROOT" "$PODMAN_RUNROOT"; mkdir -p "$W"; sync; }

# ---------------------------------------------------------------- the tools

# each cold_TOOL builds the image from nothing in $W; prints nothing
cold_kernel() { lfs_build kernel v1; }
cold_fuse() { lfs_build fuse v1; }
lfs_build() {  # DRIVER REV [CACHE]
  write_spec "$W/spec-$2.yaml" "$2"
  (cd "$W" && SOURCE_DATE_EPOCH=$EPOCH "$LFS" build "spec-$2.yaml" --cache "${3:-$W/cache}" --driver "$1" --json -q \
    >"$RUN/last.json" 2>"$RUN/last.err") || { tail "$RUN/last.err" >&2; die "layerfs build --driver $1 failed"; }
}
B() { buildah --root "$W/bstore" --runroot "$BUILDAH_RUNROOT" --storage-driver overlay "$@"; }
buildah_layer() {  # FROM LAYER IMAGE [REV]
  local c m
  c=$(B from -q "$1") && m=$(B mount "$c") || die "buildah from/mount $1 failed"
  "$INSTALL" "$m" "$2" "${4:-}" || die "install of $2 (buildah) failed"
  B umount "$c" >/dev/null && B commit -q "$c" "$3" >/dev/null && B rm "$c" >/dev/null || die "buildah commit $3 failed"
}
cold_buildah() {
  buildah_layer scratch base l1
  buildah_layer l1 python3 l2
  buildah_layer l2 web l3
}
umoci_layer() {  # FROM LAYER TO [REV]
  umoci unpack --image "$W/umoci:$1" "$W/bundle" >/dev/null 2>&1 || die "umoci unpack $1 failed"
  "$INSTALL" "$W/bundle/rootfs" "$2" "${4:-}" || die "install of $2 (umoci) failed"
  umoci repack --image "$W/umoci:$3" "$W/bundle" >/dev/null 2>&1 || die "umoci repack $3 failed"
  rm -rf "$W/bundle"
}
cold_umoci() {
  umoci init --layout "$W/umoci" && umoci new --image "$W/umoci:l0" || die "umoci init failed"
  umoci_layer l0 base l1
  umoci_layer l1 python3 l2
  umoci_layer l2 web l3
}
bare_layers() {  # OPTS: the three installs into overlayfs mounts, each layer's upper a lower of the next
  local opts=$1 lowers=$W/empty i
  mkdir -p "$W/empty"
  for i in 0 1 2; do
    mkdir -p "$W/u$i" "$W/w$i" "$W/m$i"
    mount -t overlay overlay -o "lowerdir=$lowers,upperdir=$W/u$i,workdir=$W/w$i,redirect_dir=off,metacopy=off,index=off,xino=off$opts" "$W/m$i"
    local t0=$EPOCHREALTIME
    "$INSTALL" "$W/m$i" "${LAYERS[$i]}" || die "install of ${LAYERS[$i]} (bare) failed"
    echo "${LAYERS[$i]} $t0 $EPOCHREALTIME" >>"$RUN/stamps"   # made seconds after stop: nothing forks here
    umount "$W/m$i"
    lowers=$W/u$i:$lowers
  done
}
cold_bare() { bare_layers ''; }
cold_bare-vol() { bare_layers ',volatile'; }

# rebuilds after a change of the top layer's install command, from the cold
# build's state in $W
top_kernel() { lfs_build kernel v2; }
top_fuse() { lfs_build fuse v2; }
top_buildah() { buildah_layer l2 web l3v2 v2; }
top_umoci() { umoci_layer l2 web l3v2 v2; }
top_bare() {
  mkdir -p "$W/u3" "$W/w3" "$W/m3"
  mount -t overlay overlay -o "lowerdir=$W/u1:$W/u0:$W/empty,upperdir=$W/u3,workdir=$W/w3,redirect_dir=off,metacopy=off,index=off,xino=off${1:-}" "$W/m3"
  "$INSTALL" "$W/m3" web v2 || die "install of web (bare) failed"
  umount "$W/m3"
}
top_bare-vol() { top_bare ',volatile'; }

# the image a tool made runs in podman (copied by skopeo into a private store)
check_runs() {  # TOOL
  local ref out store=$W/podman name=localhost/layerfs-distro-bench:$1
  case $1 in
    kernel|fuse) ref=oci:$W/out:distro ;;
    buildah) B push -q l3 "oci:$W/buildah-oci:l3" >/dev/null || die "buildah push failed"; ref=oci:$W/buildah-oci:l3 ;;
    umoci) ref=oci:$W/umoci:l3 ;;
    *) return 0 ;;
  esac
  skopeo --insecure-policy copy --quiet "$ref" "containers-storage:[overlay@$store+$PODMAN_RUNROOT]$name" ||
    die "skopeo copy of the $1 image failed"
  out=$(podman --root "$store" --runroot "$PODMAN_RUNROOT" --storage-driver overlay --runtime /usr/sbin/runc \
    --cgroup-manager=cgroupfs --events-backend=file run --rm --network none --ulimit nofile=1024:1024 \
    --ulimit nproc=1024:1024 "$name" sh -c 'python3 -c "print(6 * 7)" && nginx -v 2>&1 && curl --version | head -1' 2>&1) ||
    die "the $1 image does not run in podman: $out"
  [[ $out == *42* && $out == *nginx/* && $out == *curl\ * ]] || die "the $1 image in podman printed: $out"
  log "$1: the image runs in podman ($(echo "$out" | tr '\n' ' '))"
}

# ---------------------------------------------------------------- the runs

declare -A R CPU L
measure() {  # KEY FUNC...
  local key=$1 t
  shift
  ((QUIET)) && wait_quiet "$QUIET"
  rm -f "$RUN/last.json" "$RUN/stamps"
  start
  "$@"
  stop >"$RUN/stop"   # not in $(...): times must run in this shell
  t=$(<"$RUN/stop")
  R[$key]+="${t%% *} "
  CPU[$key]+="${t##* } "
  log "$key: ${t%% *} s (CPU ${t##* } s)"
  # per layer: its install's seconds, and what layerfs spent committing it
  # (from the build's --json report, or from the bare installs' stamps), read
  # after stop so that no parsing is timed
  local name inst com
  while read -r name inst com; do
    L["$key $name install"]+="$inst "
    if [[ -n $com ]]; then L["$key $name commit"]+="$com "; fi
  done < <(layer_times)
}
layer_times() {
  if [[ -s $RUN/last.json ]]; then
    python3 -c 'import json, sys
for l in json.load(open(sys.argv[1]))["layers"]:
    if not l["hit"]: print(l["name"], l["install_seconds"], l["commit_seconds"])' "$RUN/last.json"
  elif [[ -s $RUN/stamps ]]; then
    awk '{printf "%s %.3f\n", $1, $3 - $2}' "$RUN/stamps"
  fi
}
buildah_oci() { B push -q l3 "oci:$W/buildah-oci:l3" >/dev/null || die "buildah push failed"; }

log "layerfs $LFS_REV; $(buildah --version 2>/dev/null | head -1); umoci $(umoci --version 2>/dev/null | awk '{print $NF}'); $(machine)"
for ((r = 1; r <= RUNS; r++)); do
  for t in "${TOOL_LIST[@]}"; do
    fresh
    measure "cold $t" "cold_$t"
    if [[ $t == buildah ]]; then measure "oci buildah" buildah_oci; fi
    if ((REBUILDS)); then
      measure "top $t" "top_$t"
      case $t in kernel|fuse) measure "hits $t" lfs_build "$t" v2 ;; esac
    fi
    if ((r == RUNS)); then check_runs "$t"; fi
  done
done
fresh

# ---------------------------------------------------------------- the report

echo
echo "# bench/distro.sh: a 3-layer Debian 12 image (minbase; + python3; + nginx-light, curl)"
echo "# command: $CMDLINE"
echo "# layerfs $LFS_REV; $(buildah --version 2>/dev/null | head -1); umoci $(umoci --version 2>/dev/null | awk '{print $NF}'); $(machine)"
echo "# $(date -u +%FT%TZ); medians of $RUNS runs (wall seconds), CPU = user+sys of the tool and what it ran"
echo
row "tool" "cold" "cold CPU" "top layer changed" "every layer a hit"
row "---" "---:" "---:" "---:" "---:"
for t in "${TOOL_LIST[@]}"; do
  row "$t" "$(med "cold $t")" "$(median ${CPU["cold $t"]:-})" "$(med "top $t")" "$(med "hits $t")"
done
has_tool buildah && row "buildah: + push to an OCI layout" "$(med "oci buildah")" "" "" ""
echo
echo "every run (s):"
for k in "${!R[@]}"; do echo "  $k: ${R[$k]}"; done | sort
echo
echo "per layer, cold builds (median seconds: the install; layerfs also its commit and store, in the background):"
row "tool" "base install" "python3 install" "web install" "commits (base, python3, web)"
row "---" "---:" "---:" "---:" "---"
for t in "${TOOL_LIST[@]}"; do
  case $t in kernel|fuse|bare|bare-vol) ;; *) continue ;; esac
  # shellcheck disable=SC2086  # space-separated numbers, split on purpose
  row "$t" "$(median ${L["cold $t base install"]:-})" "$(median ${L["cold $t python3 install"]:-})" "$(median ${L["cold $t web install"]:-})" \
    "$(median ${L["cold $t base commit"]:-}) $(median ${L["cold $t python3 commit"]:-}) $(median ${L["cold $t web commit"]:-})"
done
echo
DIV_PLACES=2
ratio() { if has_tool "$1" && has_tool "$2"; then echo "$(div "$(med "$3 $1")" "$(med "$3 $2")")"; else echo "-"; fi; }
echo "ratios of the medians (targets of issue 12, 14):"
row "ratio" "value" "target"
row "---" "---:" "---"
row "cold: kernel / buildah" "$(ratio kernel buildah cold)" "≤ 0.90"
row "cold: kernel / bare-vol (the installs alone, fsyncs skipped as layerfs does)" "$(ratio kernel bare-vol cold)" "≤ 1.10"
row "cold: kernel / bare (the installs alone, with their fsyncs)" "$(ratio kernel bare cold)" ""
row "cold: bare-vol / bare (what skipping the fsyncs is worth)" "$(ratio bare-vol bare cold)" ""
row "cold: fuse / kernel" "$(ratio fuse kernel cold)" "≤ 1.5 (issue 14)"
row "cold: umoci / kernel" "$(ratio umoci kernel cold)" ""
row "top layer changed: kernel / buildah" "$(ratio kernel buildah top)" ""
row "top layer changed: kernel / bare-vol" "$(ratio kernel bare-vol top)" ""
((${#WARNINGS[@]})) && printf '# WARNING: %s\n' "${WARNINGS[@]}"
exit 0
