package layers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func embedSum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// sha256sums lists regular files only, relative to the parent, sorted by
// path (not by walk order: "img/a-b" sorts before "img/a/c"), each line
// "HASH  PATH\n" as sha256sum prints it.
func TestEmbedSha256SumsFormatAndOrder(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"img/b":                "b\n",
		"img/a/c":              "c\n",
		"img/a-b":              "ab\n",
		"img/A":                "upper\n",
		"img/sub/deep/z":       "",
		"img/name with spaces": "sp\n",
	}
	for p, content := range files {
		full := filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(dir, "img/empty"), 0o755)
	os.Symlink("b", filepath.Join(dir, "img/link"))
	os.WriteFile(filepath.Join(dir, "outside"), []byte("not listed"), 0o644)
	got, err := sha256sums(context.Background(), dir, "img")
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, p := range []string{"img/A", "img/a-b", "img/a/c", "img/b", "img/name with spaces", "img/sub/deep/z"} {
		want.WriteString(embedSum(files[p]) + "  " + p + "\n")
	}
	if string(got) != want.String() {
		t.Errorf("sha256sums:\n%s\nwant:\n%s", got, want.String())
	}

	// sha256sum -c, run in the parent, agrees.
	if _, err := exec.LookPath("sha256sum"); err == nil {
		if err := os.WriteFile(filepath.Join(dir, "img.sha256sums"), got, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sha256sum", "--strict", "-c", "img.sha256sums")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("sha256sum -c: %v\n%s", err, out)
		}
		// And it notices a changed file.
		os.WriteFile(filepath.Join(dir, "img/b"), []byte("changed\n"), 0o644)
		cmd = exec.Command("sha256sum", "-c", "img.sha256sums")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "img/b: FAILED") {
			t.Errorf("sha256sum -c after a change: %v\n%s", err, out)
		}
	}

	// A single file (an oci-archive): one line, its own name.
	if err := os.WriteFile(filepath.Join(dir, "image.tar"), []byte("tar"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = sha256sums(context.Background(), dir, "image.tar")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != embedSum("tar")+"  image.tar\n" {
		t.Errorf("sha256sums of a file: %q", got)
	}

	// A name sha256sum would have to escape is refused, not listed wrong.
	for _, bad := range []string{"new\nline", `back\slash`} {
		d := t.TempDir()
		os.MkdirAll(filepath.Join(d, "img"), 0o755)
		if err := os.WriteFile(filepath.Join(d, "img", bad), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if got, err := sha256sums(context.Background(), d, "img"); err == nil {
			t.Errorf("a file named %q was listed: %q", bad, got)
		}
	}
	// A cancelled context stops it.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := sha256sums(ctx, dir, "img"); err == nil {
		t.Errorf("a cancelled sha256sums succeeded")
	}
}

func TestEmbedDefaults(t *testing.T) {
	if f := (Layer{}).format(); f != FormatOCIArchive {
		t.Errorf("default format %q, want oci-archive", f)
	}
	for ref, want := range map[string]string{
		"oci:/x/layout:v1":                 "v1",
		"oci:/x/layout":                    "latest",
		"oci-archive:/x/a.tar:v2":          "v2",
		"docker://reg.example.com/a/b:3.0": "3.0",
		"docker://reg.example.com/a/b":     "latest",
	} {
		if got := (Layer{Ref: ref}).embedTag(); got != want {
			t.Errorf("embedTag(%s) = %q, want %q", ref, got, want)
		}
	}
}

// An image layer's key holds the embedded image's manifest digest, its
// format and where it goes, and no host path: the same image at another
// path on the host gives the same key; another image, another format or
// another place give another.
func TestEmbedKey(t *testing.T) {
	img1 := imageOfTars(t, map[string]string{"etc/one": "1"})
	img2 := imageOfTars(t, map[string]string{"etc/one": "2"})
	// img1 again, elsewhere on the host.
	copyDir := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", img1.Ref.Path, copyDir).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	key := func(ref, path, format string, manifest fmt.Stringer) string {
		t.Helper()
		s := &Spec{File: "spec.yaml", Dir: t.TempDir(), Image: "oci:/x/out:1", Machine: "m", Arch: "amd64",
			Layers: []Layer{{Name: "emb", Type: TypeImage, Ref: ref, Path: path, Format: format}}}
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		k, err := newKeyer(s, nil)
		if err != nil {
			t.Fatal(err)
		}
		in, err := k.layer(context.Background(), "parent", s.Layers[0])
		if err != nil {
			t.Fatal(err)
		}
		if in.Embed == nil || in.Embed.Manifest.String() != manifest.String() {
			t.Errorf("%s: embed inputs %+v, want the image's manifest digest %s", ref, in.Embed, manifest)
		}
		if c := string(in.canonical()); strings.Contains(c, img1.Ref.Path) || strings.Contains(c, copyDir) || strings.Contains(c, s.Dir) {
			t.Errorf("key inputs hold a host path: %s", c)
		}
		return in.key()
	}
	m1, m2 := img1.ManifestDesc.Digest, img2.ManifestDesc.Digest
	base := key(img1.Ref.String(), "/images/one.tar", "", m1)
	if k := key("oci:"+copyDir+":img", "/images/one.tar", FormatOCIArchive, m1); k != base {
		t.Errorf("the same image at another host path (and the default format spelt out) changed the key")
	}
	for what, k := range map[string]string{
		"another image":  key(img2.Ref.String(), "/images/one.tar", "", m2),
		"another format": key(img1.Ref.String(), "/images/one.tar", FormatOCIDir, m1),
		"rootfs":         key(img1.Ref.String(), "/images/one.tar", FormatRootfs, m1),
		"another path":   key(img1.Ref.String(), "/images/two.tar", "", m1),
	} {
		if k == base {
			t.Errorf("%s: same key", what)
		}
	}
}
