package fs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

// A dir a live mount uses, as its upper or a lower or above one of them,
// is in use (a prune must spare it); a sibling is not, and nothing is
// once the mount is gone.
func TestInUse(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	entry := filepath.Join(base, "cache", "entry")
	lower, upper, work, mnt := filepath.Join(entry, "rootfs"), filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "mnt")
	other := filepath.Join(base, "cache", "other")
	for _, d := range []string{lower, upper, work, mnt, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s, err := Start(mnt, Options{Lowers: []string{lower}, Upper: upper, Work: work}, Choice{Driver: DriverFUSE})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			s.Close()
		}
	}()
	inUse, err := InUse()
	if err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]bool{entry: true, lower: true, upper: true, other: false, filepath.Join(base, "cache", "ent"): false} {
		if got := inUse(dir); got != want {
			t.Errorf("in use %s: %v, want %v", dir, got, want)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if inUse, err = InUse(); err != nil {
		t.Fatal(err)
	}
	if inUse(entry) {
		t.Errorf("%s in use after the mount ended", entry)
	}
}
