package oci

import (
	"context"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// openDockerArchive reads an image from a `docker save` archive.
func openDockerArchive(ctx context.Context, ref Reference, opts OpenOptions) (*Image, error) {
	return nil, inputerr.New("%s: docker archives are not read yet", ref)
}

// writeDockerArchive writes an image as a `docker save` archive that
// `docker load` and `podman load` accept.
func writeDockerArchive(ctx context.Context, img *Image, dst Reference) (v1.Descriptor, error) {
	return v1.Descriptor{}, inputerr.New("%s: docker archives are not written yet", dst)
}

// writeOCIArchive writes an image as an oci-archive: (a tar of a layout).
func writeOCIArchive(ctx context.Context, img *Image, dst Reference) (v1.Descriptor, error) {
	return v1.Descriptor{}, inputerr.New("%s: OCI archives are not written yet", dst)
}
