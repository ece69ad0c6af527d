package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

// A walk of a tree the kernel has seen costs the daemon nothing: the
// kernel keeps each listing (no OPENDIR, READDIR or RELEASEDIR: the
// daemon answers OPENDIR with ENOSYS where the kernel supports that) and
// each entry's attributes (no LOOKUP or GETATTR: the mount is noatime, so
// a listing served from the kernel's cache does not mark the directory's
// attributes stale). The one exception is the walk right after the
// directories were first read: the kernel marks a directory's atime stale
// after every READDIR it sends, whatever the mount's options, and asks
// for its attributes once more.
func TestMountWarmWalkSendsNoRequests(t *testing.T) {
	testenv.NeedRoot(t)
	d := mkdirs(t, t.TempDir(), "lower", "upper", "mnt")
	runScript(t, d[0], "lower", `for i in $(seq 40); do mkdir -p d$i/sub; for j in $(seq 15); do echo $i$j > d$i/f$j; done; ln -s f1 d$i/sub/link; done`)
	const dirs, entries = 1 + 40*2, 1 + 40*(2+15+1)
	logPath, daemon := mcDebugMount(t, d[0], d[1], d[2])

	// walk stats every entry of the mount and returns how many, and the
	// size of the daemon's log after it.
	walk := func() int64 {
		n := 0
		err := filepath.WalkDir(d[2], func(p string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if _, err := os.Lstat(p); err != nil {
				return err
			}
			n++
			return nil
		})
		if err != nil {
			t.Fatalf("walk of the mount: %v", err)
		}
		if n != entries {
			t.Fatalf("a walk saw %d entries, want %d", n, entries)
		}
		st, err := os.Stat(logPath)
		if err != nil {
			t.Fatal(err)
		}
		return st.Size()
	}
	first := walk()
	second := walk()
	walk()
	mcUmount(t, d[2])
	daemon.Wait()
	log, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	count := func(part []byte) map[string]int {
		c := map[string]int{}
		for _, m := range regexp.MustCompile(`rx \d+: ([A-Z_]+)`).FindAllSubmatch(part, -1) {
			c[string(m[1])]++
		}
		return c
	}
	if c := count(log[:first]); c["READDIRPLUS"]+c["READDIR"] < dirs {
		t.Fatalf("the first walk read %d directories from the daemon, want %d: the log does not hold the requests (%v)", c["READDIRPLUS"]+c["READDIR"], dirs, c)
	}
	c2, c3 := count(log[first:second]), count(log[second:])
	for _, op := range []string{"OPENDIR", "READDIR", "READDIRPLUS", "RELEASEDIR", "LOOKUP", "GETATTR"} {
		if limit := map[string]int{"GETATTR": dirs}[op]; c2[op] > limit {
			t.Errorf("the second walk sent %d %s requests, want at most %d (all requests: %v)", c2[op], op, limit, c2)
		}
		if c3[op] != 0 {
			t.Errorf("the third walk sent %d %s requests, want none (all requests: %v)", c3[op], op, c3)
		}
	}
}

// A directory read in pieces while entries come and go returns each entry
// that stayed exactly once, as POSIX asks of readdir, and as the kernel's
// overlayfs does. Through the FUSE driver each READDIR comes without an
// open directory, from a fresh listing: where it continues must not
// depend on what was removed before that point.
func TestMountReaddirWhileChanging(t *testing.T) {
	testenv.NeedRoot(t)
	for _, driver := range []string{"fuse", "kernel"} {
		t.Run(driver, func(t *testing.T) {
			d := mkdirs(t, t.TempDir(), "lower", "upper", "mnt")
			// Long names, so that the listing takes many READDIR pages.
			name := func(prefix string, i int) string {
				return fmt.Sprintf("%s-%04d-%s", prefix, i, "padding-to-make-the-entry-long-enough")
			}
			const n = 1200
			if err := os.Mkdir(filepath.Join(d[0], "dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if err := os.WriteFile(filepath.Join(d[0], "dir", name("lower", i)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			mcMountDriver(t, d[2], driver, "--lower", d[0], "--upper", d[1])
			dir := filepath.Join(d[2], "dir")
			// Some entries in the upper too: the merged listing.
			for i := 0; i < n/4; i++ {
				if err := os.WriteFile(filepath.Join(dir, name("upper", i)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			all := map[string]bool{}
			for i := 0; i < n; i++ {
				all[name("lower", i)] = true
			}
			for i := 0; i < n/4; i++ {
				all[name("upper", i)] = true
			}

			fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			seen := map[string]int{}
			var order []string
			read := func(atLeast int) bool {
				buf := make([]byte, 1024)
				for len(order) < atLeast {
					m, err := unix.Getdents(fd, buf)
					if err != nil {
						t.Fatalf("getdents: %v", err)
					}
					if m == 0 {
						return false
					}
					_, _, names := unix.ParseDirent(buf[:m], -1, nil)
					for _, nm := range names {
						seen[nm]++
						order = append(order, nm)
					}
				}
				return true
			}
			if !read(300) {
				t.Fatalf("the directory ended after %d entries", len(order))
			}
			// Remove 100 entries already read and 100 not yet read, add 100.
			removed := map[string]bool{}
			for _, nm := range order[:100] {
				removed[nm] = true
			}
			for nm := range all {
				if len(removed) == 200 {
					break
				}
				if seen[nm] == 0 {
					removed[nm] = true
				}
			}
			for nm := range removed {
				if err := os.Remove(filepath.Join(dir, nm)); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 100; i++ {
				if err := os.WriteFile(filepath.Join(dir, name("new", i)), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			read(1 << 30)

			for nm := range all {
				if removed[nm] {
					continue
				}
				if seen[nm] != 1 {
					t.Errorf("%s, which stayed, was read %d times", nm, seen[nm])
				}
			}
			for nm, c := range seen {
				if c > 1 {
					t.Errorf("%s was read %d times", nm, c)
				}
			}
		})
	}
}
