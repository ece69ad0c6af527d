package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/testutil"
	"golang.org/x/sys/unix"
)

// The way `layerfs build` uses the sandbox: the mount is served by this
// very process while the isolated script, in other namespaces, installs
// into it.
func TestIsolatedInstallIntoLayerfsMount(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testutil.Unavailable(t, "no FUSE: %v", err)
	}
	tmp := t.TempDir()
	lower := testutil.Tree{T: t, Root: filepath.Join(tmp, "lower")}.
		File("etc/base.conf", "base\n").File("usr/share/gone", "x")
	upper := filepath.Join(tmp, "upper")
	mnt := filepath.Join(tmp, "mnt")
	for _, d := range []string{upper, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := fs.Mount(mnt, fs.Options{Lowers: []string{lower.Root}, Upper: upper})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fs.Unmount(mnt, false); err != nil {
			t.Errorf("unmount after the run: %v", err)
		}
		srv.Wait()
	})

	script := `set -e
cat etc/base.conf
echo changed > etc/base.conf
mkdir -p usr/bin && echo '#!/bin/sh' > usr/bin/tool && chmod 755 usr/bin/tool
rm usr/share/gone
mkdir dev && mknod dev/null c 1 3 && echo x > dev/null
echo installed`
	res := mustRun(t, Command{Script: script, Dir: mnt, Isolate: true, Writable: []string{mnt}})
	if want := []string{"base", "installed"}; !slices.Equal(res.Tail, want) {
		t.Errorf("output %q, want %q", res.Tail, want)
	}
	if got := readFile(t, filepath.Join(upper, "etc/base.conf")); got != "changed\n" {
		t.Errorf("upper etc/base.conf = %q", got)
	}
	if got := readFile(t, filepath.Join(lower.Root, "etc/base.conf")); got != "base\n" {
		t.Errorf("the lower changed: %q", got)
	}
	if fi, err := os.Stat(filepath.Join(upper, "usr/bin/tool")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("upper usr/bin/tool: %v %v", fi, err)
	}
	// As debootstrap makes the image's /dev, to use it in a chroot.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "dev/null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("upper dev/null: mode %o rdev %x, %v", st.Mode, st.Rdev, err)
	}
	if _, err := os.Lstat(filepath.Join(mnt, "usr/share/gone")); !os.IsNotExist(err) {
		t.Errorf("usr/share/gone still in the merged view: %v", err)
	}
}

// Another build's mount, copied into the sandbox's namespace with every
// other mount, must not outlive its unmount on the host: its daemon waits
// for the last reference before it can stop.
func TestIsolatedDropsOtherFuseMounts(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	lower := testutil.Tree{T: t, Root: filepath.Join(tmp, "lower")}.File("f", "x")
	other := filepath.Join(tmp, "other")
	work := filepath.Join(tmp, "work")
	for _, d := range []string{other, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := fs.Mount(other, fs.Options{Lowers: []string{lower.Root}})
	if err != nil {
		t.Fatal(err)
	}
	unmounted := false
	t.Cleanup(func() {
		if !unmounted {
			fs.Unmount(other, true)
		}
	})

	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		out := &callbackWriter{on: "started", f: func() { close(started) }}
		ctx, cancel := context.WithTimeout(t.Context(), hangGuard)
		defer cancel()
		_, err := Run(ctx, Command{Script: "echo started; while [ ! -e go ]; do sleep 0.01; done",
			Dir: work, Env: testEnv(), Isolate: true, Writable: []string{work}, Output: out})
		done <- err
	}()
	<-started
	if err := fs.Unmount(other, false); err != nil {
		t.Fatal(err)
	}
	unmounted = true
	served := make(chan struct{})
	go func() { srv.Wait(); close(served) }()
	select {
	case <-served:
	case <-time.After(30 * time.Second): // a hang guard, not a measure
		t.Error("the unmounted daemon kept serving while the sandbox ran")
	}
	if err := os.WriteFile(filepath.Join(work, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
