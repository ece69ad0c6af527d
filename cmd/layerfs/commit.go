package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/vcs"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/overlay"
)

type commitCmd struct {
	Upper           string   `xor:"source" placeholder:"DIR" help:"Layer dir whose delta becomes the layer: an overlayfs, fuse-overlayfs or layerfs upper, or a plain dir. Exactly one of --upper, --rootfs and --rootfs-tar."`
	Rootfs          string   `xor:"source" placeholder:"DIR" help:"A full root filesystem (no overlay markers) whose differences from the lowers become the layer: additions and changes, and with --deletions also whiteouts. Exactly one of --upper, --rootfs and --rootfs-tar."`
	RootfsTar       string   `name:"rootfs-tar" xor:"source" placeholder:"FILE|-" help:"A full root filesystem as a tar stream ('-': stdin; gzip, zstd or bzip2 too), committed as --rootfs would commit it: e.g. 'tar -cf - -C ROOTFS .' run under pseudo or fakeroot, whose owners only the fake root knows. The tar is checked like a base image's layers and unpacked into a temp dir beside the output."`
	Deletions       bool     `help:"With --rootfs or --rootfs-tar: white out every path the lowers have and the rootfs lacks (without it the layer has no whiteouts)."`
	SquashOwner     bool     `name:"squash-owner" help:"Write what the committing user owns on disk as root's (uid and gid each), as rootless podman maps its user: for an upper or rootfs written by a rootless layerfs mount of this user, where the files an install made without chowning them are to be root's. Owners recorded by a chown through the mount (override_stat) stay. Implied by --rootfs-tar when not root."`
	Lower           []string `placeholder:"DIR" sep:"none" help:"Layer dir beneath the upper or rootfs, base first (repeatable). Without it the lower view is listed from the image's layer tars."`
	Exclude         []string `sep:"none" placeholder:"PATTERN" help:"Leave out this image path and everything beneath it, e.g. /var/cache/** (repeatable): no entry, no whiteout. * and ? match within one component, a ** component any number of components; a trailing /** keeps the dir itself."`
	Image           string   `required:"" placeholder:"REF" help:"Output image, any transport. An existing tag is appended to; a new layout's tag defaults to latest."`
	Base            string   `placeholder:"REF" help:"Image to start from when --image does not exist yet (any transport: oci:, oci-archive:, docker-archive:, docker://)."`
	Compression     string   `enum:"gzip,zstd,none" default:"gzip" help:"Layer compression: gzip, zstd or none."`
	Threads         int      `help:"Compression threads (default: all CPUs). The output does not depend on it."`
	SourceDateEpoch string   `name:"source-date-epoch" placeholder:"N" help:"Clamp mtimes to N (seconds since 1970) and date the image with it. Default: $SOURCE_DATE_EPOCH."`
	OpaqueMarkers   bool     `help:"Write re-created dirs as .wh..wh..opq markers instead of explicit whiteouts."`

	Entrypoint []string `sep:"none" placeholder:"ARG" help:"Entrypoint, exec form, one --entrypoint per word; '' clears it. Without --cmd the inherited Cmd is dropped."`
	Cmd        []string `sep:"none" placeholder:"ARG" help:"Cmd, exec form, one --cmd per word; '' clears it."`
	Env        []string `sep:"none" placeholder:"K=V" help:"Environment variable (repeatable); replaces the same key."`
	Label      []string `sep:"none" placeholder:"K=V" help:"Label (repeatable); replaces the same key."`
	Port       []string `sep:"none" placeholder:"PORT[/PROTO]" help:"Exposed port such as 80/tcp (repeatable)."`
	User       *string  `help:"User the container runs as."`
	Workdir    *string  `help:"Working directory."`
	StopSignal *string  `help:"Stop signal, e.g. SIGTERM."`
	OS         string   `name:"os" help:"Image OS (default: inherited, else linux)."`
	Arch       string   `help:"Image architecture (default: inherited, else this machine's)."`
	Variant    string   `help:"Architecture variant, e.g. v7."`
	Author     string   `help:"Image author."`
	Created    string   `placeholder:"RFC3339" help:"Creation date of the image and its history entry (default: the source date epoch, else now)."`
	History    string   `placeholder:"COMMENT" help:"Comment of the layer's history entry."`
	AutoLabels bool     `help:"Set org.opencontainers.image.revision and .ref.name from the git checkout of the working dir, and .created from the build date."`

	Insecure bool `help:"Allow plain HTTP to the registries of --base and --image."`

	JSON bool `name:"json" help:"Print the result as one JSON object."`
}

func (c *commitCmd) Run(e *env) error {
	opts, err := c.options(e)
	if err != nil {
		return err
	}
	res, err := oci.Commit(e.ctx, opts)
	if err != nil {
		return err
	}
	if c.JSON {
		return json.NewEncoder(e.stdout).Encode(map[string]any{
			"digest":     res.Layer.Descriptor.Digest,
			"diff_id":    res.Layer.DiffID,
			"size":       res.Layer.Descriptor.Size,
			"media_type": res.Layer.Descriptor.MediaType,
			"entries":    res.Layer.Entries,
			"manifest":   res.Manifest.Digest,
			"image":      res.Image.String(),
			"layers":     res.Layers,
		})
	}
	fmt.Fprintf(e.stdout, "digest   %s\ndiff_id  %s\nsize     %d\nimage    %s (%d layers, manifest %s)\n",
		res.Layer.Descriptor.Digest, res.Layer.DiffID, res.Layer.Descriptor.Size, res.Image, res.Layers, res.Manifest.Digest)
	return nil
}

// options turns flags into commit options, rejecting bad input before
// anything is read or written.
func (c *commitCmd) options(e *env) (oci.CommitOptions, error) {
	opts := oci.CommitOptions{Upper: c.Upper, Lowers: c.Lower, History: c.History, Insecure: c.Insecure}
	var err error
	// Not kong's required: its usage line would then demand both.
	if c.Upper == "" && c.Rootfs == "" && c.RootfsTar == "" {
		return opts, inputerr.New("missing flags: --upper=DIR or --rootfs=DIR (or --rootfs-tar=FILE|-)")
	}
	if c.RootfsTar != "" {
		r, err := openRootfsTar(c.RootfsTar)
		if err != nil {
			return opts, err
		}
		opts.RootfsTar = r
	}
	if c.SquashOwner {
		opts.Layer.SquashOwner = &overlay.Owner{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	}
	if c.Rootfs != "" {
		// Checked here so that the error names the flag; oci.Commit would
		// call the dir an upper.
		if err := checkRootfsDir(c.Rootfs); err != nil {
			return opts, err
		}
		opts.Upper = c.Rootfs
		opts.Layer.Rootfs = true
	}
	if c.Deletions && c.Rootfs == "" && c.RootfsTar == "" {
		return opts, inputerr.New("--deletions: only with --rootfs or --rootfs-tar (an overlay upper records its deletions as whiteouts)")
	}
	opts.Layer.Deletions = c.Deletions
	if err := layer.ValidateExclude(c.Exclude); err != nil {
		return opts, err
	}
	opts.Layer.Exclude = c.Exclude
	if opts.Image, err = oci.ParseReference(c.Image); err != nil {
		return opts, err
	}
	if c.Base != "" {
		base, err := oci.ParseReference(c.Base)
		if err != nil {
			return opts, err
		}
		opts.Base = &base
	}
	if opts.Layer.Compression, err = layer.ParseCompression(c.Compression); err != nil {
		return opts, inputerr.Wrap(err)
	}
	opts.Layer.Threads = c.Threads
	opts.Layer.OpaqueMarkers = c.OpaqueMarkers
	opts.Layer.Warn = e.warn
	if opts.Layer.SourceDateEpoch, err = sourceDateEpoch(c.SourceDateEpoch); err != nil {
		return opts, err
	}
	if c.Created != "" {
		t, err := time.Parse(time.RFC3339, c.Created)
		if err != nil {
			return opts, inputerr.New("--created %q: want an RFC 3339 date such as 2024-01-02T15:04:05Z", c.Created)
		}
		opts.Created = &t
	}
	ch := &opts.Config
	ch.Entrypoint, ch.Cmd = execForm(c.Entrypoint), execForm(c.Cmd)
	ch.Env, ch.Ports = c.Env, c.Port
	ch.User, ch.WorkingDir, ch.StopSignal = c.User, c.Workdir, c.StopSignal
	ch.OS, ch.Arch, ch.Variant, ch.Author = c.OS, c.Arch, c.Variant, c.Author
	for _, kv := range c.Label {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return opts, inputerr.New("--label %q: want KEY=VALUE", kv)
		}
		if ch.Labels == nil {
			ch.Labels = map[string]string{}
		}
		ch.Labels[k] = v
	}
	if c.AutoLabels {
		if ch.Labels == nil {
			ch.Labels = map[string]string{}
		}
		created := time.Now().UTC()
		if opts.Created != nil {
			created = *opts.Created
		} else if opts.Layer.SourceDateEpoch != nil {
			created = *opts.Layer.SourceDateEpoch
		}
		ch.Labels["org.opencontainers.image.created"] = created.UTC().Format(time.RFC3339)
		wd, _ := os.Getwd()
		rev, branch := vcs.Git(e.ctx, wd)
		if rev == "" {
			e.warn("--auto-labels: the working dir is not in a git checkout; no revision label")
		} else {
			ch.Labels["org.opencontainers.image.revision"] = rev
		}
		if branch != "" {
			ch.Labels["org.opencontainers.image.ref.name"] = branch
		}
	}
	return opts, ch.Validate()
}

// openRootfsTar opens --rootfs-tar: stdin for "-". A file stays open
// until the process ends, as the commit reads it to its end.
func openRootfsTar(name string) (io.Reader, error) {
	if name == "-" {
		return os.Stdin, nil
	}
	f, err := os.Open(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, inputerr.New("--rootfs-tar %s: does not exist", name)
	case err != nil:
		return nil, inputerr.Wrap(fmt.Errorf("--rootfs-tar %s: %w", name, err))
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, inputerr.New("--rootfs-tar %s: a directory; give it as --rootfs, or a tar of it", name)
	}
	return f, nil
}

func checkRootfsDir(dir string) error {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return inputerr.New("--rootfs %s: does not exist", dir)
	case err != nil:
		return inputerr.Wrap(fmt.Errorf("--rootfs %s: %w", dir, err))
	case !st.IsDir():
		return inputerr.New("--rootfs %s: not a directory", dir)
	}
	return nil
}

// execForm maps a single empty word to "clear" (an empty, non-nil list).
func execForm(words []string) []string {
	if len(words) == 1 && words[0] == "" {
		return []string{}
	}
	return words
}

// sourceDateEpoch reads the flag, else $SOURCE_DATE_EPOCH.
func sourceDateEpoch(flag string) (*time.Time, error) {
	what, v := "--source-date-epoch", flag
	if v == "" {
		what, v = "SOURCE_DATE_EPOCH", os.Getenv("SOURCE_DATE_EPOCH")
	}
	if v == "" {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, inputerr.New("%s %q: want seconds since 1970", what, v)
	}
	t := time.Unix(n, 0).UTC()
	return &t, nil
}
