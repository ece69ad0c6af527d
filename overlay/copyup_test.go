package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// pastTimes are the times lower objects get, with a distinct nanosecond
// part so that a copy-up that rounds them shows.
var pastTimes = []unix.Timespec{{Sec: 1000000000, Nsec: 5}, {Sec: 1000000000, Nsec: 7}}

func setTimes(t *testing.T, p string) {
	t.Helper()
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, pastTimes, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

// withMtimes adds each object's mtime to an upper snapshot.
func withMtimes(t *testing.T, root string, lines []string) []string {
	t.Helper()
	var out []string
	for _, s := range lines {
		rel, _, _ := strings.Cut(s, " ")
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, rel), &st); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s mtime=%d.%d", s, st.Mtim.Sec, st.Mtim.Nsec))
	}
	return out
}

// Copying up a file deep in lower-only dirs creates each parent with its
// own lower's owner, mode, xattrs and times, none of them opaque (their
// lower contents must still show), and the file with all of its
// metadata, from the topmost lower that has it.
func TestCopyUpParentsAndFile(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 2)
	l.lowers[0].File("a/b/c/f", "base").File("a/b/c/sib", "s").File("a/other", "o")
	l.lowers[1].File("a/b/c/f", "top data").
		Chown("a", 3, 4).Chmod("a", 0o750).Xattr("a", "user.a", "1").
		Chown("a/b", 5, 6).Chmod("a/b", 0o2711).Xattr("a/b", "trusted.b", "2").
		Chmod("a/b/c", 0o1777).
		Chown("a/b/c/f", 7, 8).Chmod("a/b/c/f", 0o6751).Xattr("a/b/c/f", "user.f", "3").Xattr("a/b/c/f", "trusted.f", "4")
	for _, p := range []string{"a/b/c/f", "a/b/c", "a/b", "a"} {
		setTimes(t, filepath.Join(l.lowers[1].Root, p))
	}
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	before := mergedView(t, u)
	o, err := u.CopyUp("a/b/c/f")
	if err != nil {
		t.Fatal(err)
	}
	if !o.InUpper() || !o.InLower {
		t.Errorf("CopyUp returned layer %d InLower %v, want the upper's object, in the lowers too", o.Layer, o.InLower)
	}
	if got := mergedView(t, u); !slices.Equal(got, before) {
		t.Errorf("a copy-up changed the merged view: %s", diffLines(got, before))
	}
	want := []string{
		"a d 750 3:4 [user.a=1] mtime=1000000000.7",
		"a/b d 2711 5:6 [trusted.b=2] mtime=1000000000.7",
		"a/b/c d 1777 mtime=1000000000.7",
		`a/b/c/f f 6751 "top data" 7:8 [trusted.f=4] [user.f=3] mtime=1000000000.7`,
	}
	if got := withMtimes(t, l.upper.Root, snapshot(t, l.upper.Root, false)); !slices.Equal(got, want) {
		t.Errorf("upper after the copy-up: %s", diffLines(got, want))
	}
	if ents, _ := os.ReadDir(l.work); len(ents) != 0 {
		t.Errorf("the workdir keeps %v", ents)
	}
}

// Copying up a directory copies the directory alone: its children stay
// served by the lowers, and it is a merged directory now.
func TestCopyUpDir(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].File("d/x", "X").File("d/sub/y", "Y").Chown("d", 1, 2).Chmod("d", 0o705).Xattr("d", "user.k", "v")
	setTimes(t, filepath.Join(l.lowers[0].Root, "d"))
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	before := mergedView(t, u)
	if _, err := u.CopyUp("d"); err != nil {
		t.Fatal(err)
	}
	want := []string{"d d 705 1:2 [user.k=v] mtime=1000000000.7"}
	if got := withMtimes(t, l.upper.Root, snapshot(t, l.upper.Root, false)); !slices.Equal(got, want) {
		t.Errorf("upper: %s", diffLines(got, want))
	}
	if got := mergedView(t, u); !slices.Equal(got, before) {
		t.Errorf("merged view: %s", diffLines(got, before))
	}
	o, err := u.Lookup("d")
	if err != nil || !o.InUpper() || !o.Merged {
		t.Errorf("Lookup(d) after its copy-up: layer %d merged %v %v; want the upper's, merged", o.Layer, o.Merged, err)
	}
}

// A symlink is copied up as a symlink (never followed), with its owner,
// times and the xattrs Linux allows on one.
func TestCopyUpSymlink(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].File("target", "T").Symlink("d/s", "../target").Chown("d/s", 5, 6).Xattr("d/s", "trusted.k", "v")
	setTimes(t, filepath.Join(l.lowers[0].Root, "d/s"))
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	if _, err := u.CopyUp("d/s"); err != nil {
		t.Fatal(err)
	}
	want := []string{"d d 755 mtime=", "d/s l -> ../target 5:6 [trusted.k=v] mtime=1000000000.7"}
	got := withMtimes(t, l.upper.Root, snapshot(t, l.upper.Root, false))
	if len(got) != 2 || !strings.HasPrefix(got[0], want[0]) || got[1] != want[1] {
		t.Errorf("upper: %q, want %q", got, want)
	}
	if target, err := u.Readlink("d/s"); err != nil || target != "../target" {
		t.Errorf("Readlink after the copy-up: %q %v", target, err)
	}
}

// Devices and fifos are copied up with mknod: type, numbers, owner and
// mode.
func TestCopyUpSpecialFiles(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].Mknod("dev/null", unix.S_IFCHR|0o666, 1, 3).Mknod("dev/sda", unix.S_IFBLK|0o640, 8, 0).Chown("dev/sda", 0, 6).
		Mknod("run/fifo", unix.S_IFIFO|0o620, 0, 0)
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	for _, p := range []string{"dev/null", "dev/sda", "run/fifo"} {
		if _, err := u.CopyUp(p); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"dev d 755", "dev/null c 666 1:3", "dev/sda mode 60640 0:6", "run d 755", "run/fifo mode 10620"}
	if got := snapshot(t, l.upper.Root, false); !slices.Equal(got, want) {
		t.Errorf("upper: %s", diffLines(got, want))
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(l.upper.Root, "dev/sda"), &st); err != nil || st.Rdev != unix.Mkdev(8, 0) {
		t.Errorf("dev/sda copied up as %d:%d (%v), want 8:0", unix.Major(st.Rdev), unix.Minor(st.Rdev), err)
	}
}

// A sparse file stays sparse: a copy-up of a mostly empty image does not
// write its holes out.
func TestCopyUpSparseFile(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	p := filepath.Join(l.lowers[0].Root, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("tail"), 16<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	lst := lstatPath(t, p)
	if lst.Blocks*512 >= lst.Size {
		testutil.Unavailable(t, "the test's filesystem keeps no holes")
	}
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	if _, err := u.CopyUp("sparse"); err != nil {
		t.Fatal(err)
	}
	up := filepath.Join(l.upper.Root, "sparse")
	st := lstatPath(t, up)
	if st.Size != lst.Size || st.Blocks > lst.Blocks+16 {
		t.Errorf("copy: size %d, %d blocks; the lower: size %d, %d blocks", st.Size, st.Blocks, lst.Size, lst.Blocks)
	}
	got, _ := os.ReadFile(up)
	want, _ := os.ReadFile(p)
	if string(got) != string(want) {
		t.Errorf("the copy's content differs from the lower's")
	}
}

func lstatPath(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// Open copies up only for writing; O_TRUNC copies the metadata without
// the data it would throw away; a lower hardlink's other names keep the
// lower's data (the link is broken, as on overlayfs without index=on).
func TestCopyUpOnOpen(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].File("ro", "R").File("rw", "0123456789").File("trunc", "T").Chown("trunc", 4, 5).Chmod("trunc", 0o604).
		File("a", "linked").Link("b", "a")
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	fd, o, err := u.Open("ro", unix.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if o.InUpper() {
		t.Errorf("a read-only open copied up")
	}
	fd, _, err = u.Open("rw", unix.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	unix.Pwrite(fd, []byte("AB"), 3)
	unix.Close(fd)
	fd, _, err = u.Open("trunc", unix.O_WRONLY|unix.O_TRUNC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	fd, _, err = u.Open("a", unix.O_WRONLY|unix.O_TRUNC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(fd, []byte("new"))
	unix.Close(fd)
	want := []string{`a f 644 "new"`, `b f 644 "linked"`, `ro f 644 "R"`, `rw f 644 "012AB56789"`, `trunc f 604 "" 4:5`}
	if got := mergedView(t, u); !slices.Equal(got, want) {
		t.Errorf("merged view: %s", diffLines(got, want))
	}
	want = []string{`a f 644 "new"`, `rw f 644 "012AB56789"`, `trunc f 604 "" 4:5`}
	if got := snapshot(t, l.upper.Root, false); !slices.Equal(got, want) {
		t.Errorf("upper: %s", diffLines(got, want))
	}
}

// setuid and setgid survive a copy-up (owner first, then mode: a chown
// after the chmod would clear them), and are cleared by a chown of a
// non-directory as the kernel clears them, unless the same change sets
// the mode; a directory's setgid stays. Rootless, the union applies the
// same rule to the owner it records.
func TestCopyUpSetuid(t *testing.T) {
	testutil.RequireRoot(t)
	for _, rootless := range []bool{false, true} {
		t.Run(fmt.Sprintf("rootless=%v", rootless), func(t *testing.T) {
			l := newLayers(t, 1)
			l.lowers[0].File("kept", "").Chmod("kept", 0o6755).
				File("chowned", "").Chmod("chowned", 0o6755).
				File("chowned-gnox", "").Chmod("chowned-gnox", 0o6745).
				File("chowned+mode", "").Chmod("chowned+mode", 0o6755).
				Dir("dir").Chmod("dir", 0o2775)
			l.lowersUntouched(t)
			u := l.open(t, UnionOptions{Rootless: rootless})
			uid, mode := uint32(9), uint32(0o4711)
			if _, err := u.CopyUp("kept"); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"chowned", "chowned-gnox", "dir"} {
				if _, err := u.Setattr(p, Attr{UID: &uid}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := u.Setattr("chowned+mode", Attr{UID: &uid, Mode: &mode}); err != nil {
				t.Fatal(err)
			}
			want := map[string]uint32{
				"kept":    0o6755,
				"chowned": 0o755,
				// setgid without group execute is mandatory locking's mark,
				// not a privilege: it stays.
				"chowned-gnox": 0o2745,
				"chowned+mode": 0o4711,
				"dir":          0o2775,
			}
			for p, m := range want {
				o, err := u.Lookup(p)
				if err != nil {
					t.Fatal(err)
				}
				if !o.InUpper() || o.Stat.Mode&07777 != m {
					t.Errorf("%s: layer %d mode %04o, want the upper's, %04o", p, o.Layer, o.Stat.Mode&07777, m)
				}
				wantUID := uid
				if p == "kept" {
					wantUID = 0
				}
				if o.Stat.Uid != wantUID {
					t.Errorf("%s: uid %d, want %d", p, o.Stat.Uid, wantUID)
				}
			}
		})
	}
}
