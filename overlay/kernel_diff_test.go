package overlay

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// fsOp is one operation of a differential sequence, done the same way on
// the kernel's overlayfs and on a Union.
type fsOp struct {
	kind  string // write, mkdir, unlink, rmdir, rename, symlink, chmod
	a, b  string // paths (symlink: a is the target)
	flags uint
	mode  uint32
}

func (o fsOp) String() string {
	s := o.kind + " " + o.a
	if o.b != "" {
		s += " " + o.b
	}
	if o.flags != 0 {
		s += fmt.Sprintf(" flags=%#x", o.flags)
	}
	if o.mode != 0 {
		s += fmt.Sprintf(" %o", o.mode)
	}
	return s
}

func write(p, data string) fsOp           { return fsOp{kind: "write", a: p, b: data} }
func mkdir(p string) fsOp                 { return fsOp{kind: "mkdir", a: p} }
func unlink(p string) fsOp                { return fsOp{kind: "unlink", a: p} }
func rmdir(p string) fsOp                 { return fsOp{kind: "rmdir", a: p} }
func rename(a, b string, flags uint) fsOp { return fsOp{kind: "rename", a: a, b: b, flags: flags} }
func symlink(target, p string) fsOp       { return fsOp{kind: "symlink", a: target, b: p} }
func chmod(p string, mode uint32) fsOp    { return fsOp{kind: "chmod", a: p, mode: mode} }
func kernelPath(mnt, rel string) string   { return filepath.Join(mnt, rel) }
func errString(err error) string          { return fmt.Sprint(err) }
func sameErr(a, b error) bool             { return errString(a) == errString(b) }
func kernelWrite(p string, data string) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	_, err = unix.Write(fd, []byte(data))
	return err
}

func (o fsOp) onKernel(mnt string) error {
	p := kernelPath(mnt, o.a)
	switch o.kind {
	case "write":
		return kernelWrite(p, o.b)
	case "mkdir":
		return unix.Mkdir(p, 0o755)
	case "unlink":
		return unix.Unlink(p)
	case "rmdir":
		return unix.Rmdir(p)
	case "rename":
		return unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, kernelPath(mnt, o.b), o.flags)
	case "symlink":
		return unix.Symlink(o.a, kernelPath(mnt, o.b))
	case "chmod":
		return unix.Chmod(p, o.mode)
	}
	panic(o.kind)
}

func (o fsOp) onUnion(u *Union) error {
	switch o.kind {
	case "write":
		var fd int
		var err error
		if _, lerr := u.Lookup(o.a); lerr == nil {
			fd, _, err = u.Open(o.a, unix.O_WRONLY|unix.O_TRUNC)
		} else {
			fd, _, err = u.Create(o.a, unix.O_WRONLY, 0o644, Owner{})
		}
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_, err = unix.Write(fd, []byte(o.b))
		return err
	case "mkdir":
		_, err := u.Mkdir(o.a, 0o755, Owner{})
		return err
	case "unlink":
		return u.Unlink(o.a)
	case "rmdir":
		return u.Rmdir(o.a)
	case "rename":
		return u.Rename(o.a, o.b, o.flags)
	case "symlink":
		_, err := u.Symlink(o.a, o.b, Owner{})
		return err
	case "chmod":
		_, err := u.Setattr(o.a, Attr{Mode: &o.mode})
		return err
	}
	panic(o.kind)
}

// kernelOverlay mounts the kernel's overlayfs over lowers (base first)
// with an upper of its own, in the configuration whose uppers a layer
// can express: no redirect_dir, no metacopy, no index; trusted.* xattrs
// (not userxattr), as root.
func kernelOverlay(t *testing.T, lowers []string) (mnt, upper string) {
	t.Helper()
	base := t.TempDir()
	upper, work, mnt := filepath.Join(base, "upper"), filepath.Join(base, "work"), filepath.Join(base, "mnt")
	for _, d := range []string{upper, work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	top := slices.Clone(lowers)
	slices.Reverse(top)
	opts := "lowerdir=" + strings.Join(top, ":") + ",upperdir=" + upper + ",workdir=" + work + ",redirect_dir=off,metacopy=off,index=off"
	if err := unix.Mount("overlay", mnt, "overlay", 0, opts); err != nil {
		testutil.Unavailable(t, "the kernel's overlayfs does not mount here: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt, upper
}

// TestRenameMatchesKernelOverlayfs runs sequences of operations, renames
// in every shape among them, on the kernel's overlayfs and on a Union
// over the same lowers. Each operation must fail or succeed alike, with
// the same errno, and the merged views after must be equal in names,
// types, modes, owners, contents, link targets and xattrs. Then a Union
// opened on the upper the kernel wrote must show what the kernel showed.
//
// Names with the whiteout prefix are left out: the kernel takes them as
// plain names, the union refuses them (a layer cannot hold them).
func TestRenameMatchesKernelOverlayfs(t *testing.T) {
	testutil.RequireRoot(t)
	cases := []struct {
		name string
		base func(testutil.Tree)
		top  func(testutil.Tree)
		ops  []fsOp
	}{
		{
			name: "files",
			base: func(l testutil.Tree) { l.File("a", "A").File("b", "B").File("c", "C").File("h1", "H").Link("h2", "h1") },
			ops: []fsOp{
				rename("a", "x", 0), rename("b", "c", 0), write("n", "N"), rename("n", "a", 0),
				rename("c", "c", 0), rename("x", "a", unix.RENAME_EXCHANGE), rename("missing", "y", 0),
				rename("a", "b", unix.RENAME_NOREPLACE), write("b", "again"), rename("b", "c", unix.RENAME_NOREPLACE),
				rename("h1", "h3", 0), write("h3", "changed"),
			},
		},
		{
			name: "dirs",
			base: func(l testutil.Tree) { l.File("d/x", "X").Dir("t").File("m/y", "Y").File("m/z", "Z").File("p/q", "Q") },
			ops: []fsOp{
				rename("d", "e", 0), rename("t", "u", 0), mkdir("n"), write("n/f", "F"), rename("n", "t", 0),
				mkdir("n2"), rename("n2", "m", 0), unlink("m/y"), rename("n2", "m", 0), unlink("m/z"),
				rename("n2", "m", 0), write("m/new", "new"), mkdir("n3"), rename("n3", "p/n3", 0),
				rename("t", "t/g", 0), rename("m", "p", 0), rename("p/q", "p/r", 0),
			},
		},
		{
			name: "type mismatches",
			base: func(l testutil.Tree) { l.File("a", "A").Dir("dd").Symlink("s", "a") },
			ops: []fsOp{
				mkdir("n"), rename("a", "dd", 0), rename("n", "a", 0), rename("dd", "dd/sub", 0),
				rename("n", "n/x", 0), rename("s", "dd", 0), rename("n", "s", 0), rename("s", "a", 0),
			},
		},
		{
			name: "exchange",
			base: func(l testutil.Tree) { l.File("a", "A").File("b", "B").File("d/x", "X").File("e/y", "Y") },
			ops: []fsOp{
				rename("a", "zz", unix.RENAME_EXCHANGE), mkdir("n"), write("n/f", "F"),
				rename("n", "a", unix.RENAME_EXCHANGE), rename("a", "d", unix.RENAME_EXCHANGE),
				rename("b", "e/y", unix.RENAME_EXCHANGE), rename("a", "a", unix.RENAME_EXCHANGE),
				rename("n", "a/f", unix.RENAME_EXCHANGE),
			},
		},
		{
			name: "deleted and re-created dirs",
			base: func(l testutil.Tree) { l.File("r/old", "O").File("r/sub/x", "X").File("s/y", "Y") },
			ops: []fsOp{
				unlink("r/sub/x"), rmdir("r/sub"), unlink("r/old"), rmdir("r"), mkdir("r"), write("r/new", "N"),
				rename("r", "q", 0), mkdir("r"), rename("q/new", "r/old", 0), rename("q", "s", 0),
				unlink("s/y"), rmdir("s"), rename("q", "s", 0), mkdir("r/sub"), write("r/sub/x", "new x"),
			},
		},
		{
			name: "two lowers",
			base: func(l testutil.Tree) { l.File("d/x", "X").File("g", "G").File("o/old", "O").File("f", "base f") },
			top: func(l testutil.Tree) {
				l.File("d/y", "Y").Whiteout("g").File("o/new", "N").Xattr("o", "trusted.overlay.opaque", "y").File("f", "top f")
			},
			ops: []fsOp{
				rename("d/x", "d/z", 0), rename("d/y", "y", 0), write("g", "G2"), rename("g", "d/g", 0),
				rename("o/new", "o/old", 0), rename("f", "o/f", 0), rename("d", "dd", 0), rename("o", "oo", 0),
			},
		},
		{
			name: "symlinks and modes",
			base: func(l testutil.Tree) { l.Symlink("s", "target").File("f", "F").Chmod("f", 0o600).File("d/x", "X") },
			ops: []fsOp{
				chmod("f", 0o4755), rename("f", "s", 0), symlink("../x", "l"), rename("l", "d/l", 0),
				chmod("d", 0o700), rename("d/x", "x", 0), rename("s", "d/s", unix.RENAME_NOREPLACE),
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			nl := 1
			if c.top != nil {
				nl = 2
			}
			l := newLayers(t, nl)
			c.base(l.lowers[0])
			if c.top != nil {
				c.top(l.lowers[1])
			}
			l.lowersUntouched(t)
			mnt, kupper := kernelOverlay(t, l.lowerDirs())
			u := l.open(t, UnionOptions{})
			for _, op := range c.ops {
				kerr, uerr := op.onKernel(mnt), op.onUnion(u)
				if !sameErr(kerr, uerr) {
					t.Errorf("%s: the kernel gives %v, the union %v", op, kerr, uerr)
				}
				t.Logf("%s: %v", op, kerr)
			}
			kview := snapshot(t, mnt, false)
			if got := mergedView(t, u); !slices.Equal(got, kview) {
				t.Errorf("the union's merged view differs from the kernel's (unexpected: only the union's):%s", diffLines(got, kview))
			}
			if err := unix.Unmount(mnt, 0); err != nil {
				t.Fatal(err)
			}
			ku, err := NewUnion(UnionOptions{Lowers: l.lowerDirs(), Upper: kupper, Work: l.work})
			if err != nil {
				t.Fatal(err)
			}
			defer ku.Close()
			if got := mergedView(t, ku); !slices.Equal(got, kview) {
				t.Errorf("a union on the kernel's upper shows what the kernel did not (unexpected: only the union's):%s", diffLines(got, kview))
			}
		})
	}
}
