package layers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/internal/hostile"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/unpack"
)

// hostileImage writes an OCI layout whose only layer is the tar.
func hostileImage(t *testing.T, dir string, tarData []byte) string {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tarData)), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "hostile"})); err != nil {
		t.Fatal(err)
	}
	return "oci:" + dir + ":hostile"
}

// fileState is what a canary must keep.
type fileState struct {
	sum   [32]byte
	mode  os.FileMode
	nlink uint64
	mtime int64
}

func stateOf(t *testing.T, p string) fileState {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("canary %s: %v", p, err)
	}
	st, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fileState{sum: sha256.Sum256(data), mode: st.Mode(), mtime: st.ModTime().UnixNano(), nlink: uint64(st.Sys().(*syscall.Stat_t).Nlink)}
}

// TestBuildHostileBase builds on a base image made of each hostile layer
// of the corpus: every case is rejected with a bad-input error naming the
// culprit, or contained; canaries beside the cache, in the cache dir (the
// parent of every extraction root's entry) and in the victim dir outside
// are never touched; a rejected layer leaves no entry and no image.
func TestBuildHostileBase(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range hostile.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			job := t.TempDir()
			outside := filepath.Join(job, "outside")
			cacheDir := filepath.Join(job, "cache")
			for _, d := range []string{outside, cacheDir} {
				if err := os.MkdirAll(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			canaries := []string{filepath.Join(job, "CANARY"), filepath.Join(cacheDir, "CANARY"), filepath.Join(outside, hostile.Victim)}
			for _, p := range canaries {
				if err := os.WriteFile(p, []byte("canary "+p), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before := map[string]fileState{}
			for _, p := range canaries {
				before[p] = stateOf(t, p)
			}
			jobNames := dirNames(t, job)
			outsideNames := dirNames(t, outside)

			base := hostileImage(t, filepath.Join(job, "base"), c.Tar(outside))
			out := filepath.Join(job, "out")
			spec := &Spec{File: "hostile.yaml", Dir: job, Image: "oci:" + out + ":x", Base: base,
				Layers: []Layer{{Name: "top", Type: TypeHost, Copy: []string{"top.txt:/top.txt"}}}}
			if err := os.WriteFile(filepath.Join(job, "top.txt"), []byte("top"), 0o644); err != nil {
				t.Fatal(err)
			}
			ca, err := cache.Open(cacheDir)
			if err != nil {
				t.Fatal(err)
			}
			_, err = Build(context.Background(), Options{Spec: spec, Cache: ca, MaxLayerSize: c.MaxSize})
			switch c.Want {
			case hostile.Reject:
				if err == nil {
					t.Fatalf("%s (%s) was applied, want a rejection", c.Name, c.Doc)
				}
				if !errors.Is(err, unpack.ErrHostile) || !inputerr.Is(err) {
					t.Errorf("error %v: want a bad-input ErrHostile", err)
				}
				if c.Mention != "" && !strings.Contains(err.Error(), c.Mention) {
					t.Errorf("error %q does not name %q", err, c.Mention)
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("error spans lines: %q", err)
				}
				if _, serr := os.Stat(out); serr == nil {
					t.Errorf("a rejected base still gave an image")
				}
				entries, lerr := ca.Entries()
				if lerr != nil {
					t.Fatal(lerr)
				}
				if len(entries) != 0 {
					t.Errorf("a rejected base left cache entries: %v", entries)
				}
			case hostile.Contain:
				if err != nil {
					t.Fatalf("%s (%s): %v, want it contained", c.Name, c.Doc, err)
				}
				if c.Check != nil {
					entries, lerr := ca.Entries()
					if lerr != nil {
						t.Fatal(lerr)
					}
					for _, e := range entries {
						if e.Info.Type == "base" {
							if err := c.Check(e.Rootfs(), outside); err != nil {
								t.Errorf("contained result: %v", err)
							}
						}
					}
				}
			}
			for _, p := range canaries {
				if got := stateOf(t, p); got != before[p] {
					t.Errorf("canary %s changed: %+v, was %+v", p, got, before[p])
				}
			}
			if got := dirNames(t, outside); got != outsideNames {
				t.Errorf("outside now holds %s, had %s", got, outsideNames)
			}
			allowed := jobNames + ",base,out,top.txt,"
			for _, n := range strings.Split(dirNames(t, job), ",") {
				if !strings.Contains(","+allowed, ","+n+",") {
					t.Errorf("the job dir now holds %s", n)
				}
			}
		})
	}
}

func dirNames(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, ",")
}
