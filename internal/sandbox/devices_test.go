package sandbox

import (
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestIsolatedDevIsMinimal(t *testing.T) {
	testutil.RequireRoot(t)
	script := `ls -A /dev | tr '\n' ' '; echo
echo x > /dev/null && echo null
head -c 4 /dev/zero | od -An -tx1 | tr -d ' '
head -c 16 /dev/urandom | wc -c
head -c 16 /dev/random | wc -c
if (echo x > /dev/full) 2>/dev/null; then echo WROTE-FULL; else echo full; fi
echo stdout > /dev/stdout
echo fd > /dev/fd/1
test -c /dev/tty && echo tty
exec 3<>/dev/ptmx; ls /dev/pts | tr '\n' ' '; echo; exec 3>&-
if (echo x > /dev/new) 2>/dev/null; then echo WROTE-DEV; else echo dev read-only; fi
if touch /dev/null 2>/dev/null; then echo TOUCHED-NULL; else echo null read-only; fi
mknod /dev/shm/null c 1 3 && if (echo x > /dev/shm/null) 2>/dev/null; then echo SHM-NODE-OPENED; else echo shm nodev; fi
`
	res := mustRun(t, Command{Script: script, Dir: "/", Isolate: true})
	want := []string{
		"fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ",
		"null", "00000000", "16", "16", "full", "stdout", "fd", "tty",
		// A private devpts: its first pty is 0, whatever the host has open.
		"0 ptmx ",
		"dev read-only", "null read-only", "shm nodev",
	}
	if !slices.Equal(res.Tail, want) {
		t.Errorf("output:\n%s\nwant:\n%s", strings.Join(res.Tail, "\n"), strings.Join(want, "\n"))
	}
}

// hostBlockDevice returns a block device node of the host's /dev that
// this process can open (a device cgroup or an LSM may refuse some, even
// to root): the one the root filesystem is on if it can, else the first.
func hostBlockDevice(t *testing.T) (path string, rdev uint64) {
	t.Helper()
	var root unix.Stat_t
	if err := unix.Stat("/", &root); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/dev")
	if err != nil {
		t.Fatal(err)
	}
	type dev struct {
		path string
		rdev uint64
	}
	var devs []dev
	for _, e := range ents {
		// Not optical drives: opening one may move its tray.
		if e.Type()&iofs.ModeDevice == 0 || e.Type()&iofs.ModeCharDevice != 0 || strings.HasPrefix(e.Name(), "sr") {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat("/dev/"+e.Name(), &st); err != nil {
			continue
		}
		d := dev{"/dev/" + e.Name(), st.Rdev}
		if st.Rdev == root.Dev {
			devs = slices.Insert(devs, 0, d)
		} else {
			devs = append(devs, d)
		}
	}
	for _, d := range devs {
		// Read-only and closed at once: no harm to the device.
		if f, err := os.Open(d.path); err == nil {
			f.Close()
			return d.path, d.rdev
		}
	}
	return "", 0
}

// A read-only mount still opens the devices on it: the sandbox's tree is
// nodev, except its own /dev, which holds no disk.
func TestIsolatedHostDevicesCannotBeOpened(t *testing.T) {
	testutil.RequireRoot(t)
	host := hostDir(t)
	// Device nodes elsewhere on the host, as a chroot's /dev has them.
	tree := testutil.Tree{T: t, Root: host}.Mknod("null", unix.S_IFCHR|0o666, 1, 3)
	onTree := []string{filepath.Join(host, "null")}
	var inDev []string
	if blk, rdev := hostBlockDevice(t); blk != "" {
		tree.Mknod("disk", unix.S_IFBLK|0o600, unix.Major(rdev), unix.Minor(rdev))
		onTree = append(onTree, filepath.Join(host, "disk"))
		inDev = append(inDev, blk)
	} else {
		t.Log("no block device in /dev that opens: probing character devices only")
	}
	if _, err := os.Stat("/dev/loop-control"); err == nil {
		inDev = append(inDev, "/dev/loop-control")
	}
	// Opened for reading only, which harms no device.
	var script strings.Builder
	for _, p := range append(slices.Clone(onTree), inDev...) {
		fmt.Fprintf(&script, "if (: < %[1]s); then echo OPENED %[1]s; fi\n", quote(p))
	}

	// The probes do open the devices without isolation: the test can fail.
	res := mustRun(t, Command{Script: script.String(), Dir: "/"})
	var want []string
	for _, p := range append(slices.Clone(onTree), inDev...) {
		want = append(want, "OPENED "+p)
	}
	if !slices.Equal(res.Tail, want) {
		t.Fatalf("unisolated control: %q, want %q", res.Tail, want)
	}

	res = mustRun(t, Command{Script: script.String(), Dir: "/", Isolate: true})
	out := strings.Join(res.Tail, "\n")
	if strings.Contains(out, "OPENED") {
		t.Errorf("the sandbox opened a host device:\n%s", out)
	}
	for _, p := range onTree {
		if want := p + ": Permission denied"; !strings.Contains(out, want) {
			t.Errorf("output lacks %q (nodev)", want)
		}
	}
	for _, p := range inDev {
		if want := p + ": No such file"; !strings.Contains(out, want) {
			t.Errorf("output lacks %q (not in the sandbox's /dev)", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

// The writable paths are not nodev: a package manager (debootstrap) makes
// the image's /dev/null there with mknod and then uses it in a chroot.
func TestIsolatedWritableKeepsDeviceNodes(t *testing.T) {
	testutil.RequireRoot(t)
	dir := hostDir(t)
	res := mustRun(t, Command{Script: `mknod null c 1 3 && echo created
if (echo x > null); then echo opened; fi`, Dir: dir, Isolate: true, Writable: []string{dir}})
	want := []string{"created", "opened"}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Flags&unix.ST_NODEV != 0 {
		want = want[:1] // the host's own mount forbids it
	}
	if !slices.Equal(res.Tail, want) {
		t.Errorf("output %q, want %q", res.Tail, want)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "null"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 1 || unix.Minor(st.Rdev) != 3 {
		t.Errorf("the node on the host: mode %o rdev %d:%d", st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
}
