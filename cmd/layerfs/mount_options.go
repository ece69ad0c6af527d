package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/layers"
	"github.com/layerfs/layerfs/oci"
)

// options checks the command line and makes every path absolute: the
// daemon outlives the caller's working directory.
func (c *mountCmd) options() (fs.Options, error) {
	var o fs.Options
	mp, err := absDir(c.Mountpoint, "mountpoint", true)
	if err != nil {
		return o, err
	}
	c.Mountpoint = mp
	for _, l := range c.Lower {
		p, err := absDir(l, "--lower", false)
		if err != nil {
			return o, err
		}
		o.Lowers = append(o.Lowers, p)
	}
	if c.Workdir != "" && c.Upper == "" {
		return o, inputerr.New("--workdir %s: only makes sense with --upper", c.Workdir)
	}
	if c.Upper != "" {
		up, err := filepath.Abs(c.Upper)
		if err != nil {
			return o, inputerr.Wrap(err)
		}
		if err := os.MkdirAll(up, 0o755); err != nil {
			return o, inputerr.New("--upper %s: %v", c.Upper, err)
		}
		if up, err = absDir(up, "--upper", false); err != nil {
			return o, err
		}
		if c.RO {
			o.Lowers = append(o.Lowers, up)
		} else {
			o.Upper = up
			o.Work = fs.DefaultWorkdir(up)
			if c.Workdir != "" {
				if o.Work, err = filepath.Abs(c.Workdir); err != nil {
					return o, inputerr.Wrap(err)
				}
			}
			// Checked before it is made: it must not appear in the upper.
			if rel, err := filepath.Rel(up, o.Work); err == nil && !strings.HasPrefix(rel, "..") {
				return o, inputerr.New("workdir %s is inside the upper %s: it would become part of the layer", o.Work, up)
			}
			if err := os.MkdirAll(o.Work, 0o700); err != nil {
				return o, inputerr.New("--workdir %s: %v", o.Work, err)
			}
		}
	}
	o.Debug = c.Debug
	if err := c.imageOptions(); err != nil {
		return o, err
	}
	if len(c.Lower) == 0 && c.Upper == "" && c.Image == "" {
		return o, inputerr.New("%s: nothing to mount: give --lower, --upper or --image", c.Mountpoint)
	}
	return o, nil
}

// imageOptions checks the --image flags and makes the reference's path
// and the cache absolute, for the daemon.
func (c *mountCmd) imageOptions() error {
	if c.Image == "" {
		for _, f := range []struct {
			flag string
			set  bool
		}{{"--cache", c.Cache != ""}, {"--platform", c.Platform != ""}, {"--strict", c.Strict}, {"--insecure", c.Insecure}} {
			if f.set {
				return inputerr.New("%s: only makes sense with --image", f.flag)
			}
		}
		return nil
	}
	ref, err := oci.ParseReference(c.Image)
	if err != nil {
		return err
	}
	if ref.Path != "" {
		if ref.Path, err = filepath.Abs(ref.Path); err != nil {
			return inputerr.New("--image %s: %v", c.Image, err)
		}
		c.Image = ref.String()
	}
	if c.Platform != "" {
		if _, err := oci.ParsePlatform(c.Platform); err != nil {
			return err
		}
	}
	if _, err := cache.ParseSize(c.MaxLayerSize); err != nil {
		return inputerr.New("--max-layer-size %q: %v", c.MaxLayerSize, err)
	}
	if c.Cache == "" {
		c.Cache = cache.DefaultDir()
	}
	if c.Cache, err = filepath.Abs(c.Cache); err != nil {
		return inputerr.New("--cache %s: %v", c.Cache, err)
	}
	return nil
}

// applyImage opens the --image and makes its layers cache entries, held
// in use until the returned image is released: as long as the daemon
// serves them, no prune takes them.
func (c *mountCmd) applyImage(ctx context.Context, rep *fs.Reporter) (*layers.AppliedImage, error) {
	ref, err := oci.ParseReference(c.Image)
	if err != nil {
		return nil, err
	}
	flags := viewImageFlags{Platform: c.Platform, Strict: c.Strict, Insecure: c.Insecure}
	opts, err := flags.openOptions(rep.Warn)
	if err != nil {
		return nil, err
	}
	maxSize, err := cache.ParseSize(c.MaxLayerSize)
	if err != nil {
		return nil, inputerr.New("--max-layer-size %q: %v", c.MaxLayerSize, err)
	}
	ca, err := cache.Open(c.Cache)
	if err != nil {
		return nil, err
	}
	img, err := oci.Open(ctx, ref, opts)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	n := len(img.Manifest.Layers)
	plural := "s"
	if n == 1 {
		plural = ""
	}
	rep.Log(fmt.Sprintf("image %s: manifest %s, %d layer%s", ref, img.ManifestDesc.Digest, n, plural))
	return layers.ApplyImage(ctx, ca, img, layers.ApplyImageOptions{MaxLayerSize: maxSize, Warn: rep.Warn, Log: rep})
}

// absDir resolves p and checks it is a directory. A mountpoint whose
// daemon died answers ENOTCONN; mount clears it.
func absDir(p, what string, mountpoint bool) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", inputerr.New("%s %s: %v", what, p, err)
	}
	st, err := os.Stat(abs)
	if mountpoint && errors.Is(err, syscall.ENOTCONN) {
		return abs, nil
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", inputerr.New("%s %s: does not exist", what, p)
		}
		return "", inputerr.New("%s %s: %v", what, p, err)
	}
	if !st.IsDir() {
		return "", inputerr.New("%s %s: not a directory", what, p)
	}
	return abs, nil
}
