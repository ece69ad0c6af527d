// Package testutil holds helpers shared by the unit tests of layerfs's
// packages: building layer dirs with real markers (which needs root), and
// the one skip rule (Unavailable, RequireRoot, RequireTool: a test whose
// machine lacks something skips, and fails instead when CI is set).
package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot fails under CI and skips elsewhere when not running as root:
// whiteout devices and trusted.* xattrs need it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Unavailable(t, "this test needs root")
}

// Unavailable is the one skip rule: a test whose machine lacks what it
// needs (a tool, a filesystem feature, a mount) fails under CI, where the
// machine must have it, and skips elsewhere, saying why.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set, and "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireTool fails under CI and skips elsewhere when a program is missing.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	Unavailable(t, "%s is not installed", name)
	return ""
}

// Tree builds files under a root dir, failing the test on any error.
type Tree struct {
	T    testing.TB
	Root string
}

func (tr Tree) path(p string) string {
	full := filepath.Join(tr.Root, p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		tr.T.Fatal(err)
	}
	return full
}

func (tr Tree) check(err error) {
	tr.T.Helper()
	if err != nil {
		tr.T.Fatal(err)
	}
}

// File writes a regular file with mode 0644.
func (tr Tree) File(p, content string) Tree {
	tr.check(os.WriteFile(tr.path(p), []byte(content), 0o644))
	return tr
}

// Dir creates a directory.
func (tr Tree) Dir(p string) Tree {
	tr.check(os.MkdirAll(filepath.Join(tr.Root, p), 0o755))
	return tr
}

// Symlink creates p pointing at target.
func (tr Tree) Symlink(p, target string) Tree {
	tr.check(os.Symlink(target, tr.path(p)))
	return tr
}

// Whiteout creates the kernel's whiteout, a 0:0 character device.
func (tr Tree) Whiteout(p string) Tree {
	tr.check(unix.Mknod(tr.path(p), unix.S_IFCHR|0o600, 0))
	return tr
}

// Opaque marks a directory opaque the kernel's way.
func (tr Tree) Opaque(p string) Tree {
	tr.Dir(p)
	tr.check(unix.Lsetxattr(filepath.Join(tr.Root, p), "trusted.overlay.opaque", []byte("y"), 0))
	return tr
}

// Xattr sets an extended attribute.
func (tr Tree) Xattr(p, name, value string) Tree {
	tr.check(unix.Lsetxattr(filepath.Join(tr.Root, p), name, []byte(value), 0))
	return tr
}

// Chmod sets the mode bits, setuid/setgid/sticky included (os.Chmod
// would want them as os.ModeSetuid and friends).
func (tr Tree) Chmod(p string, mode uint32) Tree {
	tr.check(unix.Chmod(filepath.Join(tr.Root, p), mode))
	return tr
}

// Chown sets the owner.
func (tr Tree) Chown(p string, uid, gid int) Tree {
	tr.check(os.Lchown(filepath.Join(tr.Root, p), uid, gid))
	return tr
}

// Link makes p a hardlink of target.
func (tr Tree) Link(p, target string) Tree {
	tr.check(os.Link(filepath.Join(tr.Root, target), tr.path(p)))
	return tr
}

// Mknod creates a device or fifo.
func (tr Tree) Mknod(p string, mode uint32, major, minor uint32) Tree {
	full := tr.path(p)
	tr.check(unix.Mknod(full, mode, int(unix.Mkdev(major, minor))))
	tr.check(unix.Fchmodat(unix.AT_FDCWD, full, mode&07777, 0)) // past the umask
	return tr
}

// CopyTestBinary copies the running test binary into dir, executable by
// anyone, and returns its path: go test keeps it in a 0700 directory that
// another user, or a sandbox covering /tmp, cannot reach.
func CopyTestBinary(t testing.TB, dir string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, filepath.Base(exe))
	if err := os.WriteFile(p, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
