package main

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
)

type indexCmd struct {
	Dst      string   `arg:"" name:"DST" placeholder:"oci:DIR[:TAG]" help:"The layout and tag (default latest) the index is written to; other tags stay."`
	Add      []string `required:"" sep:"none" placeholder:"REF" help:"A single-platform image (any transport), its platform taken from its config (repeatable, one per platform)."`
	Strict   bool     `help:"A registry pull by tag, without a digest, is an error instead of a warning."`
	Insecure bool     `help:"Allow plain HTTP, and HTTPS without certificate checks, to the registries named."`
	JSON     bool     `name:"json" help:"Print the index's digest and entries as one JSON object."`
}

// indexEntry is one line of the output, and of --json's "manifests".
type indexEntry struct {
	Platform string        `json:"platform"`
	Digest   digest.Digest `json:"digest"`
	Size     int64         `json:"size"`
	Source   string        `json:"source"`
}

func (c *indexCmd) Run(e *env) error {
	dst, err := oci.ParseReference(c.Dst)
	if err != nil {
		return err
	}
	if dst.Transport != oci.TransportOCI {
		return inputerr.New("%s: an index is written to an oci:DIR[:TAG] layout", c.Dst)
	}
	var imgs []*oci.Image
	defer func() {
		for _, img := range imgs {
			img.Close()
		}
	}()
	for _, a := range c.Add {
		ref, err := oci.ParseReference(a)
		if err != nil {
			return err
		}
		img, err := oci.Open(e.ctx, ref, oci.OpenOptions{Strict: c.Strict, Insecure: c.Insecure, Warn: e.warn})
		if err != nil {
			return err
		}
		imgs = append(imgs, img)
	}
	res, err := oci.WriteIndex(e.ctx, dst, imgs)
	if err != nil {
		return err
	}
	entries := make([]indexEntry, len(res.Manifests))
	for i, m := range res.Manifests {
		entries[i] = indexEntry{Platform: oci.FormatPlatform(m.Platform), Digest: m.Digest, Size: m.Size, Source: c.Add[i]}
	}
	if c.JSON {
		return json.NewEncoder(e.stdout).Encode(struct {
			Image     string        `json:"image"`
			Digest    digest.Digest `json:"digest"`
			Manifests []indexEntry  `json:"manifests"`
		}{res.Image.String(), res.Index.Digest, entries})
	}
	fmt.Fprintf(e.stdout, "index    %s (%d platforms, digest %s)\n", res.Image, len(entries), res.Index.Digest)
	for _, m := range entries {
		fmt.Fprintf(e.stdout, "  %-16s %s  %s\n", m.Platform, m.Digest, m.Source)
	}
	return nil
}
