package main

import (
	"archive/tar"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/tartest"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci"
)

func tarBytes(t *testing.T, hdrs ...tar.Header) []byte {
	b := tartest.New()
	for _, h := range hdrs {
		b.Add(&h, strings.Repeat("x", int(h.Size)))
	}
	return b.Bytes()
}

// --rootfs-tar FILE|- commits the tar's tree with its owners; misuse and
// bad tars are bad input, and write nothing.
func TestCommitRootfsTarFlag(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	good := filepath.Join(tmp, "rootfs.tar")
	os.WriteFile(good, tarBytes(t,
		tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755},
		tar.Header{Name: "./home/u/", Typeflag: tar.TypeDir, Mode: 0o700, Uid: 1000, Gid: 1000},
		tar.Header{Name: "./usr/bin/su", Typeflag: tar.TypeReg, Mode: 0o4755, Size: 2},
	), 0o644)
	hostile := filepath.Join(tmp, "hostile.tar")
	os.WriteFile(hostile, tarBytes(t, tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Mode: 0o644}), 0o644)
	marker := filepath.Join(tmp, "marker.tar")
	os.WriteFile(marker, tarBytes(t, tar.Header{Name: "etc/.wh.passwd", Typeflag: tar.TypeReg, Mode: 0o644}), 0o644)
	upper := testutil.Tree{T: t, Root: filepath.Join(tmp, "upper")}.File("f", "x")
	out := "oci:" + filepath.Join(tmp, "out") + ":t"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rootfs-tar", good, "--upper", upper.Root}, "--upper"},
		{[]string{"--rootfs-tar", good, "--rootfs", upper.Root}, "--rootfs"},
		{[]string{"--rootfs-tar", filepath.Join(tmp, "missing.tar")}, "missing.tar: does not exist"},
		{[]string{"--rootfs-tar", upper.Root}, "a directory"},
		{[]string{"--rootfs-tar", hostile}, "hostile layer"},
		{[]string{"--rootfs-tar", marker}, "a root filesystem deletes nothing"},
	} {
		code, stdout, stderr := runCLI(append([]string{"commit", "--image", out}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 || stdout != "" {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and one line containing %q", c.args, code, stderr, c.want)
		}
		if ents, _ := filepath.Glob(filepath.Join(tmp, "[.o]*")); len(ents) > 0 {
			t.Fatalf("%q left %v", c.args, ents)
		}
	}

	f, err := os.Open(good)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	stdin := os.Stdin
	os.Stdin = f
	code, _, stderr := runCLI("commit", "--rootfs-tar", "-", "--image", out, "--source-date-epoch", "0", "--squash-owner")
	os.Stdin = stdin
	if code != 0 {
		t.Fatalf("commit --rootfs-tar -: exit %d: %s", code, stderr)
	}
	img, err := oci.OpenImage(oci.Reference{Transport: oci.TransportOCI, Path: filepath.Join(tmp, "out"), Tag: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	rc, err := img.OpenLayer(0)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got []string
	tr := tar.NewReader(rc)
	for h, err := tr.Next(); err == nil; h, err = tr.Next() {
		got = append(got, fmt.Sprintf("%s %d:%d %o", h.Name, h.Uid, h.Gid, h.Mode))
	}
	want := "home/ 0:0 755,home/u/ 1000:1000 700,usr/ 0:0 755,usr/bin/ 0:0 755,usr/bin/su 0:0 4755"
	if strings.Join(got, ",") != want {
		t.Errorf("layer: %q\nwant %q", strings.Join(got, ","), want)
	}
}
