// Package remote is the layer cache's shared tier (DESIGN.md "Cache"):
// entries kept as OCI artifacts in a registry repository, so that many
// build hosts share what any of them built, with no server but the
// registry every such shop already runs.
//
// An entry is one manifest tagged with its full key:
//
//	artifactType  application/vnd.layerfs.cache.v1
//	config        the key's canonical inputs (mediaType ConfigMediaType);
//	              its digest is sha256:KEY, so the config proves its key
//	layers[0]     the layer blob, byte for byte the image's: pushing an
//	              entry next to its image uploads nothing twice
//	annotations   key, parent key, layer name, diff_id, created, pushed
//
// A lookup is one HEAD of REPO:KEY; there is no index to race on, and two
// hosts that push one key at once each put a complete manifest under it.
// What is pulled is checked before anything is unpacked: the config by
// its digest (the key), the blob by its digest, then its tar by diff_id
// while the hostile-tar applier unpacks it.
//
// Trust: anyone who can push to a repository that builds read can put any
// content under any key (with a config that matches it). Only CI should
// hold push rights.
package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/unpack"
)

// The artifact's media types and annotation keys.
const (
	ArtifactType    = "application/vnd.layerfs.cache.v1"
	ConfigMediaType = "application/vnd.layerfs.cache.config.v1+json"

	AnnotationKey     = "dev.layerfs.cache.key"
	AnnotationParent  = "dev.layerfs.cache.parent"
	AnnotationLayer   = "dev.layerfs.cache.layer"
	AnnotationDiffID  = "dev.layerfs.cache.diff_id"
	AnnotationCreated = v1.AnnotationCreated
	// AnnotationPushed dates the push, which prune goes by: an entry's
	// created is SOURCE_DATE_EPOCH in a reproducible build, years ago.
	AnnotationPushed = "dev.layerfs.cache.pushed"
)

// ErrCorrupt is wrapped by errors about an artifact whose content is not
// what its tag and manifest claim: a tampered or truncated blob, a config
// for another key, a layer that does not match its diff_id or that the
// applier rejects. Such an entry is a miss; the tier stays usable.
var ErrCorrupt = errors.New("corrupt cache artifact")

// Repairable says whether a corrupt entry (err wraps ErrCorrupt) is
// mended by pushing a good one over it: yes when its manifest is wrong,
// or names a blob that holds the wrong layer; no when the registry
// stores bytes that do not match their own digest, which a push cannot
// replace (the registry takes a blob it has as present).
func Repairable(err error) bool {
	return errors.Is(err, ErrCorrupt) && !errors.Is(err, oci.ErrDigestMismatch)
}

// Options control a Tier.
type Options struct {
	Insecure bool
	// Timeout: see oci.RepositoryOptions.
	Timeout time.Duration
}

// Tier is one registry repository of cache entries.
type Tier struct {
	repo *oci.Repository
}

// Open prepares the tier at ref, docker://HOST/REPO (no tag: each entry
// is a tag). Nothing is sent yet.
func Open(ref string, opts Options) (*Tier, error) {
	r, err := oci.ParseReference(ref)
	if err != nil {
		return nil, err
	}
	if r.Transport != oci.TransportDocker {
		return nil, inputerr.New("cache tier %q: a cache tier is a registry repository, docker://HOST/REPO", ref)
	}
	repo, err := oci.OpenRepository(r, oci.RepositoryOptions{Insecure: opts.Insecure, Timeout: opts.Timeout})
	if err != nil {
		return nil, fmt.Errorf("cache tier %w", err)
	}
	return &Tier{repo: repo}, nil
}

// String is the tier's reference.
func (t *Tier) String() string { return t.repo.Ref().String() }

// Artifact is one entry as the registry holds it, its manifest and
// config checked.
type Artifact struct {
	Key      string
	Manifest v1.Descriptor
	// Layer is the blob; DiffID its tar's digest.
	Layer   v1.Descriptor
	DiffID  digest.Digest
	Parent  string
	Name    string
	Created time.Time
	Pushed  time.Time
	// Inputs are the key's canonical inputs (the config), whose sha256
	// is Key.
	Inputs []byte
	config v1.Descriptor
}

// Lookup asks for key with one HEAD: the manifest's descriptor, or nil
// when the tier lacks it.
func (t *Tier) Lookup(ctx context.Context, key string) (*v1.Descriptor, oci.Transfer, error) {
	desc, tr, err := t.repo.Head(ctx, key)
	if errors.Is(err, oci.ErrNotFound) {
		return nil, tr, nil
	}
	if err != nil {
		return nil, tr, err
	}
	return &desc, tr, nil
}

// Fetch reads the manifest desc (from Lookup) and the config of key's
// artifact, and checks that they make an entry of key.
func (t *Tier) Fetch(ctx context.Context, key string, desc v1.Descriptor) (*Artifact, oci.Transfer, error) {
	var total oci.Transfer
	data, tr, err := t.repo.Manifest(ctx, desc.Digest)
	total = add(total, tr)
	if errors.Is(err, oci.ErrNotFound) {
		return nil, total, nil // pruned since the HEAD: a miss
	}
	if err != nil {
		return nil, total, t.classify(key, err)
	}
	a, err := parseManifest(key, data)
	if err != nil {
		return nil, total, fmt.Errorf("%s: %w", t.repo.Tag(key), err)
	}
	a.Manifest = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: desc.Digest, Size: int64(len(data))}
	a.Inputs, tr, err = t.repo.Blob(ctx, a.config)
	total = add(total, tr)
	if errors.Is(err, oci.ErrNotFound) {
		return nil, total, nil
	}
	if err != nil {
		return nil, total, t.classify(key, err)
	}
	return a, total, nil
}

// localFailure reports an error of this machine's filesystem.
func localFailure(err error) bool {
	for _, e := range []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EIO, syscall.EROFS, syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// classify marks what a check of content found as ErrCorrupt; anything
// else is the tier failing.
func (t *Tier) classify(key string, err error) error {
	// A blob missing under a manifest that names it is a broken entry too.
	if errors.Is(err, oci.ErrDigestMismatch) || errors.Is(err, oci.ErrDiffIDMismatch) || errors.Is(err, unpack.ErrHostile) || errors.Is(err, oci.ErrNotFound) {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return err
}

// parseManifest checks that data is a cache artifact of key.
func parseManifest(key string, data []byte) (*Artifact, error) {
	bad := func(format string, args ...any) (*Artifact, error) {
		return nil, fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	var m v1.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return bad("manifest is not JSON: %v", err)
	}
	switch {
	case m.SchemaVersion != 2 || m.MediaType != v1.MediaTypeImageManifest:
		return bad("not an OCI image manifest")
	case m.ArtifactType != ArtifactType:
		return bad("artifactType %q, not %s", m.ArtifactType, ArtifactType)
	case m.Config.MediaType != ConfigMediaType:
		return bad("config media type %q, not %s", m.Config.MediaType, ConfigMediaType)
	case m.Config.Digest != digest.Digest("sha256:"+key):
		return bad("its config %s is not the inputs of key %s", m.Config.Digest, key)
	case m.Config.Size <= 0 || m.Config.Size > 1<<20:
		return bad("config size %d", m.Config.Size)
	case len(m.Layers) != 1:
		return bad("%d layers, not 1", len(m.Layers))
	case m.Annotations[AnnotationKey] != key:
		return bad("annotated with key %q", m.Annotations[AnnotationKey])
	}
	l := m.Layers[0]
	if err := l.Digest.Validate(); err != nil {
		return bad("layer digest %q: %v", l.Digest, err)
	}
	if l.Size < 0 {
		return bad("layer size %d", l.Size)
	}
	if !slices.Contains(layerMediaTypes, l.MediaType) {
		return bad("layer media type %q", l.MediaType)
	}
	a := &Artifact{Key: key, Layer: v1.Descriptor{MediaType: l.MediaType, Digest: l.Digest, Size: l.Size},
		Parent: m.Annotations[AnnotationParent], Name: m.Annotations[AnnotationLayer], config: m.Config}
	var err error
	if a.DiffID, err = digest.Parse(m.Annotations[AnnotationDiffID]); err != nil {
		return bad("diff_id %q: %v", m.Annotations[AnnotationDiffID], err)
	}
	if a.Created, err = time.Parse(time.RFC3339Nano, m.Annotations[AnnotationCreated]); err != nil {
		return bad("created %q: %v", m.Annotations[AnnotationCreated], err)
	}
	a.Pushed, _ = time.Parse(time.RFC3339Nano, m.Annotations[AnnotationPushed])
	if a.Parent != "" && !isKey(a.Parent) {
		return bad("parent %q", a.Parent)
	}
	return a, nil
}

var layerMediaTypes = []string{
	v1.MediaTypeImageLayerGzip, v1.MediaTypeImageLayerZstd, v1.MediaTypeImageLayer,
	"application/vnd.docker.image.rootfs.diff.tar.gzip",
}

func isKey(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Pull downloads a's blob into tmp and, once its digest has checked out,
// unpacks it into tmp's rootfs with the hostile-tar applier, checking its
// diff_id. Nothing unverified is parsed: a tampered blob fails before any
// tar header of it is read.
func (t *Tier) Pull(ctx context.Context, a *Artifact, tmp *cache.Temp, opts unpack.Options) (oci.Transfer, error) {
	f, err := os.OpenFile(tmp.BlobPath(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return oci.Transfer{}, err
	}
	tr, err := t.repo.CopyBlob(ctx, a.Layer, func(r io.Reader) error {
		_, err := io.Copy(f, r)
		return err
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return tr, t.classify(a.Key, err)
	}
	blob, err := os.Open(tmp.BlobPath())
	if err != nil {
		return tr, err
	}
	lr, err := oci.UncompressLayer(blob, a.DiffID)
	if err != nil {
		return tr, fmt.Errorf("%s: %w: layer %s: %w", t.repo.Tag(a.Key), ErrCorrupt, a.Layer.Digest, err)
	}
	_, err = unpack.Apply(ctx, lr, tmp.Rootfs(), opts)
	if cerr := lr.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if ctx.Err() != nil {
			return tr, err
		}
		// The blob matched its digest, so what fails now is its content
		// (a broken gzip stream, a bad tar, a wrong diff_id): the entry
		// is corrupt, unless this machine's disk is what failed.
		if localFailure(err) {
			return tr, fmt.Errorf("%s: layer %s: %w", t.repo.Tag(a.Key), a.Layer.Digest, err)
		}
		return tr, fmt.Errorf("%s: %w: layer %s: %w", t.repo.Tag(a.Key), ErrCorrupt, a.Layer.Digest, err)
	}
	return tr, nil
}

// PushOptions control Push.
type PushOptions struct {
	// Replace pushes even when the tier has the key already (the entry
	// found there was corrupt).
	Replace bool
	// Now dates the push.
	Now time.Time
}

// Push puts entry e into the tier under its key, unless it is there
// already (one HEAD tells); only blobs the registry lacks are uploaded.
// It reports whether it pushed.
func (t *Tier) Push(ctx context.Context, e *cache.Entry, opts PushOptions) (bool, oci.Transfer, error) {
	info := e.Info
	if len(info.KeyInputs) == 0 {
		return false, oci.Transfer{}, inputerr.New("cache entry %s has no key inputs (a base-image layer, or made by an older layerfs): only layers built from a spec are shared", e.Dir)
	}
	if cache.KeyOf(info.KeyInputs) != info.Key {
		return false, oci.Transfer{}, fmt.Errorf("cache entry %s: its key inputs do not hash to its key (run layerfs cache verify)", e.Dir)
	}
	var total oci.Transfer
	if !opts.Replace {
		d, tr, err := t.Lookup(ctx, info.Key)
		total = add(total, tr)
		if err != nil || d != nil {
			return false, total, err
		}
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	layer := v1.Descriptor{MediaType: info.MediaType, Digest: info.Digest, Size: info.Size}
	m := v1.Manifest{
		Versioned:    specs.Versioned{SchemaVersion: 2},
		MediaType:    v1.MediaTypeImageManifest,
		ArtifactType: ArtifactType,
		Config:       v1.Descriptor{MediaType: ConfigMediaType, Digest: digest.Digest("sha256:" + info.Key), Size: int64(len(info.KeyInputs))},
		Layers:       []v1.Descriptor{layer},
		Annotations: map[string]string{
			AnnotationKey:     info.Key,
			AnnotationLayer:   info.Name,
			AnnotationDiffID:  info.DiffID.String(),
			AnnotationCreated: info.Created.UTC().Format(time.RFC3339Nano),
			AnnotationPushed:  opts.Now.UTC().Format(time.RFC3339Nano),
		},
	}
	if info.Parent != "" {
		m.Annotations[AnnotationParent] = info.Parent
	}
	data, err := json.Marshal(m)
	if err != nil {
		return false, total, err
	}
	blobs := []oci.PushBlob{{
		Descriptor: layer,
		Open:       func() (io.ReadCloser, error) { return os.Open(e.Blob()) },
	}}
	tr, err := t.repo.Push(ctx, info.Key, v1.MediaTypeImageManifest, data, info.KeyInputs, blobs)
	total = add(total, tr)
	if err != nil && !errors.Is(err, oci.ErrDigestMismatch) && ctx.Err() == nil {
		// Hosts pushing one key at once can trip a registry's own race
		// (distribution 2.8 may answer MANIFEST_BLOB_UNKNOWN while another
		// upload rewrites the blob's link): if the key is there now, that
		// push is as good as ours; else once more.
		if d, tr, herr := t.Lookup(ctx, info.Key); herr == nil && d != nil && !opts.Replace {
			return false, add(total, tr), nil
		}
		tr, err = t.repo.Push(ctx, info.Key, v1.MediaTypeImageManifest, data, info.KeyInputs, blobs)
		total = add(total, tr)
	}
	if err != nil {
		return false, total, err
	}
	return true, total, nil
}

// Listed is one entry of a tier, as List finds it.
type Listed struct {
	Tag      string        `json:"key"`
	Name     string        `json:"name"`
	Parent   string        `json:"parent,omitempty"`
	Manifest digest.Digest `json:"manifest"`
	Digest   digest.Digest `json:"digest"`
	Size     int64         `json:"size"`
	Created  time.Time     `json:"created"`
	Pushed   time.Time     `json:"pushed"`
	// Err says why the tag is not a sound entry (then only Tag is known).
	Err error `json:"-"`
}

// Age is what prune goes by: when the entry was pushed (created, for
// an artifact without that annotation).
func (l Listed) Age(now time.Time) time.Duration {
	if !l.Pushed.IsZero() {
		return now.Sub(l.Pushed)
	}
	return now.Sub(l.Created)
}

// List reads every entry of the tier: its tags that are keys, each with
// its manifest (two requests a tag). Tags that are not keys are not
// entries and are left out.
func (t *Tier) List(ctx context.Context) ([]Listed, error) {
	tags, _, err := t.repo.Tags(ctx)
	if errors.Is(err, oci.ErrNotFound) {
		return nil, nil // no repository yet: no entries
	}
	if err != nil {
		return nil, err
	}
	var out []Listed
	for _, tag := range tags {
		if !isKey(tag) {
			continue
		}
		l := Listed{Tag: tag}
		desc, _, err := t.repo.Head(ctx, tag)
		if errors.Is(err, oci.ErrNotFound) {
			continue // removed since the list was made
		}
		if err != nil {
			return nil, err
		}
		l.Manifest = desc.Digest
		data, _, err := t.repo.Manifest(ctx, desc.Digest)
		if err != nil {
			if errors.Is(err, oci.ErrNotFound) {
				continue
			}
			return nil, err
		}
		a, err := parseManifest(tag, data)
		if err != nil {
			l.Err = err
		} else {
			l.Name, l.Parent, l.Digest, l.Size, l.Created, l.Pushed = a.Name, a.Parent, a.Layer.Digest, a.Layer.Size, a.Created, a.Pushed
		}
		out = append(out, l)
	}
	return out, nil
}

// Remove deletes l's manifest, and with it l's tag (each entry's manifest
// is its own: its config is its key). The registry's garbage collection
// frees the blobs no manifest names any more.
func (t *Tier) Remove(ctx context.Context, l Listed) error {
	if err := t.repo.Delete(ctx, l.Manifest); err != nil {
		return err
	}
	return nil
}

// Get looks key up and fetches its artifact: nil when the tier lacks it.
func (t *Tier) Get(ctx context.Context, key string) (*Artifact, oci.Transfer, error) {
	d, tr, err := t.Lookup(ctx, key)
	if err != nil || d == nil {
		return nil, tr, err
	}
	a, tr2, err := t.Fetch(ctx, key, *d)
	return a, add(tr, tr2), err // a nil artifact: gone since the HEAD
}

func add(a, b oci.Transfer) oci.Transfer {
	return oci.Transfer{Uploaded: a.Uploaded + b.Uploaded, Downloaded: a.Downloaded + b.Downloaded}
}

// IsTierFailure reports whether err says the tier itself failed
// (unreachable, denied, timed out), as opposed to one entry being corrupt.
func IsTierFailure(err error) bool {
	return err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, context.Canceled)
}
