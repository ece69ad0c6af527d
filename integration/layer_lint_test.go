package integration

import (
	"archive/tar"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/tree"
)

func lintEntry(name string, typ byte, mode int64, mtime int64) layerEntry {
	return layerEntry{
		hdr:  &tar.Header{Name: name, Typeflag: typ, Mode: mode, ModTime: time.Unix(mtime, 0)},
		name: strings.TrimSuffix(name, "/"),
	}
}

// TestLintCatchesBrokenLayers proves that each lint rule can fail, on
// layers shaped like the ones that broke appliers in research/oci.md.
func TestLintCatchesBrokenLayers(t *testing.T) {
	before := tree.Tree{
		"bin":     {Type: tree.Dir, Mode: 0o755, Mtime: 100},
		"bin/foo": {Type: tree.File, Mode: 0o755, Mtime: 100, Digest: "x"},
		"etc":     {Type: tree.Dir, Mode: 0o755, Mtime: 100},
		"etc/a":   {Type: tree.File, Mode: 0o644, Mtime: 100},
	}
	withLink := func(e layerEntry, target string) layerEntry { e.hdr.Linkname = target; return e }
	withXattr := func(e layerEntry, k string) layerEntry {
		e.hdr.PAXRecords = map[string]string{"SCHILY.xattr." + k: "y"}
		return e
	}
	reg := func(name string) layerEntry { return lintEntry(name, tar.TypeReg, 0o644, 200) }
	dir := func(name string) layerEntry { return lintEntry(name+"/", tar.TypeDir, 0o755, 200) }
	cases := []struct {
		name    string
		entries []layerEntry
		opts    lintOptions
		want    string
	}{
		{"umoci merged-usr (M1)", []layerEntry{withLink(lintEntry("bin", tar.TypeSymlink, 0o777, 200), "usr/bin"), reg("bin/.wh.foo")},
			lintOptions{}, "not emitted as a dir before it"},
		{"no parent header (P1/Q1)", []layerEntry{reg("etc/new")}, lintOptions{}, "not emitted as a dir before it"},
		{"whiteout and entry (W2)", []layerEntry{reg(".wh.etc"), dir("etc"), reg("etc/x")}, lintOptions{}, "also whites out"},
		{"duplicate (X1)", []layerEntry{reg("x"), reg("x")}, lintOptions{}, "duplicate path"},
		{"hardlink first (H2)", []layerEntry{withLink(lintEntry("b", tar.TypeLink, 0o644, 200), "c"), reg("c")}, lintOptions{}, "not an earlier regular file"},
		{"whiteout after sibling", []layerEntry{dir("etc"), reg("etc/b"), reg("etc/.wh.a")}, lintOptions{}, "out of order"},
		{"unsorted", []layerEntry{reg("b"), reg("a")}, lintOptions{}, "out of order"},
		{"stray whiteout (X2)", []layerEntry{reg(".wh.nothing")}, lintOptions{}, "which the lowers do not have"},
		{"opaque marker by default", []layerEntry{dir("etc"), reg("etc/.wh..wh..opq")}, lintOptions{}, "without --opaque-markers"},
		{"overlay xattr", []layerEntry{withXattr(dir("d"), "trusted.overlay.opaque")}, lintOptions{}, "not allowed"},
		{"whiteout device", []layerEntry{lintEntry("x", tar.TypeChar, 0, 200)}, lintOptions{}, "0:0 character device"},
		{"after the epoch", []layerEntry{reg("x")}, lintOptions{epoch: 150}, "after the epoch"},
		{"spurious copy-up", []layerEntry{dir("etc"), lintEntry("etc/a", tar.TypeReg, 0o644, 100)}, lintOptions{}, "spurious copy-up"},
		{"spurious dir", []layerEntry{lintEntry("bin/", tar.TypeDir, 0o755, 100)}, lintOptions{}, "spurious copy-up"},
		{"dir name without slash", []layerEntry{lintEntry("d", tar.TypeDir, 0o755, 200)}, lintOptions{}, "end in /"},
		{"dot-slash name", []layerEntry{reg("./x")}, lintOptions{}, "not clean"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := strings.Join(lintLayer(c.entries, before, c.opts), "\n")
			if !strings.Contains(got, c.want) {
				t.Errorf("want a violation containing %q, got:\n%s", c.want, got)
			}
		})
	}
	good := []layerEntry{reg(".wh.etc"), dir("bin"), reg("bin/.wh.foo"), reg("bin/new"), withLink(lintEntry("bin/new2", tar.TypeLink, 0o644, 200), "bin/new"), reg("z")}
	if bad := lintLayer(good, before, lintOptions{}); len(bad) != 0 {
		t.Errorf("a canonical layer has violations:\n%s", strings.Join(bad, "\n"))
	}
}
