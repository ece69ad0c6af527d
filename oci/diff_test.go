package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/overlay"
)

var testEpoch = time.Unix(1700000000, 0).UTC()

// layerEntries commits upper over the lower layer dirs and renders the
// tar as one line per entry, in order.
func layerEntries(t *testing.T, upper string, lower overlay.Lower, opts layer.Options) []string {
	t.Helper()
	var buf bytes.Buffer
	if opts.Compression == "" {
		opts.Compression = layer.Uncompressed
	}
	if _, err := layer.Write(context.Background(), &buf, upper, lower, opts); err != nil {
		t.Fatal(err)
	}
	return renderTar(t, &buf)
}

func renderTar(t *testing.T, r io.Reader) []string {
	t.Helper()
	var out []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("%c %s %04o %d:%d", hdr.Typeflag, hdr.Name, hdr.Mode, hdr.Uid, hdr.Gid)
		switch hdr.Typeflag {
		case tar.TypeReg:
			data, _ := io.ReadAll(tr)
			line += fmt.Sprintf(" %q", data)
		case tar.TypeSymlink, tar.TypeLink:
			line += " -> " + hdr.Linkname
		case tar.TypeChar, tar.TypeBlock:
			line += fmt.Sprintf(" %d,%d", hdr.Devmajor, hdr.Devminor)
		}
		var xs []string
		for k, v := range hdr.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				xs = append(xs, x+"="+v)
			}
		}
		slices.Sort(xs)
		if len(xs) > 0 {
			line += " [" + strings.Join(xs, " ") + "]"
		}
		out = append(out, line)
	}
}

func dirs(t *testing.T, names ...string) []testutil.Tree {
	base := t.TempDir()
	var out []testutil.Tree
	for _, n := range names {
		p := filepath.Join(base, n)
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		out = append(out, testutil.Tree{T: t, Root: p})
	}
	return out
}

func assertEntries(t *testing.T, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("layer entries:\n got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func epochOpts() layer.Options {
	e := testEpoch
	return layer.Options{SourceDateEpoch: &e}
}

func TestMergedUsrIsTheSymlinkAlone(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("bin/sh", "sh").File("bin/ls", "ls").File("sbin/init", "init").Dir("usr/bin")
	// What the kernel leaves after `mv bin/* usr/bin; rm -rf bin; ln -s usr/bin bin`.
	upper.Symlink("bin", "usr/bin").File("usr/bin/sh", "sh").File("usr/bin/ls", "ls").
		Whiteout("sbin")
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), epochOpts())
	assertEntries(t, got,
		"0 .wh.sbin 0000 0:0 \"\"",
		"2 bin 0777 0:0 -> usr/bin",
		"5 usr/ 0755 0:0",
		"5 usr/bin/ 0755 0:0",
		"0 usr/bin/ls 0644 0:0 \"ls\"",
		"0 usr/bin/sh 0644 0:0 \"sh\"",
	)
}

func TestOpaqueDirBecomesExplicitWhiteouts(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("d/old", "old").File("d/same", "same").File("d/sub/deep", "deep").File("keep", "k")
	upper.Opaque("d").File("d/same", "same").File("d/new", "new").Dir("d/sub")
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), epochOpts())
	// d/same equals the lower's and stays out; d/sub is re-created empty,
	// so its lower child is whited out explicitly.
	assertEntries(t, got,
		"5 d/ 0755 0:0",
		"0 d/.wh.old 0000 0:0 \"\"",
		"0 d/new 0644 0:0 \"new\"",
		"5 d/sub/ 0755 0:0",
		"0 d/sub/.wh.deep 0000 0:0 \"\"",
	)

	opts := epochOpts()
	opts.OpaqueMarkers = true
	got = layerEntries(t, upper.Root, overlay.NewStack(lower.Root), opts)
	assertEntries(t, got,
		"5 d/ 0755 0:0",
		"0 d/.wh..wh..opq 0000 0:0 \"\"",
		"0 d/new 0644 0:0 \"new\"",
		"0 d/same 0644 0:0 \"same\"",
		"5 d/sub/ 0755 0:0",
	)
}

func TestWhiteoutsOnlyForWhatTheLowerHas(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "l1", "l2", "upper")
	l1, l2, upper := d[0], d[1], d[2]
	l1.File("etc/a", "a").File("etc/gone-in-l2", "x").File("only-l1", "1")
	l2.Whiteout("etc/gone-in-l2")
	upper.Whiteout("etc/a").Whiteout("etc/never-existed").Whiteout("etc/gone-in-l2").
		Whiteout("only-l1").File("etc/.wh.aufs-style", "")
	l1.File("etc/aufs-style", "y")
	got := layerEntries(t, upper.Root, overlay.NewStack(l1.Root, l2.Root), epochOpts())
	assertEntries(t, got,
		"0 .wh.only-l1 0000 0:0 \"\"",
		"5 etc/ 0755 0:0",
		"0 etc/.wh.a 0000 0:0 \"\"",
		"0 etc/.wh.aufs-style 0000 0:0 \"\"",
	)
}

func TestSpuriousCopyUpsVanish(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("a/same", "same").File("a/changed", "old").File("a/chmod", "c").Symlink("a/link", "x").
		Xattr("a/same", "user.k", "v")
	upper.File("a/same", "same").Xattr("a/same", "user.k", "v").
		File("a/changed", "new").File("a/chmod", "c").Chmod("a/chmod", 0o600).Symlink("a/link", "x")
	// a fuse-overlayfs copy-up after a failed removexattr: same everything.
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), epochOpts())
	assertEntries(t, got,
		"5 a/ 0755 0:0",
		"0 a/changed 0644 0:0 \"new\"",
		"0 a/chmod 0600 0:0 \"c\"",
	)
}

func TestMtimeCountsWithoutEpoch(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("f", "x")
	upper.File("f", "x")
	old := time.Unix(1000, 0)
	os.Chtimes(filepath.Join(lower.Root, "f"), old, old)
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), layer.Options{})
	if len(got) != 1 || !strings.HasPrefix(got[0], "0 f ") {
		t.Fatalf("a touched file must be emitted when no epoch clamps mtimes, got %q", got)
	}
	got = layerEntries(t, upper.Root, overlay.NewStack(lower.Root), epochOpts())
	assertEntries(t, got)
}

func TestHardlinksLinkToTheFirstPathWithFullMetadata(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "upper")
	upper := d[0]
	upper.File("b/file", "data").Chown("b/file", 7, 8).Chmod("b/file", 0o750).
		Link("a/link", "b/file").Link("c/link2", "b/file")
	var buf bytes.Buffer
	if _, err := layer.Write(context.Background(), &buf, upper.Root, nil, layer.Options{Compression: layer.Uncompressed}); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var got []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeDir {
			continue
		}
		got = append(got, fmt.Sprintf("%c %s->%s %o %d:%d size=%d", hdr.Typeflag, hdr.Name, hdr.Linkname, hdr.Mode, hdr.Uid, hdr.Gid, hdr.Size))
	}
	// The first path in walk order is the file; links carry the same
	// owner and mode, because appliers chown and chmod the link path.
	assertEntries(t, got,
		"0 a/link-> 750 7:8 size=4",
		"1 b/file->a/link 750 7:8 size=0",
		"1 c/link2->a/link 750 7:8 size=0",
	)
}

func TestXattrAllowlistAndOverrides(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "upper")
	upper := d[0]
	upper.File("f", "x").
		Xattr("f", "user.keep", "1").
		Xattr("f", "trusted.keep", "2").
		Xattr("f", "trusted.overlay.origin", "drop").
		Xattr("f", "user.overlay.origin", "drop").
		Xattr("f", "user.fuseoverlayfs.origin", "drop").
		Xattr("f", "user.containers.override_stat", "0:0:4755:file").
		File("dev", "").Xattr("dev", "user.containers.override_stat", "0:6:0660:block-8-1").
		File("old", "").Xattr("old", "user.fuseoverlayfs.override_stat", "5:5:0600")
	got := layerEntries(t, upper.Root, nil, epochOpts())
	assertEntries(t, got,
		"4 dev 0660 0:6 8,1",
		"0 f 4755 0:0 \"x\" [trusted.keep=2 user.keep=1]",
		"0 old 0600 5:5 \"\"",
	)
}

func TestSpecialFilesAndSockets(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "upper")
	upper := d[0]
	upper.Mknod("dev/null", unix.S_IFCHR|0o666, 1, 3).Mknod("dev/sda", unix.S_IFBLK|0o660, 8, 0).
		Mknod("run/fifo", unix.S_IFIFO|0o644, 0, 0)
	sock := filepath.Join(upper.Root, "run", "sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	var warned []string
	opts := epochOpts()
	opts.Warn = func(m string) { warned = append(warned, m) }
	got := layerEntries(t, upper.Root, nil, opts)
	assertEntries(t, got,
		"5 dev/ 0755 0:0",
		"3 dev/null 0666 0:0 1,3",
		"4 dev/sda 0660 0:0 8,0",
		"5 run/ 0755 0:0",
		"6 run/fifo 0644 0:0",
	)
	if len(warned) != 1 || !strings.Contains(warned[0], sock) {
		t.Errorf("want one warning naming the socket, got %q", warned)
	}
}

func TestLongAndNonUTF8Names(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "upper")
	long := strings.Repeat("n", 150)
	bad := "caf\xe9"
	d[0].File(long+"/"+long, "l").File(bad, "b")
	got := layerEntries(t, d[0].Root, nil, epochOpts())
	assertEntries(t, got,
		"0 "+bad+" 0644 0:0 \"b\"",
		"5 "+long+"/ 0755 0:0",
		"0 "+long+"/"+long+" 0644 0:0 \"l\"",
	)
}

func TestMtimesAreClampedAndWhole(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "upper")
	d[0].File("new", "n").File("old", "o")
	os.Chtimes(filepath.Join(d[0].Root, "old"), time.Unix(5, 999), time.Unix(5, 999))
	var buf bytes.Buffer
	if _, err := layer.Write(context.Background(), &buf, d[0].Root, nil, layer.Options{Compression: layer.Uncompressed, SourceDateEpoch: &testEpoch}); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		want := testEpoch
		if hdr.Name == "old" {
			want = time.Unix(5, 0)
		}
		if !hdr.ModTime.Equal(want) || len(hdr.PAXRecords) != 0 {
			t.Errorf("%s: mtime %v PAX %v, want %v and no PAX records", hdr.Name, hdr.ModTime, hdr.PAXRecords, want)
		}
	}
}

func TestRefusesRedirectAndReservedNames(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "redirect", "reserved")
	d[0].Dir("moved").Xattr("moved", "trusted.overlay.redirect", "/orig")
	_, err := layer.Write(context.Background(), io.Discard, d[0].Root, nil, layer.Options{})
	if err == nil || !strings.Contains(err.Error(), "redirect") || !strings.Contains(err.Error(), "moved") {
		t.Errorf("redirect upper: got %v, want an error naming the path and redirect_dir", err)
	}
	d[1].File("etc/.wh..", "")
	_, err = layer.Write(context.Background(), io.Discard, d[1].Root, nil, layer.Options{})
	if err == nil || !strings.Contains(err.Error(), ".wh..") {
		t.Errorf("reserved name: got %v, want an error naming it", err)
	}
}

func TestReproducibleAcrossThreads(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "upper")
	// Enough data for several compression blocks.
	for i := range 40 {
		content := strings.Repeat(fmt.Sprintf("line %d of file %d\n", i, i*7), 20000+i*100)
		d[0].File(fmt.Sprintf("dir%d/file%d", i%5, i), content)
	}
	for _, c := range []layer.Compression{layer.Gzip, layer.Zstd, layer.Uncompressed} {
		var digests []string
		for _, threads := range []int{1, 2, 8} {
			var buf bytes.Buffer
			l, err := layer.Write(context.Background(), &buf, d[0].Root, nil, layer.Options{Compression: c, Threads: threads, SourceDateEpoch: &testEpoch})
			if err != nil {
				t.Fatal(err)
			}
			digests = append(digests, l.Descriptor.Digest.String()+" "+l.DiffID.String())
			if c == layer.Gzip && !bytes.HasPrefix(buf.Bytes(), []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0}) {
				t.Errorf("gzip header must carry no name and mtime 0, got % x", buf.Bytes()[:10])
			}
		}
		if digests[0] != digests[1] || digests[0] != digests[2] {
			t.Errorf("%s: digests differ by thread count: %q", c, digests)
		}
	}
}
