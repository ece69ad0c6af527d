package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/layerfs/layerfs/integration/appliers"
)

// validateImage runs go-containerregistry's validation on one tag of a
// layout and lets skopeo read and verify every blob of it. It returns the
// image's number of layers.
func validateImage(t *testing.T, img, tag string) int {
	t.Helper()
	im, err := appliers.Image(img, tag)
	if err != nil {
		t.Fatal(err)
	}
	gzipOnly, err := allGzip(im)
	if err != nil {
		t.Fatal(err)
	}
	if gzipOnly {
		if err := validate.Image(im); err != nil {
			t.Errorf("validate.Image: %v", err)
		}
	} else {
		// validate's layer check (v0.22.1 validate/layer.go computeLayer)
		// always gunzips, so it fails on zstd and plain tar layers with
		// "gzip: invalid header". Validate the rest with Fast and check
		// the layer digests, sizes and diff_ids here.
		if err := validate.Image(im, validate.Fast); err != nil {
			t.Errorf("validate.Image (Fast): %v", err)
		}
		if err := checkLayerDigests(im); err != nil {
			t.Error(err)
		}
	}
	dest := filepath.Join(t.TempDir(), "skopeo-dir")
	out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+img+":"+tag, "dir:"+dest).CombinedOutput()
	if err != nil {
		t.Errorf("skopeo copy oci:%s:%s dir:%s: %v: %s", img, tag, dest, err, out)
	}
	ls, err := im.Layers()
	if err != nil {
		t.Fatal(err)
	}
	return len(ls)
}

func allGzip(im v1.Image) (bool, error) {
	ls, err := im.Layers()
	if err != nil {
		return false, fmt.Errorf("layers: %w", err)
	}
	for _, l := range ls {
		mt, err := l.MediaType()
		if err != nil {
			return false, fmt.Errorf("media type: %w", err)
		}
		if mt != types.OCILayer && mt != types.DockerLayer {
			return false, nil
		}
	}
	return true, nil
}

// checkLayerDigests checks what validate's layer check would have: each
// blob's sha256 and size match the manifest, its uncompressed sha256
// matches the config's diff_id.
func checkLayerDigests(im v1.Image) error {
	m, err := im.Manifest()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	cf, err := im.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	ls, err := im.Layers()
	if err != nil {
		return fmt.Errorf("layers: %w", err)
	}
	if len(ls) != len(m.Layers) || len(ls) != len(cf.RootFS.DiffIDs) {
		return fmt.Errorf("%d layers, %d in the manifest, %d diff_ids", len(ls), len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	for i, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		dig, size, err := sha256Of(rc)
		if err != nil {
			return fmt.Errorf("layer %d blob: %w", i, err)
		}
		if dig != m.Layers[i].Digest.Hex || size != m.Layers[i].Size {
			return fmt.Errorf("layer %d: blob sha256:%s size %d, manifest says %s size %d", i, dig, size, m.Layers[i].Digest, m.Layers[i].Size)
		}
		urc, err := l.Uncompressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		diffID, _, err := sha256Of(urc)
		if err != nil {
			return fmt.Errorf("layer %d uncompressed: %w", i, err)
		}
		if diffID != cf.RootFS.DiffIDs[i].Hex {
			return fmt.Errorf("layer %d: uncompressed sha256:%s, config diff_id %s", i, diffID, cf.RootFS.DiffIDs[i])
		}
	}
	return nil
}

func sha256Of(rc io.ReadCloser) (string, int64, error) {
	defer rc.Close()
	h := sha256.New()
	n, err := io.Copy(h, rc)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
