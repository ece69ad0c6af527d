package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/testenv"
)

// regManifest is what the tests read of a manifest.
type regManifest struct {
	Config struct {
		Digest string `json:"digest"`
	} `json:"config"`
	Layers []struct {
		Digest string `json:"digest"`
	} `json:"layers"`
}

func (m regManifest) blobs() []string {
	out := []string{m.Config.Digest}
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func (m regManifest) layers() []string {
	var out []string
	for _, l := range m.Layers {
		out = append(out, l.Digest)
	}
	return out
}

func regBlobPath(dir, digest string) string {
	alg, hex, _ := strings.Cut(digest, ":")
	return filepath.Join(dir, "blobs", alg, hex)
}

// regLayoutImage reads the manifest tagged tag in an OCI layout: its
// digest, raw bytes and parsed form.
func regLayoutImage(t *testing.T, dir, tag string) (digest string, raw []byte, m regManifest) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		t.Fatalf("%s/index.json: %v", dir, err)
	}
	for _, d := range idx.Manifests {
		if d.Annotations["org.opencontainers.image.ref.name"] == tag {
			digest = d.Digest
		}
	}
	if digest == "" {
		t.Fatalf("%s: no tag %s in %s", dir, tag, data)
	}
	if raw, err = os.ReadFile(regBlobPath(dir, digest)); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return digest, raw, m
}

// regImage commits a two-layer image made by layerfs into oci:DIR:v1,
// with a distinct file so that tests get distinct images.
func regImage(t *testing.T, name string) (ref, dir string) {
	t.Helper()
	work := t.TempDir()
	runScript(t, work, "layers", `
		mkf l1/etc/hello "hello from `+name+`"
		mkf l1/usr/share/doc/readme
		mkdir -p l1/var/empty
		mkf l2/etc/app.conf "name=`+name+`"
		mkf l2/opt/app/bin "#!/bin/sh"; chmod 755 l2/opt/app/bin`)
	dir = filepath.Join(work, "img")
	ref = "oci:" + dir + ":v1"
	layerfsCommit(t, "--upper", filepath.Join(work, "l1"), "--image", ref, "--source-date-epoch", "0")
	layerfsCommit(t, "--upper", filepath.Join(work, "l2"), "--image", ref, "--source-date-epoch", "0")
	return ref, dir
}

// TestRegistryPushPull pushes a layerfs image to docker-registry, pulls it
// back by digest, and checks it against the source, skopeo and the
// registry's own log.
func TestRegistryPushPull(t *testing.T) {
	testenv.NeedTool(t, "skopeo")
	reg := startRegistry(t, false)
	src, srcDir := regImage(t, "pushpull")
	srcDigest, srcRaw, srcManifest := regLayoutImage(t, srcDir, "v1")

	pushed, _ := regCopy(t, nil, src, reg.ref("test/app:v1"), "--insecure")
	if pushed != srcDigest {
		t.Fatalf("push printed %q, the source manifest is %s", pushed, srcDigest)
	}
	requests, blobs := reg.uploads(t)
	if blobs != 3 || requests < 3 {
		t.Errorf("the first push stored %d blobs in %d upload requests, want the 2 layers and the config", blobs, requests)
	}

	// skopeo reads what was pushed: the same manifest, byte for byte.
	out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", reg.ref("test/app:v1")).Output()
	if err != nil {
		t.Fatalf("skopeo inspect: %v", err)
	}
	var insp struct {
		Digest string
		Layers []string
	}
	if err := json.Unmarshal(out, &insp); err != nil {
		t.Fatal(err)
	}
	if insp.Digest != srcDigest || !slices.Equal(insp.Layers, srcManifest.layers()) {
		t.Errorf("skopeo inspect: digest %s layers %v, pushed %s layers %v", insp.Digest, insp.Layers, srcDigest, srcManifest.layers())
	}
	raw, err := exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", reg.ref("test/app:v1")).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw: %v", err)
	}
	if !bytes.Equal(raw, srcRaw) {
		t.Errorf("the registry's manifest differs from the source's:\n%s\n%s", raw, srcRaw)
	}

	// Pushing again, to the same tag or another, uploads nothing.
	regCopy(t, nil, src, reg.ref("test/app:v1"), "--insecure")
	if d, _ := regCopy(t, nil, src, reg.ref("test/app:v2"), "--insecure"); d != srcDigest {
		t.Errorf("push to :v2 printed %s", d)
	}
	if again, _ := reg.uploads(t); again != requests {
		t.Errorf("pushing the same image again made %d blob upload requests", again-requests)
	}

	// Pull by digest: no warning, and the same manifest, config and layers.
	pulledDir := filepath.Join(t.TempDir(), "pulled")
	byDigest := reg.ref("test/app@" + srcDigest)
	d, stderr := regCopy(t, nil, byDigest, "oci:"+pulledDir+":got", "--insecure")
	if d != srcDigest || stderr != "" {
		t.Errorf("pull by digest printed %q, stderr %q", d, stderr)
	}
	gotDigest, gotRaw, gotManifest := regLayoutImage(t, pulledDir, "got")
	if gotDigest != srcDigest || !bytes.Equal(gotRaw, srcRaw) {
		t.Fatalf("pulled manifest %s, pushed %s", gotDigest, srcDigest)
	}
	for _, b := range gotManifest.blobs() {
		want, err := os.ReadFile(regBlobPath(srcDir, b))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(regBlobPath(pulledDir, b))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("blob %s differs after the round trip (%v)", b, err)
		}
	}

	// Pull by tag: works, and the warning names the digest to pin; with
	// --strict it is bad input and writes nothing.
	pin := "pin it: " + reg.ref("test/app@"+srcDigest)
	_, stderr = regCopy(t, nil, reg.ref("test/app:v1"), "oci:"+filepath.Join(t.TempDir(), "bytag"), "--insecure")
	if !strings.Contains(stderr, pin) {
		t.Errorf("pull by tag warned %q, want it to say %q", stderr, pin)
	}
	strictDir := filepath.Join(t.TempDir(), "strict")
	regBadInput(t, nil, []string{reg.ref("test/app:v1"), pin, "--strict"},
		"copy", reg.ref("test/app:v1"), "oci:"+strictDir, "--insecure", "--strict")
	if _, err := os.Stat(strictDir); err == nil {
		t.Errorf("a refused pull left %s", strictDir)
	}

	// A second image sharing nothing but the registry: exactly its own
	// blobs go up, and it can be copied registry to registry.
	other, _ := regImage(t, "other")
	regCopy(t, nil, other, reg.ref("test/other:v1"), "--insecure")
	if r2, b2 := reg.uploads(t); b2-blobs != 3 || r2 <= requests {
		t.Errorf("a new image stored %d blobs, want 3", b2-blobs)
	}
	if d, _ := regCopy(t, nil, byDigest, reg.ref("copied/app:v1"), "--insecure"); d != srcDigest {
		t.Errorf("registry to registry copy printed %s, want %s", d, srcDigest)
	}
}

// TestRegistryAuth pushes to a registry with htpasswd auth: refused
// without credentials, accepted with an auth file.
func TestRegistryAuth(t *testing.T) {
	testenv.NeedTool(t, "skopeo")
	reg := startRegistry(t, true)
	src, _ := regImage(t, "auth")
	dst := reg.ref("test/private:v1")

	regBadInput(t, regIsolatedEnv(t), []string{dst, reg.Host, "credentials"}, "copy", src, dst, "--insecure")
	wrong := regAuthFile(t, reg.Host, regUser, "not-the-password")
	regBadInput(t, regIsolatedEnv(t, "REGISTRY_AUTH_FILE="+wrong), []string{dst, "refused the credentials", wrong}, "copy", src, dst, "--insecure")

	right := regAuthFile(t, reg.Host, regUser, regPassword)
	env := regIsolatedEnv(t, "REGISTRY_AUTH_FILE="+right)
	digest, _ := regCopy(t, env, src, dst, "--insecure")
	pulled := filepath.Join(t.TempDir(), "pulled")
	if d, _ := regCopy(t, env, reg.ref("test/private@"+digest), "oci:"+pulled, "--insecure"); d != digest {
		t.Errorf("pull with credentials printed %s, want %s", d, digest)
	}
	// The pull needs the credentials too.
	regBadInput(t, regIsolatedEnv(t), []string{reg.ref("test/private@" + digest), "credentials"},
		"copy", reg.ref("test/private@"+digest), "oci:"+filepath.Join(t.TempDir(), "anon"), "--insecure")

	// The same file as podman's login file ($XDG_RUNTIME_DIR/containers/auth.json).
	runtime := t.TempDir()
	if err := os.MkdirAll(filepath.Join(runtime, "containers"), 0o700); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(right)
	if err := os.WriteFile(filepath.Join(runtime, "containers", "auth.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	regCopy(t, append(regIsolatedEnv(t), "XDG_RUNTIME_DIR="+runtime), src, reg.ref("test/private:v2"), "--insecure")

	// skopeo reads the same auth file.
	skopeoOut, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "--authfile", right, "--format", "{{.Digest}}", dst).Output()
	if err != nil || strings.TrimSpace(string(skopeoOut)) != digest {
		t.Errorf("skopeo inspect with the same auth file: %q, %v; want %s", skopeoOut, err, digest)
	}
}

// TestRegistryBadInput checks each bad registry input: exit status 2, one
// line naming it, and no output.
func TestRegistryBadInput(t *testing.T) {
	reg := startRegistry(t, false)
	src, srcDir := regImage(t, "bad")
	srcDigest, _, _ := regLayoutImage(t, srcDir, "v1")
	regCopy(t, nil, src, reg.ref("test/app:v1"), "--insecure")
	out := func() string { return "oci:" + filepath.Join(t.TempDir(), "out") }

	missingTag := reg.ref("test/app:nope")
	regBadInput(t, nil, []string{missingTag, "not found"}, "copy", missingTag, out(), "--insecure")
	missingRepo := reg.ref("test/nothing:v1")
	regBadInput(t, nil, []string{missingRepo}, "copy", missingRepo, out(), "--insecure")
	absent := reg.ref("test/app@sha256:" + strings.Repeat("0", 64))
	regBadInput(t, nil, []string{absent, "not found"}, "copy", absent, out(), "--insecure")

	// Pushing to a digest that is not the image's manifest.
	wrongDigest := reg.ref("test/app@sha256:" + strings.Repeat("1", 64))
	regBadInput(t, nil, []string{wrongDigest, srcDigest}, "copy", src, wrongDigest, "--insecure")
	if d, _ := regCopy(t, nil, src, reg.ref("test/app@"+srcDigest), "--insecure"); d != srcDigest {
		t.Errorf("push to its own digest printed %s", d)
	}

	// A registry that speaks plain HTTP needs --insecure.
	regBadInput(t, nil, []string{reg.ref("test/app:v1"), "--insecure"}, "copy", reg.ref("test/app:v1"), out())

	// A closed port.
	closed := closedPort(t)
	unreachable := "docker://" + closed + "/test/app:v1"
	regBadInput(t, nil, []string{unreachable, "unreachable"}, "copy", unreachable, out(), "--insecure")
	regBadInput(t, nil, []string{unreachable, "unreachable"}, "copy", src, unreachable, "--insecure")

	// Malformed references.
	for _, bad := range []string{"docker://", "docker:/127.0.0.1/x", "docker://127.0.0.1:5000/UPPER/case", "docker://127.0.0.1:5000/x@sha256:beef", "docker://127.0.0.1:5000/x:bad:tag"} {
		regBadInput(t, nil, []string{bad}, "copy", bad, out(), "--insecure")
		regBadInput(t, nil, []string{bad}, "copy", src, bad, "--insecure")
	}
	regBadInput(t, nil, []string{"mips/"}, "copy", reg.ref("test/app@"+srcDigest), out(), "--insecure", "--platform", "mips/")
}

// closedPort returns 127.0.0.1:PORT where nothing listens (any more).
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestRegistryCommitAndBuild: commit and build write to a registry, and
// commit appends to the image there.
func TestRegistryCommitAndBuild(t *testing.T) {
	t.Parallel()
	reg := startRegistry(t, false)
	env := regIsolatedEnv(t)
	up := t.TempDir()
	if err := os.WriteFile(filepath.Join(up, "one.txt"), []byte("one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := reg.ref("test/commit:v1")
	if code, _, stderr := regRun(t, env, "commit", "--upper", up, "--image", dst, "--base", "oci:"+mkBaseImage(t)+":base", "--insecure"); code != 0 {
		t.Fatalf("commit to a registry: exit %d\n%s", code, stderr)
	}
	if code, _, stderr := regRun(t, env, "commit", "--upper", up, "--image", dst, "--insecure"); code != 0 {
		t.Fatalf("commit appending to a registry image: exit %d\n%s", code, stderr)
	}
	code, out, stderr := regRun(t, env, "inspect", dst, "--insecure", "--json", "--no-count")
	if code != 0 {
		t.Fatalf("inspect: exit %d\n%s", code, stderr)
	}
	var got struct{ Layers []struct{ Digest string } }
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.Layers) != 3 {
		t.Errorf("the registry image has %d layers, want the base's 1 and 2 commits", len(got.Layers))
	}

	// A commit to a repository that does not exist yet starts the image.
	fresh := reg.ref("test/fresh:v1")
	if code, _, stderr := regRun(t, env, "commit", "--upper", up, "--image", fresh, "--insecure"); code != 0 {
		t.Fatalf("commit to a new registry repository: exit %d\n%s", code, stderr)
	}
	if code, out, stderr := regRun(t, env, "inspect", fresh, "--insecure", "--json", "--no-count"); code != 0 || strings.Count(out, `"diff_id"`) != 1 {
		t.Errorf("the new registry image: exit %d, want 1 layer:\n%s%s", code, out, stderr)
	}

	f := newBuildFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := layerfsBuild(ctx, t, f.dir, nil, "spec.yaml", "--cache", t.TempDir(), "--json", "--image", reg.ref("test/build:v1"), "--insecure")
	if r.err != nil {
		t.Fatalf("build to a registry: %v\n%s", r.err, r.stderr)
	}
	code, out, stderr = regRun(t, env, "copy", reg.ref("test/build:v1"), "oci:"+t.TempDir()+"/o:x", "--insecure", "--json")
	if code != 0 || !strings.Contains(out, r.result.Manifest) {
		t.Errorf("pull of the built image: exit %d, %s (want manifest %s)\n%s", code, out, r.result.Manifest, stderr)
	}
}

// mkBaseImage commits a one-file base image into a new layout.
func mkBaseImage(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "root/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "root/etc/base"), []byte("base\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	layerfsCommit(t, "--upper", filepath.Join(dir, "root"), "--image", "oci:"+dir+"/image:base")
	return dir + "/image"
}
