package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/layers"
)

type buildCmd struct {
	Specs        []string      `arg:"" optional:"" name:"spec" placeholder:"SPEC.yaml" help:"Build specs (YAML). Without one, --image and --layer describe the build. With several, a spec whose base or image layer reads another's output waits for it, and the others build in parallel (--jobs)."`
	Jobs         int           `short:"j" placeholder:"N" help:"With several specs: how many build at once (default: the number of CPUs)."`
	FromEnv      bool          `name:"from-env" help:"Build from the variables of Yocto's image-oci class in the environment (OCI_LAYERS, OCI_IMAGE_*, IMGDEPLOYDIR, ...), as the class would; see README."`
	RootfsTar    string        `name:"rootfs-tar" placeholder:"FILE|-" help:"The source rootfs of directories and files layers as a tar stream ('-': stdin; gzip, zstd or bzip2 too), e.g. made by tar under pseudo or fakeroot, whose owners layerfs could not see on disk; the layers then need no source:."`
	Image        string        `placeholder:"oci:DIR[:TAG]" help:"Output image; overrides the spec's image:. The tag is replaced, other tags stay."`
	Base         string        `placeholder:"REF" help:"Base image; overrides the spec's base:."`
	Cache        string        `placeholder:"DIR" help:"Layer cache (default: $XDG_CACHE_HOME/layerfs)."`
	Layer        []string      `sep:"none" placeholder:"NAME:TYPE:A+B" help:"A layer in the Yocto OCI_LAYERS form (repeatable); replaces the spec's layers:. For host layers each item is SRC:DST."`
	Rootfs       string        `placeholder:"DIR" help:"Source rootfs of directories and files layers given with --layer."`
	Mode         string        `enum:",multi,single" default:"" placeholder:"multi|single" help:"multi: a layer per entry; single: everything above the base as one layer."`
	Machine      string        `help:"Machine name (part of every cache key); overrides the spec's machine:."`
	Arch         string        `help:"Image architecture; overrides the spec's arch:."`
	Install      string        `placeholder:"COMMAND" help:"Install command of packages layers; overrides the spec's install:."`
	Compression  string        `enum:",gzip,zstd,none" default:"" placeholder:"gzip|zstd|none" help:"Layer compression; overrides the spec's compression:."`
	MaxLayerSize string        `default:"64G" placeholder:"SIZE" help:"Refuse base-image layers that unpack to more than SIZE (a decompression bomb); default 64G."`
	Threads      int           `help:"Compression threads (default: all CPUs). The output does not depend on it."`
	Strict       bool          `help:"A registry base image pulled by tag, without a digest, is an error."`
	Insecure     bool          `help:"Allow plain HTTP to the registries of the base image, the output and the cache tiers."`
	CacheFrom    []string      `name:"cache-from" sep:"," env:"LAYERFS_CACHE_FROM" placeholder:"REF" help:"Shared cache tiers (docker://HOST/REPO, repeatable or comma-separated) asked in order on a local miss; overrides the spec's cache.from."`
	CacheTo      string        `name:"cache-to" env:"LAYERFS_CACHE_TO" placeholder:"REF" help:"Shared cache tier (docker://HOST/REPO) that gets every layer of the build it lacks; overrides the spec's cache.to."`
	CacheTimeout time.Duration `name:"cache-timeout" default:"30s" placeholder:"D" help:"A cache tier that answers nothing for D is left out of the build, with a warning."`
	Driver       string        `env:"LAYERFS_DRIVER" placeholder:"auto|kernel|fuse" help:"What serves the installs' mounts: auto (the default: the kernel's overlayfs where this process may mount it, else FUSE), kernel or fuse; overrides the spec's driver:."`
	Quiet        bool          `short:"q" help:"Do not show the install commands' output."`
	JSON         bool          `name:"json" help:"Print the result, with per-layer keys, hits and timings, as one JSON object."`
}

func (c *buildCmd) Run(e *env) error {
	var specs []*layers.Spec
	epoch, err := sourceDateEpoch("")
	if err != nil {
		return err
	}
	var fromEnv *layers.Env
	if c.FromEnv {
		if len(c.Specs) > 0 || c.Layer != nil || c.Base != "" || c.Rootfs != "" || c.Mode != "" {
			return inputerr.New("--from-env takes the spec, layers, base, rootfs and mode from the environment: give no SPEC, --layer, --base, --rootfs or --mode")
		}
		if fromEnv, err = layers.FromEnv(e.ctx, os.LookupEnv, c.Image, epoch, time.Now()); err != nil {
			return err
		}
		c.Image = "" // FromEnv placed it
		s := fromEnv.Spec
		if _, err := c.apply(s); err != nil {
			return err
		}
		specs = append(specs, s)
	} else if len(c.Specs) > 1 {
		if c.RootfsTar != "" {
			return inputerr.New("--rootfs-tar is one stream, for one spec: give it with one spec")
		}
		if c.Image != "" || c.Base != "" || c.Layer != nil || c.Rootfs != "" {
			return inputerr.New("--image, --base, --layer and --rootfs describe one build: give them with one spec")
		}
		for _, f := range c.Specs {
			s, err := c.spec(f)
			if err != nil {
				return err
			}
			specs = append(specs, s)
		}
	} else {
		f := ""
		if len(c.Specs) == 1 {
			f = c.Specs[0]
		}
		s, err := c.spec(f)
		if err != nil {
			return err
		}
		specs = append(specs, s)
	}
	spec := specs[0]
	// A build killed while it had a mount leaves a dead one in its temp
	// entry; it goes first, so that the cache can sweep the temp.
	if _, err := fs.ClearStale(); err != nil {
		e.warn(fmt.Sprintf("clearing dead mounts: %v", err))
	}
	cdir := c.Cache
	if cdir == "" && fromEnv != nil {
		if cdir = fromEnv.Cache; fromEnv.NoCache {
			// OCI_LAYER_CACHE is off: the build keeps nothing.
			tmp, err := os.MkdirTemp("", "layerfs-nocache-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(tmp)
			cdir = tmp
		}
	}
	if cdir == "" {
		cdir = cache.DefaultDir()
	}
	ca, err := cache.Open(cdir)
	if err != nil {
		return err
	}
	// After the build the cache dir holds entries only (and nothing for
	// the Yocto suite to take for a broken entry).
	defer ca.Tidy()
	maxSize, err := cache.ParseSize(c.MaxLayerSize)
	if err != nil {
		return inputerr.New("--max-layer-size %q: %v", c.MaxLayerSize, err)
	}
	var driver fs.Driver
	if c.Driver != "" {
		if driver, err = fs.ParseDriver(c.Driver, "--driver (or LAYERFS_DRIVER)"); err != nil {
			return err
		}
	}
	log := e.stdout
	var output io.Writer = e.stderr
	if c.JSON {
		log = e.stderr // stdout is the JSON alone
	}
	if c.Quiet {
		output = nil
	}
	tiers := remote.NewSet(remote.Options{Insecure: c.Insecure, Timeout: c.CacheTimeout})
	from, to, err := openTiers(tiers, spec.Cache)
	if err != nil {
		return err
	}
	opts := layers.Options{
		Spec: spec, Cache: ca, Log: log, Output: output, Warn: e.warn,
		SourceDateEpoch: epoch, MaxLayerSize: maxSize, Threads: c.Threads, Strict: c.Strict, Insecure: c.Insecure,
		CacheFrom: from, CacheTo: to, Driver: driver, Prober: fs.NewProber(),
	}
	if c.RootfsTar != "" {
		r, closeTar, err := openInput(c.RootfsTar)
		if err != nil {
			return err
		}
		defer closeTar()
		opts.RootfsTar = r
	}
	if len(specs) > 1 {
		return c.runSet(e, specs, opts, tiers)
	}
	res, err := layers.Build(e.ctx, opts)
	if err != nil {
		return err
	}
	if fromEnv != nil && fromEnv.Deploy != nil {
		if err := fromEnv.Deploy.Finish(e.ctx, epoch); err != nil {
			return err
		}
	}
	if c.JSON {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	fmt.Fprintf(e.stdout, "image    %s (%d layers, manifest %s)\n", res.Image, len(res.Base)+len(res.Layers), res.Manifest)
	return nil
}

// runSet builds several specs, in the order their images need.
func (c *buildCmd) runSet(e *env, specs []*layers.Spec, opts layers.Options, tiers *remote.Set) error {
	jobs := c.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU()
	}
	results, err := layers.BuildSet(e.ctx, specs, layers.SetOptions{Options: opts, Jobs: jobs,
		Tiers: func(s *layers.Spec) ([]*remote.Tier, *remote.Tier, error) {
			return openTiers(tiers, s.Cache)
		}})
	if c.JSON && results != nil {
		if jerr := json.NewEncoder(e.stdout).Encode(results); jerr != nil && err == nil {
			err = jerr
		}
	} else {
		for _, r := range results {
			if r.Result != nil {
				fmt.Fprintf(e.stdout, "image    %s (%d layers, manifest %s)\n", r.Result.Image, len(r.Result.Base)+len(r.Result.Layers), r.Result.Manifest)
			}
		}
	}
	return err
}

// spec reads the spec file, if any, and applies the flags over it.
func (c *buildCmd) spec(file string) (*layers.Spec, error) {
	var s *layers.Spec
	if file != "" {
		var err error
		if s, err = layers.Load(file); err != nil {
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
		} else if c.RootfsTar != "" {
			rootfs = "." // the stream's tree takes its place
		}
		for _, f := range c.Layer {
			l, err := layers.ParseLayerFlag(f, rootfs)
			if err != nil {
				return nil, err
			}
			s.Layers = append(s.Layers, l)
		}
	}
	return c.apply(s)
}

// apply puts the flags that override a spec over s.
func (c *buildCmd) apply(s *layers.Spec) (*layers.Spec, error) {
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
	if len(c.CacheFrom) > 0 {
		s.Cache.From = nil
		for _, r := range c.CacheFrom {
			if r = strings.TrimSpace(r); r != "" {
				s.Cache.From = append(s.Cache.From, r)
			}
		}
	}
	set(&s.Cache.To, c.CacheTo)
	return s, nil
}

// openTiers opens the tiers a spec's cache: names, each once in the set.
func openTiers(ts *remote.Set, ct layers.CacheTiers) ([]*remote.Tier, *remote.Tier, error) {
	from, to, err := ts.Open(ct.From, ct.To)
	if err != nil {
		return nil, nil, fmt.Errorf("--cache-from/--cache-to: %w", err)
	}
	return from, to, nil
}

// openInput opens FILE, or stdin for "-".
func openInput(name string) (io.Reader, func(), error) {
	if name == "-" {
		return os.Stdin, func() {}, nil
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, inputerr.New("--rootfs-tar %s: %v", name, err)
	}
	return f, func() { f.Close() }, nil
}
