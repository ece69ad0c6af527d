package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// aged builds entries named after their ages in hours and sets their
// last-used times that far back.
func aged(t *testing.T, c *Cache, hours ...int) map[int]*Entry {
	t.Helper()
	out := map[int]*Entry{}
	for _, h := range hours {
		name := "h" + string(rune('0'+h))
		e := build(t, c, testKey(name), name, nil)
		at := time.Now().Add(-time.Duration(h) * time.Hour)
		if err := os.Chtimes(filepath.Join(e.Dir, usedFile), at, at); err != nil {
			t.Fatal(err)
		}
		out[h] = e
	}
	return out
}

func names(ents []*Entry) []string {
	var out []string
	for _, e := range ents {
		out = append(out, e.Info.Name)
	}
	return out
}

func remaining(t *testing.T, c *Cache) []string {
	t.Helper()
	ents, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := names(ents)
	slices.Sort(out)
	return out
}

func TestPruneOlderThan(t *testing.T) {
	ctx := context.Background()
	c := openCache(t, t.TempDir())
	aged(t, c, 1, 2, 3)
	removed, err := c.Prune(ctx, PruneOptions{OlderThan: 90 * time.Minute, DryRun: true})
	if err != nil || !slices.Equal(names(removed), []string{"h3", "h2"}) {
		t.Fatalf("dry run: %v, %v; want h3, h2", names(removed), err)
	}
	if got := remaining(t, c); len(got) != 3 {
		t.Fatalf("a dry run removed entries: %v left", got)
	}
	removed, err = c.Prune(ctx, PruneOptions{OlderThan: 90 * time.Minute})
	if err != nil || !slices.Equal(names(removed), []string{"h3", "h2"}) {
		t.Fatalf("prune: %v, %v; want h3, h2", names(removed), err)
	}
	if got := remaining(t, c); !slices.Equal(got, []string{"h1"}) {
		t.Fatalf("left %v, want h1", got)
	}
	// A lookup makes an old entry recent.
	e := aged(t, c, 5)[5]
	c.Lookup(e.Info.Key, e.Info.Name)
	if removed, _ := c.Prune(ctx, PruneOptions{OlderThan: 30 * time.Minute}); !slices.Equal(names(removed), []string{"h1"}) {
		t.Fatalf("after a lookup of h5: removed %v, want h1", names(removed))
	}
	requireClean(t, c)
}

func TestPruneMaxSizeEvictsLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	c := openCache(t, t.TempDir())
	es := aged(t, c, 1, 2, 3, 4)
	ents, _ := c.List(ctx)
	var total int64
	usage := map[string]int64{}
	for _, e := range ents {
		total += e.DiskSize
		usage[e.Info.Name] = e.DiskSize
	}
	// Room for all but the oldest: only h4 goes.
	removed, err := c.Prune(ctx, PruneOptions{MaxSize: total - usage["h4"]})
	if err != nil || !slices.Equal(names(removed), []string{"h4"}) {
		t.Fatalf("prune to %d: %v, %v; want h4", total-usage["h4"], names(removed), err)
	}
	total -= usage["h4"]

	// The oldest left, h3, is in use by another process, and h2 is
	// mounted: both stay and still count, so h1 goes, and the cache stays
	// above the limit.
	h := startHelper(t, "use", c.Dir(), es[3].Info.Key, es[3].Info.Name)
	h.expect(t, "ready")
	mounted := func(dir string) bool { return dir == es[2].Dir }
	removed, err = c.Prune(ctx, PruneOptions{MaxSize: 1, InUse: mounted})
	if err != nil || !slices.Equal(names(removed), []string{"h1"}) {
		t.Fatalf("prune with h3 used and h2 mounted: %v, %v; want h1", names(removed), err)
	}
	if got := remaining(t, c); !slices.Equal(got, []string{"h2", "h3"}) {
		t.Fatalf("left %v, want h2 h3", got)
	}
	// The user's Lookup made h3 the most recently used: h2 goes first.
	h.finish(t)
	removed, err = c.Prune(ctx, PruneOptions{MaxSize: usage["h3"]})
	if err != nil || !slices.Equal(names(removed), []string{"h2"}) {
		t.Fatalf("after the user exits: %v, %v; want h2", names(removed), err)
	}
	requireClean(t, c)
}

func TestPruneAllSkipsInUse(t *testing.T) {
	ctx := context.Background()
	c := openCache(t, t.TempDir())
	es := aged(t, c, 1, 2, 3)
	release, err := es[1].Use()
	if err != nil {
		t.Fatal(err)
	}
	unlock, _ := c.Lock(ctx, es[2].Info.Key) // a build between Lookup and Use
	if _, err := c.Prune(ctx, PruneOptions{}); !inputerr.Is(err) {
		t.Fatalf("Prune without a criterion: %v", err)
	}
	removed, err := c.Prune(ctx, PruneOptions{All: true, DryRun: true})
	if err != nil || !slices.Equal(names(removed), []string{"h3"}) {
		t.Fatalf("dry run: %v, %v; want h3", names(removed), err)
	}
	removed, err = c.Prune(ctx, PruneOptions{All: true})
	if err != nil || !slices.Equal(names(removed), []string{"h3"}) {
		t.Fatalf("prune all: %v, %v; want h3", names(removed), err)
	}
	release()
	unlock()
	if removed, _ = c.Prune(ctx, PruneOptions{All: true}); len(removed) != 2 {
		t.Fatalf("prune all after release: %v", names(removed))
	}
	requireClean(t, c)
}

func TestVerifyQuarantinesCorruptEntries(t *testing.T) {
	ctx := context.Background()
	c := openCache(t, t.TempDir())
	corruptions := map[string]func(e *Entry){
		"flipped": func(e *Entry) {
			// Same size and mtime: only the content hash can tell.
			p := filepath.Join(e.Rootfs(), "usr/bin/tool")
			fi, _ := os.Stat(p)
			b, _ := os.ReadFile(p)
			b[100] ^= 1
			os.WriteFile(p, b, 0o644)
			os.Chtimes(p, fi.ModTime(), fi.ModTime())
		},
		"chmoded": func(e *Entry) { os.Chmod(filepath.Join(e.Rootfs(), "etc/layer.conf"), 0o600) },
		"removed": func(e *Entry) { os.Remove(filepath.Join(e.Rootfs(), "etc/layer.conf")) },
		"truncated": func(e *Entry) {
			os.Truncate(e.Blob(), 3)
		},
		"badjson":  func(e *Entry) { os.WriteFile(filepath.Join(e.Dir, entryFile), []byte("{"), 0o644) },
		"nomarker": func(e *Entry) { os.Remove(filepath.Join(e.Dir, markerFile)) },
		"inuse":    func(*Entry) {}, // corrupted below, once it is in use
	}
	entries := map[string]*Entry{"clean": build(t, c, testKey("clean"), "clean", nil)}
	for name, corrupt := range corruptions {
		e := build(t, c, testKey(name), name, nil)
		corrupt(e)
		entries[name] = e
	}
	// "inuse" gets a blob of the same size and other bytes.
	b := []byte(strings.Repeat("z", len(blobOf(entries["inuse"].Info.Key))))
	os.WriteFile(entries["inuse"].Blob(), b, 0o644)
	release, err := entries["inuse"].Use()
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	res, err := c.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(entries) {
		t.Fatalf("%d results for %d entries", len(res), len(entries))
	}
	for _, r := range res {
		name := r.Entry.Info.Name
		switch {
		case name == "clean":
			if r.Err != nil || r.Moved != "" {
				t.Errorf("clean entry: %v, moved to %q", r.Err, r.Moved)
			}
		case name == "inuse":
			if !errors.Is(r.Err, ErrCorrupt) || !errors.Is(r.Err, ErrInUse) || r.Moved != "" {
				t.Errorf("corrupt entry in use: %v, moved to %q; want reported and left", r.Err, r.Moved)
			}
		default:
			if !errors.Is(r.Err, ErrCorrupt) || r.Moved == "" {
				t.Errorf("%s: %v, moved to %q; want corrupt and quarantined", name, r.Err, r.Moved)
				continue
			}
			if filepath.Dir(r.Moved) != filepath.Join(c.Dir(), quarantineDir) {
				t.Errorf("%s moved to %s", name, r.Moved)
			}
			if _, err := os.Stat(r.Moved); err != nil {
				t.Errorf("%s: quarantined entry: %v", name, err)
			}
		}
	}
	if got := remaining(t, c); !slices.Equal(got, []string{"clean", "inuse"}) {
		t.Fatalf("left %v, want clean and inuse", got)
	}
	if e, _ := c.Lookup(testKey("flipped"), "flipped"); e != nil {
		t.Fatal("a quarantined entry still hits")
	}
	// Verify is stable: the clean entry is still clean.
	release()
	res, _ = c.Verify(ctx)
	for _, r := range res {
		if (r.Entry.Info.Name == "clean") != (r.Err == nil) {
			t.Errorf("second verify: %s: %v", r.Entry.Name(), r.Err)
		}
	}
}
