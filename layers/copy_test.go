package layers

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testutil"
)

// copyInto never writes outside the image, whatever symlinks the layers
// below planted: links inside the image are followed, links out of it
// are refused, and the host side stays as it was.
func TestCopyIntoStaysInTheImage(t *testing.T) {
	testutil.RequireRoot(t)
	src := t.TempDir()
	host := t.TempDir() // stands for the host's /run, /etc
	testutil.Tree{T: t, Root: src}.File("var/run/app/pid", "1").File("opt/x/conf", "c").File("lib/mod/m.ko", "m")
	cases := []struct {
		name, link, target, dst string
		ok                      bool
	}{
		{"absolute link out", "var/run", host, "/var/run/app", false},
		{"relative link out", "opt", strings.Repeat("../", 20) + strings.TrimPrefix(host, "/"), "/opt/x", false},
		{"link inside the image", "lib", "usr/lib", "/lib/mod", true},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			img := t.TempDir()
			os.MkdirAll(filepath.Join(img, "usr/lib"), 0o755)
			os.MkdirAll(filepath.Join(img, filepath.Dir(c.link)), 0o755)
			if err := os.Symlink(c.target, filepath.Join(img, c.link)); err != nil {
				t.Fatal(err)
			}
			items := []copyItem{{src: filepath.Join(src, c.dst), dst: c.dst, fromRootfs: src}}
			err := copyInto(context.Background(), img, items)
			if c.ok != (err == nil) {
				t.Fatalf("copyInto: %v, want ok=%v", err, c.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "/"+c.link) {
				t.Errorf("error %q does not name the path", err)
			}
			if ents, _ := os.ReadDir(host); len(ents) != 0 {
				t.Errorf("the host dir now holds %v", ents)
			}
			if c.ok {
				if _, err := os.Stat(filepath.Join(img, "usr/lib/mod/m.ko")); err != nil {
					t.Errorf("the copy did not follow the in-image link: %v", err)
				}
			}
		})
	}
}

// Copying layers' keys cover the parents they create and their hardlinks,
// and not host labels a layer never carries.
func TestCopyKeyInputs(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	tr := testutil.Tree{T: t, Root: filepath.Join(dir, "rootfs")}
	tr.File("opt/app/a", "a").File("opt/app/b", "b")
	spec := "image: oci:x\nlayers: [{name: app, type: directories, source: rootfs, paths: [/opt/app]}]\n"
	key := func() string {
		s := parse(t, dir, spec)
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		k, err := newKeyer(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		in, err := k.layer(context.Background(), "", s.Layers[0])
		if err != nil {
			t.Fatal(err)
		}
		return in.key()
	}
	pin := func() {
		for _, p := range []string{"opt/app/a", "opt/app/b", "opt/app", "opt"} {
			os.Chtimes(filepath.Join(dir, "rootfs", p), time.Unix(1e9, 0), time.Unix(1e9, 0))
		}
	}
	pin()
	k0 := key()
	tr.Chmod("opt", 0o700)
	pin()
	k1 := key()
	if k1 == k0 {
		t.Errorf("a parent's mode is not in the key")
	}
	tr.Xattr("opt/app/a", "security.selinux", "system_u:object_r:etc_t:s0")
	pin()
	if key() != k1 {
		t.Errorf("a host label (security.selinux) changed the key")
	}
	tr.Xattr("opt/app/a", "user.app", "1")
	pin()
	k2 := key()
	if k2 == k1 {
		t.Errorf("a user xattr is not in the key")
	}
	os.Remove(filepath.Join(dir, "rootfs/opt/app/b"))
	os.WriteFile(filepath.Join(dir, "rootfs/opt/app/b"), []byte("a"), 0o644)
	pin()
	k3 := key()
	os.Remove(filepath.Join(dir, "rootfs/opt/app/b"))
	os.Link(filepath.Join(dir, "rootfs/opt/app/a"), filepath.Join(dir, "rootfs/opt/app/b"))
	pin()
	if key() == k3 {
		t.Errorf("two files with the same content and a hardlinked pair have one key")
	}
}

// Host copies follow cp -a: into a directory the image has (or a DST
// ending in /), never over it. replace: follows rsync -a: what differs is
// replaced, a directory's mode follows the source's, a symlink may take a
// directory's place (merged-usr) but a file may not.
func TestCopyIntoAndReplace(t *testing.T) {
	testutil.RequireRoot(t)
	src := t.TempDir()
	testutil.Tree{T: t, Root: src}.File("my-ca.crt", "ca").Dir("root").Chmod("root", 0o700).
		File("etc/conf", "new").Symlink("bin", "usr/bin").File("lib", "not a dir")
	img := t.TempDir()
	testutil.Tree{T: t, Root: img}.File("etc/ssl/certs/a.crt", "a").Dir("root").Chmod("root", 0o755).
		File("etc/conf", "old").File("bin/sh", "sh").File("lib/libc.so", "c")
	ctx := context.Background()
	for _, dst := range []string{"/etc/ssl/certs/", "/etc/ssl/certs"} {
		items := []copyItem{{src: filepath.Join(src, "my-ca.crt"), dst: dst, replace: true, into: true}}
		if err := copyInto(ctx, img, items); err != nil {
			t.Fatalf("host copy to %s: %v", dst, err)
		}
		if data, err := os.ReadFile(filepath.Join(img, "etc/ssl/certs/my-ca.crt")); err != nil || string(data) != "ca" {
			t.Errorf("host copy to %s: my-ca.crt is not in the dir: %q %v", dst, data, err)
		}
		if _, err := os.Stat(filepath.Join(img, "etc/ssl/certs/a.crt")); err != nil {
			t.Errorf("host copy to %s took the dir's other files: %v", dst, err)
		}
	}
	items := []copyItem{
		{src: filepath.Join(src, "root"), dst: "/root", fromRootfs: src, replace: true},
		{src: filepath.Join(src, "etc/conf"), dst: "/etc/conf", fromRootfs: src, replace: true},
		{src: filepath.Join(src, "bin"), dst: "/bin", fromRootfs: src, replace: true},
	}
	if err := copyInto(ctx, img, items); err != nil {
		t.Fatalf("replace: %v", err)
	}
	if st, err := os.Stat(filepath.Join(img, "root")); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("replace: /root's mode is not the source's 0700: %v %v", st.Mode(), err)
	}
	if data, _ := os.ReadFile(filepath.Join(img, "etc/conf")); string(data) != "new" {
		t.Errorf("replace: /etc/conf is %q, want the source's", data)
	}
	if target, err := os.Readlink(filepath.Join(img, "bin")); err != nil || target != "usr/bin" {
		t.Errorf("replace: /bin is not the source's symlink: %q %v", target, err)
	}
	err := copyInto(ctx, img, []copyItem{{src: filepath.Join(src, "lib"), dst: "/lib", fromRootfs: src, replace: true}})
	if err == nil || !strings.Contains(err.Error(), "/lib") {
		t.Errorf("replace of a directory by a file: %v, want an error naming /lib", err)
	}
	if _, err := os.Stat(filepath.Join(img, "lib/libc.so")); err != nil {
		t.Errorf("the refused replace lost /lib's files: %v", err)
	}
}
