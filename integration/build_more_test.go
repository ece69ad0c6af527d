package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// unpackUmoci rebuilds oci:dir:tag's rootfs with umoci.
func unpackUmoci(t *testing.T, dir, tag string) tree.Tree {
	t.Helper()
	testenv.NeedTool(t, "umoci")
	work := t.TempDir()
	root, cleanup, err := appliers.Umoci(context.Background(), dir, tag, work)
	if err != nil {
		t.Fatalf("umoci unpack %s:%s: %v", dir, tag, err)
	}
	defer cleanup()
	tr, err := tree.Snapshot(root)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// TestBuildSingleMode: mode single gives one layer above the base whose
// unpacked rootfs equals the multi-layer image's.
func TestBuildSingleMode(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	multi := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", t.TempDir(), "--json", "--image", "oci:"+f.dir+"/multi:app")
	single := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", t.TempDir(), "--json", "--image", "oci:"+f.dir+"/single:app", "--mode", "single")
	for _, r := range []buildRun{multi, single} {
		if r.err != nil {
			t.Fatalf("build: %v\n%s", r.err, r.stderr)
		}
	}
	if len(single.result.Layers) != 1 || single.result.Layers[0].Name != "single" {
		t.Fatalf("single mode: layers %+v, want one", single.result.Layers)
	}
	if d, _ := imageLayers(t, f.dir+"/single", "app"); len(d) != 1 {
		t.Fatalf("single-mode image has %d layers, want 1", len(d))
	}
	// busybox is installed once in single mode too: the shell step sees
	// the base step's files in the same mount.
	if n := countLines(single.stderr, "INSTALLED"); n != 4 {
		t.Errorf("single mode installed %d packages, want 4:\n%s", n, single.stderr)
	}
	want := unpackUmoci(t, f.dir+"/multi", "app")
	got := unpackUmoci(t, f.dir+"/single", "app")
	if diffs := tree.Diff(want, got, tree.Options{}); len(diffs) > 0 {
		t.Errorf("single-mode rootfs differs from the multi-layer one:\n%s", strings.Join(diffs, "\n"))
	}
}

// TestBuildCopyLayers: directories, files and host layers copy only what
// the layers below lack, with metadata, and the --layer form with
// --rootfs builds the same image as the spec.
func TestBuildCopyLayers(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	rootfs := filepath.Join(f.dir, "rootfs")
	runScript(t, f.dir, "rootfs", `
mkdir -p rootfs/usr/share/app/data rootfs/etc rootfs/var/cache/app
echo app > rootfs/usr/share/app/data/a.txt
ln rootfs/usr/share/app/data/a.txt rootfs/usr/share/app/data/a-link.txt
ln -s data/a.txt rootfs/usr/share/app/current
chmod 0750 rootfs/usr/share/app/data
chown 123:456 rootfs/usr/share/app/data/a.txt
setfattr -n user.app -v yes rootfs/usr/share/app/data/a.txt
echo 'conf' > rootfs/etc/app.conf
echo 'from the rootfs, not the base' > rootfs/etc/os-release
echo cached > rootfs/var/cache/app/junk
echo host > host.txt
`)
	spec := fmt.Sprintf(`image: oci:%s/copy:app
install: ./tinypkg
exclude: ['/var/cache/**']
layers:
  - {name: base, type: packages, packages: [base-files, busybox]}
  - {name: app, type: directories, source: rootfs, paths: [/usr/share/app, /var/cache/app]}
  - {name: conf, type: files, source: rootfs, paths: [/etc/app.conf, /etc/os-release]}
  - {name: extra, type: host, copy: ['host.txt:/opt/extra/host.txt']}
`, f.dir)
	if err := os.WriteFile(filepath.Join(f.dir, "copy.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cacheDir := t.TempDir()
	r := layerfsBuild(ctx, t, f.dir, env, "copy.yaml", "--cache", cacheDir, "--json")
	if r.err != nil {
		t.Fatalf("build: %v\n%s", r.err, r.stderr)
	}
	digests, _ := imageLayers(t, f.dir+"/copy", "app")
	if len(digests) != 4 {
		t.Fatalf("%d layers, want 4", len(digests))
	}
	app := layerTarNames(t, f.dir+"/copy", digests[1])
	for _, want := range []string{"usr", "usr/share", "usr/share/app", "usr/share/app/data/a.txt", "usr/share/app/data/a-link.txt", "usr/share/app/current", "var/cache"} {
		if !contains(app, want) {
			t.Errorf("app layer lacks %s: %v", want, app)
		}
	}
	if contains(app, "var/cache/app/junk") || contains(app, "var/cache/app") {
		t.Errorf("app layer holds excluded /var/cache/**: %v", app)
	}
	conf := layerTarNames(t, f.dir+"/copy", digests[2])
	if !contains(conf, "etc/app.conf") || contains(conf, "etc/os-release") {
		t.Errorf("conf layer must add etc/app.conf and not etc/os-release, which the base has: %v", conf)
	}
	extra := layerTarNames(t, f.dir+"/copy", digests[3])
	if !contains(extra, "opt/extra/host.txt") {
		t.Errorf("extra layer: %v", extra)
	}
	got := unpackUmoci(t, f.dir+"/copy", "app")
	src, err := tree.Snapshot(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/share/app/data", "usr/share/app/data/a.txt", "usr/share/app/current"} {
		w, g := src[p], got[p]
		if g == nil || w.Mode != g.Mode || w.Uid != g.Uid || w.Gid != g.Gid || w.Digest != g.Digest || w.Link != g.Link || string(w.Xattrs["user.app"]) != string(g.Xattrs["user.app"]) {
			t.Errorf("%s: image has %+v, rootfs %+v", p, g, w)
		}
	}
	if g := got["etc/os-release"]; g == nil || g.Size != int64(len("ID=layerfs-test\n")) {
		t.Errorf("etc/os-release is not the base's: %+v", g)
	}

	// The Yocto form: the same layers by --layer and --rootfs.
	r2 := layerfsBuild(ctx, t, f.dir, env, "--cache", cacheDir, "--json", "--image", "oci:"+f.dir+"/flags:app",
		"--install", "./tinypkg", "--rootfs", rootfs,
		"--layer", "base:packages:base-files+busybox",
		"--layer", "app:directories:/usr/share/app+/var/cache/app",
		"--layer", "conf:files:/etc/app.conf+/etc/os-release",
		"--layer", "extra:host:host.txt:/opt/extra/host.txt")
	if r2.err != nil {
		t.Fatalf("build with --layer: %v\n%s", r2.err, r2.stderr)
	}
	got2 := unpackUmoci(t, f.dir+"/flags", "app")
	delete(got, "var/cache/app")
	delete(got2, "var/cache/app")
	delete(got2, "var/cache/app/junk")
	if diffs := tree.Diff(got, got2, tree.Options{}); len(diffs) > 0 {
		t.Errorf("--layer image differs from the spec's (beyond the excluded cache):\n%s", strings.Join(diffs, "\n"))
	}
}

// TestCacheCLI: ls, explain, verify quarantining a corrupt entry, prune
// sparing an entry a live mount uses, rm by prefix.
func TestCacheCLI(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	cacheDir := t.TempDir()
	r := f.build(t, cacheDir)
	cache := func(args ...string) (string, error) {
		cmd := exec.Command(layerfsBin, append([]string{"cache"}, append(args, "--cache", cacheDir)...)...)
		cmd.Dir = f.dir
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := cache("ls")
	if err != nil || countLines(out, "packages") != 3 {
		t.Errorf("cache ls: %v\n%s", err, out)
	}
	out, err = cache("explain", "spec.yaml")
	if err != nil || countLines(out, ": hit") != 3 {
		t.Errorf("cache explain: %v\n%s", err, out)
	}

	// Corrupt the app layer's rootfs: verify reports and quarantines it.
	app := r.result.Layers[2]
	appDir := filepath.Join(cacheDir, app.Key[:16]+"-app")
	if err := os.WriteFile(filepath.Join(appDir, "rootfs/usr/share/app/hello.txt"), []byte("tampered\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = cache("verify")
	if err == nil || countLines(out, "CORRUPT") != 1 || !strings.Contains(out, app.Key[:16]+"-app") || countLines(out, "ok") != 2 {
		t.Errorf("cache verify: %v\n%s", err, out)
	}
	if _, err := os.Stat(appDir); err == nil {
		t.Errorf("corrupt entry %s is still in place", appDir)
	}
	// The next build rebuilds the app layer.
	if r2 := f.build(t, cacheDir); r2.result.Misses != 1 {
		t.Errorf("after quarantine: %d misses, want 1\n%s", r2.result.Misses, r2.stderr)
	}

	// A live mount of the base entry keeps it through prune --all.
	base := filepath.Join(cacheDir, r.result.Layers[0].Key[:16]+"-base")
	mnt := t.TempDir()
	if out, err := exec.Command(layerfsBin, "mount", "--lower", base+"/rootfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v\n%s", err, out)
	}
	defer exec.Command(layerfsBin, "umount", mnt).Run()
	out, err = cache("prune", "--all")
	if err != nil {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	if _, err := os.Stat(base); err != nil {
		t.Errorf("prune removed %s, which a live mount uses:\n%s", base, out)
	}
	if n := len(cacheEntries(t, cacheDir)); n != 1 {
		t.Errorf("after prune --all %d entries remain, want the mounted one: %v\n%s", n, cacheEntries(t, cacheDir), out)
	}
	if out, err := exec.Command(layerfsBin, "umount", mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v\n%s", err, out)
	}
	out, err = cache("rm", r.result.Layers[0].Key[:6])
	if err != nil || !strings.Contains(out, "removed") {
		t.Errorf("cache rm: %v\n%s", err, out)
	}
	if n := len(cacheEntries(t, cacheDir)); n != 0 {
		t.Errorf("entries left: %v", cacheEntries(t, cacheDir))
	}
	if _, err := cache("rm", "zzzz"); err == nil {
		t.Errorf("cache rm of an unknown key succeeded")
	}
}

// TestBuildAndCommitToArchives: build and commit write any transport; the
// images read back have the same config and layers as the oci: ones.
func TestBuildAndCommitToArchives(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cacheDir := t.TempDir()
	ociRun := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", cacheDir, "--json", "--image", "oci:"+f.dir+"/o:app")
	darRun := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", cacheDir, "--json", "--image", "docker-archive:"+f.dir+"/app.tar:test/app:v1")
	for _, r := range []buildRun{ociRun, darRun} {
		if r.err != nil {
			t.Fatalf("build: %v\n%s", r.err, r.stderr)
		}
	}
	// The archive read back has the oci: image's config, byte for byte.
	mustRun(t, "", layerfsBin, "copy", "docker-archive:"+f.dir+"/app.tar:test/app:v1", "oci:"+f.dir+"/back:app")
	cfgOf := func(dir string) string {
		out := mustRun(t, "", "skopeo", "inspect", "--config", "--raw", "oci:"+dir+":app")
		return strings.TrimSpace(out)
	}
	testenv.NeedTool(t, "skopeo")
	if a, b := cfgOf(f.dir+"/o"), cfgOf(f.dir+"/back"); a != b {
		t.Errorf("docker-archive build's config differs from the oci: build's:\n%s\n%s", a, b)
	}

	// commit --image oci-archive: on top of the oci: build.
	up := t.TempDir()
	if err := os.WriteFile(filepath.Join(up, "added.txt"), []byte("added\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "", layerfsBin, "commit", "--upper", up, "--base", "oci:"+f.dir+"/o:app", "--image", "oci-archive:"+f.dir+"/app.oci.tar:next")
	// Appending to the archive (no --base) adds one more layer.
	mustRun(t, "", layerfsBin, "commit", "--upper", up, "--image", "oci-archive:"+f.dir+"/app.oci.tar:next")
	// A commit to an archive that does not exist yet starts the image.
	mustRun(t, "", layerfsBin, "commit", "--upper", up, "--image", "docker-archive:"+f.dir+"/new.tar:test/new:v1")
	mustRun(t, "", layerfsBin, "copy", "docker-archive:"+f.dir+"/new.tar", "oci:"+f.dir+"/new:new")
	if d, _ := imageLayers(t, f.dir+"/new", "new"); len(d) != 1 {
		t.Errorf("a commit to a new archive gave %d layers, want 1", len(d))
	}
	mustRun(t, "", layerfsBin, "copy", "oci-archive:"+f.dir+"/app.oci.tar:next", "oci:"+f.dir+"/next:next")
	if d, _ := imageLayers(t, f.dir+"/next", "next"); len(d) != 5 {
		t.Errorf("after two commits to the archive it has %d layers, want 3+2", len(d))
	}
}
