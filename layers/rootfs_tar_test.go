package layers

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

	"github.com/layerfs/layerfs/cache"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci"
	"github.com/layerfs/layerfs/overlay"

	"github.com/layerfs/layerfs/internal/tartest"
)

// A rootless install under a fake root runs under it too, with the
// mountpoint left to the real system calls (pseudo) so that chowns reach
// the mount's daemon; nothing else of the environment is passed.
func TestFakeRootEnv(t *testing.T) {
	const mnt = "/c/.tmp/1-app-x/mnt"
	cases := []struct {
		name    string
		environ []string
		want    []string
	}{
		{"none", []string{"PATH=/bin", "LD_LIBRARY_PATH=/x", "PSEUDO_PREFIX=/usr"}, nil},
		{"other preload only", []string{"LD_PRELOAD=libasan.so", "FAKEROOTKEY=1"}, nil},
		{"pseudo", []string{"LD_PRELOAD=libasan.so libpseudo.so", "LD_LIBRARY_PATH=/usr/lib/pseudo", "PSEUDO_PREFIX=/usr",
			"PSEUDO_LOCALSTATEDIR=/w/pseudo", "PSEUDO_UNLOAD=1", "PSEUDO_IGNORE_PATHS=/w/sstate,/proc", "FAKEROOTKEY=9", "HOME=/h"},
			[]string{"LD_PRELOAD=libpseudo.so", "LD_LIBRARY_PATH=/usr/lib/pseudo", "PSEUDO_LOCALSTATEDIR=/w/pseudo", "PSEUDO_PREFIX=/usr",
				"PSEUDO_IGNORE_PATHS=/w/sstate,/proc," + mnt}},
		{"pseudo by path", []string{"LD_PRELOAD=/opt/sysroot/usr/lib/pseudo/lib64/libpseudo.so", "PSEUDO_DISABLED=0"},
			[]string{"LD_PRELOAD=/opt/sysroot/usr/lib/pseudo/lib64/libpseudo.so", "PSEUDO_DISABLED=0", "PSEUDO_IGNORE_PATHS=" + mnt}},
		{"fakeroot", []string{"LD_PRELOAD=libfakeroot-sysv.so", "LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/libfakeroot", "FAKEROOTKEY=42",
			"FAKED_MODE=unknown-is-root", "PSEUDO_PREFIX=/usr"},
			[]string{"LD_PRELOAD=libfakeroot-sysv.so", "LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/libfakeroot", "FAKED_MODE=unknown-is-root", "FAKEROOTKEY=42"}},
	}
	for _, c := range cases {
		if got := fakeRootEnv(c.environ, mnt); !slices.Equal(got, c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

// overrideTree is a source rootfs as a rootless apply of a tar leaves it
// (owners, modes and types in override records), and realTree the same
// rootfs as root applies it. mtimes are pinned.
func overrideTree(t *testing.T, dir string, real bool) {
	tr := testutil.Tree{T: t, Root: dir}
	tr.File("usr/bin/su", "su").File("home/u/.profile", "p").Dir("tmp").File("etc/motd", "hi")
	if real {
		tr.Chmod("usr/bin/su", 0o4755).Chown("home/u", 1000, 1000).Chmod("home/u", 0o700).Chown("home/u/.profile", 1000, 1000).
			Chmod("tmp", 0o1777).Mknod("dev/null", unix.S_IFCHR|0o666, 1, 3)
	} else {
		// The on-disk owner stands for the builder: 5:6, squashed below.
		tr.Chown("etc/motd", 5, 6).Chown("etc", 5, 6).
			Xattr("usr/bin/su", overlay.XattrOverrideStat, "0:0:4755:file").
			Xattr("home/u", overlay.XattrOverrideStat, "1000:1000:0700:dir").
			Xattr("home/u/.profile", overlay.XattrOverrideStat, "1000:1000:0644:file").
			Xattr("tmp", overlay.XattrOverrideStat, "0:0:1777:dir").
			File("dev/null", "").Xattr("dev/null", overlay.XattrOverrideStat, "0:0:0666:char-1-3")
	}
	filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Sec: 1e9}, {Sec: 1e9}}, unix.AT_SYMLINK_NOFOLLOW)
		}
		return nil
	})
}

// The copy of a directories layer, and its key, take owner, mode and type
// from the sources' override records and squash the on-disk owner as the
// layer will: the same rootfs applied rootless and as root copies and
// keys the same.
func TestCopyHonoursOverrides(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	recorded, real := filepath.Join(base, "recorded"), filepath.Join(base, "real")
	overrideTree(t, recorded, false)
	overrideTree(t, real, true)
	squash := &overlay.Owner{UID: 5, GID: 6}
	var items []copyItem
	for _, p := range []string{"/usr/bin", "/home", "/tmp", "/etc", "/dev"} {
		items = append(items, copyItem{src: filepath.Join(recorded, p), dst: p, fromRootfs: recorded})
	}
	dst := filepath.Join(base, "dst")
	os.Mkdir(dst, 0o755)
	specials, err := copyItems(context.Background(), dst, items, squash)
	if err != nil || len(specials) != 0 {
		t.Fatalf("copy: %v, specials %v (as root, none)", err, specials)
	}
	for p, want := range map[string]string{
		"usr/bin/su":      "0:0 104755",
		"home/u":          "1000:1000 40700",
		"home/u/.profile": "1000:1000 100644",
		"tmp":             "0:0 41777",
		"etc":             "0:0 40755",
		"etc/motd":        "0:0 100644",
		"dev/null":        "0:0 20666 1,3",
	} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dst, p), &st); err != nil {
			t.Fatal(err)
		}
		got := fmt.Sprintf("%d:%d %o", st.Uid, st.Gid, st.Mode)
		if st.Mode&unix.S_IFMT == unix.S_IFCHR {
			got += fmt.Sprintf(" %d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if got != want {
			t.Errorf("%s: %s, want %s", p, got, want)
		}
		if v, err := lgetxattr(filepath.Join(dst, p)); err == nil {
			t.Errorf("%s: the override record was copied as an xattr: %q", p, v)
		}
	}
	key := func(dir string, sq *overlay.Owner) string {
		s := &Spec{File: "s.yaml", Dir: base, Image: "oci:x", Layers: []Layer{{Name: "app", Type: TypeDirectories, Source: dir,
			Paths: []string{"/usr/bin", "/home", "/tmp", "/etc", "/dev"}}}}
		k, err := newKeyer(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		k.squash = sq
		in, err := k.layer(context.Background(), "", s.Layers[0])
		if err != nil {
			t.Fatal(err)
		}
		return in.key()
	}
	if a, b := key(recorded, squash), key(real, nil); a != b {
		t.Errorf("the recorded tree keys %s, the same tree as root made it %s", a, b)
	}
	if a, b := key(recorded, squash), key(recorded, nil); a == b {
		t.Errorf("the squash of on-disk owners is not in the key")
	}
	testutil.Tree{T: t, Root: recorded}.Xattr("home/u/.profile", overlay.XattrOverrideStat, "1001:1000:0644:file")
	if a, b := key(recorded, squash), key(real, nil); a == b {
		t.Errorf("a changed override record is not in the key")
	}
}

func lgetxattr(p string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, overlay.XattrOverrideStat, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

type tarFile struct {
	name     string
	typ      byte
	mode     int64
	uid, gid int
	data     string
}

func rootfsTar(t *testing.T, files ...tarFile) []byte {
	b := tartest.New()
	for _, f := range files {
		h := &tar.Header{Name: f.name, Typeflag: f.typ, Mode: f.mode, Uid: f.uid, Gid: f.gid, ModTime: time.Unix(1e9, 0)}
		content := ""
		switch f.typ {
		case tar.TypeReg:
			content = f.data
		case tar.TypeSymlink:
			h.Linkname = f.data
		case tar.TypeChar:
			h.Devmajor, h.Devminor = 1, 3
		}
		b.Add(h, content)
	}
	return b.Bytes()
}

// imageLayers lists the entries of each of an image's layers as
// "name uid:gid mode".
func imageLayers(t *testing.T, ref string) [][]string {
	t.Helper()
	r, err := oci.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := oci.OpenImage(r)
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	var out [][]string
	for i := range img.Manifest.Layers {
		rc, err := img.OpenLayer(i)
		if err != nil {
			t.Fatal(err)
		}
		var ents []string
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			ents = append(ents, fmt.Sprintf("%s %d:%d %o", h.Name, h.Uid, h.Gid, h.Mode))
		}
		rc.Close()
		out = append(out, ents)
	}
	return out
}

// Build with a rootfs tar takes the files of its directories and files
// layers (which then need no source:) from the tar, with the tar's owners
// and modes; the same tar gives the same keys, another owner another key;
// the unpacked tar is gone from the cache afterwards.
func TestBuildRootfsTar(t *testing.T) {
	testutil.RequireRoot(t)
	job := t.TempDir()
	ca, err := cache.Open(filepath.Join(job, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	files := []tarFile{
		{"./", tar.TypeDir, 0o755, 0, 0, ""},
		{"./usr/", tar.TypeDir, 0o755, 0, 0, ""},
		{"./usr/bin/", tar.TypeDir, 0o755, 0, 0, ""},
		{"./usr/bin/su", tar.TypeReg, 0o4755, 0, 0, "su"},
		{"./home/", tar.TypeDir, 0o755, 0, 0, ""},
		{"./home/u/", tar.TypeDir, 0o700, 1000, 1000, ""},
		{"./home/u/.profile", tar.TypeReg, 0o644, 1000, 1000, "p"},
		{"./tmp/", tar.TypeDir, 0o1777, 0, 0, ""},
		{"./etc/", tar.TypeDir, 0o755, 0, 0, ""},
		{"./etc/passwd", tar.TypeReg, 0o644, 0, 0, "root:x:0:0::/:/bin/sh\n"},
		{"./dev/", tar.TypeDir, 0o755, 0, 0, ""},
		{"./dev/null", tar.TypeChar, 0o666, 0, 0, ""},
	}
	spec := func() *Spec {
		return &Spec{File: "s.yaml", Dir: job, Image: "oci:" + filepath.Join(job, "out") + ":t", Layers: []Layer{
			{Name: "sys", Type: TypeDirectories, Paths: []string{"/usr", "/tmp", "/dev"}},
			{Name: "home", Type: TypeDirectories, Paths: []string{"/home/u"}},
			{Name: "conf", Type: TypeFiles, Paths: []string{"/etc/passwd"}},
		}}
	}
	epoch := time.Unix(1e9, 0).UTC()
	build := func(data []byte) *Result {
		t.Helper()
		s := spec()
		res, err := Build(context.Background(), Options{Spec: s, Cache: ca, RootfsTar: bytes.NewReader(data), SourceDateEpoch: &epoch})
		if err != nil {
			t.Fatal(err)
		}
		if s.Layers[0].Source != "" {
			t.Errorf("Build changed the caller's spec: source %q", s.Layers[0].Source)
		}
		if tmps, _ := filepath.Glob(filepath.Join(ca.Dir(), ".tmp", "*rootfs-tar*")); len(tmps) > 0 {
			t.Errorf("the unpacked tar is left in the cache: %v", tmps)
		}
		return res
	}
	res := build(rootfsTar(t, files...))
	got := imageLayers(t, "oci:"+filepath.Join(job, "out")+":t")
	want := [][]string{
		{"dev/ 0:0 755", "dev/null 0:0 666", "tmp/ 0:0 1777", "usr/ 0:0 755", "usr/bin/ 0:0 755", "usr/bin/su 0:0 4755"},
		{"home/ 0:0 755", "home/u/ 1000:1000 700", "home/u/.profile 1000:1000 644"},
		{"etc/ 0:0 755", "etc/passwd 0:0 644"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("layers:\n got %q\nwant %q", got, want)
	}
	if res.Misses != 3 {
		t.Errorf("first build: %d misses", res.Misses)
	}
	if res = build(rootfsTar(t, files...)); res.Hits != 3 {
		t.Errorf("the same tar again: %d hits, want 3", res.Hits)
	}
	files[6].uid = 1001
	if res = build(rootfsTar(t, files...)); res.Hits != 1 || !res.Layers[0].Hit || res.Layers[1].Hit {
		t.Errorf("another owner in home: hits %v, want only the layer below it", []bool{res.Layers[0].Hit, res.Layers[1].Hit, res.Layers[2].Hit})
	}
	// A path the tar lacks is a bad spec, as one a source: dir lacks.
	s := spec()
	s.Layers[2].Paths = []string{"/etc/shadow"}
	_, err = Build(context.Background(), Options{Spec: s, Cache: ca, RootfsTar: bytes.NewReader(rootfsTar(t, files...))})
	if err == nil || !strings.Contains(err.Error(), "/etc/shadow") {
		t.Errorf("a path the tar lacks: %v", err)
	}
}
