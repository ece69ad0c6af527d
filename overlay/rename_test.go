package overlay

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
)

// renameCase is one rename in a union: the layers it starts from, the
// rename, and what it must leave. Lowers and upper are built on disk
// before the union opens, so the upper can start in any state another
// writer (the kernel, fuse-overlayfs) may have left it.
type renameCase struct {
	name     string
	lower    func(testutil.Tree)
	upper    func(testutil.Tree) // nil: an empty upper
	from, to string
	flags    uint
	err      error
	merged   []string // the whole merged view after
	onDisk   []string // the whole upper after
}

const opaqueY = " [trusted.overlay.opaque=y]"

var renameCases = []renameCase{
	{
		name:  "upper file to a new name",
		lower: func(l testutil.Tree) { l.Dir("d") },
		upper: func(u testutil.Tree) { u.File("a", "A") },
		from:  "a", to: "b",
		merged: []string{`b f 644 "A"`, "d d 755"},
		onDisk: []string{`b f 644 "A"`}, // no whiteout: the lowers never had a
	},
	{
		name:  "lower file to a new name: copied up, whiteout at the old name",
		lower: func(l testutil.Tree) { l.File("a", "A").Chmod("a", 0o640) },
		from:  "a", to: "b",
		merged: []string{`b f 640 "A"`},
		onDisk: []string{"a wh", `b f 640 "A"`},
	},
	{
		name:  "upper file over an upper file",
		upper: func(u testutil.Tree) { u.File("a", "A").File("b", "B") },
		from:  "a", to: "b",
		merged: []string{`b f 644 "A"`},
		onDisk: []string{`b f 644 "A"`},
	},
	{
		name:  "upper file over a lower-only file",
		lower: func(l testutil.Tree) { l.File("b", "B") },
		upper: func(u testutil.Tree) { u.File("a", "A") },
		from:  "a", to: "b",
		merged: []string{`b f 644 "A"`},
		onDisk: []string{`b f 644 "A"`},
	},
	{
		name:  "lower file over a lower file",
		lower: func(l testutil.Tree) { l.File("a", "A").File("b", "B") },
		from:  "a", to: "b",
		merged: []string{`b f 644 "A"`},
		onDisk: []string{"a wh", `b f 644 "A"`},
	},
	{
		name:  "lower file over a whiteout",
		lower: func(l testutil.Tree) { l.File("a", "A").File("b", "B") },
		upper: func(u testutil.Tree) { u.Whiteout("b") },
		from:  "a", to: "b",
		merged: []string{`b f 644 "A"`},
		onDisk: []string{"a wh", `b f 644 "A"`},
	},
	{
		name:  "lower file into a lower-only dir: the dir is copied up, not opaque",
		lower: func(l testutil.Tree) { l.File("a", "A").File("d/x", "X").Chmod("d", 0o750) },
		from:  "a", to: "d/a",
		merged: []string{"d d 750", `d/a f 644 "A"`, `d/x f 644 "X"`},
		onDisk: []string{"a wh", "d d 750", `d/a f 644 "A"`},
	},
	{
		name:  "lower symlink to a new name",
		lower: func(l testutil.Tree) { l.Symlink("s", "/etc/target") },
		from:  "s", to: "t",
		merged: []string{"t l -> /etc/target"},
		onDisk: []string{"s wh", "t l -> /etc/target"},
	},
	{
		name:  "lower hardlink: the moved name is copied up alone",
		lower: func(l testutil.Tree) { l.File("a", "A").Link("b", "a") },
		from:  "a", to: "c",
		merged: []string{`b f 644 "A"`, `c f 644 "A"`},
		onDisk: []string{"a wh", `c f 644 "A"`},
	},
	{
		name:  "upper-only dir to a new name",
		upper: func(u testutil.Tree) { u.File("n/f", "F") },
		from:  "n", to: "m",
		merged: []string{"m d 755", `m/f f 644 "F"`},
		onDisk: []string{"m d 755", `m/f f 644 "F"`},
	},
	{
		name:  "upper-only dir into a lower dir that lacks the name: not opaque",
		lower: func(l testutil.Tree) { l.File("d/x", "X") },
		upper: func(u testutil.Tree) { u.File("n/f", "F") },
		from:  "n", to: "d/n",
		merged: []string{"d d 755", "d/n d 755", `d/n/f f 644 "F"`, `d/x f 644 "X"`},
		onDisk: []string{"d d 755", "d/n d 755", `d/n/f f 644 "F"`},
	},
	{
		name:  "lower dir: EXDEV, as overlayfs without redirect_dir",
		lower: func(l testutil.Tree) { l.File("d/x", "X") },
		from:  "d", to: "e",
		err: unix.EXDEV,
	},
	{
		name:  "empty lower dir: EXDEV too",
		lower: func(l testutil.Tree) { l.Dir("d") },
		from:  "d", to: "e",
		err: unix.EXDEV,
	},
	{
		name:  "merged dir: EXDEV",
		lower: func(l testutil.Tree) { l.File("d/x", "X") },
		upper: func(u testutil.Tree) { u.File("d/new", "N") },
		from:  "d", to: "e",
		err: unix.EXDEV,
	},
	{
		name:  "merged dir whose lower part is all whited out: still EXDEV",
		lower: func(l testutil.Tree) { l.File("d/x", "X") },
		upper: func(u testutil.Tree) { u.Whiteout("d/x") },
		from:  "d", to: "e",
		err: unix.EXDEV,
	},
	{
		name:  "opaque upper dir over a lower one moves, and leaves a whiteout",
		lower: func(l testutil.Tree) { l.File("d/x", "X") },
		upper: func(u testutil.Tree) { u.Opaque("d").File("d/y", "Y") },
		from:  "d", to: "e",
		merged: []string{"e d 755", `e/y f 644 "Y"`},
		onDisk: []string{"d wh", "e d 755" + opaqueY, `e/y f 644 "Y"`},
	},
	{
		name:  "opaque upper dir over a whiteout: exchanged with it",
		lower: func(l testutil.Tree) { l.File("d/x", "X").File("e/z", "Z") },
		upper: func(u testutil.Tree) { u.Opaque("d").File("d/y", "Y").Whiteout("e") },
		from:  "d", to: "e",
		merged: []string{"e d 755", `e/y f 644 "Y"`},
		onDisk: []string{"d wh", "e d 755" + opaqueY, `e/y f 644 "Y"`},
	},
	{
		name:  "upper-only dir over a whiteout of a lower dir: opaque, no whiteout left",
		lower: func(l testutil.Tree) { l.File("t/x", "X") },
		upper: func(u testutil.Tree) { u.File("n/f", "F").Whiteout("t") },
		from:  "n", to: "t",
		merged: []string{"t d 755", `t/f f 644 "F"`},
		onDisk: []string{"t d 755" + opaqueY, `t/f f 644 "F"`},
	},
	{
		name:  "dir over an empty lower-only dir: opaque",
		lower: func(l testutil.Tree) { l.Dir("t") },
		upper: func(u testutil.Tree) { u.File("n/f", "F") },
		from:  "n", to: "t",
		merged: []string{"t d 755", `t/f f 644 "F"`},
		onDisk: []string{"t d 755" + opaqueY, `t/f f 644 "F"`},
	},
	{
		name:  "dir over a dir empty only in the merged view: its whiteouts go, it is opaque",
		lower: func(l testutil.Tree) { l.File("t/x", "X").File("t/y", "Y") },
		upper: func(u testutil.Tree) { u.Whiteout("t/x").File("t/.wh.y", "").File("n/f", "F") },
		from:  "n", to: "t",
		merged: []string{"t d 755", `t/f f 644 "F"`},
		onDisk: []string{"t d 755" + opaqueY, `t/f f 644 "F"`},
	},
	{
		name:  "dir over an empty upper-only dir",
		upper: func(u testutil.Tree) { u.File("n/f", "F").Dir("t") },
		from:  "n", to: "t",
		merged: []string{"t d 755", `t/f f 644 "F"`},
		onDisk: []string{"t d 755", `t/f f 644 "F"`},
	},
	{
		name:  "dir over a dir with lower contents: ENOTEMPTY",
		lower: func(l testutil.Tree) { l.File("t/x", "X") },
		upper: func(u testutil.Tree) { u.Dir("n") },
		from:  "n", to: "t",
		err: unix.ENOTEMPTY,
	},
	{
		name:  "dir over a dir with upper contents: ENOTEMPTY",
		upper: func(u testutil.Tree) { u.Dir("n").File("t/y", "Y") },
		from:  "n", to: "t",
		err: unix.ENOTEMPTY,
	},
	{
		name:  "dir over its own parent: ENOTEMPTY",
		upper: func(u testutil.Tree) { u.Dir("t/n") },
		from:  "t/n", to: "t",
		err: unix.ENOTEMPTY,
	},
	{
		name:  "file over a dir: EISDIR",
		lower: func(l testutil.Tree) { l.File("a", "A").Dir("t") },
		from:  "a", to: "t",
		err: unix.EISDIR,
	},
	{
		name:  "dir over a file: ENOTDIR",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		upper: func(u testutil.Tree) { u.Dir("n") },
		from:  "n", to: "a",
		err: unix.ENOTDIR,
	},
	{
		name:  "dir into its own subtree: EINVAL",
		upper: func(u testutil.Tree) { u.Dir("n/sub") },
		from:  "n", to: "n/sub/n",
		err: unix.EINVAL,
	},
	{
		name:  "a missing name: ENOENT",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		from:  "nothing", to: "b",
		err: unix.ENOENT,
	},
	{
		name:  "a whited-out name: ENOENT",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		upper: func(u testutil.Tree) { u.Whiteout("a") },
		from:  "a", to: "b",
		err: unix.ENOENT,
	},
	{
		name:  "a lower file onto itself: nothing, and no copy-up",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		from:  "a", to: "a",
	},
	{
		name:  "a lower dir onto itself: nothing, not EXDEV",
		lower: func(l testutil.Tree) { l.File("d/x", "X") },
		from:  "d", to: "d",
	},
	{
		name:  "onto itself with NOREPLACE: EEXIST",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		from:  "a", to: "a", flags: unix.RENAME_NOREPLACE,
		err: unix.EEXIST,
	},
	{
		name:  "NOREPLACE over a lower file: EEXIST",
		lower: func(l testutil.Tree) { l.File("a", "A").File("b", "B") },
		from:  "a", to: "b", flags: unix.RENAME_NOREPLACE,
		err: unix.EEXIST,
	},
	{
		name:  "NOREPLACE over a whited-out name: free in the merged view",
		lower: func(l testutil.Tree) { l.File("a", "A").File("b", "B") },
		upper: func(u testutil.Tree) { u.Whiteout("b") },
		from:  "a", to: "b", flags: unix.RENAME_NOREPLACE,
		merged: []string{`b f 644 "A"`},
		onDisk: []string{"a wh", `b f 644 "A"`},
	},
	{
		name:  "EXCHANGE of two lower files: both copied up, no whiteouts",
		lower: func(l testutil.Tree) { l.File("a", "A").File("b", "B").Chmod("b", 0o600) },
		from:  "a", to: "b", flags: unix.RENAME_EXCHANGE,
		merged: []string{`a f 600 "B"`, `b f 644 "A"`},
		onDisk: []string{`a f 600 "B"`, `b f 644 "A"`},
	},
	{
		name:  "EXCHANGE of an upper dir and a lower file: the dir is opaque where the lower had the file",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		upper: func(u testutil.Tree) { u.File("n/f", "F") },
		from:  "n", to: "a", flags: unix.RENAME_EXCHANGE,
		merged: []string{"a d 755", `a/f f 644 "F"`, `n f 644 "A"`},
		onDisk: []string{"a d 755" + opaqueY, `a/f f 644 "F"`, `n f 644 "A"`},
	},
	{
		name:  "EXCHANGE with a missing name: ENOENT",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		from:  "a", to: "b", flags: unix.RENAME_EXCHANGE,
		err: unix.ENOENT,
	},
	{
		name:  "EXCHANGE with a lower dir: EXDEV",
		lower: func(l testutil.Tree) { l.File("a", "A").File("d/x", "X") },
		from:  "a", to: "d", flags: unix.RENAME_EXCHANGE,
		err: unix.EXDEV,
	},
	{
		name:  "EXCHANGE with its own parent: EINVAL",
		upper: func(u testutil.Tree) { u.File("n/f", "F") },
		from:  "n", to: "n/f", flags: unix.RENAME_EXCHANGE,
		err: unix.EINVAL,
	},
	{
		name:  "RENAME_WHITEOUT from a caller: EINVAL",
		lower: func(l testutil.Tree) { l.File("a", "A") },
		from:  "a", to: "b", flags: unix.RENAME_WHITEOUT,
		err: unix.EINVAL,
	},
	{
		name:  "lower file into an opaque dir: no whiteout inside it",
		lower: func(l testutil.Tree) { l.File("a", "A").File("o/a", "old") },
		upper: func(u testutil.Tree) { u.Opaque("o") },
		from:  "a", to: "o/a",
		merged: []string{"o d 755", `o/a f 644 "A"`},
		onDisk: []string{"a wh", "o d 755" + opaqueY, `o/a f 644 "A"`},
	},
	{
		name:  "within an opaque dir, over a name its lower has: no whiteout left behind",
		lower: func(l testutil.Tree) { l.File("o/x", "old").File("o/y", "old") },
		upper: func(u testutil.Tree) { u.Opaque("o").File("o/x", "X") },
		from:  "o/x", to: "o/z",
		merged: []string{"o d 755", `o/z f 644 "X"`},
		onDisk: []string{"o d 755" + opaqueY, `o/z f 644 "X"`},
	},
	{
		name:  "within a dir opaque by a .wh..wh..opq marker",
		lower: func(l testutil.Tree) { l.File("o/x", "old") },
		upper: func(u testutil.Tree) { u.File("o/.wh..wh..opq", "").File("o/x", "X") },
		from:  "o/x", to: "o/z",
		merged: []string{"o d 755", `o/z f 644 "X"`},
		onDisk: []string{"o d 755", `o/.wh..wh..opq f 644 ""`, `o/z f 644 "X"`},
	},
	{
		name:  "over a .wh. whiteout file of another writer",
		lower: func(l testutil.Tree) { l.File("a", "A").File("b", "B") },
		upper: func(u testutil.Tree) { u.File(".wh.b", "").File("c", "C") },
		from:  "c", to: "b",
		merged: []string{`a f 644 "A"`, `b f 644 "C"`},
		// The .wh.b file stays: a real b beside it wins (ReadDir's rule).
		onDisk: []string{`.wh.b f 644 ""`, `b f 644 "C"`},
	},
}

// TestRename runs every shape of rename: the error, the merged view
// after (through the union's own read operations), the upper's on-disk
// format after, and lowers untouched. A failed rename changes nothing.
func TestRename(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range renameCases {
		t.Run(c.name, func(t *testing.T) {
			l := newLayers(t, 1)
			if c.lower != nil {
				c.lower(l.lowers[0])
			}
			if c.upper != nil {
				c.upper(l.upper)
			}
			l.lowersUntouched(t)
			u := l.open(t, UnionOptions{})
			mergedBefore, upperBefore := mergedView(t, u), snapshot(t, l.upper.Root, false)
			err := u.Rename(c.from, c.to, c.flags)
			if err != c.err {
				t.Fatalf("Rename(%q, %q, %#x) = %v, want %v", c.from, c.to, c.flags, err, c.err)
			}
			wantMerged, wantUpper := c.merged, c.onDisk
			if c.err != nil || c.from == c.to {
				wantMerged, wantUpper = mergedBefore, upperBefore
			}
			if got := mergedView(t, u); !slices.Equal(got, wantMerged) {
				t.Errorf("merged view: %s", diffLines(got, wantMerged))
			}
			if got := snapshot(t, l.upper.Root, false); !slices.Equal(got, wantUpper) {
				t.Errorf("upper on disk: %s", diffLines(got, wantUpper))
			}
			// A fresh union over the same dirs sees the same: nothing of
			// the result lives only in the first one's caches.
			if c.err == nil {
				fresh := l.open(t, UnionOptions{})
				if got := mergedView(t, fresh); !slices.Equal(got, wantMerged) {
					t.Errorf("merged view of a fresh union: %s", diffLines(got, wantMerged))
				}
			}
		})
	}
}

// TestRenameUnionWritten: renames in an upper the union itself wrote
// (empty when it opened, so it knows no .wh. files are there), after
// the operations that make whiteouts and opaque dirs.
func TestRenameUnionWritten(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].File("a", "A").File("t/x", "X").File("t/y", "Y").File("r/old", "O")
	l.lowersUntouched(t)
	u := l.open(t, UnionOptions{})
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// t: merged-empty, its lower entries whited out.
	step("unlink t/x", u.Unlink("t/x"))
	step("unlink t/y", u.Unlink("t/y"))
	// r: deleted and re-created, so opaque and in the lowers.
	step("unlink r/old", u.Unlink("r/old"))
	step("rmdir r", u.Rmdir("r"))
	_, err := u.Mkdir("r", 0o700, Owner{})
	step("mkdir r", err)
	_, err = u.Mkdir("n", 0o755, Owner{})
	step("mkdir n", err)
	fd, _, err := u.Create("n/f", unix.O_WRONLY, 0o644, Owner{})
	step("create n/f", err)
	unix.Write(fd, []byte("F"))
	unix.Close(fd)

	if err := u.Rename("r", "gone", 0); err != nil {
		t.Fatalf("an opaque re-created dir must move: %v", err)
	}
	if err := u.Rename("n", "t", 0); err != nil {
		t.Fatalf("a dir over a merged-empty dir: %v", err)
	}
	if err := u.Rename("a", "t/a", unix.RENAME_NOREPLACE); err != nil {
		t.Fatal(err)
	}
	wantMerged := []string{"gone d 700", "t d 755", `t/a f 644 "A"`, `t/f f 644 "F"`}
	if got := mergedView(t, u); !slices.Equal(got, wantMerged) {
		t.Errorf("merged view: %s", diffLines(got, wantMerged))
	}
	wantUpper := []string{"a wh", "gone d 700" + opaqueY, "r wh", "t d 755" + opaqueY, `t/a f 644 "A"`, `t/f f 644 "F"`}
	if got := snapshot(t, l.upper.Root, false); !slices.Equal(got, wantUpper) {
		t.Errorf("upper on disk: %s", diffLines(got, wantUpper))
	}
	// The workdir is for staging only: nothing may stay in it.
	if ents, _ := os.ReadDir(l.work); len(ents) != 0 {
		t.Errorf("the workdir keeps %v", ents)
	}
}

// TestRenameReadOnly: a union without an upper refuses a rename and
// writes nothing.
func TestRenameReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayers(t, 1)
	l.lowers[0].File("a", "A")
	l.lowersUntouched(t)
	u, err := NewUnion(UnionOptions{Lowers: l.lowerDirs()})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Rename("a", "b", 0); err != unix.EROFS {
		t.Errorf("Rename on a read-only union: %v, want EROFS", err)
	}
	if _, err := os.Lstat(filepath.Join(l.lowers[0].Root, "b")); !os.IsNotExist(err) {
		t.Errorf("the lower got b: %v", err)
	}
}
