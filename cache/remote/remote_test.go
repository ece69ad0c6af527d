package remote_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/cache/remote"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/registrytest"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/oci/unpack"

	"github.com/layerfs/layerfs/internal/tartest"
)

// uploads counts the blob upload and manifest put requests of reqs.
func uploads(reqs []string) int {
	n := 0
	for _, r := range reqs {
		if strings.HasPrefix(r, "HEAD ") || strings.HasPrefix(r, "GET ") {
			continue
		}
		if strings.Contains(r, "/blobs/uploads/") || strings.HasPrefix(r, "PUT ") && strings.Contains(r, "/manifests/") {
			n++
		}
	}
	return n
}

// isolateAuth keeps the tier from reading the host's auth files.
func isolateAuth(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("REGISTRY_AUTH_FILE", filepath.Join(dir, "none.json"))
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv("DOCKER_CONFIG", dir)
}

// openTier opens the tier at ref; a timeout of 0 gets a generous one, so
// that a hang fails the test instead of blocking it.
func openTier(t *testing.T, ref string, timeout time.Duration) *remote.Tier {
	t.Helper()
	isolateAuth(t)
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	tier, err := remote.Open(ref, remote.Options{Insecure: true, Timeout: timeout})
	if err != nil {
		t.Fatalf("Open %s: %v", ref, err)
	}
	return tier
}

// tarEntry is one member of a test layer.
type tarEntry struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	body     string
	link     string
}

var tarTime = time.Unix(1700000000, 0)

func makeTar(t *testing.T, ents ...tarEntry) []byte {
	t.Helper()
	b := tartest.New()
	for _, e := range ents {
		body := ""
		if e.typ == tar.TypeReg {
			body = e.body
		}
		b.Add(&tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link, ModTime: tarTime}, body)
	}
	return b.Bytes()
}

func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pattern is n bytes that gzip does not shrink much.
func pattern(seed string, n int) string {
	var b []byte
	for i := 0; len(b) < n; i++ {
		d := digest.FromString(fmt.Sprint(seed, i))
		b = append(b, d.Encoded()...)
	}
	return string(b[:n])
}

// appLayer is a layer with owners, modes, a setuid file, a symlink and
// some bulk.
func appLayer(t *testing.T, seed string) []byte {
	return makeTar(t,
		tarEntry{name: "etc/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "etc/app.conf", typ: tar.TypeReg, mode: 0o640, uid: 1000, gid: 2000, body: "seed=" + seed + "\n"},
		tarEntry{name: "srv/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "srv/data/", typ: tar.TypeDir, mode: 0o700, uid: 33, gid: 33},
		tarEntry{name: "srv/data/bulk.bin", typ: tar.TypeReg, mode: 0o600, uid: 33, gid: 33, body: pattern(seed, 64<<10)},
		tarEntry{name: "usr/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "usr/bin/", typ: tar.TypeDir, mode: 0o755},
		tarEntry{name: "usr/bin/tool", typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\necho " + seed + "\n"},
		tarEntry{name: "usr/bin/su", typ: tar.TypeReg, mode: 0o4755, body: "setuid\n"},
		tarEntry{name: "usr/bin/alias", typ: tar.TypeSymlink, mode: 0o777, link: "tool"},
	)
}

func inputsOf(name, seed string) []byte {
	return []byte(fmt.Sprintf(`{"name":%q,"seed":%q,"type":"packages"}`, name, seed))
}

// testEntry is a cache entry made by a test, with what went into it.
type testEntry struct {
	*cache.Entry
	key    string
	inputs []byte
	tar    []byte
	blob   []byte
}

var created = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// makeEntry inserts a real entry into c: the gzip'd layer as its blob,
// the layer applied as its rootfs, inputs whose sha256 is its key.
func makeEntry(t *testing.T, c *cache.Cache, name, seed, parent string, layer []byte) *testEntry {
	t.Helper()
	ctx := context.Background()
	inputs := inputsOf(name, seed)
	key := cache.KeyOf(inputs)
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	tmp, err := c.NewTemp(name)
	if err != nil {
		t.Fatal(err)
	}
	blob := gzipped(t, layer)
	if err := os.WriteFile(tmp.BlobPath(), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := unpack.Apply(ctx, bytes.NewReader(layer), tmp.Rootfs(), unpack.Options{}); err != nil {
		t.Fatal(err)
	}
	e, err := c.Insert(ctx, tmp, cache.Info{
		Key: key, Parent: parent, Name: name, Type: "packages", KeyInputs: inputs,
		DiffID: digest.FromBytes(layer), Digest: digest.FromBytes(blob), MediaType: v1.MediaTypeImageLayerGzip,
		Size: int64(len(blob)), Created: created,
	})
	if err != nil {
		tmp.Abort()
		t.Fatal(err)
	}
	return &testEntry{Entry: e, key: key, inputs: inputs, tar: layer, blob: blob}
}

func openCache(t *testing.T) *cache.Cache {
	t.Helper()
	c, err := cache.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newTemp(t *testing.T, c *cache.Cache, name string) *cache.Temp {
	t.Helper()
	tmp, err := c.NewTemp(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tmp.Abort() })
	return tmp
}

func mustPush(t *testing.T, tier *remote.Tier, e *testEntry, opts remote.PushOptions) oci.Transfer {
	t.Helper()
	pushed, tr, err := tier.Push(context.Background(), e.Entry, opts)
	if err != nil {
		t.Fatalf("Push %s: %v", e.key, err)
	}
	if !pushed {
		t.Fatalf("Push %s to an empty tier reported pushed=false", e.key)
	}
	return tr
}

func mustGet(t *testing.T, tier *remote.Tier, key string) *remote.Artifact {
	t.Helper()
	a, _, err := tier.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	if a == nil {
		t.Fatalf("Get %s: not found", key)
	}
	return a
}

// node is what a tree comparison looks at for one path.
type node struct {
	mode     fs.FileMode
	uid, gid uint32
	content  string // file content or link target
	mtime    int64
}

func snapshot(t *testing.T, root string) map[string]node {
	t.Helper()
	out := map[string]node{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		n := node{mode: fi.Mode(), uid: st.Uid, gid: st.Gid, mtime: fi.ModTime().UnixNano()}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			n.content = string(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			if n.content, err = os.Readlink(p); err != nil {
				return err
			}
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func requireEmptyDir(t *testing.T, dir, what string) {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if len(des) != 0 {
		var names []string
		for _, de := range des {
			names = append(names, de.Name())
		}
		t.Errorf("%s: rootfs holds %v, want nothing applied", what, names)
	}
}

// TestRemoteRoundTrip pushes an entry, looks it up, fetches it and pulls
// it into another cache, checking every field and the request count.
func TestRemoteRoundTrip(t *testing.T) {
	testutil.RequireRoot(t) // owners in the layer
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	c := openCache(t)
	parent := cache.KeyOf([]byte("the parent's inputs"))
	e := makeEntry(t, c, "app", "one", parent, appLayer(t, "one"))
	pushedAt := time.Date(2025, 1, 2, 3, 4, 5, 678901234, time.UTC)

	tier := openTier(t, reg.Ref("team/cache"), 0)
	tr := mustPush(t, tier, e, remote.PushOptions{Now: pushedAt})
	if min := e.Info.Size + int64(len(e.inputs)); tr.Uploaded < min {
		t.Errorf("first push: Uploaded %d, want at least blob %d + config %d", tr.Uploaded, e.Info.Size, len(e.inputs))
	}
	if n := uploads(reg.Requests()); n == 0 {
		t.Errorf("first push made no upload requests")
	}

	// A fresh tier: the first lookup dials (a ping), then each lookup is
	// one HEAD, hit or miss.
	tier2 := openTier(t, reg.Ref("team/cache"), 0)
	d, _, err := tier2.Lookup(ctx, e.key)
	if err != nil || d == nil {
		t.Fatalf("Lookup of a pushed key: %v, %v", d, err)
	}
	reqs := reg.Requests()
	if n := len(reqs); n < 1 || reqs[n-1] != "HEAD /v2/team/cache/manifests/"+e.key || slices.ContainsFunc(reqs[:n-1], func(r string) bool { return r != "GET /v2/" }) {
		t.Errorf("first lookup made requests %q, want the /v2/ ping and one HEAD of the key's tag", reqs)
	}
	absent := cache.KeyOf([]byte("nothing pushed this"))
	if d, _, err := tier2.Lookup(ctx, absent); err != nil || d != nil {
		t.Errorf("Lookup of an absent key: %v, %v; want nil, nil", d, err)
	}
	if reqs := reg.Requests(); !slices.Equal(reqs, []string{"HEAD /v2/team/cache/manifests/" + absent}) {
		t.Errorf("lookup of an absent key made requests %q, want one HEAD", reqs)
	}
	d, _, err = tier2.Lookup(ctx, e.key)
	if err != nil || d == nil {
		t.Fatalf("second Lookup: %v, %v", d, err)
	}
	if reqs := reg.Requests(); !slices.Equal(reqs, []string{"HEAD /v2/team/cache/manifests/" + e.key}) {
		t.Errorf("lookup of a present key made requests %q, want one HEAD", reqs)
	}
	if d.Digest.Validate() != nil || d.Size <= 0 || d.MediaType != v1.MediaTypeImageManifest {
		t.Errorf("Lookup descriptor %+v, want an OCI manifest with a digest and size", d)
	}

	a, _, err := tier2.Fetch(ctx, e.key, *d)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if reqs := reg.Requests(); len(reqs) != 2 {
		t.Errorf("Fetch made requests %q, want the manifest and the config", reqs)
	}
	if a.Key != e.key || a.Name != "app" || a.Parent != parent || a.DiffID != e.Info.DiffID {
		t.Errorf("Fetch: key %s name %q parent %q diff_id %s; want %s app %s %s", a.Key, a.Name, a.Parent, a.DiffID, e.key, parent, e.Info.DiffID)
	}
	if a.Layer.Digest != e.Info.Digest || a.Layer.Size != e.Info.Size || a.Layer.MediaType != v1.MediaTypeImageLayerGzip {
		t.Errorf("Fetch: layer %+v, want %s (%d bytes, gzip)", a.Layer, e.Info.Digest, e.Info.Size)
	}
	if !a.Created.Equal(created) || a.Created.Format(time.RFC3339Nano) != "2024-05-06T07:08:09.123456789Z" {
		t.Errorf("Fetch: created %s, want %s exactly", a.Created.Format(time.RFC3339Nano), created.Format(time.RFC3339Nano))
	}
	if !a.Pushed.Equal(pushedAt) {
		t.Errorf("Fetch: pushed %s, want %s", a.Pushed.Format(time.RFC3339Nano), pushedAt.Format(time.RFC3339Nano))
	}
	if !bytes.Equal(a.Inputs, e.inputs) {
		t.Errorf("Fetch: inputs %q, want %q", a.Inputs, e.inputs)
	}
	if a.Manifest.Digest != d.Digest || a.Manifest.Size != d.Size {
		t.Errorf("Fetch: manifest %+v, Lookup said %+v", a.Manifest, d)
	}

	// Pull into another cache: the same tree, the same blob.
	c2 := openCache(t)
	tmp := newTemp(t, c2, "app")
	ptr, err := tier2.Pull(ctx, a, tmp, unpack.Options{})
	if err != nil {
		t.Fatalf("Pull: %v", err)
	}
	if ptr.Downloaded < e.Info.Size {
		t.Errorf("Pull: Downloaded %d, want at least the blob's %d", ptr.Downloaded, e.Info.Size)
	}
	if b, err := os.ReadFile(tmp.BlobPath()); err != nil || !bytes.Equal(b, e.blob) {
		t.Errorf("pulled blob: %d bytes, %v; want the entry's %d", len(b), err, len(e.blob))
	}
	// The root dir is not in the layer: its mtime is when it was
	// unpacked.
	fi, err := os.Stat(e.Rootfs())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp.Rootfs(), fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	want, got := snapshot(t, e.Rootfs()), snapshot(t, tmp.Rootfs())
	for p, w := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("pulled rootfs lacks %s", p)
		} else if g != w {
			t.Errorf("pulled %s: %+v, want %+v", p, g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("pulled rootfs has %s, the original does not", p)
		}
	}
	if n := got["etc/app.conf"]; n.uid != 1000 || n.gid != 2000 || n.mode != 0o640 || n.content != "seed=one\n" {
		t.Errorf("pulled etc/app.conf %+v, want 1000:2000 0640 with its content", n)
	}
	if n := got["usr/bin/su"]; n.mode != 0o755|fs.ModeSetuid {
		t.Errorf("pulled usr/bin/su mode %v, want setuid 0755", n.mode)
	}
	if n := got["srv/data"]; n.uid != 33 || n.mode != fs.ModeDir|0o700 {
		t.Errorf("pulled srv/data %+v, want a 0700 dir of 33", n)
	}
	// Inserted, the pulled entry has the original's tree digest.
	unlock, err := c2.Lock(ctx, e.key)
	if err != nil {
		t.Fatal(err)
	}
	info := cache.Info{Key: e.key, Parent: a.Parent, Name: a.Name, Type: "packages", KeyInputs: a.Inputs,
		DiffID: a.DiffID, Digest: a.Layer.Digest, MediaType: a.Layer.MediaType, Size: a.Layer.Size, Created: a.Created}
	pe, err := c2.Insert(ctx, tmp, info)
	unlock()
	if err != nil {
		t.Fatalf("Insert of the pulled temp: %v", err)
	}
	if pe.Info.Tree != e.Info.Tree {
		t.Errorf("pulled entry's tree %s, the original's %s", pe.Info.Tree, e.Info.Tree)
	}

	// Again: the tier has it, nothing is uploaded.
	reg.Requests()
	pushed, tr, err := tier.Push(ctx, e.Entry, remote.PushOptions{})
	if err != nil || pushed {
		t.Errorf("second push: pushed=%v, %v; want false, nil", pushed, err)
	}
	if tr.Uploaded != 0 {
		t.Errorf("second push uploaded %d bytes", tr.Uploaded)
	}
	if reqs := reg.Requests(); uploads(reqs) != 0 || len(reqs) != 1 {
		t.Errorf("second push made requests %q, want one HEAD", reqs)
	}

	// Replace pushes anyway: a new manifest, no blob again.
	later := pushedAt.Add(time.Hour)
	pushed, tr, err = tier.Push(ctx, e.Entry, remote.PushOptions{Replace: true, Now: later})
	if err != nil || !pushed {
		t.Fatalf("push with Replace: pushed=%v, %v; want true", pushed, err)
	}
	reqs = reg.Requests()
	if !slices.Contains(reqs, "PUT /v2/team/cache/manifests/"+e.key) {
		t.Errorf("push with Replace made requests %q, want a PUT of the manifest", reqs)
	}
	if tr.Uploaded != 0 || slices.ContainsFunc(reqs, func(r string) bool { return strings.Contains(r, "/blobs/uploads/") }) {
		t.Errorf("push with Replace uploaded %d bytes (requests %q); the registry has both blobs", tr.Uploaded, reqs)
	}
	if a := mustGet(t, tier2, e.key); !a.Pushed.Equal(later) {
		t.Errorf("after the push with Replace the tier's entry was pushed %s, want %s", a.Pushed, later)
	}
}

// TestRemoteManifestAsStored reads what Push put in the registry with
// plain HTTP.
func TestRemoteManifestAsStored(t *testing.T) {
	reg := registrytest.New(t, nil)
	c := openCache(t)
	parent := cache.KeyOf([]byte("parent"))
	e := makeEntry(t, c, "tools", "two", parent, makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	tier := openTier(t, reg.Ref("cache"), 0)
	pushedAt := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
	mustPush(t, tier, e, remote.PushOptions{Now: pushedAt})

	get := func(path, accept string) ([]byte, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, reg.Server.URL+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return b, resp.Header
	}
	data, h := get("/v2/cache/manifests/"+e.key, v1.MediaTypeImageManifest)
	if ct := h.Get("Content-Type"); ct != v1.MediaTypeImageManifest {
		t.Errorf("manifest stored with Content-Type %q", ct)
	}
	var m v1.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != v1.MediaTypeImageManifest {
		t.Errorf("schemaVersion %d mediaType %q", m.SchemaVersion, m.MediaType)
	}
	if m.ArtifactType != "application/vnd.layerfs.cache.v1" {
		t.Errorf("artifactType %q", m.ArtifactType)
	}
	if m.Config.MediaType != "application/vnd.layerfs.cache.config.v1+json" || m.Config.Digest != digest.Digest("sha256:"+e.key) || m.Config.Size != int64(len(e.inputs)) {
		t.Errorf("config %+v, want the cache config type, sha256:%s, %d bytes", m.Config, e.key, len(e.inputs))
	}
	if len(m.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(m.Layers))
	}
	if l := m.Layers[0]; l.Digest != e.Info.Digest || l.Size != e.Info.Size || l.MediaType != v1.MediaTypeImageLayerGzip {
		t.Errorf("layer %+v, want the entry's blob %s (%d bytes)", l, e.Info.Digest, e.Info.Size)
	}
	want := map[string]string{
		"dev.layerfs.cache.key":     e.key,
		"dev.layerfs.cache.parent":  parent,
		"dev.layerfs.cache.layer":   "tools",
		"dev.layerfs.cache.diff_id": e.Info.DiffID.String(),
		v1.AnnotationCreated:        "2024-05-06T07:08:09.123456789Z",
		"dev.layerfs.cache.pushed":  "2025-06-07T08:09:10Z",
	}
	for k, v := range want {
		if m.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, m.Annotations[k], v)
		}
	}
	if len(m.Annotations) != len(want) {
		t.Errorf("annotations %v, want exactly %v", m.Annotations, want)
	}
	if cfg, _ := get("/v2/cache/blobs/sha256:"+e.key, ""); !bytes.Equal(cfg, e.inputs) {
		t.Errorf("config blob %q, want the key inputs %q", cfg, e.inputs)
	}
	if blob, _ := get("/v2/cache/blobs/"+e.Info.Digest.String(), ""); !bytes.Equal(blob, e.blob) {
		t.Errorf("layer blob differs from the entry's")
	}

	// Without a parent there is no parent annotation.
	root := makeEntry(t, c, "root", "three", "", makeTar(t, tarEntry{name: "g", typ: tar.TypeReg, mode: 0o644, body: "y"}))
	mustPush(t, tier, root, remote.PushOptions{})
	data, _ = get("/v2/cache/manifests/"+root.key, v1.MediaTypeImageManifest)
	m = v1.Manifest{}
	json.Unmarshal(data, &m)
	if p, ok := m.Annotations[remote.AnnotationParent]; ok {
		t.Errorf("a first layer's manifest has parent annotation %q", p)
	}
	if a := mustGet(t, tier, root.key); a.Parent != "" || a.Pushed.IsZero() || time.Since(a.Pushed) > time.Hour {
		t.Errorf("first layer: parent %q pushed %s; want none, and now (PushOptions.Now zero)", a.Parent, a.Pushed)
	}
}

// TestRemotePushOfLookedUpEntry pushes an entry as a later build or
// `layerfs cache push` has it: read back from the cache's entry.json,
// not the one Insert returned.
func TestRemotePushOfLookedUpEntry(t *testing.T) {
	reg := registrytest.New(t, nil)
	c := openCache(t)
	made := makeEntry(t, c, "app", "lookedup", "", makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	e, err := c.Lookup(made.key, "app")
	if err != nil || e == nil {
		t.Fatalf("Lookup: %v, %v", e, err)
	}
	tier := openTier(t, reg.Ref("cache"), 0)
	pushed, _, err := tier.Push(context.Background(), e, remote.PushOptions{})
	if err != nil || !pushed {
		t.Fatalf("Push of an entry read back from the cache: pushed=%v, %v (its key_inputs as read: %q, want %q)", pushed, err, e.Info.KeyInputs, made.inputs)
	}
	if a := mustGet(t, tier, made.key); !bytes.Equal(a.Inputs, made.inputs) {
		t.Errorf("pushed inputs %q, want %q", a.Inputs, made.inputs)
	}
}

// TestRemotePushDamagedLocalBlob pushes an entry whose blob lost bytes
// on disk: the push fails before the manifest goes, so the tier does not
// get an entry whose layer it lacks.
func TestRemotePushDamagedLocalBlob(t *testing.T) {
	reg := registrytest.New(t, nil)
	c := openCache(t)
	e := makeEntry(t, c, "app", "damaged", "", appLayer(t, "damaged"))
	if err := os.WriteFile(e.Blob(), flip(e.blob), 0o644); err != nil {
		t.Fatal(err)
	}
	tier := openTier(t, reg.Ref("cache"), 0)
	pushed, _, err := tier.Push(context.Background(), e.Entry, remote.PushOptions{})
	if err == nil || pushed || !errors.Is(err, oci.ErrDigestMismatch) || !strings.Contains(err.Error(), e.Info.Digest.String()) {
		t.Errorf("push of an entry with a damaged blob: pushed=%v, %v; want an error naming the blob", pushed, err)
	}
	if d, _, err := tier.Lookup(context.Background(), e.key); err != nil || d != nil {
		t.Errorf("after a failed push the tier has the key: %v, %v", d, err)
	}
}

func TestRemotePushRefusesEntriesWithoutKeyInputs(t *testing.T) {
	reg := registrytest.New(t, nil)
	c := openCache(t)
	e := makeEntry(t, c, "app", "nokey", "", makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	tier := openTier(t, reg.Ref("cache"), 0)
	reg.Requests()

	base := *e.Entry
	base.Info.KeyInputs = nil
	pushed, _, err := tier.Push(context.Background(), &base, remote.PushOptions{})
	if err == nil || pushed || !inputerr.Is(err) || !strings.Contains(err.Error(), "no key inputs") {
		t.Errorf("push of an entry without key inputs: pushed=%v, %v; want bad input", pushed, err)
	}
	other := *e.Entry
	other.Info.KeyInputs = inputsOf("app", "another")
	pushed, _, err = tier.Push(context.Background(), &other, remote.PushOptions{})
	if err == nil || pushed || !strings.Contains(err.Error(), "do not hash to its key") {
		t.Errorf("push of an entry whose inputs are not its key's: pushed=%v, %v; want refused", pushed, err)
	}
	if reqs := reg.Requests(); len(reqs) != 0 {
		t.Errorf("refused pushes sent %q", reqs)
	}
}

// artifact is a cache artifact crafted by a test, pushed with the oci
// package so that it can be anything.
type artifact struct {
	manifest v1.Manifest
	config   []byte
	blobs    map[digest.Digest][]byte
}

// craft makes the artifact Push would make of inputs and layer, for
// tests to spoil.
func craft(t *testing.T, inputs, layer []byte) *artifact {
	t.Helper()
	key := cache.KeyOf(inputs)
	blob := gzipped(t, layer)
	ld := v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	return &artifact{
		manifest: v1.Manifest{
			Versioned:    specs.Versioned{SchemaVersion: 2},
			MediaType:    v1.MediaTypeImageManifest,
			ArtifactType: remote.ArtifactType,
			Config:       v1.Descriptor{MediaType: remote.ConfigMediaType, Digest: digest.Digest("sha256:" + key), Size: int64(len(inputs))},
			Layers:       []v1.Descriptor{ld},
			Annotations: map[string]string{
				remote.AnnotationKey:     key,
				remote.AnnotationLayer:   "crafted",
				remote.AnnotationDiffID:  digest.FromBytes(layer).String(),
				remote.AnnotationCreated: created.Format(time.RFC3339Nano),
				remote.AnnotationPushed:  created.Format(time.RFC3339Nano),
			},
		},
		config: inputs,
		blobs:  map[digest.Digest][]byte{ld.Digest: blob},
	}
}

func (a *artifact) push(t *testing.T, ref, tag string) {
	t.Helper()
	r, err := oci.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := oci.OpenRepository(r, oci.RepositoryOptions{Insecure: true, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(a.manifest)
	if err != nil {
		t.Fatal(err)
	}
	var blobs []oci.PushBlob
	for _, l := range a.manifest.Layers {
		b := a.blobs[l.Digest]
		blobs = append(blobs, oci.PushBlob{Descriptor: l, Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }})
	}
	if _, err := repo.Push(context.Background(), tag, v1.MediaTypeImageManifest, data, a.config, blobs); err != nil {
		t.Fatalf("push crafted artifact to %s:%s: %v", ref, tag, err)
	}
}

func flip(b []byte) []byte {
	c := bytes.Clone(b)
	c[len(c)/2] ^= 0x40
	return c
}

// serveGet answers GETs of paths ending in suffix with body.
func serveGet(suffix string, body []byte) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, suffix) {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.Write(body)
		return true
	}
}

func wantCorrupt(t *testing.T, what string, err error, also ...error) {
	t.Helper()
	if !errors.Is(err, remote.ErrCorrupt) {
		t.Errorf("%s: %v, want ErrCorrupt", what, err)
		return
	}
	for _, e := range also {
		if !errors.Is(err, e) {
			t.Errorf("%s: %v, want it to wrap %v too", what, err, e)
		}
	}
	if remote.IsTierFailure(err) {
		t.Errorf("%s: IsTierFailure(%v) is true for a corrupt entry", what, err)
	}
}

func TestRemoteCorruptLayerBlob(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	c := openCache(t)
	e := makeEntry(t, c, "app", "tamper", "", appLayer(t, "tamper"))
	tier := openTier(t, reg.Ref("cache"), 0)
	mustPush(t, tier, e, remote.PushOptions{})
	a := mustGet(t, tier, e.key)

	c2 := openCache(t)
	for _, tc := range []struct {
		what string
		body []byte
	}{
		{"a flipped byte", flip(e.blob)},
		{"bytes past its size", append(bytes.Clone(e.blob), "more"...)},
		{"a truncated blob", e.blob[:len(e.blob)-10]},
	} {
		reg.SetTamper(serveGet(e.Info.Digest.String(), tc.body))
		tmp := newTemp(t, c2, "app")
		_, err := tier.Pull(ctx, a, tmp, unpack.Options{})
		wantCorrupt(t, "pull of a layer blob with "+tc.what, err, oci.ErrDigestMismatch)
		requireEmptyDir(t, tmp.Rootfs(), "pull of a layer blob with "+tc.what)
	}

	// Untampered, the same artifact pulls.
	reg.SetTamper(nil)
	tmp := newTemp(t, c2, "app")
	if _, err := tier.Pull(ctx, a, tmp, unpack.Options{}); err != nil {
		t.Errorf("pull once the registry serves the blob again: %v", err)
	}
}

func TestRemoteCorruptConfig(t *testing.T) {
	reg := registrytest.New(t, nil)
	c := openCache(t)
	e := makeEntry(t, c, "app", "config", "", makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	tier := openTier(t, reg.Ref("cache"), 0)
	mustPush(t, tier, e, remote.PushOptions{})

	reg.SetTamper(serveGet("/blobs/sha256:"+e.key, flip(e.inputs)))
	a, _, err := tier.Get(context.Background(), e.key)
	wantCorrupt(t, "a tampered config", err, oci.ErrDigestMismatch)
	if a != nil {
		t.Errorf("a tampered config gave an artifact")
	}
	reg.SetTamper(serveGet("/blobs/sha256:"+e.key, append(bytes.Clone(e.inputs), ' ')))
	_, _, err = tier.Get(context.Background(), e.key)
	wantCorrupt(t, "a config longer than its descriptor", err)
}

// TestRemoteCorruptManifests pushes artifacts that are not entries of
// the key they are tagged with.
func TestRemoteCorruptManifests(t *testing.T) {
	reg := registrytest.New(t, nil)
	ref := reg.Ref("cache")
	tier := openTier(t, ref, 0)
	layer := makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"})
	inputs := inputsOf("crafted", "manifests")
	key := cache.KeyOf(inputs)

	// Sound, as crafted: the spoilers below are what fails.
	craft(t, inputs, layer).push(t, ref, key)
	if a := mustGet(t, tier, key); a.Name != "crafted" {
		t.Fatalf("the crafted artifact reads as %+v", a)
	}

	for _, tc := range []struct {
		what  string
		spoil func(a *artifact)
	}{
		{"a config of other inputs", func(a *artifact) {
			a.config = inputsOf("crafted", "other")
			a.manifest.Config.Digest = digest.FromBytes(a.config)
			a.manifest.Config.Size = int64(len(a.config))
		}},
		{"another artifact type", func(a *artifact) { a.manifest.ArtifactType = "application/vnd.example.other" }},
		{"another config media type", func(a *artifact) { a.manifest.Config.MediaType = v1.MediaTypeImageConfig }},
		{"two layers", func(a *artifact) { a.manifest.Layers = append(a.manifest.Layers, a.manifest.Layers[0]) }},
		{"no layer", func(a *artifact) { a.manifest.Layers = nil }},
		{"another key annotation", func(a *artifact) { a.manifest.Annotations[remote.AnnotationKey] = cache.KeyOf([]byte("x")) }},
		{"a bad created", func(a *artifact) { a.manifest.Annotations[remote.AnnotationCreated] = "yesterday" }},
		{"a bad diff_id", func(a *artifact) { a.manifest.Annotations[remote.AnnotationDiffID] = "sha256:abc" }},
		{"a bad parent", func(a *artifact) { a.manifest.Annotations[remote.AnnotationParent] = "../../etc" }},
		{"an unknown layer media type", func(a *artifact) { a.manifest.Layers[0].MediaType = "text/plain" }},
	} {
		a := craft(t, inputs, layer)
		tc.spoil(a)
		a.push(t, ref, key)
		got, _, err := tier.Get(context.Background(), key)
		wantCorrupt(t, tc.what, err)
		if got != nil {
			t.Errorf("%s: got an artifact", tc.what)
		}
	}
}

func TestRemoteCorruptDiffID(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	ref := reg.Ref("cache")
	tier := openTier(t, ref, 0)
	inputs := inputsOf("crafted", "diffid")
	key := cache.KeyOf(inputs)
	a := craft(t, inputs, makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"}))
	a.manifest.Annotations[remote.AnnotationDiffID] = digest.FromString("another tar").String()
	a.push(t, ref, key)

	art := mustGet(t, tier, key)
	tmp := newTemp(t, openCache(t), "crafted")
	_, err := tier.Pull(ctx, art, tmp, unpack.Options{})
	wantCorrupt(t, "a layer whose tar is not its diff_id", err, oci.ErrDiffIDMismatch)
}

func TestRemoteHostileLayer(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	ref := reg.Ref("cache")
	tier := openTier(t, ref, 0)
	outside := t.TempDir()
	c := openCache(t)
	for i, layer := range [][]byte{
		makeTar(t, tarEntry{name: "../escape", typ: tar.TypeReg, mode: 0o644, body: "out"}),
		makeTar(t,
			tarEntry{name: "ok", typ: tar.TypeReg, mode: 0o644, body: "in"},
			tarEntry{name: "out", typ: tar.TypeSymlink, mode: 0o777, link: outside},
			tarEntry{name: "out/escape", typ: tar.TypeReg, mode: 0o644, body: "out"}),
		makeTar(t,
			tarEntry{name: "up", typ: tar.TypeSymlink, mode: 0o777, link: "../.."},
			tarEntry{name: "up/escape", typ: tar.TypeReg, mode: 0o644, body: "out"}),
	} {
		inputs := inputsOf("hostile", fmt.Sprint(i))
		key := cache.KeyOf(inputs)
		craft(t, inputs, layer).push(t, ref, key)
		a := mustGet(t, tier, key)
		tmp := newTemp(t, c, "hostile")
		_, err := tier.Pull(ctx, a, tmp, unpack.Options{})
		wantCorrupt(t, fmt.Sprintf("hostile layer %d", i), err, unpack.ErrHostile)
		for _, p := range []string{filepath.Join(tmp.Dir, "escape"), filepath.Join(filepath.Dir(tmp.Dir), "escape"),
			filepath.Join(c.Dir(), "escape"), filepath.Join(outside, "escape")} {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("hostile layer %d wrote %s", i, p)
			}
		}
	}
}

func TestRemoteIsTierFailure(t *testing.T) {
	ctx := context.Background()
	isolateAuth(t)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "docker://" + l.Addr().String() + "/cache"
	l.Close()
	tier := openTier(t, closed, 0)
	key := cache.KeyOf([]byte("k"))
	_, _, err = tier.Lookup(ctx, key)
	if err == nil || !remote.IsTierFailure(err) || errors.Is(err, remote.ErrCorrupt) {
		t.Errorf("lookup in a closed registry: %v, want a tier failure", err)
	}

	for _, status := range []int{http.StatusUnauthorized, http.StatusForbidden} {
		reg := registrytest.New(t, nil)
		reg.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
			if status == http.StatusUnauthorized {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			code := map[int]string{401: "UNAUTHORIZED", 403: "DENIED"}[status]
			fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"no"}]}`, code)
			return true
		})
		tier := openTier(t, reg.Ref("cache"), 0)
		d, _, err := tier.Lookup(ctx, key)
		if err == nil || d != nil || !remote.IsTierFailure(err) {
			t.Errorf("lookup in a registry answering %d: %v, %v; want a tier failure", status, d, err)
		}
		c := openCache(t)
		e := makeEntry(t, c, "app", fmt.Sprint(status), "", makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: "x"}))
		pushed, _, err := tier.Push(ctx, e.Entry, remote.PushOptions{Replace: true})
		if err == nil || pushed || !remote.IsTierFailure(err) {
			t.Errorf("push to a registry answering %d: pushed=%v, %v; want a tier failure", status, pushed, err)
		}
	}

	corrupt := fmt.Errorf("%w: config", remote.ErrCorrupt)
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{corrupt, false},
		{fmt.Errorf("cache x: %w", corrupt), false},
		{context.Canceled, false},
		{errors.New("registry x is unreachable"), true},
	} {
		if got := remote.IsTierFailure(tc.err); got != tc.want {
			t.Errorf("IsTierFailure(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestRemoteStallTimeout(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	c := openCache(t)
	e := makeEntry(t, c, "app", "stall", "", appLayer(t, "stall"))
	mustPush(t, openTier(t, reg.Ref("cache"), 0), e, remote.PushOptions{})

	// A HEAD that is never answered.
	reg.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.Contains(r.URL.Path, "/manifests/") {
			return false
		}
		select {
		case <-reg.Released():
		case <-r.Context().Done():
		}
		return true
	})
	tier := openTier(t, reg.Ref("cache"), 500*time.Millisecond)
	start := time.Now()
	d, _, err := tier.Lookup(ctx, e.key)
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("a lookup in a frozen registry took %s with a 500ms timeout", el)
	}
	if err == nil || d != nil || !strings.Contains(err.Error(), "did not answer") || !remote.IsTierFailure(err) {
		t.Errorf("lookup in a frozen registry: %v, %v; want a tier failure saying it did not answer", d, err)
	}

	// The build being stopped while the registry says nothing is neither
	// the tier failing nor the entry.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(200*time.Millisecond, cancel)
	_, _, err = openTier(t, reg.Ref("cache"), 0).Lookup(cctx, e.key)
	if !errors.Is(err, context.Canceled) || remote.IsTierFailure(err) {
		t.Errorf("lookup canceled by its caller: %v, want context.Canceled and no tier failure", err)
	}

	// A layer blob that stops midway: the pull fails, as the tier's
	// failure, not the entry's.
	reg.SetTamper(nil)
	a := mustGet(t, tier, e.key)
	reg.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, e.Info.Digest.String()) {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(e.blob)))
		w.Write(e.blob[:len(e.blob)/2])
		w.(http.Flusher).Flush()
		select {
		case <-reg.Released():
		case <-r.Context().Done():
		}
		return true
	})
	tmp := newTemp(t, openCache(t), "app")
	start = time.Now()
	_, err = tier.Pull(ctx, a, tmp, unpack.Options{})
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("a pull that stalled took %s with a 500ms timeout", el)
	}
	if err == nil || !strings.Contains(err.Error(), "did not answer") || !remote.IsTierFailure(err) {
		t.Errorf("pull of a blob that stalls midway: %v; want a tier failure saying it did not answer", err)
	}
	requireEmptyDir(t, tmp.Rootfs(), "pull of a blob that stalled")
}

func TestRemoteListAndRemove(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	ref := reg.Ref("team/cache")
	tier := openTier(t, ref, 0)
	if l, err := tier.List(ctx); err != nil || len(l) != 0 {
		t.Fatalf("List of a repository that does not exist yet: %v, %v; want none", l, err)
	}
	c := openCache(t)
	a := makeEntry(t, c, "base", "list-a", "", makeTar(t, tarEntry{name: "a", typ: tar.TypeReg, mode: 0o644, body: "a"}))
	b := makeEntry(t, c, "app", "list-b", a.key, makeTar(t, tarEntry{name: "b", typ: tar.TypeReg, mode: 0o644, body: "b"}))
	pushedA := time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	pushedB := time.Date(2025, 3, 1, 12, 30, 0, 5, time.UTC)
	mustPush(t, tier, a, remote.PushOptions{Now: pushedA})
	mustPush(t, tier, b, remote.PushOptions{Now: pushedB})
	// A tag that is not a key, and a key tag whose manifest is not an
	// entry of it.
	other := craft(t, inputsOf("x", "latest"), makeTar(t, tarEntry{name: "l", typ: tar.TypeReg, mode: 0o644, body: "l"}))
	other.push(t, ref, "latest")
	badKey := cache.KeyOf([]byte("bad"))
	other.push(t, ref, badKey)

	list, err := tier.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byTag := map[string]remote.Listed{}
	for _, l := range list {
		byTag[l.Tag] = l
	}
	if len(list) != 3 || len(byTag) != 3 {
		t.Fatalf("List: %+v, want the three key tags", list)
	}
	if _, ok := byTag["latest"]; ok {
		t.Errorf("List includes the tag latest")
	}
	for _, tc := range []struct {
		e      *testEntry
		parent string
		pushed time.Time
	}{{a, "", pushedA}, {b, a.key, pushedB}} {
		l, ok := byTag[tc.e.key]
		if !ok {
			t.Errorf("List lacks %s", tc.e.key)
			continue
		}
		d, _, err := tier.Lookup(ctx, tc.e.key)
		if err != nil || d == nil {
			t.Fatal(err)
		}
		if l.Err != nil || l.Name != tc.e.Info.Name || l.Parent != tc.parent || l.Manifest != d.Digest ||
			l.Digest != tc.e.Info.Digest || l.Size != tc.e.Info.Size || !l.Created.Equal(created) || !l.Pushed.Equal(tc.pushed) {
			t.Errorf("List: %+v\nwant name %s parent %q manifest %s blob %s (%d) created %s pushed %s",
				l, tc.e.Info.Name, tc.parent, d.Digest, tc.e.Info.Digest, tc.e.Info.Size, created, tc.pushed)
		}
		if age := l.Age(tc.pushed.Add(time.Hour)); age != time.Hour {
			t.Errorf("Age an hour after the push: %s", age)
		}
	}
	if l := byTag[badKey]; !errors.Is(l.Err, remote.ErrCorrupt) {
		t.Errorf("List: a key tag with another key's artifact has Err %v, want ErrCorrupt", l.Err)
	}

	reg.Requests()
	if err := tier.Remove(ctx, byTag[a.key]); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if reqs := reg.Requests(); !slices.Contains(reqs, "DELETE /v2/team/cache/manifests/"+byTag[a.key].Manifest.String()) {
		t.Errorf("Remove made requests %q, want a DELETE of the manifest by digest", reqs)
	}
	if d, _, err := tier.Lookup(ctx, a.key); err != nil || d != nil {
		t.Errorf("Lookup after Remove: %v, %v; want a miss", d, err)
	}
	list, err = tier.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, l := range list {
		tags = append(tags, l.Tag)
	}
	slices.Sort(tags)
	want := []string{b.key, badKey}
	slices.Sort(want)
	if !slices.Equal(tags, want) {
		t.Errorf("List after Remove: %q, want %q", tags, want)
	}
	if d, _, err := tier.Lookup(ctx, b.key); err != nil || d == nil {
		t.Errorf("Remove of one entry took another: %v, %v", d, err)
	}
}

func TestRemoteOpenRefuses(t *testing.T) {
	isolateAuth(t)
	for _, tc := range []struct{ ref, want string }{
		{"oci:" + t.TempDir(), "registry repository"},
		{"oci:" + t.TempDir() + ":v1", "registry repository"},
		{"docker://127.0.0.1:5000/cache:v1", "without a tag"},
		{"docker://127.0.0.1:5000/cache@" + digest.FromString("x").String(), "without a tag or digest"},
	} {
		tier, err := remote.Open(tc.ref, remote.Options{Insecure: true})
		if err == nil || tier != nil {
			t.Errorf("Open(%s): %v, want refused", tc.ref, err)
			continue
		}
		if !inputerr.Is(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "cache tier") {
			t.Errorf("Open(%s): %v, want bad input about a cache tier saying %q", tc.ref, err, tc.want)
		}
	}
	tier, err := remote.Open("docker://127.0.0.1:5000/team/cache", remote.Options{Insecure: true})
	if err != nil {
		t.Fatalf("Open of a repository: %v", err)
	}
	if s := tier.String(); s != "docker://127.0.0.1:5000/team/cache" {
		t.Errorf("String() = %q", s)
	}
}

// A blob that matches its digest but whose gzip stream is broken is a
// corrupt entry, not a failing tier: the tier stays usable, and a push
// may mend it.
func TestRemoteCorruptCompression(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t, nil)
	ref := reg.Ref("cache")
	tier := openTier(t, ref, 0)
	inputs := inputsOf("crafted", "gzip")
	key := cache.KeyOf(inputs)
	layer := makeTar(t, tarEntry{name: "f", typ: tar.TypeReg, mode: 0o644, body: pattern("gz", 64<<10)})
	a := craft(t, inputs, layer)
	var ld v1.Descriptor = a.manifest.Layers[0]
	blob := a.blobs[ld.Digest]
	broken := append(append([]byte{}, blob[:len(blob)/2]...), make([]byte, 64)...) // a cut stream
	delete(a.blobs, ld.Digest)
	ld.Digest, ld.Size = digest.FromBytes(broken), int64(len(broken))
	a.blobs[ld.Digest] = broken
	a.manifest.Layers[0] = ld
	a.push(t, ref, key)

	art := mustGet(t, tier, key)
	tmp := newTemp(t, openCache(t), "crafted")
	_, err := tier.Pull(ctx, art, tmp, unpack.Options{})
	wantCorrupt(t, "a blob with a broken gzip stream", err)
	if remote.IsTierFailure(err) {
		t.Errorf("a broken stream takes the tier out: %v", err)
	}
	if !remote.Repairable(err) {
		t.Errorf("a push of a good blob (another digest) mends it, but Repairable says no: %v", err)
	}
}
