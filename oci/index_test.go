package oci

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
)

// platformImage writes a one-layer image of platform p (whose file says
// which it is) to a layout of its own and opens it.
func platformImage(t *testing.T, p v1.Platform) *Image {
	t.Helper()
	dir := t.TempDir()
	lay, err := CreateLayout(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer lay.Close()
	layer := gzipBytes(t, tarOf(t, tarEntry{hdr: tar.Header{Name: "platform", Typeflag: tar.TypeReg, Mode: 0o644}, data: FormatPlatform(&p)}))
	raw, err := archGunzip(layer)
	if err != nil {
		t.Fatal(err)
	}
	ldesc, err := lay.PutBlob(v1.MediaTypeImageLayerGzip, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(v1.Image{Platform: p, RootFS: v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(raw)}}})
	cdesc, err := lay.PutBlob(v1.MediaTypeImageConfig, cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := json.Marshal(v1.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cdesc, Layers: []v1.Descriptor{ldesc}})
	mdesc, err := lay.PutBlob(v1.MediaTypeImageManifest, m)
	if err != nil {
		t.Fatal(err)
	}
	mdesc.Annotations = map[string]string{v1.AnnotationRefName: "img"}
	if err := lay.WriteIndex(&v1.Index{Manifests: []v1.Descriptor{mdesc}}); err != nil {
		t.Fatal(err)
	}
	img, err := OpenImage(mustRef(t, "oci:"+dir+":img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { img.Close() })
	return img
}

func archGunzip(b []byte) ([]byte, error) {
	zr, err := gzipReader(b)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(zr)
}

func TestWriteIndexResolvesEachPlatform(t *testing.T) {
	ctx := context.Background()
	amd := platformImage(t, v1.Platform{OS: "linux", Architecture: "amd64"})
	arm := platformImage(t, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"})
	arm6 := platformImage(t, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v6"})
	dir := filepath.Join(t.TempDir(), "multi")
	// A tag already in the layout stays.
	if _, err := WriteTo(ctx, amd, mustRef(t, "oci:"+dir+":single"), CopyOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := WriteIndex(ctx, mustRef(t, "oci:"+dir+":v1"), []*Image{amd, arm, arm6})
	if err != nil {
		t.Fatal(err)
	}
	validateLayout(t, dir)
	if len(res.Manifests) != 3 || FormatPlatform(res.Manifests[1].Platform) != "linux/arm/v7" {
		t.Fatalf("entries %+v", res.Manifests)
	}
	for _, c := range []struct {
		platform string
		want     *Image
	}{{"linux/amd64", amd}, {"linux/arm/v7", arm}, {"armhf", arm}, {"armel", arm6}} {
		p, err := ParsePlatform(c.platform)
		if err != nil {
			t.Fatal(err)
		}
		img, err := Open(ctx, mustRef(t, "oci:"+dir+":v1"), OpenOptions{Platform: p})
		if err != nil {
			t.Fatalf("%s: %v", c.platform, err)
		}
		if img.ManifestDesc.Digest != c.want.ManifestDesc.Digest {
			t.Errorf("%s: got manifest %s, want %s", c.platform, img.ManifestDesc.Digest, c.want.ManifestDesc.Digest)
		}
		want, err := ImagePlatform(c.want)
		if err != nil {
			t.Fatal(err)
		}
		if got := archLayerContents(t, img)[0]; !strings.Contains(string(got), FormatPlatform(want)) {
			t.Errorf("%s: layer is another platform's", c.platform)
		}
		img.Close()
	}
	_, err = Open(ctx, mustRef(t, "oci:"+dir+":v1"), OpenOptions{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}})
	if !inputerr.Is(err) || !strings.Contains(err.Error(), "linux/arm/v7") {
		t.Errorf("a platform the index lacks: %v, want bad input listing what it has", err)
	}
	if img, err := Open(ctx, mustRef(t, "oci:"+dir+":single"), OpenOptions{}); err != nil {
		t.Errorf("the other tag is gone: %v", err)
	} else {
		img.Close()
	}
}

func TestWriteIndexBadInputWritesNothing(t *testing.T) {
	ctx := context.Background()
	amd := platformImage(t, v1.Platform{OS: "linux", Architecture: "amd64"})
	amd2 := platformImage(t, v1.Platform{OS: "linux", Architecture: "amd64", Variant: ""})
	arm64 := platformImage(t, v1.Platform{OS: "linux", Architecture: "arm64"})
	arm64v8 := platformImage(t, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"})
	noArch := platformImage(t, v1.Platform{OS: "linux"})
	dir := filepath.Join(t.TempDir(), "multi")
	for name, c := range map[string]struct {
		dst  string
		imgs []*Image
		want string
	}{
		"two amd64":            {"oci:" + dir, []*Image{amd, amd2}, "both linux/amd64"},
		"arm64 and arm64/v8":   {"oci:" + dir, []*Image{arm64, amd, arm64v8}, "both linux/arm64"},
		"no architecture":      {"oci:" + dir, []*Image{amd, noArch}, "no os and architecture"},
		"not a layout":         {"oci-archive:" + dir + ".tar", []*Image{amd}, "oci:DIR"},
		"nothing to index":     {"oci:" + dir, nil, "no images"},
		"the same image twice": {"oci:" + dir, []*Image{arm64, arm64}, "both linux/arm64"},
	} {
		_, err := WriteIndex(ctx, mustRef(t, c.dst), c.imgs)
		if !inputerr.Is(err) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want bad input saying %q", name, err, c.want)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused indexes left %s: %v", dir, err)
	}
}
