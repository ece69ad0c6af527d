package view

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/oci/unpack"
	"github.com/layerfs/layerfs/overlay"
)

// Listing is the merged view of an image's layers, built by reading their
// tars once: names, metadata and content digests, no file unpacked. It is
// the lower of a commit onto an image whose layer dirs are not at hand.
type Listing struct {
	nodes map[string]*listNode // by clean relative path; "" is the root
}

type listNode struct {
	meta     overlay.Meta
	sum      [sha256.Size]byte
	children map[string]bool
}

var _ overlay.Lower = (*Listing)(nil)

// List builds the merged view of img's layers.
func List(ctx context.Context, img Image) (*Listing, error) {
	l := &Listing{nodes: map[string]*listNode{"": {meta: overlay.Meta{Type: overlay.TypeDir, Mode: 0o755}, children: map[string]bool{}}}}
	for i := range img.NumLayers() {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r, err := img.OpenLayer(i)
		if err != nil {
			return nil, fmt.Errorf("%s: layer %d: %w", img, i, err)
		}
		err = l.apply(r)
		if cerr := r.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("%s: layer %d (%s): %w", img, i, img.LayerDigest(i), err)
		}
	}
	return l, nil
}

// apply merges one layer tar into the listing with the image-spec rules:
// whiteouts and opaque markers hide only what earlier layers put there.
func (l *Listing) apply(r io.Reader) error {
	tr := tar.NewReader(r)
	added := map[string]bool{} // paths this layer wrote
	buf := make([]byte, 128<<10)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			_, err = io.CopyBuffer(io.Discard, r, buf) // trailing bytes count toward the diff_id
			return err
		}
		if err != nil {
			return err
		}
		p, err := cleanName(hdr.Name)
		if err != nil {
			return err
		}
		if p == "" {
			continue // the root's own entry changes nothing a commit compares
		}
		dir, base := overlay.Split(p)
		if base == overlay.OpaqueMarker {
			if n := l.nodes[dir]; n != nil && n.meta.Type == overlay.TypeDir {
				for c := range n.children {
					if !added[overlay.Join(dir, c)] {
						l.remove(overlay.Join(dir, c))
					}
				}
			}
			continue
		}
		if name, ok := strings.CutPrefix(base, overlay.WhiteoutPrefix); ok {
			if name == "" || name == "." || name == ".." {
				return inputerr.New("tar entry %q: invalid whiteout", hdr.Name)
			}
			l.remove(overlay.Join(dir, name))
			continue
		}
		n := &listNode{meta: layer.Meta(hdr)}
		switch hdr.Typeflag {
		case tar.TypeDir:
			n.children = map[string]bool{}
			if old := l.nodes[p]; old != nil && old.meta.Type == overlay.TypeDir {
				n.children = old.children // a directory over a directory keeps its contents
			}
		case tar.TypeReg, tar.TypeRegA:
			h := sha256.New()
			if _, err := io.CopyBuffer(h, tr, buf); err != nil {
				return err
			}
			h.Sum(n.sum[:0])
		case tar.TypeLink:
			target, err := cleanName(hdr.Linkname)
			if err != nil {
				return err
			}
			t := l.nodes[target]
			if t == nil || t.meta.Type == overlay.TypeDir {
				return inputerr.New("tar entry %q: hardlink to %q, which is not a file of the layers so far", hdr.Name, hdr.Linkname)
			}
			n.meta, n.sum = t.meta, t.sum
		}
		if n.meta.Type == 0 {
			continue // types a layer dir cannot hold
		}
		if old := l.nodes[p]; old != nil && !(old.meta.Type == overlay.TypeDir && n.meta.Type == overlay.TypeDir) {
			l.remove(p)
		}
		l.ensureParent(dir)
		l.nodes[p] = n
		l.nodes[dir].children[base] = true
		added[p] = true
	}
}

// ensureParent creates missing parents as appliers do (0755, root), and
// replaces non-directories in the way.
func (l *Listing) ensureParent(dir string) {
	if n := l.nodes[dir]; n != nil && n.meta.Type == overlay.TypeDir {
		return
	}
	pd, base := overlay.Split(dir)
	l.ensureParent(pd)
	l.remove(dir)
	l.nodes[dir] = &listNode{meta: overlay.Meta{Type: overlay.TypeDir, Mode: 0o755}, children: map[string]bool{}}
	l.nodes[pd].children[base] = true
}

func (l *Listing) remove(p string) {
	n := l.nodes[p]
	if n == nil {
		return
	}
	for c := range n.children {
		l.remove(overlay.Join(p, c))
	}
	delete(l.nodes, p)
	dir, base := overlay.Split(p)
	if pn := l.nodes[dir]; pn != nil {
		delete(pn.children, base)
	}
}

func (l *Listing) Lookup(rel string) (*overlay.Meta, error) {
	if n := l.nodes[rel]; n != nil {
		m := n.meta
		return &m, nil
	}
	return nil, nil
}

func (l *Listing) Names(rel string) ([]string, error) {
	n := l.nodes[rel]
	if n == nil {
		return nil, nil
	}
	out := make([]string, 0, len(n.children))
	for c := range n.children {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

func (l *Listing) SameContent(rel, p string) (bool, error) {
	n := l.nodes[rel]
	if n == nil || n.meta.Type != overlay.TypeReg {
		return false, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum == n.sum, nil
}

// cleanName is unpack.LayerPath for the views (both merges): a refused name is bad input.
func cleanName(name string) (string, error) {
	rel, refused := unpack.LayerPath(name)
	if refused != "" {
		return "", inputerr.New("tar entry %q: %s", name, refused)
	}
	return rel, nil
}
