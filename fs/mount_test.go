package fs

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

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

// What runs on the outsider thread allocates nothing (see outside): a
// garbage collection it ended there would kill the process.
func TestOpenAndPollAllocatesNothing(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	path, err := unix.BytePtrFromString(p)
	if err != nil {
		t.Fatal(err)
	}
	fds := []unix.PollFd{{Events: unix.POLLIN}}
	if err := openAndPoll(path, fds); err != nil {
		t.Fatalf("openAndPoll: %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { openAndPoll(path, fds) }); n != 0 {
		t.Errorf("openAndPoll allocates %v times a call, want none", n)
	}
	missing, _ := unix.BytePtrFromString(p + ".missing")
	if err := openAndPoll(missing, fds); err != unix.ENOENT {
		t.Errorf("openAndPoll of a missing file: %v, want ENOENT", err)
	}
	if n := testing.AllocsPerRun(100, func() { openAndPoll(missing, fds) }); n != 0 {
		t.Errorf("openAndPoll of a missing file allocates %v times a call, want none", n)
	}
}
