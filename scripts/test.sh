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

# run_tests NAME DIR [ENV=V...] -- GO-TEST-ARGS...: go test in DIR with the
# environment given, its log in $logdir; a failure, or no test run, sets status.
run_tests() {
	local name=$1 dir=$2 log rc passed failed
	shift 2
	local env=()
	while [ "$1" != "--" ]; do env+=("$1"); shift; done
	shift
	echo "== go test ($name)"
	log=$logdir/$(echo "$name" | tr -c 'A-Za-z0-9\n' _).log
	set +e
	(cd "$dir" && env "${env[@]}" go test -count=1 -timeout 30m -v "$@" >"$log" 2>&1)
	rc=$?
	set -e
	grep -E '^(--- FAIL|FAIL|ok|panic:|\s+--- FAIL)' "$log" || true
	passed=$(grep -c -E '^\s*--- PASS' "$log" || true)
	failed=$(grep -c -E '^\s*--- FAIL' "$log" || true)
	echo "   $name: $passed passed, $failed failed (log: $log)"
	if [ "$rc" != 0 ]; then
		echo "== failures in $name:"
		grep -E -B2 -A25 '^\s*--- FAIL' "$log" | head -300 || tail -50 "$log"
		status=1
	fi
	if [ "$passed" = 0 ]; then
		echo "== $name ran no tests: that is a failure"
		status=1
	fi
}

for m in $modules; do
	echo "== go vet, go mod tidy ($m)"
	(cd "$m" && go vet ./...)
	# tidy -diff prints what tidy would change and fails; it changes nothing
	(cd "$m" && go mod tidy -diff) || { echo "go.mod of $m is not tidy: run go mod tidy there"; exit 1; }
	run_tests "$m" "$m" -- ./...
done
# The build tests once more with every install on FUSE: as root, the run above
# built on the kernel's overlayfs (--driver auto). Rootless and fake-root builds
# ran on FUSE there already.
run_tests "./integration, the build tests with LAYERFS_DRIVER=fuse" "$top/integration" LAYERFS_DRIVER=fuse -- \
	-run '^(TestBuild|TestCacheCLI|TestFromEnv|TestNested|TestRegistryCommitAndBuild|TestSharedCache|TestYocto)' .
cd "$top"
exit $status
