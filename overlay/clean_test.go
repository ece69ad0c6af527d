package overlay

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestCleanKernelUpper: the kernel's overlayfs marks what it copies up
// with its origin, and the directories holding such copies as impure; the
// clean removes those and nothing else (whiteouts, opaque directories and
// the content's own xattrs stay).
func TestCleanKernelUpper(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	lower, upper, work, mnt := filepath.Join(base, "l"), filepath.Join(base, "u"), filepath.Join(base, "w"), filepath.Join(base, "m")
	testutil.Tree{T: t, Root: lower}.File("d/f", "a").File("d/gone", "b").File("re/old", "c")
	for _, d := range []string{upper, work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("overlay", mnt, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work+",redirect_dir=off,metacopy=off,index=off"); err != nil {
		t.Fatal(err)
	}
	mounted := true
	defer func() {
		if mounted {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	}()
	if err := os.WriteFile(filepath.Join(mnt, "d/f"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(mnt, "d/f"), "user.keep", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "d/gone")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(mnt, "re")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "re"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	mounted = false
	names := func(p string) []string {
		n, err := readXattrNames(atPath(filepath.Join(upper, p)))
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(n)
		return n
	}
	if n := names("d/f"); !slices.Contains(n, "trusted.overlay.origin") {
		t.Fatalf("the kernel left no origin on a copy-up (%q): the test shows nothing", n)
	}
	if err := CleanKernelUpper(upper); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string][]string{
		"":    nil,
		"d":   nil,
		"d/f": {"user.keep"},
		"re":  {"trusted.overlay.opaque"},
	} {
		if got := names(p); !slices.Equal(got, want) {
			t.Errorf("/%s: xattrs %q, want %q", p, got, want)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "d/gone"), &st); err != nil || !IsWhiteoutDevice(&st) {
		t.Errorf("the whiteout of d/gone: %v", err)
	}
}
