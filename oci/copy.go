package oci

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// CopyOptions say how to read the source and write the destination.
type CopyOptions struct {
	OpenOptions
	// Warn reports what the user should know (a pull by tag).
}

// Copy copies the image src names to dst, in any transports, keeping its
// manifest digest. The destination tag is replaced; a layout's other tags
// stay. On failure the destination is left as it was.
func Copy(ctx context.Context, src, dst Reference, opts CopyOptions) (v1.Descriptor, error) {
	img, err := Open(ctx, src, opts.OpenOptions)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer img.Close()
	return WriteTo(ctx, img, dst, opts)
}

// WriteTo writes an open image to dst.
func WriteTo(ctx context.Context, img *Image, dst Reference, opts CopyOptions) (v1.Descriptor, error) {
	switch dst.Transport {
	case TransportOCI:
		return writeLayoutImage(ctx, img, dst)
	case TransportOCIArchive:
		return writeOCIArchive(ctx, img, dst)
	case TransportDockerArchive:
		return writeDockerArchive(ctx, img, dst)
	case TransportDocker:
		return pushRegistry(ctx, img, dst, opts)
	}
	return v1.Descriptor{}, fmt.Errorf("%s: unknown transport %s", dst, dst.Transport)
}

// writeLayoutImage copies img's blobs into an oci: layout (hardlinked
// where they are files on the same filesystem) and tags its manifest.
func writeLayoutImage(ctx context.Context, img *Image, dst Reference) (mdesc v1.Descriptor, err error) {
	if dst.Tag == "" {
		dst.Tag = "latest"
	}
	o, err := openOutput(dst)
	if err != nil {
		return mdesc, err
	}
	defer func() { o.close(err) }()
	blobs := append([]v1.Descriptor{img.Manifest.Config}, img.Manifest.Layers...)
	for _, b := range blobs {
		if err := ctx.Err(); err != nil {
			return mdesc, err
		}
		if err := o.lay.CopyBlob(b.Digest, img.BlobFile(b.Digest), func() (io.ReadCloser, error) { return img.OpenBlob(b.Digest) }); err != nil {
			return mdesc, fmt.Errorf("copy %s from %s: %w", b.Digest, img.Ref, err)
		}
	}
	if mdesc, err = o.lay.PutBlob(img.ManifestDesc.MediaType, img.RawManifest); err != nil {
		return mdesc, err
	}
	if img.Config.OS != "" {
		mdesc.Platform = &v1.Platform{OS: img.Config.OS, Architecture: img.Config.Architecture, Variant: img.Config.Variant}
	}
	mdesc.Annotations = map[string]string{v1.AnnotationRefName: dst.Tag}
	if err = o.tag(dst.Tag, mdesc); err != nil {
		return mdesc, err
	}
	return mdesc, nil
}

// viaLayout writes an image that make builds in a temporary oci: layout to
// dst, any transport, whole: the writers that build images only need to
// know layouts.
func viaLayout(ctx context.Context, dst Reference, insecure bool, make func(tmp Reference) error) (v1.Descriptor, error) {
	dir, err := os.MkdirTemp("", "layerfs-image-")
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer os.RemoveAll(dir)
	tmp := Reference{Transport: TransportOCI, Path: filepath.Join(dir, "layout"), Tag: "image"}
	if err := make(tmp); err != nil {
		return v1.Descriptor{}, err
	}
	img, err := OpenImage(tmp)
	if err != nil {
		return v1.Descriptor{}, err
	}
	defer img.Close()
	return WriteTo(ctx, img, dst, CopyOptions{OpenOptions: OpenOptions{Insecure: insecure}})
}
