// Package commit holds end-to-end tests of `layerfs commit` that are not
// the differential matrix: images that must run in podman, reproducible
// digests, and commits killed half-way.
package commit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

// layerfsBin is the binary under test, built once for the package.
var layerfsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "layerfs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	layerfsBin = filepath.Join(dir, "layerfs")
	build := exec.Command("go", "build", "-o", layerfsBin, "./cmd/layerfs")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build layerfs: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	Digest   string `json:"digest"`
	DiffID   string `json:"diff_id"`
	Manifest string `json:"manifest"`
	Size     int64  `json:"size"`
}

// commit runs `layerfs commit --json` with args and decodes its result.
func commit(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(layerfsBin, append([]string{"commit", "--json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("layerfs commit %q: %v\n%s", args, err, stderr.String())
	}
	var r result
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("layerfs commit output %q: %v", stdout.String(), err)
	}
	return r
}

// sh runs a shell script with cwd dir.
func sh(t *testing.T, dir, script string, env ...string) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-euc", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("script in %s: %v\n%s\n%s", dir, err, script, out)
	}
}

// overlay mounts a kernel overlayfs of lowers (base first) under a fresh
// upper, runs fn on the merged dir, and unmounts. It returns the upper.
func overlay(t *testing.T, lowers []string, fn func(merged string)) string {
	t.Helper()
	base := t.TempDir()
	upper, work, merged := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "merged")
	for _, d := range []string{upper, work, merged} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	rev := make([]string, len(lowers))
	for i, l := range lowers {
		rev[len(lowers)-1-i] = l
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,redirect_dir=off,metacopy=off,index=off", strings.Join(rev, ":"), upper, work)
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay: %v", err)
	}
	defer func() {
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
		}
	}()
	fn(merged)
	return upper
}

// validateImage runs go-containerregistry's full validation (every blob's
// digest, diff_ids, sizes, manifest and config) on one tag of a layout, and
// returns its number of layers.
func validateImage(t *testing.T, dir, tag string) int {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("layout %s: %v", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] != tag {
			continue
		}
		img, err := p.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validate.Image(img); err != nil {
			t.Fatalf("validate %s:%s: %v", dir, tag, err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		return len(layers)
	}
	t.Fatalf("%s has no tag %q", dir, tag)
	return 0
}

// skopeoVerify copies the image to a dir: transport, which reads and
// verifies every blob.
func skopeoVerify(t *testing.T, dir, tag string) {
	t.Helper()
	testenv.NeedTool(t, "skopeo")
	dst := t.TempDir()
	out, err := exec.Command("skopeo", "copy", "--quiet", "oci:"+dir+":"+tag, "dir:"+dst).CombinedOutput()
	if err != nil {
		t.Fatalf("skopeo copy oci:%s:%s: %v\n%s", dir, tag, err, out)
	}
}
