package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/view"
	"github.com/layerfs/layerfs/overlay"
)

// viewLines renders every path of v, one line each:
// PATH TYPE MODE UID:GID L<layer> [-> LINK] [links=...] [xattrs].
func viewLines(t *testing.T, v *view.View) []string {
	t.Helper()
	var out []string
	err := v.Walk(context.Background(), "/", func(e view.Entry) error {
		m := e.Meta
		line := fmt.Sprintf("%s %s %04o %d:%d L%d", e.Path, m.Type, m.Mode, m.UID, m.GID, e.Layer+1)
		if m.Type == overlay.TypeSymlink {
			line += " -> " + m.Link
		}
		if e.Links != nil {
			line += " links=" + strings.Join(e.Links, ",")
		}
		var xs []string
		for k, x := range m.Xattrs {
			xs = append(xs, k+"="+x)
		}
		slices.Sort(xs)
		if len(xs) > 0 {
			line += " [" + strings.Join(xs, " ") + "]"
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func openView(t *testing.T, img *Image) *view.View {
	t.Helper()
	v, err := view.Open(context.Background(), img, view.Options{Digests: true})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func catView(t *testing.T, v *view.View, p string) string {
	t.Helper()
	r, err := v.Open(context.Background(), p)
	if err != nil {
		t.Fatalf("open %s: %v", p, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return string(b)
}

func sameLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\ngot:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// Three layers committed from overlay uppers: whiteouts (one of a file
// whose hardlink must survive it), an opaque dir, a merged-usr symlink
// over a dir, a metadata-only change, symlinks through the merged-usr
// link and a loop.
func TestViewMergesCommittedLayers(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "l1", "l2", "l3")
	d[0].File("etc/a", "a").Chown("etc/a", 5, 6).Xattr("etc/a", "user.foo", "bar").Link("etc/a2", "etc/a").
		File("bin/sh", "sh1").Chmod("bin/sh", 0o4755).File("opt/d/x", "x").File("opt/d/keep", "k").
		Dir("usr/bin").File("var/old/f", "f")
	d[1].Whiteout("etc/a").Opaque("opt/d").File("opt/d/y", "y").Symlink("bin", "usr/bin").
		File("usr/bin/sh", "sh2").Whiteout("var/old")
	d[2].File("etc/new", "new").Symlink("etc/shlink", "../bin/sh").Symlink("etc/loop1", "loop2").Symlink("etc/loop2", "loop1").
		File("etc/a2", "a").Chown("etc/a2", 5, 6).Xattr("etc/a2", "user.foo", "bar").Chmod("etc/a2", 0o600)
	out := filepath.Join(t.TempDir(), "img")
	ref := mustRef(t, "oci:"+out+":t")
	for i := range d {
		lowers := []string{}
		for _, l := range d[:i] {
			lowers = append(lowers, l.Root)
		}
		commit(t, CommitOptions{Upper: d[i].Root, Lowers: lowers, Image: ref})
	}
	img, err := OpenImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	v := openView(t, img)

	sameLines(t, "merged view", viewLines(t, v), []string{
		"/ dir 0755 0:0 L1",
		"/bin symlink 0777 0:0 L2 -> usr/bin",
		"/etc dir 0755 0:0 L3",
		"/etc/a2 file 0600 5:6 L3 [user.foo=bar]",
		"/etc/loop1 symlink 0777 0:0 L3 -> loop2",
		"/etc/loop2 symlink 0777 0:0 L3 -> loop1",
		"/etc/new file 0644 0:0 L3",
		"/etc/shlink symlink 0777 0:0 L3 -> ../bin/sh",
		"/opt dir 0755 0:0 L2",
		"/opt/d dir 0755 0:0 L2",
		"/opt/d/y file 0644 0:0 L2",
		"/usr dir 0755 0:0 L2",
		"/usr/bin dir 0755 0:0 L2",
		"/usr/bin/sh file 0644 0:0 L2",
		"/var dir 0755 0:0 L2",
	})
	if got := catView(t, v, "/etc/shlink"); got != "sh2" {
		t.Errorf("cat /etc/shlink (through ../bin, the merged-usr link) = %q, want sh2", got)
	}
	if got := catView(t, v, "/bin/sh"); got != "sh2" {
		t.Errorf("cat /bin/sh = %q, want usr/bin/sh's sh2", got)
	}
	if got := catView(t, v, "etc/a2"); got != "a" {
		t.Errorf("cat etc/a2 = %q, want a", got)
	}
	st, err := v.Stat("/bin", true)
	if err != nil || st.Path != "/usr/bin" || st.Meta.Type != overlay.TypeDir {
		t.Errorf("stat /bin following links = %+v, %v; want the dir /usr/bin", st, err)
	}
	if ents, err := v.ReadDir("/bin"); err != nil || len(ents) != 1 || ents[0].Path != "/usr/bin/sh" {
		t.Errorf("readdir /bin = %+v, %v; want /usr/bin/sh alone", ents, err)
	}
	for _, p := range []string{"/opt/d/x", "/opt/d/keep", "/etc/a", "/var/old", "/var/old/f", "/etc/new/x", "/nope"} {
		_, err := v.Stat(p, false)
		if !errors.Is(err, fs.ErrNotExist) || !inputerr.Is(err) || !strings.Contains(err.Error(), p) {
			t.Errorf("stat %s: %v; want bad input naming it, wrapping fs.ErrNotExist", p, err)
		}
	}
	if _, err := v.Open(context.Background(), "/etc/loop1"); err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), "too many levels of symbolic links") {
		t.Errorf("open of a symlink loop: %v; want bad input, too many levels of symbolic links", err)
	}
	if _, err := v.Open(context.Background(), "/etc"); err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("open of a dir: %v; want bad input, not a regular file", err)
	}

	// The counts are the layers' own entries, counted here independently.
	counts := v.Counts()
	for i, l := range img.Manifest.Layers {
		f, err := os.Open(img.BlobFile(l.Digest))
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzipReader(mustRead(t, f))
		if err != nil {
			t.Fatal(err)
		}
		lines := renderTar(t, zr)
		wh, files := 0, 0
		for _, line := range lines {
			name := strings.Fields(line)[1]
			switch {
			case strings.HasPrefix(filepath.Base(name), ".wh."):
				wh++
			case line[0] == tar.TypeReg || line[0] == tar.TypeLink:
				files++
			}
		}
		if want := (view.LayerCount{Entries: len(lines), Files: files, Whiteouts: wh}); counts[i] != want {
			t.Errorf("layer %d counts %+v, want %+v (from %q)", i+1, counts[i], want, lines)
		}
	}
	if counts[1].Whiteouts < 3 {
		t.Errorf("layer 2 counts %d whiteouts; the test means it to have etc/a, var/old and the opaque dir's", counts[1].Whiteouts)
	}
}

func mustRead(t *testing.T, f *os.File) []byte {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Hardlinks in a layer share one object: the group is listed on each
// name, the bytes of every name are those of the first, and a later
// layer that replaces one name splits it off.
func TestViewHardlinkGroups(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "l1", "l2")
	d[0].File("a", "content").Chown("a", 7, 8).Chmod("a", 0o700).Link("b", "a").Link("sub/c", "a").File("z", "other")
	d[1].File("b", "B")
	out := filepath.Join(t.TempDir(), "img")
	ref := mustRef(t, "oci:"+out+":t")
	commit(t, CommitOptions{Upper: d[0].Root, Image: ref})
	img, err := OpenImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	v := openView(t, img)
	img.Close()
	sameLines(t, "one layer", viewLines(t, v)[1:], []string{
		"/a file 0700 7:8 L1 links=/a,/b,/sub/c",
		"/b file 0700 7:8 L1 links=/a,/b,/sub/c",
		"/sub dir 0755 0:0 L1",
		"/sub/c file 0700 7:8 L1 links=/a,/b,/sub/c",
		"/z file 0644 0:0 L1",
	})
	for _, p := range []string{"/a", "/b", "/sub/c"} {
		if got := catView(t, v, p); got != "content" {
			t.Errorf("cat %s = %q, want the group's content", p, got)
		}
		if st, _ := v.Stat(p, false); st.Nlink != 3 {
			t.Errorf("%s: nlink %d, want 3", p, st.Nlink)
		}
	}
	// The layer must really hold hardlink entries, or the above proves
	// nothing about them.
	f, err := os.Open(img.BlobFile(img.Manifest.Layers[0].Digest))
	if err != nil {
		t.Fatal(err)
	}
	zr, _ := gzipReader(mustRead(t, f))
	if lines := renderTar(t, zr); !slices.ContainsFunc(lines, func(l string) bool { return l[0] == tar.TypeLink }) {
		t.Fatalf("layer has no hardlink entry: %q", lines)
	}

	commit(t, CommitOptions{Upper: d[1].Root, Lowers: []string{d[0].Root}, Image: ref})
	img, err = OpenImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	v = openView(t, img)
	sameLines(t, "b replaced", viewLines(t, v)[1:], []string{
		"/a file 0700 7:8 L1 links=/a,/sub/c",
		"/b file 0644 0:0 L2",
		"/sub dir 0755 0:0 L1",
		"/sub/c file 0700 7:8 L1 links=/a,/sub/c",
		"/z file 0644 0:0 L1",
	})
	if got := catView(t, v, "/b"); got != "B" {
		t.Errorf("cat /b = %q, want B", got)
	}
}

func dirHdr(name string, mode int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: testEpoch}}
}

func regHdr(name, data string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: testEpoch}, data: data}
}

func linkHdr(typ byte, name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777, ModTime: testEpoch}}
}

// Layers that layerfs commit never writes but other tools do, merged as
// umoci applies them: names through a symlink of a lower layer, an
// opaque marker after an entry of its own layer, a whiteout of a
// directory this layer wrote into, a dir over a file, a hardlink to a
// lower layer's file, the root's own entry, a dir entry over a dir.
func TestViewAppliesLayersAsUnpackersDo(t *testing.T) {
	l1 := tarOf(t,
		dirHdr("usr/", 0o755), dirHdr("usr/bin/", 0o755), regHdr("usr/bin/x", "x"),
		linkHdr(tar.TypeSymlink, "bin", "usr/bin"),
		dirHdr("d/", 0o755), regHdr("d/keep", "k"), regHdr("d/old", "o"),
		dirHdr("w/", 0o755), regHdr("w/gone", "g"),
		regHdr("f", "f"))
	usr := dirHdr("usr/", 0o750)
	usr.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.k": "v"}
	l2 := tarOf(t,
		dirHdr("./", 0o700),
		usr,
		regHdr("bin/y", "y"),
		regHdr("d/new", "n"), regHdr("d/.wh..wh..opq", ""),
		regHdr("w/fresh", "fresh"), regHdr(".wh.w", ""),
		dirHdr("f/", 0o755), regHdr("f/g", "g"),
		linkHdr(tar.TypeLink, "h", "bin/x"),
		regHdr(".wh.nothing", ""))
	img := testImage(t, []layerBlob{{data: gzipBytes(t, l1)}, {data: l2}})
	v := openView(t, img)
	sameLines(t, "merged view", viewLines(t, v), []string{
		"/ dir 0700 0:0 L2",
		"/bin symlink 0777 0:0 L1 -> usr/bin",
		"/d dir 0755 0:0 L1",
		"/d/new file 0644 0:0 L2",
		"/f dir 0755 0:0 L2",
		"/f/g file 0644 0:0 L2",
		"/h file 0644 0:0 L2 links=/h,/usr/bin/x",
		"/usr dir 0750 0:0 L2 [user.k=v]",
		"/usr/bin dir 0755 0:0 L1",
		"/usr/bin/x file 0644 0:0 L1 links=/h,/usr/bin/x",
		"/usr/bin/y file 0644 0:0 L2",
		"/w dir 0755 0:0 L1",
		"/w/fresh file 0644 0:0 L2",
	})
	if got := catView(t, v, "/h"); got != "x" {
		t.Errorf("cat /h = %q, want x from layer 1", got)
	}
	if got := catView(t, v, "/bin/y"); got != "y" {
		t.Errorf("cat /bin/y = %q, want y", got)
	}

	for _, c := range []struct {
		name  string
		layer []byte
		want  string
	}{
		{"parent is a file", tarOf(t, regHdr("f/x", "x")), `parent "f" is a file: not a directory`},
		{"parent beneath a file", tarOf(t, regHdr("f/x/y", "y")), `not a directory`},
		{"hardlink to nothing", tarOf(t, linkHdr(tar.TypeLink, "l", "missing")), `hardlink to "missing"`},
		{"hardlink to a dir", tarOf(t, linkHdr(tar.TypeLink, "l", "usr")), `hardlink to "usr"`},
		{"hardlink to itself", tarOf(t, linkHdr(tar.TypeLink, "f", "f")), `hardlink to "f"`},
		{"bad whiteout", tarOf(t, regHdr("d/.wh..", "")), `invalid whiteout`},
	} {
		img := testImage(t, []layerBlob{{data: l1}, {data: c.layer}})
		_, err := view.Open(context.Background(), img, view.Options{})
		if err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "layer 2 of 2") {
			t.Errorf("%s: %v; want bad input naming layer 2 of 2 and %q", c.name, err, c.want)
		}
	}
}

// A layer whose content does not match its diff_id is refused, and a
// blob that changes after the view read it is caught when a file is read
// again.
func TestViewChecksContent(t *testing.T) {
	l1 := tarOf(t, regHdr("a", "aaaa"), regHdr("b", "bbbb"))
	img := testImage(t, []layerBlob{{data: l1, diffID: digest.Digest("sha256:" + strings.Repeat("0", 64))}})
	if _, err := view.Open(context.Background(), img, view.Options{}); err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("wrong diff_id: %v; want bad input, does not match", err)
	}
	if _, err := view.CountLayers(context.Background(), img); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("view.CountLayers with a wrong diff_id: %v", err)
	}

	// A truncated blob is a bad layer (exit 2), not a failed read.
	trunc := gzipBytes(t, tarOf(t, regHdr("a", strings.Repeat("a", 100000))))
	img = testImage(t, []layerBlob{{data: trunc[:len(trunc)/2], diffID: digest.FromBytes(nil)}})
	if _, err := view.Open(context.Background(), img, view.Options{}); err == nil || !inputerr.Is(err) || !strings.Contains(err.Error(), "layer 1 of 1") {
		t.Errorf("truncated layer: %v; want bad input naming layer 1 of 1", err)
	}

	img = testImage(t, []layerBlob{{data: l1}})
	v := openView(t, img)
	if got := catView(t, v, "/b"); got != "bbbb" {
		t.Fatalf("cat /b = %q", got)
	}
	swapped := tarOf(t, regHdr("a", "aaaa"), regHdr("b", "BBBB"))
	if len(swapped) != len(l1) {
		t.Fatal("the swapped layer must be as long as the original")
	}
	if err := os.WriteFile(img.BlobFile(img.Manifest.Layers[0].Digest), swapped, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := v.Open(context.Background(), "/b")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); err == nil || !strings.Contains(err.Error(), "content differs") {
		t.Errorf("reading a file whose blob changed: %v; want content differs", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := view.Open(ctx, img, view.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("view.Open with a cancelled context: %v", err)
	}
}

// view.Diff lists exactly what a layer changed: contents (also of the
// same size), modes, owners, link targets, xattrs, types; the tops of
// removed trees; every path of an added tree; mtimes only when asked.
func TestDiffViews(t *testing.T) {
	at := func(e tarEntry, mode int64, uid int, mtime time.Time) tarEntry {
		e.hdr.Mode, e.hdr.Uid, e.hdr.ModTime = mode, uid, mtime
		return e
	}
	xattr := func(e tarEntry, v string) tarEntry {
		e.hdr.PAXRecords = map[string]string{"SCHILY.xattr.user.x": v}
		return e
	}
	later := testEpoch.Add(time.Hour)
	l1 := tarOf(t,
		regHdr("same", "s"), regHdr("content", "aaaa"), regHdr("grown", "a"), regHdr("mode", "m"), regHdr("owner", "o"),
		regHdr("mtime", "t"), xattr(regHdr("xattr", "x"), "1"), linkHdr(tar.TypeSymlink, "link", "a"),
		dirHdr("gone/", 0o755), regHdr("gone/a", "a"), dirHdr("gone/sub/", 0o755), regHdr("gone/sub/b", "b"),
		dirHdr("dir2file/", 0o755), regHdr("dir2file/x", "x"),
		regHdr("file2dir", "f"),
		dirHdr("keep/", 0o755), regHdr("keep/old", "o"))
	l2 := tarOf(t,
		regHdr("content", "bbbb"), regHdr("grown", "ab"), at(regHdr("mode", "m"), 0o600, 0, testEpoch),
		at(regHdr("owner", "o"), 0o644, 9, testEpoch), at(regHdr("mtime", "t"), 0o644, 0, later),
		xattr(regHdr("xattr", "x"), "2"), linkHdr(tar.TypeSymlink, "link", "b"),
		regHdr(".wh.gone", ""),
		regHdr("dir2file", "now a file"),
		dirHdr("file2dir/", 0o755), regHdr("file2dir/in", "i"),
		dirHdr("new/", 0o755), dirHdr("new/sub/", 0o755), regHdr("new/sub/f", "f"),
		dirHdr("keep/", 0o755), regHdr("keep/.wh.old", ""), regHdr("keep/added", "a"))
	a := openView(t, testImage(t, []layerBlob{{data: l1}}))
	b := openView(t, testImage(t, []layerBlob{{data: l1}, {data: l2}}))
	render := func(cs []view.Change) []string {
		var out []string
		for _, c := range cs {
			out = append(out, fmt.Sprintf("%s %s %s", c.Kind, c.Path, strings.Join(c.Fields, ",")))
		}
		return out
	}
	want := []string{
		"changed /content content",
		"changed /dir2file type",
		"changed /file2dir type",
		"added /file2dir/in ",
		"removed /gone ",
		"changed /grown content",
		"added /keep/added ",
		"removed /keep/old ",
		"changed /link target",
		"changed /mode mode",
		"added /new ",
		"added /new/sub ",
		"added /new/sub/f ",
		"changed /owner owner",
		"changed /xattr xattrs",
	}
	got, err := view.Diff(context.Background(), a, b, view.DiffOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sameLines(t, "diff", render(got), want)

	got, _ = view.Diff(context.Background(), a, b, view.DiffOptions{Mtime: true})
	if !slices.Contains(render(got), "changed /mtime mtime") {
		t.Errorf("with Mtime, the mtime-only change is missing: %q", render(got))
	}
	if got, _ := view.Diff(context.Background(), b, b, view.DiffOptions{Mtime: true}); len(got) != 0 {
		t.Errorf("a view differs from itself: %q", render(got))
	}
	back, _ := view.Diff(context.Background(), b, a, view.DiffOptions{})
	if r := render(back); !slices.Contains(r, "added /gone ") || !slices.Contains(r, "added /gone/sub/b ") || !slices.Contains(r, "removed /new ") || slices.Contains(r, "removed /new/sub ") {
		t.Errorf("reverse diff: %q", r)
	}
}

// The view's merge must not depend on how many layers are read at once.
func TestViewManyLayers(t *testing.T) {
	var layers []layerBlob
	for i := range 12 {
		var es []tarEntry
		if i > 0 {
			es = append(es, regHdr(fmt.Sprintf(".wh.f%d", i-1), ""))
		}
		es = append(es, regHdr(fmt.Sprintf("f%d", i), strings.Repeat("x", i)), regHdr("top", fmt.Sprint(i)))
		layers = append(layers, layerBlob{data: gzipBytes(t, tarOf(t, es...))})
	}
	v := openView(t, testImage(t, layers))
	sameLines(t, "12 layers", viewLines(t, v)[1:], []string{"/f11 file 0644 0:0 L12", "/top file 0644 0:0 L12"})
	if got := catView(t, v, "top"); got != "11" {
		t.Errorf("cat top = %q, want 11", got)
	}
	var buf bytes.Buffer
	for _, c := range v.Counts() {
		fmt.Fprint(&buf, c.Entries, " ")
	}
	if got := buf.String(); got != "2 3 3 3 3 3 3 3 3 3 3 3 " {
		t.Errorf("entries per layer: %s", got)
	}
}
