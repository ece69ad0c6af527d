package overlay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

func newUnion(t *testing.T, lower testutil.Tree) (*Union, string) {
	t.Helper()
	base := t.TempDir()
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	os.Mkdir(upper, 0o755)
	os.Mkdir(work, 0o700)
	u, err := NewUnion(UnionOptions{Lowers: []string{lower.Root}, Upper: upper, Work: work})
	if err != nil {
		t.Fatal(err)
	}
	return u, upper
}

func lstat(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// Copy-up keeps owner, mode, xattrs and times, and the parent's times.
func TestCopyUpKeepsMetadata(t *testing.T) {
	testutil.RequireRoot(t)
	lower := tree(t).File("d/f", "data").Chown("d/f", 7, 8).Chmod("d/f", 0o4750).Xattr("d/f", "user.k", "v").
		Xattr("d/f", "security.capability", "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00").Chmod("d", 0o710)
	past := time.Unix(1000000000, 0)
	os.Chtimes(filepath.Join(lower.Root, "d/f"), past, past)
	os.Chtimes(filepath.Join(lower.Root, "d"), past, past)
	u, upper := newUnion(t, lower)
	if _, err := u.CopyUp("d/f"); err != nil {
		t.Fatal(err)
	}
	st := lstat(t, filepath.Join(upper, "d/f"))
	if st.Uid != 7 || st.Gid != 8 || st.Mode&07777 != 0o4750 || st.Mtim.Sec != past.Unix() {
		t.Errorf("copied file: %d:%d %o mtime %d", st.Uid, st.Gid, st.Mode&07777, st.Mtim.Sec)
	}
	if v, err := getXattr(atPath(filepath.Join(upper, "d/f")), "security.capability"); err != nil || len(v) != 20 {
		t.Errorf("file capability lost on copy-up: %q %v", v, err)
	}
	if v, _ := getXattr(atPath(filepath.Join(upper, "d/f")), "user.k"); v != "v" {
		t.Errorf("user xattr: %q", v)
	}
	dst := lstat(t, filepath.Join(upper, "d"))
	if dst.Mode&07777 != 0o710 || dst.Mtim.Sec != past.Unix() {
		t.Errorf("copied parent: %o mtime %d; a copy-up must not change the parent", dst.Mode&07777, dst.Mtim.Sec)
	}
	if data, _ := os.ReadFile(filepath.Join(lower.Root, "d/f")); string(data) != "data" {
		t.Errorf("the lower changed")
	}
}

// Deleting a lower name leaves a kernel-format whiteout; re-creating a
// deleted directory makes it opaque; a pure-upper name leaves nothing.
func TestWhiteoutsAndOpaqueDirs(t *testing.T) {
	testutil.RequireRoot(t)
	lower := tree(t).File("f", "x").File("d/old", "o")
	u, upper := newUnion(t, lower)
	if err := u.Unlink("f"); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(upper, "f")); !IsWhiteoutDevice(&st) {
		t.Errorf("upper/f is not a 0:0 whiteout: mode %o rdev %d", st.Mode, st.Rdev)
	}
	if err := u.Rmdir("d"); err != unix.ENOTEMPTY {
		t.Errorf("rmdir of a dir with lower children: %v, want ENOTEMPTY", err)
	}
	if err := u.Unlink("d/old"); err != nil {
		t.Fatal(err)
	}
	if err := u.Rmdir("d"); err != nil {
		t.Fatal(err)
	}
	if _, err := u.Mkdir("d", 0o755, Owner{}); err != nil {
		t.Fatal(err)
	}
	if v, err := getXattr(atPath(filepath.Join(upper, "d")), "trusted.overlay.opaque"); err != nil || v != "y" {
		t.Errorf("re-created dir is not opaque: %q %v", v, err)
	}
	ents, err := u.ReadDir("d")
	if err != nil || len(ents) != 0 {
		t.Errorf("re-created dir lists %v (%v): the lower's old child shows through", ents, err)
	}
	fd, _, err := u.Create("new", unix.O_WRONLY, 0o644, Owner{})
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := u.Unlink("new"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(upper, "new")); !os.IsNotExist(err) {
		t.Errorf("a pure-upper file left %v behind", err)
	}
}

// A directory with lower contents cannot be renamed (EXDEV, as the kernel
// without redirect_dir); a pure-upper one renamed over a lower one becomes
// opaque.
func TestRenameDirectories(t *testing.T) {
	testutil.RequireRoot(t)
	lower := tree(t).File("lowerdir/x", "x").Dir("target")
	u, upper := newUnion(t, lower)
	if err := u.Rename("lowerdir", "moved", 0); err != unix.EXDEV {
		t.Errorf("rename of a lower dir: %v, want EXDEV", err)
	}
	if _, err := u.Mkdir("new.dpkg-new", 0o755, Owner{}); err != nil {
		t.Fatal(err)
	}
	if err := u.Rename("new.dpkg-new", "target", 0); err != nil {
		t.Fatal(err)
	}
	if v, err := getXattr(atPath(filepath.Join(upper, "target")), "trusted.overlay.opaque"); err != nil || v != "y" {
		t.Errorf("a dir renamed over a lower dir must be opaque: %q %v", v, err)
	}
	if err := u.Rename("lowerdir/x", "lowerdir/y", unix.RENAME_NOREPLACE); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, filepath.Join(upper, "lowerdir/x")); !IsWhiteoutDevice(&st) {
		t.Errorf("renaming a lower file away must leave a whiteout")
	}
}

// Removing an xattr the object lacks is ENODATA and copies nothing up.
func TestRemoveMissingXattrDoesNotCopyUp(t *testing.T) {
	testutil.RequireRoot(t)
	lower := tree(t).File("f", "x")
	u, upper := newUnion(t, lower)
	if err := u.RemoveXattr("f", "user.none"); err != unix.ENODATA {
		t.Errorf("got %v, want ENODATA", err)
	}
	if _, err := os.Lstat(filepath.Join(upper, "f")); !os.IsNotExist(err) {
		t.Errorf("a failed removexattr copied the file up")
	}
}

// EntriesGen changes with every operation that adds, removes or renames
// an entry, and with nothing else: a listing made under one value stays
// the directory's listing while it holds.
func TestEntriesGen(t *testing.T) {
	testutil.RequireRoot(t)
	u, _ := newUnion(t, tree(t).File("d/f", "data").File("d/g", "more"))
	defer u.Close()
	step := func(what string, changes bool, op func() error) {
		t.Helper()
		before := u.EntriesGen()
		if err := op(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := u.EntriesGen() != before; got != changes {
			t.Errorf("%s: EntriesGen changed %v, want %v", what, got, changes)
		}
	}
	mode := uint32(0o600)
	step("create", true, func() error {
		fd, _, err := u.Create("d/new", unix.O_WRONLY, 0o644, Owner{})
		unix.Close(fd)
		return err
	})
	step("mkdir", true, func() error { _, err := u.Mkdir("d/sub", 0o755, Owner{}); return err })
	step("symlink", true, func() error { _, err := u.Symlink("f", "d/ln", Owner{}); return err })
	step("link", true, func() error { _, err := u.Link("d/new", "d/hard"); return err })
	step("rename", true, func() error { return u.Rename("d/hard", "d/hard2", 0) })
	step("unlink of a lower file", true, func() error { return u.Unlink("d/f") })
	step("rmdir", true, func() error { return u.Rmdir("d/sub") })
	step("chmod of a lower file (a copy-up)", false, func() error { _, err := u.Setattr("d/g", Attr{Mode: &mode}); return err })
	step("xattr", false, func() error { return u.SetXattr("d/g", "user.k", []byte("v"), 0) })
	step("lookup and listing", false, func() error {
		if _, err := u.Lookup("d/g"); err != nil {
			return err
		}
		_, err := u.ReadDir("d")
		return err
	})
}

// A union that cannot be opened is an error naming the dir, with every
// descriptor opened so far closed (NewUnion closed a nil union once).
func TestNewUnionRefusesMissingDirs(t *testing.T) {
	base := t.TempDir()
	lower, upper := filepath.Join(base, "lower"), filepath.Join(base, "upper")
	os.Mkdir(lower, 0o755)
	os.Mkdir(upper, 0o755)
	missing := filepath.Join(base, "missing")
	for _, o := range []UnionOptions{
		{Lowers: []string{lower, missing}},
		{Lowers: []string{lower}, Upper: upper, Work: missing},
	} {
		u, err := NewUnion(o)
		if err == nil || u != nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("NewUnion(%+v) = %v, %v; want an error naming %s", o, u, err, missing)
		}
	}
}
