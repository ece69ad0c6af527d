package view

import (
	"io"

	"github.com/opencontainers/go-digest"
)

// Image is what a view reads: an image's layers, uncompressed. Its String
// names the image in messages.
type Image interface {
	String() string
	NumLayers() int
	// LayerDigest is the digest of layer i's blob, for messages.
	LayerDigest(i int) digest.Digest
	// OpenLayer opens layer i's tar; Close reports a tar that does not
	// match the layer's diff_id.
	OpenLayer(i int) (io.ReadCloser, error)
}
