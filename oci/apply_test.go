package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/hostile"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/oci/unpack"
	"github.com/layerfs/layerfs/overlay"

	"github.com/layerfs/layerfs/internal/tartest"
)

func gzipReader(b []byte) (io.Reader, error) { return gzip.NewReader(bytes.NewReader(b)) }

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerBlob is one layer of a test image: its blob and the diff_id the
// config claims for it ("" for the right one).
type layerBlob struct {
	data   []byte
	diffID digest.Digest
}

// testImage writes a one-image OCI layout by hand and opens it.
func testImage(t *testing.T, layers []layerBlob) *Image {
	t.Helper()
	dir := t.TempDir()
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		t.Fatal(err)
	}
	put := func(mediaType string, data []byte) v1.Descriptor {
		d := digest.FromBytes(data)
		if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), data, 0o644); err != nil {
			t.Fatal(err)
		}
		return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
	}
	cfg := v1.Image{Platform: v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, RootFS: v1.RootFS{Type: "layers"}}
	var descs []v1.Descriptor
	for _, l := range layers {
		id := l.diffID
		if id == "" {
			raw := l.data
			if zr, err := gzipReader(l.data); err == nil {
				if raw, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			id = digest.FromBytes(raw)
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, id)
		descs = append(descs, put(v1.MediaTypeImageLayerGzip, l.data))
	}
	mustJSON := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	m := v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest,
		Config: put(v1.MediaTypeImageConfig, mustJSON(cfg)), Layers: descs}
	idx := v1.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex,
		Manifests: []v1.Descriptor{put(v1.MediaTypeImageManifest, mustJSON(m))}}
	os.WriteFile(filepath.Join(dir, "index.json"), mustJSON(idx), 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
	img, err := OpenImage(mustRef(t, "oci:"+dir))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// tarOf builds a tar from headers; regular files get data as content.
func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	b := tartest.New()
	for _, e := range entries {
		b.Add(&e.hdr, e.data)
	}
	return b.Bytes()
}

type tarEntry struct {
	hdr  tar.Header
	data string
}

func applyBytes(t *testing.T, data []byte, dir string) (unpack.Result, []string) {
	t.Helper()
	var warnings []string
	res, err := unpack.Apply(context.Background(), bytes.NewReader(data), dir, unpack.Options{Warn: func(m string) { warnings = append(warnings, m) }})
	if err != nil {
		t.Fatal(err)
	}
	return res, warnings
}

func writeLayerBytes(t *testing.T, upper string, lower overlay.Lower, opts layer.Options) ([]byte, layer.Info) {
	t.Helper()
	var buf bytes.Buffer
	l, err := layer.Write(context.Background(), &buf, upper, lower, opts)
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), l
}

func capV2Value() string {
	v := make([]byte, 20)
	binary.LittleEndian.PutUint32(v[0:], 0x02000001)
	binary.LittleEndian.PutUint32(v[4:], 1<<10) // cap_net_bind_service
	return string(v)
}

// roundTripTrees fills a lower and an upper with every kind of object and
// marker a layer carries. privileged adds what only root can apply
// (trusted.* xattrs, file capabilities); symlinkOwner owns the symlink,
// which an unprivileged applier cannot record.
func roundTripTrees(lower, upper testutil.Tree, privileged bool, symlinkOwner int) {
	lower.File("etc/hosts", "127.0.0.1\n").File("etc/old", "old").File("lowerdir/x", "x").
		File("lowerdir/sub/y", "y").File("var/cache/a", "a").File("var/cache/b", "b").Dir("usr/bin").Dir("tmp")

	upper.File("etc/hosts", "127.0.0.1 changed\n").
		File("etc/app.conf", "conf").Chmod("etc/app.conf", 0o640).Chown("etc/app.conf", 0, 42).
		Xattr("etc/app.conf", "user.comment", "hello").
		Whiteout("etc/old").Whiteout("lowerdir").
		Opaque("var/cache").File("var/cache/new", "n").
		File("usr/bin/prog", "#!prog").Chmod("usr/bin/prog", 0o755).Link("usr/bin/prog2", "usr/bin/prog").
		File("usr/bin/su", "su").Chmod("usr/bin/su", 0o4755).
		File("usr/bin/wall", "wall").Chown("usr/bin/wall", 0, 5).Chmod("usr/bin/wall", 0o2755).
		Dir("tmp").Chmod("tmp", 0o1777).
		File("secret/key", "k").Chown("secret/key", 1234, 1234).Chmod("secret/key", 0o600).
		Chown("secret", 1234, 1234).Chmod("secret", 0o700).
		Symlink("link", "usr/bin/prog").Chown("link", symlinkOwner, symlinkOwner).
		Mknod("dev/null", unix.S_IFCHR|0o666, 1, 3).Mknod("dev/loop0", unix.S_IFBLK|0o660, 7, 0).
		Mknod("run/fifo", unix.S_IFIFO|0o600, 0, 0).
		File("ro/f", "f").Chmod("ro", 0o555).
		Dir("empty")
	if privileged {
		upper.Xattr("secret", "trusted.note", "n").Xattr("link", "trusted.sym", "s").
			File("bin/ping", "ping").Chmod("bin/ping", 0o755).Xattr("bin/ping", "security.capability", capV2Value())
	}
	// Distinct old times, so that an applier that forgets one (or dates a
	// directory before writing into it) shows.
	when := time.Date(2010, 1, 1, 0, 0, 0, 0, time.UTC)
	var paths []string
	filepath.WalkDir(upper.Root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != upper.Root {
			paths = append(paths, p)
		}
		return nil
	})
	for i, p := range paths {
		ts := unix.NsecToTimespec(when.Add(time.Duration(i) * time.Hour).UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			upper.T.Fatal(err)
		}
	}
}

// Commit, apply, commit again: the same layer, byte for byte. Then the
// applied dir, used as a layer of a stack, shows the upper's deletions.
func TestApplyRoundTrip(t *testing.T) {
	testutil.RequireRoot(t)
	for _, markers := range []bool{false, true} {
		t.Run(map[bool]string{false: "explicit-whiteouts", true: "opaque-markers"}[markers], func(t *testing.T) {
			d := dirs(t, "lower", "upper", "applied")
			roundTripTrees(d[0], d[1], true, 1000)
			opts := layer.Options{Compression: layer.Uncompressed, OpaqueMarkers: markers}
			tar1, l1 := writeLayerBytes(t, d[1].Root, overlay.NewStack(d[0].Root), opts)

			res, warnings := applyBytes(t, tar1, d[2].Root)
			if len(warnings) > 0 {
				t.Errorf("warnings applying our own layer: %q", warnings)
			}
			if res.Bytes != int64(len(tar1)) || res.Entries != l1.Entries {
				t.Errorf("result %+v; want %d bytes and %d entries", res, len(tar1), l1.Entries)
			}
			tar2, l2 := writeLayerBytes(t, d[2].Root, overlay.NewStack(d[0].Root), opts)
			if l1.DiffID != l2.DiffID {
				assertEntries(t, renderTar(t, bytes.NewReader(tar2)), renderTar(t, bytes.NewReader(tar1))...)
				t.Fatalf("re-committing the applied layer gave %s, the original %s", l2.DiffID, l1.DiffID)
			}

			st := overlay.NewStack(d[0].Root, d[2].Root)
			for _, gone := range []string{"etc/old", "lowerdir", "lowerdir/x", "var/cache/a"} {
				if m, err := st.Lookup(gone); err != nil || m != nil {
					t.Errorf("%s through the applied layer: %+v, %v; want it deleted", gone, m, err)
				}
			}
			if names, err := st.Names("var/cache"); err != nil || !slices.Equal(names, []string{"new"}) {
				t.Errorf("var/cache lists %v, %v; want only the upper's new", names, err)
			}
			if m, err := st.Lookup("dev/null"); err != nil || m == nil || m.Type != overlay.TypeChar || m.Major != 1 || m.Minor != 3 {
				t.Errorf("dev/null: %+v, %v", m, err)
			}
			if m, err := st.Lookup("usr/bin/su"); err != nil || m == nil || m.Mode != 0o4755 || m.UID != 0 {
				t.Errorf("usr/bin/su: %+v, %v", m, err)
			}
		})
	}
}

// Unprivileged, the applied dir records owners, modes, devices and fifos
// in override_stat and marks opaque dirs with user.overlay.opaque; package
// overlay reads that back as the same layer.
func TestApplyRootlessRoundTrip(t *testing.T) {
	testutil.RequireRoot(t) // to become nobody
	bin := helperBinary(t)
	for _, markers := range []bool{false, true} {
		t.Run(map[bool]string{false: "explicit-whiteouts", true: "opaque-markers"}[markers], func(t *testing.T) {
			base := openTempDir(t)
			d := make([]testutil.Tree, 3)
			for i, n := range []string{"lower", "upper", "applied"} {
				p := filepath.Join(base, n)
				if err := os.Mkdir(p, 0o755); err != nil {
					t.Fatal(err)
				}
				d[i] = testutil.Tree{T: t, Root: p}
			}
			if err := os.Chown(d[2].Root, nobodyUID, nobodyGID); err != nil {
				t.Fatal(err)
			}
			roundTripTrees(d[0], d[1], false, nobodyUID)
			opts := layer.Options{Compression: layer.Uncompressed, OpaqueMarkers: markers}
			tar1, l1 := writeLayerBytes(t, d[1].Root, overlay.NewStack(d[0].Root), opts)
			tarFile := filepath.Join(base, "layer.tar")
			if err := os.WriteFile(tarFile, tar1, 0o644); err != nil {
				t.Fatal(err)
			}
			out := applyAsNobody(bin)(t, tarFile, d[2].Root, 0)
			if out.Err != "" {
				t.Fatalf("applying as nobody: %s", out.Err)
			}
			if len(out.Warnings) > 0 {
				t.Errorf("warnings: %q", out.Warnings)
			}
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(d[2].Root, "usr/bin/su"), &st); err != nil || st.Uid != nobodyUID || st.Mode&unix.S_ISUID != 0 {
				t.Errorf("usr/bin/su on disk: uid %d mode %o (%v); want nobody's, without setuid", st.Uid, st.Mode, err)
			}
			tar2, l2 := writeLayerBytes(t, d[2].Root, overlay.NewStack(d[0].Root), opts)
			if l1.DiffID != l2.DiffID {
				assertEntries(t, renderTar(t, bytes.NewReader(tar2)), renderTar(t, bytes.NewReader(tar1))...)
				t.Fatalf("re-committing the rootless-applied layer gave %s, the original %s", l2.DiffID, l1.DiffID)
			}
		})
	}
}

// Parents a tar leaves out are made 0755; a later entry for one of them
// brings its metadata; directory modes and times are set after their
// children, so a read-only directory can still be filled and keeps its
// mtime; sub-second and symlink times are kept.
func TestApplyParentsModesAndTimes(t *testing.T) {
	testutil.RequireRoot(t)
	t1 := time.Date(2005, 5, 5, 5, 5, 5, 123456789, time.UTC)
	t2 := time.Date(2006, 6, 6, 6, 6, 6, 0, time.UTC)
	data := tarOf(t,
		tarEntry{hdr: tar.Header{Name: "a/b/c", Typeflag: tar.TypeReg, Mode: 0o644, ModTime: t1}, data: "c"},
		tarEntry{hdr: tar.Header{Name: "a/", Typeflag: tar.TypeDir, Mode: 0o710, Uid: 7, Gid: 8, ModTime: t2}},
		tarEntry{hdr: tar.Header{Name: "ro/", Typeflag: tar.TypeDir, Mode: 0o555, ModTime: t2}},
		tarEntry{hdr: tar.Header{Name: "ro/x", Typeflag: tar.TypeReg, Mode: 0o444, ModTime: t2}, data: "x"},
		tarEntry{hdr: tar.Header{Name: "ro/sl", Typeflag: tar.TypeSymlink, Linkname: "x", ModTime: t1, Uid: 3, Gid: 4}},
		tarEntry{hdr: tar.Header{Name: "/abs/./f", Typeflag: tar.TypeReg, Mode: 0o600}, data: "f"},
		tarEntry{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o751, ModTime: t2}},
	)
	dir := t.TempDir()
	applyBytes(t, data, dir)
	check := func(rel string, mode uint32, uid uint32, mtime time.Time) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, rel), &st); err != nil {
			t.Fatal(err)
		}
		got := time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
		if st.Mode&07777 != mode || st.Uid != uid || (!mtime.IsZero() && !got.Equal(mtime)) {
			t.Errorf("%s: mode %04o uid %d mtime %v; want %04o, %d, %v", rel, st.Mode&07777, st.Uid, got, mode, uid, mtime)
		}
	}
	check("a", 0o710, 7, t2)
	check("a/b", 0o755, 0, time.Time{})
	check("a/b/c", 0o644, 0, t1)
	check("ro", 0o555, 0, t2)
	check("ro/x", 0o444, 0, t2)
	check("ro/sl", 0o777, 3, t1)
	check("abs/f", 0o600, 0, time.Time{})
	check(".", 0o751, 0, t2)
}

// Union bookkeeping and host xattrs in a tar are dropped, with a warning;
// the ones a layer may carry are applied.
func TestApplyXattrPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	data := tarOf(t, tarEntry{hdr: tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, PAXRecords: map[string]string{
		"SCHILY.xattr.user.keep":                     "1",
		"SCHILY.xattr.trusted.keep":                  "2",
		"SCHILY.xattr.security.capability":           capV2Value(),
		"SCHILY.xattr.trusted.overlay.opaque":        "y",
		"SCHILY.xattr.user.overlay.whiteout":         "",
		"SCHILY.xattr.user.containers.override_stat": "0:0:4755",
		"SCHILY.xattr.security.fuseoverlayfs.x":      "x",
		"SCHILY.xattr.security.selinux":              "system_u:object_r:shadow_t:s0",
	}}, data: "f"})
	dir := t.TempDir()
	_, warnings := applyBytes(t, data, dir)
	got := xattrDump(filepath.Join(dir, "f"))
	for _, want := range []string{`user.keep="1"`, `trusted.keep="2"`, "security.capability="} {
		if !strings.Contains(got, want) {
			t.Errorf("xattrs %s: missing %s", got, want)
		}
	}
	for _, dropped := range []string{"trusted.overlay.opaque", "user.overlay.whiteout", "user.containers.override_stat", "security.fuseoverlayfs.x", "security.selinux"} {
		if strings.Contains(got, dropped) {
			t.Errorf("xattrs %s: %s was applied", got, dropped)
		}
		if !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, dropped) && strings.Contains(w, `"f"`) }) {
			t.Errorf("no warning naming %s on \"f\" in %q", dropped, warnings)
		}
	}
}

func TestApplyImageLayerChecksDiffID(t *testing.T) {
	good := tarOf(t, tarEntry{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, data: "a"})
	img := testImage(t, []layerBlob{
		{data: gzipBytes(t, good)},
		{data: good, diffID: digest.FromString("something else")},
	})
	defer img.Close()
	dir := t.TempDir()
	res, err := ApplyImageLayer(context.Background(), img, 0, dir, unpack.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 1 || res.Bytes != int64(len(good)) {
		t.Errorf("result %+v; want 1 entry of %d bytes", res, len(good))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a")); err != nil || string(b) != "a" {
		t.Errorf("a: %q, %v", b, err)
	}
	_, err = ApplyImageLayer(context.Background(), img, 1, t.TempDir(), unpack.Options{})
	if err == nil || !strings.Contains(err.Error(), "does not match") || !inputerr.Is(err) {
		t.Errorf("a layer that does not match its diff_id: %v; want a bad-input error saying so", err)
	}
	if _, err := ApplyImageLayer(context.Background(), img, 2, t.TempDir(), unpack.Options{}); err == nil {
		t.Error("layer 2 of 2 applied")
	}
}

func TestApplyNeedsAnEmptyDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x"), nil, 0o644)
	_, err := unpack.Apply(context.Background(), bytes.NewReader(nil), dir, unpack.Options{})
	if err == nil || errors.Is(err, unpack.ErrHostile) || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("got %v; want a not-empty error that does not blame the layer", err)
	}
}

func TestApplyHonoursCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	data := tarOf(t, tarEntry{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, data: "a"})
	if _, err := unpack.Apply(ctx, bytes.NewReader(data), t.TempDir(), unpack.Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v; want context.Canceled", err)
	}
}

// A source that fails is the source's error, not a hostile layer.
func TestApplySourceErrorIsNotHostile(t *testing.T) {
	data := tarOf(t, tarEntry{hdr: tar.Header{Name: "a", Typeflag: tar.TypeReg, Mode: 0o644}, data: strings.Repeat("a", 4096)})
	boom := errors.New("disk on fire")
	r := io.MultiReader(bytes.NewReader(data[:1024]), iotestErrReader{boom})
	_, err := unpack.Apply(context.Background(), r, t.TempDir(), unpack.Options{})
	if !errors.Is(err, boom) || errors.Is(err, unpack.ErrHostile) {
		t.Errorf("got %v; want the source's error, not a hostile layer", err)
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

// FuzzApply: whatever the bytes, Apply returns, without panicking, and
// writes nothing beside its root. Plain test runs apply the corpus seeds.
func FuzzApply(f *testing.F) {
	for _, c := range hostile.Cases() {
		if tar := c.Tar("/nonexistent/outside"); len(tar) <= 64<<10 && c.Name != "deep_nesting" {
			f.Add(tar)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		base := t.TempDir()
		root := filepath.Join(base, "root")
		canary := filepath.Join(base, "CANARY")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(canary, []byte("canary"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := unpack.Apply(context.Background(), bytes.NewReader(data), root, unpack.Options{MaxSize: 4 << 20})
		if err != nil && !errors.Is(err, unpack.ErrHostile) {
			// Only the machine may fail otherwise; a bytes.Reader does not.
			var errno unix.Errno
			if !errors.As(err, &errno) {
				t.Errorf("an error that neither blames the layer nor the machine: %v", err)
			}
		}
		ents, _ := os.ReadDir(base)
		if b, rerr := os.ReadFile(canary); rerr != nil || string(b) != "canary" || len(ents) != 2 {
			t.Fatalf("applying changed the root's parent: %d entries, canary %q %v", len(ents), b, rerr)
		}
	})
}
