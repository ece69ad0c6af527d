package oci

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/oci/unpack"
)

// ImageLayer is one layer a build puts on top of its base.
type ImageLayer struct {
	Descriptor v1.Descriptor
	DiffID     digest.Digest
	// Blob is a file holding the layer blob. It is hardlinked into the
	// layout when both are on one filesystem, so that a cached layer costs
	// no copy; else it is copied and its digest verified.
	Blob      string
	Created   time.Time
	CreatedBy string
	Comment   string
}

// WriteImageOptions describe an image made of a base and new layers.
type WriteImageOptions struct {
	// Image is the output, an oci: reference; the tag (default latest) is
	// replaced, every other tag of the layout stays.
	Image Reference
	// Base is the image the layers go on, nil for none. BaseRef is how the
	// user named it.
	Base    *Image
	BaseRef *Reference
	Layers  []ImageLayer
	Config  ConfigChanges
	// Created dates the config.
	Created time.Time
	// Insecure allows plain HTTP to a registry Image names.
	Insecure bool
}

// WriteImage writes the base's layers plus opts.Layers as one image and
// points the tag at it. On failure the layout is left as it was.
func WriteImage(ctx context.Context, opts WriteImageOptions) (mdesc v1.Descriptor, err error) {
	if err := opts.Config.Validate(); err != nil {
		return mdesc, err
	}
	out := opts.Image
	if out.Transport != TransportOCI {
		return viaLayout(ctx, out, opts.Insecure, func(tmp Reference) error {
			opts.Image = tmp
			_, err := WriteImage(ctx, opts)
			return err
		})
	}
	if out.Tag == "" {
		out.Tag = "latest"
	}
	o, err := openOutput(out)
	if err != nil {
		return mdesc, err
	}
	defer func() { o.close(err) }()

	var manifest v1.Manifest
	cfg := config{}
	if base := opts.Base; base != nil {
		manifest.Layers = append(manifest.Layers, base.Manifest.Layers...)
		if cfg, err = parseConfig(base.RawConfig); err != nil {
			return mdesc, fmt.Errorf("%s: config: %w", base.Ref, err)
		}
		for _, l := range base.Manifest.Layers {
			if err := ctx.Err(); err != nil {
				return mdesc, err
			}
			if err := o.lay.CopyBlob(l.Digest, base.src.File(l.Digest), func() (io.ReadCloser, error) { return base.src.Open(l.Digest) }); err != nil {
				return mdesc, fmt.Errorf("copy %s from %s: %w", l.Digest, base.Ref, err)
			}
		}
	} else {
		cfg.set("os", "linux")
		cfg.set("architecture", runtime.GOARCH)
	}
	for _, l := range opts.Layers {
		if err := ctx.Err(); err != nil {
			return mdesc, err
		}
		if err := o.lay.CopyBlob(l.Descriptor.Digest, l.Blob, func() (io.ReadCloser, error) { return os.Open(l.Blob) }); err != nil {
			return mdesc, fmt.Errorf("layer %s from %s: %w", l.Descriptor.Digest, l.Blob, err)
		}
		created := l.Created.UTC()
		cfg.appendLayer(l.DiffID, historyEntry{Created: &created, CreatedBy: l.CreatedBy, Comment: l.Comment, Author: opts.Config.Author})
		manifest.Layers = append(manifest.Layers, l.Descriptor)
	}
	cfg.set("created", opts.Created.UTC())
	cfg.apply(&opts.Config)
	rawCfg, err := cfg.marshal()
	if err != nil {
		return mdesc, err
	}
	if manifest.Config, err = o.lay.PutBlob(v1.MediaTypeImageConfig, rawCfg); err != nil {
		return mdesc, err
	}
	manifest.SchemaVersion = 2
	manifest.MediaType = v1.MediaTypeImageManifest
	if opts.Base != nil {
		manifest.Annotations = map[string]string{v1.AnnotationBaseImageDigest: opts.Base.ManifestDesc.Digest.String()}
		if opts.BaseRef != nil && opts.BaseRef.Transport == TransportDocker {
			manifest.Annotations[v1.AnnotationBaseImageName] = opts.BaseRef.String()
		}
	}
	rawManifest, err := json.Marshal(manifest)
	if err != nil {
		return mdesc, err
	}
	if mdesc, err = o.lay.PutBlob(v1.MediaTypeImageManifest, rawManifest); err != nil {
		return mdesc, err
	}
	osName, arch, variant := cfg.platform()
	mdesc.Platform = &v1.Platform{OS: osName, Architecture: arch, Variant: variant}
	mdesc.Annotations = map[string]string{v1.AnnotationRefName: out.Tag}
	if err = o.tag(out.Tag, mdesc); err != nil {
		return mdesc, err
	}
	return mdesc, nil
}

// BlobFile is the file holding blob d of the image when it is stored as
// one (an oci: layout), else "".
func (img *Image) BlobFile(d digest.Digest) string { return img.src.File(d) }

// OpenBlob opens blob d of the image.
func (img *Image) OpenBlob(d digest.Digest) (io.ReadCloser, error) { return img.src.Open(d) }

// ApplyImageLayer applies layer i of img into dir (see Apply), reading the
// blob through img.OpenLayer, and checks the layer's diff_id once the
// stream has been read to its end. A mismatch is an error; dir must then be
// discarded like after any other error.
func ApplyImageLayer(ctx context.Context, img *Image, i int, dir string, opts unpack.Options) (unpack.Result, error) {
	if i < 0 || i >= len(img.Manifest.Layers) {
		return unpack.Result{}, fmt.Errorf("%s: no layer %d (the image has %d)", img.Ref, i, len(img.Manifest.Layers))
	}
	desc := img.Manifest.Layers[i]
	rc, err := img.OpenLayer(i)
	if err != nil {
		return unpack.Result{}, fmt.Errorf("%s: layer %d (%s): %w", img.Ref, i, desc.Digest, err)
	}
	res, err := unpack.Apply(ctx, rc, dir, opts)
	// Close checks the diff_id only after EOF, which Apply reached unless
	// it failed; a failure is reported before a mismatch it may explain.
	if cerr := rc.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, fmt.Errorf("%s: layer %d (%s): %w", img.Ref, i, desc.Digest, err)
	}
	return res, nil
}
