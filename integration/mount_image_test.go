package integration

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/integration/tree"
)

// miPrune runs `layerfs cache prune --all` and returns what it printed.
func miPrune(t *testing.T, cacheDir string) string {
	t.Helper()
	return arLayerfs(t, "cache", "prune", "--all", "--cache", cacheDir)
}

// TestMountImageEqualsUmoci: `mount --image` of a 3-layer image shows
// exactly what `umoci unpack` makes of it, read-only; its layers are
// cache entries that prune leaves alone while mounted; a second mount, of
// the same image read from a docker-archive: (same diff_ids, other blobs),
// applies nothing and leaves the cache as it was. Under both drivers: a
// kernel mount has no daemon to hold the entries, its record does.
func TestMountImageEqualsUmoci(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"umoci", "setfattr", "fusermount3"} {
		needTool(t, tool)
	}
	for _, driver := range []string{"fuse", "kernel"} {
		t.Run(driver, func(t *testing.T) { mountImageEqualsUmoci(t, driver) })
	}
}

func mountImageEqualsUmoci(t *testing.T, driver string) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "img")
	arImage(t, dir, "v1", "gzip", "none")
	want := unpackUmoci(t, dir, "v1")
	cacheDir := filepath.Join(tmp, "cache")
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}

	m := mcMountDriver(t, mnt, driver, "--image", "oci:"+dir+":v1", "--cache", cacheDir)
	if len(m.Lowers) != 3 || m.Upper != "" {
		t.Fatalf("layerfs mounts shows lowers %v, upper %q: want the 3 layers' entries, no upper", m.Lowers, m.Upper)
	}
	for _, l := range m.Lowers {
		if !strings.HasPrefix(l, cacheDir+"/") || !strings.HasSuffix(l, "-base/rootfs") {
			t.Errorf("lower %s is not a base entry of %s", l, cacheDir)
		}
	}
	got, err := tree.Snapshot(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if diffs := tree.Diff(want, got, tree.Options{}); len(diffs) > 0 {
		t.Errorf("mount --image differs from umoci unpack:\n%s", strings.Join(diffs, "\n"))
	}
	if err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Errorf("writing into the mount: %v, want EROFS", err)
	}
	if out := miPrune(t, cacheDir); strings.TrimSpace(out) != "" {
		t.Errorf("cache prune --all while mounted printed %q: the entries are in use", out)
	}
	if n := len(cacheEntries(t, cacheDir)); n != 3 {
		t.Errorf("cache holds %d entries while mounted, want 3", n)
	}
	mcUmount(t, mnt)

	before := snapshotCache(t, cacheDir)
	entries := cacheEntries(t, cacheDir)
	archive := filepath.Join(tmp, "img.tar")
	arCopy(t, "oci:"+dir+":v1", "docker-archive:"+archive)
	_, stderr, code := arRun(t, "mount", "--driver", driver, "--image", "docker-archive:"+archive, "--cache", cacheDir, mnt)
	if code != 0 {
		t.Fatalf("second mount: exit %d\n%s", code, stderr)
	}
	t.Cleanup(func() { arRun(t, "umount", "--lazy", mnt) })
	if n := strings.Count(stderr, ": in the cache"); n != 3 || strings.Contains(stderr, "applied") {
		t.Errorf("second mount's log, want 3 layers found in the cache and none applied:\n%s", stderr)
	}
	if diffs := tree.Diff(before, snapshotCache(t, cacheDir), tree.Options{}); len(diffs) > 0 || !slices.Equal(entries, cacheEntries(t, cacheDir)) {
		t.Errorf("the second mount changed the cache:\n%s", strings.Join(diffs, "\n"))
	}
	if got, err = tree.Snapshot(mnt); err != nil {
		t.Fatal(err)
	}
	if diffs := tree.Diff(want, got, tree.Options{}); len(diffs) > 0 {
		t.Errorf("mount --image of the docker-archive differs from umoci unpack:\n%s", strings.Join(diffs, "\n"))
	}
	mcUmount(t, mnt)
	if out := miPrune(t, cacheDir); strings.Count(out, "\n") != 3 {
		t.Errorf("cache prune --all after unmounting printed %q, want the 3 entries removed", out)
	}
}

// TestMountImageWithUpper: an image mounted under a writable upper takes
// writes into the upper alone, and `layerfs commit` of that upper on the
// image gives the layer of those changes.
func TestMountImageWithUpper(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"setfattr", "fusermount3"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "img")
	arImage(t, dir, "v1", "gzip", "gzip")
	cacheDir := filepath.Join(tmp, "cache")
	mnt, upper := filepath.Join(tmp, "mnt"), filepath.Join(tmp, "upper")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mcMount(t, mnt, "--image", "oci:"+dir+":v1", "--cache", cacheDir, "--upper", upper)
	runScript(t, mnt, "through the mount", `rm etc/two; echo four > etc/four; echo more >> etc/hello`)
	mcUmount(t, mnt)
	r := layerfsCommit(t, "--upper", upper, "--base", "oci:"+dir+":v1", "--image", "oci:"+dir+":v2")
	names := layerTarNames(t, dir, r.Digest)
	slices.Sort(names)
	if want := []string{"etc", "etc/.wh.two", "etc/four", "etc/hello"}; !slices.Equal(names, want) {
		t.Errorf("layer of the changes holds %v, want %v", names, want)
	}
	// The cache entries are untouched by the writes.
	for _, e := range cacheEntries(t, cacheDir) {
		if _, err := os.Stat(filepath.Join(cacheDir, e, "rootfs", "etc", "four")); err == nil {
			t.Errorf("entry %s got a write", e)
		}
	}
}

// TestMountImageBadInput: a missing image, --image flags without
// --image, and a bad platform are exit 2 with one line, and mount nothing.
func TestMountImageBadInput(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	mnt := filepath.Join(tmp, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	missing := "oci:" + filepath.Join(tmp, "missing") + ":v1"
	arBadInput(t, []string{missing}, "mount", "--image", missing, "--cache", filepath.Join(tmp, "cache"), mnt)
	arBadInput(t, []string{"--cache"}, "mount", "--cache", filepath.Join(tmp, "cache"), mnt)
	arBadInput(t, []string{"--platform"}, "mount", "--platform", "linux/arm64", mnt)
	arBadInput(t, []string{"linux/"}, "mount", "--image", missing, "--platform", "linux/", mnt)
	arBadInput(t, []string{"no transport"}, "mount", "--image", "nothing", mnt)
	if _, ok := mcFind(t, mnt); ok {
		t.Errorf("a refused mount is registered")
	}
}
