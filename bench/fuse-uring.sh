#!/bin/bash
# FUSE-over-io_uring vs classic /dev/fuse, measured with libfuse's
# passthrough_hp: what the transport alone gains on this machine, before a
# Go transport for layerfs is built (issue 14; BENCHMARKS.md "FUSE over
# io_uring"). It needs libfuse >= 3.18 built with io_uring support, which
# Debian 12 does not ship: fetch libfuse, then (liburing-dev, meson,
# ninja-build installed)
#   meson setup -Dtests=false -Duseroot=false -Dinitscriptdir= build && ninja -C build
# and point PASSTHROUGH_HP at build/example/passthrough_hp.
#
#   PASSTHROUGH_HP=.../passthrough_hp bench/fuse-uring.sh      # N=5 interleaved runs
#   N=1 PASSTHROUGH_HP=... bench/fuse-uring.sh                 # smoke run
#
# Env knobs:
#   N=5            number of interleaved runs
#   PASSTHROUGH=1  1: FUSE passthrough on in both FUSE configs (default);
#                  0: both get --nopassthrough (passthrough_hp then enables
#                     writeback cache, so data also crosses the transport)
#   QDEPTH=        io_uring queue depth per queue (libfuse default 8)
#   EXTRA_OPTS=    extra passthrough_hp args, applied to BOTH FUSE configs
#   VERIFY=1       before timing, run each FUSE config once under strace -f -c
#                  and print read()/writev()/io_uring_enter counts
#   KEEP=0         1: keep the scratch image and results dir afterwards
#
# Configs per run (order alternates between runs):
#   base    untar straight onto the scratch ext4 (no FUSE)
#   devfuse passthrough_hp, enable_uring=0 -> libfuse falls back to read/write(2)
#   uring   passthrough_hp, enable_uring=1 -> requests over IORING_OP_URING_CMD
# Both FUSE configs get byte-identical passthrough_hp arguments (including
# -o io_uring); only the module parameter differs. Every mount is checked:
# libfuse's FUSE_INIT_STATUS report must say io_uring=on (uring) or
# io_uring=off:not_offered (devfuse), and the daemon must (not) hold
# anon_inode:[io_uring] fds; otherwise the script aborts.
set -euo pipefail
export LC_ALL=C

N=${N:-5}
PASSTHROUGH=${PASSTHROUGH:-1}
QDEPTH=${QDEPTH:-}
EXTRA_OPTS=${EXTRA_OPTS:-}
VERIFY=${VERIFY:-1}
KEEP=${KEEP:-0}

W=${WORK:-/var/tmp/layerfs-uring}
mkdir -p "$W"
PHP=${PASSTHROUGH_HP:-$W/libfuse/build/example/passthrough_hp}
TARBALL=$W/go.tar
IMG=$W/scratch.img
SCRATCH=$W/scratch
MNT=$W/mnt
PARAM=/sys/module/fuse/parameters/enable_uring
OUT=$W/results.$(date +%Y%m%d-%H%M%S)
RES=$OUT/times.tsv

[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
[ -x "$PHP" ] || { echo "missing $PHP (build libfuse first)" >&2; exit 1; }
[ -w "$PARAM" ] || { echo "missing $PARAM (CONFIG_FUSE_IO_URING?)" >&2; exit 1; }

PHP_ARGS=(--foreground -o io_uring)
[ -n "$QDEPTH" ] && PHP_ARGS+=(-o "io_uring_q_depth=$QDEPTH")
[ "$PASSTHROUGH" = 1 ] || PHP_ARGS+=(--nopassthrough)
# shellcheck disable=SC2206
[ -n "$EXTRA_OPTS" ] && PHP_ARGS+=($EXTRA_OPTS)

LOOP=""
DPID=""
cleanup() {
	set +e
	if mountpoint -q "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi
	if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
		kill "$DPID"; wait "$DPID" 2>/dev/null
	fi
	echo 0 >"$PARAM"
	if mountpoint -q "$SCRATCH"; then umount "$SCRATCH"; fi
	[ -n "$LOOP" ] && losetup -d "$LOOP"
	[ "$KEEP" = 1 ] || rm -f "$IMG"
	echo "enable_uring=$(cat "$PARAM") (restored)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
dropcaches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

mkdir -p "$OUT" "$MNT" "$SCRATCH"
if [ ! -s "$TARBALL" ]; then
	GOROOT=$(go env GOROOT 2>/dev/null || /usr/local/go/bin/go env GOROOT)
	tar -C "$GOROOT" -cf "$TARBALL" src
fi
echo "tarball: $TARBALL ($(du -h "$TARBALL" | cut -f1), $(tar -tf "$TARBALL" | wc -l) entries)"

# scratch ext4 on a loop device: the root fs is mounted with discard, keep
# benchmark I/O (and rm -rf of trees) off it.
mountpoint -q "$SCRATCH" && { echo "$SCRATCH already mounted" >&2; exit 1; }
rm -f "$IMG"
fallocate -l 4G "$IMG"
LOOP=$(losetup -f --show "$IMG")
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$LOOP"
mount -o noatime "$LOOP" "$SCRATCH"
echo "scratch: $LOOP on $SCRATCH"

# start_fs CFG SRC LOG: mount passthrough_hp SRC on $MNT (optionally under
# strace), set DPID, verify transport.
start_fs() {
	local cfg=$1 src=$2 log=$3 wrap=("${@:4}")
	if [ "$cfg" = uring ]; then echo 1 >"$PARAM"; else echo 0 >"$PARAM"; fi
	FUSE_INIT_STATUS=1 "${wrap[@]}" "$PHP" "${PHP_ARGS[@]}" "$src" "$MNT" >"$log" 2>&1 &
	DPID=$!
	local i
	for i in $(seq 200); do
		if [ "$(findmnt -n -o FSTYPE --mountpoint "$MNT" 2>/dev/null)" = fuse ] &&
			grep -q 'FUSE_INIT: io_uring=' "$log"; then
			break
		fi
		kill -0 "$DPID" 2>/dev/null || { cat "$log" >&2; echo "daemon died" >&2; exit 1; }
		sleep 0.05
	done
	stat "$MNT" >/dev/null
	local state want nring pid
	state=$(grep -o 'FUSE_INIT: io_uring=[^ ]*' "$log" | head -1 | cut -d= -f2)
	if [ "$cfg" = uring ]; then want=on; else want=off:not_offered; fi
	[ "$state" = "$want" ] || { cat "$log" >&2; echo "$cfg: io_uring=$state, want $want" >&2; exit 1; }
	# under strace, DPID is strace; find the daemon itself
	pid=$DPID
	if [ ${#wrap[@]} -gt 0 ]; then pid=$(pgrep -P "$DPID" -x passthrough_hp | head -1); fi
	nring=$(find /proc/"$pid"/fd -lname 'anon_inode:\[io_uring\]' 2>/dev/null | wc -l)
	if [ "$cfg" = uring ] && [ "$nring" -lt 1 ]; then echo "uring: no io_uring fds in daemon" >&2; exit 1; fi
	if [ "$cfg" = devfuse ] && [ "$nring" -ne 0 ]; then echo "devfuse: daemon has io_uring fds" >&2; exit 1; fi
	if [ "$PASSTHROUGH" = 1 ] && ! grep -q 'FUSE_INIT: FUSE_CAP_PASSTHROUGH$' "$log"; then
		cat "$log" >&2; echo "$cfg: passthrough not negotiated" >&2; exit 1
	fi
	VERIFIED="io_uring=$state ring_fds=$nring"
}

stop_fs() {
	umount "$MNT"
	wait "$DPID" || true
	DPID=""
	echo 0 >"$PARAM"
}

if [ "$VERIFY" = 1 ]; then
	echo "== transport check (strace -f -c, untimed; untar of src/net) =="
	for cfg in devfuse uring; do
		src=$SCRATCH/verify.$cfg
		mkdir "$src"
		start_fs "$cfg" "$src" "$OUT/verify.$cfg.log" \
			strace -f -c -o "$OUT/strace.$cfg" -e trace=read,writev,io_uring_enter
		tar -C "$MNT" -xf "$TARBALL" src/net
		find "$MNT" -printf '%s\n' >/dev/null
		stop_fs
		awk -v c="$cfg" -v v="$VERIFIED" '$NF ~ /^(read|writev|io_uring_enter)$/ {s = s sprintf(" %s=%s", $NF, $4)}
			END {printf "%-8s %s  syscalls:%s\n", c, v, s}' "$OUT/strace.$cfg"
		rm -rf "$src"
	done
fi

printf 'run\tcfg\tuntar\tfind_cold\tfind_warm\tentries\n' >"$RES"
for run in $(seq "$N"); do
	if [ $((run % 2)) = 1 ]; then order="base devfuse uring"; else order="uring devfuse base"; fi
	for cfg in $order; do
		src=$SCRATCH/src.$cfg.$run
		mkdir "$src"
		if [ "$cfg" = base ]; then
			tgt=$src
			VERIFIED="no fuse"
		else
			start_fs "$cfg" "$src" "$OUT/daemon.$cfg.$run.log"
			tgt=$MNT
		fi
		dropcaches
		t0=$(now); tar -C "$tgt" -xf "$TARBALL"; t1=$(now)
		dropcaches
		t2=$(now); n=$(find "$tgt" -xdev | wc -l); t3=$(now)
		find "$tgt" -printf '%s\n' >/dev/null; t4=$(now)
		[ "$cfg" = base ] || stop_fs
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$cfg" "$(elapsed "$t0" "$t1")" \
			"$(elapsed "$t2" "$t3")" "$(elapsed "$t3" "$t4")" "$n" | tee -a "$RES"
		echo "    ($VERIFIED)"
		rm -rf "$src"
		sync
	done
done

echo
echo "== medians over $N run(s) (seconds); passthrough=$PASSTHROUGH args: ${PHP_ARGS[*]} =="
median() { # median of column $2 for cfg $1
	awk -F'\t' -v c="$1" -v k="$2" 'NR > 1 && $2 == c {print $k}' "$RES" | sort -g |
		awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
{
	printf '%-10s %10s %10s %10s\n' cfg untar find_cold find_warm
	for cfg in base devfuse uring; do
		printf '%-10s %10.3f %10.3f %10.3f\n' "$cfg" "$(median "$cfg" 3)" "$(median "$cfg" 4)" "$(median "$cfg" 5)"
	done
	printf '%-10s' uring/dev
	for k in 3 4 5; do
		awk -v u="$(median uring "$k")" -v d="$(median devfuse "$k")" 'BEGIN {printf " %10.3f", (d > 0 ? u / d : 0)}'
	done
	printf '\n'
} | tee "$OUT/summary.txt"
echo "raw: $RES"
