package cache

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

var treeTime = time.Date(2024, 1, 2, 3, 4, 5, 6, time.UTC)

// layerTree builds a layer dir with every kind of object, creating them
// in the given order (reversed when reverse), and gives everything one
// mtime, so that the order of creation leaves no trace.
func layerTree(t *testing.T, root string, reverse bool) {
	t.Helper()
	tr := testutil.Tree{T: t, Root: root}
	objects := []func(){
		func() { tr.File("etc/passwd", "root:x:0:0::/root:/bin/sh\n").Xattr("etc/passwd", "user.test", "v1") },
		func() { tr.File("etc/shadow", "root:*::").Chown("etc/shadow", 0, 42).Chmod("etc/shadow", 0o640) },
		func() { tr.File("bin/su", "su").Chmod("bin/su", 0o4755) },
		func() { tr.Dir("tmp").Chmod("tmp", 0o1777) },
		func() { tr.Symlink("lib", "usr/lib") },
		func() { tr.File("usr/lib/a", "shared content").Link("usr/lib/b", "usr/lib/a") },
		func() { tr.Mknod("dev/null", unix.S_IFCHR|0o666, 1, 3) },
		func() { tr.Whiteout("gone") },
		func() { tr.Mknod("run/fifo", unix.S_IFIFO|0o644, 0, 0) },
		func() { tr.Opaque("opq").File("opq/x", "x") },
		func() { tr.File("usr/share/empty", "") },
	}
	if reverse {
		slices.Reverse(objects)
	}
	for _, o := range objects {
		o()
	}
	setTimes(t, root, treeTime)
}

// setTimes gives every object under root the mtime at, deepest first (a
// child's mtime does not touch its parent's).
func setTimes(t *testing.T, root string, at time.Time) {
	t.Helper()
	var paths []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	slices.SortFunc(paths, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(at.UnixNano())}
	for _, p := range paths {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

func treeDigestOf(t *testing.T, dir string) digest.Digest {
	t.Helper()
	d, err := TreeDigest(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestTreeDigestIsStableAcrossCreationOrder(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := t.TempDir(), t.TempDir()
	layerTree(t, a, false)
	layerTree(t, b, true)
	da := treeDigestOf(t, a)
	if again := treeDigestOf(t, a); again != da {
		t.Fatalf("two runs: %s, %s", da, again)
	}
	if db := treeDigestOf(t, b); db != da {
		t.Fatalf("same tree made in another order: %s, %s", db, da)
	}
	// Hardlinks are content, not inodes: copies give the same digest.
	os.Remove(filepath.Join(b, "usr/lib/b"))
	testutil.Tree{T: t, Root: b}.File("usr/lib/b", "shared content")
	setTimes(t, b, treeTime)
	if db := treeDigestOf(t, b); db != da {
		t.Fatalf("a hardlink replaced by a copy changed the digest")
	}
}

func TestTreeDigestSeesEveryAttribute(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	layerTree(t, base, false)
	want := treeDigestOf(t, base)
	changes := map[string]func(tr testutil.Tree){
		"content (same size and mtime)": func(tr testutil.Tree) { tr.File("etc/passwd", "ROOT:x:0:0::/root:/bin/sh\n") },
		"mode":                          func(tr testutil.Tree) { tr.Chmod("etc/passwd", 0o600) },
		"setuid bit":                    func(tr testutil.Tree) { tr.Chmod("bin/su", 0o755) },
		"sticky bit":                    func(tr testutil.Tree) { tr.Chmod("tmp", 0o777) },
		"uid":                           func(tr testutil.Tree) { tr.Chown("etc/passwd", 1000, 0) },
		"gid":                           func(tr testutil.Tree) { tr.Chown("etc/shadow", 0, 0) },
		"xattr value":                   func(tr testutil.Tree) { tr.Xattr("etc/passwd", "user.test", "v2") },
		"xattr added":                   func(tr testutil.Tree) { tr.Xattr("etc/shadow", "user.test", "v1") },
		"opaque marker removed": func(tr testutil.Tree) {
			if err := unix.Lremovexattr(filepath.Join(tr.Root, "opq"), "trusted.overlay.opaque"); err != nil {
				t.Fatal(err)
			}
		},
		"symlink target": func(tr testutil.Tree) {
			os.Remove(filepath.Join(tr.Root, "lib"))
			tr.Symlink("lib", "usr/lib64")
		},
		"device number": func(tr testutil.Tree) {
			os.Remove(filepath.Join(tr.Root, "dev/null"))
			tr.Mknod("dev/null", unix.S_IFCHR|0o666, 1, 5)
		},
		"type": func(tr testutil.Tree) {
			os.Remove(filepath.Join(tr.Root, "run/fifo"))
			tr.File("run/fifo", "")
			tr.Chmod("run/fifo", 0o644)
		},
		"name": func(tr testutil.Tree) {
			os.Rename(filepath.Join(tr.Root, "etc/passwd"), filepath.Join(tr.Root, "etc/passwe"))
		},
		"removed file": func(tr testutil.Tree) { os.Remove(filepath.Join(tr.Root, "usr/share/empty")) },
		"empty dir added": func(tr testutil.Tree) {
			tr.Dir("usr/share/new")
		},
	}
	seen := map[digest.Digest]string{want: "unchanged"}
	for what, change := range changes {
		dir := t.TempDir()
		layerTree(t, dir, false)
		change(testutil.Tree{T: t, Root: dir})
		setTimes(t, dir, treeTime) // only the change itself differs
		d := treeDigestOf(t, dir)
		if other, dup := seen[d]; dup {
			t.Errorf("%s: digest %s, the same as %s", what, d, other)
		}
		seen[d] = what
	}

	// mtime, by a nanosecond.
	dir := t.TempDir()
	layerTree(t, dir, false)
	os.Chtimes(filepath.Join(dir, "etc/passwd"), treeTime, treeTime.Add(time.Nanosecond))
	if treeDigestOf(t, dir) == want {
		t.Error("an mtime one nanosecond later did not change the digest")
	}
}

func TestTreeDigestDoesNotFollowSymlinks(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "target")
	os.WriteFile(outside, []byte("one"), 0o644)
	dir := t.TempDir()
	testutil.Tree{T: t, Root: dir}.Symlink("link", outside).File("f", "f")
	before := treeDigestOf(t, dir)
	os.WriteFile(outside, []byte("two, longer"), 0o600)
	if treeDigestOf(t, dir) != before {
		t.Fatal("changing a symlink's target file changed the digest")
	}
	// A root that is a symlink is hashed as the symlink.
	root := filepath.Join(t.TempDir(), "root")
	os.Symlink(dir, root)
	if treeDigestOf(t, root) == before {
		t.Fatal("a symlinked root was followed")
	}
}

func TestTreeDigestHonoursContext(t *testing.T) {
	dir := t.TempDir()
	testutil.Tree{T: t, Root: dir}.File("a", "a")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := TreeDigest(ctx, dir); err == nil {
		t.Fatal("a cancelled context did not stop TreeDigest")
	}
}

// TestInsertRecordsTrustedXattrs: a root build's overlay markers are part
// of the recorded tree, and say so.
func TestInsertRecordsTrustedXattrs(t *testing.T) {
	testutil.RequireRoot(t)
	c := openCache(t, t.TempDir())
	if !c.trusted {
		t.Fatal("root is taken not to see trusted.* xattrs")
	}
	plain := build(t, c, testKey("plain"), "plain", nil)
	opaque := build(t, c, testKey("opaque"), "opaque", func(r string) {
		testutil.Tree{T: t, Root: r}.Opaque("etc").Whiteout("etc/gone")
	})
	if plain.Info.TreeTrusted || !opaque.Info.TreeTrusted {
		t.Fatalf("TreeTrusted: plain %v, opaque %v; want false, true", plain.Info.TreeTrusted, opaque.Info.TreeTrusted)
	}
	// A process that cannot see trusted.* does not judge the rootfs.
	c.trusted = false
	res, err := c.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		switch r.Entry.Info.Name {
		case "plain":
			if r.Err != nil {
				t.Errorf("plain: %v", r.Err)
			}
		case "opaque":
			if r.Err == nil || r.Moved != "" || !strings.Contains(r.Err.Error(), "trusted") {
				t.Errorf("opaque, unprivileged: %v, moved %q; want not checked, left", r.Err, r.Moved)
			}
		}
	}
}

// TestUnprivilegedRemovalOfReadOnlyDirs runs an entry's life as a user
// who, unlike root, is stopped by read-only dirs.
func TestUnprivilegedRemovalOfReadOnlyDirs(t *testing.T) {
	testutil.RequireRoot(t)
	base, err := os.MkdirTemp("", "layerfs-cache-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "cache.test")
	src, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(dst, src)
	src.Close()
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "cache")
	os.Mkdir(dir, 0o755)
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	h := startHelperAs(t, bin, &syscall.Credential{Uid: 65534, Gid: 65534}, "unpriv", dir)
	h.expect(t, "ok")
	h.finish(t)
}
