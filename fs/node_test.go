package fs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

// A copy-up changes what the kernel has cached for an hour (Options
// .Timeout): the daemon tells it (copiedUp, notify). A file of a lower
// hardlink group gets an inode number of its own when copied up, which
// the next stat must already show; a directory copied up is a merged
// one, whose link count the next stat must show, though the request that
// copied it up was about a child.
func TestCopyUpInvalidatesKernelCache(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	mnt, lower, upper := filepath.Join(base, "mnt"), filepath.Join(base, "lower"), filepath.Join(base, "upper")
	mkdirs(t, mnt, upper, filepath.Join(lower, "d", "sub"))
	if err := os.WriteFile(filepath.Join(lower, "a"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(lower, "a"), filepath.Join(lower, "b")); err != nil {
		t.Fatal(err)
	}
	s, err := Start(mnt, Options{Lowers: []string{lower}, Upper: upper}, Choice{Driver: DriverFUSE})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { leaveNoMount(mnt) })
	defer s.Close()
	stat := func(rel string) syscall.Stat_t {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(mnt, rel), &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if a, b := stat("a"), stat("b"); a.Ino != b.Ino || a.Nlink != 2 {
		t.Fatalf("before copy-up a is inode %d (%d links), b %d; want one inode, 2 links", a.Ino, a.Nlink, b.Ino)
	}
	if d := stat("d"); d.Nlink != 3 {
		t.Fatalf("before copy-up d has %d links, want the lower's 3", d.Nlink)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "a"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if a, b := stat("a"), stat("b"); a.Ino == b.Ino || a.Nlink != 1 {
		t.Errorf("after copy-up a is inode %d (%d links), b %d; want an inode of its own, 1 link", a.Ino, a.Nlink, b.Ino)
	}
	if err := os.WriteFile(filepath.Join(mnt, "d", "sub", "new"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if d := stat("d"); d.Nlink != 1 {
		t.Errorf("after copy-up d has %d links, want a merged directory's 1", d.Nlink)
	}
}
