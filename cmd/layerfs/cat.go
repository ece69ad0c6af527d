package main

import (
	"bufio"
	"io"

	"github.com/layerfs/layerfs/oci/view"
)

type catCmd struct {
	Ref  string `arg:"" name:"REF" help:"Image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] or docker://HOST/REPO[:TAG|@DIGEST]."`
	Path string `arg:"" name:"PATH" help:"File in the image. Symlinks are followed inside the image (at most 40)."`

	viewImageFlags `embed:""`
}

func (c *catCmd) Run(e *env) error {
	img, err := c.open(e, c.Ref)
	if err != nil {
		return err
	}
	defer img.Close()
	// Digests let Open check the bytes it reads a second time against
	// the pass that verified the layer's diff_id.
	v, err := view.Open(e.ctx, img, view.Options{Digests: true})
	if err != nil {
		return err
	}
	f, err := v.Open(e.ctx, c.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := bufio.NewWriterSize(e.stdout, 256<<10)
	if _, err := io.Copy(w, f); err != nil {
		return err
	}
	return w.Flush()
}
