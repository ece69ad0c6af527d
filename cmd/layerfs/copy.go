package main

import (
	"encoding/json"
	"fmt"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/oci"
)

type copyCmd struct {
	Src      string `arg:"" name:"SRC" help:"Image to read: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG] or docker://HOST/REPO[:TAG|@sha256:...]."`
	Dst      string `arg:"" name:"DST" help:"Where to write it, in any of the same transports. The manifest digest is kept."`
	Platform string `placeholder:"OS/ARCH[/VARIANT]" help:"Image to take from a multi-platform index (default: this machine's). armhf and armel mean arm/v7 and arm/v6."`
	Strict   bool   `help:"Refuse a registry pull by tag without a digest (otherwise a warning names the digest to pin)."`
	Insecure bool   `help:"Allow plain HTTP, and HTTPS without certificate checks, to the registries named."`
	JSON     bool   `name:"json" help:"Print the result as one JSON object."`
}

func (c *copyCmd) Run(e *env) error {
	src, err := oci.ParseReference(c.Src)
	if err != nil {
		return err
	}
	dst, err := oci.ParseReference(c.Dst)
	if err != nil {
		return err
	}
	var platform *v1.Platform
	if c.Platform != "" {
		if platform, err = oci.ParsePlatform(c.Platform); err != nil {
			return err
		}
	}
	desc, err := oci.Copy(e.ctx, src, dst, oci.CopyOptions{OpenOptions: oci.OpenOptions{
		Platform: platform, Strict: c.Strict, Insecure: c.Insecure, Warn: e.warn,
	}})
	if err != nil {
		return err
	}
	if c.JSON {
		res := map[string]any{
			"source":      src.String(),
			"destination": dst.String(),
			"digest":      desc.Digest,
			"media_type":  desc.MediaType,
			"size":        desc.Size,
		}
		if desc.Platform != nil {
			res["platform"] = oci.FormatPlatform(desc.Platform)
		}
		return json.NewEncoder(e.stdout).Encode(res)
	}
	// The digest alone, so that a script can pin what it copied.
	fmt.Fprintln(e.stdout, desc.Digest)
	return nil
}
