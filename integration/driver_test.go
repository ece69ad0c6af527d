package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

// The build's mount drivers (issue 12): the kernel's overlayfs where the
// build may mount it, layerfs's FUSE daemon where it must. The upper
// format is the kernel's either way, so layers, keys and images are the
// same bytes whichever driver served the installs.

// driverSpec installs a tree, then a real .deb with a maintainer script
// (dpkg --root), then changes every kind of thing a layer records: a
// deleted lower file, a directory replaced by a symlink, a hardlink, a
// setuid file and an xattr.
const driverSpec = `image: oci:out:x
arch: amd64
layers:
  - name: base
    type: packages
    packages: [base]
    install: |
      set -e
      r=$LAYERFS_ROOT
      mkdir -p $r/var/lib/dpkg/info $r/var/lib/dpkg/updates $r/var/lib/dpkg/triggers $r/etc $r/d $r/usr/bin
      : > $r/var/lib/dpkg/status
      echo keep > $r/etc/keep; echo gone > $r/etc/gone; echo x > $r/d/x; echo tool > $r/usr/bin/tool
  - name: dpkg
    type: packages
    packages: [hello-layerfs]
    install: dpkg --root="$LAYERFS_ROOT" --force-script-chrootless --force-not-root --log=/dev/null -i hello.deb
  - name: changes
    type: packages
    packages: [changes]
    install: |
      set -e
      r=$LAYERFS_ROOT
      rm $r/etc/gone
      rm -rf $r/d && ln -s etc $r/d
      ln $r/etc/keep $r/etc/keep-link
      chmod 4777 $r/usr/bin/tool
      setfattr -n user.test -v value $r/etc/keep
`

// driverFixture writes driverSpec and its .deb (a postinst that writes
// a file into the root it configures) into a new dir.
func driverFixture(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"dpkg", "dpkg-deb", "setfattr"} {
		needTool(t, tool)
	}
	dir := t.TempDir()
	pkg := filepath.Join(dir, "pkg")
	writeFiles(t, pkg, map[string]string{
		"DEBIAN/control":           "Package: hello-layerfs\nVersion: 1.0\nArchitecture: all\nMaintainer: layerfs tests <tests@layerfs.invalid>\nDescription: a package with maintainer scripts\n",
		"DEBIAN/postinst":          "#!/bin/sh\nset -e\nmkdir -p \"$DPKG_ROOT/var/lib/hello\"\necho configured > \"$DPKG_ROOT/var/lib/hello/state\"\n",
		"usr/share/hello/greeting": "hi\n",
	})
	cmd := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, filepath.Join(dir, "hello.deb"))
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(driverSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// driverBuild builds dir's spec into a fresh cache with --driver driver
// (none: the default) and returns the result; the layers must have been
// built on want.
func driverBuild(t *testing.T, dir, driver, want string, env ...string) (buildRun, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cacheDir := t.TempDir()
	args := []string{"spec.yaml", "--cache", cacheDir, "--json"}
	if driver != "" {
		args = append(args, "--driver", driver)
	}
	r := layerfsBuild(ctx, t, dir, append([]string{"SOURCE_DATE_EPOCH=1700000000"}, env...), args...)
	if r.err != nil {
		t.Fatalf("layerfs build --driver %q: %v\n%s", driver, r.err, r.stderr)
	}
	var drivers struct {
		Layers []struct {
			Driver string `json:"driver"`
		} `json:"layers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &drivers); err != nil {
		t.Fatal(err)
	}
	for i, l := range drivers.Layers {
		if l.Driver != want {
			t.Errorf("--driver %q: layer %d was built on %q, want %s", driver, i, l.Driver, want)
		}
	}
	return r, cacheDir
}

// TestDriversAgree: the same spec built on the kernel's overlayfs
// and on FUSE gives the same layers and manifest, and so does a second
// build of each from an empty cache. The log says, once, what the
// installs ran on.
func TestDriversAgree(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	dir := driverFixture(t)
	var manifests []string
	var layers [][]string
	for _, d := range []string{"kernel", "fuse", "kernel", "fuse"} {
		r, cacheDir := driverBuild(t, dir, d, d)
		manifests = append(manifests, r.result.Manifest)
		var ds []string
		for _, l := range r.result.Layers {
			ds = append(ds, l.Digest)
		}
		layers = append(layers, ds)
		line := map[string]string{"kernel": "OCI: installs on the kernel's overlayfs", "fuse": "OCI: installs on layerfs FUSE (--driver fuse)"}[d]
		if n := strings.Count(r.stderr, line); n != 1 {
			t.Errorf("--driver %s: the log says %q %d times, want once:\n%s", d, line, n, r.stderr)
		}
		if out, err := exec.Command(layerfsBin, "cache", "verify", "--cache", cacheDir).CombinedOutput(); err != nil {
			t.Errorf("--driver %s: cache verify: %v\n%s", d, err, out)
		}
	}
	for i := 1; i < len(manifests); i++ {
		if manifests[i] != manifests[0] || strings.Join(layers[i], " ") != strings.Join(layers[0], " ") {
			t.Errorf("build %d: manifest %s layers %v; build 0 (kernel): %s %v", i, manifests[i], layers[i], manifests[0], layers[0])
		}
	}
	// What the layers hold: the image's merged view.
	out := mustRun(t, dir, layerfsBin, "ls", "oci:"+filepath.Join(dir, "out")+":x", "/", "-R", "--json")
	var ents []struct {
		Path   string            `json:"path"`
		Type   string            `json:"type"`
		Mode   string            `json:"mode"`
		Link   string            `json:"link"`
		Links  []string          `json:"links"`
		Xattrs map[string]string `json:"xattrs"`
	}
	if err := json.Unmarshal([]byte(out), &ents); err != nil {
		t.Fatal(err)
	}
	byPath := map[string]int{}
	for i, e := range ents {
		byPath[e.Path] = i
	}
	has := func(p string) bool { _, ok := byPath[p]; return ok }
	for _, p := range []string{"/var/lib/hello/state", "/usr/share/hello/greeting", "/var/lib/dpkg/info/hello-layerfs.postinst"} {
		if !has(p) {
			t.Errorf("the image lacks %s (dpkg and its postinst)", p)
		}
	}
	if has("/etc/gone") || has("/d/x") {
		t.Error("the image still has /etc/gone or /d/x")
	}
	if e := ents[byPath["/d"]]; e.Type != "symlink" || e.Link != "etc" {
		t.Errorf("/d: %+v, want a symlink to etc", e)
	}
	if e := ents[byPath["/usr/bin/tool"]]; e.Mode != "4777" {
		t.Errorf("/usr/bin/tool: mode %s, want 4777", e.Mode)
	}
	if e := ents[byPath["/etc/keep"]]; len(e.Links) != 2 || e.Xattrs["user.test"] == "" {
		t.Errorf("/etc/keep: %+v, want two links and user.test", e)
	}
}

// TestDriverAuto: auto picks the kernel as root, and FUSE where the
// kernel cannot serve: an upper on a filesystem overlayfs refuses (here,
// an overlayfs), a normal user, a build under pseudo. --driver kernel
// where the kernel cannot serve is one line and exit 2.
func TestDriverAuto(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	dir := driverFixture(t)
	r, _ := driverBuild(t, dir, "", "kernel")
	if !strings.Contains(r.stderr, "OCI: installs on the kernel's overlayfs") {
		t.Errorf("auto as root: the log does not say the kernel:\n%s", r.stderr)
	}
	r, _ = driverBuild(t, dir, "", "fuse", "LAYERFS_DRIVER=fuse")
	if !strings.Contains(r.stderr, "OCI: installs on layerfs FUSE (--driver fuse)") {
		t.Errorf("LAYERFS_DRIVER=fuse: the log does not say FUSE:\n%s", r.stderr)
	}

	// The cache on an overlayfs, which overlayfs takes as no upper.
	base := t.TempDir()
	d := mkdirs(t, base, "l", "u", "w", "m")
	unmount := mountOverlay(t, []string{d[0]}, d[1], d[2], d[3])
	defer unmount()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r = layerfsBuild(ctx, t, dir, []string{"SOURCE_DATE_EPOCH=1700000000"}, "spec.yaml", "--cache", filepath.Join(d[3], "cache"), "--image", "oci:"+filepath.Join(base, "img")+":x")
	if r.err != nil {
		t.Fatalf("auto with the cache on overlayfs: %v\n%s", r.err, r.stderr)
	}
	if !strings.Contains(r.stdout, "OCI: installs on layerfs FUSE (") || !strings.Contains(r.stdout, "not supported as upperdir") {
		t.Errorf("auto with the cache on overlayfs: the log does not say FUSE and why:\n%s", r.stdout)
	}
	r = layerfsBuild(ctx, t, dir, nil, "spec.yaml", "--driver", "kernel", "--cache", filepath.Join(d[3], "cache2"), "--image", "oci:"+filepath.Join(base, "img")+":y")
	if r.code != 2 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 || !strings.Contains(r.stderr, "not supported as upperdir") {
		t.Errorf("--driver kernel with the cache on overlayfs: exit %d, stderr %q: want 2 and one line with the kernel's reason", r.code, r.stderr)
	}

	// A normal user, and pseudo.
	u := newFakeRootUser(t, "pseudo")
	u.stopPseudo(t)
	os.WriteFile(filepath.Join(u.work, "spec.yaml"), []byte(`image: oci:out:x
layers:
  - {name: a, type: packages, packages: [a], install: 'echo a > "$LAYERFS_ROOT/a"'}
`), 0o644)
	out := u.run(t, `"$LAYERFS" build spec.yaml --cache cache1`)
	if !strings.Contains(out, "OCI: installs on layerfs FUSE (rootless)") {
		t.Errorf("auto as a normal user: %s", out)
	}
	out = u.run(t, `mkdir pseudo-state; pseudo "$LAYERFS" build spec.yaml --cache cache2`)
	if !strings.Contains(out, "OCI: installs on layerfs FUSE (rootless)") && !strings.Contains(out, "pseudo") {
		t.Errorf("auto under pseudo: %s", out)
	}
	out = u.run(t, `"$LAYERFS" build spec.yaml --driver kernel --cache cache3 2>&1 >/dev/null && echo "exit 0" || echo "exit $?"`)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[1] != "exit 2" || !strings.Contains(lines[0], "--driver kernel") || !strings.Contains(lines[0], "rootless") {
		t.Errorf("--driver kernel as a normal user: %q, want one line saying why, and exit 2", out)
	}
}

// TestDriverKernelManyLayers: 60 layers, in a cache whose path is over
// 300 bytes long, each installed on the kernel's overlayfs over all those
// below it: no lowerdir= option could name them.
func TestDriverKernelManyLayers(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	dir := t.TempDir()
	cacheDir := filepath.Join(dir, strings.Repeat("c", 200), strings.Repeat("d", 100))
	var spec strings.Builder
	spec.WriteString("image: oci:out:many\nlayers:\n")
	for i := range 60 {
		// Each install sees every layer below it.
		fmt.Fprintf(&spec, "  - {name: l%02d, type: packages, packages: [p%02d], install: 'test $(ls \"$LAYERFS_ROOT\" | wc -l) = %d && echo %d > \"$LAYERFS_ROOT/f%02d\"'}\n", i, i, i, i, i)
	}
	if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(spec.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	r := layerfsBuild(ctx, t, dir, nil, "spec.yaml", "--cache", cacheDir, "--driver", "kernel", "--json")
	if r.err != nil {
		t.Fatalf("60 layers on the kernel driver: %v\n%s", r.err, r.stderr)
	}
	if len(r.result.Layers) != 60 || r.result.Misses != 60 {
		t.Errorf("%d layers, %d built; want 60, 60", len(r.result.Layers), r.result.Misses)
	}
	if entries := cacheEntries(t, cacheDir); len(entries) != 60 || len(filepath.Join(cacheDir, entries[0], "rootfs")) < 300 {
		t.Errorf("%d entries in the cache (%s), want 60 with paths over 300 bytes", len(entries), cacheDir)
	}
}

// TestDriverKernelKilled: kill -9 of a kernel-driver build in the middle
// of an install leaves nothing mounted anywhere (the mount lived in the
// install's own namespace and in no other), nothing running, and a cache
// that the next build uses and that verifies.
func TestDriverKernelKilled(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	dir := t.TempDir()
	spec := `image: oci:out:k
layers:
  - {name: a, type: packages, packages: [a], install: 'echo a > "$LAYERFS_ROOT/a"'}
  - {name: b, type: packages, packages: [b], install: 'echo b > "$LAYERFS_ROOT/b"; sleep 600'}
`
	if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(dir, "cache")
	// b installs once its MISS is logged (a's install is over by then)
	// and a child of the build runs in a mount namespace of its own; a is
	// stored in the background meanwhile: wait for its entry.
	cmd := startBuildUntil(t, dir, "kernel", cacheDir, func(out string, pid int) bool {
		return strings.Contains(out, "MISS: Layer 'b'") && sandboxRunning(pid) && len(cacheEntriesIn(cacheDir)) == 1
	})
	if n := layerfsOverlays(t); n == 0 {
		t.Fatal("no process has a layerfs overlayfs mount while b installs: the test shows nothing")
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for layerfsOverlays(t) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a layerfs overlayfs mount is left 30 s after kill -9")
		}
		time.Sleep(50 * time.Millisecond)
	}
	os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(strings.ReplaceAll(spec, "; sleep 600", "")), 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := layerfsBuild(ctx, t, dir, nil, "spec.yaml", "--cache", cacheDir, "--driver", "kernel", "--json")
	if r.err != nil {
		t.Fatalf("build after kill -9: %v\n%s", r.err, r.stderr)
	}
	if r.result.Hits != 1 || r.result.Misses != 1 {
		t.Errorf("after kill -9: %d hits, %d misses; want a (stored before the kill) and b", r.result.Hits, r.result.Misses)
	}
	if out, err := exec.Command(layerfsBin, "cache", "verify", "--cache", cacheDir).CombinedOutput(); err != nil {
		t.Errorf("cache verify: %v\n%s", err, out)
	}
}

// startBuildUntil starts `layerfs build spec.yaml` in dir with the cache
// and driver, and returns once ready says so of its output and pid; a
// build that never gets there is killed and fails the test.
func startBuildUntil(t *testing.T, dir, driver, cacheDir string, ready func(out string, pid int) bool) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(layerfsBin, "build", "spec.yaml", "--cache", cacheDir, "--driver", driver)
	cmd.Dir = dir
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Minute); !ready(out.String(), cmd.Process.Pid); {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the build never got where the test waits:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd
}

// cacheEntriesIn lists a cache's entries, if it has any yet.
func cacheEntriesIn(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

// sandboxRunning reports whether the build pid has an install running:
// a child in a mount namespace of its own.
func sandboxRunning(pid int) bool {
	ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return false
	}
	out, _ := exec.Command("pgrep", "-P", fmt.Sprint(pid)).Output()
	for _, c := range strings.Fields(string(out)) {
		if cns, err := os.Readlink("/proc/" + c + "/ns/mnt"); err == nil && cns != ns {
			return true
		}
	}
	return false
}

// layerfsOverlays counts the layerfs overlayfs mounts (source "layerfs")
// that any process on the machine sees, in whatever mount namespace.
func layerfsOverlays(t *testing.T) int {
	t.Helper()
	pids, _ := filepath.Glob("/proc/[0-9]*/mountinfo")
	seen := map[string]bool{}
	for _, p := range pids {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			for i, x := range f {
				if x == "-" && i+2 < len(f) && f[i+1] == "overlay" && f[i+2] == "layerfs" {
					seen[f[2]] = true // the device: one filesystem, seen from many namespaces
				}
			}
		}
	}
	return len(seen)
}

// lockedBuffer is a bytes.Buffer that a command writes while the test
// reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// loopFS makes an ext4 of sizeMB on a loop device over a file in
// /var/tmp, mounted at a new dir, which it returns; the cleanup unmounts
// it and frees the device.
func loopFS(t *testing.T, sizeMB int) (mnt, dev string) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "losetup", "mount", "umount"} {
		needTool(t, tool)
	}
	dir, err := os.MkdirTemp("/var/tmp", "layerfs-loopfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	img := filepath.Join(dir, "fs.img")
	mustRun(t, "", "truncate", "-s", fmt.Sprintf("%dM", sizeMB), img)
	mustRun(t, "", "mkfs.ext4", "-q", "-F", "-E", "nodiscard", img)
	dev = strings.TrimSpace(mustRun(t, "", "losetup", "--find", "--show", img))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	mnt = filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "", "mount", "-o", "nodiscard", dev, mnt)
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return mnt, dev
}

// TestDriverLowersStayReadOnly: an install that writes, truncates, chmods,
// chowns, sets an xattr on, hardlinks, renames and unlinks every kind of
// lower object (a regular file, a file of a hardlink group, a symlink, a
// directory's entries, a device node) changes no cache entry: every
// entry's tree digest verifies afterwards, under both drivers.
func TestDriverLowersStayReadOnly(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	needTool(t, "setfattr")
	const ops = "write truncate chmod chown xattr link rename unlink"
	spec := `image: oci:out:ro
layers:
  - name: lower
    type: packages
    packages: [lower]
    install: |
      set -e
      cd "$LAYERFS_ROOT"
      for op in ` + ops + `; do
        echo content > f_$op
        echo linked > h_$op; ln h_$op h_$op.2
        echo target > t_$op; ln -s t_$op s_$op
        mkdir d_$op; echo entry > d_$op/e; echo other > d_$op/o
        mknod c_$op c 1 3
      done
  - name: changes
    type: packages
    packages: [changes]
    install: |
      set -e
      cd "$LAYERFS_ROOT"
      for o in f h s c; do
        echo more >> ${o}_write
        truncate -s 2 ${o}_truncate 2>/dev/null || [ $o = c ]
        chmod 600 ${o}_chmod
        chown -h 123:456 ${o}_chown
        setfattr -h -n trusted.layerfs-test -v 1 ${o}_xattr
        ln -P ${o}_link ${o}_link.new
        mv ${o}_rename ${o}_rename.new
        rm ${o}_unlink
      done
      echo more >> d_write/e; echo new > d_write/n
      truncate -s 1 d_truncate/e
      chmod 600 d_chmod/e; chmod 700 d_chmod
      chown 123:456 d_chown/e d_chown
      setfattr -n trusted.layerfs-test -v 1 d_xattr/e; setfattr -n trusted.layerfs-test -v 1 d_xattr
      ln d_link/e d_link/e.new
      mv d_rename/e d_rename/e.new
      rm d_unlink/e; rm -r d_unlink
`
	for _, driver := range []string{"kernel", "fuse"} {
		t.Run(driver, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(spec), 0o644); err != nil {
				t.Fatal(err)
			}
			cacheDir := filepath.Join(dir, "cache")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			r := layerfsBuild(ctx, t, dir, nil, "spec.yaml", "--cache", cacheDir, "--driver", driver, "--json")
			if r.err != nil {
				t.Fatalf("build: %v\n%s", r.err, r.stderr)
			}
			if r.result.Misses != 2 {
				t.Fatalf("%d layers built, want 2", r.result.Misses)
			}
			out, err := exec.Command(layerfsBin, "cache", "verify", "--cache", cacheDir).CombinedOutput()
			if err != nil || strings.Count(string(out), "ok ") != 2 {
				t.Errorf("cache verify after the changes: %v\n%s", err, out)
			}
		})
	}
}

// TestDriverDiskFull: a full cache filesystem during an install fails the
// build (exit 1) with one line naming the layer and the filesystem; no
// space for the commit leaves no partial entry and the image built before
// it intact; under both drivers.
func TestDriverDiskFull(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	for _, driver := range []string{"kernel", "fuse"} {
		t.Run(driver, func(t *testing.T) {
			mnt, _ := loopFS(t, 96)
			dir := t.TempDir()
			cacheDir := filepath.Join(mnt, "cache")
			write := func(name, install string) {
				spec := fmt.Sprintf("image: oci:%s:x\nlayers:\n  - {name: small, type: packages, packages: [s], install: 'echo small > \"$LAYERFS_ROOT/small\"'}\n  - {name: %s, type: packages, packages: [b], install: '%s'}\n", filepath.Join(mnt, "out"), name, install)
				if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(spec), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			build := func() buildRun {
				return layerfsBuild(ctx, t, dir, []string{"SOURCE_DATE_EPOCH=1700000000"}, "spec.yaml", "--cache", cacheDir, "--driver", driver, "--json")
			}
			write("tiny", `echo tiny > "$LAYERFS_ROOT/tiny"`)
			before := build()
			if before.err != nil {
				t.Fatalf("the first build: %v\n%s", before.err, before.stderr)
			}
			entriesBefore := cacheEntriesIn(cacheDir)

			// The install fills the filesystem.
			write("big", `dd if=/dev/zero of="$LAYERFS_ROOT/big" bs=1M count=200 2>/dev/null`)
			r := build()
			line := errorLine(r.stderr)
			if r.code != 1 || !strings.Contains(line, "layer 'big'") || !strings.Contains(line, mnt) || !strings.Contains(line, "full") {
				t.Errorf("an install that fills the filesystem: exit %d, stderr %q: want 1 and one line naming the layer, the filesystem (%s) and that it is full", r.code, r.stderr, mnt)
			}
			checkUnchanged(t, cacheDir, mnt, entriesBefore, before.result.Manifest)

			// The upper fits, its compressed copy does not.
			write("commit", `head -c 60M /dev/urandom > "$LAYERFS_ROOT/random"`)
			r = build()
			line = errorLine(r.stderr)
			if r.code != 1 || !strings.Contains(line, "layer 'commit'") || !strings.Contains(line, mnt) {
				t.Errorf("no space for the commit: exit %d, stderr %q: want 1 and one line naming the layer and the filesystem (%s)", r.code, r.stderr, mnt)
			}
			checkUnchanged(t, cacheDir, mnt, entriesBefore, before.result.Manifest)
		})
	}
}

// errorLine is the error a command printed: its one line starting with
// "layerfs ", or all of stderr when it printed none or several.
func errorLine(stderr string) string {
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "layerfs ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		return stderr
	}
	return lines[0]
}

// checkUnchanged: the cache holds the entries it held, whole, and nothing
// else; the image is the one built before.
func checkUnchanged(t *testing.T, cacheDir, mnt string, entries []string, manifest string) {
	t.Helper()
	if got := cacheEntriesIn(cacheDir); strings.Join(got, " ") != strings.Join(entries, " ") {
		t.Errorf("cache entries %v, want %v", got, entries)
	}
	if ents, _ := os.ReadDir(filepath.Join(cacheDir, ".tmp")); len(ents) > 0 {
		t.Errorf("temps left in the cache: %v", ents)
	}
	if out, err := exec.Command(layerfsBin, "cache", "verify", "--cache", cacheDir).CombinedOutput(); err != nil {
		t.Errorf("cache verify: %v\n%s", err, out)
	}
	out := mustRun(t, "", layerfsBin, "inspect", "oci:"+filepath.Join(mnt, "out")+":x", "--json")
	var insp struct {
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal([]byte(out), &insp); err != nil || insp.Digest != manifest {
		t.Errorf("the image is %s (%v), want the one built before, %s", insp.Digest, err, manifest)
	}
}

// TestDriverStoredEntriesAreSynced: installs skip their fsyncs, and an
// entry is synced whole before it appears. The build is killed (-9)
// while its last layer installs, after the other layers were stored, and
// the filesystem is shut down at once without writing anything more (an
// ext4 "going down" without log flush: the power cut of xfstests), then
// mounted again. Every entry that appears then verifies. The pause before
// the kill lets the journal commit the entries' renames (ext4 commits
// every 5 s) while their data, unsynced, would still be in memory (it is
// written back after 30 s): an entry that appeared without a sync would
// come back with empty files.
func TestDriverStoredEntriesAreSynced(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	for _, driver := range []string{"kernel", "fuse"} {
		t.Run(driver, func(t *testing.T) {
			mnt, dev := loopFS(t, 256)
			dir := t.TempDir()
			cacheDir := filepath.Join(mnt, "cache")
			spec := `image: oci:out:x
layers:
  - {name: a, type: packages, packages: [a], install: 'for i in $(seq 20); do head -c 1M /dev/urandom > "$LAYERFS_ROOT/a$i"; done'}
  - {name: b, type: packages, packages: [b], install: 'for i in $(seq 20); do head -c 1M /dev/urandom > "$LAYERFS_ROOT/b$i"; done'}
  - {name: c, type: packages, packages: [c], install: 'sleep 600'}
`
			if err := os.WriteFile(filepath.Join(dir, "spec.yaml"), []byte(spec), 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := startBuildUntil(t, dir, driver, cacheDir, func(out string, _ int) bool {
				return len(cacheEntriesIn(cacheDir)) >= 2 && strings.Contains(out, "MISS: Layer 'c'")
			})
			time.Sleep(7 * time.Second)
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			// The power cut: nothing more reaches the disk.
			f, err := os.Open(mnt)
			if err != nil {
				t.Fatal(err)
			}
			const ext4IocShutdown, noLogFlush = 0x8004587d, 2
			if err := unix.IoctlSetPointerInt(int(f.Fd()), ext4IocShutdown, noLogFlush); err != nil {
				f.Close()
				t.Fatalf("shut %s down: %v", mnt, err)
			}
			f.Close()
			// A killed FUSE build leaves its dead mount in the cache, as
			// the next build would find it.
			if out, err := exec.Command(layerfsBin, "umount", "--stale").CombinedOutput(); err != nil {
				t.Fatalf("layerfs umount --stale: %v\n%s", err, out)
			}
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			mustRun(t, "", "mount", "-o", "nodiscard", dev, mnt)
			entries := cacheEntriesIn(cacheDir)
			t.Logf("after the cut: entries %v", entries)
			if len(entries) < 2 {
				t.Errorf("after the cut the cache holds %v: a and b, stored 7 s before, are lost", entries)
			}
			if o, err := exec.Command(layerfsBin, "cache", "verify", "--cache", cacheDir).CombinedOutput(); err != nil {
				t.Errorf("cache verify after the cut: %v\n%s", err, o)
			}
		})
	}
}
