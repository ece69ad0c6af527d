package layers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/unpack"
)

// tiers is a build's view of the shared cache tiers: which still work,
// which held a corrupt entry of a key, and the pushes under way. The
// cache never fails a build: a tier that fails is warned about once and
// left out for the rest of the build.
type tiers struct {
	from []*remote.Tier
	to   *remote.Tier
	warn func(string)
	log  func(format string, args ...any)
	// maxSize bounds a pulled layer as --max-layer-size bounds a base
	// layer: its blob, and what it unpacks to.
	maxSize int64

	mu   sync.Mutex
	down map[*remote.Tier]bool
	// pushDown: pushes failed (read-only credentials, say); lookups go on.
	pushDown map[*remote.Tier]bool
	// corrupt holds the keys (tier + key) whose entry was corrupt, and
	// whether pushing it again repairs it.
	corrupt map[string]bool
	uploads sync.WaitGroup
	queue   chan func()
}

func newTiers(from []*remote.Tier, to *remote.Tier, warn func(string), log func(string, ...any)) *tiers {
	return &tiers{from: from, to: to, warn: warn, log: log, down: map[*remote.Tier]bool{}, pushDown: map[*remote.Tier]bool{}, corrupt: map[string]bool{}}
}

func (ts *tiers) pushFailed(t *remote.Tier) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.pushDown[t]
}

func (ts *tiers) alive(t *remote.Tier) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return !ts.down[t]
}

// failed reports what t failed with: a corrupt entry is a miss, anything
// else takes t out of this build.
func (ts *tiers) failed(ctx context.Context, t *remote.Tier, key, what string, err error) {
	if ctx.Err() != nil {
		return // the build is being stopped; that error is the build's
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if errors.Is(err, remote.ErrCorrupt) {
		repairable := remote.Repairable(err)
		ts.corrupt[t.String()+"\x00"+key] = repairable
		advice := ""
		if !repairable {
			advice = "; the registry stores damaged bytes under their digest, which no push replaces: delete the blob there and run its garbage collection"
		}
		ts.warn(fmt.Sprintf("cache %s: entry %s is corrupt, taken as a miss: %v%s", t, cache.ShortKey(key), err, advice))
		return
	}
	down := ts.down
	if what == "push" {
		down = ts.pushDown
	}
	if !down[t] {
		down[t] = true
		ts.warn(fmt.Sprintf("cache %s: %s failed, going on without it: %v", t, what, err))
	}
}

// wasCorrupt says whether t held a corrupt entry of key, and if so
// whether pushing it again repairs it.
func (ts *tiers) wasCorrupt(t *remote.Tier, key string) (corrupt, repairable bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	repairable, corrupt = ts.corrupt[t.String()+"\x00"+key]
	return corrupt, repairable
}

// fetch is the maker of an entry from tier t: the artifact of the key,
// checked to be of these very inputs, unpacked into tmp.
func (ts *tiers) fetch(ctx context.Context, t *remote.Tier, in *inputs, key string, rep *LayerReport) maker {
	return func(tmp *cache.Temp) (cache.Info, error) {
		if !ts.alive(t) {
			return cache.Info{}, errNextMaker
		}
		start := time.Now()
		defer func() { rep.Pull += Seconds(time.Since(start)) }()
		a, tr, err := t.Get(ctx, key)
		rep.Downloaded += tr.Downloaded
		if err == nil && a != nil && !bytes.Equal(a.Inputs, in.canonical()) {
			// The config hashes to the key, so this takes a sha256
			// collision; the check is cheap.
			err = fmt.Errorf("%w: its inputs are not this layer's", remote.ErrCorrupt)
		}
		if err != nil {
			ts.failed(ctx, t, key, "lookup", err)
			return cache.Info{}, cmpErr(ctx, errNextMaker)
		}
		if a == nil {
			return cache.Info{}, errNextMaker
		}
		if ts.maxSize > 0 && a.Layer.Size > ts.maxSize {
			err = fmt.Errorf("%w: its layer blob is %d bytes, over --max-layer-size", remote.ErrCorrupt, a.Layer.Size)
			ts.failed(ctx, t, key, "pull", err)
			return cache.Info{}, errNextMaker
		}
		tr, err = t.Pull(ctx, a, tmp, unpack.Options{Warn: ts.warn, MaxSize: ts.maxSize})
		rep.Downloaded += tr.Downloaded
		if err != nil {
			ts.failed(ctx, t, key, "pull", err)
			return cache.Info{}, cmpErr(ctx, errNextMaker)
		}
		rep.Remote = t.String()
		return artifactInfo(in, a), nil
	}
}

// cmpErr is ctx's error when the build is being stopped, else err.
func cmpErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// upload pushes entry e to the to tier in the background (the next
// layer's install runs meanwhile) unless it came from there. waitUploads
// collects them.
func (ts *tiers) upload(ctx context.Context, e *cache.Entry, rep *LayerReport, mu *sync.Mutex) {
	t := ts.to
	if t == nil || rep.Remote == t.String() || len(e.Info.KeyInputs) == 0 {
		return
	}
	if ts.queue == nil {
		// One worker: pushes go in layer order, and a build's uploads do
		// not compete with each other.
		ts.queue = make(chan func(), 64)
		go func() {
			for f := range ts.queue {
				f()
			}
		}()
	}
	ts.uploads.Add(1)
	ts.queue <- func() {
		defer ts.uploads.Done()
		if !ts.alive(t) || ts.pushFailed(t) || ctx.Err() != nil {
			return
		}
		corrupt, repairable := ts.wasCorrupt(t, e.Info.Key)
		if corrupt && !repairable {
			return // warned about when found
		}
		pushed, tr, err := t.Push(ctx, e, remote.PushOptions{Replace: corrupt})
		mu.Lock()
		rep.Uploaded += tr.Uploaded
		rep.Pushed = pushed
		mu.Unlock()
		if errors.Is(err, oci.ErrDigestMismatch) {
			// The local blob is what does not match: the tier is fine.
			ts.warn(fmt.Sprintf("cache entry %s: not pushed to %s: %v (run layerfs cache verify)", e.Name(), t, err))
			return
		}
		if err != nil {
			ts.failed(ctx, t, e.Info.Key, "push", err)
			return
		}
		if pushed {
			ts.log("OCI Cache: Pushed layer '%s' (%s) to %s: %d bytes uploaded\n", e.Info.Name, cache.ShortKey(e.Info.Key), t, tr.Uploaded)
		}
	}
}

// waitUploads waits for the uploads queued so far.
func (ts *tiers) waitUploads() {
	ts.uploads.Wait()
	if ts.queue != nil {
		close(ts.queue)
		ts.queue = nil
	}
}

// PullEntry fetches key's entry from tier t into the local cache c, as a
// build's remote hit would (layerfs cache pull). The artifact's config
// must be the inputs of a layer this layerfs builds, for this kind of
// host (root or rootless).
func PullEntry(ctx context.Context, c *cache.Cache, t *remote.Tier, key string, warn func(string)) (*cache.Entry, bool, error) {
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return nil, false, err
	}
	defer unlock()
	a, _, err := t.Get(ctx, key)
	if err != nil {
		return nil, false, err
	}
	if a == nil {
		return nil, false, inputerr.New("cache %s: no entry %s", t, key)
	}
	var in inputs
	dec := json.NewDecoder(bytes.NewReader(a.Inputs))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil || !bytes.Equal(in.canonical(), a.Inputs) {
		return nil, false, inputerr.New("cache %s: entry %s was made by another version of layerfs (its inputs do not parse: %v)", t, cache.ShortKey(key), err)
	}
	if in.TarRules != TarRules {
		return nil, false, inputerr.New("cache %s: entry %s follows tar rules %s, this layerfs %s", t, cache.ShortKey(key), in.TarRules, TarRules)
	}
	if rootless := os.Geteuid() != 0; in.Rootless != rootless {
		return nil, false, inputerr.New("cache %s: entry %s was built %s; this host builds %s, with other keys", t, cache.ShortKey(key), rootlessWord(in.Rootless), rootlessWord(rootless))
	}
	if e, err := c.Lookup(key, in.Name); err != nil || e != nil {
		return e, false, err
	}
	tmp, err := c.NewTemp(in.Name)
	if err != nil {
		return nil, false, err
	}
	if _, err := t.Pull(ctx, a, tmp, unpack.Options{Warn: warn}); err != nil {
		tmp.Abort()
		return nil, false, err
	}
	e, err := c.Insert(ctx, tmp, artifactInfo(&in, a))
	if err != nil {
		tmp.Abort()
		return nil, false, err
	}
	return e, true, nil
}

// artifactInfo is the entry.json of a layer of inputs in pulled as a.
// The entry's date is the builder's, so that every host writes the same
// image config from it.
func artifactInfo(in *inputs, a *remote.Artifact) cache.Info {
	i := entryInfo(in, a.Key, a.Created)
	i.DiffID, i.Digest, i.MediaType, i.Size = a.DiffID, a.Layer.Digest, a.Layer.MediaType, a.Layer.Size
	return i
}

func rootlessWord(rootless bool) string {
	if rootless {
		return "rootless"
	}
	return "as root"
}

// entryInfo is the entry.json of a layer of inputs in, before its blob
// is known.
func entryInfo(in *inputs, key string, created time.Time) cache.Info {
	return cache.Info{Key: key, Parent: in.Parent, Name: in.Name, Type: in.Type,
		Packages: in.Packages, Versions: in.Versions, Inputs: in.fields(), Machine: in.Machine,
		KeyInputs: in.canonical(), Created: created}
}

// prefetch is one layer's background fetch from the shared tiers.
type prefetch struct {
	done chan struct{}
	// rep holds what the fetch did: Remote is the tier it came from ("":
	// not fetched), Downloaded and Pull its cost.
	rep LayerReport
	// missed: every live tier was asked and lacks the key.
	missed bool
}

// prefetchAll fetches, two at a time in layer order, the entries of ins
// that the local cache lacks from the shared tiers, so that the layers
// above download and unpack while the ones below are being mounted or
// unpacked. A key's lock is held while its entry is fetched, so the
// build's own lookup waits for it and then finds it local. Keys are
// known up front: a key chains its parent's key, not its content. wait
// stops and waits for the fetches.
func (b *builder) prefetchAll(ctx context.Context, ins []inputs) (map[string]*prefetch, func()) {
	ctx, cancel := context.WithCancel(ctx)
	out := map[string]*prefetch{}
	var order []*inputs
	for i := range ins {
		if key := ins[i].key(); out[key] == nil {
			out[key] = &prefetch{done: make(chan struct{})}
			order = append(order, &ins[i])
		}
	}
	next := make(chan *inputs)
	go func() {
		defer close(next)
		for _, in := range order {
			select {
			case next <- in:
			case <-ctx.Done():
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for in := range next {
				p := out[in.key()]
				b.prefetchOne(ctx, in, p)
				close(p.done)
			}
		}()
	}
	return out, func() {
		cancel()
		wg.Wait()
		for _, p := range out { // those never handed out
			select {
			case <-p.done:
			default:
				close(p.done)
			}
		}
	}
}

// prefetchOne fetches one entry into the local cache under its key's lock.
func (b *builder) prefetchOne(ctx context.Context, in *inputs, p *prefetch) {
	c := b.opts.Cache
	key := in.key()
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		return
	}
	defer unlock()
	if e, err := c.Lookup(key, in.Name); err != nil || e != nil {
		return // the build's lookup will find it, or say why not
	}
	var makers []maker
	for _, t := range b.tiers.from {
		makers = append(makers, b.tiers.fetch(ctx, t, in, key, &p.rep))
	}
	e, err := makeEntry(ctx, c, in.Name, makers)
	switch {
	case err != nil:
		p.rep.Remote = "" // the build's own lookup tries again
	case e == nil:
		// Every tier was asked (or is out): the build need not ask again.
		p.missed = ctx.Err() == nil
	}
}
