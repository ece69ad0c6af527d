package overlay

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

func TestParseOverride(t *testing.T) {
	cases := map[string]Override{
		"0:0:0755":           {Mode: 0o755},
		"1000:100:4755:file": {UID: 1000, GID: 100, Mode: 0o4755, Type: TypeReg},
		"0:0:040755:dir":     {Mode: 0o755, Type: TypeDir}, // S_IFMT bits some writers add are dropped
		"0:6:0660:block-8-1": {GID: 6, Mode: 0o660, Type: TypeBlock, Major: 8, Minor: 1},
		"0:0:0666:char-1-3":  {Mode: 0o666, Type: TypeChar, Major: 1, Minor: 3},
		"5:5:0644:pipe":      {UID: 5, GID: 5, Mode: 0o644, Type: TypeFifo},
	}
	for in, want := range cases {
		got, err := ParseOverride(in)
		if err != nil || got != want {
			t.Errorf("ParseOverride(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0:0", "x:0:0755", "0:0:0999", "0:0:0755:weird", "0:0:0755:char-x"} {
		if _, err := ParseOverride(in); err == nil {
			t.Errorf("ParseOverride(%q): want an error", in)
		}
	}
	o := Override{UID: 1, GID: 2, Mode: 0o2755, Type: TypeChar, Major: 4, Minor: 64}
	if back, err := ParseOverride(o.Format()); err != nil || back != o {
		t.Errorf("round trip of %q: %+v %v", o.Format(), back, err)
	}
}

func tree(t *testing.T) testutil.Tree { return testutil.Tree{T: t, Root: t.TempDir()} }

func TestReadDirInterpretsEveryMarker(t *testing.T) {
	testutil.RequireRoot(t)
	d := tree(t)
	d.Whiteout("dev-wh").File(".wh.aufs-wh", "").File(".wh..wh..opq", "").File("both", "b").File(".wh.both", "").
		File("xwh", "").Xattr("xwh", "trusted.overlay.whiteout", "").Opaque("opq").File("plain", "p")
	entries, opaque, err := ReadDir(d.Root)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		s := e.Name
		if e.Whiteout {
			s += " whiteout"
		}
		if e.Opaque {
			s += " opaque"
		}
		got = append(got, s)
	}
	want := []string{"aufs-wh whiteout", "both", "dev-wh whiteout", "opq opaque", "plain", "xwh whiteout"}
	if !slices.Equal(got, want) || !opaque {
		t.Errorf("ReadDir = %q opaque=%v, want %q opaque=true", got, opaque, want)
	}

	for _, name := range []string{".wh.", ".wh..", ".wh..wh.x"} {
		bad := tree(t).File(name, "")
		if _, _, err := ReadDir(bad.Root); !errors.Is(err, ErrReservedName) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: got %v, want ErrReservedName naming it", name, err)
		}
	}
}

func TestStackResolvesLikeOverlayfs(t *testing.T) {
	testutil.RequireRoot(t)
	base, mid, top := tree(t), tree(t), tree(t)
	base.File("etc/a", "a").File("etc/b", "b").File("opq/old", "o").File("gone/x", "x").Symlink("lib", "usr/lib").
		File("usr/lib/libc", "c").File("file-then-dir", "f")
	mid.Whiteout("etc/a").File("etc/c", "c").Opaque("opq").File("opq/new", "n").File(".wh.gone", "").
		File("etc/b", "b2").File("file-then-dir/inner", "i")
	top.File("etc/d", "d")
	s := NewStack(base.Root, mid.Root, top.Root)

	names := func(rel string) []string {
		n, err := s.Names(rel)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := names("etc"); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Errorf("etc: %q", got)
	}
	if got := names("opq"); !slices.Equal(got, []string{"new"}) {
		t.Errorf("opaque dir must hide the base's children: %q", got)
	}
	if got := names(""); !slices.Equal(got, []string{"etc", "file-then-dir", "lib", "opq", "usr"}) {
		t.Errorf("root: %q", got)
	}
	for rel, want := range map[string]string{
		"etc/a": "", "etc/b": "file", "gone": "", "gone/x": "", "lib": "symlink",
		"lib/libc":     "", // never through a symlink
		"usr/lib/libc": "file", "file-then-dir": "dir", "file-then-dir/inner": "file",
	} {
		m, err := s.Lookup(rel)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if m != nil {
			got = m.Type.String()
		}
		if got != want {
			t.Errorf("Lookup(%q) = %q, want %q", rel, got, want)
		}
	}
	same, err := s.SameContent("etc/b", filepath.Join(mid.Root, "etc/b"))
	if err != nil || !same {
		t.Errorf("etc/b must be served by the middle layer: %v %v", same, err)
	}
}
