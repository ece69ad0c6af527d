package oci

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/overlay"
)

func mustRef(t *testing.T, s string) Reference {
	t.Helper()
	r, err := ParseReference(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func commit(t *testing.T, opts CommitOptions) CommitResult {
	t.Helper()
	if opts.Layer.SourceDateEpoch == nil {
		e := testEpoch
		opts.Layer.SourceDateEpoch = &e
	}
	res, err := Commit(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// validateLayout runs go-containerregistry's full validation on every
// image of the layout.
func validateLayout(t *testing.T, dir string) {
	t.Helper()
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("validate %s: %v", dir, err)
	}
}

func readConfig(t *testing.T, dir, tag string) map[string]any {
	t.Helper()
	img, err := OpenImage(mustRef(t, "oci:"+dir+":"+tag))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var c map[string]any
	json.Unmarshal(img.RawConfig, &c)
	return c
}

func TestCommitCreatesAppendsAndKeepsOtherTags(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "l1", "up")
	d[0].File("etc/os-release", "ID=test\n").File("bin/sh", "sh")
	d[1].File("etc/app.conf", "x").Whiteout("bin/sh")
	out := filepath.Join(t.TempDir(), "img")

	r1 := commit(t, CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+out),
		Config: ConfigChanges{Env: []string{"A=1", "B=2"}, Cmd: []string{"/bin/sh"}, Labels: map[string]string{"l": "1"}}})
	if r1.Image.Tag != "latest" || r1.Layers != 1 {
		t.Fatalf("first commit: tag %q layers %d, want latest and 1", r1.Image.Tag, r1.Layers)
	}
	// A second tag in the same layout must survive the append below.
	commit(t, CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+out+":other")})

	r2 := commit(t, CommitOptions{Upper: d[1].Root, Lowers: []string{d[0].Root}, Image: mustRef(t, "oci:"+out+":latest"), History: "app",
		Config: ConfigChanges{Env: []string{"B=3"}, Entrypoint: []string{"/app"}, Ports: []string{"80"}, Labels: map[string]string{"m": "2"}}})
	if r2.Layers != 2 {
		t.Fatalf("append: %d layers, want 2", r2.Layers)
	}
	validateLayout(t, out)

	idx, err := readIndexFile(filepath.Join(out, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, m := range idx.Manifests {
		tags = append(tags, m.Annotations[v1.AnnotationRefName])
	}
	slices.Sort(tags)
	if !slices.Equal(tags, []string{"latest", "other"}) {
		t.Errorf("tags %v, want [latest other]", tags)
	}

	c := readConfig(t, out, "latest")
	rc := c["config"].(map[string]any)
	if got := rc["Env"]; !jsonEqual(got, []string{"A=1", "B=3"}) {
		t.Errorf("Env %v: --env must replace the same key and keep the rest", got)
	}
	if _, ok := rc["Cmd"]; ok {
		t.Errorf("Cmd %v survived a new --entrypoint without --cmd", rc["Cmd"])
	}
	if !jsonEqual(rc["Labels"], map[string]string{"l": "1", "m": "2"}) || !jsonEqual(rc["ExposedPorts"], map[string]any{"80/tcp": map[string]any{}}) {
		t.Errorf("labels %v ports %v", rc["Labels"], rc["ExposedPorts"])
	}
	hist := c["history"].([]any)
	diffIDs := c["rootfs"].(map[string]any)["diff_ids"].([]any)
	if len(hist) != 2 || len(diffIDs) != 2 || diffIDs[1] != r2.Layer.DiffID.String() {
		t.Errorf("history %v diff_ids %v: must line up with the 2 layers", hist, diffIDs)
	}
	if h := hist[1].(map[string]any); h["comment"] != "app" || h["created"] != testEpoch.Format(time.RFC3339) || c["created"] != testEpoch.Format(time.RFC3339) {
		t.Errorf("history %v / created %v: want the epoch and the comment", h, c["created"])
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// The lower listed from the image's tars must give the same layer as the
// layer dirs themselves.
func TestListedLowerEqualsLayerDirs(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "l1", "l2", "up")
	d[0].File("a/keep", "k").File("a/same", "s").File("a/old", "o").File("b/x", "x").Symlink("lib", "usr/lib").File("usr/lib/libc", "c")
	d[1].Whiteout("a/old").File("a/l2", "2").Link("a/l2link", "a/l2")
	d[2].Opaque("a").File("a/same", "s").File("a/new", "n").Whiteout("b").File("c", "c").Whiteout("a/l2")
	out := filepath.Join(t.TempDir(), "img")
	commit(t, CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+out+":t")})
	commit(t, CommitOptions{Upper: d[1].Root, Lowers: []string{d[0].Root}, Image: mustRef(t, "oci:"+out+":t")})
	copyDir(t, out, out+"2")

	viaDirs := commit(t, CommitOptions{Upper: d[2].Root, Lowers: []string{d[0].Root, d[1].Root}, Image: mustRef(t, "oci:"+out+":t")})
	viaTars := commit(t, CommitOptions{Upper: d[2].Root, Image: mustRef(t, "oci:"+out+"2:t")})
	if viaDirs.Layer.Descriptor.Digest != viaTars.Layer.Descriptor.Digest || viaDirs.Manifest.Digest != viaTars.Manifest.Digest {
		t.Errorf("--lower gave %s, the listed image %s", viaDirs.Layer.Descriptor.Digest, viaTars.Layer.Descriptor.Digest)
	}
	got := layerEntries(t, d[2].Root, overlay.NewStack(d[0].Root, d[1].Root), epochOpts())
	assertEntries(t, got,
		"0 .wh.b 0000 0:0 \"\"",
		"5 a/ 0755 0:0",
		"0 a/.wh.keep 0000 0:0 \"\"",
		"0 a/.wh.l2 0000 0:0 \"\"",
		"0 a/.wh.l2link 0000 0:0 \"\"",
		"0 a/new 0644 0:0 \"n\"",
		"0 c 0644 0:0 \"c\"",
	)
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// snapshot records every file of a dir with its content, to prove that a
// failed commit changed nothing.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		data, _ := os.ReadFile(p)
		out[p] = fi.Mode().String() + string(data)
		return nil
	})
	return out
}

func TestBadInputWritesNothing(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "up", "redirect")
	d[0].File("f", "x")
	d[1].Dir("moved").Xattr("moved", "trusted.overlay.redirect", "/orig")
	tmp := t.TempDir()
	existing := filepath.Join(tmp, "existing")
	commit(t, CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+existing+":t")})
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, nil, 0o644)
	before := snapshot(t, tmp)

	base := mustRef(t, "oci:"+existing+":nope")
	other := mustRef(t, "oci:"+existing+":t")
	cases := []struct {
		name  string
		opts  CommitOptions
		input bool // bad input (exit 2)
		want  string
	}{
		{"missing upper", CommitOptions{Upper: filepath.Join(tmp, "nope"), Image: mustRef(t, "oci:"+tmp+"/new")}, true, "nope: does not exist"},
		{"upper is a file", CommitOptions{Upper: file, Image: mustRef(t, "oci:"+tmp+"/new")}, true, "not a directory"},
		{"missing lower", CommitOptions{Upper: d[0].Root, Lowers: []string{tmp + "/nolower"}, Image: mustRef(t, "oci:"+tmp+"/new")}, true, "nolower"},
		{"missing base tag", CommitOptions{Upper: d[0].Root, Base: &base, Image: mustRef(t, "oci:"+tmp+"/new")}, true, `no image tagged "nope"`},
		{"base and existing", CommitOptions{Upper: d[0].Root, Base: &other, Image: mustRef(t, "oci:"+existing+":t")}, true, "already exists"},
		{"bad env", CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+tmp+"/new"), Config: ConfigChanges{Env: []string{"FOO"}}}, true, `--env "FOO"`},
		{"image is a file", CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+file)}, true, "not a directory"},
		{"redirect upper, new layout", CommitOptions{Upper: d[1].Root, Image: mustRef(t, "oci:"+tmp+"/new")}, true, "redirect"},
		{"redirect upper, existing layout", CommitOptions{Upper: d[1].Root, Image: mustRef(t, "oci:"+existing+":t")}, true, "redirect"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Commit(context.Background(), c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			if inputerr.Is(err) != c.input {
				t.Errorf("bad input: %v, want %v (%v)", inputerr.Is(err), c.input, err)
			}
			if after := snapshot(t, tmp); !mapsEqual(before, after) {
				t.Errorf("the failed commit changed %s", tmp)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// An oci-archive base is read in place (no unpack) and its blobs copied in.
func TestBaseFromOCIArchive(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "l1", "up")
	d[0].File("etc/base", "b")
	d[1].File("etc/app", "a")
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	base := commit(t, CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+src+":v1"), Config: ConfigChanges{Env: []string{"FROM=archive"}}})
	archive := filepath.Join(tmp, "base.tar")
	if out, err := exec.Command("tar", "-C", src, "-cf", archive, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	baseRef := mustRef(t, "oci-archive:"+archive+":v1")
	out := filepath.Join(tmp, "out")
	res := commit(t, CommitOptions{Upper: d[1].Root, Base: &baseRef, Image: mustRef(t, "oci:"+out+":app")})
	if res.Layers != 2 {
		t.Fatalf("%d layers, want 2", res.Layers)
	}
	validateLayout(t, out)
	c := readConfig(t, out, "app")
	if env := c["config"].(map[string]any)["Env"]; !jsonEqual(env, []string{"FROM=archive"}) {
		t.Errorf("Env %v: the base's config must carry over", env)
	}
	img, err := OpenImage(mustRef(t, "oci:"+out+":app"))
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.Manifest.Annotations[v1.AnnotationBaseImageDigest] != base.Manifest.Digest.String() {
		t.Errorf("base digest annotation %q, want %s", img.Manifest.Annotations[v1.AnnotationBaseImageDigest], base.Manifest.Digest)
	}
	if _, ok := img.Manifest.Annotations[v1.AnnotationBaseImageName]; ok {
		t.Errorf("a local base must not be named in the manifest (it would make the digest depend on the path)")
	}
	// The lower was listed from the archive's layer: only the new file is in the layer.
	if res.Layer.Entries != 2 { // etc/ and etc/app
		t.Errorf("layer has %d entries, want 2 (etc/, etc/app)", res.Layer.Entries)
	}
}

// The one assembly of an image stops at a cancelled context while it
// copies the parent's blobs, and leaves no layout behind: a commit onto a
// base from elsewhere and a build's WriteImage both go through it.
func TestAppendHonoursCancel(t *testing.T) {
	d := dirs(t, "upper")
	d[0].File("etc/app", "1")
	src := filepath.Join(t.TempDir(), "src")
	commit(t, CommitOptions{Upper: d[0].Root, Image: mustRef(t, "oci:"+src+":v1")})
	parent, err := OpenImage(mustRef(t, "oci:"+src+":v1"))
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	dst := filepath.Join(t.TempDir(), "dst")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = WriteImage(ctx, WriteImageOptions{Image: mustRef(t, "oci:"+dst+":v1"), Base: parent, Created: testEpoch})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v; want context.Canceled", err)
	}
	if _, err := os.Stat(dst); !os.IsNotExist(err) {
		t.Errorf("%s after a cancelled write: %v; want nothing", dst, err)
	}
}
