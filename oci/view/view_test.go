package view

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/overlay"

	"github.com/layerfs/layerfs/internal/tartest"
)

// tars is an Image of plain layer tars, read from memory.
type tars [][]byte

func (tars) String() string                    { return "test-image" }
func (l tars) NumLayers() int                  { return len(l) }
func (l tars) LayerDigest(i int) digest.Digest { return digest.FromBytes(l[i]) }
func (l tars) OpenLayer(i int) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(l[i])), nil
}

func tarOf(hdrs ...tar.Header) []byte {
	b := tartest.New()
	for _, h := range hdrs {
		b.Add(&h, "")
	}
	return b.Bytes()
}

// The two merges differ where a later layer names a path through an
// earlier layer's symlink: View resolves it as unpackers do (umoci,
// containerd's applier), Listing keeps the layer's own directory, as the
// union of the layer dirs that a mount of the image stacks.
func TestViewAndListingMergeThroughSymlinks(t *testing.T) {
	img := tars{
		tarOf(tar.Header{Name: "usr/lib/", Typeflag: tar.TypeDir, Mode: 0o755},
			tar.Header{Name: "lib", Typeflag: tar.TypeSymlink, Linkname: "usr/lib"}),
		tarOf(tar.Header{Name: "lib/x", Typeflag: tar.TypeReg, Mode: 0o644}),
	}
	ctx := context.Background()
	v, err := Open(ctx, img, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if e, err := v.Stat("/lib", false); err != nil || e.Meta.Type != overlay.TypeSymlink {
		t.Errorf("view: /lib is %+v (%v); want the symlink", e.Meta, err)
	}
	if _, err := v.Stat("/usr/lib/x", false); err != nil {
		t.Errorf("view: /usr/lib/x: %v; want the file, written through the symlink", err)
	}
	l, err := List(ctx, img)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := l.Lookup("lib"); m == nil || m.Type != overlay.TypeDir {
		t.Errorf("listing: lib is %+v; want the second layer's directory", m)
	}
	if m, _ := l.Lookup("lib/x"); m == nil || m.Type != overlay.TypeReg {
		t.Errorf("listing: lib/x is %+v; want the file", m)
	}
	if m, _ := l.Lookup("usr/lib/x"); m != nil {
		t.Errorf("listing: usr/lib/x is %+v; want nothing", m)
	}
}
