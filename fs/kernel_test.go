package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
)

// TestKernelManyLongLowers mounts 60 lowers whose paths are each longer
// than 300 bytes: 18 KB of lowerdir=, four times what the option takes
// (one page), and each path over the 255 bytes of an fsconfig string.
func TestKernelManyLongLowers(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	long := strings.Repeat("l", 250)
	var lowers []string
	for i := range 60 {
		d := filepath.Join(base, long, fmt.Sprintf("layer-%02d", i), strings.Repeat("x", 60))
		if len(d) < 300 {
			t.Fatalf("lower path of %d bytes, want 300 or more", len(d))
		}
		tr := testutil.Tree{T: t, Root: d}
		tr.File(fmt.Sprintf("own-%02d", i), "from "+fmt.Sprint(i))
		tr.File("shadowed", fmt.Sprint(i)) // the topmost (59) wins
		lowers = append(lowers, d)
	}
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	mkdirs(t, upper, work)
	s, err := Start(filepath.Join(base, "mnt"), Options{Lowers: lowers, Upper: upper, Work: work}, Choice{Driver: DriverKernel})
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 61 {
		t.Errorf("the merged root has %d entries, want 60 own files and shadowed", len(ents))
	}
	if got := readFile(t, filepath.Join(s.Root(), "shadowed")); got != "59" {
		t.Errorf("shadowed = %q, want the topmost lower's 59", got)
	}
	if got := readFile(t, filepath.Join(s.Root(), "own-00")); got != "from 0" {
		t.Errorf("own-00 = %q from the base lower", got)
	}
	if err := os.WriteFile(filepath.Join(s.Root(), "own-00"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(upper, "own-00")); got != "changed" {
		t.Errorf("upper own-00 = %q, want the write", got)
	}
	if got := readFile(t, filepath.Join(lowers[0], "own-00")); got != "from 0" {
		t.Errorf("the lower changed: %q", got)
	}
	// The kernel's bookkeeping of the copy-up is gone.
	if names := xattrNames(t, filepath.Join(upper, "own-00")); len(names) > 0 {
		t.Errorf("upper own-00 keeps xattrs %q", names)
	}
}

// TestKernelSessionIsDetached: the kernel mount is attached nowhere, so
// nothing is left mounted however the process ends, and a clone of it
// (what an install's namespace attaches) sees the same filesystem.
func TestKernelSessionIsDetached(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	lower, upper, work, mnt := filepath.Join(base, "lower"), filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "mnt")
	mkdirs(t, lower, upper, work, mnt)
	s, err := Start(mnt, Options{Lowers: []string{lower}, Upper: upper, Work: work, NoSync: true}, Choice{Driver: DriverKernel})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if info := mountTableText(t); strings.Contains(info, " "+mnt+" ") || strings.Contains(info, upper) {
		t.Errorf("the kernel session is attached in this namespace:\n%s", info)
	}
	tree, err := s.Tree()
	if err != nil {
		t.Fatal(err)
	}
	defer tree.Close()
	if err := os.WriteFile(fmt.Sprintf("/proc/self/fd/%d/through-clone", tree.Fd()), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(s.Root(), "through-clone")); err != nil {
		t.Errorf("a write through the clone is not in the session's view: %v", err)
	}
}

// TestKernelReadOnly: without an upper, two lowers are a read-only
// overlayfs and a single one (which overlayfs refuses) a read-only bind.
func TestKernelReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d lowers", n), func(t *testing.T) {
			base := t.TempDir()
			var lowers []string
			for i := range n {
				d := filepath.Join(base, fmt.Sprint("l", i))
				testutil.Tree{T: t, Root: d}.File(fmt.Sprint("f", i), "x")
				lowers = append(lowers, d)
			}
			mnt := filepath.Join(base, "mnt")
			mkdirs(t, mnt)
			if err := MountKernel(mnt, Options{Lowers: lowers}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
			for i := range n {
				if _, err := os.Stat(filepath.Join(mnt, fmt.Sprint("f", i))); err != nil {
					t.Error(err)
				}
			}
			err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0o644)
			if !errors.Is(err, syscall.EROFS) {
				t.Errorf("write to the read-only view: %v, want EROFS", err)
			}
			m, ok, err := Find(mnt)
			if err != nil || !ok || !m.Mounted || !m.Alive || !m.IsKernel() || !m.ReadOnly {
				t.Errorf("Find(%s) = %+v, %v, %v: want a live read-only kernel mount", mnt, m, ok, err)
			}
			if err := Unmount(mnt, false); err != nil {
				t.Fatal(err)
			}
			// Unmounted, it is stale: its record goes.
			if m, ok, _ := Find(mnt); !ok || m.Mounted {
				t.Errorf("after unmount: %+v, %v: want the record of a mount that is gone", m, ok)
			}
			cleared, err := ClearStale()
			if err != nil || !slices.Contains(cleared, mnt) {
				t.Errorf("ClearStale = %q, %v: want %s", cleared, err, mnt)
			}
			if _, ok, _ := Find(mnt); ok {
				t.Error("the record is still there")
			}
		})
	}
	if _, err := mountKernel(Options{}); !inputerr.Is(err) {
		t.Errorf("a mount of nothing: %v, want a bad-input error", err)
	}
}

// TestProberChoose: who gets the kernel, and why not.
func TestProberChoose(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	root := &Prober{UID: 0, Environ: []string{"PATH=/bin"}}
	c, err := root.Choose(DriverAuto, dir)
	if err != nil || c.Driver != DriverKernel {
		t.Fatalf("auto as root: %+v, %v: want the kernel", c, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the probe left %v in %s", ents, dir)
	}
	for _, tc := range []struct {
		name string
		p    *Prober
		why  string
	}{
		{"normal user", &Prober{UID: 1000, Environ: []string{}}, "rootless"},
		{"pseudo", &Prober{UID: 0, Environ: []string{"PSEUDO_PREFIX=/usr", "LD_PRELOAD=/usr/lib/pseudo/lib64/libpseudo.so"}}, "pseudo"},
		{"fakeroot", &Prober{UID: 0, Environ: []string{"FAKEROOTKEY=123"}}, "fakeroot"},
	} {
		c, err := tc.p.Choose(DriverAuto, dir)
		if err != nil || c.Driver != DriverFUSE || !strings.Contains(c.Why, tc.why) {
			t.Errorf("%s, auto: %+v, %v: want FUSE because %s", tc.name, c, err, tc.why)
		}
		if _, err := tc.p.Choose(DriverKernel, dir); !inputerr.Is(err) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s, kernel: %v: want a bad-input error saying %s", tc.name, err, tc.why)
		}
	}
	if c, _ := root.Choose(DriverFUSE, dir); c.Driver != DriverFUSE {
		t.Errorf("--driver fuse as root: %+v", c)
	}

	// overlayfs takes no upper on an overlayfs: the probe says so, and
	// auto falls back to FUSE.
	lower, upper, work, mnt := filepath.Join(dir, "l"), filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "m")
	mkdirs(t, lower, upper, work, mnt)
	if err := unix.Mount("overlay", mnt, "overlay", 0, "lowerdir="+lower+",upperdir="+upper+",workdir="+work); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	c, err = NewProber().Choose(DriverAuto, mnt)
	if err != nil || c.Driver != DriverFUSE || !strings.Contains(c.Why, "not supported as upperdir") {
		t.Errorf("an upper on overlayfs: %+v, %v: want FUSE, with the kernel's reason", c, err)
	}
	if _, err := NewProber().Choose(DriverKernel, mnt); !inputerr.Is(err) || !strings.Contains(err.Error(), "not supported as upperdir") {
		t.Errorf("--driver kernel with an upper on overlayfs: %v", err)
	}
}

func TestParseDriver(t *testing.T) {
	for in, want := range map[string]Driver{"": DriverAuto, "auto": DriverAuto, "kernel": DriverKernel, "fuse": DriverFUSE} {
		if got, err := ParseDriver(in, "--driver"); err != nil || got != want {
			t.Errorf("ParseDriver(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseDriver("overlay", "--driver"); !inputerr.Is(err) || !strings.Contains(err.Error(), `--driver "overlay"`) {
		t.Errorf("ParseDriver(overlay): %v", err)
	}
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mountTableText(t *testing.T) string {
	t.Helper()
	return readFile(t, "/proc/self/mountinfo")
}

func xattrNames(t *testing.T, p string) []string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range strings.Split(string(buf[:n]), "\x00") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
