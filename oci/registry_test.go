package oci

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/registrytest"
)

// memSource holds blobs in memory, for images that need no layout.
type memSource map[digest.Digest][]byte

func (m memSource) Open(d digest.Digest) (io.ReadCloser, error) {
	b, ok := m[d]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", d, fs.ErrNotExist)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}
func (memSource) File(digest.Digest) string { return "" }
func (memSource) Close() error              { return nil }

// memImage makes an image of the given layer contents for a platform.
func memImage(t *testing.T, arch, variant string, layers ...string) *Image {
	t.Helper()
	src := memSource{}
	img := &Image{Ref: Reference{Transport: TransportOCI, Path: "mem"}, src: src}
	img.Config.OS, img.Config.Architecture, img.Config.Variant = "linux", arch, variant
	img.Config.RootFS.Type = "layers"
	img.Manifest.SchemaVersion = 2
	img.Manifest.MediaType = v1.MediaTypeImageManifest
	for _, l := range layers {
		d := digest.FromString(l)
		src[d] = []byte(l)
		img.Config.RootFS.DiffIDs = append(img.Config.RootFS.DiffIDs, d)
		img.Manifest.Layers = append(img.Manifest.Layers, v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: d, Size: int64(len(l))})
	}
	var err error
	if img.RawConfig, err = json.Marshal(img.Config); err != nil {
		t.Fatal(err)
	}
	cd := digest.FromBytes(img.RawConfig)
	src[cd] = img.RawConfig
	img.Manifest.Config = v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cd, Size: int64(len(img.RawConfig))}
	if img.RawManifest, err = json.Marshal(img.Manifest); err != nil {
		t.Fatal(err)
	}
	img.ManifestDesc = v1.Descriptor{MediaType: v1.MediaTypeImageManifest, Digest: digest.FromBytes(img.RawManifest), Size: int64(len(img.RawManifest))}
	return img
}

// testRegistry is the shared test registry, with references parsed.
type testRegistry struct{ *registrytest.Registry }

func newTestRegistry(t *testing.T, tlsConf *tls.Config) *testRegistry {
	return &testRegistry{registrytest.New(t, tlsConf)}
}

func (tr *testRegistry) ref(t *testing.T, s string) Reference {
	t.Helper()
	r, err := ParseReference(tr.Ref(s))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// uploads counts blob upload requests since the last look.
func (tr *testRegistry) uploads() int { return registrytest.Uploads(tr.Requests()) }

func noEnv(t *testing.T) registryEnv {
	return registryEnv{certDirs: []string{t.TempDir()}, authFiles: []string{filepath.Join(t.TempDir(), "none.json")}}
}

func insecure() CopyOptions { return CopyOptions{OpenOptions: OpenOptions{Insecure: true}} }

func push(t *testing.T, img *Image, dst Reference, opts CopyOptions, env registryEnv) v1.Descriptor {
	t.Helper()
	desc, err := pushRegistryWith(context.Background(), img, dst, opts, env)
	if err != nil {
		t.Fatalf("push %s: %v", dst, err)
	}
	return desc
}

func readAllBlob(t *testing.T, img *Image, d digest.Digest) []byte {
	t.Helper()
	r, err := img.OpenBlob(d)
	if err != nil {
		t.Fatalf("open blob %s: %v", d, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read blob %s: %v", d, err)
	}
	return b
}

func TestRegistryPushPullRoundTrip(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	img := memImage(t, "amd64", "", "layer one", "layer two")
	desc := push(t, img, tr.ref(t, "test/app:v1"), insecure(), env)
	if desc.Digest != img.ManifestDesc.Digest || desc.Size != img.ManifestDesc.Size {
		t.Fatalf("pushed %s (%d bytes), source manifest is %s (%d)", desc.Digest, desc.Size, img.ManifestDesc.Digest, img.ManifestDesc.Size)
	}
	if desc.Platform == nil || desc.Platform.Architecture != "amd64" {
		t.Errorf("pushed descriptor platform %+v, want linux/amd64", desc.Platform)
	}

	byDigest := tr.ref(t, "test/app@"+desc.Digest.String())
	var warnings []string
	opts := OpenOptions{Insecure: true, Warn: func(m string) { warnings = append(warnings, m) }}
	got, err := openRegistryWith(context.Background(), byDigest, opts, env)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	if len(warnings) != 0 {
		t.Errorf("a pull by digest warned: %q", warnings)
	}
	if !bytes.Equal(got.RawManifest, img.RawManifest) || !bytes.Equal(got.RawConfig, img.RawConfig) {
		t.Fatalf("pulled manifest/config differ from the pushed ones")
	}
	for _, l := range img.Manifest.Layers {
		if b := readAllBlob(t, got, l.Digest); !bytes.Equal(b, readAllBlob(t, img, l.Digest)) {
			t.Errorf("layer %s differs after the round trip", l.Digest)
		}
	}

	// By tag: works, and the warning names the digest to pin.
	got2, err := openRegistryWith(context.Background(), tr.ref(t, "test/app:v1"), opts, env)
	if err != nil {
		t.Fatal(err)
	}
	got2.Close()
	pin := "pin it: docker://" + tr.Host + "/test/app@" + desc.Digest.String()
	if len(warnings) != 1 || !strings.Contains(warnings[0], pin) {
		t.Errorf("pull by tag warned %q, want one warning with %q", warnings, pin)
	}
	opts.Strict = true
	_, err = openRegistryWith(context.Background(), tr.ref(t, "test/app:v1"), opts, env)
	if !inputerr.Is(err) || !strings.Contains(err.Error(), pin) || !strings.Contains(err.Error(), "--strict") {
		t.Errorf("strict pull by tag: %v, want bad input naming %q", err, pin)
	}
	if _, err := openRegistryWith(context.Background(), byDigest, opts, env); err != nil {
		t.Errorf("strict pull by digest: %v", err)
	}
}

func TestRegistryPushUploadsOnlyMissingBlobs(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	a := memImage(t, "amd64", "", "base layer", "app layer")
	push(t, a, tr.ref(t, "test/app:a"), insecure(), env)
	if n := tr.uploads(); n < 3 {
		t.Fatalf("first push made %d upload requests, want at least one per blob (3)", n)
	}
	push(t, a, tr.ref(t, "test/app:a"), insecure(), env)
	push(t, a, tr.ref(t, "test/app:again"), insecure(), env)
	if n := tr.uploads(); n != 0 {
		t.Errorf("pushing an image the registry holds made %d upload requests", n)
	}
	// b shares the base layer: its new layer and config go, with a
	// POST/PATCH/PUT each; the base layer does not.
	b := memImage(t, "amd64", "", "base layer", "other app layer")
	push(t, b, tr.ref(t, "test/app:b"), insecure(), env)
	if n := tr.uploads(); n != 6 {
		t.Errorf("pushing an image with 2 new blobs made %d upload requests, want 6", n)
	}
}

func TestRegistryPushByDigest(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	img := memImage(t, "amd64", "", "x")
	other := memImage(t, "amd64", "", "y")
	wrong := tr.ref(t, "test/app@"+other.ManifestDesc.Digest.String())
	_, err := pushRegistryWith(context.Background(), img, wrong, insecure(), env)
	if !inputerr.Is(err) || !strings.Contains(err.Error(), wrong.String()) || !strings.Contains(err.Error(), img.ManifestDesc.Digest.String()) {
		t.Fatalf("push to a digest that is not the image's: %v, want bad input naming both", err)
	}
	if n := len(tr.Requests()); n != 0 {
		t.Errorf("a refused push still sent %d requests", n)
	}
	right := tr.ref(t, "test/app@"+img.ManifestDesc.Digest.String())
	if d := push(t, img, right, insecure(), env); d.Digest != img.ManifestDesc.Digest {
		t.Errorf("pushed %s", d.Digest)
	}
	if _, err := openRegistryWith(context.Background(), right, OpenOptions{Insecure: true}, env); err != nil {
		t.Errorf("pull of the image pushed by digest: %v", err)
	}
}

// putIndex stores an OCI index of the given images under tag.
func putIndex(t *testing.T, tr *testRegistry, repo, tag string, imgs ...*Image) {
	t.Helper()
	idx := v1.Index{MediaType: v1.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, img := range imgs {
		d := img.ManifestDesc
		d.Platform = &v1.Platform{OS: img.Config.OS, Architecture: img.Config.Architecture, Variant: img.Config.Variant}
		idx.Manifests = append(idx.Manifests, d)
	}
	data, _ := json.Marshal(idx)
	req, _ := http.NewRequest(http.MethodPut, tr.Server.URL+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(data))
	req.Header.Set("Content-Type", v1.MediaTypeImageIndex)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT index: %s", resp.Status)
	}
}

func TestRegistryPlatformIndex(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	host := memImage(t, runtime.GOARCH, "", "host layer")
	arm := memImage(t, "arm", "v7", "arm layer")
	if runtime.GOARCH == "arm" {
		arm = memImage(t, "s390x", "", "other layer")
	}
	for _, img := range []*Image{host, arm} {
		push(t, img, tr.ref(t, "test/multi@"+img.ManifestDesc.Digest.String()), insecure(), env)
	}
	putIndex(t, tr, "test/multi", "v1", arm, host)
	ref := tr.ref(t, "test/multi:v1")
	open := func(p *v1.Platform) (*Image, error) {
		return openRegistryWith(context.Background(), ref, OpenOptions{Insecure: true, Platform: p}, env)
	}
	got, err := open(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got.ManifestDesc.Digest != host.ManifestDesc.Digest || !bytes.Equal(got.RawConfig, host.RawConfig) {
		t.Errorf("no platform gave %s, want the host's %s", got.ManifestDesc.Digest, host.ManifestDesc.Digest)
	}
	p, _ := ParsePlatform(FormatPlatform(&v1.Platform{OS: "linux", Architecture: arm.Config.Architecture, Variant: arm.Config.Variant}))
	if got, err = open(p); err != nil {
		t.Fatal(err)
	}
	if got.ManifestDesc.Digest != arm.ManifestDesc.Digest {
		t.Errorf("%s gave %s, want %s", FormatPlatform(p), got.ManifestDesc.Digest, arm.ManifestDesc.Digest)
	}
	_, err = open(&v1.Platform{OS: "linux", Architecture: "riscv64"})
	if !inputerr.Is(err) || !strings.Contains(err.Error(), "linux/riscv64") || !strings.Contains(err.Error(), ref.String()) {
		t.Errorf("a platform the index lacks: %v, want bad input naming it and the reference", err)
	}
}

func TestRegistryVerifiesEveryBlob(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	img := memImage(t, "amd64", "", "the layer")
	push(t, img, tr.ref(t, "test/app:v1"), insecure(), env)
	ref := tr.ref(t, "test/app@"+img.ManifestDesc.Digest.String())
	opts := OpenOptions{Insecure: true}
	// corrupt answers a GET of path's suffix with body, same length.
	corrupt := func(suffix string, body []byte) {
		tr.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
			if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, suffix) {
				return false
			}
			w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
			w.Write(body)
			return true
		})
	}
	flip := func(b []byte) []byte {
		c := bytes.Clone(b)
		c[len(c)/2] ^= 1
		return c
	}

	corrupt(img.ManifestDesc.Digest.String(), bytes.Replace(img.RawManifest, []byte(`"schemaVersion":2`), []byte(`"schemaVersion": 2`), 1))
	_, err := openRegistryWith(context.Background(), ref, opts, env)
	wantErr(t, "a manifest not matching its digest", err, ref.String(), "manifest "+img.ManifestDesc.Digest.String(), "does not match")

	cd := img.Manifest.Config.Digest
	corrupt(cd.String(), flip(img.RawConfig))
	_, err = openRegistryWith(context.Background(), ref, opts, env)
	wantErr(t, "a config not matching its digest", err, ref.String(), "blob "+cd.String(), "does not match")

	ld := img.Manifest.Layers[0].Digest
	corrupt(ld.String(), flip([]byte("the layer")))
	got, err := openRegistryWith(context.Background(), ref, opts, env)
	if err != nil {
		t.Fatal(err)
	}
	r, err := got.OpenBlob(ld)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	wantErr(t, "a layer not matching its digest", err, ref.String(), "blob "+ld.String(), "does not match")

	corrupt(ld.String(), []byte("the layer and more"))
	r, _ = got.OpenBlob(ld)
	_, err = io.ReadAll(r)
	wantErr(t, "a layer longer than its descriptor", err, ref.String(), "blob "+ld.String(), "longer than")

	// The whole copy fails and leaves no output layout.
	out := filepath.Join(t.TempDir(), "out")
	dst := Reference{Transport: TransportOCI, Path: out, Tag: "x"}
	corrupt(ld.String(), flip([]byte("the layer")))
	_, err = WriteTo(context.Background(), got, dst, CopyOptions{})
	wantErr(t, "copying an image with a corrupt layer", err, "blob "+ld.String(), "does not match")
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a failed copy left %s", out)
	}
}

// wantErr checks that err is bad input and names each of parts, on one line.
func wantErr(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error", what)
		return
	}
	if !inputerr.Is(err) {
		t.Errorf("%s: %v is not bad input (exit 2)", what, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %q does not name %q", what, err, p)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("%s: error is more than one line: %q", what, err)
	}
}

func TestRegistryPushVerifiesSourceBlobs(t *testing.T) {
	tr := newTestRegistry(t, nil)
	img := memImage(t, "amd64", "", "good content")
	ld := img.Manifest.Layers[0].Digest
	img.src.(memSource)[ld] = []byte("evil content")
	_, err := pushRegistryWith(context.Background(), img, tr.ref(t, "test/app:v1"), insecure(), noEnv(t))
	wantErr(t, "pushing a corrupt source blob", err, "blob "+ld.String(), "does not match")
	delete(img.src.(memSource), ld)
	_, err = pushRegistryWith(context.Background(), img, tr.ref(t, "test/app:v1"), insecure(), noEnv(t))
	wantErr(t, "pushing a source that lacks a blob", err, "blob "+ld.String(), "missing")
}

func TestRegistryErrors(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	img := memImage(t, "amd64", "", "l")
	push(t, img, tr.ref(t, "test/app:v1"), insecure(), env)
	open := func(ref Reference, insecure bool) error {
		img, err := openRegistryWith(context.Background(), ref, OpenOptions{Insecure: insecure}, env)
		if err == nil {
			img.Close()
		}
		return err
	}

	missing := tr.ref(t, "test/app:nope")
	wantErr(t, "a missing tag", open(missing, true), missing.String(), "not found")
	missingRepo := tr.ref(t, "test/nothing:v1")
	wantErr(t, "a missing repository", open(missingRepo, true), missingRepo.String())
	missingDigest := tr.ref(t, "test/app@"+digest.FromString("nothing").String())
	wantErr(t, "a missing digest", open(missingDigest, true), missingDigest.String(), "not found")

	v1ref := tr.ref(t, "test/app:v1")
	wantErr(t, "plain HTTP without --insecure", open(v1ref, false), v1ref.String(), "plain HTTP", "--insecure")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed, _ := ParseReference("docker://" + l.Addr().String() + "/test/app:v1")
	l.Close()
	wantErr(t, "an unreachable registry", open(closed, true), closed.String(), "unreachable")

	// Server errors are the work failing (exit 1), not bad input.
	tr.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.Path, "/manifests/") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	err = open(v1ref, true)
	if err == nil || inputerr.Is(err) || !strings.Contains(err.Error(), v1ref.String()) || !strings.Contains(err.Error(), "503") {
		t.Errorf("a 503: %v, want a plain error naming the reference and the status", err)
	}
	_, err = pushRegistryWith(context.Background(), img, tr.ref(t, "test/app:v2"), insecure(), env)
	if err == nil || inputerr.Is(err) {
		t.Errorf("a push against a 503: %v, want a plain error", err)
	}
}

func TestRegistryAuth(t *testing.T) {
	tr := newTestRegistry(t, nil)
	tr.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
		if u, p, ok := r.BasicAuth(); ok && u == "alice" && p == "s3cret" {
			return false
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
		return true
	})
	img := memImage(t, "amd64", "", "secret layer")
	dst := tr.ref(t, "test/app:v1")
	dir := t.TempDir()
	writeAuth := func(file, key, user, pass string) string {
		p := filepath.Join(dir, file)
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		data, _ := json.Marshal(map[string]any{"auths": map[string]any{key: map[string]string{"auth": auth}}})
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := noEnv(t)
	_, err := pushRegistryWith(context.Background(), img, dst, insecure(), env)
	wantErr(t, "a push without credentials", err, dst.String(), "requires credentials")

	env.authFiles = []string{writeAuth("wrong.json", tr.Host, "alice", "guess")}
	_, err = pushRegistryWith(context.Background(), img, dst, insecure(), env)
	wantErr(t, "a push with wrong credentials", err, dst.String(), "refused the credentials from "+env.authFiles[0])

	env.authFiles = []string{writeAuth("right.json", tr.Host, "alice", "s3cret")}
	push(t, img, dst, insecure(), env)
	got, err := openRegistryWith(context.Background(), dst, OpenOptions{Insecure: true}, env)
	if err != nil {
		t.Fatalf("pull with credentials: %v", err)
	}
	got.Close()
}

func TestAuthFilesOrder(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{}, []string{"/run/containers/0/auth.json", "/home/u/.config/containers/auth.json", "/home/u/.docker/config.json"}},
		{map[string]string{"XDG_RUNTIME_DIR": "/run/user/0"}, []string{"/run/user/0/containers/auth.json", "/home/u/.config/containers/auth.json", "/home/u/.docker/config.json"}},
		// REGISTRY_AUTH_FILE replaces the runtime file, as for podman.
		{map[string]string{"XDG_RUNTIME_DIR": "/run/user/0", "REGISTRY_AUTH_FILE": "/a.json", "XDG_CONFIG_HOME": "/cfg", "DOCKER_CONFIG": "/dc"},
			[]string{"/a.json", "/cfg/containers/auth.json", "/dc/config.json"}},
	} {
		got := authFilesFrom(func(k string) string { return tc.env[k] }, "/home/u", 0)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("env %v: auth files %q, want %q", tc.env, got, tc.want)
		}
	}
}

func TestFindCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(file string, auths map[string]string) string {
		p := filepath.Join(dir, file)
		m := map[string]any{}
		for k, user := range auths {
			m[k] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":pw"))}
		}
		data, _ := json.Marshal(map[string]any{"auths": m})
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	repo, _ := name.NewRepository("reg.example:5000/team/app")
	user := func(files ...string) (string, string) {
		t.Helper()
		c, err := findCredentials(files, repo)
		if err != nil {
			t.Fatal(err)
		}
		ac, err := c.auth.Authorization()
		if err != nil {
			t.Fatal(err)
		}
		return ac.Username, c.from
	}
	other := write("other.json", map[string]string{"elsewhere.example": "nobody"})
	podman := write("podman.json", map[string]string{"reg.example:5000": "podman-user"})
	docker := write("docker.json", map[string]string{"https://reg.example:5000/v1/": "docker-user"})
	nested := write("nested.json", map[string]string{"reg.example:5000": "host-user", "reg.example:5000/team": "team-user", "reg.example:5000/team/other": "other-user"})
	missing := filepath.Join(dir, "missing.json")

	if u, from := user(missing, other, podman, docker); u != "podman-user" || from != podman {
		t.Errorf("got %q from %s, want podman-user from the first file that has the registry", u, from)
	}
	if u, _ := user(docker, podman); u != "docker-user" {
		t.Errorf("got %q, want docker-user from a URL-style key of the first file", u)
	}
	if u, _ := user(nested); u != "team-user" {
		t.Errorf("got %q, want the most specific namespace key", u)
	}
	if u, from := user(missing, other); u != "" || from != "" {
		t.Errorf("got %q from %q, want anonymous", u, from)
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{not json"), 0o600)
	if _, err := findCredentials([]string{bad, podman}, repo); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a malformed auth file: %v, want an error naming it", err)
	}
}

// certPair makes a key and a certificate for cn, signed by parent (self
// signed when nil); CA certificates when isCA.
func certPair(t *testing.T, cn string, isCA bool, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: isCA, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

func TestRegistryCertsDir(t *testing.T) {
	clientCA, clientCAKey, _, _ := certPair(t, "client CA", true, nil, nil)
	_, _, clientCert, clientKey := certPair(t, "layerfs client", false, clientCA, clientCAKey)
	pool := x509.NewCertPool()
	pool.AddCert(clientCA)
	tr := newTestRegistry(t, &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool})
	serverCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tr.Server.Certificate().Raw})

	// Two certs.d roots, as /etc/containers and /etc/docker: the CA in
	// one, the client pair in the other.
	containers, docker := t.TempDir(), t.TempDir()
	env := registryEnv{certDirs: []string{containers, docker}, authFiles: noEnv(t).authFiles}
	img := memImage(t, "amd64", "", "tls layer")
	ref := tr.ref(t, "test/app:v1")
	pushOpts := CopyOptions{}

	_, err := pushRegistryWith(context.Background(), img, ref, pushOpts, env)
	wantErr(t, "an untrusted registry certificate", err, ref.String(), "not trusted")

	hostDir := func(root string) string {
		d := filepath.Join(root, tr.Host)
		os.MkdirAll(d, 0o755)
		return d
	}
	os.WriteFile(filepath.Join(hostDir(containers), "ca.crt"), serverCA, 0o644)
	_, err = pushRegistryWith(context.Background(), img, ref, pushOpts, env)
	wantErr(t, "a registry that wants a client certificate", err, ref.String(), "refused the TLS handshake")

	os.WriteFile(filepath.Join(hostDir(docker), "client.cert"), clientCert, 0o644)
	_, err = pushRegistryWith(context.Background(), img, ref, pushOpts, env)
	wantErr(t, "a client certificate without its key", err, ref.String(), "client.cert")

	os.WriteFile(filepath.Join(hostDir(docker), "client.key"), clientKey, 0o600)
	push(t, img, ref, pushOpts, env)
	got, err := openRegistryWith(context.Background(), ref, OpenOptions{}, env)
	if err != nil {
		t.Fatalf("pull over TLS with certs.d: %v", err)
	}
	got.Close()

	os.WriteFile(filepath.Join(hostDir(containers), "lone.key"), clientKey, 0o600)
	if _, err := registryTLSConfig(tr.Host, env.certDirs); err == nil || !strings.Contains(err.Error(), "lone.key") {
		t.Errorf("a key without its certificate: %v, want an error naming it", err)
	}
	if _, err := registryTLSConfig("..", env.certDirs); err == nil {
		t.Errorf("host .. was accepted as a certs.d dir name")
	}
}

func TestRegistryRedirects(t *testing.T) {
	tr := newTestRegistry(t, nil)
	env := noEnv(t)
	img := memImage(t, "amd64", "", "redirected layer")
	push(t, img, tr.ref(t, "test/app:v1"), insecure(), env)
	ld := img.Manifest.Layers[0].Digest
	target := ""
	tr.SetTamper(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodGet || !strings.HasSuffix(r.URL.Path, ld.String()) || r.URL.RawQuery != "" {
			return false
		}
		http.Redirect(w, r, target, http.StatusTemporaryRedirect)
		return true
	})
	got, err := openRegistryWith(context.Background(), tr.ref(t, "test/app:v1"), OpenOptions{Insecure: true}, env)
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()
	// A redirect within the registry's host is followed.
	target = tr.Server.URL + "/v2/test/app/blobs/" + ld.String() + "?moved=1"
	if b := readAllBlob(t, got, ld); string(b) != "redirected layer" {
		t.Errorf("redirected blob read %q", b)
	}
	// One to another local address is not.
	target = "http://127.0.0.2:1/metadata"
	if _, err := got.OpenBlob(ld); err == nil || !strings.Contains(err.Error(), "redirect from") {
		t.Errorf("a redirect to another local address: %v, want it refused", err)
	}
}
