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
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/sandbox"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/oci/unpack"
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
	// Driver serves the installs' mounts (auto, kernel, fuse); empty
	// takes the spec's driver:, else auto. Prober decides auto and keeps
	// its answer; nil makes one for this build.
	Driver fs.Driver
	Prober *fs.Prober
	// RootfsTar, when set, is the source rootfs of directories and files
	// layers as a tar stream (--rootfs-tar), in place of their source:
	// dirs: how a build under a fake root (pseudo, fakeroot) hands over
	// the owners only the fake root knows. Build reads it to its end, once,
	// and applies it as the hostile input it is (unpack.Apply) into a temp dir
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
	// Driver served the mount the layer was built on: kernel or fuse.
	Driver string `json:"driver,omitempty"`
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
	opts Options
	spec *Spec
	keys *keyer
	// stack is the layers so far, base first: each is mounted as a lower
	// of the next while it is still committed and stored.
	stack []*pending
	tiers *tiers
	// prefetched are the background fetches of remote entries, by key.
	prefetched map[string]*prefetch
	// repMu guards the reports that uploads in the background update.
	repMu sync.Mutex
	// fail ends the build with its first error (a layer stored in the
	// background stops the install running above it); failed is that
	// error.
	fail     context.CancelCauseFunc
	failMu   sync.Mutex
	failed   error
	relMu    sync.Mutex
	release  []func()
	driverMu sync.Mutex
	driver   *fs.Choice
	// driverLogged: the log said what the installs run on (once).
	driverLogged bool
}

// pending is a layer of the stack whose entry may still be in the making:
// its upper is final once its install has ended, and the layers above
// mount it while it is committed and stored into the cache, which renames
// it. Until it is stored it is mounted through dir, a descriptor of the
// temp entry's layer dir, which the rename does not change. entry and err
// are set when done is closed.
type pending struct {
	dir   *os.File
	done  chan struct{}
	entry *cache.Entry
	err   error
}

// ready is a pending whose entry is done.
func ready(e *cache.Entry) *pending {
	p := &pending{done: make(chan struct{}), entry: e}
	close(p.done)
	return p
}

// lowerPath is where a mount made now finds the layer dir.
func (p *pending) lowerPath() string {
	select {
	case <-p.done:
		if p.entry != nil {
			return p.entry.Rootfs()
		}
	default:
	}
	return "/proc/self/fd/" + strconv.Itoa(int(p.dir.Fd()))
}

// wait returns the entry once it is stored.
func (p *pending) wait() (*cache.Entry, error) {
	<-p.done
	return p.entry, p.err
}

// failWith records the build's first error and cancels the build.
func (b *builder) failWith(err error) {
	b.failMu.Lock()
	if b.failed == nil {
		b.failed = err
	}
	b.failMu.Unlock()
	b.fail(err)
}

// firstError is the error that ended the build: a layer that failed in
// the background is why the install above it was cancelled.
func (b *builder) firstError(err error) error {
	b.failMu.Lock()
	defer b.failMu.Unlock()
	if b.failed != nil {
		return b.failed
	}
	return err
}

// finishAll waits for the layers still being stored and returns their
// entries.
func (b *builder) finishAll() ([]*cache.Entry, error) {
	var out []*cache.Entry
	var first error
	for _, p := range b.stack {
		e, err := p.wait()
		if err != nil && first == nil {
			first = err
		}
		out = append(out, e)
	}
	return out, first
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
	// Pushes and layers stored in the background log from their own
	// goroutines.
	opts.Log = &lockedWriter{w: opts.Log}
	if opts.Prober == nil {
		opts.Prober = fs.NewProber()
	}
	ctx, cancel := context.WithCancelCause(ctx)
	b := &builder{opts: opts, spec: s, fail: cancel}
	b.tiers = newTiers(opts.CacheFrom, opts.CacheTo, opts.Warn, func(format string, args ...any) {
		fmt.Fprintf(opts.Log, format, args...)
	})
	b.tiers.maxSize = opts.MaxLayerSize
	defer func() {
		// No layer is left storing in the background, whatever happened.
		if _, ferr := b.finishAll(); err == nil && ferr != nil {
			res, err = nil, ferr
		}
		if err != nil {
			err = b.firstError(err)
		}
		for _, p := range b.stack {
			if p.dir != nil {
				p.dir.Close()
			}
		}
		// An upload reads its entry's blob: entries are released after.
		b.tiers.waitUploads()
		for _, r := range b.release {
			r()
		}
		cancel(nil)
	}()
	if err := b.checkDriver(); err != nil {
		return nil, err
	}
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
			b.stack = append(b.stack, ready(e))
		}
		parent = base.ManifestDesc.Digest.String()
	}
	if b.keys, err = newKeyer(s, opts.SourceDateEpoch); err != nil {
		return nil, err
	}
	b.keys.open = b.openEmbedded

	nbase := len(b.stack)
	// Reports are allocated up front: uploads update them by pointer.
	n := len(s.Layers)
	if s.mode() == ModeSingle {
		n = 1
	}
	reps := make([]LayerReport, n)
	if s.mode() == ModeSingle {
		p, err := b.single(ctx, parent, &reps[0])
		if err != nil {
			return nil, err
		}
		b.stack = append(b.stack, p)
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
			p, err := b.layer(ctx, ins[i], []Layer{l}, &reps[i], i == len(s.Layers)-1)
			if err != nil {
				return nil, err
			}
			b.stack = append(b.stack, p)
		}
	}
	all, err := b.finishAll()
	if err != nil {
		return nil, err
	}
	entries := all[nbase:]
	// Uploads in the background write to reps (under repMu) until
	// tiers.waitUploads: until then a copy is read.
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
	b.tiers.waitUploads() // no upload writes to reps after this
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
	if _, err := unpack.Apply(ctx, opts.RootfsTar, t.Rootfs(), unpack.Options{Rootfs: true, Warn: opts.Warn}); err != nil {
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

// mountLowers are the layer dirs of the stack as they can be mounted
// now: entries, and temp entries of layers still being stored.
func (b *builder) mountLowers() []string {
	out := make([]string, len(b.stack))
	for i, p := range b.stack {
		out[i] = p.lowerPath()
	}
	return out
}

// maker makes an entry's content in a temp entry and returns its info.
// errNextMaker says it could not (a shared tier lacks the key): the next
// maker gets a fresh temp.
type maker func(t *cache.Temp) (cache.Info, error)

var errNextMaker = errors.New("not made here")

// source is where a layer's entry came from.
type source int

const (
	sourceLocal  source = iota // the local cache had it
	sourceRemote               // a shared tier had it
	sourceMade                 // made here: applied or built
)

// lookupOrMake returns the entry of key, made on a miss by the first of
// makers that can, and where it came from: local or made. The
// entry is held in use (see cache.Entry.Use) until the build ends, so
// that a prune leaves it alone while this build mounts it and links its
// blob. The key's lock makes concurrent builds of one key wait for the
// first to finish and then find its entry, so that the work runs once;
// it is held until the entry is in use, which closes the gap a prune
// could use.
func (b *builder) lookupOrMake(ctx context.Context, key, name string, makers ...maker) (*cache.Entry, source, error) {
	unlock, e, err := b.lookup(ctx, key, name)
	if err != nil {
		return nil, 0, err
	}
	defer unlock()
	src := sourceLocal
	if e == nil {
		if e, err = makeEntry(ctx, b.opts.Cache, name, makers); err != nil {
			return nil, 0, err
		}
		if e == nil {
			return nil, 0, fmt.Errorf("cache entry %s-%s: no maker made it", cache.ShortKey(key), name)
		}
		src = sourceMade
	}
	if err := b.use(e); err != nil {
		return nil, 0, err
	}
	return e, src, nil
}

// lookup takes key's lock and looks its entry up; unlock gives the lock
// back (the caller holds it until the entry is in use, or made).
func (b *builder) lookup(ctx context.Context, key, name string) (unlock func(), e *cache.Entry, err error) {
	c := b.opts.Cache
	if unlock, err = c.Lock(ctx, key); err != nil {
		return nil, nil, err
	}
	if e, err = c.Lookup(key, name); err == nil && e != nil {
		// A blob that lost bytes would be linked into the image under its
		// digest's name, where later writes take it as present.
		if st, serr := os.Stat(e.Blob()); serr != nil || st.Size() != e.Info.Size {
			err = fmt.Errorf("cache entry %s: blob is damaged (run layerfs cache verify)", e.Dir)
		}
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return unlock, e, nil
}

// use holds e in use until the build ends.
func (b *builder) use(e *cache.Entry) error {
	release, err := e.Use()
	if err != nil {
		return fmt.Errorf("cache entry %s: %w", e.Dir, err)
	}
	b.relMu.Lock()
	b.release = append(b.release, release)
	b.relMu.Unlock()
	return nil
}

// makeEntry inserts the entry the first of makers can make, each in a
// fresh temp; nil when none could. Call it holding the key's lock.
func makeEntry(ctx context.Context, c *cache.Cache, name string, makers []maker) (*cache.Entry, error) {
	for _, make := range makers {
		t, err := c.NewTemp(name)
		if err != nil {
			return nil, err
		}
		info, err := make(t)
		if errors.Is(err, errNextMaker) {
			t.Abort()
			continue
		}
		if err != nil {
			t.Abort()
			return nil, err
		}
		e, err := c.Insert(ctx, t, info)
		if err != nil {
			t.Abort()
			return nil, err
		}
		return e, nil
	}
	return nil, nil
}

// baseLayer finds layer i of the base image in the cache, keyed by its
// diff_id, or applies it there: once, treating the tar as hostile.
func (b *builder) baseLayer(ctx context.Context, img *oci.Image, i int) (*cache.Entry, LayerReport, error) {
	desc := img.Manifest.Layers[i]
	diffID := img.Config.RootFS.DiffIDs[i]
	key := baseKey(diffID)
	rep := LayerReport{Name: "base", Type: "base", Key: key, DiffID: diffID, Digest: desc.Digest, Size: desc.Size}
	e, src, err := b.lookupOrMake(ctx, key, "base", func(t *cache.Temp) (cache.Info, error) {
		info := cache.Info{Key: key, Name: "base", Type: "base", DiffID: diffID, Digest: desc.Digest,
			MediaType: desc.MediaType, Size: desc.Size, Created: b.now(), Machine: b.spec.Machine,
			Inputs: map[string]string{"image": img.Ref.String(), "layer": strconv.Itoa(i)}}
		if _, err := oci.ApplyImageLayer(ctx, img, i, t.Rootfs(), unpack.Options{MaxSize: b.opts.MaxLayerSize, Warn: b.opts.Warn}); err != nil {
			return info, err // it names the image and the layer
		}
		if err := linkOrCopyBlob(img, desc.Digest, t.BlobPath()); err != nil {
			return info, fmt.Errorf("base %s layer %d: %w", img.Ref, i+1, err)
		}
		return info, nil
	})
	rep.Hit = src == sourceLocal
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
func (b *builder) single(ctx context.Context, parent string, rep *LayerReport) (*pending, error) {
	in := b.keys.common(parent, Layer{Name: ModeSingle, Type: ModeSingle})
	for _, l := range b.spec.Layers {
		p, err := b.keys.layer(ctx, "", l)
		if err != nil {
			return nil, err
		}
		in.Parts = append(in.Parts, p)
	}
	return b.layer(ctx, in, b.spec.Layers, rep, true)
}

// layer finds one layer made of the steps of ls: in the local cache, in
// a shared tier, or by building it. A layer built here is returned once
// its install has ended: it is committed and stored into the cache in
// the background, while the next layer installs on top of it. last says
// no layer of the build comes after this one.
func (b *builder) layer(ctx context.Context, in inputs, ls []Layer, rep *LayerReport, last bool) (*pending, error) {
	key := in.key()
	*rep = LayerReport{Name: in.Name, Type: in.Type, Key: key, Packages: in.Packages}
	pf := b.prefetched[key]
	if pf != nil {
		<-pf.done
	}
	unlock, e, err := b.lookup(ctx, key, in.Name)
	if err != nil {
		return nil, err
	}
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()
	src := sourceLocal
	if e != nil && pf != nil && pf.rep.Remote != "" {
		// Fetched ahead from a tier: a remote hit.
		rep.Remote, rep.Downloaded, rep.Pull = pf.rep.Remote, pf.rep.Downloaded, pf.rep.Pull
		src = sourceRemote
	}
	if e == nil && (pf == nil || !pf.missed) {
		var makers []maker
		for _, t := range b.tiers.from {
			makers = append(makers, b.tiers.fetch(ctx, t, &in, key, rep))
		}
		if e, err = makeEntry(ctx, b.opts.Cache, in.Name, makers); err != nil {
			return nil, err
		}
		src = sourceRemote
	}
	if e != nil {
		if err := b.use(e); err != nil {
			return nil, err
		}
		where := ""
		if src == sourceRemote {
			where = " (remote)"
		}
		fmt.Fprintf(b.opts.Log, "OCI Cache HIT%s: Layer '%s' (%s)\n", where, in.Name, key[:16])
		rep.Hit, rep.Digest, rep.DiffID, rep.Size = true, e.Info.Digest, e.Info.DiffID, e.Info.Size
		b.tiers.upload(ctx, e, rep, &b.repMu)
		return ready(e), nil
	}

	fmt.Fprintf(b.opts.Log, "OCI Cache MISS: Layer '%s' (%s)\n", in.Name, in.summary())
	t, err := b.opts.Cache.NewTemp(in.Name)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	driver, err := b.run(ctx, t, ls)
	if err == nil {
		// What the build needed beside the upper is not part of the entry.
		os.Remove(filepath.Join(t.Dir, "mnt"))
		err = os.RemoveAll(filepath.Join(t.Dir, "home"))
	}
	if err != nil {
		err = b.noSpace(err)
		t.Abort()
		return nil, err
	}
	rep.Install, rep.Driver = Seconds(time.Since(start)), string(driver)
	fmt.Fprintf(b.opts.Log, "OCI Cache: Saving layer '%s' to cache (%s)\n", in.Name, key[:16])

	dir, err := os.OpenFile(t.Rootfs(), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Abort()
		return nil, err
	}
	below := slices.Clone(b.stack)
	p := &pending{dir: dir, done: make(chan struct{})}
	locked = false // until the entry is stored
	go func() {
		defer close(p.done)
		defer unlock()
		// Unless told otherwise, a commit beside the next layer's install
		// compresses on one thread: the install (a package manager, mostly
		// one thread) keeps a CPU, and the commit is done long before it.
		threads := b.opts.Threads
		if threads == 0 && !last {
			threads = 1
		}
		p.entry, p.err = b.store(ctx, t, &in, below, rep, threads)
		if p.err != nil {
			p.err = b.noSpace(p.err)
			t.Abort()
			b.failWith(p.err)
		}
	}()
	return p, nil
}

// noSpace adds to err, on its one line, that the cache's filesystem is
// full, when it is: what failed a layer is then that, whatever the
// install or the commit made of it.
func (b *builder) noSpace(err error) error {
	if msg := b.opts.Cache.NoSpace(err); msg != "" {
		return fmt.Errorf("%w; %s", err, msg)
	}
	return err
}

// store commits a built layer's upper over the layers below it (once
// they are stored: their layer dirs are then where the commit reads
// them), and inserts it into the cache, holding it in use.
func (b *builder) store(ctx context.Context, t *cache.Temp, in *inputs, below []*pending, rep *LayerReport, threads int) (*cache.Entry, error) {
	lowers := make([]string, len(below))
	for i, p := range below {
		e, err := p.wait()
		if err != nil {
			return nil, err // it ends the build itself
		}
		lowers[i] = e.Rootfs()
	}
	key := in.key()
	info := entryInfo(in, key, b.now())
	start := time.Now()
	written, err := b.commit(ctx, t, lowers, threads)
	if err != nil {
		return nil, fmt.Errorf("layer '%s': commit: %w", in.Name, err)
	}
	info.DiffID, info.Digest = written.DiffID, written.Descriptor.Digest
	info.MediaType, info.Size = written.Descriptor.MediaType, written.Descriptor.Size
	e, err := b.opts.Cache.Insert(ctx, t, info)
	if err != nil {
		return nil, fmt.Errorf("layer '%s': %w", in.Name, err)
	}
	if err := b.use(e); err != nil {
		return nil, err
	}
	rep.Commit = Seconds(time.Since(start))
	rep.Digest, rep.DiffID, rep.Size = e.Info.Digest, e.Info.DiffID, e.Info.Size
	b.tiers.upload(ctx, e, rep, &b.repMu)
	return e, nil
}

// checkDriver refuses --driver kernel where the kernel cannot serve
// before anything is done; auto is decided when the first layer is built.
func (b *builder) checkDriver() error {
	if b.wantDriver() != fs.DriverKernel {
		return nil
	}
	t, err := b.opts.Cache.NewTemp("probe")
	if err != nil {
		return err
	}
	defer t.Abort()
	_, err = b.chooseDriver(t.Dir)
	return err
}

func (b *builder) wantDriver() fs.Driver {
	if b.opts.Driver != "" {
		return b.opts.Driver
	}
	d, _ := fs.ParseDriver(b.spec.Driver, "driver") // Validate checked it
	return d
}

// chooseDriver decides, once, what serves the build's mounts, probing
// the kernel with an upper in dir (on the cache's filesystem, where the
// uppers are), and says so in the log when a layer is first built.
func (b *builder) chooseDriver(dir string) (fs.Choice, error) {
	b.driverMu.Lock()
	defer b.driverMu.Unlock()
	if b.driver != nil {
		return *b.driver, nil
	}
	c, err := b.opts.Prober.Choose(b.wantDriver(), dir)
	if err != nil {
		return c, err
	}
	b.driver = &c
	return c, nil
}

// run mounts the stack with the temp entry's empty rootfs as the upper
// and runs each layer's step against the mount.
func (b *builder) run(ctx context.Context, t *cache.Temp, ls []Layer) (driver fs.Driver, err error) {
	mnt := filepath.Join(t.Dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return "", fmt.Errorf("layer '%s': %w", ls[0].Name, err)
	}
	choice, err := b.chooseDriver(t.Dir)
	if err != nil {
		return "", err
	}
	if !b.driverLogged {
		fmt.Fprintf(b.opts.Log, "OCI: installs on %s\n", choice.Describe())
		b.driverLogged = true
	}
	// Every fsync in the mount is skipped: a layer that fails is thrown
	// away, and one that is kept is synced whole when it is stored
	// (cache.Insert's syncfs, before the entry appears).
	sess, err := fs.Start(mnt, fs.Options{Lowers: b.mountLowers(), Upper: t.Rootfs(), Work: t.Work(), NoSync: true}, choice)
	var specials []special
	if err != nil {
		// %v: the layer dirs are the cache's, not the user's input.
		return "", fmt.Errorf("layer '%s': mount: %v", ls[0].Name, err)
	}
	defer func() {
		cerr := sess.Close()
		if err == nil && cerr != nil {
			err = fmt.Errorf("layer '%s': %w", ls[0].Name, cerr)
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
			if err := b.install(ctx, sess, l); err != nil {
				return "", err
			}
		case TypeImage:
			if err := b.embed(ctx, t.Dir, sess.Root(), l); err != nil {
				return "", err
			}
		default:
			sp, err := copyItems(ctx, sess.Root(), b.spec.copies(l), squashOwner())
			if err != nil {
				return "", fmt.Errorf("layer '%s': %w", l.Name, err)
			}
			specials = append(specials, sp...)
		}
	}
	return choice.Driver, nil
}

// install runs a packages layer's command in the sandbox, on the mount.
func (b *builder) install(ctx context.Context, sess *fs.Session, l Layer) error {
	mnt := sess.Mountpoint
	isolate := os.Geteuid() == 0
	home := "/tmp" // the sandbox's own tmpfs
	if !isolate {
		home = filepath.Join(filepath.Dir(mnt), "home")
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
	cmd := sandbox.Command{
		Script:  "umask 022\n" + b.spec.install(l),
		Dir:     b.spec.Dir,
		Env:     env,
		Timeout: time.Duration(b.spec.InstallTimeout),
		Isolate: isolate,
		Output:  b.opts.Output,
	}
	// A FUSE mount is at mnt already and stays writable in the sandbox; a
	// kernel mount is attached there in the sandbox's own namespace, and
	// goes away with it. This process then serves nothing during the
	// install: what it does meanwhile (storing the layer below) yields.
	tree, err := sess.Tree()
	if err != nil {
		return fmt.Errorf("layer '%s': %w", l.Name, err)
	}
	if tree != nil {
		defer tree.Close()
		cmd.Mounts = []sandbox.Mount{{Path: mnt, Tree: tree}}
		cmd.YieldCPU = true
	} else {
		cmd.Writable = []string{mnt}
	}
	// The mount's daemon runs with umask 0 (the kernel applies the
	// caller's); the command gets the usual one.
	_, err = sandbox.Run(ctx, cmd)
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

// commit writes the temp entry's upper as the layer blob, over lowers.
func (b *builder) commit(ctx context.Context, t *cache.Temp, lowers []string, threads int) (layer.Info, error) {
	f, err := os.OpenFile(t.BlobPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return layer.Info{}, err
	}
	comp, _ := layer.ParseCompression(b.spec.compression())
	var lower overlay.Lower = overlay.Empty{}
	if len(lowers) > 0 {
		lower = overlay.NewStack(lowers...)
	}
	layer, err := layer.Write(ctx, f, t.Rootfs(), lower, layer.Options{
		Compression: comp, Threads: threads, SourceDateEpoch: b.opts.SourceDateEpoch,
		Exclude: b.spec.Exclude, Warn: b.opts.Warn,
		// Unprivileged, what the build made without chowning it is root's.
		SquashOwner: squashOwner(),
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return layer, err
}
