package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// A tiny package manager for build tests: packages are tarballs in
// pkgs/, the database is /var/lib/tinypkg in the root, and a package
// already installed in a lower layer is not installed again.
const tinypkg = `#!/bin/sh
set -eu
# The mount's connection must never leak into the install: a killed build
# would leave this process waiting on its mount forever.
if ls -l /proc/$$/fd/ | grep -q /dev/fuse; then echo "tinypkg: /dev/fuse is open in the install" >&2; exit 9; fi
db="$LAYERFS_ROOT/var/lib/tinypkg"
mkdir -p "$db"
for p in $LAYERFS_PACKAGES; do
	if [ -e "$db/$p" ]; then
		echo "tinypkg: $p is already installed"
		continue
	fi
	[ -e "pkgs/$p.tar" ] || { echo "tinypkg: no package $p" >&2; exit 4; }
	tar -xf "pkgs/$p.tar" -C "$LAYERFS_ROOT"
	cat "pkgs/$p.version" > "$db/$p"
	echo "INSTALLED $LAYERFS_LAYER $p"
done
`

// buildFixture is a directory with tinypkg, its packages and a spec for
// the 3-layer image base (base-files, busybox), shell (busybox again, as
// a dependency, and bash) and app.
type buildFixture struct {
	t   *testing.T
	dir string
}

func newBuildFixture(t *testing.T) *buildFixture {
	t.Helper()
	testenv.NeedRoot(t)
	f := &buildFixture{t: t, dir: t.TempDir()}
	if err := os.MkdirAll(filepath.Join(f.dir, "pkgs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "tinypkg"), []byte(tinypkg), 0o755); err != nil {
		t.Fatal(err)
	}
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		testenv.NeedTool(t, "busybox")
		busybox, _ = exec.LookPath("busybox")
	}
	f.pkg("base-files", "3.0", map[string]string{
		"etc/os-release": "ID=layerfs-test\n",
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":      "root:x:0:\n",
	}, nil)
	f.pkg("busybox", "1.36.1", nil, func(root string) {
		mustRun(t, "", "mkdir", "-p", root+"/bin")
		mustRun(t, "", "cp", busybox, root+"/bin/busybox")
		mustRun(t, "", "ln", "-s", "busybox", root+"/bin/sh")
	})
	f.setBash("5.2")
	f.pkg("app", "1.0", map[string]string{
		"usr/share/app/hello.txt": "hello from the app layer\n",
	}, nil)
	f.writeSpec("oci:"+filepath.Join(f.dir, "out")+":app", "")
	return f
}

// setBash makes the bash package at a version: a script that says it.
func (f *buildFixture) setBash(version string) {
	f.pkg("bash", version, map[string]string{
		"usr/bin/bash-version": "#!/bin/sh\necho bash " + version + "\n",
	}, nil)
	f.version("bash", version)
}

func (f *buildFixture) version(pkg, v string) {
	spec := filepath.Join(f.dir, "spec.yaml")
	data, err := os.ReadFile(spec)
	if err != nil {
		return // written later with the default versions
	}
	re := regexp.MustCompile(pkg + `: "[^"]*"`)
	if err := os.WriteFile(spec, re.ReplaceAll(data, []byte(pkg+`: "`+v+`"`)), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// writeFiles writes files (path below root → content) with their parents;
// a script ("#!") is executable.
func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasPrefix(content, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
}

func (f *buildFixture) pkg(name, version string, files map[string]string, more func(root string)) {
	t := f.t
	root := t.TempDir()
	writeFiles(t, root, files)
	if more != nil {
		more(root)
	}
	mustRun(t, "", "tar", "--numeric-owner", "--owner=0", "--group=0", "-cf", filepath.Join(f.dir, "pkgs", name+".tar"), "-C", root, ".")
	if err := os.WriteFile(filepath.Join(f.dir, "pkgs", name+".version"), []byte(version+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *buildFixture) writeSpec(image, base string) {
	spec := fmt.Sprintf(`image: %s
machine: qemux86-64
arch: amd64
install: ./tinypkg
versions: {base-files: "3.0", busybox: "1.36.1", bash: "5.2", app: "1.0"}
layers:
  - {name: base,  type: packages, packages: [base-files, busybox]}
  - {name: shell, type: packages, packages: [busybox, bash]}
  - {name: app,   type: packages, packages: [app]}
config:
  cmd: [/bin/sh, -c, "cat /usr/share/app/hello.txt; bash-version"]
  env: {PATH: "/usr/bin:/bin", APP: "test"}
  labels: {org.opencontainers.image.title: layerfs-build-test}
`, image)
	if base != "" {
		spec = "base: " + base + "\n" + spec
	}
	if err := os.WriteFile(filepath.Join(f.dir, "spec.yaml"), []byte(spec), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// buildRun is one `layerfs build`.
type buildRun struct {
	stdout, stderr string
	err            error
	code           int
	result         buildResult
}

type buildResult struct {
	Image    string `json:"image"`
	Manifest string `json:"manifest"`
	Hits     int    `json:"hits"`
	Misses   int    `json:"misses"`
	Layers   []struct {
		Name   string `json:"name"`
		Key    string `json:"key"`
		Hit    bool   `json:"hit"`
		Digest string `json:"digest"`
		Driver string `json:"driver"`
	} `json:"layers"`
}

func layerfsBuild(ctx context.Context, t *testing.T, dir string, env []string, args ...string) buildRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, layerfsBin, append([]string{"build"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	r := buildRun{err: cmd.Run()}
	r.stdout, r.stderr = stdout.String(), stderr.String()
	if r.err != nil {
		if xe, ok := r.err.(*exec.ExitError); ok {
			r.code = xe.ExitCode()
		}
	}
	for _, a := range args {
		if a == "--json" && r.err == nil {
			if err := json.Unmarshal(stdout.Bytes(), &r.result); err != nil {
				t.Fatalf("layerfs build --json: %v\n%s", err, r.stdout)
			}
		}
	}
	// A run of the suite with LAYERFS_DRIVER set builds every layer on
	// that driver, unless a test asks for another.
	if want := os.Getenv("LAYERFS_DRIVER"); want != "" && !slices.Contains(args, "--driver") && !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "LAYERFS_DRIVER=") }) {
		for _, l := range r.result.Layers {
			if !l.Hit && l.Driver != want {
				t.Errorf("LAYERFS_DRIVER=%s, but layer %s was built on %q", want, l.Name, l.Driver)
			}
		}
	}
	return r
}

func (f *buildFixture) build(t *testing.T, cacheDir string, args ...string) buildRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := layerfsBuild(ctx, t, f.dir, nil, append([]string{"spec.yaml", "--cache", cacheDir, "--json"}, args...)...)
	if r.err != nil {
		t.Fatalf("layerfs build: %v\nstderr:\n%s", r.err, r.stderr)
	}
	return r
}

func mustRun(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// imageLayers reads the manifest of oci:dir:tag with go-containerregistry.
func imageLayers(t *testing.T, dir, tag string) (digests []string, manifest string) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] != tag {
			continue
		}
		img, err := p.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			d, err := l.Digest()
			if err != nil {
				t.Fatal(err)
			}
			digests = append(digests, d.String())
		}
		return digests, m.Digest.String()
	}
	t.Fatalf("oci:%s has no tag %s", dir, tag)
	return nil, ""
}

func countLines(s, sub string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			n++
		}
	}
	return n
}

// cacheEntries lists the entry dirs of a cache.
func cacheEntries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			names = append(names, e.Name())
		}
	}
	return names
}

// TestBuildMultiLayer: three packages layers give exactly three layers,
// the image runs in podman, and a rebuild is all hits, the same manifest,
// with blobs shared with the cache by inode and the cache untouched.
func TestBuildMultiLayer(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	cacheDir := t.TempDir()
	first := f.build(t, cacheDir)
	if first.result.Misses != 3 || first.result.Hits != 0 {
		t.Fatalf("first build: %d hits, %d misses, want 0 and 3\n%s", first.result.Hits, first.result.Misses, first.stderr)
	}
	for _, want := range []string{"OCI Cache MISS: Layer 'base' (base:base-files=3.0 busybox=1.36.1)",
		"OCI Cache MISS: Layer 'shell' (shell:bash=5.2 busybox=1.36.1)",
		"OCI: Pre-installed packages for 3 layers (cache: 0 hits, 3 misses)"} {
		if !strings.Contains(first.stderr, want) {
			t.Errorf("first build's log lacks %q:\n%s", want, first.stderr)
		}
	}
	// busybox came with the base layer; the shell layer did not install it again.
	if n := countLines(first.stderr, "INSTALLED"); n != 4 {
		t.Errorf("%d packages installed, want 4 (busybox once):\n%s", n, first.stderr)
	}
	out := filepath.Join(f.dir, "out")
	digests, manifest := imageLayers(t, out, "app")
	if len(digests) != 3 {
		t.Fatalf("image has %d layers, want 3", len(digests))
	}
	if manifest != first.result.Manifest {
		t.Errorf("index names manifest %s, build reported %s", manifest, first.result.Manifest)
	}
	shell := layerTarNames(t, out, digests[1])
	for _, n := range shell {
		if strings.Contains(n, "busybox") {
			t.Errorf("the shell layer holds %s, which the base layer already has", n)
		}
	}
	if !contains(shell, "usr/bin/bash-version") {
		t.Errorf("the shell layer lacks usr/bin/bash-version: %v", shell)
	}

	testenv.NeedTool(t, "podman")
	testenv.NeedTool(t, "skopeo")
	got, err := heavyPodmanRun(t, out, "app", "layerfs-build")
	if err != nil || !strings.Contains(got, "hello from the app layer") || !strings.Contains(got, "bash 5.2") {
		t.Fatalf("podman run of the built image: %v\n%s", err, got)
	}

	before := snapshotCache(t, cacheDir)
	second := f.build(t, cacheDir)
	if second.result.Hits != 3 || second.result.Misses != 0 {
		t.Fatalf("second build: %d hits, %d misses, want 3 and 0\n%s", second.result.Hits, second.result.Misses, second.stderr)
	}
	if !strings.Contains(second.stderr, "OCI: Pre-installed packages for 3 layers (cache: 3 hits, 0 misses)") ||
		countLines(second.stderr, "OCI Cache HIT: Layer '") != 3 {
		t.Errorf("second build's log:\n%s", second.stderr)
	}
	if countLines(second.stderr, "INSTALLED") != 0 {
		t.Errorf("the second build installed packages:\n%s", second.stderr)
	}
	if second.result.Manifest != first.result.Manifest {
		t.Errorf("rebuild manifest %s, first %s", second.result.Manifest, first.result.Manifest)
	}
	if diffs := tree.Diff(before, snapshotCache(t, cacheDir), tree.Options{}); len(diffs) > 0 {
		t.Errorf("the rebuild changed the cache:\n%s", strings.Join(diffs, "\n"))
	}
	// Nothing copied: each output blob is the cache entry's blob.
	for _, l := range second.result.Layers {
		blob := filepath.Join(out, "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:"))
		entry := filepath.Join(cacheDir, l.Key[:16]+"-"+l.Name, "blob")
		if !sameInode(t, blob, entry) {
			t.Errorf("layer %s: output blob %s is not the cache's %s (different inodes)", l.Name, blob, entry)
		}
	}
}

// snapshotCache snapshots the cache's entries, without the last-used
// stamps a hit is meant to update.
func snapshotCache(t *testing.T, dir string) tree.Tree {
	t.Helper()
	tr, err := tree.Snapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	for p := range tr {
		if strings.HasSuffix(p, "/.used") || strings.HasPrefix(p, ".") || !strings.Contains(p, "/") {
			delete(tr, p) // last-used stamps, locks, temp dirs, entry dirs' own times
		}
	}
	return tr
}

func sameInode(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(b, &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// layerTarNames lists the entry names of a layer blob of a layout.
func layerTarNames(t *testing.T, dir, digest string) []string {
	t.Helper()
	blob := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:"))
	out := mustRun(t, "", "tar", "-tzf", blob)
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		names = append(names, strings.TrimPrefix(strings.TrimSuffix(l, "/"), "./"))
	}
	return names
}

// TestBuildOnBase: a build on a base image gives the base's layers, then
// its own.
func TestBuildOnBase(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	baseDir := t.TempDir()
	mustRun(t, "", "mkdir", "-p", baseDir+"/rootfs/etc", baseDir+"/rootfs/usr/share/doc")
	if err := os.WriteFile(baseDir+"/rootfs/etc/motd", []byte("from the base image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := "oci:" + baseDir + "/image:base"
	layerfsCommit(t, "--upper", baseDir+"/rootfs", "--image", base)
	f.writeSpec("oci:"+filepath.Join(f.dir, "out")+":app", base)
	cacheDir := t.TempDir()
	r := f.build(t, cacheDir)
	baseDigests, _ := imageLayers(t, baseDir+"/image", "base")
	digests, _ := imageLayers(t, filepath.Join(f.dir, "out"), "app")
	if len(digests) != len(baseDigests)+3 {
		t.Fatalf("image has %d layers, want the base's %d plus 3", len(digests), len(baseDigests))
	}
	for i, d := range baseDigests {
		if digests[i] != d {
			t.Errorf("layer %d is %s, want the base's %s", i, digests[i], d)
		}
	}
	// The base layer is a cache entry of its own, keyed by its diff_id,
	// and mounted below the packages: tinypkg saw /etc/motd.
	var baseEntries int
	for _, n := range cacheEntries(t, cacheDir) {
		var info struct{ Type string }
		data, err := os.ReadFile(filepath.Join(cacheDir, n, "entry.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, &info); err != nil {
			t.Fatal(err)
		}
		if info.Type == "base" {
			baseEntries++
			if _, err := os.Stat(filepath.Join(cacheDir, n, "rootfs", "etc", "motd")); err != nil {
				t.Errorf("base entry %s lacks etc/motd: %v", n, err)
			}
		}
	}
	if baseEntries != 1 {
		t.Errorf("cache has %d base entries, want 1: %v", baseEntries, cacheEntries(t, cacheDir))
	}
	if r.result.Misses != 3 {
		t.Errorf("misses = %d, want 3", r.result.Misses)
	}
}

// TestBuildInvalidation: a new version of a package of the middle layer
// makes it and the layer above miss; the layer below still hits.
func TestBuildInvalidation(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	cacheDir := t.TempDir()
	f.build(t, cacheDir)
	f.setBash("5.3")
	r := f.build(t, cacheDir)
	want := map[string]bool{"base": true, "shell": false, "app": false}
	for _, l := range r.result.Layers {
		if l.Hit != want[l.Name] {
			t.Errorf("layer %s: hit=%v, want %v\n%s", l.Name, l.Hit, want[l.Name], r.stderr)
		}
	}
	if !strings.Contains(r.stderr, "OCI Cache MISS: Layer 'shell' (shell:bash=5.3 busybox=1.36.1)") {
		t.Errorf("log lacks the shell miss with bash 5.3:\n%s", r.stderr)
	}
	// explain of the old spec now says what changed for the layer above.
	f.setBash("5.4")
	cmd := exec.Command(layerfsBin, "cache", "explain", "spec.yaml", "--cache", cacheDir)
	cmd.Dir = f.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cache explain: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "'base'") || !strings.HasSuffix(lines[0], ": hit") ||
		!strings.Contains(lines[1], `packages: "bash=5.3 busybox=1.36.1" -> "bash=5.4 busybox=1.36.1"`) ||
		!strings.Contains(lines[2], "parent changed") {
		t.Errorf("cache explain:\n%s", out)
	}
}

// TestBuildConcurrent: two builds of one spec on one cache make one entry
// per key, install each package once, and write identical images; two
// builds whose keys differ run at the same time (each install waits for
// the other's through fifos, so running them one after the other would
// never finish).
func TestBuildConcurrent(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	cacheDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ch := make(chan buildRun, 2)
	for i := range 2 {
		go func() {
			ch <- layerfsBuild(ctx, t, f.dir, []string{"SOURCE_DATE_EPOCH=1700000000"}, "spec.yaml", "--cache", cacheDir, "--json",
				"--image", fmt.Sprintf("oci:%s/out%d:app", f.dir, i))
		}()
	}
	a, b := <-ch, <-ch
	for _, r := range []buildRun{a, b} {
		if r.err != nil {
			t.Fatalf("concurrent build: %v\n%s", r.err, r.stderr)
		}
	}
	if n := countLines(a.stderr+b.stderr, "INSTALLED"); n != 4 {
		t.Errorf("%d installs across both builds, want 4:\n%s\n%s", n, a.stderr, b.stderr)
	}
	if a.result.Manifest != b.result.Manifest {
		t.Errorf("manifests differ: %s and %s", a.result.Manifest, b.result.Manifest)
	}
	if n := len(cacheEntries(t, cacheDir)); n != 3 {
		t.Errorf("cache has %d entries, want 3: %v", n, cacheEntries(t, cacheDir))
	}

	// Different keys at once.
	fifo := t.TempDir()
	for _, n := range []string{"a", "b"} {
		if err := syscall.Mkfifo(filepath.Join(fifo, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	specs := map[string]string{
		"x": fmt.Sprintf(`echo ping > %s/a; read x < %s/b; ./tinypkg`, fifo, fifo),
		"y": fmt.Sprintf(`read x < %s/a; echo pong > %s/b; ./tinypkg`, fifo, fifo),
	}
	for i, name := range []string{"x", "y"} {
		spec := fmt.Sprintf("image: oci:%s/par%s:app\nmachine: m%d\ninstall: '%s'\nlayers:\n  - {name: only, type: packages, packages: [app]}\n", f.dir, name, i, specs[name])
		if err := os.WriteFile(filepath.Join(f.dir, name+".yaml"), []byte(spec), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"x", "y"} {
		go func() {
			ch <- layerfsBuild(ctx, t, f.dir, nil, name+".yaml", "--cache", cacheDir)
		}()
	}
	a, b = <-ch, <-ch
	for _, r := range []buildRun{a, b} {
		if r.err != nil {
			t.Fatalf("builds with different keys did not both finish (one waited for the other?): %v\n%s", r.err, r.stderr)
		}
	}
}

// TestBuildKilled: kill -9 at random points of builds; a later build
// succeeds and writes what a clean build writes.
func TestBuildKilled(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	env := []string{"SOURCE_DATE_EPOCH=1700000000"}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	clean := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", t.TempDir(), "--json", "--image", "oci:"+f.dir+"/clean:app")
	if clean.err != nil {
		t.Fatalf("clean build: %v\n%s", clean.err, clean.stderr)
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	cacheDir := t.TempDir()
	// How long a cold build takes here bounds where the kills land.
	start := time.Now()
	cold := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", t.TempDir(), "--image", "oci:"+f.dir+"/timing:app")
	if cold.err != nil {
		t.Fatalf("timing build: %v\n%s", cold.err, cold.stderr)
	}
	span := time.Since(start)
	for i := range 10 {
		// Every other kill starts from an empty cache, so that early
		// points (base layer, first install) are hit as well as late ones.
		if i%3 == 0 {
			for _, n := range cacheEntries(t, cacheDir) {
				os.RemoveAll(filepath.Join(cacheDir, n))
			}
		}
		cmd := exec.Command(layerfsBin, "build", "spec.yaml", "--cache", cacheDir, "--image", "oci:"+f.dir+"/killed:app")
		cmd.Dir = f.dir
		cmd.Env = append(os.Environ(), env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rng.Int63n(int64(span))))
		cmd.Process.Kill()
		cmd.Wait()
	}
	after := layerfsBuild(ctx, t, f.dir, env, "spec.yaml", "--cache", cacheDir, "--json", "--image", "oci:"+f.dir+"/killed:app")
	if after.err != nil {
		t.Fatalf("build after kills: %v\n%s", after.err, after.stderr)
	}
	if after.result.Manifest != clean.result.Manifest {
		t.Errorf("after kills the manifest is %s, a clean build's %s", after.result.Manifest, clean.result.Manifest)
	}
	// The entries are whole: verify passes.
	if out, err := exec.Command(layerfsBin, "cache", "verify", "--cache", cacheDir).CombinedOutput(); err != nil {
		t.Errorf("cache verify after kills: %v\n%s", err, out)
	}
	// No dead mounts of killed builds remain.
	if out, _ := exec.Command("grep", "-c", cacheDir, "/proc/self/mountinfo").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Errorf("mounts under the cache remain:\n%s", mustRunOK("grep", cacheDir, "/proc/self/mountinfo"))
	}
}

func mustRunOK(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
}

// TestBuildBadSpecs: one-line errors naming the layer; a failing install
// leaves nothing in the cache.
func TestBuildBadSpecs(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	cases := []struct {
		name, layers string
		code         int
		want         []string
	}{
		{"unknown type", "  - {name: x, type: tarball, packages: [app]}\n", 2, []string{"layer 'x'", `unknown layer type "tarball"`}},
		{"missing source", "  - {name: files1, type: files, source: /nonexistent/rootfs, paths: [/etc/a]}\n", 2, []string{"layer 'files1'", "/nonexistent/rootfs", "does not exist"}},
		{"duplicate name", "  - {name: a, type: packages, packages: [app]}\n  - {name: a, type: packages, packages: [bash]}\n", 2, []string{"layer 'a'", "duplicate"}},
		{"failing install", "  - {name: ok, type: packages, packages: [app]}\n  - {name: broken, type: packages, packages: [nosuch]}\n", 1, []string{"layer 'broken'", "exit status 4", "tinypkg: no package nosuch"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			cacheDir := t.TempDir()
			spec := fmt.Sprintf("image: oci:%s/bad:x\ninstall: ./tinypkg\nlayers:\n%s", f.dir, c.layers)
			if err := os.WriteFile(filepath.Join(f.dir, "bad.yaml"), []byte(spec), 0o644); err != nil {
				t.Fatal(err)
			}
			r := layerfsBuild(context.Background(), t, f.dir, nil, "bad.yaml", "--cache", cacheDir)
			if r.code != c.code {
				t.Fatalf("exit %d, want %d\n%s", r.code, c.code, r.stderr)
			}
			errLines := []string{}
			for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
				if strings.HasPrefix(l, "layerfs ") {
					errLines = append(errLines, l)
				}
			}
			if len(errLines) != 1 {
				t.Fatalf("want one error line, got %d:\n%s", len(errLines), r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(errLines[0], w) {
					t.Errorf("error %q lacks %q", errLines[0], w)
				}
			}
			for _, n := range cacheEntries(t, cacheDir) {
				if strings.HasSuffix(n, "-broken") || (c.code == 2) {
					t.Errorf("cache holds %s after the failure", n)
				}
			}
			if ents, _ := os.ReadDir(filepath.Join(cacheDir, ".tmp")); len(ents) > 0 {
				t.Errorf("temp dirs left: %v", ents)
			}
			if _, err := os.Stat(filepath.Join(f.dir, "bad")); err == nil {
				t.Errorf("a failed build wrote its output image")
			}
		})
	}
}
