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

	adds := make([]addedLayer, len(opts.Layers))
	for i, l := range opts.Layers {
		if err := ctx.Err(); err != nil {
			return mdesc, err
		}
		if err := o.lay.CopyBlob(l.Descriptor.Digest, l.Blob, func() (io.ReadCloser, error) { return os.Open(l.Blob) }); err != nil {
			return mdesc, fmt.Errorf("layer %s from %s: %w", l.Descriptor.Digest, l.Blob, err)
		}
		created := l.Created.UTC()
		adds[i] = addedLayer{l.Descriptor, l.DiffID, historyEntry{Created: &created, CreatedBy: l.CreatedBy, Comment: l.Comment, Author: opts.Config.Author}}
	}
	var base *baseImage
	if opts.Base != nil {
		base = &baseImage{opts.Base, opts.BaseRef}
	}
	mdesc, _, err = appendLayers(ctx, o, out.Tag, opts.Base, base, adds, &opts.Config, opts.Created)
	return mdesc, err
}

// addedLayer is a layer appendLayers puts on top, its blob already in
// the layout.
type addedLayer struct {
	desc    v1.Descriptor
	diffID  digest.Digest
	history historyEntry
}

// baseImage is the image a build or commit started from, as its manifest
// annotations name it: the image, and how the user named it.
type baseImage struct {
	img *Image
	ref *Reference
}

// appendLayers is the one assembly of an image (as go-containerregistry's
// mutate.Append): the parent's layers (nil: none), copied into the layout
// where it lacks them, then adds; the parent's config (else a new one for
// this machine's platform) with their diff_ids and history, dated created
// and edited by ch; the manifest, annotated with base where given; and
// the tag pointed at it. It returns the manifest's descriptor and its
// number of layers.
func appendLayers(ctx context.Context, o *output, tag string, parent *Image, base *baseImage, adds []addedLayer, ch *ConfigChanges, created time.Time) (mdesc v1.Descriptor, layers int, err error) {
	var manifest v1.Manifest
	cfg := config{}
	if parent != nil {
		manifest.Layers = append(manifest.Layers, parent.Manifest.Layers...)
		if cfg, err = parseConfig(parent.RawConfig); err != nil {
			return mdesc, 0, fmt.Errorf("%s: config: %w", parent.Ref, err)
		}
		for _, l := range parent.Manifest.Layers {
			if err := ctx.Err(); err != nil {
				return mdesc, 0, err
			}
			if err := o.lay.CopyBlob(l.Digest, parent.src.File(l.Digest), func() (io.ReadCloser, error) { return parent.src.Open(l.Digest) }); err != nil {
				return mdesc, 0, fmt.Errorf("copy %s from %s: %w", l.Digest, parent.Ref, err)
			}
		}
	} else {
		cfg.set("os", "linux")
		cfg.set("architecture", runtime.GOARCH)
	}
	for _, a := range adds {
		cfg.appendLayer(a.diffID, a.history)
		manifest.Layers = append(manifest.Layers, a.desc)
	}
	cfg.set("created", created.UTC())
	cfg.apply(ch)
	rawCfg, err := cfg.marshal()
	if err != nil {
		return mdesc, 0, err
	}
	if manifest.Config, err = o.lay.PutBlob(v1.MediaTypeImageConfig, rawCfg); err != nil {
		return mdesc, 0, err
	}
	manifest.SchemaVersion = 2
	manifest.MediaType = v1.MediaTypeImageManifest
	if base != nil {
		// The base's name only where it names something portable: a local
		// path would make the manifest depend on where the build ran.
		manifest.Annotations = map[string]string{v1.AnnotationBaseImageDigest: base.img.ManifestDesc.Digest.String()}
		if base.ref != nil && base.ref.Transport == TransportDocker {
			manifest.Annotations[v1.AnnotationBaseImageName] = base.ref.String()
		}
	}
	rawManifest, err := json.Marshal(manifest)
	if err != nil {
		return mdesc, 0, err
	}
	if mdesc, err = o.lay.PutBlob(v1.MediaTypeImageManifest, rawManifest); err != nil {
		return mdesc, 0, err
	}
	osName, arch, variant := cfg.platform()
	mdesc.Platform = &v1.Platform{OS: osName, Architecture: arch, Variant: variant}
	mdesc.Annotations = map[string]string{v1.AnnotationRefName: tag}
	if err = o.tag(tag, mdesc); err != nil {
		return mdesc, 0, err
	}
	return mdesc, len(manifest.Layers), nil
}

// String names the image in messages: its reference.
func (img *Image) String() string { return img.Ref.String() }

// NumLayers is the number of layers of the image.
func (img *Image) NumLayers() int { return len(img.Manifest.Layers) }

// LayerDigest is the digest of layer i's blob.
func (img *Image) LayerDigest(i int) digest.Digest { return img.Manifest.Layers[i].Digest }

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
