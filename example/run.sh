#!/usr/bin/env bash
# The bundled example, offline: a base image from a plain rootfs, then a
# package-manager-style change made through a real overlayfs mount (with
# the merged-usr move of /bin into /usr/bin), committed as one layer.
# Run it as root (overlayfs mounts need root). Output goes to example/out/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=$here/out
export SOURCE_DATE_EPOCH=1700000000 # same input, same digests, every run

if [ "$(id -u)" != 0 ]; then
	echo "example: run as root (it mounts overlayfs)" >&2
	exit 2
fi
mnt=
cleanup() { [ -z "$mnt" ] || umount "$mnt" 2>/dev/null || true; }
trap cleanup EXIT

echo "== building layerfs"
(cd "$root" && go build -o "$out/bin/layerfs" ./cmd/layerfs)
layerfs=$out/bin/layerfs
rm -rf "$out/base" "$out/upper" "$out/work" "$out/merged" "$out/image"
mkdir -p "$out/base" "$out/upper" "$out/work" "$out/merged"

echo "== base layer: example/rootfs plus a static busybox in a real /bin"
cp -a "$here/rootfs/." "$out/base/"
mkdir -p "$out/base/bin" "$out/base/usr/bin"
if [ -x /bin/busybox ]; then
	cp /bin/busybox "$out/base/bin/busybox"
	ln -s busybox "$out/base/bin/sh"
else
	printf '#!/bin/sh\necho stand-in for busybox\n' > "$out/base/bin/busybox"
	chmod 755 "$out/base/bin/busybox"
	echo "   (busybox-static is not installed; using a stand-in script)"
fi
"$layerfs" commit --upper "$out/base" --image "oci:$out/image:base" \
	--cmd /bin/sh --label org.opencontainers.image.title=layerfs-example

echo "== an install through overlayfs: merged-usr, a new file, a deleted one"
mnt=$out/merged
mount -t overlay overlay -o "lowerdir=$out/base,upperdir=$out/upper,workdir=$out/work,redirect_dir=off,metacopy=off,index=off" "$mnt"
(
	cd "$mnt"
	mv bin/* usr/bin/
	rm -rf bin
	ln -s usr/bin bin
	echo "installed by the example" > usr/share/doc/example/INSTALLED
	rm etc/motd
)
umount "$mnt"
mnt=

echo "== the upper holds only the delta:"
(cd "$out/upper" && find . -mindepth 1 | sort | sed 's/^/   /')

echo "== commit it as one layer on top of the base"
"$layerfs" commit --upper "$out/upper" --lower "$out/base" \
	--base "oci:$out/image:base" --image "oci:$out/image:app" \
	--env APP=example --history "merged-usr and an install"

echo "== the image, as skopeo sees it"
if command -v skopeo >/dev/null; then
	skopeo inspect "oci:$out/image:app"
else
	echo "   (skopeo is not installed; run ./scripts/test.sh once to install the tools)"
	cat "$out/image/index.json"; echo
fi
