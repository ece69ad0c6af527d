package overlay

import (
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// layers is a union's layer dirs, built on disk before the union opens
// them: an upper that already holds markers when the union starts is
// read differently from one the union writes itself (aufsWhiteouts).
type layers struct {
	lowers []testutil.Tree // base first
	upper  testutil.Tree
	work   string
}

func newLayers(t *testing.T, nLowers int) layers {
	t.Helper()
	base := t.TempDir()
	var l layers
	for i := range nLowers {
		l.lowers = append(l.lowers, testutil.Tree{T: t, Root: filepath.Join(base, fmt.Sprintf("l%d", i))})
	}
	l.upper = testutil.Tree{T: t, Root: filepath.Join(base, "upper")}
	l.work = filepath.Join(base, "work")
	for _, d := range append(l.lowerDirs(), l.upper.Root, l.work) {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

func (l layers) lowerDirs() []string {
	var out []string
	for _, tr := range l.lowers {
		out = append(out, tr.Root)
	}
	return out
}

func (l layers) open(t *testing.T, opts UnionOptions) *Union {
	t.Helper()
	opts.Lowers, opts.Upper, opts.Work = l.lowerDirs(), l.upper.Root, l.work
	u, err := NewUnion(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// lowersUntouched snapshots the lowers now and, when the test ends,
// fails it if any of them changed: ctime is in the snapshot, so even a
// chmod or an xattr written and removed again shows.
func (l layers) lowersUntouched(t *testing.T) {
	t.Helper()
	before := map[string][]string{}
	for _, d := range l.lowerDirs() {
		before[d] = snapshot(t, d, true)
	}
	t.Cleanup(func() {
		for _, d := range l.lowerDirs() {
			if after := snapshot(t, d, true); !slices.Equal(before[d], after) {
				t.Errorf("lower %s changed:\nbefore %q\nafter  %q", d, before[d], after)
			}
		}
	})
}

// snapshot describes every object below root as its on-disk layer
// format holds it: type, mode, owner, content, link target, device
// numbers (a whiteout is "wh") and every xattr. withTimes adds inode
// numbers and times, for lowers, which nothing may touch at all.
func snapshot(t *testing.T, root string, withTimes bool) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			if !withTimes {
				return nil
			}
			rel = "/"
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		s := rel + " " + describe(t, p, &st)
		if st.Uid != 0 || st.Gid != 0 {
			s += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
		}
		if names, err := readXattrNames(atPath(p)); err == nil {
			slices.Sort(names)
			for _, n := range names {
				v, _ := getXattr(atPath(p), n)
				s += fmt.Sprintf(" [%s=%s]", n, v)
			}
		}
		if withTimes {
			s += fmt.Sprintf(" ino=%d nlink=%d mtime=%d.%d ctime=%d.%d", st.Ino, st.Nlink, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// describe is an object's type, permission bits and what it holds.
func describe(t *testing.T, p string, st *unix.Stat_t) string {
	t.Helper()
	perm := st.Mode & 07777
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("f %o %s", perm, contentDesc(data))
	case unix.S_IFDIR:
		return fmt.Sprintf("d %o", perm)
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			t.Fatal(err)
		}
		return "l -> " + target
	case unix.S_IFCHR:
		if st.Rdev == 0 {
			return "wh"
		}
		return fmt.Sprintf("c %o %d:%d", perm, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	return fmt.Sprintf("mode %o", st.Mode)
}

// contentDesc keeps short contents readable in a failure and long ones
// short.
func contentDesc(data []byte) string {
	if len(data) <= 32 {
		return fmt.Sprintf("%q", data)
	}
	return fmt.Sprintf("sha256:%x", sha256.Sum256(data))[:20]
}

// mergedView walks the union through its own read operations and
// describes every object the way snapshot does, in the union's stat (so
// with overrides applied). It fails the test where the operations
// disagree with each other (a listed name that Lookup does not find, a
// type that differs) or where a marker shows.
func mergedView(t *testing.T, u *Union) []string {
	t.Helper()
	var out []string
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := u.ReadDir(dir)
		if err != nil {
			t.Fatalf("ReadDir(%q): %v", dir, err)
		}
		for _, e := range ents {
			rel := Join(dir, e.Name)
			if IsReservedName(e.Name) {
				t.Errorf("ReadDir(%q) lists the marker %q", dir, e.Name)
			}
			o, err := u.Lookup(rel)
			if err != nil {
				t.Errorf("ReadDir(%q) lists %q, which Lookup does not find: %v", dir, e.Name, err)
				continue
			}
			if o.Stat.Mode&unix.S_IFMT == unix.S_IFCHR && o.Stat.Rdev == 0 {
				t.Errorf("%s: a whiteout device is visible", rel)
			}
			if !o.Override && e.Mode != o.Stat.Mode&unix.S_IFMT {
				t.Errorf("%s: ReadDir says type %o, Lookup %o", rel, e.Mode, o.Stat.Mode&unix.S_IFMT)
			}
			out = append(out, rel+" "+unionDescribe(t, u, rel, &o))
			if o.IsDir() {
				walk(rel)
			}
		}
	}
	walk("")
	return out
}

func unionDescribe(t *testing.T, u *Union, rel string, o *Object) string {
	t.Helper()
	st := &o.Stat
	perm := st.Mode & 07777
	var s string
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		fd, _, err := u.Open(rel, unix.O_RDONLY)
		if err != nil {
			t.Fatalf("Open(%q): %v", rel, err)
		}
		f := os.NewFile(uintptr(fd), rel)
		data, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		s = fmt.Sprintf("f %o %s", perm, contentDesc(data))
	case unix.S_IFDIR:
		s = fmt.Sprintf("d %o", perm)
	case unix.S_IFLNK:
		target, err := u.Readlink(rel)
		if err != nil {
			t.Fatal(err)
		}
		s = "l -> " + target
	case unix.S_IFCHR:
		s = fmt.Sprintf("c %o %d:%d", perm, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	default:
		s = fmt.Sprintf("mode %o", st.Mode)
	}
	if st.Uid != 0 || st.Gid != 0 {
		s += fmt.Sprintf(" %d:%d", st.Uid, st.Gid)
	}
	names, err := u.ListXattr(rel)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	for _, n := range names {
		if IsInternalXattr(n) {
			t.Errorf("%s: ListXattr shows the bookkeeping xattr %s", rel, n)
		}
		v, _ := u.GetXattr(rel, n)
		s += fmt.Sprintf(" [%s=%s]", n, v)
	}
	return s
}

// diffLines says which lines one listing has and the other lacks.
func diffLines(got, want []string) string {
	var b strings.Builder
	for _, g := range got {
		if !slices.Contains(want, g) {
			fmt.Fprintf(&b, "\n  unexpected: %s", g)
		}
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			fmt.Fprintf(&b, "\n  missing:    %s", w)
		}
	}
	return b.String()
}
