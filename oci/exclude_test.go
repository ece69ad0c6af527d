package oci

import (
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/overlay"
)

func TestExcludeMatching(t *testing.T) {
	cases := []struct {
		pattern string
		yes, no []string
	}{
		{"/var/cache/**",
			[]string{"/var/cache/apt", "var/cache/apt/archives/x.deb", "/var/cache/.hidden", "/var/cache/a/"},
			[]string{"/var/cache", "var/cache/", "/var", "/var/cachet/x", "/usr/var/cache/x", "/"}},
		{"/var/cache",
			[]string{"/var/cache", "/var/cache/apt/x"},
			[]string{"/var", "/var/caches", "/var/cach"}},
		{"/**/*.pyc",
			[]string{"/a.pyc", "/usr/lib/python3/b.pyc", "/x.pyc/inside"},
			[]string{"/a.py", "/usr/lib/pyc", "/a.pyc.txt"}},
		{"/usr/**/doc",
			[]string{"/usr/doc", "/usr/share/doc", "/usr/share/x/doc/README"},
			[]string{"/usr/docs", "/doc", "/usr/share/doc-base"}},
		{"/usr/share/locale/*/LC_MESSAGES/?.mo",
			[]string{"/usr/share/locale/de/LC_MESSAGES/a.mo"},
			[]string{"/usr/share/locale/de/LC_MESSAGES/ab.mo", "/usr/share/locale/de/x/LC_MESSAGES/a.mo"}},
		{"/tmp/[ab]*",
			[]string{"/tmp/a", "/tmp/bcd/e"},
			[]string{"/tmp/c", "/tmp"}},
		{"/**",
			[]string{"/a", "/a/b"},
			[]string{"/", ""}},
		{"/a/**/**",
			[]string{"/a/b", "/a/b/c"},
			[]string{"/a"}},
		{"/**/**/x",
			[]string{"/x", "/a/x", "/a/b/c/x"},
			[]string{"/a/xy"}},
	}
	for _, c := range cases {
		m, err := NewExcludeMatcher([]string{c.pattern})
		if err != nil {
			t.Fatalf("%s: %v", c.pattern, err)
		}
		for _, p := range c.yes {
			if !m.Excluded(p) {
				t.Errorf("%s must exclude %q", c.pattern, p)
			}
		}
		for _, p := range c.no {
			if m.Excluded(p) {
				t.Errorf("%s must not exclude %q", c.pattern, p)
			}
		}
	}
	var none *ExcludeMatcher
	if none.Excluded("/a") || (&ExcludeMatcher{}).Excluded("/a") {
		t.Error("no patterns must exclude nothing")
	}
	m, _ := NewExcludeMatcher([]string{"/a/x", "/b/**"})
	if !m.Excluded("/a/x") || !m.Excluded("/b/y") || m.Excluded("/b") || m.Excluded("/a/y") {
		t.Error("a path matched by any of several patterns is excluded, and only such a path")
	}
}

// Deep paths and many "**" must not blow up (no backtracking).
func TestExcludeManyStars(t *testing.T) {
	m, err := NewExcludeMatcher([]string{"/**/a/**/a/**/a/**/a/**/a/**/b"})
	if err != nil {
		t.Fatal(err)
	}
	deep := "/" + strings.Repeat("a/", 200) + "c"
	if m.Excluded(deep) {
		t.Errorf("%s… excluded", deep[:20])
	}
	if !m.Excluded(strings.Repeat("/a", 50) + "/b") {
		t.Error("want a match")
	}
}

func TestExcludeMatchesBelow(t *testing.T) {
	m, _ := NewExcludeMatcher([]string{"/var/cache/**", "/usr/**/doc"})
	for dir, want := range map[string]bool{
		"": true, "var": true, "var/cache": true, "etc": false, "usr": true, "usr/share/x": true, "var/lib": false,
	} {
		if got := m.matchesBelow(dir); got != want {
			t.Errorf("matchesBelow(%q) = %v, want %v", dir, got, want)
		}
	}
}

func TestValidateExclude(t *testing.T) {
	if err := ValidateExclude([]string{"/var/cache/**", "/**/*.pyc", "/a?/[bc]/\\*"}); err != nil {
		t.Errorf("good patterns: %v", err)
	}
	if err := ValidateExclude(nil); err != nil {
		t.Errorf("no patterns: %v", err)
	}
	for _, bad := range []string{"var/cache", "", "/", "/var//cache", "/var/cache/", "/var/../etc", "/./x", "/var/[cache", "/a\\"} {
		err := ValidateExclude([]string{"/ok", bad})
		if err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), "exclude pattern \""+strings.ReplaceAll(bad, "\\", "\\\\")+"\"") {
			t.Errorf("%q: got %v, want a bad-input error naming the pattern", bad, err)
		}
	}
}

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

	if _, err := WriteLayer(t.Context(), &strings.Builder{}, upper.Root, nil, LayerOptions{Exclude: []string{"var"}}); err == nil || !inputerr.Is(err) {
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
