package layers

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci"

	"github.com/layerfs/layerfs/internal/tartest"
)

// imageOfTars writes an OCI layout whose layers are the tars, one file
// per layer: name -> content, "" for a whiteout of name.
func imageOfTars(t *testing.T, layers ...map[string]string) *oci.Image {
	t.Helper()
	img := empty.Image
	for _, files := range layers {
		b := tartest.New()
		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			if files[n] == "" {
				n = filepath.Join(filepath.Dir(n), ".wh."+filepath.Base(n))
			}
			b.File(n, files[n])
		}
		data := b.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "img"})); err != nil {
		t.Fatal(err)
	}
	ref, err := oci.ParseReference("oci:" + dir + ":img")
	if err != nil {
		t.Fatal(err)
	}
	o, err := oci.OpenImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// TestApplyImageOnceAndHeld: an image's layers become base entries once
// (a second apply, and a build on the same base, find them), each holds
// its layer alone, and they are in use until released.
func TestApplyImageOnceAndHeld(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	c, err := cache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := imageOfTars(t, map[string]string{"a": "1", "b": "1"}, map[string]string{"b": "", "c": "2"}, map[string]string{"a": "3"})
	var log bytes.Buffer
	first, err := ApplyImage(ctx, c, img, ApplyImageOptions{Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Rootfs) != 3 || strings.Count(log.String(), "applied into the cache") != 3 {
		t.Fatalf("rootfs %v, log:\n%s; want 3 layers applied", first.Rootfs, log.String())
	}
	for i, want := range []string{"a b", "c", "a"} {
		var names []string
		ents, err := os.ReadDir(first.Rootfs[i])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.Type().IsRegular() {
				names = append(names, e.Name())
			}
		}
		if strings.Join(names, " ") != want {
			t.Errorf("layer %d holds %v, want %s", i+1, names, want)
		}
		if data, _ := os.ReadFile(filepath.Join(first.Rootfs[i], "a")); i == 2 && string(data) != "3" {
			t.Errorf("top layer's a is %q, want 3", data)
		}
	}
	if st, err := os.Lstat(filepath.Join(first.Rootfs[1], "b")); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("layer 2's whiteout of b is not a 0:0 device: %v %v", st, err)
	}

	log.Reset()
	second, err := ApplyImage(ctx, c, img, ApplyImageOptions{Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(second.Rootfs, first.Rootfs) || strings.Count(log.String(), "in the cache") != 3 || strings.Contains(log.String(), "applied") {
		t.Errorf("second apply: rootfs %v (first %v), log:\n%s; want the same entries, all found", second.Rootfs, first.Rootfs, log.String())
	}
	for _, r := range second.Layers {
		if !r.Hit || r.Type != "base" || r.Key != baseKey(r.DiffID) {
			t.Errorf("second apply: %+v, want a hit on the base entry of its diff_id", r)
		}
	}

	removed, err := c.Prune(ctx, cache.PruneOptions{All: true})
	if err != nil || len(removed) != 0 {
		t.Fatalf("prune --all while in use removed %d entries (%v)", len(removed), err)
	}
	first.Release()
	if removed, _ = c.Prune(ctx, cache.PruneOptions{All: true}); len(removed) != 0 {
		t.Errorf("prune --all removed %d entries that the second apply still holds", len(removed))
	}
	second.Release()
	second.Release() // a second call is harmless
	if removed, err = c.Prune(ctx, cache.PruneOptions{All: true}); err != nil || len(removed) != 3 {
		t.Errorf("prune --all after release removed %d entries (%v), want 3", len(removed), err)
	}
}

// TestApplyImageHostileLayerHoldsNothing: a rejected layer is bad input,
// leaves no entry of its own, and what the layers below took is let go.
func TestApplyImageHostileLayerHoldsNothing(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	c, err := cache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img := imageOfTars(t, map[string]string{"ok": "1"}, map[string]string{"../escape": "x"})
	_, err = ApplyImage(ctx, c, img, ApplyImageOptions{})
	if !inputerr.Is(err) || !strings.Contains(err.Error(), img.Ref.String()) {
		t.Fatalf("apply of a hostile layer: %v, want bad input naming the image", err)
	}
	removed, err := c.Prune(ctx, cache.PruneOptions{All: true})
	if err != nil || len(removed) != 1 {
		t.Errorf("prune --all removed %d entries (%v), want the first layer's alone, not held", len(removed), err)
	}
}
