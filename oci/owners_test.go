package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/oci/unpack"
	"github.com/layerfs/layerfs/overlay"
)

// Unprivileged, Apply records the owner of every entry, also where the
// tar names the applier's own ids and for parents the tar leaves out
// (root's), so that a squashing commit (a rootless build's) gives back
// exactly the tar's owners: an owner the tar chose is never mistaken for
// the applier's own. Only symlinks, which cannot carry a record, are
// squashed.
func TestApplyRootlessRecordsEveryOwner(t *testing.T) {
	testutil.RequireRoot(t) // to become nobody
	bin := helperBinary(t)
	base := openTempDir(t)
	mt := time.Unix(1e9, 0)
	data := tarOf(t,
		tarEntry{hdr: tar.Header{Name: "own", Typeflag: tar.TypeReg, Mode: 0o644, Uid: nobodyUID, Gid: nobodyGID, ModTime: mt}, data: "x"},
		tarEntry{hdr: tar.Header{Name: "owndir/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: nobodyUID, Gid: nobodyGID, ModTime: mt}},
		tarEntry{hdr: tar.Header{Name: "root", Typeflag: tar.TypeReg, Mode: 0o4755, ModTime: mt}, data: "r"},
		tarEntry{hdr: tar.Header{Name: "implicit/sub/f", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 1000, Gid: 1000, ModTime: mt}, data: "f"},
		tarEntry{hdr: tar.Header{Name: "fifo", Typeflag: tar.TypeFifo, Mode: 0o644, Uid: nobodyUID, Gid: nobodyGID, ModTime: mt}},
		tarEntry{hdr: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "own", ModTime: mt}},
	)
	tarFile := filepath.Join(base, "layer.tar")
	if err := os.WriteFile(tarFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "applied")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobodyUID, nobodyGID); err != nil {
		t.Fatal(err)
	}
	if out := applyAsNobody(bin)(t, tarFile, dir, 0); out.Err != "" || len(out.Warnings) > 0 {
		t.Fatalf("applying as nobody: %q, warnings %q", out.Err, out.Warnings)
	}
	for name, want := range map[string]string{
		"own":          "65534:65534:0644:file",
		"owndir":       "65534:65534:0755:dir",
		"root":         "0:0:4755:file",
		"implicit":     "0:0:0755:dir",
		"implicit/sub": "0:0:0755:dir",
		"implicit/f":   "",
		"fifo":         "65534:65534:0644:pipe",
	} {
		if name == "implicit/f" {
			name, want = "implicit/sub/f", "1000:1000:0600:file"
		}
		v, err := lgetxattr(filepath.Join(dir, name), overlay.XattrOverrideStat)
		if v != want {
			t.Errorf("%s: override %q (%v), want %q", name, v, err, want)
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf("fifo on disk: mode %o (%v), want the empty file that carries the record", st.Mode, err)
	}
	nobody := &overlay.Owner{UID: nobodyUID, GID: nobodyGID}
	opts := epochOpts()
	opts.SquashOwner = nobody
	assertEntries(t, layerEntries(t, dir, nil, opts),
		"6 fifo 0644 65534:65534",
		"5 implicit/ 0755 0:0",
		"5 implicit/sub/ 0755 0:0",
		`0 implicit/sub/f 0600 1000:1000 "f"`,
		"2 link 0777 0:0 -> own",
		`0 own 0644 65534:65534 "x"`,
		"5 owndir/ 0755 65534:65534",
		`0 root 4755 0:0 "r"`,
	)
}

// SquashOwner maps what the committed dir and a layer-dir lower own on
// disk without a record, uid and gid each; recorded owners stay. A copy
// identical to the lower's once both are squashed is no change.
func TestWriteLayerSquashOwner(t *testing.T) {
	testutil.RequireRoot(t)
	d := dirs(t, "lower", "upper")
	lower, upper := d[0], d[1]
	lower.File("same", "s").Chown("same", 5, 6).File("recorded-below", "r").Chown("recorded-below", 5, 6)
	upper.File("same", "s").Chown("same", 5, 6).
		File("recorded-below", "r").Chown("recorded-below", 5, 6).Xattr("recorded-below", overlay.XattrOverrideStat, "5:6:0644:file").
		File("made", "m").Chown("made", 5, 6).
		File("uid-only", "u").Chown("uid-only", 5, 9).
		File("chowned-to-self", "c").Chown("chowned-to-self", 5, 6).Xattr("chowned-to-self", overlay.XattrOverrideStat, "5:6:0644:file").
		File("chowned-to-root", "c").Chown("chowned-to-root", 5, 6).Xattr("chowned-to-root", overlay.XattrOverrideStat, "0:0:4755:file").
		Dir("d").Chown("d", 5, 6)
	for _, p := range []string{"same", "recorded-below"} {
		for _, tr := range d {
			os.Chtimes(filepath.Join(tr.Root, p), time.Unix(1e9, 0), time.Unix(1e9, 0))
		}
	}
	opts := epochOpts()
	opts.SquashOwner = &overlay.Owner{UID: 5, GID: 6}
	assertEntries(t, layerEntries(t, upper.Root, overlay.NewStack(lower.Root), opts),
		`0 chowned-to-root 4755 0:0 "c"`,
		`0 chowned-to-self 0644 5:6 "c"`,
		"5 d/ 0755 0:0",
		`0 made 0644 0:0 "m"`,
		`0 recorded-below 0644 5:6 "r"`,
		`0 uid-only 0644 0:9 "u"`,
	)
	// Without the squash, on-disk owners are written as they are.
	got := layerEntries(t, upper.Root, overlay.NewStack(lower.Root), epochOpts())
	if !slicesContains(got, `0 made 0644 5:6 "m"`) {
		t.Errorf("without SquashOwner: %q", got)
	}
}

func lgetxattr(p, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// A rootfs tar may be compressed, and holds no overlay markers: a .wh.
// name in it is a hostile-input error, not a deletion.
func TestApplyRootfsTar(t *testing.T) {
	plain := tarOf(t,
		tarEntry{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}},
		tarEntry{hdr: tar.Header{Name: "./etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		tarEntry{hdr: tar.Header{Name: "./etc/passwd", Typeflag: tar.TypeReg, Mode: 0o644}, data: "root:x:0:0::/:/bin/sh\n"},
	)
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(plain)
	gw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(plain)
	zw.Close()
	for name, data := range map[string][]byte{"plain": plain, "gzip": gz.Bytes(), "zstd": zs.Bytes()} {
		dir := t.TempDir()
		if _, err := unpack.Apply(context.Background(), bytes.NewReader(data), dir, unpack.Options{Rootfs: true}); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, "etc/passwd")); err != nil || !strings.HasPrefix(string(b), "root:") {
			t.Errorf("%s: etc/passwd %q %v", name, b, err)
		}
	}
	for _, marker := range []string{"./etc/.wh.shadow", "./etc/.wh..wh..opq"} {
		data := tarOf(t, tarEntry{hdr: tar.Header{Name: marker, Typeflag: tar.TypeReg, Mode: 0o644}})
		_, err := unpack.Apply(context.Background(), bytes.NewReader(data), t.TempDir(), unpack.Options{Rootfs: true})
		if !errors.Is(err, unpack.ErrHostile) || !inputerr.Is(err) || !strings.Contains(err.Error(), "rootfs tar") {
			t.Errorf("%s in a rootfs tar: %v, want a bad-input rejection", marker, err)
		}
		// As a layer, the same tar is a deletion.
		if _, err := unpack.Apply(context.Background(), bytes.NewReader(data), t.TempDir(), unpack.Options{}); err != nil {
			t.Errorf("%s in a layer: %v", marker, err)
		}
	}
}

// commit of a rootfs tar gives the layer commit of the same tree as a
// rootfs gives, over a base too, with --deletions; the temp dir it
// unpacked into is gone, and a bad tar writes nothing.
func TestCommitRootfsTar(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	rootfs := testutil.Tree{T: t, Root: filepath.Join(tmp, "rootfs")}.
		File("usr/bin/su", "su").Chmod("usr/bin/su", 0o4755).
		Dir("tmp").Chmod("tmp", 0o1777).
		File("home/u/.profile", "p").Chown("home/u/.profile", 1000, 1000).Chown("home/u", 1000, 1000).
		Symlink("bin", "usr/bin").Mknod("dev/null", unix.S_IFCHR|0o666, 1, 3)
	// The tar of the rootfs: what a commit of it as a rootfs writes.
	want, _ := writeLayerBytes(t, rootfs.Root, nil, layer.Options{Compression: layer.Uncompressed, Rootfs: true, SourceDateEpoch: epochOpts().SourceDateEpoch})
	for _, base := range []string{"", "base"} {
		out := filepath.Join(tmp, "out"+base)
		opts := CommitOptions{RootfsTar: bytes.NewReader(want), Image: mustRef(t, "oci:"+out+":t")}
		if base != "" {
			commit(t, CommitOptions{Upper: testutil.Tree{T: t, Root: filepath.Join(tmp, "b")}.File("old", "o").File("usr/bin/su", "su").Chmod("usr/bin/su", 0o4755).Root,
				Image: mustRef(t, "oci:"+filepath.Join(tmp, "base")+":b")})
			b := mustRef(t, "oci:"+filepath.Join(tmp, "base")+":b")
			opts.Base = &b
			opts.Layer.Deletions = true
		}
		res := commit(t, opts)
		img, err := OpenImage(mustRef(t, "oci:"+out+":t"))
		if err != nil {
			t.Fatal(err)
		}
		rc, err := img.OpenLayer(len(img.Manifest.Layers) - 1)
		if err != nil {
			t.Fatal(err)
		}
		got := renderTar(t, rc)
		rc.Close()
		img.Close()
		if base == "" {
			assertEntries(t, got, renderTar(t, bytes.NewReader(want))...)
		} else {
			// su is the base's; old is gone.
			for _, e := range got {
				if strings.Contains(e, "usr/bin/su") {
					t.Errorf("over the base, an unchanged file was committed: %s", e)
				}
			}
			if !slicesContains(got, "0 .wh.old 0000 0:0 \"\"") {
				t.Errorf("--deletions: no whiteout of old in %q", got)
			}
		}
		if res.Layer.Entries == 0 {
			t.Errorf("empty layer")
		}
		if ents, _ := filepath.Glob(filepath.Join(tmp, tmpPrefix+"*")); len(ents) > 0 {
			t.Errorf("left behind: %v", ents)
		}
	}
	bad := tarOf(t, tarEntry{hdr: tar.Header{Name: "../x", Typeflag: tar.TypeReg, Mode: 0o644}, data: "x"})
	_, err := Commit(context.Background(), CommitOptions{RootfsTar: bytes.NewReader(bad), Image: mustRef(t, "oci:"+filepath.Join(tmp, "bad")+":t")})
	if !errors.Is(err, unpack.ErrHostile) || !inputerr.Is(err) {
		t.Errorf("a hostile rootfs tar: %v", err)
	}
	if ents, _ := filepath.Glob(filepath.Join(tmp, "[.b]*")); len(ents) != 2 {
		t.Errorf("after a failed commit: %v, want only the base and b", ents)
	}
}
