package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// Sets of specs: `layerfs build A.yaml B.yaml ... --jobs N`, images
// embedded in images (layer type image), built in dependency order.

// nestedSetResult is one spec's entry of `layerfs build SPECS... --json`.
type nestedSetResult struct {
	Spec   string       `json:"spec"`
	Result *buildResult `json:"result"`
	Error  string       `json:"error"`
}

type nestedRun struct {
	stdout, stderr string
	err            error
	code           int
	results        []nestedSetResult
}

// nestedBuild runs `layerfs build ARGS` in dir; with --json and success
// it decodes the set's results.
func nestedBuild(ctx context.Context, t *testing.T, dir string, args ...string) nestedRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, layerfsBin, append([]string{"build"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	r := nestedRun{err: cmd.Run()}
	r.stdout, r.stderr = stdout.String(), stderr.String()
	if xe, ok := r.err.(*exec.ExitError); ok {
		r.code = xe.ExitCode()
	}
	for _, a := range args {
		if a == "--json" && r.err == nil {
			if err := json.Unmarshal(stdout.Bytes(), &r.results); err != nil {
				t.Fatalf("layerfs build --json of a set: %v\n%s", err, r.stdout)
			}
		}
	}
	return r
}

// byName indexes a set's results by spec file name.
func (r nestedRun) byName(t *testing.T) map[string]*buildResult {
	t.Helper()
	m := map[string]*buildResult{}
	for _, s := range r.results {
		if s.Error != "" || s.Result == nil {
			t.Fatalf("spec %s: %q\n%s", s.Spec, s.Error, r.stderr)
		}
		m[filepath.Base(s.Spec)] = s.Result
	}
	return m
}

func nestedLayerHits(r *buildResult) map[string]bool {
	m := map[string]bool{}
	for _, l := range r.Layers {
		m[l.Name] = l.Hit
	}
	return m
}

func nestedWriteFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func nestedSha256File(t *testing.T, p string) string {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

const nestedVersions = `versions: {base-files: "3.0", busybox: "1.36.1", bash: "5.2", app: "1.0"}`

// TestNestedImages: two inner specs and an outer one that embeds them
// (inner1 as an oci-archive and as an oci-dir, inner2 as a rootfs),
// built as one set with --jobs 2. The inner builds run at the same time
// (their first installs wait for each other through fifos, with a
// timeout, so a serialized build fails instead of hanging); every
// embedded image has a PATH.sha256sums that `sha256sum -c` in PATH's
// parent passes inside the outer image, run in podman; the embedded
// images are the inner builds' own; and a change to inner2 rebuilds its
// changed layer and the outer layer that embeds it, nothing else.
func TestNestedImages(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"podman", "skopeo", "umoci", "timeout"} {
		testenv.NeedTool(t, tool)
	}
	f := newBuildFixture(t)
	fifo := filepath.Join(f.dir, "fifo")
	if err := os.Mkdir(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if err := syscall.Mkfifo(filepath.Join(fifo, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Each side gives up after 20s: a set that built the inner specs one
	// after the other would leave the first waiting for the second.
	hs1 := `timeout 20 sh -c "echo ping > fifo/a" || { echo "HANDSHAKE FAILED: inner2 never started"; exit 7; }; ` +
		`timeout 20 sh -c "read x < fifo/b" || { echo "HANDSHAKE FAILED: inner2 never answered"; exit 7; }; ./tinypkg`
	hs2 := `timeout 20 sh -c "read x < fifo/a" || { echo "HANDSHAKE FAILED: inner1 never started"; exit 7; }; ` +
		`timeout 20 sh -c "echo pong > fifo/b" || { echo "HANDSHAKE FAILED: inner1 never read"; exit 7; }; ./tinypkg`
	nestedWriteFile(t, filepath.Join(f.dir, "inner1.yaml"), `image: oci:inner1:v1
machine: qemux86-64
arch: amd64
install: ./tinypkg
`+nestedVersions+`
layers:
  - {name: hs1, type: packages, packages: [base-files], install: '`+hs1+`'}
  - {name: app, type: packages, packages: [app]}
`)
	nestedWriteFile(t, filepath.Join(f.dir, "inner2.yaml"), `image: oci:inner2:v1
machine: qemux86-64
arch: amd64
install: ./tinypkg
`+nestedVersions+`
layers:
  - {name: hs2, type: packages, packages: [bash], install: '`+hs2+`'}
  - {name: data, type: directories, source: inner2-src, paths: [/srv/data]}
`)
	nestedWriteFile(t, filepath.Join(f.dir, "inner2-src/srv/data/file.txt"), "version 1\n")
	nestedWriteFile(t, filepath.Join(f.dir, "inner2-src/srv/data/sub/more.txt"), "more\n")
	nestedWriteFile(t, filepath.Join(f.dir, "outer.yaml"), `image: oci:outer:v1
machine: qemux86-64
arch: amd64
install: ./tinypkg
`+nestedVersions+`
layers:
  - {name: base, type: packages, packages: [base-files, busybox]}
  - {name: in1-archive, type: image, ref: 'oci:inner1:v1', path: /images/inner1.tar, format: oci-archive}
  - {name: in1-dir, type: image, ref: 'oci:inner1:v1', path: /images/inner1-oci, format: oci-dir}
  - {name: in2-rootfs, type: image, ref: 'oci:inner2:v1', path: /srv/inner2, format: rootfs}
config:
  cmd: [/bin/sh]
`)
	cacheDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// The outer spec first: the command line's order is not the build's.
	first := nestedBuild(ctx, t, f.dir, "outer.yaml", "inner1.yaml", "inner2.yaml", "--jobs", "2", "--cache", cacheDir, "--json")
	if first.err != nil {
		if strings.Contains(first.stderr, "/dev/fuse is open in the install") {
			t.Fatalf("an install inherited a /dev/fuse descriptor of the other spec's mount (see TestNestedParallelInstallsGetNoFuse):\n%s", first.stderr)
		}
		if strings.Contains(first.stdout+first.stderr, "HANDSHAKE FAILED") {
			t.Fatalf("the inner specs did not build at the same time with --jobs 2:\n%s\n%s", first.stdout, first.stderr)
		}
		t.Fatalf("build of the set: %v\n%s\n%s", first.err, first.stdout, first.stderr)
	}
	res := first.byName(t)
	if len(res) != 3 || res["inner1.yaml"] == nil || res["inner2.yaml"] == nil || res["outer.yaml"] == nil {
		t.Fatalf("results %+v", first.results)
	}
	// Several specs: every line says whose it is.
	for _, want := range []string{"[inner1] INSTALLED hs1 base-files", "[inner2] INSTALLED hs2 bash",
		"[outer] OCI Cache MISS: Layer 'in2-rootfs'", "[inner1] OCI: Pre-installed packages for 2 layers"} {
		if !strings.Contains(first.stderr, want) {
			t.Errorf("the set's output lacks %q:\n%s", want, first.stderr)
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(first.stderr), "\n") {
		if !strings.HasPrefix(l, "[inner1] ") && !strings.HasPrefix(l, "[inner2] ") && !strings.HasPrefix(l, "[outer] ") {
			t.Errorf("line %q names no spec", l)
		}
	}
	inner2, outer := filepath.Join(f.dir, "inner2"), filepath.Join(f.dir, "outer")
	if d, m := imageLayers(t, outer, "v1"); len(d) != 4 || m != res["outer.yaml"].Manifest {
		t.Fatalf("outer image: %d layers, manifest %s (build said %s)", len(d), m, res["outer.yaml"].Manifest)
	}

	// Inside the outer image, in podman: sha256sum -c in each parent.
	script := `set -e
cd /images
busybox sha256sum -c inner1.tar.sha256sums
busybox sha256sum -c inner1-oci.sha256sums
cd /srv
busybox sha256sum -c inner2.sha256sums
echo ALL-SUMS-OK`
	got, err := heavyPodmanRun(t, outer, "v1", "layerfs-nested", "/bin/sh", "-c", script)
	if err != nil || !strings.Contains(got, "ALL-SUMS-OK") || strings.Contains(got, "FAILED") {
		t.Fatalf("sha256sum -c in the outer image: %v\n%s", err, got)
	}
	if !strings.Contains(got, "inner1.tar: OK") || !strings.Contains(got, "inner1-oci/index.json: OK") || !strings.Contains(got, "inner2/srv/data/file.txt: OK") {
		t.Errorf("sha256sum -c checked too little:\n%s", got)
	}

	// On the host: the embedded images are the inner builds' images.
	work := t.TempDir()
	mustRun(t, "", "umoci", "unpack", "--image", outer+":v1", filepath.Join(work, "bundle"))
	root := filepath.Join(work, "bundle", "rootfs")
	sums, err := os.ReadFile(filepath.Join(root, "images", "inner1.tar.sha256sums"))
	if err != nil {
		t.Fatal(err)
	}
	if want := nestedSha256File(t, filepath.Join(root, "images", "inner1.tar")) + "  inner1.tar\n"; string(sums) != want {
		t.Errorf("inner1.tar.sha256sums is %q, want %q", sums, want)
	}
	m1 := res["inner1.yaml"].Manifest
	if got := yoctoSkopeoInspect(t, "oci-archive:"+filepath.Join(root, "images", "inner1.tar")); got.Digest != m1 {
		t.Errorf("the embedded oci-archive holds %s, inner1 is %s", got.Digest, m1)
	}
	if got := yoctoSkopeoInspect(t, "oci:"+filepath.Join(root, "images", "inner1-oci")+":v1"); got.Digest != m1 {
		t.Errorf("the embedded oci-dir holds %s, inner1 is %s", got.Digest, m1)
	}
	// Every file of the embedded layout is listed, relative to /images.
	var listed []string
	dirSums, _ := os.ReadFile(filepath.Join(root, "images", "inner1-oci.sha256sums"))
	for _, l := range strings.Split(strings.TrimSpace(string(dirSums)), "\n") {
		if len(l) > 66 {
			listed = append(listed, l[66:])
		}
	}
	var files []string
	filepath.Walk(filepath.Join(root, "images", "inner1-oci"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			rel, _ := filepath.Rel(filepath.Join(root, "images"), p)
			files = append(files, rel)
		}
		return nil
	})
	if strings.Join(listed, "\n") != strings.Join(files, "\n") {
		t.Errorf("inner1-oci.sha256sums lists %q, the dir holds %q", listed, files)
	}
	// The embedded rootfs is inner2's, as umoci unpacks it.
	want := unpackUmoci(t, inner2, "v1")
	gotTree, err := tree.Snapshot(filepath.Join(root, "srv", "inner2"))
	if err != nil {
		t.Fatal(err)
	}
	if diffs := tree.Diff(want, gotTree, tree.Options{}); len(diffs) > 0 {
		t.Errorf("/srv/inner2 differs from inner2's rootfs:\n%s", strings.Join(diffs, "\n"))
	}

	// inner2 changes: its data layer and the outer layer embedding it
	// miss; everything else hits, and no install runs (so no handshake).
	nestedWriteFile(t, filepath.Join(f.dir, "inner2-src/srv/data/file.txt"), "version 2\n")
	second := nestedBuild(ctx, t, f.dir, "inner1.yaml", "inner2.yaml", "outer.yaml", "--jobs", "2", "--cache", cacheDir, "--json")
	if second.err != nil {
		t.Fatalf("rebuild of the set: %v\n%s\n%s", second.err, second.stdout, second.stderr)
	}
	res2 := second.byName(t)
	wantHits := map[string]map[string]bool{
		"inner1.yaml": {"hs1": true, "app": true},
		"inner2.yaml": {"hs2": true, "data": false},
		"outer.yaml":  {"base": true, "in1-archive": true, "in1-dir": true, "in2-rootfs": false},
	}
	for spec, w := range wantHits {
		if got := nestedLayerHits(res2[spec]); fmt.Sprint(got) != fmt.Sprint(w) {
			t.Errorf("rebuild: %s hits %v, want %v\n%s", spec, got, w, second.stderr)
		}
	}
	if strings.Contains(second.stderr, "INSTALLED") {
		t.Errorf("the rebuild installed packages:\n%s", second.stderr)
	}
	if res2["inner1.yaml"].Manifest != m1 {
		t.Errorf("inner1 changed: %s, was %s", res2["inner1.yaml"].Manifest, m1)
	}
	if res2["inner2.yaml"].Manifest == res["inner2.yaml"].Manifest || res2["outer.yaml"].Manifest == res["outer.yaml"].Manifest {
		t.Errorf("inner2 or outer did not change: %s, %s", res2["inner2.yaml"].Manifest, res2["outer.yaml"].Manifest)
	}
	work2 := t.TempDir()
	mustRun(t, "", "umoci", "unpack", "--image", outer+":v1", filepath.Join(work2, "bundle"))
	if data, err := os.ReadFile(filepath.Join(work2, "bundle", "rootfs", "srv", "inner2", "srv", "data", "file.txt")); err != nil || string(data) != "version 2\n" {
		t.Errorf("the rebuilt outer image's /srv/inner2/srv/data/file.txt: %q %v, want version 2", data, err)
	}
	// The unchanged layers are the same blobs.
	before, after := res["outer.yaml"].Layers, res2["outer.yaml"].Layers
	for i := range 3 {
		if before[i].Digest != after[i].Digest {
			t.Errorf("outer layer %s: %s, was %s", after[i].Name, after[i].Digest, before[i].Digest)
		}
	}
}

// TestNestedBadGraphs: a cycle between two specs, and an image that no
// spec of the set makes and that does not exist, are one-line errors
// (exit 2) before any build starts: no install ran, no cache entry, no
// output image.
func TestNestedBadGraphs(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	spec := func(name, image, base string, extra string) {
		s := "image: oci:" + image + "\n"
		if base != "" {
			s += "base: oci:" + base + "\n"
		}
		s += "install: ./tinypkg\n" + nestedVersions + "\nlayers:\n  - {name: pk, type: packages, packages: [app]}\n" + extra
		nestedWriteFile(t, filepath.Join(f.dir, name), s)
	}
	spec("ok.yaml", "ok-out:v1", "", "")
	spec("cyc-a.yaml", "a-out:v1", "b-out:v1", "")
	spec("cyc-b.yaml", "b-out:v1", "", "  - {name: emb, type: image, ref: 'oci:a-out:v1', path: /images/a.tar}\n")
	spec("missing.yaml", "m-out:v1", "", "  - {name: emb, type: image, ref: 'oci:nowhere:v1', path: /images/n.tar, format: rootfs}\n")
	spec("missing-base.yaml", "mb-out:v1", "nowhere-base:v1", "")
	cases := []struct {
		name  string
		specs []string
		want  []string
	}{
		{"cycle", []string{"ok.yaml", "cyc-a.yaml", "cyc-b.yaml"}, []string{"cycle", "cyc-a.yaml", "cyc-b.yaml"}},
		{"missing image layer", []string{"ok.yaml", "missing.yaml"}, []string{"missing.yaml", "nowhere", "no spec"}},
		{"missing base", []string{"missing-base.yaml", "ok.yaml"}, []string{"missing-base.yaml", "nowhere-base", "no spec"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			cacheDir := filepath.Join(t.TempDir(), "cache")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r := nestedBuild(ctx, t, f.dir, append(c.specs, "--jobs", "2", "--cache", cacheDir)...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "layerfs build: ") {
				t.Errorf("stderr is not one error line:\n%s", r.stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("error %q lacks %q", strings.TrimSpace(r.stderr), w)
				}
			}
			if strings.Contains(r.stdout+r.stderr, "INSTALLED") || strings.Contains(r.stdout+r.stderr, "OCI Cache") {
				t.Errorf("a build started:\n%s\n%s", r.stdout, r.stderr)
			}
			if ents, err := os.ReadDir(cacheDir); err == nil {
				for _, e := range ents {
					if !strings.HasPrefix(e.Name(), ".") {
						t.Errorf("cache entry %s made", e.Name())
					}
				}
			}
			for _, out := range []string{"ok-out", "a-out", "b-out", "m-out", "mb-out"} {
				if _, err := os.Stat(filepath.Join(f.dir, out)); err == nil {
					t.Errorf("output %s written", out)
				}
			}
		})
	}
}

// TestNestedParallelInstallsGetNoFuse: specs built at once in one
// process each mount and run installs; no install may inherit the
// /dev/fuse connection of another spec's mount (tinypkg refuses to run
// with one open: a process holding it keeps that mount's connection, and
// the mount, alive). Four specs of four packages layers, three times.
func TestNestedParallelInstallsGetNoFuse(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	cacheDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for round := range 3 {
		// A machine per spec and round: new keys, every layer built.
		var specs []string
		for i := range 4 {
			name := fmt.Sprintf("par%d.yaml", i)
			specs = append(specs, name)
			nestedWriteFile(t, filepath.Join(f.dir, name), fmt.Sprintf(`image: oci:par%d:v1
machine: m%d-round%d
install: ./tinypkg
%s
layers:
  - {name: l1, type: packages, packages: [base-files]}
  - {name: l2, type: packages, packages: [busybox]}
  - {name: l3, type: packages, packages: [bash]}
  - {name: l4, type: packages, packages: [app]}
`, i, i, round, nestedVersions))
		}
		r := nestedBuild(ctx, t, f.dir, append(specs, "--jobs", "4", "--cache", cacheDir)...)
		if r.err != nil {
			t.Fatalf("round %d: %v\n%s", round+1, r.err, r.stderr)
		}
		if n := strings.Count(r.stderr, "INSTALLED"); n != 16 {
			t.Errorf("round %d: %d installs, want 16:\n%s", round+1, n, r.stderr)
		}
	}
}
