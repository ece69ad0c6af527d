package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/tartest"
)

// archLayerTars are three small uncompressed layers; the third repeats the
// first, as images with two identical (say, empty) layers do.
func archLayerTars(t *testing.T) [][]byte {
	a := tarOf(t, tarEntry{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}},
		tarEntry{hdr: tar.Header{Name: "etc/a", Typeflag: tar.TypeReg, Mode: 0o644}, data: "first layer\n"})
	b := tarOf(t, tarEntry{hdr: tar.Header{Name: "etc/b", Typeflag: tar.TypeReg, Mode: 0o600, Uid: 7}, data: strings.Repeat("second ", 5000)})
	return [][]byte{a, b, a}
}

func archGzipLayers(t *testing.T, raw [][]byte) []layerBlob {
	var ls []layerBlob
	for _, r := range raw {
		ls = append(ls, layerBlob{data: gzipBytes(t, r)})
	}
	return ls
}

func archLayerContents(t *testing.T, img *Image) [][]byte {
	t.Helper()
	var out [][]byte
	for i := range img.Manifest.Layers {
		rc, err := img.OpenLayer(i)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatalf("%s layer %d: %v", img.Ref, i, err)
		}
		out = append(out, data)
	}
	return out
}

// archMembers lists a tar's member names and reads manifest.json.
func archMembers(t *testing.T, p string) (names []string, manifest []dockerArchiveEntry) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, manifest
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		names = append(names, h.Name)
		if h.Name == "manifest.json" {
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestDockerArchiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	raw := archLayerTars(t)
	src := testImage(t, archGzipLayers(t, raw))
	defer src.Close()
	p := filepath.Join(t.TempDir(), "out", "img.tar")
	dst := mustRef(t, "docker-archive:"+p+":example/app:v1")
	wrote, err := WriteTo(ctx, src, dst, CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}

	names, manifest := archMembers(t, p)
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{"example/app:v1"}) {
		t.Fatalf("manifest.json %+v: want one image tagged example/app:v1", manifest)
	}
	// The repeated layer is stored once and listed twice.
	if len(names) != 4 || len(manifest[0].Layers) != 3 || manifest[0].Layers[0] != manifest[0].Layers[2] {
		t.Errorf("members %v, layers %v: want config, 2 layer files, manifest.json; the third layer naming the first's file", names, manifest[0].Layers)
	}

	for _, name := range []string{"example/app:v1", "docker.io/example/app:v1", ""} {
		ref := dst
		ref.Tag = name
		img, err := Open(ctx, ref, OpenOptions{})
		if err != nil {
			t.Fatalf("open %s: %v", ref, err)
		}
		if !bytes.Equal(img.RawConfig, src.RawConfig) {
			t.Errorf("%s: config changed", ref)
		}
		if img.ManifestDesc.Digest != wrote.Digest || img.ManifestDesc.Size != wrote.Size {
			t.Errorf("%s: manifest %s, but the write returned %s", ref, img.ManifestDesc.Digest, wrote.Digest)
		}
		for i, l := range img.Manifest.Layers {
			if l.MediaType != v1.MediaTypeImageLayer || l.Digest != src.Config.RootFS.DiffIDs[i] || l.Size != int64(len(raw[i])) {
				t.Errorf("%s layer %d: %+v, want the uncompressed tar named by its diff_id", ref, i, l)
			}
		}
		if got := archLayerContents(t, img); !slices.EqualFunc(got, raw, bytes.Equal) {
			t.Errorf("%s: layer contents differ from the source's", ref)
		}
		img.Close()
	}

	// On to an oci-archive and back: the synthesized manifest is kept.
	img, err := Open(ctx, dst, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	oa := filepath.Join(t.TempDir(), "oci.tar")
	if _, err := WriteTo(ctx, img, mustRef(t, "oci-archive:"+oa), CopyOptions{}); err != nil {
		t.Fatalf("docker-archive to oci-archive: %v", err)
	}
	img.Close()
	if img, err = Open(ctx, mustRef(t, "oci-archive:"+oa), OpenOptions{}); err != nil {
		t.Fatal(err)
	}
	if img.ManifestDesc.Digest != wrote.Digest || !slices.EqualFunc(archLayerContents(t, img), raw, bytes.Equal) {
		t.Errorf("docker-archive via oci-archive: manifest %s, want %s, and the same layers", img.ManifestDesc.Digest, wrote.Digest)
	}
	img.Close()

	// Other names are bad input, and the message lists what is there.
	ref := dst
	ref.Tag = "example/app:v2"
	_, err = Open(ctx, ref, OpenOptions{})
	if !inputerr.Is(err) || !strings.Contains(err.Error(), "example/app:v1") {
		t.Errorf("open of a missing tag: %v, want bad input listing example/app:v1", err)
	}

	// Same image, same bytes.
	again := filepath.Join(t.TempDir(), "again.tar")
	if _, err := WriteTo(ctx, src, mustRef(t, "docker-archive:"+again+":example/app:v1"), CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if archFileSum(t, p) != archFileSum(t, again) {
		t.Errorf("two writes of one image differ")
	}
}

func archFileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// tarFile writes members (a nil data with a link makes a symlink) to p,
// gzipped when asked.
type archMember struct {
	name, link string
	data       []byte
}

func archWriteTar(t *testing.T, p string, gz bool, members ...archMember) {
	t.Helper()
	b := tartest.New()
	for _, m := range members {
		if m.link != "" {
			b.Add(&tar.Header{Name: m.name, Typeflag: tar.TypeSymlink, Linkname: m.link, Mode: 0o777}, "")
			continue
		}
		b.Add(&tar.Header{Name: m.name, Typeflag: tar.TypeReg, Mode: 0o644}, string(m.data))
	}
	data := b.Bytes()
	if gz {
		data = gzipBytes(t, data)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDockerArchiveReadsWhatDockerSaves: the shapes docker save has
// written over the years: legacy ID/layer.tar members with a duplicate
// layer as a symlink to the first, docker 25+'s compressed
// blobs/sha256/HEX members, and the whole archive gzipped.
func TestDockerArchiveReadsWhatDockerSaves(t *testing.T) {
	ctx := context.Background()
	raw := archLayerTars(t)
	gz := gzipBytes(t, raw[1])
	cfg, _ := json.Marshal(v1.Image{Platform: v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"},
		RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(raw[0]), digest.FromBytes(raw[1]), digest.FromBytes(raw[2])}}})
	gzName := "blobs/sha256/" + digest.FromBytes(gz).Encoded()
	manifest, _ := json.Marshal([]dockerArchiveEntry{
		{Config: "cfg.json", RepoTags: []string{"other:1"}, Layers: []string{"aaa/layer.tar"}},
		{Config: "./cfg.json", RepoTags: []string{"docker.io/library/busybox:latest"}, Layers: []string{"aaa/layer.tar", gzName, "ccc/layer.tar"}},
	})
	for _, gzipped := range []bool{false, true} {
		p := filepath.Join(t.TempDir(), "saved.tar")
		archWriteTar(t, p, gzipped,
			archMember{name: "aaa/layer.tar", data: raw[0]},
			archMember{name: gzName, data: gz},
			archMember{name: "ccc/layer.tar", link: "../aaa/layer.tar"},
			archMember{name: "cfg.json", data: cfg},
			archMember{name: "manifest.json", data: manifest})
		_, err := Open(ctx, mustRef(t, "docker-archive:"+p), OpenOptions{})
		if !inputerr.Is(err) || !strings.Contains(err.Error(), "2 images") {
			t.Errorf("open without a name of a 2-image archive: %v, want bad input", err)
		}
		img, err := Open(ctx, mustRef(t, "docker-archive:"+p+":busybox:latest"), OpenOptions{})
		if err != nil {
			t.Fatalf("gzipped %v: %v", gzipped, err)
		}
		want := []v1.Descriptor{
			{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(raw[0]), Size: int64(len(raw[0]))},
			{MediaType: v1.MediaTypeImageLayerGzip, Digest: digest.FromBytes(gz), Size: int64(len(gz))},
			{MediaType: v1.MediaTypeImageLayer, Digest: digest.FromBytes(raw[2]), Size: int64(len(raw[2]))},
		}
		if !slices.EqualFunc(img.Manifest.Layers, want, func(a, b v1.Descriptor) bool {
			return a.MediaType == b.MediaType && a.Digest == b.Digest && a.Size == b.Size
		}) {
			t.Errorf("gzipped %v: layers %+v, want %+v", gzipped, img.Manifest.Layers, want)
		}
		if got := archLayerContents(t, img); !slices.EqualFunc(got, raw, bytes.Equal) {
			t.Errorf("gzipped %v: layer contents differ", gzipped)
		}
		if p := img.ManifestDesc.Platform; p == nil || FormatPlatform(p) != "linux/arm/v7" {
			t.Errorf("platform %v, want linux/arm/v7 from the config", p)
		}
		// Every blob the manifest names is there: a copy checks each
		// digest. (ggcr's validate assumes gzip, so it is not used here.)
		out := filepath.Join(t.TempDir(), "layout")
		if _, err := WriteTo(ctx, img, mustRef(t, "oci:"+out+":copy"), CopyOptions{}); err != nil {
			t.Fatalf("copy to oci: %v", err)
		}
		img.Close()
		copied, err := Open(ctx, mustRef(t, "oci:"+out+":copy"), OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := archLayerContents(t, copied); !slices.EqualFunc(got, raw, bytes.Equal) {
			t.Errorf("gzipped %v: layer contents of the oci: copy differ", gzipped)
		}
		copied.Close()
	}
}

func TestDockerArchiveBadInput(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	noManifest := filepath.Join(dir, "nomanifest.tar")
	archWriteTar(t, noManifest, false, archMember{name: "repositories", data: []byte("{}")})
	missingLayer := filepath.Join(dir, "missing.tar")
	cfg, _ := json.Marshal(v1.Image{RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString("x")}}})
	m, _ := json.Marshal([]dockerArchiveEntry{{Config: "c.json", Layers: []string{"gone/layer.tar"}}})
	archWriteTar(t, missingLayer, false, archMember{name: "c.json", data: cfg}, archMember{name: "manifest.json", data: m})
	loop := filepath.Join(dir, "loop.tar")
	m2, _ := json.Marshal([]dockerArchiveEntry{{Config: "c.json", Layers: []string{"a/layer.tar"}}})
	archWriteTar(t, loop, false, archMember{name: "c.json", data: cfg}, archMember{name: "a/layer.tar", link: "../b/layer.tar"},
		archMember{name: "b/layer.tar", link: "../a/layer.tar"}, archMember{name: "manifest.json", data: m2})
	notTar := filepath.Join(dir, "text.tar")
	os.WriteFile(notTar, bytes.Repeat([]byte("not a tar "), 100), 0o644)
	for p, want := range map[string]string{
		filepath.Join(dir, "absent.tar"): "does not exist",
		noManifest:                       "no manifest.json",
		missingLayer:                     "gone/layer.tar",
		loop:                             "symbolic links",
		notTar:                           "not a docker archive",
	} {
		_, err := Open(ctx, mustRef(t, "docker-archive:"+p), OpenOptions{})
		if !inputerr.Is(err) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p) {
			t.Errorf("open %s: %v, want bad input naming it and %q", filepath.Base(p), err, want)
		}
	}
}

// TestArchiveWritesAreAtomic: a write that fails (a layer whose content
// does not match its diff_id) leaves the previous archive as it was and
// no temp file; a temp file of a writer that died is swept, one whose
// writer lives is not.
func TestArchiveWritesAreAtomic(t *testing.T) {
	ctx := context.Background()
	raw := archLayerTars(t)
	good := testImage(t, archGzipLayers(t, raw))
	defer good.Close()
	bad := testImage(t, []layerBlob{{data: gzipBytes(t, raw[0])}, {data: gzipBytes(t, raw[1]), diffID: digest.FromString("lie")}})
	defer bad.Close()
	dir := t.TempDir()
	for _, tr := range []string{"docker-archive", "oci-archive"} {
		p := filepath.Join(dir, tr+".tar")
		ref := mustRef(t, tr+":"+p)
		if _, err := WriteTo(ctx, good, ref, CopyOptions{}); err != nil {
			t.Fatal(err)
		}
		before := archFileSum(t, p)
		var img *Image = bad
		if tr == "oci-archive" {
			img = archCorruptBlob(t, good)
		}
		if _, err := WriteTo(ctx, img, ref, CopyOptions{}); err == nil {
			t.Errorf("%s: writing a layer that does not match succeeded", tr)
		}
		if archFileSum(t, p) != before {
			t.Errorf("%s: a failed write changed the archive", tr)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, archiveTempPrefix+"*")); len(left) != 0 {
		t.Errorf("failed writes left %v", left)
	}

	dead := filepath.Join(dir, archiveTempPrefix+"dead")
	os.WriteFile(dead, []byte("half an archive"), 0o644)
	live := filepath.Join(dir, archiveTempPrefix+"live")
	os.WriteFile(live, []byte("being written"), 0o644)
	f, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteTo(ctx, good, mustRef(t, "oci-archive:"+filepath.Join(dir, "third.tar")), CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dead writer's temp file was not swept: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a live writer's temp file was swept: %v", err)
	}
}

// archCorruptBlob is img with one byte of its last layer's blob changed.
func archCorruptBlob(t *testing.T, img *Image) *Image {
	t.Helper()
	l := img.Manifest.Layers[len(img.Manifest.Layers)-1]
	dir := filepath.Join(t.TempDir(), "layout")
	copyDir(t, img.Ref.Path, dir)
	p := filepath.Join(dir, "blobs", "sha256", l.Digest.Encoded())
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	os.WriteFile(p, data, 0o644)
	bad, err := OpenImage(mustRef(t, "oci:"+dir))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bad.Close() })
	return bad
}

func TestOCIArchiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	src := testImage(t, archGzipLayers(t, archLayerTars(t)))
	defer src.Close()
	p := filepath.Join(t.TempDir(), "img.tar")
	desc, err := WriteTo(ctx, src, mustRef(t, "oci-archive:"+p+":v1"), CopyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != src.ManifestDesc.Digest {
		t.Errorf("wrote manifest %s, want the source's %s", desc.Digest, src.ManifestDesc.Digest)
	}
	img, err := Open(ctx, mustRef(t, "oci-archive:"+p+":v1"), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if img.ManifestDesc.Digest != src.ManifestDesc.Digest || !bytes.Equal(img.RawConfig, src.RawConfig) {
		t.Errorf("read back manifest %s, want %s, and the same config", img.ManifestDesc.Digest, src.ManifestDesc.Digest)
	}
	if got, want := archLayerContents(t, img), archLayerContents(t, src); !slices.EqualFunc(got, want, bytes.Equal) {
		t.Errorf("layer contents differ")
	}
	// The archive unpacked is a valid layout (what skopeo's oci-archive
	// reader does with it).
	out := t.TempDir()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(out, h.Name)
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(target, 0o755)
			continue
		}
		data, _ := io.ReadAll(tr)
		if err := os.WriteFile(target, data, 0o644); err != nil {
			t.Fatalf("member %s before its directory: %v", h.Name, err)
		}
	}
	validateLayout(t, out)
}

// TestTarHeaderBlockPastUstar: a layer past 8 GiB still gets one header
// block, which archive/tar (podman's and docker's reader) reads back.
func TestTarHeaderBlockPastUstar(t *testing.T) {
	for _, size := range []int64{0, maxUstarSize, maxUstarSize + 1, 1 << 40} {
		h, err := tarHeaderBlock("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.tar", tar.TypeReg, size)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		got, err := tar.NewReader(io.MultiReader(bytes.NewReader(h), archZeroReader{})).Next()
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if got.Size != size {
			t.Errorf("size %d read back as %d", size, got.Size)
		}
	}
}

type archZeroReader struct{}

func (archZeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
