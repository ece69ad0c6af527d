package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/integration/testenv"
)

// ixIndex is what `skopeo inspect --raw` prints of an image index.
type ixIndex struct {
	MediaType string `json:"mediaType"`
	Manifests []struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Platform  struct {
			OS           string `json:"os"`
			Architecture string `json:"architecture"`
			Variant      string `json:"variant"`
		} `json:"platform"`
	} `json:"manifests"`
}

// TestIndexJoinsPlatforms: `layerfs index` joins an amd64 and an arm/v7
// image built by layerfs; pulled with each --platform (also Debian's
// armhf) it gives that image's manifest, a platform it lacks is exit 2;
// skopeo reads the index and picks the same manifests by
// --override-arch/--override-variant.
func TestIndexJoinsPlatforms(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"skopeo", "setfattr"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	amd := arImage(t, filepath.Join(tmp, "amd64"), "v1", "gzip", "gzip", "--arch", "amd64")
	arm := arImage(t, filepath.Join(tmp, "arm"), "v1", "gzip", "none", "--arch", "arm", "--variant", "v7")
	multi := filepath.Join(tmp, "multi")
	// A tag already in the layout stays.
	arCopy(t, "oci:"+filepath.Join(tmp, "amd64")+":v1", "oci:"+multi+":single")

	out := arLayerfs(t, "index", "oci:"+multi+":v1", "--add", "oci:"+filepath.Join(tmp, "amd64")+":v1", "--add", "oci:"+filepath.Join(tmp, "arm")+":v1", "--json")
	var res struct {
		Digest    string `json:"digest"`
		Manifests []struct {
			Platform string `json:"platform"`
			Digest   string `json:"digest"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Manifests) != 2 {
		t.Fatalf("layerfs index --json printed %q (%v)", out, err)
	}
	if m := res.Manifests; m[0].Platform != "linux/amd64" || m[0].Digest != amd || m[1].Platform != "linux/arm/v7" || m[1].Digest != arm {
		t.Errorf("index entries %+v, want linux/amd64 %s and linux/arm/v7 %s", m, amd, arm)
	}

	for platform, want := range map[string]string{"linux/amd64": amd, "linux/arm/v7": arm, "armhf": arm, "arm": arm} {
		got := arCopy(t, "oci:"+multi+":v1", "oci:"+filepath.Join(tmp, "pulled")+":"+filepath.Base(platform), "--platform", platform)
		if got != want {
			t.Errorf("--platform %s: manifest %s, want %s", platform, got, want)
		}
	}
	arBadInput(t, []string{"linux/arm64", "linux/amd64", "linux/arm/v7"}, "copy", "--platform", "linux/arm64", "oci:"+multi+":v1", "oci:"+filepath.Join(tmp, "never")+":x")
	arBadInput(t, []string{"linux/arm/v6"}, "copy", "--platform", "armel", "oci:"+multi+":v1", "oci:"+filepath.Join(tmp, "never")+":x")
	if got := arCopy(t, "oci:"+multi+":single", "oci:"+filepath.Join(tmp, "pulled")+":single"); got != amd {
		t.Errorf("the layout's other tag now names %s, want %s", got, amd)
	}

	raw, err := exec.Command("skopeo", "inspect", "--raw", "oci:"+multi+":v1").Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw: %v", err)
	}
	var idx ixIndex
	if err := json.Unmarshal(raw, &idx); err != nil || idx.MediaType != "application/vnd.oci.image.index.v1+json" || len(idx.Manifests) != 2 {
		t.Fatalf("skopeo inspect --raw printed %s (%v): want an OCI index of 2", raw, err)
	}
	if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != res.Digest {
		t.Errorf("skopeo's raw index is not the one layerfs wrote (%s)", res.Digest)
	}
	for i, want := range []struct{ os, arch, variant, digest string }{{"linux", "amd64", "", amd}, {"linux", "arm", "v7", arm}} {
		m := idx.Manifests[i]
		if m.Platform.OS != want.os || m.Platform.Architecture != want.arch || m.Platform.Variant != want.variant || m.Digest != want.digest {
			t.Errorf("skopeo sees entry %d as %+v, want %+v", i, m, want)
		}
	}
	for _, c := range []struct {
		args   []string
		digest string
	}{
		{[]string{"--override-arch", "arm", "--override-variant", "v7"}, arm},
		{[]string{"--override-arch", "amd64"}, amd},
	} {
		d := filepath.Join(t.TempDir(), "dir")
		args := append([]string{"--insecure-policy", "--override-os", "linux"}, c.args...)
		if out, err := exec.Command("skopeo", append(args, "copy", "--quiet", "oci:"+multi+":v1", "dir:"+d)...).CombinedOutput(); err != nil {
			t.Fatalf("skopeo %v copy: %v\n%s", c.args, err, out)
		}
		m, err := os.ReadFile(filepath.Join(d, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(m); "sha256:"+hex.EncodeToString(sum[:]) != c.digest {
			t.Errorf("skopeo %v copied manifest sha256:%x, want %s", c.args, sum, c.digest)
		}
	}
}

// TestIndexBadInput: two images of one platform, an image without a
// platform, and a destination that is not a layout are exit 2, one line,
// and write nothing.
func TestIndexBadInput(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	tmp := t.TempDir()
	up := filepath.Join(tmp, "up")
	if err := os.MkdirAll(filepath.Join(up, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	a := "oci:" + filepath.Join(tmp, "a") + ":v1"
	b := "oci:" + filepath.Join(tmp, "b") + ":v1"
	layerfsCommit(t, "--upper", up, "--image", a, "--arch", "arm", "--variant", "v7")
	layerfsCommit(t, "--upper", up, "--image", b, "--arch", "arm", "--variant", "v7", "--env", "B=1")
	out := filepath.Join(tmp, "multi")
	arBadInput(t, []string{a, b, "linux/arm/v7"}, "index", "oci:"+out+":v1", "--add", a, "--add", b)
	arBadInput(t, []string{"oci:DIR"}, "index", "docker-archive:"+out+".tar:x/y:z", "--add", a)
	arBadInput(t, []string{"missing"}, "index", "oci:"+out+":v1", "--add", a, "--add", "oci:"+filepath.Join(tmp, "missing")+":v1")
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a refused index wrote %s", out)
	}
}
