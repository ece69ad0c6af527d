package layers

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/oci"
)

// ApplyImageOptions say how ApplyImage applies an image's layers.
type ApplyImageOptions struct {
	// MaxLayerSize caps each layer's uncompressed size; 0 means no limit.
	MaxLayerSize int64
	Warn         func(string)
	// Log gets a line per layer: found in the cache, or applied into it.
	Log io.Writer
}

// AppliedImage is an image whose layers are cache entries in use.
type AppliedImage struct {
	// Rootfs are the entries' layer dirs, base first: the lowers of a
	// mount of the image's merged view.
	Rootfs []string
	Layers []LayerReport
	// Release lets the entries go (their Use locks); until then no prune,
	// rm or quarantine takes them. It may be called more than once.
	Release func()
}

// ApplyImage makes every layer of img a cache entry, exactly as a build
// does for its base image (keyed by diff_id, applied once by the hostile
// tar applier, shared with builds on the same base), and holds each in
// use. On error nothing is held.
func ApplyImage(ctx context.Context, c *cache.Cache, img *oci.Image, opts ApplyImageOptions) (*AppliedImage, error) {
	if opts.Warn == nil {
		opts.Warn = func(string) {}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	// A builder without a spec has what base layers need: the cache,
	// the apply options, and lookupOrMake's lock, lookup, insert and Use.
	b := &builder{opts: Options{Cache: c, MaxLayerSize: opts.MaxLayerSize, Warn: opts.Warn}, spec: &Spec{}}
	release := sync.OnceFunc(func() {
		for _, r := range b.release {
			r()
		}
	})
	res := &AppliedImage{Release: release}
	n := len(img.Manifest.Layers)
	for i := range n {
		start := time.Now()
		e, rep, err := b.baseLayer(ctx, img, i)
		if err != nil {
			// Apply errors name the image and layer; cache errors the entry.
			release()
			return nil, err
		}
		what := "in the cache"
		if !rep.Hit {
			what = fmt.Sprintf("applied into the cache in %.1fs", time.Since(start).Seconds())
		}
		fmt.Fprintf(opts.Log, "layer %d/%d %s (diff_id %s): %s (%s)\n", i+1, n, shortDigest(rep.Digest.String()), shortDigest(rep.DiffID.String()), what, e.Name())
		res.Rootfs = append(res.Rootfs, e.Rootfs())
		res.Layers = append(res.Layers, rep)
	}
	return res, nil
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}
