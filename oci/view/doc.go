// Package view reads an image's merged filesystem from its layer blobs,
// with nothing unpacked: View (ls, cat, inspect, diff) merges the layers
// as unpackers do, Listing (the lower a commit onto an image is diffed
// against) as the union of their layer dirs does.
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
