package appliers

import (
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// refNameAnnotation is how an OCI layout's index.json names a tag.
const refNameAnnotation = "org.opencontainers.image.ref.name"

// Image opens the image tagged tag in the OCI layout at dir.
func Image(dir, tag string) (v1.Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("open layout %s: %w", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("index of %s: %w", dir, err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("index manifest of %s: %w", dir, err)
	}
	var found []v1.Hash
	for _, d := range im.Manifests {
		if d.Annotations[refNameAnnotation] == tag {
			found = append(found, d.Digest)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("layout %s: %d manifests tagged %q, want 1", dir, len(found), tag)
	}
	img, err := idx.Image(found[0])
	if err != nil {
		return nil, fmt.Errorf("image %s:%s: %w", dir, tag, err)
	}
	return img, nil
}

// forEachLayer calls fn with each layer's uncompressed tar, base first.
// ggcr's Uncompressed detects gzip, zstd and plain tars alike, and its
// readers verify the blob digest when fully read.
func forEachLayer(dir, tag string, fn func(i int, r io.Reader) error) error {
	img, err := Image(dir, tag)
	if err != nil {
		return err
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("layers of %s:%s: %w", dir, tag, err)
	}
	for i, l := range layers {
		if err := applyOne(i, l, fn); err != nil {
			return err
		}
	}
	return nil
}

func applyOne(i int, l v1.Layer, fn func(int, io.Reader) error) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return fmt.Errorf("open layer %d: %w", i, err)
	}
	defer rc.Close()
	if err := fn(i, rc); err != nil {
		return fmt.Errorf("layer %d: %w", i, err)
	}
	// Drain trailing bytes so that the verifying reader checks the digest.
	if _, err := io.Copy(io.Discard, rc); err != nil {
		return fmt.Errorf("layer %d: verify: %w", i, err)
	}
	return nil
}

// LayerCount returns how many layers the image tagged tag has.
func LayerCount(dir, tag string) (int, error) {
	img, err := Image(dir, tag)
	if err != nil {
		return 0, err
	}
	ls, err := img.Layers()
	if err != nil {
		return 0, fmt.Errorf("layers of %s:%s: %w", dir, tag, err)
	}
	return len(ls), nil
}
