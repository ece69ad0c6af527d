#!/usr/bin/env bash
# The whole test suite, as CI runs it: from a fresh clone on a fresh
# Debian 12 machine, as root. It installs the Debian packages the tests
# drive (only those missing), checks formatting and vet, and runs the tests
# of every Go module in the repository, failing any module that ran none.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

# With CI set, a test that misses a tool fails instead of skipping.
export CI=${CI:-1}

packages=(
	fuse3 fuse-overlayfs umoci skopeo podman runc docker-registry
	busybox-static pigz attr acl libcap2-bin uidmap tar git debootstrap
	pseudo fakeroot
)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing ${missing[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

modules=$(find . -name go.mod -not -path './vendor/*' -not -path '*/testdata/*' -printf '%h\n' | sort)

echo "== gofmt"
unformatted=$(gofmt -l . | grep -v '^vendor/' || true)
if [ -n "$unformatted" ]; then
	echo "gofmt -l lists:"; echo "$unformatted"; exit 1
fi

status=0
logdir=$(mktemp -d)
for m in $modules; do
	echo "== go vet ($m)"
	(cd "$m" && go vet ./...)
	echo "== go test ($m)"
	log=$logdir/$(echo "$m" | tr / _).log
	set +e
	(cd "$m" && go test -count=1 -timeout 30m -v ./... >"$log" 2>&1)
	rc=$?
	set -e
	grep -E '^(--- FAIL|FAIL|ok|panic:|\s+--- FAIL)' "$log" || true
	passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
	failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
	echo "   $m: $passed passed, $failed failed (log: $log)"
	if [ "$rc" != 0 ]; then
		echo "== failures in $m:"
		grep -E -B2 -A25 '^\s*--- FAIL' "$log" | head -300 || tail -50 "$log"
		status=1
	fi
	if [ "$passed" = 0 ]; then
		echo "== $m ran no tests: that is a failure"
		status=1
	fi
done
# The build tests once more with every install on FUSE: as root, the run above
# built on the kernel's overlayfs (--driver auto). Rootless and fake-root builds
# ran on FUSE there already.
builds='^(TestBuild|TestCacheCLI|TestFromEnv|TestNested|TestRegistryCommitAndBuild|TestSharedCache|TestYocto)'
echo "== go test (./integration, the build tests with LAYERFS_DRIVER=fuse)"
log=$logdir/integration-fuse.log
set +e
(cd "$top/integration" && LAYERFS_DRIVER=fuse go test -count=1 -timeout 30m -v -run "$builds" . >"$log" 2>&1)
rc=$?
set -e
grep -E '^(--- FAIL|FAIL|ok|panic:|\s+--- FAIL)' "$log" || true
passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
echo "   ./integration (builds on FUSE): $passed passed, $failed failed (log: $log)"
if [ "$rc" != 0 ]; then
	echo "== failures in ./integration (builds on FUSE):"
	grep -E -B2 -A25 '^\s*--- FAIL' "$log" | head -300 || tail -50 "$log"
	status=1
fi
if [ "$passed" = 0 ]; then
	echo "== the build tests on FUSE ran no tests: that is a failure"
	status=1
fi
cd "$top"
exit $status
