package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	gv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// RepositoryOptions control a Repository.
type RepositoryOptions struct {
	// Insecure allows plain HTTP and unverified TLS.
	Insecure bool
	// Timeout bounds every wait on the registry: an operation fails when
	// for this long no byte of an answer arrives and no byte of an upload
	// is taken (a frozen registry accepts connections and then says
	// nothing). It is not a bound on a transfer that makes progress.
	// 0 means no bound.
	Timeout time.Duration
}

// Repository is one registry repository, dialled once and used for many
// small operations by tag and digest: the layer cache's shared tier. Its
// methods are safe for concurrent use.
type Repository struct {
	ref  Reference // the repository alone, for messages
	opts RepositoryOptions
	repo name.Repository

	mu     sync.Mutex
	client *registryClient // pulls; dialled on first use
	rt     http.RoundTripper
	creds  credentials
	pusher *remote.Pusher
	puller *remote.Puller
}

// Transfer counts the bytes one operation moved over the network.
type Transfer struct {
	Uploaded   int64 // request bodies of blob uploads
	Downloaded int64 // response bodies
}

// OpenRepository prepares access to the registry repository ref names
// (docker://HOST/REPO, without a tag or digest). Nothing is sent until
// the first operation.
func OpenRepository(ref Reference, opts RepositoryOptions) (*Repository, error) {
	return openRepositoryWith(ref, opts, defaultRegistryEnv())
}

func openRepositoryWith(ref Reference, opts RepositoryOptions, env registryEnv) (*Repository, error) {
	if ref.Transport != TransportDocker {
		return nil, inputerr.New("%s: not a registry repository (want docker://HOST/REPO)", ref)
	}
	if ref.Tag != "" || ref.Digest != "" {
		return nil, inputerr.New("%s: name a repository, without a tag or digest", ref)
	}
	repo, err := registryRepo(ref, opts.Insecure)
	if err != nil {
		return nil, err
	}
	rt, err := registryTransport(ref, repo.RegistryStr(), opts.Insecure, env.certDirs)
	if err != nil {
		return nil, err
	}
	creds, err := findCredentials(env.authFiles, repo)
	if err != nil {
		return nil, inputerr.New("%s: %v", ref, err)
	}
	r := &Repository{ref: ref, opts: opts, repo: repo, rt: progressTransport{rt}, creds: creds}
	ropts := []remote.Option{remote.WithAuth(creds.auth), remote.WithTransport(r.rt), remote.WithUserAgent(registryUserAgent)}
	if r.pusher, err = remote.NewPusher(ropts...); err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	if r.puller, err = remote.NewPuller(ropts...); err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return r, nil
}

// Ref is the repository's reference.
func (r *Repository) Ref() Reference { return r.ref }

// Tag is the reference of tag in the repository.
func (r *Repository) Tag(tag string) Reference {
	ref := r.ref
	ref.Tag = tag
	return ref
}

// op runs one operation under the stall timeout, and turns what it
// failed with into one line naming the repository.
func (r *Repository) op(ctx context.Context, f func(ctx context.Context) error) (Transfer, error) {
	ctx, p, stop := withProgress(ctx, r.opts.Timeout)
	err := f(ctx)
	stop()
	t := Transfer{Uploaded: p.up.Load(), Downloaded: p.down.Load()}
	if err == nil {
		return t, nil
	}
	if cause := context.Cause(ctx); errors.Is(cause, errStalled) {
		return t, fmt.Errorf("%s: registry %s did not answer for %s", r.ref, r.repo.RegistryStr(), r.opts.Timeout)
	}
	return t, registryError(r.ref, r.repo, r.creds, err)
}

// pullClient is the client for reads, dialled (a ping and, where the
// registry wants one, a token) once.
func (r *Repository) pullClient(ctx context.Context) (*registryClient, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.client != nil {
		return r.client, nil
	}
	c, err := dialWith(ctx, r.ref, r.repo, r.rt, r.creds)
	if err != nil {
		return nil, err
	}
	// Requests carry their own contexts (do); this one is the fallback
	// of the blobSource methods, which Repository does not use.
	c.ctx = context.Background()
	r.client = c
	return c, nil
}

// Head looks tag up with one HEAD request: its manifest's descriptor, or
// an error wrapping ErrNotFound.
func (r *Repository) Head(ctx context.Context, tag string) (v1.Descriptor, Transfer, error) {
	var desc v1.Descriptor
	t, err := r.op(ctx, func(ctx context.Context) error {
		c, err := r.pullClient(ctx)
		if err != nil {
			return err
		}
		resp, err := c.do(ctx, http.MethodHead, c.url("manifests", tag), manifestAccept)
		if err != nil {
			return err
		}
		resp.Body.Close()
		d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
		if err != nil {
			return inputerr.New("%s:%s: the registry gave no valid Docker-Content-Digest (%v)", r.ref, tag, err)
		}
		mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
		desc = v1.Descriptor{MediaType: strings.TrimSpace(mt), Digest: d, Size: resp.ContentLength}
		return nil
	})
	return desc, t, err
}

// Manifest fetches the manifest named by d, checked against d and
// bounded in size.
func (r *Repository) Manifest(ctx context.Context, d digest.Digest) ([]byte, Transfer, error) {
	if err := d.Validate(); err != nil {
		return nil, Transfer{}, inputerr.New("%s: manifest %q: %v", r.ref, d, err)
	}
	var data []byte
	t, err := r.op(ctx, func(ctx context.Context) error {
		c, err := r.pullClient(ctx)
		if err != nil {
			return err
		}
		data, _, err = c.manifestCtx(ctx, d.String())
		return err
	})
	return data, t, err
}

// Blob fetches the whole blob desc names (which must be small: it is
// read into memory, up to the manifest bound), checked by size and
// digest.
func (r *Repository) Blob(ctx context.Context, desc v1.Descriptor) ([]byte, Transfer, error) {
	if desc.Size < 0 || desc.Size > maxManifestSize {
		return nil, Transfer{}, inputerr.New("%s: blob %s: %d bytes is too large to read whole", r.ref, desc.Digest, desc.Size)
	}
	var data []byte
	t, err := r.CopyBlob(ctx, desc, func(rd io.Reader) error {
		var err error
		data, err = io.ReadAll(rd)
		return err
	})
	return data, t, err
}

// CopyBlob streams the blob desc names to use, which must read it to
// its end. What it reads is checked as it goes: a blob longer than
// desc.Size is cut off, and at the end a wrong size or digest is an
// error wrapping ErrDigestMismatch, returned from a Read, and so from
// use, before use could take the blob as whole.
func (r *Repository) CopyBlob(ctx context.Context, desc v1.Descriptor, use func(io.Reader) error) (Transfer, error) {
	if err := desc.Digest.Validate(); err != nil {
		return Transfer{}, inputerr.New("%s: blob %q: %v", r.ref, desc.Digest, err)
	}
	return r.op(ctx, func(ctx context.Context) error {
		c, err := r.pullClient(ctx)
		if err != nil {
			return err
		}
		resp, err := c.do(ctx, http.MethodGet, c.url("blobs", desc.Digest.String()), "")
		if err != nil {
			return err
		}
		vr := newVerifyReader(resp.Body, r.ref, desc.Digest, desc.Size)
		defer vr.Close()
		if err := use(vr); err != nil {
			return err
		}
		// use may stop at the end of what it parses (a gzip trailer, a
		// tar's end blocks): the rest is read so that the digest covers
		// every byte.
		if _, err := io.Copy(io.Discard, vr); err != nil {
			return err
		}
		return nil
	})
}

// PushBlob is one blob of a manifest to push: its descriptor, and how to
// read it (called only when the registry lacks it).
type PushBlob struct {
	Descriptor v1.Descriptor
	Open       func() (io.ReadCloser, error)
}

// Push uploads the blobs the registry lacks (one HEAD each tells), then
// puts manifest under tag unless tag already names it. manifest is
// pushed as given, so the registry holds exactly its digest.
func (r *Repository) Push(ctx context.Context, tag string, mediaType string, manifest []byte, config []byte, blobs []PushBlob) (Transfer, error) {
	target := r.repo.Tag(tag)
	img, err := partial.CompressedToImage(rawImage{ref: r.Tag(tag), mediaType: mediaType, manifest: manifest, config: config, blobs: blobs})
	if err != nil {
		return Transfer{}, fmt.Errorf("%s: %w", r.Tag(tag), err)
	}
	return r.op(ctx, func(ctx context.Context) error {
		return r.pusher.Push(ctx, target, img)
	})
}

// Tags lists the repository's tags, following the registry's pages.
func (r *Repository) Tags(ctx context.Context) ([]string, Transfer, error) {
	var tags []string
	t, err := r.op(ctx, func(ctx context.Context) error {
		var err error
		tags, err = r.puller.List(ctx, r.repo)
		return err
	})
	return tags, t, err
}

// Delete removes the manifest d, and so every tag that names it. A
// registry that does not allow deletes says so.
func (r *Repository) Delete(ctx context.Context, d digest.Digest) error {
	_, err := r.op(ctx, func(ctx context.Context) error {
		return r.pusher.Delete(ctx, r.repo.Digest(d.String()))
	})
	if err != nil && (strings.Contains(err.Error(), "UNSUPPORTED") || strings.Contains(err.Error(), "405")) {
		return inputerr.New("%s: the registry does not allow deletes (distribution: set storage.delete.enabled): %v", r.ref, err)
	}
	return err
}

// rawImage presents a manifest, its config and its blobs to ggcr's
// pusher as they are, so that nothing is re-serialized and the registry
// holds the manifest's own digest: an image's copy (pushRegistryWith) and
// a cache entry (Repository.Push). ref names the blobs' source in errors.
type rawImage struct {
	ref       Reference
	mediaType string
	manifest  []byte
	config    []byte
	blobs     []PushBlob
}

func (i rawImage) RawConfigFile() ([]byte, error)      { return i.config, nil }
func (i rawImage) RawManifest() ([]byte, error)        { return i.manifest, nil }
func (i rawImage) MediaType() (types.MediaType, error) { return types.MediaType(i.mediaType), nil }

func (i rawImage) LayerByDigest(h gv1.Hash) (partial.CompressedLayer, error) {
	for _, b := range i.blobs {
		if b.Descriptor.Digest.String() == h.String() {
			return rawBlob{ref: i.ref, b: b}, nil
		}
	}
	return nil, fmt.Errorf("%s: no blob %s to push", i.ref, h)
}

type rawBlob struct {
	ref Reference
	b   PushBlob
}

func (b rawBlob) Digest() (gv1.Hash, error) { return gv1.NewHash(b.b.Descriptor.Digest.String()) }
func (b rawBlob) Size() (int64, error)      { return b.b.Descriptor.Size, nil }
func (b rawBlob) MediaType() (types.MediaType, error) {
	return types.MediaType(b.b.Descriptor.MediaType), nil
}

// Compressed reads the blob checked against its descriptor, so that a
// source blob that is missing or lost bytes is reported by name, not by
// the registry.
func (b rawBlob) Compressed() (io.ReadCloser, error) {
	d := b.b.Descriptor.Digest
	if err := d.Validate(); err != nil {
		return nil, inputerr.New("%s: blob %q: %v", b.ref, d, err)
	}
	rc, err := b.b.Open()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, inputerr.New("%s: blob %s is missing: %v", b.ref, d, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: blob %s: %w", b.ref, d, err)
	}
	return newVerifyReader(rc, b.ref, b.b.Descriptor.Digest, b.b.Descriptor.Size), nil
}

// errStalled is the cause of an operation's cancellation by its stall
// timeout.
var errStalled = errors.New("no progress")

type progressKey struct{}

// progress is one operation's watch: when the last byte moved, and how
// many.
type progress struct {
	last     atomic.Int64 // unix nanoseconds
	up, down atomic.Int64
}

func (p *progress) tick() { p.last.Store(time.Now().UnixNano()) }

// withProgress returns ctx with a progress watch that cancels it (cause
// errStalled) once d passes without a tick. d <= 0 only counts.
func withProgress(ctx context.Context, d time.Duration) (context.Context, *progress, func()) {
	p := &progress{}
	p.tick()
	ctx = context.WithValue(ctx, progressKey{}, p)
	if d <= 0 {
		return ctx, p, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		tk := time.NewTicker(min(d/8, time.Second))
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tk.C:
				if time.Since(time.Unix(0, p.last.Load())) > d {
					cancel(errStalled)
					return
				}
			}
		}
	}()
	return ctx, p, func() { close(done); cancel(nil) }
}

// progressTransport ticks the watch of the request's operation for each
// byte sent in a request body or received in a response, and counts them.
type progressTransport struct{ inner http.RoundTripper }

func (t progressTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	p, _ := req.Context().Value(progressKey{}).(*progress)
	if p == nil {
		return t.inner.RoundTrip(req)
	}
	if req.Body != nil && req.Body != http.NoBody {
		body := &countingBody{ReadCloser: req.Body, p: p}
		if strings.Contains(req.URL.Path, "/blobs/uploads/") {
			body.n = &p.up
		}
		req = req.Clone(req.Context())
		req.Body = body
	}
	resp, err := t.inner.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	p.tick()
	resp.Body = &countingBody{ReadCloser: resp.Body, p: p, n: &p.down}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	p *progress
	n *atomic.Int64 // nil: ticks only
}

func (b *countingBody) Read(buf []byte) (int, error) {
	n, err := b.ReadCloser.Read(buf)
	if n > 0 {
		b.p.tick()
		if b.n != nil {
			b.n.Add(int64(n))
		}
	}
	return n, err
}
