#!/usr/bin/env bash
# The bundled example, offline: `layerfs build` of example/spec.yaml, a
# five-layer image (three packages layers installed through layerfs
# mounts, one with the merged-usr move of /bin, then a directories and a
# files layer from example/rootfs), built twice: cold, then all from the
# layer cache. Run it as root. Output goes to example/out/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out=$here/out
export SOURCE_DATE_EPOCH=1700000000 # same input, same digests, every run

if [ "$(id -u)" != 0 ]; then
	echo "example: run as root" >&2
	exit 2
fi

echo "== building layerfs"
(cd "$root" && go build -o "$out/bin/layerfs" ./cmd/layerfs)
layerfs=$out/bin/layerfs
rm -rf "$out/image" "$out/cache"

echo "== cold build: every layer misses, is installed or copied, committed and cached"
"$layerfs" build "$here/spec.yaml" --cache "$out/cache"

echo "== rebuild: every layer hits; cached layers are mounted and their blobs linked, nothing is copied"
"$layerfs" build "$here/spec.yaml" --cache "$out/cache" --quiet

echo "== the cache"
"$layerfs" cache ls --cache "$out/cache"

echo "== the image, as skopeo sees it"
if command -v skopeo >/dev/null; then
	skopeo inspect "oci:$out/image:app" | sed -n '/"Layers"/,/]/p'
else
	echo "   (skopeo is not installed; run ./scripts/test.sh once to install the tools)"
	cat "$out/image/index.json"; echo
fi
