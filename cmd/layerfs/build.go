package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/layers"
)

type buildCmd struct {
	Spec         string   `arg:"" optional:"" placeholder:"SPEC.yaml" help:"Build spec (YAML). Without it, --image and --layer describe the build."`
	Image        string   `placeholder:"oci:DIR[:TAG]" help:"Output image; overrides the spec's image:. The tag is replaced, other tags stay."`
	Base         string   `placeholder:"REF" help:"Base image; overrides the spec's base:."`
	Cache        string   `placeholder:"DIR" help:"Layer cache (default: $XDG_CACHE_HOME/layerfs)."`
	Layer        []string `sep:"none" placeholder:"NAME:TYPE:A+B" help:"A layer in the Yocto OCI_LAYERS form (repeatable); replaces the spec's layers:. For host layers each item is SRC:DST."`
	Rootfs       string   `placeholder:"DIR" help:"Source rootfs of directories and files layers given with --layer."`
	Mode         string   `enum:",multi,single" default:"" placeholder:"multi|single" help:"multi: a layer per entry; single: everything above the base as one layer."`
	Machine      string   `help:"Machine name (part of every cache key); overrides the spec's machine:."`
	Arch         string   `help:"Image architecture; overrides the spec's arch:."`
	Install      string   `placeholder:"COMMAND" help:"Install command of packages layers; overrides the spec's install:."`
	Compression  string   `enum:",gzip,zstd,none" default:"" placeholder:"gzip|zstd|none" help:"Layer compression; overrides the spec's compression:."`
	MaxLayerSize string   `default:"64G" placeholder:"SIZE" help:"Refuse base-image layers that unpack to more than SIZE (a decompression bomb); default 64G."`
	Threads      int      `help:"Compression threads (default: all CPUs). The output does not depend on it."`
	Strict       bool     `help:"A registry base image pulled by tag, without a digest, is an error."`
	Insecure     bool     `help:"Allow plain HTTP to the registries of the base image and the output."`
	Quiet        bool     `short:"q" help:"Do not show the install commands' output."`
	JSON         bool     `name:"json" help:"Print the result, with per-layer keys, hits and timings, as one JSON object."`
}

func (c *buildCmd) Run(e *env) error {
	spec, err := c.spec()
	if err != nil {
		return err
	}
	// A build killed while it had a mount leaves a dead one in its temp
	// entry; it goes first, so that the cache can sweep the temp.
	if _, err := fs.ClearStale(); err != nil {
		e.warn(fmt.Sprintf("clearing dead mounts: %v", err))
	}
	cdir := c.Cache
	if cdir == "" {
		cdir = cache.DefaultDir()
	}
	ca, err := cache.Open(cdir)
	if err != nil {
		return err
	}
	maxSize, err := cache.ParseSize(c.MaxLayerSize)
	if err != nil {
		return inputerr.New("--max-layer-size %q: %v", c.MaxLayerSize, err)
	}
	epoch, err := sourceDateEpoch("")
	if err != nil {
		return err
	}
	log := e.stdout
	var output io.Writer = e.stderr
	if c.JSON {
		log = e.stderr // stdout is the JSON alone
	}
	if c.Quiet {
		output = nil
	}
	res, err := layers.Build(e.ctx, layers.Options{
		Spec: spec, Cache: ca, Log: log, Output: output, Warn: e.warn,
		SourceDateEpoch: epoch, MaxLayerSize: maxSize, Threads: c.Threads, Strict: c.Strict, Insecure: c.Insecure,
	})
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	fmt.Fprintf(e.stdout, "image    %s (%d layers, manifest %s)\n", res.Image, len(res.Base)+len(res.Layers), res.Manifest)
	return nil
}

// spec reads the spec file, if any, and applies the flags over it.
func (c *buildCmd) spec() (*layers.Spec, error) {
	var s *layers.Spec
	if c.Spec != "" {
		var err error
		if s, err = layers.Load(c.Spec); err != nil {
			return nil, err
		}
	} else {
		if len(c.Layer) == 0 {
			return nil, inputerr.New("give a SPEC.yaml, or --image and --layer")
		}
		wd, err := os.Getwd()
		if err != nil {
			return nil, err
		}
		s = &layers.Spec{File: "(flags)", Dir: wd}
	}
	if c.Layer != nil {
		s.Layers = nil
		rootfs := c.Rootfs
		if rootfs != "" {
			rootfs, _ = filepath.Abs(rootfs)
		}
		for _, f := range c.Layer {
			l, err := layers.ParseLayerFlag(f, rootfs)
			if err != nil {
				return nil, err
			}
			s.Layers = append(s.Layers, l)
		}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&s.Image, c.Image)
	set(&s.Base, c.Base)
	set(&s.Mode, c.Mode)
	set(&s.Machine, c.Machine)
	set(&s.Arch, c.Arch)
	set(&s.Install, c.Install)
	set(&s.Compression, c.Compression)
	return s, nil
}
