package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
)

// The Yocto merged-usr layer: the base has real /bin, /sbin and /lib, the
// top layer moves them into /usr and leaves symlinks. The layer must hold
// the symlinks alone (nothing beneath them), and the image must run.
func TestMergedUsrRunsInPodman(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"podman", "skopeo", "runc"} {
		needTool(t, tool)
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		testenv.Unavailable(t, "busybox-static is not installed: %v", err)
	}
	tmp := t.TempDir()
	base := filepath.Join(tmp, "base")
	runScript(t, tmp, "base", `
		mkdir -p base/bin base/sbin base/lib base/usr/bin base/etc
		cp /bin/busybox base/bin/busybox
		for a in sh echo ls cat; do ln -s busybox base/bin/$a; done
		echo init > base/sbin/init
		echo lib > base/lib/libfake.so
		echo keep > base/usr/bin/already-there`)
	img := filepath.Join(tmp, "img")
	layerfsCommit(t, "--upper", base, "--image", "oci:"+img+":mu")
	upper := throughOverlay(t, []string{base}, `
		mkdir -p usr/sbin usr/lib
		mv bin/* usr/bin/ && mv sbin/* usr/sbin/ && mv lib/* usr/lib/
		rm -rf bin sbin lib
		ln -s usr/bin bin && ln -s usr/sbin sbin && ln -s usr/lib lib`)
	r := layerfsCommit(t, "--upper", upper, "--lower", base, "--image", "oci:"+img+":mu")
	if n := validateImage(t, img, "mu"); n != 2 {
		t.Fatalf("image has %d layers, want 2", n)
	}
	out, err := exec.Command("tar", "-tzf", filepath.Join(img, "blobs", "sha256", strings.TrimPrefix(r.Digest, "sha256:"))).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range strings.Fields(string(out)) {
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
	t.Cleanup(func() {
		if err := appliers.UnmountUnder(store); err != nil {
			t.Error(err)
		}
		os.RemoveAll(store)
	})
	storageRef := "containers-storage:[overlay@" + store + "/root+" + store + "/run]localhost/merged-usr:test"
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+img+":mu", storageRef).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	podman := exec.Command("podman", "--root", store+"/root", "--runroot", store+"/run", "--storage-driver", "overlay",
		"--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs", "--events-backend=file",
		"run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"localhost/merged-usr:test", "/bin/sh", "-c", "echo ok; cat /usr/bin/already-there /sbin/init /lib/libfake.so")
	got, err := podman.CombinedOutput()
	if err != nil {
		t.Fatalf("podman run: %v\n%s", err, got)
	}
	if string(got) != "ok\nkeep\ninit\nlib\n" {
		t.Errorf("podman run printed %q, want ok and the moved files", got)
	}
}

// throughOverlay runs a script in a real overlayfs mount of lowers (base
// first) over a fresh upper, unmounts, and returns the upper.
func throughOverlay(t *testing.T, lowers []string, script string) string {
	t.Helper()
	d := mkdirs(t, t.TempDir(), "upper", "work", "merged")
	unmount := mountOverlay(t, lowers, d[0], d[1], d[2])
	runScript(t, d[2], "overlay", script)
	unmount()
	return d[0]
}
