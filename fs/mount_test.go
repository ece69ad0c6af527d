package fs

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

// A process that serves a FUSE mount runs with spare Go processors, so
// that the readers blocked on /dev/fuse keep theirs (see Mount); a
// second mount in the same process adds none.
func TestMountGivesServingProcessors(t *testing.T) {
	testutil.RequireRoot(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	base := t.TempDir()
	lower := filepath.Join(base, "lower")
	for _, mnt := range []string{"mnt1", "mnt2"} {
		mnt = filepath.Join(base, mnt)
		for _, d := range []string{lower, mnt} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		srv, err := Mount(mnt, Options{Lowers: []string{lower}})
		if err != nil {
			t.Fatalf("mount %s: %v", mnt, err)
		}
		if got := runtime.GOMAXPROCS(0); got != minServeProcs {
			t.Errorf("after mounting %s GOMAXPROCS is %d, want %d", mnt, got, minServeProcs)
		}
		if err := srv.Unmount(); err != nil {
			t.Fatal(err)
		}
	}
}
