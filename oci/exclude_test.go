package oci

import (
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/overlay"
)

func TestExcludeInUpperLayers(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("var/cache/apt/old", "o").File("var/cache/keep", "k").File("var/log/x", "x").File("etc/a", "a")
	upper.File("var/cache/apt/new", "n").Whiteout("var/cache/apt/old").Chmod("var/cache", 0o700).
		File("var/log/y", "y").File("tmp/a.pyc", "pyc").File("usr/lib/b.pyc", "pyc").File("usr/lib/b.py", "py").
		Whiteout("etc/a").
		// The first name of a hardlink group is excluded: the next one
		// carries the file.
		File("a/first.pyc", "h").Link("b/second", "a/first.pyc")
	opts := epochOpts()
	opts.Exclude = []string{"/var/cache/**", "/**/*.pyc", "/etc/a"}
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), opts)
	assertEntries(t, got,
		"5 a/ 0755 0:0",
		"5 b/ 0755 0:0",
		"0 b/second 0644 0:0 \"h\"",
		"5 tmp/ 0755 0:0",
		"5 usr/ 0755 0:0",
		"5 usr/lib/ 0755 0:0",
		"0 usr/lib/b.py 0644 0:0 \"py\"",
		"5 var/ 0755 0:0",
		"5 var/cache/ 0700 0:0", // its own change still counts
		"5 var/log/ 0755 0:0",
		"0 var/log/y 0644 0:0 \"y\"",
	)

	// Excluding the dir itself drops its own change too.
	opts.Exclude = []string{"/var/cache"}
	got = layerEntries(t, upper.Root, overlay.NewStack(lower.Root), opts)
	for _, e := range got {
		if strings.Contains(e, "var/cache") {
			t.Errorf("%q emitted although /var/cache is excluded", e)
		}
	}

	if _, err := layer.Write(t.Context(), &strings.Builder{}, upper.Root, nil, layer.Options{Exclude: []string{"var"}}); err == nil || !inputerr.Is(err) {
		t.Errorf("a bad pattern: got %v, want a bad-input error", err)
	}
}

// An opaque marker would delete what the lower has beneath an excluded
// path, which the layer must leave alone: explicit whiteouts then.
func TestExcludeBeneathOpaqueDir(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("d/cache/x", "x").File("d/old", "o").File("e/old", "o")
	upper.Opaque("d").File("d/new", "n").Opaque("e")
	opts := epochOpts()
	opts.OpaqueMarkers = true
	opts.Exclude = []string{"/d/cache"}
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), opts)
	assertEntries(t, got,
		"5 d/ 0755 0:0",
		"0 d/.wh.old 0000 0:0 \"\"",
		"0 d/new 0644 0:0 \"n\"",
		"5 e/ 0755 0:0",
		"0 e/.wh..wh..opq 0000 0:0 \"\"",
	)
}

func TestExcludeInRootfsLayers(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "rootfs")
	lower, rootfs := d[0], d[1]
	lower.File("var/cache/apt/old", "o").File("var/lib/gone", "g").File("var/lib/keep", "k")
	rootfs.Dir("var/cache").File("var/cache/apt/new", "n").File("var/lib/keep", "k").File("var/lib/new", "n")
	opts := epochOpts()
	opts.Rootfs, opts.Deletions = true, true
	opts.Exclude = []string{"/var/cache/**"}
	got := layerEntries(t, rootfs.Root, overlay.NewStack(lower.Root), opts)
	assertEntries(t, got,
		"5 var/ 0755 0:0",
		"5 var/lib/ 0755 0:0",
		"0 var/lib/.wh.gone 0000 0:0 \"\"",
		"0 var/lib/new 0644 0:0 \"n\"",
	)
}
