// Package ocitest writes small OCI image layouts from handmade layer tars,
// so that the appliers can be checked on layers whose exact bytes the test
// chose, independently of layerfs.
package ocitest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/google/go-containerregistry/pkg/compression"
)

// RefNameAnnotation is the index annotation that names a tag in a layout.
const RefNameAnnotation = "org.opencontainers.image.ref.name"

// Entry is one tar entry: a header and, for regular files, the content.
type Entry struct {
	Hdr  tar.Header
	Body []byte
}

// Tar serialises entries, in order, as a PAX tar.
func Tar(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.Hdr
		h.Format = tar.FormatPAX
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.Body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1_600_000_000, 0)
		}
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("tar header %q: %w", h.Name, err)
		}
		if len(e.Body) > 0 {
			if _, err := tw.Write(e.Body); err != nil {
				return nil, fmt.Errorf("tar body %q: %w", h.Name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return buf.Bytes(), nil
}

// Layer is an uncompressed layer tar and how to store it.
type Layer struct {
	Tar         []byte
	Compression string // "gzip" (default), "zstd" or "none"
}

func (l Layer) v1Layer() (v1.Layer, error) {
	opener := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(l.Tar)), nil }
	switch l.Compression {
	case "", "gzip":
		return tarball.LayerFromOpener(opener, tarball.WithMediaType(types.OCILayer))
	case "zstd":
		return tarball.LayerFromOpener(opener, tarball.WithCompression(compression.ZStd), tarball.WithMediaType(types.OCILayerZStd))
	case "none":
		return static.NewLayer(l.Tar, types.OCIUncompressedLayer), nil
	}
	return nil, fmt.Errorf("unknown compression %q", l.Compression)
}

// WriteImage writes a new OCI layout at dir holding one linux/amd64 image
// with the given layers (base first), tagged tag.
func WriteImage(dir, tag string, layers []Layer) error {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	for i, l := range layers {
		vl, err := l.v1Layer()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if img, err = mutate.AppendLayers(img, vl); err != nil {
			return fmt.Errorf("append layer %d: %w", i, err)
		}
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("new layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{RefNameAnnotation: tag})); err != nil {
		return fmt.Errorf("write image to %s: %w", dir, err)
	}
	return nil
}
