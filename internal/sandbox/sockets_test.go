package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

// listenUnix listens on addr, a path or an abstract name ("@name"), and
// accepts until the test ends.
func listenUnix(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("unix", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() }) // also removes the socket file
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// runDir is a scratch dir under the host's /run, where daemons keep their
// sockets.
func runDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/run", "layerfs-sandbox-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// A connect(2) to a socket needs no write access: a read-only tree alone
// would let a postinst's `systemctl restart` reach the host's systemd.
func TestIsolatedCannotReachHostSockets(t *testing.T) {
	testutil.RequireRoot(t)
	helper := helperBinary(t)
	for _, tc := range []struct {
		name string
		// addr returns the address to listen on and the one to connect to.
		addr func(t *testing.T) (listen, connect string)
	}{
		{"under /run", func(t *testing.T) (string, string) {
			p := filepath.Join(runDir(t), "sock")
			return p, p
		}},
		{"elsewhere", func(t *testing.T) (string, string) {
			p := filepath.Join(hostDir(t), "sock")
			return p, p
		}},
		{"bound through a symlink", func(t *testing.T) (string, string) {
			d := hostDir(t)
			testutil.Tree{T: t, Root: d}.Dir("real").Symlink("link", "real")
			return filepath.Join(d, "link/sock"), filepath.Join(d, "real/sock")
		}},
		// Per network namespace: the sandbox's own one has none of them.
		{"abstract", func(t *testing.T) (string, string) {
			a := "@layerfs-sandbox-test-" + uniqueSleep()
			return a, a
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen, addr := tc.addr(t)
			listenUnix(t, listen)
			script := helperEnv + "=connect " + quote(helper) + " " + quote(addr)

			// The probe does connect without isolation: the test can fail.
			res := mustRun(t, Command{Script: script, Dir: "/"})
			if want := []string{"CONNECTED " + addr}; !slices.Equal(res.Tail, want) {
				t.Fatalf("unisolated control: %q, want %q", res.Tail, want)
			}

			res = mustRun(t, Command{Script: script, Dir: "/", Isolate: true})
			if len(res.Tail) != 1 || !strings.HasPrefix(res.Tail[0], "FAILED "+addr+": ") {
				t.Errorf("the sandbox reached the host's socket %s: %q", addr, res.Tail)
			}
		})
	}
}

// The writable paths are the script's: a socket in one is left as it is,
// not covered with a mount the script could not remove.
func TestIsolatedLeavesSocketsInWritablePaths(t *testing.T) {
	testutil.RequireRoot(t)
	dir := hostDir(t)
	listenUnix(t, filepath.Join(dir, "sock"))
	res := mustRun(t, Command{Script: "test -S sock && rm sock && echo removed", Dir: dir, Isolate: true, Writable: []string{dir}})
	if want := []string{"removed"}; !slices.Equal(res.Tail, want) {
		t.Errorf("output %q, want %q", res.Tail, want)
	}
}

func TestIsolatedRunIsPrivate(t *testing.T) {
	testutil.RequireRoot(t)
	host := runDir(t)
	testutil.Tree{T: t, Root: host}.File("f", "host\n")
	name := "layerfs-sandbox-private-" + uniqueSleep()
	t.Cleanup(func() { os.Remove("/run/" + name) })
	script := fmt.Sprintf(`ls -A /run
test -e %[1]s && echo HOST-RUN-VISIBLE
echo private > /run/%[2]s && cat /run/%[2]s
stat -c %%A /run /run/lock
`, quote(host), name)
	res := mustRun(t, Command{Script: script, Dir: "/", Isolate: true})
	// Debian's /var/lock is a symlink to /run/lock: it is there, and
	// writable by all as on the host.
	if want := []string{"lock", "private", "drwxr-xr-x", "drwxrwxrwt"}; !slices.Equal(res.Tail, want) {
		t.Errorf("output %q, want %q", res.Tail, want)
	}
	if _, err := os.Lstat("/run/" + name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run/%s written on the host (%v)", name, err)
	}
	if fi, err := os.Lstat("/var/run"); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		// The usual symlink leads to the private /run.
		res := mustRun(t, Command{Script: "ls -A /var/run/", Dir: "/", Isolate: true})
		if want := []string{"lock"}; !slices.Equal(res.Tail, want) {
			t.Errorf("/var/run lists %q, want %q", res.Tail, want)
		}
	}
}

// Writable paths and the working directory under /run stay visible above
// its tmpfs, as they do under /tmp.
func TestIsolatedPathsUnderRunStayVisible(t *testing.T) {
	testutil.RequireRoot(t)
	spec := runDir(t)
	testutil.Tree{T: t, Root: spec}.File("packages/hello", "hello package\n").Dir("mnt")
	mnt := filepath.Join(spec, "mnt")
	var out bytes.Buffer
	mustRun(t, Command{Script: `cat packages/hello
if (echo x > packages/new); then echo WROTE; fi
cp packages/hello mnt/ && echo installed`, Dir: spec, Isolate: true, Writable: []string{mnt}, Output: &out})
	want := "hello package\nsh: 2: cannot create packages/new: Read-only file system\ninstalled\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if got := readFile(t, filepath.Join(mnt, "hello")); got != "hello package\n" {
		t.Errorf("installed %q", got)
	}
}

func TestParseUnixSockets(t *testing.T) {
	table := `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 17716 /run/systemd/private
0000000000000000: 00000002 00000000 00010000 0001 01  1234 /var/lib/with space/s.sock
0000000000000000: 00000002 00000000 00010000 0001 01 98765 @/tmp/.X11-unix/X0
0000000000000000: 00000003 00000000 00000000 0001 03 45678
0000000000000000: 00000002 00000000 00000000 0002 01 23456 /run/systemd/journal/socket
0000000000000000: 00000002 00000000 00010000 0001 01 23457 relative.sock
0000000000000000: 00000002 00000000 00010000 0001 01 17717 /run/systemd/private
`
	got := parseUnixSockets(table)
	want := []string{"/run/systemd/private", "/var/lib/with space/s.sock", "/run/systemd/journal/socket"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
