package commit

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

// The Yocto merged-usr layer: the base has real /bin, /sbin and /lib, the
// top layer moves them into /usr and leaves symlinks. The layer must hold
// the symlinks alone (no whiteouts under them), and the image must run.
func TestMergedUsrRunsInPodman(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"podman", "skopeo", "runc"} {
		testenv.NeedTool(t, tool)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Unavailable(t, "busybox-static is not installed: %v", err)
	}
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	sh(t, tmp, `
		mkdir -p base/bin base/sbin base/lib base/usr/bin base/etc
		cp /bin/busybox base/bin/busybox
		for a in sh echo ls cat; do ln -s busybox base/bin/$a; done
		echo init > base/sbin/init
		echo lib > base/lib/libfake.so
		echo keep > base/usr/bin/already-there`)
	img := filepath.Join(tmp, "img")
	commit(t, nil, "--upper", base, "--image", "oci:"+img+":mu")
	upper := overlay(t, []string{base}, func(m string) {
		sh(t, m, `
			mkdir -p usr/sbin usr/lib
			mv bin/* usr/bin/ && mv sbin/* usr/sbin/ && mv lib/* usr/lib/
			rm -rf bin sbin lib
			ln -s usr/bin bin && ln -s usr/sbin sbin && ln -s usr/lib lib`)
	})
	r := commit(t, nil, "--upper", upper, "--lower", base, "--image", "oci:"+img+":mu")
	if n := validateImage(t, img, "mu"); n != 2 {
		t.Fatalf("image has %d layers, want 2", n)
	}
	skopeoVerify(t, img, "mu")

	// The layer itself: the symlinks, and nothing at all beneath them.
	names := layerNames(t, filepath.Join(img, "blobs", "sha256", strings.TrimPrefix(r.Digest, "sha256:")))
	for _, n := range names {
		for _, link := range []string{"bin/", "sbin/", "lib/"} {
			if strings.HasPrefix(n, link) {
				t.Errorf("entry %q lies beneath the new symlink %s", n, link)
			}
		}
	}

	// podman refuses a runroot path longer than 50 bytes, which t.TempDir
	// easily exceeds.
	store, err := os.MkdirTemp("", "lfs-pm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(store) })
	storageRef := "containers-storage:[overlay@" + store + "/root+" + store + "/run]localhost/merged-usr:test"
	if out, err := exec.Command("skopeo", "copy", "--quiet", "oci:"+img+":mu", storageRef).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	t.Cleanup(func() { unmountUnder(t, store) }) // runs before the RemoveAll above
	podman := exec.Command("podman", "--root", store+"/root", "--runroot", store+"/run", "--storage-driver", "overlay",
		"--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs", "--events-backend=file",
		"run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"localhost/merged-usr:test", "/bin/sh", "-c", "echo ok; cat /usr/bin/already-there /sbin/init /lib/libfake.so")
	out, err := podman.CombinedOutput()
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, out)
	}
	if got := string(out); got != "ok\nkeep\ninit\nlib\n" {
		t.Errorf("podman run printed %q, want ok and the moved files", got)
	}
}

func layerNames(t *testing.T, blob string) []string {
	t.Helper()
	out, err := exec.Command("tar", "-tzf", blob).Output()
	if err != nil {
		t.Fatalf("tar -t %s: %v", blob, err)
	}
	return strings.Fields(string(out))
}

// unmountUnder unmounts everything containers/storage left mounted below
// dir, deepest first, so the temp dir can be removed.
func unmountUnder(t *testing.T, dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			mounts = append(mounts, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	for _, m := range mounts {
		unix.Unmount(m, unix.MNT_DETACH)
	}
}
