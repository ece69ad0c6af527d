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
	"time"

	"github.com/layerfs/layerfs/internal/testutil"
	"golang.org/x/sys/unix"
)

// hostDir is a scratch dir on the host outside /tmp, which an isolated run
// sees (read-only) rather than a tmpfs in its place.
func hostDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/var/tmp", "layerfs-sandbox-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestIsolatedWritablePaths(t *testing.T) {
	testutil.RequireRoot(t)
	// Under /tmp (where t.TempDir usually is, and covered by the sandbox's
	// tmpfs), nested in it, and outside /tmp.
	mnt := t.TempDir()
	inner := filepath.Join(mnt, "inner")
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	other := hostDir(t)
	script := fmt.Sprintf(`set -e
echo hello > new
mkdir sub && echo deep > sub/f
ln -s new link
echo in > inner/g
echo out > %s/h
`, quote(other))
	mustRun(t, Command{Script: script, Dir: mnt, Isolate: true, Writable: []string{inner, mnt, other}})
	for p, want := range map[string]string{
		filepath.Join(mnt, "new"):   "hello\n",
		filepath.Join(mnt, "sub/f"): "deep\n",
		filepath.Join(mnt, "link"):  "hello\n",
		filepath.Join(inner, "g"):   "in\n",
		filepath.Join(other, "h"):   "out\n",
	} {
		if got := readFile(t, p); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
}

func TestIsolatedHostIsReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	host := hostDir(t)
	keep := filepath.Join(host, "keep")
	if err := os.WriteFile(keep, []byte("original\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	probe := "layerfs-sandbox-probe-" + uniqueSleep()
	targets := []string{keep, filepath.Join(host, "new"), "/root/" + probe, "/etc/" + probe, "/var/tmp/" + probe}
	t.Cleanup(func() {
		for _, p := range targets[2:] {
			os.Remove(p)
		}
	})
	var script strings.Builder
	for _, p := range targets {
		fmt.Fprintf(&script, "if (echo changed > %s); then echo WROTE %s; fi\n", quote(p), p)
	}
	fmt.Fprintf(&script, "rm -f %s || echo RM-FAILED\n", quote(keep))
	// The sandbox's /dev/null works on its read-only mount.
	script.WriteString("echo x > /dev/null && echo DEVNULL-OK\n")
	// The kernel's settings are not the script's to change.
	script.WriteString("if (echo x > /proc/sys/kernel/domainname); then echo WROTE-PROC; fi\n")
	var out bytes.Buffer
	mustRun(t, Command{Script: script.String(), Dir: mnt, Isolate: true, Writable: []string{mnt}, Output: &out})

	got := out.String()
	for _, p := range targets {
		if want := "cannot create " + p + ": Read-only file system"; !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(got, "WROTE") {
		t.Errorf("the script wrote outside its writable paths")
	}
	if !strings.Contains(got, "RM-FAILED") || !strings.Contains(got, "DEVNULL-OK") {
		t.Errorf("want the rm refused and /dev/null writable")
	}
	if t.Failed() {
		t.Logf("output:\n%s", got)
	}
	if s := readFile(t, keep); s != "original\n" {
		t.Errorf("host file changed to %q", s)
	}
	for _, p := range targets[1:] {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s created on the host (%v)", p, err)
		}
	}
}

func TestIsolatedTmpIsPrivate(t *testing.T) {
	testutil.RequireRoot(t)
	hostTmp, err := os.MkdirTemp("/tmp", "layerfs-sandbox-host-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(hostTmp) })
	name := "layerfs-sandbox-private-" + uniqueSleep()
	t.Cleanup(func() { os.Remove("/tmp/" + name); os.Remove("/dev/shm/" + name) })
	script := fmt.Sprintf(`ls -A /tmp
echo private > /tmp/%[1]s && cat /tmp/%[1]s
cd && echo home > h && cat h
test -e %[2]s && echo HOST-TMP-VISIBLE
echo shm > /dev/shm/%[1]s && cat /dev/shm/%[1]s
`, name, quote(hostTmp))
	res := mustRun(t, Command{Script: script, Dir: "/", Isolate: true})
	// ls printed nothing: the tmpfs starts empty.
	if want := []string{"private", "home", "shm"}; !slices.Equal(res.Tail, want) {
		t.Errorf("output %q, want %q", res.Tail, want)
	}
	for _, p := range []string{"/tmp/" + name, "/tmp/h", "/dev/shm/" + name} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s written on the host (%v)", p, err)
		}
	}
}

func TestIsolatedHasNoNetwork(t *testing.T) {
	testutil.RequireRoot(t)
	bash := testutil.RequireTool(t, "bash")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	script := fmt.Sprintf(`if %s -c 'echo hi > /dev/tcp/127.0.0.1/%d'; then echo CONNECTED; else echo NO-CONNECTION; fi
tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '
`, bash, port)

	// The probe does connect without isolation: the test can fail.
	res := mustRun(t, Command{Script: script, Dir: "/"})
	if res.Tail[0] != "CONNECTED" {
		t.Fatalf("unisolated control: %q", res.Tail)
	}

	res = mustRun(t, Command{Script: script, Dir: "/", Isolate: true})
	// bash's complaint, if any, precedes the verdict; the interfaces follow.
	verdict := slices.IndexFunc(res.Tail, func(l string) bool { return l == "CONNECTED" || l == "NO-CONNECTION" })
	if verdict < 0 || res.Tail[verdict] != "NO-CONNECTION" {
		t.Errorf("reached the host's loopback from the sandbox: %q", res.Tail)
	}
	if verdict >= 0 && !slices.Equal(res.Tail[verdict+1:], []string{"lo"}) {
		t.Errorf("interfaces %q, want only lo", res.Tail[verdict+1:])
	}
}

func TestIsolatedSeesOnlyItsProcesses(t *testing.T) {
	testutil.RequireRoot(t)
	// Builtins only, so that no third process shows up. The script's pid
	// is not 2: the init's threads take pids of the namespace too.
	res := mustRun(t, Command{Script: `read -r stat < /proc/$$/stat; echo "$stat"
for d in /proc/[0-9]*; do echo "${d#/proc/}"; done`, Dir: "/", Isolate: true})
	if len(res.Tail) == 0 {
		t.Fatal("no output")
	}
	// pid (comm) state ppid ...
	pid, rest, _ := strings.Cut(res.Tail[0], " ")
	_, rest, _ = strings.Cut(rest, ") ")
	if f := strings.Fields(rest); len(f) < 2 || f[1] != "1" {
		t.Errorf("/proc/self/stat %q: want the script a child of pid 1", res.Tail[0])
	}
	want := []string{"1", pid}
	if pids := res.Tail[1:]; !slices.Equal(pids, want) {
		t.Errorf("/proc lists pids %q, want only %q", pids, want)
	}
}

func TestIsolatedWorkingDirUnderTmpStaysVisible(t *testing.T) {
	testutil.RequireRoot(t)
	// A spec's dir, with the packages its command installs, under /tmp
	// where the sandbox's tmpfs would hide it; the mount inside it.
	spec, err := os.MkdirTemp("/tmp", "layerfs-sandbox-spec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(spec) })
	testutil.Tree{T: t, Root: spec}.File("packages/hello", "hello package\n").Dir("mnt")
	mnt := filepath.Join(spec, "mnt")
	script := `cat packages/hello
if (echo x > packages/new); then echo WROTE; fi
cp packages/hello mnt/ && echo installed`
	var out bytes.Buffer
	mustRun(t, Command{Script: script, Dir: spec, Isolate: true, Writable: []string{mnt}, Output: &out})
	want := "hello package\nsh: 2: cannot create packages/new: Read-only file system\ninstalled\n"
	if out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if got := readFile(t, filepath.Join(mnt, "hello")); got != "hello package\n" {
		t.Errorf("installed %q", got)
	}
	if _, err := os.Lstat(filepath.Join(spec, "packages/new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("wrote into the working directory: %v", err)
	}
}

// A mount below a writable path (a chroot's proc, a tmpfs the caller put
// there) comes along with it, as the host has it.
func TestIsolatedMountBelowWritablePath(t *testing.T) {
	testutil.RequireRoot(t)
	dir := hostDir(t)
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "mode=755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(sub, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount the test's tmpfs: %v", err)
		}
	})
	testutil.Tree{T: t, Root: sub}.File("f", "on the tmpfs\n")
	res := mustRun(t, Command{Script: "cat sub/f && echo new > sub/g && echo wrote", Dir: dir, Isolate: true, Writable: []string{dir}})
	if want := []string{"on the tmpfs", "wrote"}; !slices.Equal(res.Tail, want) {
		t.Errorf("output %q, want %q", res.Tail, want)
	}
	if got := readFile(t, filepath.Join(sub, "g")); got != "new\n" {
		t.Errorf("sub/g = %q on the host's tmpfs", got)
	}
}

// TestIsolatedMounts attaches a detached tree (a tmpfs made with the new
// mount API, as a kernel overlayfs mount of a build is) at a path under
// /tmp: the script writes through it, the caller reads what it wrote
// through its own descriptor, and no mount is left on the host, neither
// during nor after the run.
func TestIsolatedMounts(t *testing.T) {
	testutil.RequireRoot(t)
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fsfd)
	if err := unix.FsconfigCreate(fsfd); err != nil {
		t.Fatal(err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	tree := os.NewFile(uintptr(mfd), "tmpfs")
	defer tree.Close()
	mnt := t.TempDir() // under /tmp: the sandbox's own tmpfs covers it
	script := `set -e
echo written > "$MNT/f"
grep -q " $MNT " /proc/self/mountinfo && echo attached
`
	env := append(testEnv(), "MNT="+mnt)
	res := mustRun(t, Command{Script: script, Env: env, Dir: "/", Isolate: true, Mounts: []Mount{{Path: mnt, Tree: tree}}})
	if !slices.Contains(res.Tail, "attached") {
		t.Errorf("the tree is not a mount at %s in the sandbox: %q", mnt, res.Tail)
	}
	if got := readFile(t, fmt.Sprintf("/proc/self/fd/%d/f", mfd)); got != "written\n" {
		t.Errorf("through the caller's descriptor: %q, want the script's write", got)
	}
	if _, err := os.Stat(filepath.Join(mnt, "f")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the host's %s shows the script's file (%v): the tree was attached outside the sandbox", mnt, err)
	}
	if strings.Contains(readFile(t, "/proc/self/mountinfo"), " "+mnt+" ") {
		t.Errorf("a mount is left at %s on the host", mnt)
	}
	if _, err := Run(t.Context(), Command{Script: "true", Mounts: []Mount{{Path: mnt, Tree: tree}}}); err == nil {
		t.Error("an unisolated run took a tree to attach")
	}
}

// TestYieldCPU: while a yielding command runs, every thread of the caller
// has the lowest priority and the command the normal one; afterwards the
// caller is back to normal.
func TestYieldCPU(t *testing.T) {
	testutil.RequireRoot(t)
	nices := func() map[string]bool {
		out := map[string]bool{}
		ents, _ := os.ReadDir("/proc/self/task")
		for _, e := range ents {
			if b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/stat"); err == nil {
				f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
				out[f[16]] = true // field 19 of stat: nice
			}
		}
		return out
	}
	during := make(chan map[string]bool, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		during <- nices()
	}()
	res := mustRun(t, Command{Script: "sleep 1; cut -d' ' -f19 /proc/self/stat", Isolate: true, YieldCPU: true, Dir: "/"})
	if got := <-during; len(got) != 1 || !got["19"] {
		t.Errorf("the caller's threads had nice values %v while the command ran, want 19 only", got)
	}
	if !slices.Equal(res.Tail, []string{"0"}) {
		t.Errorf("the command ran with nice %q, want 0", res.Tail)
	}
	if got := nices(); len(got) != 1 || !got["0"] {
		t.Errorf("the caller's threads have nice values %v after the command, want 0 only", got)
	}
}
