package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/layers"
	"github.com/layerfs/layerfs/oci"
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
		return c.spawn(e, opts)
	}
	return c.serve(e, opts)
}

// mountKernel mounts with the kernel's overlayfs: no daemon serves it,
// and it stays until layerfs umount. With --image the image's entries are
// held in use until the mount is recorded; from then on its record keeps
// cache prune and rm away from them. In the foreground it waits for
// SIGINT or SIGTERM and unmounts.
func (c *mountCmd) mountKernel(e *env, o fs.Options) error {
	if m, ok, _ := fs.Find(c.Mountpoint); ok && m.Mounted {
		return inputerr.New("%s: already a layerfs mount", c.Mountpoint)
	}
	if c.Image != "" {
		rep := &reporter{stderr: e.stderr, env: e}
		img, err := c.applyImage(e.ctx, rep)
		if err != nil {
			return err
		}
		defer img.Release()
		o.Lowers = append(img.Rootfs, o.Lowers...)
	}
	if err := fs.MountKernel(c.Mountpoint, o); err != nil {
		return fmt.Errorf("mount %s: %w", c.Mountpoint, err)
	}
	if !c.Foreground {
		return nil
	}
	// Until a signal, or someone else's umount.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	stop := make(chan struct{})
	gone := make(chan struct{})
	go func() { fs.WaitUnmounted(c.Mountpoint, stop); close(gone) }()
	select {
	case <-sigs:
	case <-e.ctx.Done():
	case <-gone:
	}
	close(stop)
	if m, ok, _ := fs.Find(c.Mountpoint); ok && m.Mounted {
		if err := fs.Unmount(c.Mountpoint, false); err != nil {
			fs.Unmount(c.Mountpoint, true)
		}
	}
	fs.Forget(c.Mountpoint)
	return nil
}

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
func (c *mountCmd) applyImage(ctx context.Context, rep *reporter) (*layers.AppliedImage, error) {
	ref, err := oci.ParseReference(c.Image)
	if err != nil {
		return nil, err
	}
	opts := oci.OpenOptions{Strict: c.Strict, Insecure: c.Insecure, Warn: rep.warn}
	if c.Platform != "" {
		if opts.Platform, err = oci.ParsePlatform(c.Platform); err != nil {
			return nil, err
		}
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
	rep.log(fmt.Sprintf("image %s: manifest %s, %d layer%s", ref, img.ManifestDesc.Digest, n, plural))
	return layers.ApplyImage(ctx, ca, img, layers.ApplyImageOptions{MaxLayerSize: maxSize, Warn: rep.warn, Log: rep})
}

// reporter carries a daemon's progress, warnings and readiness to the
// command that spawned it, one line each on the ready fd ("log MSG",
// "warn MSG", then "ok", "input ERR" or "error ERR"), and to its own log;
// in the foreground without a ready fd, to stderr.
type reporter struct {
	ready  *os.File
	stderr io.Writer
	env    *env
}

func (r *reporter) line(kind, msg string) {
	if r.ready != nil {
		io.WriteString(r.ready, kind+" "+strings.ReplaceAll(msg, "\n", " ")+"\n")
	}
}

func (r *reporter) log(msg string) {
	fmt.Fprintln(r.stderr, msg)
	r.line("log", msg)
}

func (r *reporter) warn(msg string) {
	r.env.warn(msg)
	r.line("warn", msg)
}

// Write logs each line written (ApplyImage's per-layer lines).
func (r *reporter) Write(p []byte) (int, error) {
	for l := range strings.Lines(string(p)) {
		r.log(strings.TrimSuffix(l, "\n"))
	}
	return len(p), nil
}

// done reports the end of startup: "ok", or the error.
func (r *reporter) done(err error) {
	if r.ready == nil {
		return
	}
	switch {
	case err == nil:
		io.WriteString(r.ready, "ok\n")
	case inputerr.Is(err):
		r.line("input", err.Error())
	default:
		r.line("error", err.Error())
	}
	r.ready.Close()
	r.ready = nil
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

// spawn starts the daemon in the background and returns once it serves:
// it re-runs this command with --foreground in a session of its own, and
// reads one line of readiness (or the daemon's error) from a pipe.
func (c *mountCmd) spawn(e *env, o fs.Options) error {
	if m, ok, _ := fs.Find(c.Mountpoint); ok && m.Alive {
		return inputerr.New("%s: already a layerfs mount (daemon %d)", c.Mountpoint, m.PID)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	if err := os.MkdirAll(fs.StateDir(), 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(fs.LogFile(c.Mountpoint), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{"mount", "--foreground", "--ready-fd", "3", "--driver", c.Driver}
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
	args = append(args, "--", c.Mountpoint)
	cmd := exec.Command(self, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start daemon: %w", err)
	}
	w.Close()
	// Until the daemon serves, its progress is ours to show, and an
	// interrupt (applying an image's layers takes a while) stops it.
	lines, stop := make(chan string), make(chan struct{})
	defer close(stop)
	go func() {
		defer close(lines)
		br := bufio.NewReader(r)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				select {
				case lines <- strings.TrimSuffix(line, "\n"):
				case <-stop:
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	var line string
wait:
	for {
		select {
		case <-e.ctx.Done():
			c.stopDaemon(cmd)
			return e.ctx.Err()
		case l, ok := <-lines:
			if !ok {
				break wait
			}
			if msg, ok := strings.CutPrefix(l, "log "); ok {
				fmt.Fprintln(e.stderr, msg)
				continue
			}
			if msg, ok := strings.CutPrefix(l, "warn "); ok {
				e.warn(msg)
				continue
			}
			line = strings.TrimSpace(l)
			break wait
		}
	}
	if line == "ok" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	if msg, ok := strings.CutPrefix(line, "input "); ok {
		return inputerr.New("%s", msg)
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return errors.New(msg)
	}
	return fmt.Errorf("the daemon exited before serving (log: %s)", fs.LogFile(c.Mountpoint))
}

// stopDaemon ends a daemon that has not reported ready: SIGTERM lets it
// abort its apply (leaving the cache clean) or unmount what it just
// mounted; one that does not go is killed, and its dead mount cleared.
func (c *mountCmd) stopDaemon(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	if m, ok, _ := fs.Find(c.Mountpoint); ok && m.Mounted && !m.Alive {
		fs.Unmount(c.Mountpoint, true)
		fs.Forget(c.Mountpoint)
	}
}

// serve mounts and serves in this process until unmounted or signalled.
func (c *mountCmd) serve(e *env, o fs.Options) error {
	rep := &reporter{stderr: e.stderr, env: e}
	if c.ReadyFd >= 0 {
		rep.ready = os.NewFile(uintptr(c.ReadyFd), "ready")
	}
	if c.Image != "" {
		img, err := c.applyImage(e.ctx, rep)
		if err != nil {
			rep.done(err) // it names the image, or the cache entry
			return err
		}
		// Released after the mount is gone: the entries stay in use
		// (cache prune and rm skip them) for as long as it serves.
		defer img.Release()
		o.Lowers = append(img.Rootfs, o.Lowers...)
	}
	srv, err := fs.Mount(c.Mountpoint, o)
	if err != nil {
		err = fmt.Errorf("mount %s: %w", c.Mountpoint, err)
		rep.done(err)
		return err
	}
	lowers := o.Lowers
	if lowers == nil {
		lowers = []string{}
	}
	forget, err := fs.Register(fs.MountInfo{
		Mountpoint: c.Mountpoint, Lowers: lowers, Upper: o.Upper, Workdir: o.Work,
		ReadOnly: o.Upper == "", PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second),
	})
	if err != nil {
		srv.Unmount()
		rep.done(err)
		return err
	}
	defer forget()
	rep.done(nil)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		// The context ends on a signal that came before Notify (during a
		// long --image apply, from a spawner that gave up).
		select {
		case <-sigs:
		case <-e.ctx.Done():
		}
		// A clean unmount if nothing uses the mount, else a lazy one: a
		// signalled daemon must go away either way.
		if err := srv.Unmount(); err != nil {
			fs.Unmount(c.Mountpoint, true)
		}
	}()
	srv.Wait()
	return nil
}

type umountCmd struct {
	Stale      bool   `help:"Clear every dead layerfs mount (daemons killed) instead of one mountpoint."`
	Lazy       bool   `help:"Detach the mount even while it is busy."`
	Mountpoint string `arg:"" optional:"" help:"The layerfs mount to unmount."`
}

func (c *umountCmd) Run(e *env) error {
	if c.Stale {
		if c.Mountpoint != "" {
			return inputerr.New("give either --stale or a mountpoint")
		}
		cleared, err := fs.ClearStale()
		for _, mp := range cleared {
			fmt.Fprintf(e.stdout, "cleared %s\n", mp)
		}
		return err
	}
	if c.Mountpoint == "" {
		return inputerr.New("name the mountpoint to unmount, or give --stale")
	}
	mp, err := filepath.Abs(c.Mountpoint)
	if err != nil {
		return inputerr.Wrap(err)
	}
	m, ok, err := fs.Find(mp)
	if err != nil {
		return err
	}
	if !ok || !m.Mounted {
		if ok {
			fs.Forget(mp) // a record left by a daemon that is gone
		}
		return inputerr.New("%s: not a layerfs mount", c.Mountpoint)
	}
	// A dead daemon's mount cannot be busy in a useful way: detach it.
	if err := fs.Unmount(mp, c.Lazy || !m.Alive); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("%s is busy (a process uses it); stop it, or use --lazy", c.Mountpoint)
		}
		return err
	}
	if m.PID > 0 {
		if err := fs.WaitGone(m.PID, 10*time.Second); err != nil {
			return err
		}
	}
	fs.Forget(mp)
	return nil
}

type mountsCmd struct {
	JSON bool `name:"json" help:"Print the mounts as a JSON array."`
}

func (c *mountsCmd) Run(e *env) error {
	all, err := fs.List()
	if err != nil {
		return err
	}
	if c.JSON {
		if all == nil {
			all = []fs.MountInfo{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MOUNTPOINT\tSTATE\tPID\tUPPER\tLOWERS")
	for _, m := range all {
		state := "serving"
		if m.IsKernel() {
			state = "mounted (kernel)"
		}
		switch {
		case !m.Mounted:
			state = "gone"
		case !m.Alive:
			state = "dead"
		case m.ReadOnly && m.IsKernel():
			state = "mounted (kernel, ro)"
		case m.ReadOnly:
			state += " (ro)"
		}
		upper := m.Upper
		if upper == "" {
			upper = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Mountpoint, state, strconv.Itoa(m.PID), upper, strings.Join(m.Lowers, ":"))
	}
	return tw.Flush()
}
