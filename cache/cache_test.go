package cache

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
)

func TestInsertLookupRoundTrip(t *testing.T) {
	ctx := context.Background()
	c := openCache(t, t.TempDir())
	key, parent := testKey("app"), testKey("base")
	unlock, err := c.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := c.NewTemp("app")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{tmp.Rootfs(), tmp.Work()} {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o755 {
			t.Fatalf("NewTemp: %s: %v %v, want an empty 0755 dir", d, fi, err)
		}
	}
	if names := dirNames(t, tmp.Rootfs()); len(names) != 0 {
		t.Fatalf("NewTemp: rootfs holds %v", names)
	}
	fillTemp(t, tmp, key)
	os.WriteFile(filepath.Join(tmp.Work(), "staged"), []byte("x"), 0o644)
	in := testInfo(key, "app")
	in.Parent = parent
	in.Packages = []string{"zlib", "busybox", "base-files"}
	in.Versions = map[string]string{"zlib": "1.3", "busybox": "1.36.1", "base-files": "3.0.14"}
	in.Inputs = map[string]string{"install": "opkg install", "arch": "core2-64", "compression": "gzip"}
	in.Machine = "qemux86-64"
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	in.Created = created
	ins, err := c.Insert(ctx, tmp, in)
	if err != nil {
		t.Fatal(err)
	}
	unlock()

	if want := filepath.Join(c.Dir(), key[:16]+"-app"); ins.Dir != want {
		t.Fatalf("entry dir %s, want %s", ins.Dir, want)
	}
	e, err := c.Lookup(key, "app")
	if err != nil || e == nil {
		t.Fatalf("Lookup after Insert: %v, %v", e, err)
	}
	tree, err := TreeDigest(ctx, e.Rootfs())
	if err != nil {
		t.Fatal(err)
	}
	got := e.Info
	if got.Key != key || got.Parent != parent || got.Name != "app" || got.Type != "packages" ||
		!slices.Equal(got.Packages, []string{"base-files", "busybox", "zlib"}) ||
		got.Versions["busybox"] != "1.36.1" || got.Inputs["install"] != "opkg install" ||
		got.Machine != "qemux86-64" || got.Digest != digest.FromBytes(blobOf(key)) ||
		got.Size != int64(len(blobOf(key))) || !got.Created.Equal(created) || got.Tree != tree {
		t.Fatalf("Lookup info %+v\nwant the inserted one with sorted packages, size %d, tree %s", got, len(blobOf(key)), tree)
	}
	if b, err := os.ReadFile(e.Blob()); err != nil || string(b) != string(blobOf(key)) {
		t.Fatalf("blob: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(e.Rootfs(), "etc/layer.conf")); err != nil || string(b) != "key="+key+"\n" {
		t.Fatalf("rootfs file: %q, %v", b, err)
	}
	if names := dirNames(t, e.Dir); !slices.Equal(names, []string{".oci-layer-cache", ".used", "blob", "entry.json", "rootfs"}) {
		t.Fatalf("entry holds %v (the work dir must be gone)", names)
	}

	var raw map[string]any
	data, _ := os.ReadFile(filepath.Join(e.Dir, "entry.json"))
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"schema": 1.0, "key": key, "parent": parent, "name": "app", "machine": "qemux86-64",
		"diff_id": string(in.DiffID), "digest": string(in.Digest), "tree": string(tree), "created": "2025-03-01T12:00:00Z"} {
		if raw[k] != v {
			t.Errorf("entry.json %s = %v, want %v", k, raw[k], v)
		}
	}
	mk, _ := os.ReadFile(filepath.Join(e.Dir, ".oci-layer-cache"))
	wantMarker := "cache_key=" + key[:16] + "\nlayer_name=app\ncreated=2025-03-01T12:00:00Z\nmachine=qemux86-64\n"
	if string(mk) != wantMarker {
		t.Fatalf(".oci-layer-cache:\n%s\nwant:\n%s", mk, wantMarker)
	}
	requireClean(t, c)

	// Lookup marks the entry used.
	old := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(e.Dir, ".used"), old, old)
	if e, _ = c.Lookup(key, "app"); time.Since(e.LastUsed) > time.Hour {
		t.Fatalf("LastUsed %v after Lookup", e.LastUsed)
	}
	if fi, _ := os.Stat(filepath.Join(e.Dir, ".used")); !fi.ModTime().After(old.Add(time.Hour)) {
		t.Fatalf(".used mtime %v not touched by Lookup", fi.ModTime())
	}

	// Misses: another name, another key, and a key16 collision.
	for _, kn := range [][2]string{{key, "other"}, {testKey("x"), "app"}, {collidingKey(key, "x"), "app"}} {
		if e, err := c.Lookup(kn[0], kn[1]); e != nil || err != nil {
			t.Errorf("Lookup(%s, %s) = %v, %v; want a miss", kn[0], kn[1], e, err)
		}
	}
}

func TestCollidingInsertReplacesTheOther(t *testing.T) {
	c := openCache(t, t.TempDir())
	key := testKey("a")
	other := collidingKey(key, "b")
	build(t, c, key, "app", nil)
	e := build(t, c, other, "app", nil)
	if e.Info.Key != other {
		t.Fatalf("Insert of a colliding key returned the entry of %s", e.Info.Key)
	}
	if e, _ := c.Lookup(key, "app"); e != nil {
		t.Fatalf("the displaced key still hits: %s", e.Dir)
	}
	if e, _ := c.Lookup(other, "app"); e == nil || e.Info.Key != other {
		t.Fatalf("the new key misses: %v", e)
	}
	requireClean(t, c)
}

func TestCorruptEntryIsMissAndQuarantinedByInsert(t *testing.T) {
	c := openCache(t, t.TempDir())
	key := testKey("a")
	e := build(t, c, key, "app", nil)
	os.WriteFile(filepath.Join(e.Dir, "entry.json"), []byte("{half"), 0o644)
	if got, err := c.Lookup(key, "app"); got != nil || err != nil {
		t.Fatalf("Lookup of a corrupt entry: %v, %v; want a miss", got, err)
	}
	// Listed, with what its name tells and why it is unusable.
	ents, err := c.Entries()
	if err != nil || len(ents) != 1 {
		t.Fatal(ents, err)
	}
	if l := ents[0]; !errors.Is(l.Err, ErrCorrupt) || l.Info.Key != key[:16] || l.Info.Name != "app" {
		t.Fatalf("listed corrupt entry: key %q name %q err %v", l.Info.Key, l.Info.Name, l.Err)
	}
	if js, _ := json.Marshal(ents[0]); !strings.Contains(string(js), `"error":"cache entry `) || !strings.Contains(string(js), `"last_used":`) {
		t.Fatalf("JSON of a corrupt entry: %s", js)
	}
	build(t, c, key, "app", nil)
	if got, err := c.Lookup(key, "app"); got == nil || err != nil {
		t.Fatalf("Lookup after rebuilding: %v, %v", got, err)
	}
	q := dirNames(t, filepath.Join(c.Dir(), quarantineDir))
	if len(q) != 1 || !strings.HasPrefix(q[0], key[:16]+"-app.") {
		t.Fatalf("quarantine holds %v, want the corrupt entry", q)
	}
}

func TestInsertRefusesABadBlobAndAbortCleans(t *testing.T) {
	ctx := context.Background()
	c := openCache(t, t.TempDir())
	key := testKey("a")
	tmp, err := c.NewTemp("app")
	if err != nil {
		t.Fatal(err)
	}
	fillTemp(t, tmp, key)
	in := testInfo(key, "app")
	in.Digest = digest.FromString("something else")
	if _, err := c.Insert(ctx, tmp, in); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Insert with a wrong blob digest: %v", err)
	}
	in = testInfo(key, "app")
	in.Size = 3
	if _, err := c.Insert(ctx, tmp, in); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("Insert with a wrong blob size: %v", err)
	}
	if e, _ := c.Lookup(key, "app"); e != nil {
		t.Fatal("a refused insert left an entry")
	}
	if err := tmp.Abort(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Insert(ctx, tmp, testInfo(key, "app")); err == nil {
		t.Fatal("Insert of an aborted temp succeeded")
	}
	requireClean(t, c)

	for _, name := range []string{"", ".hidden", "a/b", "-x", "a\nb", strings.Repeat("n", 201)} {
		if _, err := c.NewTemp(name); !inputerr.Is(err) {
			t.Errorf("NewTemp(%q): %v, want a bad-input error", name, err)
		}
	}
	for _, k := range []string{"", "abc", strings.ToUpper(key), key + "0"} {
		if _, err := c.Lookup(k, "app"); err == nil {
			t.Errorf("Lookup(%q): no error", k)
		}
	}
}

func TestConcurrentInsertsOfOneKeyMakeOneEntry(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir)
	key, name := testKey("shared"), "deps"
	counter := filepath.Join(t.TempDir(), "work-ran")

	var procs []*helperProc
	for range 2 {
		h := startHelper(t, "build", dir, key, name, counter)
		h.expect(t, "ready")
		procs = append(procs, h)
	}
	start := make(chan struct{})
	const goroutines = 8
	dirs := make(chan string, goroutines+len(procs))
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			<-start
			e, err := lockedBuild(context.Background(), t, c, key, name, counter)
			if err != nil {
				errs <- err
				return
			}
			dirs <- e.Dir
		})
	}
	for _, h := range procs {
		h.send(t, "go")
	}
	close(start)
	for _, h := range procs {
		dirs <- h.expect(t, "done")
		h.finish(t)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	close(dirs)
	for d := range dirs {
		if d != filepath.Join(dir, key[:16]+"-"+name) {
			t.Errorf("a builder got entry %s", d)
		}
	}
	ran, _ := os.ReadFile(counter)
	if n := strings.Count(string(ran), "\n"); n != 1 {
		t.Fatalf("the work ran %d times, want once:\n%s", n, ran)
	}
	ents, err := c.List(context.Background())
	if err != nil || len(ents) != 1 {
		t.Fatalf("List: %d entries, %v; want 1", len(ents), err)
	}
	requireClean(t, c)
}

func TestRacingBuildersInsertOneEntry(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir)
	key, name := testKey("raced"), "deps"
	var procs []*helperProc
	for range 2 {
		h := startHelper(t, "racebuild", dir, key, name)
		h.expect(t, "ready")
		procs = append(procs, h)
	}
	start := make(chan struct{})
	const goroutines = 6
	results := make(chan *Entry, goroutines)
	errs := make(chan error, goroutines)
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			<-start
			e, err := racingBuild(context.Background(), t, c, key, name)
			if err != nil {
				errs <- err
				return
			}
			results <- e
		})
	}
	for _, h := range procs {
		h.send(t, "go")
	}
	close(start)
	want := filepath.Join(dir, key[:16]+"-"+name)
	for _, h := range procs {
		if d := h.expect(t, "done"); d != want {
			t.Errorf("helper got %s, want %s", d, want)
		}
		h.finish(t)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	close(results)
	for e := range results {
		if e.Dir != want || e.Info.Key != key {
			t.Errorf("a builder got %s (%s)", e.Dir, e.Info.Key)
		}
	}
	ents, _ := c.List(context.Background())
	if len(ents) != 1 {
		t.Fatalf("%d entries, want 1", len(ents))
	}
	requireClean(t, c)
}

func TestLocksOfDifferentKeysAreIndependent(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := openCache(t, dir)
	a, b := testKey("a"), testKey("b")

	// Another process holds A.
	h := startHelper(t, "lock", dir, a)
	h.expect(t, "ready")

	// A waiter for A stays blocked until its context ends...
	waitCtx, cancel := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		unlock, err := c.Lock(waitCtx, a)
		if err == nil {
			unlock()
		}
		waited <- err
	}()
	// ...while B is taken and released, in this process, with A held: if
	// B waited for A this would never return.
	unlockB, err := c.Lock(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	unlockB()
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock(A) while another process holds it: %v, want it to wait until cancelled", err)
	}

	// Within one process, goroutines exclude each other too.
	unlockB, _ = c.Lock(ctx, b)
	waitCtx, cancel = context.WithCancel(ctx)
	go func() {
		_, err := c.Lock(waitCtx, b)
		waited <- err
	}()
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock(B) while a goroutine holds it: %v", err)
	}
	unlockB()

	// When the holder lets go, A is free.
	h.finish(t)
	unlockA, err := c.Lock(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	unlockA()
	requireClean(t, c)
}

func TestKilledLockHolderLeavesNoLockFile(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir)
	a := testKey("a")
	h := startHelper(t, "lock", dir, a)
	h.expect(t, "ready")
	h.kill(t)
	if names := dirNames(t, filepath.Join(dir, locksDir)); len(names) != 1 {
		t.Fatalf(".locks holds %v after the kill, want the dead holder's file", names)
	}
	unlock, err := c.Lock(context.Background(), a) // not blocked by the dead holder
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	h = startHelper(t, "lock", dir, a)
	h.expect(t, "ready")
	h.kill(t)
	openCache(t, dir)
	requireClean(t, c)
}

func TestCrashLeavesNoEntry(t *testing.T) {
	for _, point := range []string{"newtemp", "midrootfs", "insert:synced", "remove:renamed"} {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			key, name := testKey(point), "app"
			h := startHelper(t, "crash", dir, key, name, point)
			h.expect(t, "ready")
			h.kill(t)

			c := &Cache{dir: dir} // not Open: that would sweep
			if e, err := c.Lookup(key, name); e != nil || err != nil {
				t.Fatalf("Lookup after a kill at %s: %v, %v; want a miss", point, e, err)
			}
			if ents, _ := c.List(context.Background()); len(ents) != 0 {
				t.Fatalf("List after a kill at %s: %v", point, ents)
			}
			if names := dirNames(t, filepath.Join(dir, tmpDir)); len(names) == 0 {
				t.Fatalf("no temp left by a kill at %s", point)
			}
			c = openCache(t, dir)
			requireClean(t, c)
			build(t, c, key, name, nil)
			if e, _ := c.Lookup(key, name); e == nil {
				t.Fatal("no entry after inserting again")
			}
			res, err := c.Verify(context.Background())
			if err != nil || len(res) != 1 || res[0].Err != nil {
				t.Fatalf("Verify: %v, %v", res, err)
			}
		})
	}
	t.Run("insert:renamed", func(t *testing.T) {
		// Killed after the rename: the entry is complete.
		dir := t.TempDir()
		key := testKey("renamed")
		h := startHelper(t, "crash", dir, key, "app", "insert:renamed")
		h.expect(t, "ready")
		h.kill(t)
		c := openCache(t, dir)
		requireClean(t, c)
		if e, _ := c.Lookup(key, "app"); e == nil {
			t.Fatal("no entry after a kill past the rename")
		}
		res, err := c.Verify(context.Background())
		if err != nil || len(res) != 1 || res[0].Err != nil {
			t.Fatalf("Verify: %v, %v", res, err)
		}
	})
}

func TestLiveTempIsNotSwept(t *testing.T) {
	dir := t.TempDir()
	c := openCache(t, dir)
	tmp, err := c.NewTemp("app")
	if err != nil {
		t.Fatal(err)
	}
	// Another process opens the cache while this build runs.
	h := startHelper(t, "lock", dir, testKey("other"))
	h.expect(t, "ready")
	h.finish(t)
	openCache(t, dir)
	if _, err := os.Stat(tmp.Rootfs()); err != nil {
		t.Fatalf("a live build's temp was swept: %v", err)
	}
	fillTemp(t, tmp, testKey("k"))
	if _, err := c.Insert(context.Background(), tmp, testInfo(testKey("k"), "app")); err != nil {
		t.Fatal(err)
	}
	requireClean(t, c)
}

func TestUseKeepsAnEntry(t *testing.T) {
	c := openCache(t, t.TempDir())
	key := testKey("a")
	build(t, c, key, "app", nil)
	e, _ := c.Lookup(key, "app")
	release, err := e.Use()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Remove(key, nil); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of an entry in use: %v, want ErrInUse", err)
	}
	release()
	release() // idempotent
	// A held key lock (a build between Lookup and Use) also keeps it.
	unlock, _ := c.Lock(context.Background(), key)
	if _, err := c.Remove(key, nil); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of an entry whose key is locked: %v, want ErrInUse", err)
	}
	unlock()
	if _, err := c.Remove(key, func(string) bool { return true }); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove of a mounted entry: %v, want ErrInUse", err)
	}
	if _, err := c.Remove(key, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Use(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Use of a removed entry: %v, want ErrNotExist", err)
	}
	// A new entry under the same name is not the removed one.
	build(t, c, key, "app", nil)
	if _, err := e.Use(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Use of a removed entry whose name was reused: %v, want ErrNotExist", err)
	}
	requireClean(t, c)
}

func TestRemoveByPrefix(t *testing.T) {
	c := openCache(t, t.TempDir())
	keys := map[string]string{}
	for _, seed := range []string{"a", "b", "c"} {
		keys[seed] = testKey(seed)
	}
	// Two keys sharing their first 6 digits.
	k1 := "abcdef" + keys["a"][6:]
	k2 := "abcdef" + keys["b"][6:]
	build(t, c, k1, "app", nil)
	build(t, c, k2, "app", nil)
	build(t, c, keys["c"], "base", nil)

	_, err := c.Remove("abcdef", nil)
	if !inputerr.Is(err) || !strings.Contains(err.Error(), k1[:16]+"-app") || !strings.Contains(err.Error(), k2[:16]+"-app") {
		t.Fatalf("ambiguous prefix: %v, want an error naming both", err)
	}
	for _, bad := range []string{"abc", "xyz0", "ffff", ""} {
		if _, err := c.Remove(bad, nil); !inputerr.Is(err) {
			t.Errorf("Remove(%q): %v, want a bad-input error", bad, err)
		}
	}
	if k1[:8] == k2[:8] {
		t.Fatal("test keys share 8 digits")
	}
	for arg, want := range map[string]string{k1[:8]: k1, "sha256:" + k2: k2, keys["c"][:16] + "-base": keys["c"]} {
		if es, err := c.Remove(arg, nil); err != nil || len(es) != 1 || es[0].Info.Key != want {
			t.Fatalf("Remove(%s): %v, %v; want the entry of %s", arg, es, err, want)
		}
	}
	if ents, _ := c.List(context.Background()); len(ents) != 0 {
		t.Fatalf("left: %v", ents)
	}
	requireClean(t, c)
}

func TestListReportsUsageWithHardlinksOnce(t *testing.T) {
	c := openCache(t, t.TempDir())
	big := strings.Repeat("y", 1<<20)
	linked := build(t, c, testKey("linked"), "linked", func(r string) {
		os.WriteFile(filepath.Join(r, "big"), []byte(big), 0o644)
		os.Link(filepath.Join(r, "big"), filepath.Join(r, "big2"))
	})
	copied := build(t, c, testKey("copied"), "copied", func(r string) {
		os.WriteFile(filepath.Join(r, "big"), []byte(big), 0o644)
		os.WriteFile(filepath.Join(r, "big2"), []byte(big), 0o644)
	})
	ents, err := c.List(context.Background())
	if err != nil || len(ents) != 2 {
		t.Fatal(ents, err)
	}
	if ents[0].Name() > ents[1].Name() {
		t.Fatalf("List not sorted: %s, %s", ents[0].Name(), ents[1].Name())
	}
	usage := map[string]int64{}
	for _, e := range ents {
		usage[e.Dir] = e.DiskSize
	}
	l, cp := usage[linked.Dir], usage[copied.Dir]
	if l < 1<<20 || cp < 2<<20 || cp-l < (1<<20)-(64<<10) {
		t.Fatalf("usage linked %d, copied %d: want the link counted once", l, cp)
	}
}

func TestDefaultDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if d := DefaultDir(); d != "/x/cache/layerfs" {
		t.Errorf("with XDG_CACHE_HOME: %s", d)
	}
	t.Setenv("XDG_CACHE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if d := DefaultDir(); d != "/home/u/.cache/layerfs" {
		t.Errorf("with HOME: %s", d)
	}
	t.Setenv("HOME", "")
	if d := DefaultDir(); d != "" {
		t.Errorf("with neither: %q", d)
	}
	if _, err := Open(""); !inputerr.Is(err) {
		t.Errorf("Open(\"\"): %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"123": 123, "123B": 123, "1k": 1024, "10G": 10 << 30, "500M": 500 << 20, "500MB": 500 << 20,
		"1.5GiB": 3 << 29, " 2T ": 2 << 40, "0": 0, ".5K": 512, "1P": 1 << 50,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "G", "-1G", "1X", "1GBB", "1BB", "1..5G", "1e3", "9999999999P", "9223372036854775808"} {
		if _, err := ParseSize(in); !inputerr.Is(err) {
			t.Errorf("ParseSize(%q): %v, want a bad-input error", in, err)
		}
	}
}

// TestRemovalStopsAtMounts: a mount left inside a temp (a build's mount
// point, a bind mount) is not emptied through: what it shows may live
// outside the cache.
func TestRemovalStopsAtMounts(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	c := openCache(t, dir)
	outside := t.TempDir()
	testutil.Tree{T: t, Root: outside}.File("precious", "keep me").Dir("sub").File("sub/also", "keep")
	tmp, err := c.NewTemp("app")
	if err != nil {
		t.Fatal(err)
	}
	fillTemp(t, tmp, testKey("k"))
	mnt := filepath.Join(tmp.Dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount(outside, mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	if err := tmp.Abort(); err == nil || !strings.Contains(err.Error(), "mount point") {
		t.Fatalf("Abort with a mount inside: %v, want a refusal", err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "sub/also")); err != nil || string(b) != "keep" {
		t.Fatalf("the mounted dir was emptied: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(tmp.Rootfs(), "etc/layer.conf")); !os.IsNotExist(err) {
		t.Fatalf("what is not behind the mount should be gone: %v", err)
	}
	openCache(t, dir) // a sweep meanwhile leaves it too
	if _, err := os.Stat(filepath.Join(outside, "precious")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	openCache(t, dir)
	requireClean(t, c)
}

// Open keeps the cache private: entries hold setuid files and devices.
func TestOpenMakesCachePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("cache dir mode %o, want 0700", st.Mode().Perm())
	}
}
