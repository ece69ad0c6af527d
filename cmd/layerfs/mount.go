package main

import (
	"fmt"
	"strconv"

	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
)

type mountCmd struct {
	Image        string   `placeholder:"REF" help:"Mount an image's merged view (any transport): its layers are applied into the layer cache once, by diff_id, and mounted read-only below any --lower."`
	Cache        string   `placeholder:"DIR" help:"With --image: the layer cache (default: $XDG_CACHE_HOME/layerfs)."`
	Platform     string   `placeholder:"OS/ARCH[/VARIANT]" help:"With --image: the image to take from a multi-platform index (default: this machine's)."`
	Strict       bool     `help:"With --image: a registry pull by tag, without a digest, is an error instead of a warning."`
	Insecure     bool     `help:"With --image: allow plain HTTP, and HTTPS without certificate checks, to its registry."`
	MaxLayerSize string   `default:"64G" placeholder:"SIZE" help:"With --image: refuse layers that unpack to more than SIZE (a decompression bomb)."`
	Lower        []string `placeholder:"DIR" sep:"none" help:"Read-only layer dir, base first (repeatable). None is allowed."`
	Upper        string   `placeholder:"DIR" help:"Writable layer dir that receives every change (created if missing). Without it the mount is a read-only merged view."`
	Workdir      string   `placeholder:"DIR" help:"Copy-up staging dir on the upper's filesystem (default: a hidden sibling of the upper)."`
	RO           bool     `name:"ro" help:"Mount read-only; an --upper is then served as the topmost lower."`
	Driver       string   `env:"LAYERFS_DRIVER" placeholder:"auto|kernel|fuse" help:"What serves the mount: auto (the default: the kernel's overlayfs where this process may mount it, else FUSE), kernel or fuse. A kernel mount has no daemon: it stays until layerfs umount."`
	Foreground   bool     `help:"Stay attached; SIGINT or SIGTERM unmount cleanly."`
	Debug        bool     `help:"Log every FUSE request (to the daemon's log, or stderr with --foreground)."`
	ReadyFd      int      `hidden:"" default:"-1" help:"(internal) report readiness of a background daemon on this fd."`

	Mountpoint string `arg:"" help:"Directory to mount on."`
}

func (c *mountCmd) Run(e *env) error {
	opts, err := c.options()
	if err != nil {
		return err
	}
	want, err := fs.ParseDriver(c.Driver, "--driver (or LAYERFS_DRIVER)")
	if err != nil {
		return err
	}
	// The probe mounts an upper in the workdir, on the upper's
	// filesystem; a read-only view has no upper to probe.
	choice, err := fs.NewProber().Choose(want, opts.Work)
	if err != nil {
		return err
	}
	if choice.Driver == fs.DriverKernel {
		return c.mountKernel(e, opts)
	}
	c.Driver = string(fs.DriverFUSE) // the daemon need not choose again
	if !c.Foreground {
		return fs.StartDaemon(e.ctx, c.Mountpoint, c.daemonArgs(), fs.Progress{
			Log:  func(msg string) { fmt.Fprintln(e.stderr, msg) },
			Warn: e.warn,
		})
	}
	return c.serve(e, opts)
}

// reporter reports the daemon's progress to its command (on the ready
// fd, if there is one) and to its own log, which is stderr.
func (c *mountCmd) reporter(e *env) *fs.Reporter {
	return fs.NewReporter(c.ReadyFd, fs.Progress{Log: func(msg string) { fmt.Fprintln(e.stderr, msg) }, Warn: e.warn})
}

// mountKernel mounts with the kernel's overlayfs: no daemon serves it,
// and it stays until layerfs umount. With --image the image's entries are
// held in use until the mount is recorded; from then on its record keeps
// cache prune and rm away from them. In the foreground it stays until
// SIGINT or SIGTERM.
func (c *mountCmd) mountKernel(e *env, o fs.Options) error {
	if m, ok, _ := fs.Find(c.Mountpoint); ok && m.Mounted {
		return inputerr.New("%s: already a layerfs mount", c.Mountpoint)
	}
	if c.Image != "" {
		img, err := c.applyImage(e.ctx, c.reporter(e))
		if err != nil {
			return err
		}
		defer img.Release()
		o.Lowers = append(img.Rootfs, o.Lowers...)
	}
	if err := fs.MountKernel(c.Mountpoint, o); err != nil {
		return fmt.Errorf("mount %s: %w", c.Mountpoint, err)
	}
	if c.Foreground {
		fs.HoldKernel(e.ctx, c.Mountpoint)
	}
	return nil
}

// serve mounts and serves in this process until unmounted or signalled.
func (c *mountCmd) serve(e *env, o fs.Options) error {
	rep := c.reporter(e)
	if c.Image != "" {
		img, err := c.applyImage(e.ctx, rep)
		if err != nil {
			rep.Done(err) // it names the image, or the cache entry
			return err
		}
		// Released after the mount is gone: the entries stay in use
		// (cache prune and rm skip them) for as long as it serves.
		defer img.Release()
		o.Lowers = append(img.Rootfs, o.Lowers...)
	}
	return fs.Serve(e.ctx, c.Mountpoint, o, rep)
}

// daemonArgs is this command line as the daemon runs it: in the
// foreground, reporting on fs.ReadyFD, with the driver already chosen.
func (c *mountCmd) daemonArgs() []string {
	args := []string{"mount", "--foreground", "--ready-fd", strconv.Itoa(fs.ReadyFD), "--driver", c.Driver}
	if c.Image != "" {
		args = append(args, "--image", c.Image, "--cache", c.Cache, "--max-layer-size", c.MaxLayerSize)
		if c.Platform != "" {
			args = append(args, "--platform", c.Platform)
		}
		if c.Strict {
			args = append(args, "--strict")
		}
		if c.Insecure {
			args = append(args, "--insecure")
		}
	}
	for _, l := range c.Lower {
		args = append(args, "--lower", l)
	}
	if c.Upper != "" {
		args = append(args, "--upper", c.Upper)
	}
	if c.Workdir != "" {
		args = append(args, "--workdir", c.Workdir)
	}
	if c.RO {
		args = append(args, "--ro")
	}
	if c.Debug {
		args = append(args, "--debug")
	}
	return append(args, "--", c.Mountpoint)
}
