package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// arRun runs layerfs and returns its stdout, stderr and exit status.
func arRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(layerfsBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if xe, ok := err.(*exec.ExitError); ok {
		code = xe.ExitCode()
	} else if err != nil {
		t.Fatalf("layerfs %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// arLayerfs runs layerfs and fails the test unless it succeeds.
func arLayerfs(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := arRun(t, args...)
	if code != 0 {
		t.Fatalf("layerfs %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// arBadInput runs layerfs expecting exit status 2 with one line on
// stderr that contains each of want.
func arBadInput(t *testing.T, want []string, args ...string) {
	t.Helper()
	_, errOut, code := arRun(t, args...)
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if code != 2 || len(lines) != 1 {
		t.Errorf("layerfs %s: exit %d, stderr %q; want exit 2 and one line", strings.Join(args, " "), code, errOut)
		return
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("layerfs %s: %q does not name %q", strings.Join(args, " "), lines[0], w)
		}
	}
}

// arCopy runs `layerfs copy SRC DST --json` and returns the digest.
func arCopy(t *testing.T, src, dst string, args ...string) string {
	t.Helper()
	out := arLayerfs(t, append([]string{"copy", src, dst, "--json"}, args...)...)
	var r struct{ Digest string }
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.Digest == "" {
		t.Fatalf("layerfs copy %s %s --json printed %q (%v)", src, dst, out, err)
	}
	return r.Digest
}

// arImage commits a 3-layer image to oci:dir:tag: a busybox rootfs
// (gzip) with hardlinks, a symlink, a fifo, owners, a setuid file and an
// xattr, then two layers written through a kernel overlayfs mount
// (whiteouts, a re-created opaque dir, a removed tree, a copy-up with new
// metadata, a new hardlink), compressed as comp2 and comp3. Extra args
// go to every commit (--arch ...). It returns the manifest digest.
func arImage(t *testing.T, dir, tag, comp2, comp3 string, extra ...string) string {
	t.Helper()
	testenv.NeedRoot(t)
	busybox := "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		testenv.Unavailable(t, "busybox-static is not installed: %v", err)
	}
	work := t.TempDir()
	runScript(t, work, "layer 1", `
		mkdir -p l1/bin l1/etc/dir l1/usr/share/doc l1/usr/lib l1/usr/bin l1/home/user l1/tmp l1/dev
		cp /bin/busybox l1/bin/busybox
		for a in sh cat ls test stat; do ln -s busybox l1/bin/$a; done
		echo hello > l1/etc/hello
		setfattr -n user.test -v value l1/etc/hello
		ln -s hello l1/etc/link
		echo x > l1/etc/gone
		mkf l1/etc/dir/a; mkf l1/etc/dir/b
		mkf l1/usr/share/doc/one
		echo shared > l1/usr/lib/h1; ln l1/usr/lib/h1 l1/usr/lib/h2
		mkf l1/usr/bin/suid; chmod 4755 l1/usr/bin/suid
		mkf l1/home/user/file; chown -R 1000:1000 l1/home/user
		chmod 1777 l1/tmp
		mkfifo l1/dev/fifo`)
	l1 := filepath.Join(work, "l1")
	img := "oci:" + dir + ":" + tag
	layerfsCommit(t, append([]string{"--upper", l1, "--image", img}, extra...)...)
	up2 := throughOverlay(t, []string{l1}, `
		rm etc/gone
		rm -rf etc/dir; mkdir etc/dir; echo new > etc/dir/c
		echo two > etc/two
		chmod 600 etc/hello
		chown 2:2 usr/share/doc/one`)
	layerfsCommit(t, append([]string{"--upper", up2, "--lower", l1, "--image", img, "--compression", comp2}, extra...)...)
	up3 := throughOverlay(t, []string{l1, up2}, `
		rm -rf usr/share/doc
		echo three > etc/three; ln etc/three etc/three-link
		echo appended >> etc/hello`)
	r := layerfsCommit(t, append([]string{"--upper", up3, "--lower", l1, "--lower", up2, "--image", img, "--compression", comp3}, extra...)...)
	return r.Manifest
}

// arConfig reads oci:dir:tag's raw config and its diff_ids.
func arConfig(t *testing.T, dir, tag string) (raw []byte, diffIDs []string) {
	t.Helper()
	im, err := appliers.Image(dir, tag)
	if err != nil {
		t.Fatal(err)
	}
	if raw, err = im.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	cf, err := im.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range cf.RootFS.DiffIDs {
		diffIDs = append(diffIDs, d.String())
	}
	return raw, diffIDs
}

func arSha256(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// arPodman runs podman on a private store.
func arPodman(t *testing.T, root, runroot string, args ...string) (string, error) {
	t.Helper()
	base := []string{"--root", root, "--runroot", runroot, "--storage-driver", "overlay",
		"--runtime", "/usr/sbin/runc", "--cgroup-manager=cgroupfs", "--events-backend=file"}
	out, err := exec.Command("podman", append(base, args...)...).CombinedOutput()
	return string(out), err
}

// The expected view of arImage from inside a container.
const arScript = `cat /etc/hello /etc/dir/c /etc/three /usr/lib/h2; ls /etc/dir; test -e /etc/gone || echo gone-ok; test -e /usr/share/doc || echo doc-ok; stat -c '%a %u:%g' /usr/bin/suid /home/user/file /etc/hello`
const arWant = "hello\nappended\nnew\nthree\nshared\nc\ngone-ok\ndoc-ok\n4755 0:0\n644 1000:1000\n600 0:0\n"

// TestArchiveDockerLoadsAndRuns: a layerfs-built image with gzip, zstd
// and uncompressed layers, written as docker-archive:, is loaded by
// `podman load` with the name given, the same config (podman's image ID)
// and diff_ids, and runs.
func TestArchiveDockerLoadsAndRuns(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"podman", "runc", "setfattr"} {
		needTool(t, tool)
	}
	dir := filepath.Join(t.TempDir(), "img")
	arImage(t, dir, "v1", "zstd", "none")
	cfg, diffIDs := arConfig(t, dir, "v1")
	archive := filepath.Join(t.TempDir(), "out", "img.tar")
	arCopy(t, "oci:"+dir+":v1", "docker-archive:"+archive+":localhost/lfs-archive:v1")

	root, runroot := heavyPodmanStore(t)
	out, err := arPodman(t, root, runroot, "load", "-i", archive)
	if err != nil {
		t.Fatalf("podman load -i %s: %v\n%s", archive, err, out)
	}
	if !strings.Contains(out, "localhost/lfs-archive:v1") {
		t.Errorf("podman load printed %q: want the image loaded as localhost/lfs-archive:v1", out)
	}
	out, err = arPodman(t, root, runroot, "image", "inspect", "--format", "{{.Id}} {{json .RootFS.Layers}}", "localhost/lfs-archive:v1")
	if err != nil {
		t.Fatalf("podman image inspect: %v\n%s", err, out)
	}
	id, layersJSON, _ := strings.Cut(strings.TrimSpace(out), " ")
	var loaded []string
	json.Unmarshal([]byte(layersJSON), &loaded)
	if "sha256:"+id != arSha256(cfg) || !slices.Equal(loaded, diffIDs) {
		t.Errorf("podman has image %s with layers %v; want the config %s and diff_ids %v", id, loaded, arSha256(cfg), diffIDs)
	}
	out, err = arPodman(t, root, runroot, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
		"localhost/lfs-archive:v1", "/bin/sh", "-c", arScript)
	if err != nil || out != arWant {
		t.Errorf("podman run: %v\n got %q\nwant %q", err, out, arWant)
	}
}

// TestArchiveDockerFromSkopeo: a docker-archive: written by skopeo (the
// legacy layout with ID/layer.tar symlinks and a repositories file) is
// read by layerfs with the same config bytes and diff_ids and the same
// unpacked rootfs; a layerfs-written one is read by skopeo with the same
// config bytes.
func TestArchiveDockerFromSkopeo(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"skopeo", "umoci", "setfattr"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "img")
	arImage(t, dir, "v1", "gzip", "none")
	cfg, diffIDs := arConfig(t, dir, "v1")
	want := unpackUmoci(t, dir, "v1")

	sk := filepath.Join(tmp, "skopeo.tar")
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+dir+":v1", "docker-archive:"+sk+":example/sk:v2").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy to docker-archive: %v\n%s", err, out)
	}
	for _, name := range []string{":example/sk:v2", ":docker.io/example/sk:v2", ""} {
		out := filepath.Join(tmp, "from-skopeo"+strings.NewReplacer("/", "_", ":", "_").Replace(name))
		arCopy(t, "docker-archive:"+sk+name, "oci:"+out+":x")
		gotCfg, gotIDs := arConfig(t, out, "x")
		if !bytes.Equal(gotCfg, cfg) || !slices.Equal(gotIDs, diffIDs) {
			t.Errorf("docker-archive:%s%s read as config %s, diff_ids %v; want %s, %v", sk, name, arSha256(gotCfg), gotIDs, arSha256(cfg), diffIDs)
		}
		validateImage(t, out, "x")
		if diffs := tree.Diff(want, unpackUmoci(t, out, "x"), tree.Options{}); len(diffs) > 0 {
			t.Errorf("docker-archive:%s%s unpacks differently:\n%s", sk, name, strings.Join(diffs, "\n"))
		}
	}
	arBadInput(t, []string{sk, "example/sk:v3", "docker.io/example/sk:v2"}, "copy", "docker-archive:"+sk+":example/sk:v3", "oci:"+filepath.Join(tmp, "never")+":x")

	ours := filepath.Join(tmp, "layerfs.tar")
	arCopy(t, "oci:"+dir+":v1", "docker-archive:"+ours)
	out, err := exec.Command("skopeo", "inspect", "--config", "--raw", "docker-archive:"+ours).Output()
	if err != nil || !bytes.Equal(out, cfg) {
		t.Errorf("skopeo inspect --config of layerfs's docker-archive: %v; config %s, want %s", err, arSha256(out), arSha256(cfg))
	}
	skOCI := filepath.Join(tmp, "skopeo-oci")
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "docker-archive:"+ours, "oci:"+skOCI+":y").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy from layerfs's docker-archive: %v\n%s", err, out)
	}
	if diffs := tree.Diff(want, unpackUmoci(t, skOCI, "y"), tree.Options{}); len(diffs) > 0 {
		t.Errorf("layerfs's docker-archive, copied by skopeo, unpacks differently:\n%s", strings.Join(diffs, "\n"))
	}
}

// TestArchiveOCIRoundTripsThroughSkopeo: layerfs's oci-archive: is read by
// skopeo into a layout with the same manifest digest; skopeo's is read by
// layerfs, the same; archive to archive keeps it too.
func TestArchiveOCIRoundTripsThroughSkopeo(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"skopeo", "setfattr"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "img")
	digest := arImage(t, dir, "v1", "zstd", "gzip")

	ours := filepath.Join(tmp, "layerfs-oci.tar")
	if got := arCopy(t, "oci:"+dir+":v1", "oci-archive:"+ours+":v1"); got != digest {
		t.Errorf("layerfs copy to oci-archive: manifest %s, want %s", got, digest)
	}
	skOut := filepath.Join(tmp, "skopeo-layout")
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "oci-archive:"+ours+":v1", "oci:"+skOut+":v1").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy from layerfs's oci-archive: %v\n%s", err, out)
	}
	if _, got := imageLayers(t, skOut, "v1"); got != digest {
		t.Errorf("skopeo read layerfs's oci-archive as manifest %s, want %s", got, digest)
	}
	validateImage(t, skOut, "v1")

	theirs := filepath.Join(tmp, "skopeo-oci.tar")
	if out, err := exec.Command("skopeo", "--insecure-policy", "copy", "--quiet", "oci:"+dir+":v1", "oci-archive:"+theirs+":v2").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy to oci-archive: %v\n%s", err, out)
	}
	back := filepath.Join(tmp, "layerfs-layout")
	if got := arCopy(t, "oci-archive:"+theirs+":v2", "oci:"+back+":v2"); got != digest {
		t.Errorf("layerfs read skopeo's oci-archive as manifest %s, want %s", got, digest)
	}
	validateImage(t, back, "v2")
	again := filepath.Join(tmp, "again.tar")
	if got := arCopy(t, "oci-archive:"+theirs+":v2", "oci-archive:"+again); got != digest {
		t.Errorf("oci-archive to oci-archive: manifest %s, want %s", got, digest)
	}
	// What the archive holds is the layout skopeo wrote back: same bytes
	// on a second write.
	a, _ := os.ReadFile(ours)
	arCopy(t, "oci:"+dir+":v1", "oci-archive:"+ours+":v1")
	if b, _ := os.ReadFile(ours); !bytes.Equal(a, b) {
		t.Errorf("two writes of one oci-archive differ")
	}
}

// TestArchiveBadInput: missing archives, names and tags are exit 2 with
// one line naming them, and nothing is written.
func TestArchiveBadInput(t *testing.T) {
	t.Parallel()
	testenv.NeedRoot(t)
	tmp := t.TempDir()
	up := filepath.Join(tmp, "up")
	if err := os.MkdirAll(filepath.Join(up, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "img")
	layerfsCommit(t, "--upper", up, "--image", "oci:"+dir+":v1")
	out := filepath.Join(tmp, "out.tar")
	arBadInput(t, []string{filepath.Join(tmp, "missing.tar"), "does not exist"}, "copy", "docker-archive:"+filepath.Join(tmp, "missing.tar"), "oci:"+dir+":x")
	arBadInput(t, []string{"nope"}, "copy", "oci:"+dir+":nope", "docker-archive:"+out+":a/b:c")
	arBadInput(t, []string{"nope"}, "copy", "oci:"+dir+":nope", "oci-archive:"+out)
	if err := os.WriteFile(filepath.Join(tmp, "text.tar"), bytes.Repeat([]byte("text "), 200), 0o644); err != nil {
		t.Fatal(err)
	}
	arBadInput(t, []string{"text.tar", "not a docker archive"}, "copy", "docker-archive:"+filepath.Join(tmp, "text.tar"), "oci:"+dir+":x")
	arBadInput(t, []string{"text.tar"}, "copy", "oci-archive:"+filepath.Join(tmp, "text.tar"), "oci:"+dir+":x")
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a failed copy wrote %s", out)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, ".layerfs-*")); len(left) > 0 {
		t.Errorf("failed copies left %v", left)
	}
}
