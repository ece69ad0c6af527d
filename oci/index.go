package oci

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// IndexResult describes a written multi-platform index.
type IndexResult struct {
	Image Reference
	Index v1.Descriptor
	// Manifests are the index's entries, in the order of the images,
	// each with its platform.
	Manifests []v1.Descriptor
}

// ImagePlatform is the platform an image's config names.
func ImagePlatform(img *Image) (*v1.Platform, error) {
	c := img.Config
	if c.OS == "" || c.Architecture == "" {
		return nil, inputerr.New("%s: the config names no os and architecture (set them with commit --os/--arch)", img.Ref)
	}
	p := &v1.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant, OSVersion: c.OSVersion}
	if len(c.OSFeatures) > 0 {
		p.OSFeatures = append([]string(nil), c.OSFeatures...)
	}
	return p, nil
}

// samePlatform reports whether a puller could not tell a and b apart.
// arm64 without a variant is arm64/v8, as containerd normalizes it.
func samePlatform(a, b *v1.Platform) bool {
	variant := func(p *v1.Platform) string {
		if p.Architecture == "arm64" && p.Variant == "" {
			return "v8"
		}
		return p.Variant
	}
	return a.OS == b.OS && a.Architecture == b.Architecture && variant(a) == variant(b) && a.OSVersion == b.OSVersion
}

// WriteIndex joins single-platform images into one multi-platform OCI
// image index, each entry's platform taken from the image's config, and
// tags it in the oci: layout dst (default tag latest; other tags stay).
// The images' blobs are hardlinked or copied in, their manifests kept
// byte for byte, so each entry's digest is the image's. Two images of
// one platform are bad input: a puller could only ever get the first.
// On failure the layout is left as it was.
func WriteIndex(ctx context.Context, dst Reference, imgs []*Image) (res IndexResult, err error) {
	if dst.Transport != TransportOCI {
		return res, inputerr.New("%s: an index is written to an oci:DIR[:TAG] layout", dst)
	}
	if len(imgs) == 0 {
		return res, inputerr.New("%s: no images to index", dst)
	}
	if dst.Tag == "" {
		dst.Tag = "latest"
	}
	res.Image = dst
	for _, img := range imgs {
		p, err := ImagePlatform(img)
		if err != nil {
			return res, err
		}
		for j, prev := range res.Manifests {
			if samePlatform(p, prev.Platform) {
				return res, inputerr.New("%s and %s are both %s images; an index holds one image per platform", imgs[j].Ref, img.Ref, FormatPlatform(p))
			}
		}
		mt := img.ManifestDesc.MediaType
		if mt == "" {
			if mt = img.Manifest.MediaType; mt == "" {
				mt = v1.MediaTypeImageManifest
			}
		}
		res.Manifests = append(res.Manifests, v1.Descriptor{MediaType: mt, Digest: img.ManifestDesc.Digest, Size: int64(len(img.RawManifest)), Platform: p})
	}

	o, err := openOutput(dst)
	if err != nil {
		return res, err
	}
	defer func() { o.close(err) }()
	for i, img := range imgs {
		blobs := append([]v1.Descriptor{img.Manifest.Config}, img.Manifest.Layers...)
		for _, b := range blobs {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			if err := o.lay.CopyBlob(b.Digest, img.BlobFile(b.Digest), func() (io.ReadCloser, error) { return img.OpenBlob(b.Digest) }); err != nil {
				return res, fmt.Errorf("copy %s from %s: %w", b.Digest, img.Ref, err)
			}
		}
		desc, err := o.lay.PutBlob(res.Manifests[i].MediaType, img.RawManifest)
		if err != nil {
			return res, fmt.Errorf("manifest of %s: %w", img.Ref, err)
		}
		if desc.Digest != res.Manifests[i].Digest {
			return res, fmt.Errorf("%s: manifest is %s, not %s as described", img.Ref, desc.Digest, res.Manifests[i].Digest)
		}
	}
	raw, err := json.Marshal(v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex, Manifests: res.Manifests})
	if err != nil {
		return res, err
	}
	if res.Index, err = o.lay.PutBlob(v1.MediaTypeImageIndex, raw); err != nil {
		return res, err
	}
	if err = o.tag(dst.Tag, res.Index); err != nil {
		return res, fmt.Errorf("%s: %w", dst, err)
	}
	return res, nil
}
