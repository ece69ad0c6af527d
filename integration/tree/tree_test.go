package tree_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// build runs a shell script in a new temp dir and returns the dir.
func build(t *testing.T, script string) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("bash", "-c", "set -eu; umask 022\n"+script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("script: %v\n%s", err, out)
	}
	return dir
}

func snapshot(t *testing.T, dir string) tree.Tree {
	t.Helper()
	s, err := tree.Snapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const richTree = `
mkdir -p d/sub; chmod 0700 d; printf hello > d/f; chown 12:34 d/f; chmod 04755 d/f
ln d/f d/hard; ln -s ../d/f d/sym; ln -s /nonexistent dangling
mknod chr c 1 3; mknod blk b 7 1; mkfifo fifo
mkdir sticky; chmod 1777 sticky
printf x > "$(printf 'bad\377name')"
setfattr -n user.k -v v d/sub
setfattr -n trusted.overlay.opaque -v y d/sub
setfattr -n trusted.foo -v bar d/sub
setfacl -m u:1000:rx -d -m g:50:r d/sub
touch -h -d @1000000000 dangling d
`

func TestSnapshotRecordsEverything(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"setfattr", "setfacl", "mknod"} {
		testenv.NeedTool(t, tool)
	}
	s := snapshot(t, build(t, richTree))
	check := func(p string, ok func(e *tree.Entry) bool, what string) {
		t.Helper()
		e := s[p]
		if e == nil {
			t.Errorf("%q not recorded", p)
			return
		}
		if !ok(e) {
			t.Errorf("%q: want %s, got %+v", p, what, *e)
		}
	}
	check("d", func(e *tree.Entry) bool { return e.Type == tree.Dir && e.Mode == 0o700 && e.Mtime == 1000000000 }, "dir 0700 mtime 1e9")
	check("d/f", func(e *tree.Entry) bool {
		return e.Type == tree.File && e.Mode == 0o4755 && e.Uid == 12 && e.Gid == 34 && e.Size == 5 &&
			strings.Join(e.Links, ",") == "d/f,d/hard"
	}, "setuid file 12:34 size 5 linked with d/hard")
	check("d/sym", func(e *tree.Entry) bool { return e.Type == tree.Symlink && e.Link == "../d/f" && e.Links == nil }, "symlink ../d/f")
	check("dangling", func(e *tree.Entry) bool { return e.Type == tree.Symlink && e.Mtime == 1000000000 }, "symlink with its own mtime")
	check("chr", func(e *tree.Entry) bool { return e.Type == tree.Char && e.Major == 1 && e.Minor == 3 }, "char 1:3")
	check("blk", func(e *tree.Entry) bool { return e.Type == tree.Block && e.Major == 7 && e.Minor == 1 }, "block 7:1")
	check("fifo", func(e *tree.Entry) bool { return e.Type == tree.Fifo }, "fifo")
	check("sticky", func(e *tree.Entry) bool { return e.Mode == 0o1777 }, "mode 1777")
	check("bad\xffname", func(e *tree.Entry) bool { return e.Type == tree.File }, "file with a non-UTF-8 name")
	check("d/sub", func(e *tree.Entry) bool {
		_, overlay := e.Xattrs["trusted.overlay.opaque"]
		return string(e.Xattrs["user.k"]) == "v" && string(e.Xattrs["trusted.foo"]) == "bar" && !overlay &&
			len(e.Xattrs["system.posix_acl_access"]) > 0 && len(e.Xattrs["system.posix_acl_default"]) > 0
	}, "user.k, trusted.foo, both ACLs, no overlay xattr")
	if _, ok := s["."]; ok {
		t.Error("the root itself was recorded")
	}
}

func TestSparseAndDenseHashAlike(t *testing.T) {
	dir := build(t, `
truncate -s 64M sparse; printf abc | dd of=sparse bs=1 seek=50000000 conv=notrunc status=none
dd if=sparse of=dense bs=1M status=none
truncate -s 64M other; printf abd | dd of=other bs=1 seek=50000000 conv=notrunc status=none
truncate -s 64M shifted; printf abc | dd of=shifted bs=1 seek=50000001 conv=notrunc status=none
`)
	s := snapshot(t, dir)
	if s["sparse"].Digest != s["dense"].Digest {
		t.Error("a sparse file and its dense copy hash differently")
	}
	for _, p := range []string{"other", "shifted"} {
		if s["sparse"].Digest == s[p].Digest {
			t.Errorf("sparse and %s have different contents but hash alike", p)
		}
	}
}

func TestDiffReportsEachField(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "setfattr")
	want := snapshot(t, build(t, `
mkdir d; printf a > f; printf a > g; ln -s t l; printf a > h1; ln h1 h2; setfattr -n user.a -v 1 f
touch -d @1000000000 d f`))
	got := snapshot(t, build(t, `
mkdir d; chmod 0750 d; printf b > f; printf aa > g; ln -s u l; printf a > h1; printf a > h2; setfattr -n user.a -v 2 f
printf x > "$(printf '\377')"; touch -d @1000000001 d f; chown 5:6 g`))
	lines := tree.Diff(want, got, tree.Options{})
	all := strings.Join(lines, "\n")
	for _, w := range []string{
		`"d": mode: want 0755, got 0750`,
		`"d": mtime: want 2001-09-09T01:46:40Z, got 2001-09-09T01:46:41Z`,
		`"f": content:`,
		`"f": xattr user.a: want "1", got "2"`,
		`"g": owner: want 0:0, got 5:6`,
		`"g": size: want 1, got 2`,
		`"l": target: want "t", got "u"`,
		`"h1": hardlinks: want ["h1" "h2"], got none`,
		`"\xff": unexpected file`,
	} {
		if !strings.Contains(all, w) {
			t.Errorf("diff lacks %q; got:\n%s", w, all)
		}
	}
	noMtime := strings.Join(tree.Diff(want, got, tree.Options{IgnoreMtime: true}), "\n")
	if strings.Contains(noMtime, "mtime") {
		t.Errorf("IgnoreMtime still reports mtimes:\n%s", noMtime)
	}
	dirOnly := strings.Join(tree.Diff(want, got, tree.Options{IgnoreDirMtime: true}), "\n")
	if strings.Contains(dirOnly, `"d": mtime`) || !strings.Contains(dirOnly, `"f": mtime`) {
		t.Errorf("IgnoreDirMtime must skip dirs only:\n%s", dirOnly)
	}
	if d := tree.Diff(want, want, tree.Options{}); len(d) != 0 {
		t.Errorf("a tree differs from itself: %v", d)
	}
	missing := tree.Diff(got, want, tree.Options{})
	if !strings.Contains(strings.Join(missing, "\n"), `"\xff": missing`) {
		t.Errorf("reverse diff lacks the missing path: %v", missing)
	}
}

func TestSnapshotDoesNotFollowSymlinks(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	s := snapshot(t, dir)
	if len(s) != 1 || s["link"].Type != tree.Symlink {
		t.Errorf("want only the symlink, got %v", s.Paths())
	}
}

func TestDigestReaderMatchesFiles(t *testing.T) {
	dir := build(t, `
truncate -s 3M sparse; printf abc | dd of=sparse bs=1 seek=2000000 conv=notrunc status=none
printf 'small' > small; : > empty`)
	s := snapshot(t, dir)
	for _, p := range []string{"sparse", "small", "empty"} {
		f, err := os.Open(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		d, err := tree.DigestReader(f, s[p].Size)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if d != s[p].Digest {
			t.Errorf("%s: DigestReader %s, Snapshot %s", p, d, s[p].Digest)
		}
	}
}
