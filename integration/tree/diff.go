package tree

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options tunes Diff. The zero value compares everything.
type Options struct {
	// IgnoreMtime skips all mtimes: when SOURCE_DATE_EPOCH clamps the
	// layer's mtimes, the reference tree cannot match on them.
	IgnoreMtime bool
	// IgnoreDirMtime skips directory mtimes only, for an applier measured
	// not to keep them; the caller says why. None needs it today: the one
	// measured case, GNU tar behind go-containerregistry's flattened
	// stream (a dir revisited after GNU tar set its mtime), is fixed with
	// --delay-directory-restore (appliers/ggcr.go).
	IgnoreDirMtime bool
}

// Difference is one way in which two trees disagree about one path.
type Difference struct {
	Path  string
	Field string // "missing", "extra", "type", "mode", ..., "xattr NAME"
	Want  string
	Got   string
	// W and G are the two entries compared; nil for a missing or an
	// extra path respectively.
	W, G *Entry
}

// String renders d as one line; the path is always quoted so that
// non-UTF-8 and odd names stay readable.
func (d Difference) String() string {
	switch d.Field {
	case "missing":
		return fmt.Sprintf("%s: missing (want %s)", Quote(d.Path), d.Want)
	case "extra":
		return fmt.Sprintf("%s: unexpected %s", Quote(d.Path), d.Got)
	}
	return fmt.Sprintf("%s: %s: want %s, got %s", Quote(d.Path), d.Field, d.Want, d.Got)
}

// Quote renders a path for humans: Go-quoted, so "\xff" stays visible.
func Quote(p string) string { return strconv.Quote(p) }

// Diff returns one readable line per difference between want and got,
// sorted by path.
func Diff(want, got Tree, opts Options) []string {
	ds := Compare(want, got, opts)
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.String()
	}
	return out
}

// Compare returns the differences between want and got, sorted by path
// then field, so callers can filter narrowly before printing.
func Compare(want, got Tree, opts Options) []Difference {
	var ds []Difference
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			ds = append(ds, Difference{Path: p, Field: "missing", Want: describe(w), W: w})
			continue
		}
		ds = append(ds, compareEntry(p, w, g, opts)...)
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			ds = append(ds, Difference{Path: p, Field: "extra", Got: describe(g), G: g})
		}
	}
	sort.Slice(ds, func(i, j int) bool {
		if ds[i].Path != ds[j].Path {
			return ds[i].Path < ds[j].Path
		}
		return ds[i].Field < ds[j].Field
	})
	return ds
}

func compareEntry(p string, w, g *Entry, opts Options) []Difference {
	var ds []Difference
	add := func(field, want, got string) {
		ds = append(ds, Difference{Path: p, Field: field, Want: want, Got: got, W: w, G: g})
	}
	if w.Type != g.Type {
		add("type", describe(w), describe(g))
		return ds // the other fields mean different things
	}
	if w.Mode != g.Mode {
		add("mode", fmt.Sprintf("%04o", w.Mode), fmt.Sprintf("%04o", g.Mode))
	}
	if w.Uid != g.Uid || w.Gid != g.Gid {
		add("owner", fmt.Sprintf("%d:%d", w.Uid, w.Gid), fmt.Sprintf("%d:%d", g.Uid, g.Gid))
	}
	if w.Size != g.Size {
		add("size", strconv.FormatInt(w.Size, 10), strconv.FormatInt(g.Size, 10))
	} else if w.Digest != g.Digest {
		add("content", short(w.Digest), short(g.Digest))
	}
	if w.Link != g.Link {
		add("target", Quote(w.Link), Quote(g.Link))
	}
	if w.Major != g.Major || w.Minor != g.Minor {
		add("device", fmt.Sprintf("%d:%d", w.Major, w.Minor), fmt.Sprintf("%d:%d", g.Major, g.Minor))
	}
	for _, d := range compareXattrs(p, w.Xattrs, g.Xattrs) {
		d.W, d.G = w, g
		ds = append(ds, d)
	}
	if w.Mtime != g.Mtime && !opts.IgnoreMtime && !(opts.IgnoreDirMtime && w.Type == Dir) {
		add("mtime", formatTime(w.Mtime), formatTime(g.Mtime))
	}
	if !equalStrings(w.Links, g.Links) {
		add("hardlinks", quoteList(w.Links), quoteList(g.Links))
	}
	return ds
}

func compareXattrs(p string, w, g map[string][]byte) []Difference {
	var ds []Difference
	for k, wv := range w {
		gv, ok := g[k]
		switch {
		case !ok:
			ds = append(ds, Difference{Path: p, Field: "xattr " + k, Want: quoteValue(wv), Got: "absent"})
		case !bytes.Equal(wv, gv):
			ds = append(ds, Difference{Path: p, Field: "xattr " + k, Want: quoteValue(wv), Got: quoteValue(gv)})
		}
	}
	for k, gv := range g {
		if _, ok := w[k]; !ok {
			ds = append(ds, Difference{Path: p, Field: "xattr " + k, Want: "absent", Got: quoteValue(gv)})
		}
	}
	return ds
}

func describe(e *Entry) string {
	switch e.Type {
	case File:
		return fmt.Sprintf("file %04o %d:%d size %d", e.Mode, e.Uid, e.Gid, e.Size)
	case Symlink:
		return fmt.Sprintf("symlink -> %s", Quote(e.Link))
	case Char, Block:
		return fmt.Sprintf("%s %d:%d %04o", e.Type, e.Major, e.Minor, e.Mode)
	default:
		return fmt.Sprintf("%s %04o %d:%d", e.Type, e.Mode, e.Uid, e.Gid)
	}
}

func formatTime(sec int64) string {
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

func quoteValue(v []byte) string {
	if len(v) > 64 {
		return strconv.Quote(string(v[:64])) + "..."
	}
	return strconv.Quote(string(v))
}

func quoteList(ps []string) string {
	if len(ps) == 0 {
		return "none"
	}
	q := make([]string, len(ps))
	for i, p := range ps {
		q[i] = Quote(p)
	}
	return "[" + strings.Join(q, " ") + "]"
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
