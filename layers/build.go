package layers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/sandbox"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/overlay"
)

// Options describe one build.
type Options struct {
	Spec  *Spec
	Cache *cache.Cache
	// Log gets the lines the Yocto class prints (OCI Cache HIT/MISS, the
	// summary); Output gets what install commands print. Either may be nil.
	Log    io.Writer
	Output io.Writer
	Warn   func(string)
	// SourceDateEpoch clamps mtimes and dates the image and its entries.
	SourceDateEpoch *time.Time
	// MaxLayerSize caps the uncompressed size of each base-image layer
	// applied (a decompression bomb is rejected); 0 means no limit.
	MaxLayerSize int64
	Threads      int
	// Strict and Insecure are for a base image in a registry: a pull by
	// tag is an error, plain HTTP is allowed.
	Strict, Insecure bool
	// CacheFrom are the shared tiers asked, in order, on a local miss;
	// CacheTo gets every layer of the build it lacks. Either may be
	// empty. A tier that fails is warned about and left out.
	CacheFrom []*remote.Tier
	CacheTo   *remote.Tier
	// RootfsTar, when set, is the source rootfs of directories and files
	// layers as a tar stream (--rootfs-tar), in place of their source:
	// dirs: how a build under a fake root (pseudo, fakeroot) hands over
	// the owners only the fake root knows. Build reads it to its end, once,
	// and applies it as the hostile input it is (oci.Apply) into a temp dir
	// of the cache, which it removes when done (a killed build's is swept
	// like its other temps). gzip, zstd and bzip2 are read too.
	RootfsTar io.Reader
}

// LayerReport says what happened to one layer.
type LayerReport struct {
	Name     string        `json:"name"`
	Type     string        `json:"type"`
	Key      string        `json:"key"`
	Hit      bool          `json:"hit"`
	Digest   digest.Digest `json:"digest"`
	DiffID   digest.Digest `json:"diff_id"`
	Size     int64         `json:"size"`
	Install  Seconds       `json:"install_seconds"`
	Commit   Seconds       `json:"commit_seconds"`
	Packages []string      `json:"packages,omitempty"`
	// Remote is the shared tier a remote hit came from.
	Remote string `json:"remote,omitempty"`
	// Downloaded and Uploaded count the bytes moved to and from the
	// shared tiers for this layer; Pushed says it went to --cache-to.
	Downloaded int64 `json:"downloaded,omitempty"`
	// Pull is the time a remote hit took: lookup, download, apply.
	Pull     Seconds `json:"pull_seconds,omitempty"`
	Uploaded int64   `json:"uploaded,omitempty"`
	Pushed   bool    `json:"pushed,omitempty"`
}

// Seconds is a duration that marshals as seconds.
type Seconds time.Duration

func (s Seconds) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(time.Duration(s).Seconds(), 'f', 3, 64)), nil
}

// Result describes a finished build.
type Result struct {
	Image    string        `json:"image"`
	Manifest digest.Digest `json:"manifest"`
	// Base lists the base image's layers (applied or found in the cache).
	Base   []LayerReport `json:"base,omitempty"`
	Layers []LayerReport `json:"layers"`
	Hits   int           `json:"hits"`
	Misses int           `json:"misses"`
	// RemoteHits counts the hits that came from a shared tier; they are
	// among Hits.
	RemoteHits int   `json:"remote_hits"`
	Downloaded int64 `json:"downloaded"`
	Uploaded   int64 `json:"uploaded"`
}

type builder struct {
	opts    Options
	spec    *Spec
	keys    *keyer
	lowers  []string // layer dirs of the stack so far, base first
	release []func()
	tiers   *tiers
	// prefetched are the background fetches of remote entries, by key.
	prefetched map[string]*prefetch
	// repMu guards the reports that pushes in the background update.
	repMu sync.Mutex
}

// Build builds the spec's image: every layer is found in the cache or
// built on a union mount of the layers below it, and the image is
// written to the spec's output tag. The cache and the output are left
// as they were by any failure.
func Build(ctx context.Context, opts Options) (res *Result, err error) {
	spec := *opts.Spec // adopting the base's platform must not change the caller's
	s := &spec
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.Warn == nil {
		opts.Warn = func(string) {}
	}
	if opts.RootfsTar != nil {
		// Before validating: the layers' paths must be in the tar.
		done, err := useRootfsTar(ctx, opts, s)
		if err != nil {
			return nil, err
		}
		defer done()
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	// Pushes log from their own goroutine.
	opts.Log = &lockedWriter{w: opts.Log}
	b := &builder{opts: opts, spec: s}
	b.tiers = newTiers(opts.CacheFrom, opts.CacheTo, opts.Warn, func(format string, args ...any) {
		fmt.Fprintf(opts.Log, format, args...)
	})
	b.tiers.maxSize = opts.MaxLayerSize
	defer func() {
		// A push reads its entry's blob: entries are released after.
		b.tiers.wait()
		for _, r := range b.release {
			r()
		}
	}()
	// Mounts of builds killed before they could unmount would otherwise
	// keep their temp dirs from being swept.
	if _, err := fs.ClearStale(); err != nil {
		opts.Warn(fmt.Sprintf("clearing dead mounts: %v", err))
	}
	res = &Result{Image: s.Image}
	out, err := oci.ParseReference(s.Image)
	if err != nil {
		return nil, err
	}

	parent := ""
	var base *oci.Image
	var baseRef *oci.Reference
	if s.Base != "" {
		ref, err := oci.ParseReference(s.Base)
		if err != nil {
			return nil, err
		}
		baseRef = &ref
		if base, err = oci.Open(ctx, ref, s.openOptions(opts.Strict, opts.Insecure, opts.Warn)); err != nil {
			return nil, err
		}
		defer base.Close()
		if err := s.adoptPlatform(base); err != nil {
			return nil, err
		}
		for i := range base.Manifest.Layers {
			e, rep, err := b.baseLayer(ctx, base, i)
			if err != nil {
				return nil, err
			}
			res.Base = append(res.Base, rep)
			b.push(e)
		}
		parent = base.ManifestDesc.Digest.String()
	}
	if b.keys, err = newKeyer(s, opts.SourceDateEpoch); err != nil {
		return nil, err
	}
	b.keys.open = b.openEmbedded

	var entries []*cache.Entry
	// Reports are allocated up front: pushes update them by pointer.
	n := len(s.Layers)
	if s.mode() == ModeSingle {
		n = 1
	}
	reps := make([]LayerReport, n)
	if s.mode() == ModeSingle {
		e, err := b.single(ctx, parent, &reps[0])
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	} else {
		// Every key is known before anything is built (a key chains its
		// parent's key), so remote entries can be fetched ahead.
		ins := make([]inputs, len(s.Layers))
		for i, l := range s.Layers {
			in, err := b.keys.layer(ctx, parent, l)
			if err != nil {
				return nil, err
			}
			ins[i], parent = in, in.key()
		}
		if len(b.tiers.from) > 0 {
			var stop func()
			b.prefetched, stop = b.prefetchAll(ctx, ins)
			defer stop()
		}
		for i, l := range s.Layers {
			e, err := b.layer(ctx, ins[i], []Layer{l}, &reps[i])
			if err != nil {
				return nil, err
			}
			entries = append(entries, e)
			b.push(e)
		}
	}
	// Pushes in the background write to reps (under repMu) until
	// tiers.wait: until then a copy is read.
	b.repMu.Lock()
	snap := slices.Clone(reps)
	b.repMu.Unlock()
	for _, r := range snap {
		if r.Hit {
			res.Hits++
		} else {
			res.Misses++
		}
		if r.Remote != "" {
			res.RemoteHits++
		}
	}
	fmt.Fprintf(opts.Log, "OCI: Pre-installed packages for %d layers (cache: %d hits, %d misses)\n", len(reps), res.Hits, res.Misses)

	wo := oci.WriteImageOptions{Image: out, Base: base, BaseRef: baseRef, Config: s.Config.changes(s), Insecure: opts.Insecure}
	for i, e := range entries {
		wo.Layers = append(wo.Layers, oci.ImageLayer{
			Descriptor: v1.Descriptor{MediaType: e.Info.MediaType, Digest: e.Info.Digest, Size: e.Info.Size},
			DiffID:     e.Info.DiffID, Blob: e.Blob(), Created: e.Info.Created,
			CreatedBy: createdBy(snap[i], s),
			Comment:   "layerfs cache key " + e.Info.Key[:16],
		})
		// The image is as old as its newest layer, so that a rebuild from
		// the cache writes the same config, and so the same manifest.
		if e.Info.Created.After(wo.Created) {
			wo.Created = e.Info.Created
		}
	}
	if opts.SourceDateEpoch != nil {
		wo.Created = *opts.SourceDateEpoch
	}
	mdesc, err := oci.WriteImage(ctx, wo)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", s.Image, err)
	}
	res.Manifest = mdesc.Digest
	b.tiers.wait() // no push writes to reps after this
	res.Layers = reps
	for _, r := range reps {
		res.Downloaded += r.Downloaded
		res.Uploaded += r.Uploaded
	}
	return res, nil
}

// useRootfsTar applies opts.RootfsTar into a temp dir of the cache and
// makes it the source of every directories and files layer of s (whose
// layers it copies first, as they are the caller's). done removes it.
func useRootfsTar(ctx context.Context, opts Options, s *Spec) (done func(), err error) {
	s.Layers = slices.Clone(s.Layers)
	var users []*Layer
	for i := range s.Layers {
		if l := &s.Layers[i]; l.Type == TypeDirectories || l.Type == TypeFiles {
			users = append(users, l)
		}
	}
	if len(users) == 0 {
		// Read anyway: the writer of a pipe (tar under a fake root) would
		// otherwise fail.
		opts.Warn("--rootfs-tar: no directories or files layer takes files from it")
		_, err := io.Copy(io.Discard, opts.RootfsTar)
		return func() {}, err
	}
	t, err := opts.Cache.NewTemp("rootfs-tar")
	if err != nil {
		return nil, err
	}
	if _, err := oci.Apply(ctx, opts.RootfsTar, t.Rootfs(), oci.ApplyOptions{Rootfs: true, Warn: opts.Warn}); err != nil {
		t.Abort()
		return nil, fmt.Errorf("--rootfs-tar: %w", err)
	}
	for _, l := range users {
		l.Source = t.Rootfs()
	}
	return func() { t.Abort() }, nil
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// createdBy names the layer and its content in the image's history.
func createdBy(r LayerReport, s *Spec) string {
	var what string
	switch r.Type {
	case TypePackages:
		what = "packages " + strings.Join(r.Packages, " ")
	case ModeSingle:
		var names []string
		for _, l := range s.Layers {
			names = append(names, l.Name)
		}
		what = "layers " + strings.Join(names, " ")
	default:
		for _, l := range s.Layers {
			if l.Name == r.Name {
				switch r.Type {
				case TypeHost:
					what = r.Type + " " + strings.Join(l.Copy, " ")
				case TypeImage:
					what = fmt.Sprintf("image at %s as %s", l.Path, l.format())
				default:
					what = r.Type + " " + strings.Join(l.Paths, " ")
				}
			}
		}
	}
	return fmt.Sprintf("layerfs build: layer '%s' (%s)", r.Name, what)
}

// push makes an entry's layer dir the top of the stack.
func (b *builder) push(e *cache.Entry) {
	b.lowers = append(b.lowers, e.Rootfs())
}

// maker makes an entry's content in a temp entry and returns its info.
// errNextMaker says it could not (a shared tier lacks the key): the next
// maker gets a fresh temp.
type maker func(t *cache.Temp) (cache.Info, error)

var errNextMaker = errors.New("not made here")

// lookupOrMake returns the entry of key, made on a miss by the first of
// makers that can, and which made it (-1: it was in the cache). The
// entry is held in use (see cache.Entry.Use) until the build ends, so
// that a prune leaves it alone while this build mounts it and links its
// blob. The key's lock makes concurrent builds of one key wait for the
// first to finish and then find its entry, so that the work runs once;
// it is held until the entry is in use, which closes the gap a prune
// could use.
func (b *builder) lookupOrMake(ctx context.Context, key, name string, makers ...maker) (*cache.Entry, int, error) {
	c := b.opts.Cache
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	e, err := c.Lookup(key, name)
	if err != nil {
		return nil, 0, err
	}
	made := -1
	if e != nil {
		// A blob that lost bytes would be linked into the image under its
		// digest's name, where later writes take it as present.
		if st, err := os.Stat(e.Blob()); err != nil || st.Size() != e.Info.Size {
			return nil, 0, fmt.Errorf("cache entry %s: blob is damaged (run layerfs cache verify)", e.Dir)
		}
	} else {
		if e, made, err = makeEntry(ctx, c, name, makers); err != nil {
			return nil, 0, err
		}
		if e == nil {
			return nil, 0, fmt.Errorf("cache entry %s-%s: no maker made it", cache.ShortKey(key), name)
		}
	}
	release, err := e.Use()
	if err != nil {
		return nil, 0, fmt.Errorf("cache entry %s: %w", e.Dir, err)
	}
	b.release = append(b.release, release)
	return e, made, nil
}

// makeEntry inserts the entry the first of makers can make, each in a
// fresh temp, and says which made it; nil when none could. Call it
// holding the key's lock.
func makeEntry(ctx context.Context, c *cache.Cache, name string, makers []maker) (*cache.Entry, int, error) {
	for i, make := range makers {
		t, err := c.NewTemp(name)
		if err != nil {
			return nil, 0, err
		}
		info, err := make(t)
		if errors.Is(err, errNextMaker) {
			t.Abort()
			continue
		}
		if err != nil {
			t.Abort()
			return nil, 0, err
		}
		e, err := c.Insert(ctx, t, info)
		if err != nil {
			t.Abort()
			return nil, 0, err
		}
		return e, i, nil
	}
	return nil, len(makers), nil
}

// baseLayer finds layer i of the base image in the cache, keyed by its
// diff_id, or applies it there: once, treating the tar as hostile.
func (b *builder) baseLayer(ctx context.Context, img *oci.Image, i int) (*cache.Entry, LayerReport, error) {
	desc := img.Manifest.Layers[i]
	diffID := img.Config.RootFS.DiffIDs[i]
	key := baseKey(diffID)
	rep := LayerReport{Name: "base", Type: "base", Key: key, DiffID: diffID, Digest: desc.Digest, Size: desc.Size}
	e, made, err := b.lookupOrMake(ctx, key, "base", func(t *cache.Temp) (cache.Info, error) {
		info := cache.Info{Key: key, Name: "base", Type: "base", DiffID: diffID, Digest: desc.Digest,
			MediaType: desc.MediaType, Size: desc.Size, Created: b.now(), Machine: b.spec.Machine,
			Inputs: map[string]string{"image": img.Ref.String(), "layer": strconv.Itoa(i)}}
		if _, err := oci.ApplyImageLayer(ctx, img, i, t.Rootfs(), oci.ApplyOptions{MaxSize: b.opts.MaxLayerSize, Warn: b.opts.Warn}); err != nil {
			return info, err // it names the image and the layer
		}
		if err := linkOrCopyBlob(img, desc.Digest, t.BlobPath()); err != nil {
			return info, fmt.Errorf("base %s layer %d: %w", img.Ref, i+1, err)
		}
		return info, nil
	})
	rep.Hit = made < 0
	return e, rep, err
}

func linkOrCopyBlob(img *oci.Image, d digest.Digest, dst string) error {
	if src := img.BlobFile(d); src != "" && os.Link(src, dst) == nil {
		return nil
	}
	r, err := img.OpenBlob(d)
	if err != nil {
		return err
	}
	defer r.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	v := d.Verifier()
	if _, err := io.Copy(io.MultiWriter(f, v), r); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if !v.Verified() {
		return fmt.Errorf("blob %s: content does not match its digest", d)
	}
	return nil
}

func (b *builder) now() time.Time {
	if b.opts.SourceDateEpoch != nil {
		return b.opts.SourceDateEpoch.UTC()
	}
	return time.Now().UTC().Truncate(time.Second)
}

// single folds every layer of the spec into one, as OCI_LAYER_MODE=single.
func (b *builder) single(ctx context.Context, parent string, rep *LayerReport) (*cache.Entry, error) {
	in := b.keys.common(parent, Layer{Name: ModeSingle, Type: ModeSingle})
	for _, l := range b.spec.Layers {
		p, err := b.keys.layer(ctx, "", l)
		if err != nil {
			return nil, err
		}
		in.Parts = append(in.Parts, p)
	}
	return b.layer(ctx, in, b.spec.Layers, rep)
}

// layer finds one layer made of the steps of ls: in the local cache, in
// a shared tier, or by building it.
func (b *builder) layer(ctx context.Context, in inputs, ls []Layer, rep *LayerReport) (*cache.Entry, error) {
	key := in.key()
	*rep = LayerReport{Name: in.Name, Type: in.Type, Key: key, Packages: in.Packages}
	var install, commit time.Duration
	info := func() cache.Info { return entryInfo(&in, key, b.now()) }
	var makers []maker
	pf := b.prefetched[key]
	if pf != nil {
		<-pf.done
	}
	if pf == nil || !pf.missed {
		for _, t := range b.tiers.from {
			makers = append(makers, b.tiers.fetch(ctx, t, &in, key, rep))
		}
	}
	makers = append(makers, func(t *cache.Temp) (cache.Info, error) {
		fmt.Fprintf(b.opts.Log, "OCI Cache MISS: Layer '%s' (%s)\n", in.Name, in.summary())
		info := info()
		start := time.Now()
		if err := b.run(ctx, t, ls); err != nil {
			return info, err
		}
		// What the build needed beside the upper is not part of the entry.
		os.Remove(filepath.Join(t.Dir, "mnt"))
		if err := os.RemoveAll(filepath.Join(t.Dir, "home")); err != nil {
			return info, err
		}
		install = time.Since(start)
		start = time.Now()
		layer, err := b.commit(ctx, t)
		if err != nil {
			return info, fmt.Errorf("layer '%s': commit: %w", in.Name, err)
		}
		commit = time.Since(start)
		info.DiffID, info.Digest = layer.DiffID, layer.Descriptor.Digest
		info.MediaType, info.Size = layer.Descriptor.MediaType, layer.Descriptor.Size
		fmt.Fprintf(b.opts.Log, "OCI Cache: Saving layer '%s' to cache (%s)\n", in.Name, key[:16])
		return info, nil
	})
	e, made, err := b.lookupOrMake(ctx, key, in.Name, makers...)
	if err != nil {
		return nil, err
	}
	if made < 0 && pf != nil && pf.rep.Remote != "" {
		// Fetched ahead from a tier: a remote hit.
		rep.Remote, rep.Downloaded, rep.Pull = pf.rep.Remote, pf.rep.Downloaded, pf.rep.Pull
		made = 0
	}
	switch {
	case made < 0:
		fmt.Fprintf(b.opts.Log, "OCI Cache HIT: Layer '%s' (%s)\n", in.Name, key[:16])
	case made < len(makers)-1:
		fmt.Fprintf(b.opts.Log, "OCI Cache HIT (remote): Layer '%s' (%s)\n", in.Name, key[:16])
	}
	rep.Hit, rep.Install, rep.Commit = made < len(makers)-1, Seconds(install), Seconds(commit)
	rep.Digest, rep.DiffID, rep.Size = e.Info.Digest, e.Info.DiffID, e.Info.Size
	b.tiers.push(ctx, e, rep, &b.repMu)
	return e, nil
}

// run mounts the stack with the temp entry's empty rootfs as the upper
// and runs each layer's step against the mount.
func (b *builder) run(ctx context.Context, t *cache.Temp, ls []Layer) (err error) {
	mnt := filepath.Join(t.Dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return fmt.Errorf("layer '%s': %w", ls[0].Name, err)
	}
	srv, err := fs.Mount(mnt, fs.Options{Lowers: b.lowers, Upper: t.Rootfs(), Work: t.Work()})
	var specials []special
	if err != nil {
		// %v: the layer dirs are the cache's, not the user's input.
		return fmt.Errorf("layer '%s': mount: %v", ls[0].Name, err)
	}
	// Recorded so that a killed build's dead mount is cleared by the next.
	forget, rerr := fs.Register(fs.MountInfo{Mountpoint: mnt, Lowers: b.lowers, Upper: t.Rootfs(), Workdir: t.Work(),
		PID: os.Getpid(), Started: time.Now().UTC().Truncate(time.Second)})
	if rerr != nil {
		forget = func() {}
	}
	defer func() {
		uerr := srv.Unmount()
		if uerr != nil {
			uerr = fs.Unmount(mnt, true)
		}
		// After a lazy unmount the daemon serves until the last user of
		// the mount lets go: a process the install left behind (outside a
		// pid namespace, only a rootless build has such) could hold it,
		// and write into the upper while it is committed.
		served := make(chan struct{})
		go func() { srv.Wait(); close(served) }()
		select {
		case <-served:
		case <-time.After(time.Minute):
			uerr = fmt.Errorf("still in use a minute after the install ended")
		}
		forget()
		if err == nil && uerr != nil {
			err = fmt.Errorf("layer '%s': unmount %s: %w", ls[0].Name, mnt, uerr)
		}
		if err == nil {
			if err = applySpecials(t.Rootfs(), specials); err != nil {
				err = fmt.Errorf("layer '%s': %w", ls[0].Name, err)
			}
		}
	}()
	for _, l := range ls {
		switch l.Type {
		case TypePackages:
			if err := b.install(ctx, t, mnt, l); err != nil {
				return err
			}
		case TypeImage:
			if err := b.embed(ctx, t.Dir, mnt, l); err != nil {
				return err
			}
		default:
			sp, err := copyItems(ctx, mnt, b.spec.copies(l), squashOwner())
			if err != nil {
				return fmt.Errorf("layer '%s': %w", l.Name, err)
			}
			specials = append(specials, sp...)
		}
	}
	return nil
}

// install runs a packages layer's command in the sandbox.
func (b *builder) install(ctx context.Context, t *cache.Temp, mnt string, l Layer) error {
	isolate := os.Geteuid() == 0
	home := "/tmp" // the sandbox's own tmpfs
	if !isolate {
		home = filepath.Join(t.Dir, "home")
		if err := os.MkdirAll(home, 0o700); err != nil {
			return fmt.Errorf("layer '%s': %w", l.Name, err)
		}
	}
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LANG=C",
		"HOME=" + home,
		"LAYERFS_ROOT=" + mnt,
		"LAYERFS_PACKAGES=" + strings.Join(l.Packages, " "),
		"LAYERFS_LAYER=" + l.Name,
		"LAYERFS_ARCH=" + b.spec.arch(),
		"LAYERFS_MACHINE=" + b.spec.Machine,
	}
	if e := b.opts.SourceDateEpoch; e != nil {
		env = append(env, "SOURCE_DATE_EPOCH="+strconv.FormatInt(e.Unix(), 10))
	}
	if !isolate {
		env = append(env, fakeRootEnv(os.Environ(), mnt)...)
	}
	// The mount's daemon runs with umask 0 (the kernel applies the
	// caller's); the command gets the usual one.
	_, err := sandbox.Run(ctx, sandbox.Command{
		Script:   "umask 022\n" + b.spec.install(l),
		Dir:      b.spec.Dir,
		Env:      env,
		Timeout:  time.Duration(b.spec.InstallTimeout),
		Isolate:  isolate,
		Writable: []string{mnt},
		Output:   b.opts.Output,
	})
	if err != nil {
		var xe *sandbox.ExitError
		if errors.As(err, &xe) {
			return fmt.Errorf("layer '%s': install command failed: %v%s", l.Name, err, tailSuffix(xe.Tail))
		}
		return fmt.Errorf("layer '%s': install command: %w", l.Name, err)
	}
	return nil
}

// fakeRootEnv is what of environ puts a command under the fake root this
// build runs under, if any: pseudo (LD_PRELOAD naming libpseudo, and the
// PSEUDO_ variables) or fakeroot (libfakeroot, FAKEROOT* and FAKED_*),
// with LD_LIBRARY_PATH, where the preloaded library is found. The package
// manager of a rootless install then runs "as root", as it expects, and
// what it chowns reaches the mount's daemon, which records it: pseudo is
// told to leave the mount alone (PSEUDO_IGNORE_PATHS gets mnt), and
// fakeroot tries the real chown too. Other preloads are not passed.
func fakeRootEnv(environ []string, mnt string) []string {
	vars := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	var preload []string
	var pseudo, fakeroot bool
	for lib := range strings.FieldsFuncSeq(vars["LD_PRELOAD"], func(r rune) bool { return r == ':' || r == ' ' }) {
		switch base := filepath.Base(lib); {
		case strings.HasPrefix(base, "libpseudo"):
			pseudo = true
		case strings.HasPrefix(base, "libfakeroot"):
			fakeroot = true
		default:
			continue
		}
		preload = append(preload, lib)
	}
	if len(preload) == 0 {
		return nil
	}
	out := []string{"LD_PRELOAD=" + strings.Join(preload, ":")}
	if v, ok := vars["LD_LIBRARY_PATH"]; ok {
		out = append(out, "LD_LIBRARY_PATH="+v)
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		switch {
		case pseudo && k == "PSEUDO_IGNORE_PATHS":
		case pseudo && strings.HasPrefix(k, "PSEUDO_") && k != "PSEUDO_UNLOAD",
			fakeroot && (strings.HasPrefix(k, "FAKEROOT") || strings.HasPrefix(k, "FAKED_")):
			out = append(out, k+"="+vars[k])
		}
	}
	if pseudo {
		ignore := mnt
		if v := vars["PSEUDO_IGNORE_PATHS"]; v != "" {
			ignore = v + "," + mnt
		}
		out = append(out, "PSEUDO_IGNORE_PATHS="+ignore)
	}
	return out
}

// tailSuffix puts the last lines of a failed command's output on the
// error's one line.
func tailSuffix(tail []string) string {
	if len(tail) > 5 {
		tail = tail[len(tail)-5:]
	}
	if len(tail) == 0 {
		return ""
	}
	return "; last output: " + strings.Join(tail, " | ")
}

// commit writes the temp entry's upper as the layer blob.
func (b *builder) commit(ctx context.Context, t *cache.Temp) (oci.Layer, error) {
	f, err := os.OpenFile(t.BlobPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return oci.Layer{}, err
	}
	comp, _ := oci.ParseCompression(b.spec.compression())
	var lower overlay.Lower = overlay.Empty{}
	if len(b.lowers) > 0 {
		lower = overlay.NewStack(b.lowers...)
	}
	layer, err := oci.WriteLayer(ctx, f, t.Rootfs(), lower, oci.LayerOptions{
		Compression: comp, Threads: b.opts.Threads, SourceDateEpoch: b.opts.SourceDateEpoch,
		Exclude: b.spec.Exclude, Warn: b.opts.Warn,
		// Unprivileged, what the build made without chowning it is root's.
		SquashOwner: squashOwner(),
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return layer, err
}
