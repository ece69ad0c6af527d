#!/usr/bin/env bash
# The bundled example, offline: a base image from a plain rootfs, then a
# package-manager-style change made through a layerfs mount (with the
# merged-usr move of /bin into /usr/bin), committed as one layer.
# Run it as root. Output goes to example/out/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=$here/out
export SOURCE_DATE_EPOCH=1700000000 # same input, same digests, every run

if [ "$(id -u)" != 0 ]; then
	echo "example: run as root" >&2
	exit 2
fi
mnt=
cleanup() { [ -z "$mnt" ] || "$layerfs" umount --lazy "$mnt" 2>/dev/null || true; }
trap cleanup EXIT

echo "== building layerfs"
(cd "$root" && go build -o "$out/bin/layerfs" ./cmd/layerfs)
layerfs=$out/bin/layerfs
"$layerfs" umount --lazy "$out/merged" 2>/dev/null || true
rm -rf "$out/base" "$out/upper" "$out/.upper.layerfs-work" "$out/merged" "$out/image"
mkdir -p "$out/base" "$out/merged"

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

echo "== an install through a layerfs mount: merged-usr, a new file, a deleted one"
mnt=$out/merged
"$layerfs" mount --lower "$out/base" --upper "$out/upper" "$mnt"
"$layerfs" mounts
(
	cd "$mnt"
	mv bin/* usr/bin/
	rm -rf bin
	ln -s usr/bin bin
	echo "installed by the example" > usr/share/doc/example/INSTALLED
	rm etc/motd
)
"$layerfs" umount "$mnt"
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
