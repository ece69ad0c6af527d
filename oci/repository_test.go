package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// repoArtifact is a manifest with a config and one blob, as a
// Repository pushes them.
type repoArtifact struct {
	manifest []byte
	config   []byte
	blob     []byte
	desc     v1.Descriptor // the manifest's
	cfg      v1.Descriptor
	layer    v1.Descriptor
}

func newRepoArtifact(t *testing.T, seed string, size int) repoArtifact {
	t.Helper()
	var blob []byte
	for i := 0; len(blob) < size; i++ {
		blob = append(blob, digest.FromString(fmt.Sprint(seed, i)).Encoded()...)
	}
	blob = blob[:size]
	config := []byte(`{"seed":"` + seed + `"}`)
	a := repoArtifact{config: config, blob: blob,
		cfg:   v1.Descriptor{MediaType: "application/vnd.example.config.v1+json", Digest: digest.FromBytes(config), Size: int64(len(config))},
		layer: v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(blob), Size: int64(len(blob))},
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		ArtifactType: "application/vnd.example.v1", Config: a.cfg, Layers: []v1.Descriptor{a.layer},
		Annotations: map[string]string{"seed": seed}}
	var err error
	if a.manifest, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	a.desc = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(a.manifest), Size: int64(len(a.manifest))}
	return a
}

func (a repoArtifact) blobs() []PushBlob {
	return []PushBlob{{Descriptor: a.layer, Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(a.blob)), nil }}}
}

func (a repoArtifact) push(t *testing.T, r *Repository, tag string) Transfer {
	t.Helper()
	tr, err := r.Push(context.Background(), tag, v1.MediaTypeImageManifest, a.manifest, a.config, a.blobs())
	if err != nil {
		t.Fatalf("Push %s: %v", tag, err)
	}
	return tr
}

// openTestRepository opens repo of reg; a timeout of 0 gets a generous
// one, so that a hang fails the test rather than blocking it.
func openTestRepository(t *testing.T, reg *testRegistry, repo string, timeout time.Duration) *Repository {
	t.Helper()
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	r, err := openRepositoryWith(reg.ref(t, repo), RepositoryOptions{Insecure: true, Timeout: timeout}, noEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// takeRequests returns the requests reg logged since the last call.
// stallUntil returns a channel that is closed when the test ends, before
// the server closes (which waits for its handlers).
func stallUntil(t *testing.T) chan struct{} {
	c := make(chan struct{})
	t.Cleanup(func() { close(c) })
	return c
}

func TestRepositoryOpenRefuses(t *testing.T) {
	reg := newTestRegistry(t, nil)
	for _, tc := range []struct {
		ref  Reference
		want string
	}{
		{reg.ref(t, "test/repo:v1"), "without a tag or digest"},
		{reg.ref(t, "test/repo@"+digest.FromString("x").String()), "without a tag or digest"},
		{Reference{Transport: TransportOCI, Path: t.TempDir()}, "not a registry repository"},
	} {
		_, err := openRepositoryWith(tc.ref, RepositoryOptions{Insecure: true}, noEnv(t))
		if err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("OpenRepository(%s): %v, want bad input saying %q", tc.ref, err, tc.want)
		}
	}
	r := openTestRepository(t, reg, "test/repo", 0)
	if got := r.Ref().String(); got != "docker://"+reg.Host+"/test/repo" {
		t.Errorf("Ref() = %s", got)
	}
	if got := r.Tag("k").String(); got != "docker://"+reg.Host+"/test/repo:k" {
		t.Errorf("Tag(k) = %s", got)
	}
	if reqs := reg.Requests(); len(reqs) != 0 {
		t.Errorf("opening a repository sent %q", reqs)
	}
}

func TestRepositoryRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t, nil)
	r := openTestRepository(t, reg, "test/art", 0)
	a := newRepoArtifact(t, "one", 200<<10)

	tr := a.push(t, r, "v1")
	if min := int64(len(a.blob) + len(a.config)); tr.Uploaded < min {
		t.Errorf("first push: Uploaded %d, want at least %d (blob and config)", tr.Uploaded, min)
	}
	if n := reg.uploads(); n < 2 {
		t.Errorf("first push made %d upload requests, want some for each of 2 blobs", n)
	}

	// Pushed again, under the same tag: nothing goes.
	tr = a.push(t, r, "v1")
	reqs := reg.Requests()
	if tr.Uploaded != 0 || slices.ContainsFunc(reqs, func(s string) bool {
		return strings.Contains(s, "/blobs/uploads/") || strings.HasPrefix(s, "PUT ")
	}) {
		t.Errorf("second push uploaded %d bytes with requests %q; want none", tr.Uploaded, reqs)
	}
	// Under another tag: only the manifest.
	tr = a.push(t, r, "v2")
	reqs = reg.Requests()
	if tr.Uploaded != 0 || slices.ContainsFunc(reqs, func(s string) bool { return strings.Contains(s, "/blobs/uploads/") }) ||
		!slices.Contains(reqs, "PUT /v2/test/art/manifests/v2") {
		t.Errorf("push under a new tag uploaded %d bytes with requests %q; want only the manifest PUT", tr.Uploaded, reqs)
	}

	// A fresh repository: the pull side dials once, then a Head is one
	// request.
	r2 := openTestRepository(t, reg, "test/art", 0)
	desc, _, err := r2.Head(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != a.desc.Digest || desc.Size != a.desc.Size || desc.MediaType != v1.MediaTypeImageManifest {
		t.Errorf("Head: %+v, want %+v", desc, a.desc)
	}
	reg.Requests()
	if _, _, err := r2.Head(ctx, "v2"); err != nil {
		t.Fatal(err)
	}
	if reqs := reg.Requests(); !slices.Equal(reqs, []string{"HEAD /v2/test/art/manifests/v2"}) {
		t.Errorf("Head made requests %q, want one HEAD", reqs)
	}

	data, mtr, err := r2.Manifest(ctx, desc.Digest)
	if err != nil || !bytes.Equal(data, a.manifest) {
		t.Errorf("Manifest: %q, %v; want the pushed bytes exactly", data, err)
	}
	if mtr.Downloaded != int64(len(a.manifest)) {
		t.Errorf("Manifest: Downloaded %d, want %d", mtr.Downloaded, len(a.manifest))
	}
	cfg, _, err := r2.Blob(ctx, a.cfg)
	if err != nil || !bytes.Equal(cfg, a.config) {
		t.Errorf("Blob(config): %q, %v", cfg, err)
	}
	var got []byte
	btr, err := r2.CopyBlob(ctx, a.layer, func(rd io.Reader) error {
		var err error
		got, err = io.ReadAll(rd)
		return err
	})
	if err != nil || !bytes.Equal(got, a.blob) {
		t.Errorf("CopyBlob: %d bytes, %v; want the blob's %d", len(got), err, len(a.blob))
	}
	if btr.Downloaded < int64(len(a.blob)) || btr.Uploaded != 0 {
		t.Errorf("CopyBlob: %+v, want at least %d bytes downloaded", btr, len(a.blob))
	}
	// use may stop early: the rest is read, and counted.
	btr, err = r2.CopyBlob(ctx, a.layer, func(rd io.Reader) error {
		_, err := io.ReadFull(rd, make([]byte, 10))
		return err
	})
	if err != nil || btr.Downloaded < int64(len(a.blob)) {
		t.Errorf("CopyBlob with a use that stops early: %+v, %v; want the whole blob read", btr, err)
	}

	tags, _, err := r2.Tags(ctx)
	slices.Sort(tags)
	if err != nil || !slices.Equal(tags, []string{"v1", "v2"}) {
		t.Errorf("Tags: %q, %v; want v1 v2", tags, err)
	}

	// Misses.
	for _, tag := range []string{"nope"} {
		_, _, err := r2.Head(ctx, tag)
		if !errors.Is(err, ErrNotFound) || !inputerr.Is(err) || !strings.Contains(err.Error(), "test/art") {
			t.Errorf("Head of a missing tag: %v, want ErrNotFound naming the repository", err)
		}
	}
	r3 := openTestRepository(t, reg, "test/nothing", 0)
	if _, _, err := r3.Head(ctx, "v1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Head in a missing repository: %v, want ErrNotFound", err)
	}
	if _, _, err := r3.Tags(ctx); !errors.Is(err, ErrNotFound) {
		t.Errorf("Tags of a missing repository: %v, want ErrNotFound", err)
	}
	if _, _, err := r2.Manifest(ctx, digest.FromString("none")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Manifest of a missing digest: %v, want ErrNotFound", err)
	}
	if _, err := r2.CopyBlob(ctx, v1.Descriptor{Digest: digest.FromString("none"), Size: 4}, func(io.Reader) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("CopyBlob of a missing blob: %v, want ErrNotFound", err)
	}
}

func TestRepositoryVerifiesContent(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t, nil)
	r := openTestRepository(t, reg, "test/art", 0)
	a := newRepoArtifact(t, "verify", 4096)
	a.push(t, r, "v1")
	serve := func(suffix string, body []byte) {
		reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
			if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, suffix) {
				return false
			}
			w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
			w.Write(body)
			return true
		})
	}
	flipped := func(b []byte) []byte {
		c := bytes.Clone(b)
		c[len(c)/2] ^= 1
		return c
	}

	serve(a.desc.Digest.String(), bytes.Replace(a.manifest, []byte(`"schemaVersion":2`), []byte(`"schemaVersion": 2`), 1))
	_, _, err := r.Manifest(ctx, a.desc.Digest)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("a manifest that does not match its digest: %v, want ErrDigestMismatch", err)
	}

	for _, tc := range []struct {
		what string
		body []byte
	}{
		{"a flipped byte", flipped(a.blob)},
		{"bytes past its size", append(bytes.Clone(a.blob), 'x')},
		{"a short blob", a.blob[:len(a.blob)-1]},
	} {
		serve(a.layer.Digest.String(), tc.body)
		var useErr error
		_, err := r.CopyBlob(ctx, a.layer, func(rd io.Reader) error {
			_, useErr = io.ReadAll(rd)
			return useErr
		})
		if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), a.layer.Digest.String()) {
			t.Errorf("CopyBlob of a blob with %s: %v, want ErrDigestMismatch naming the blob", tc.what, err)
		}
		if !errors.Is(useErr, ErrDigestMismatch) {
			t.Errorf("CopyBlob of a blob with %s: use read it to its end without an error (%v)", tc.what, useErr)
		}
		// A use that stops early does not hide a bad tail.
		_, err = r.CopyBlob(ctx, a.layer, func(rd io.Reader) error {
			_, err := io.ReadFull(rd, make([]byte, 10))
			return err
		})
		if !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("CopyBlob of a blob with %s, used in part: %v, want ErrDigestMismatch", tc.what, err)
		}
		serve(a.cfg.Digest.String(), flipped(a.config))
		if _, _, err := r.Blob(ctx, a.cfg); !errors.Is(err, ErrDigestMismatch) {
			t.Errorf("Blob of a config with a flipped byte: %v, want ErrDigestMismatch", err)
		}
	}
	reg.SetTamper(nil)

	// Refused before anything is sent.
	reg.Requests()
	if _, _, err := r.Blob(ctx, v1.Descriptor{Digest: a.layer.Digest, Size: maxManifestSize + 1}); !inputerr.Is(err) || !strings.Contains(err.Error(), "too large") {
		t.Errorf("Blob of a huge descriptor: %v, want bad input", err)
	}
	if _, _, err := r.Blob(ctx, v1.Descriptor{Digest: a.layer.Digest, Size: -1}); err == nil {
		t.Errorf("Blob of a negative size: no error")
	}
	if _, err := r.CopyBlob(ctx, v1.Descriptor{Digest: "sha256:nothex"}, func(io.Reader) error { return nil }); !inputerr.Is(err) {
		t.Errorf("CopyBlob of a malformed digest: %v, want bad input", err)
	}
	if _, _, err := r.Manifest(ctx, "md5:x"); !inputerr.Is(err) {
		t.Errorf("Manifest of a malformed digest: %v, want bad input", err)
	}
	if reqs := reg.Requests(); len(reqs) != 0 {
		t.Errorf("refused reads sent %q", reqs)
	}

	// A push whose local blob lost bytes fails, naming it, and tags
	// nothing.
	b := newRepoArtifact(t, "badsource", 4096)
	bad := b.blobs()
	bad[0].Open = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(flipped(b.blob))), nil }
	_, err = r.Push(ctx, "bad", v1.MediaTypeImageManifest, b.manifest, b.config, bad)
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), b.layer.Digest.String()) {
		t.Errorf("push of a corrupt local blob: %v, want ErrDigestMismatch naming it", err)
	}
	if _, _, err := r.Head(ctx, "bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after a failed push the tag is there: %v", err)
	}
}

func TestRepositoryStallTimeout(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t, nil)
	release := stallUntil(t)
	a := newRepoArtifact(t, "stall", 2000)
	a.push(t, openTestRepository(t, reg, "test/art", 0), "v1")
	const timeout = 500 * time.Millisecond
	stall := func(w http.ResponseWriter, req *http.Request) {
		select {
		case <-release:
		case <-req.Context().Done():
		}
	}
	// check runs op, which must fail after the timeout, saying so.
	check := func(what string, op func(r *Repository) error) {
		t.Helper()
		r := openTestRepository(t, reg, "test/art", timeout)
		start := time.Now()
		err := op(r)
		el := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "did not answer for 500ms") || !strings.Contains(err.Error(), reg.Host) {
			t.Errorf("%s: %v, want an error saying the registry did not answer for 500ms", what, err)
		}
		if el < timeout || el > 10*time.Second {
			t.Errorf("%s: failed after %s with a 500ms stall timeout", what, el)
		}
	}

	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodHead || !strings.Contains(req.URL.Path, "/manifests/") {
			return false
		}
		stall(w, req)
		return true
	})
	check("a HEAD never answered", func(r *Repository) error {
		_, _, err := r.Head(ctx, "v1")
		return err
	})

	// A registry that accepts the connection and says nothing: the
	// first operation's ping is bounded too.
	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.URL.Path != "/v2/" {
			return false
		}
		stall(w, req)
		return true
	})
	check("a ping never answered", func(r *Repository) error {
		_, _, err := r.Head(ctx, "v1")
		return err
	})
	check("a ping never answered, on push", func(r *Repository) error {
		_, err := r.Push(ctx, "v3", v1.MediaTypeImageManifest, a.manifest, a.config, a.blobs())
		return err
	})

	// A blob that stops midway.
	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, a.layer.Digest.String()) {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(a.blob)))
		w.Write(a.blob[:len(a.blob)/2])
		w.(http.Flusher).Flush()
		stall(w, req)
		return true
	})
	var got []byte
	var useErr error
	check("a blob that stalls midway", func(r *Repository) error {
		_, err := r.CopyBlob(ctx, a.layer, func(rd io.Reader) error {
			got, useErr = io.ReadAll(rd)
			return useErr
		})
		return err
	})
	if useErr == nil || len(got) >= len(a.blob) {
		t.Errorf("a blob that stalls midway: use read %d of %d bytes with %v, want it to fail", len(got), len(a.blob), useErr)
	}

	// A manifest PUT never answered.
	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodPut || !strings.Contains(req.URL.Path, "/manifests/") {
			return false
		}
		stall(w, req)
		return true
	})
	check("a manifest push never answered", func(r *Repository) error {
		_, err := r.Push(ctx, "v2", v1.MediaTypeImageManifest, a.manifest, a.config, a.blobs())
		return err
	})

	// A blob that trickles in for 2s, 100 bytes every 100ms: slow, but
	// never stalled for 500ms.
	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodGet || !strings.HasSuffix(req.URL.Path, a.layer.Digest.String()) {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(a.blob)))
		for rest := a.blob; len(rest) > 0; {
			n := min(100, len(rest))
			if _, err := w.Write(rest[:n]); err != nil {
				return true
			}
			w.(http.Flusher).Flush()
			rest = rest[n:]
			if len(rest) > 0 {
				select {
				case <-time.After(100 * time.Millisecond):
				case <-req.Context().Done():
					return true
				}
			}
		}
		return true
	})
	r := openTestRepository(t, reg, "test/art", timeout)
	start := time.Now()
	got = nil
	_, err := r.CopyBlob(ctx, a.layer, func(rd io.Reader) error {
		var err error
		got, err = io.ReadAll(rd)
		return err
	})
	el := time.Since(start)
	if err != nil || !bytes.Equal(got, a.blob) {
		t.Errorf("a blob trickling in for %s with a 500ms stall timeout: %d bytes, %v; want it whole", el, len(got), err)
	}
	if el < 1500*time.Millisecond || el > 10*time.Second {
		t.Errorf("the trickling blob took %s, want about 2s (the test does not test what it means to)", el)
	}

	// Without a timeout a slow answer is waited for.
	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method == http.MethodHead && strings.Contains(req.URL.Path, "/manifests/") {
			time.Sleep(700 * time.Millisecond)
		}
		return false
	})
	r, err = openRepositoryWith(reg.ref(t, "test/art"), RepositoryOptions{Insecure: true}, noEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.Head(ctx, "v1"); err != nil {
		t.Errorf("a slow HEAD without a timeout: %v", err)
	}
}

func TestRepositoryTagsFollowPages(t *testing.T) {
	reg := newTestRegistry(t, nil)
	r := openTestRepository(t, reg, "test/art", 0)
	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if !strings.HasSuffix(req.URL.Path, "/tags/list") {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		switch req.URL.Query().Get("last") {
		case "":
			w.Header().Set("Link", `</v2/test/art/tags/list?last=b&n=2>; rel="next"`)
			io.WriteString(w, `{"name":"test/art","tags":["a","b"]}`)
		case "b":
			w.Header().Set("Link", `</v2/test/art/tags/list?last=d&n=2>; rel="next"`)
			io.WriteString(w, `{"name":"test/art","tags":["c","d"]}`)
		default:
			io.WriteString(w, `{"name":"test/art","tags":["e"]}`)
		}
		return true
	})
	tags, _, err := r.Tags(context.Background())
	if err != nil || !slices.Equal(tags, []string{"a", "b", "c", "d", "e"}) {
		t.Errorf("Tags over three pages: %q, %v", tags, err)
	}
}

func TestRepositoryDelete(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t, nil)
	r := openTestRepository(t, reg, "test/art", 0)
	a := newRepoArtifact(t, "delete", 100)
	a.push(t, r, "v1")
	reg.Requests()
	if err := r.Delete(ctx, a.desc.Digest); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if reqs := reg.Requests(); !slices.Contains(reqs, "DELETE /v2/test/art/manifests/"+a.desc.Digest.String()) {
		t.Errorf("Delete made requests %q, want a DELETE by digest", reqs)
	}
	if _, _, err := r.Manifest(ctx, a.desc.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Manifest after Delete: %v, want ErrNotFound", err)
	}
	if err := r.Delete(ctx, a.desc.Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete of a deleted manifest: %v, want ErrNotFound", err)
	}

	reg.SetTamper(func(w http.ResponseWriter, req *http.Request) bool {
		if req.Method != http.MethodDelete {
			return false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusMethodNotAllowed)
		io.WriteString(w, `{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}`)
		return true
	})
	err := r.Delete(ctx, a.desc.Digest)
	if !inputerr.Is(err) || !strings.Contains(err.Error(), "does not allow deletes") {
		t.Errorf("Delete in a registry that refuses deletes: %v, want bad input saying so", err)
	}
}

// TestRepositoryConcurrentUse runs reads at once on a fresh repository:
// all succeed and the pull side dials once.
func TestRepositoryConcurrentUse(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t, nil)
	a := newRepoArtifact(t, "concurrent", 10<<10)
	a.push(t, openTestRepository(t, reg, "test/art", 0), "v1")
	r := openTestRepository(t, reg, "test/art", 0)
	reg.Requests()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				d, _, err := r.Head(ctx, "v1")
				if err == nil && d.Digest != a.desc.Digest {
					err = fmt.Errorf("Head: %s", d.Digest)
				}
				errs <- err
				return
			}
			data, _, err := r.Blob(ctx, a.layer)
			if err == nil && !bytes.Equal(data, a.blob) {
				err = errors.New("Blob: other bytes")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	pings := 0
	for _, q := range reg.Requests() {
		if q == "GET /v2/" {
			pings++
		}
	}
	if pings != 1 {
		t.Errorf("16 concurrent reads pinged the registry %d times, want once", pings)
	}
}
