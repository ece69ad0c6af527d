package overlay

import (
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// TestReservedNames: a name with the whiteout prefix is a marker in the
// layer format, so the union can neither make one (the object would
// vanish from listings, delete the lower object it names, and commit as
// a whiteout) nor serve one a marker left in the upper. fuse-overlayfs
// refuses to create them with EINVAL too.
func TestReservedNames(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].File("a", "A").File("b", "B").File("d/x", "X").File("d/y", "Y")
	l.upper.File("d/.wh.x", "").File("d/.wh..wh..opq", "").File("d/y", "new y")
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	mergedBefore, upperBefore := mergedView(t, u), snapshot(t, l.upper.Root, false)

	for _, rel := range []string{"d/.wh.x", "d/.wh..wh..opq", ".wh.a"} {
		if o, err := u.Lookup(rel); err != unix.ENOENT {
			t.Errorf("Lookup(%q) = %s, %v; want ENOENT: a marker is never visible", rel, o.Where(), err)
		}
	}
	creates := map[string]func(rel string) error{
		"Create": func(rel string) error {
			fd, _, err := u.Create(rel, unix.O_WRONLY, 0o644, Owner{})
			if err == nil {
				unix.Close(fd)
			}
			return err
		},
		"Mkdir":   func(rel string) error { _, err := u.Mkdir(rel, 0o755, Owner{}); return err },
		"Mknod":   func(rel string) error { _, err := u.Mknod(rel, unix.S_IFIFO|0o644, 0, Owner{}); return err },
		"Symlink": func(rel string) error { _, err := u.Symlink("a", rel, Owner{}); return err },
		"Link":    func(rel string) error { _, err := u.Link("a", rel); return err },
		"Rename":  func(rel string) error { return u.Rename("a", rel, 0) },
		"Rename NOREPLACE": func(rel string) error {
			return u.Rename("a", rel, unix.RENAME_NOREPLACE)
		},
	}
	for what, op := range creates {
		for _, rel := range []string{".wh.b", ".wh.new", ".wh..wh..opq", "d/.wh.y"} {
			if err := op(rel); err != unix.EINVAL {
				t.Errorf("%s(%q) = %v, want EINVAL", what, rel, err)
			}
		}
	}
	if err := u.Rename("d/.wh.x", "z", 0); err != unix.ENOENT {
		t.Errorf("Rename of a marker = %v, want ENOENT", err)
	}
	if got := mergedView(t, u); !slices.Equal(got, mergedBefore) {
		t.Errorf("merged view: %s", diffLines(got, mergedBefore))
	}
	if got := snapshot(t, l.upper.Root, false); !slices.Equal(got, upperBefore) {
		t.Errorf("upper on disk: %s", diffLines(got, upperBefore))
	}
}
