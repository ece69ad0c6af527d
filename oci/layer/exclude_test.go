package layer

import (
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/inputerr"
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
