package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/integration/testenv"
)

// `layerfs build --from-env` against what meta-virtualization's image-oci
// class makes and what its test suite (tests/test_multilayer_oci.py)
// checks; research/image-oci.md has the class's rules.

// yoctoName etc. are the names an older oe-core gives the demo recipe
// app-container-multilayer: IMAGE_NAME, IMAGE_NAME_SUFFIX, IMAGE_BASENAME.
const (
	yoctoBasename = "app-container-multilayer"
	yoctoName     = "app-container-multilayer-qemux86-64-20250101120000"
	yoctoSuffix   = ".rootfs"
	yoctoLayout   = yoctoName + yoctoSuffix + "-oci"
	yoctoEpoch    = "1700000000"
)

// yoctoEnv is what the bbclass exports for a recipe with OCI_LAYER_MODE
// multi and layers: every variable, with the class's defaults where the
// recipe sets nothing, as bitbake expands them. TOPDIR is dir/build and
// the cache the class's default below it; IMGDEPLOYDIR is dir/deploy.
func yoctoEnv(t *testing.T, dir, layers string) map[string]string {
	t.Helper()
	top := filepath.Join(dir, "build")
	for _, d := range []string{top, filepath.Join(dir, "deploy"), filepath.Join(dir, "image-rootfs"), filepath.Join(dir, "pkgdata", "runtime")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return map[string]string{
		"OCI_LAYER_MODE":            "multi",
		"OCI_LAYERS":                layers,
		"OCI_LAYER_CACHE":           "1",
		"OCI_LAYER_CACHE_DIR":       filepath.Join(top, "oci-layer-cache", "qemux86-64"),
		"OCI_BASE_IMAGE":            "",
		"OCI_BASE_IMAGE_TAG":        "latest",
		"OCI_IMAGE_TAG":             "latest",
		"OCI_IMAGE_ENTRYPOINT":      "",
		"OCI_IMAGE_ENTRYPOINT_ARGS": "",
		"OCI_IMAGE_CMD":             "/bin/sh",
		"OCI_IMAGE_ENV_VARS":        "",
		"OCI_IMAGE_LABELS":          "",
		"OCI_IMAGE_PORTS":           "",
		"OCI_IMAGE_RUNTIME_UID":     "",
		"OCI_IMAGE_WORKINGDIR":      "",
		"OCI_IMAGE_STOPSIGNAL":      "",
		"OCI_IMAGE_OS":              "linux",
		"OCI_IMAGE_ARCH":            "amd64",
		"OCI_IMAGE_SUBARCH":         "",
		"OCI_IMAGE_AUTHOR":          "OpenEmbedded",
		"OCI_IMAGE_AUTHOR_EMAIL":    "oe.patch@oe",
		"OCI_IMAGE_AUTO_LABELS":     "1",
		"OCI_IMAGE_REVISION":        "",
		"OCI_IMAGE_BRANCH":          "",
		"OCI_IMAGE_BUILD_DATE":      "",
		"OCI_IMAGE_TAR_OUTPUT":      "true",
		"IMGDEPLOYDIR":              filepath.Join(dir, "deploy"),
		"IMAGE_NAME":                yoctoName,
		"IMAGE_NAME_SUFFIX":         yoctoSuffix,
		"IMAGE_BASENAME":            yoctoBasename,
		"DEPLOY_DIR_IMAGE":          filepath.Join(top, "tmp", "deploy", "images", "qemux86-64"),
		"MACHINE":                   "qemux86-64",
		"TUNE_PKGARCH":              "core2-64",
		"TARGET_ARCH":               "x86_64",
		"PKGDATA_DIR":               filepath.Join(dir, "pkgdata"),
		"IMAGE_ROOTFS":              filepath.Join(dir, "image-rootfs"),
		"TOPDIR":                    top,
		"SOURCE_DATE_EPOCH":         yoctoEpoch,
		"LAYERFS_INSTALL":           "./tinypkg",
		"LAYERFS_CACHE_FROM":        "",
		"LAYERFS_CACHE_TO":          "",
	}
}

// yoctoPkgdata writes PKGDATA_DIR/runtime/<pkg> as oe-core's packagedata
// does, with PKGV (and PKGR, which the class does not key on).
func yoctoPkgdata(t *testing.T, dir, pkg, pkgv, pkgr string) {
	t.Helper()
	data := fmt.Sprintf("PN: %s\nPKG: %s\nPKGV: %s\nPKGR: %s\nPKGE: \nFILES:%s: /usr/share/%s\nPKGSIZE:%s: 12\n", pkg, pkg, pkgv, pkgr, pkg, pkg, pkg)
	if err := os.WriteFile(filepath.Join(dir, "pkgdata", "runtime", pkg), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fromEnvBuild runs `layerfs build --from-env ARGS` in dir with exactly
// vars in its environment (plus PATH and HOME), as the class's task runs
// it.
func fromEnvBuild(ctx context.Context, t *testing.T, dir string, vars map[string]string, args ...string) buildRun {
	t.Helper()
	cmd := exec.CommandContext(ctx, layerfsBin, append([]string{"build", "--from-env"}, args...)...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		cmd.Env = append(cmd.Env, k+"="+vars[k])
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	r := buildRun{err: cmd.Run()}
	r.stdout, r.stderr = stdout.String(), stderr.String()
	if xe, ok := r.err.(*exec.ExitError); ok {
		r.code = xe.ExitCode()
	}
	if slices.Contains(args, "--json") && r.err == nil {
		if err := json.Unmarshal(stdout.Bytes(), &r.result); err != nil {
			t.Fatalf("layerfs build --from-env --json: %v\n%s", err, r.stdout)
		}
	}
	return r
}

func mustFromEnvBuild(ctx context.Context, t *testing.T, dir string, vars map[string]string, args ...string) buildRun {
	t.Helper()
	r := fromEnvBuild(ctx, t, dir, vars, args...)
	if r.err != nil {
		t.Fatalf("layerfs build --from-env: %v\nstdout:\n%s\nstderr:\n%s", r.err, r.stdout, r.stderr)
	}
	return r
}

// skopeoInspect is what `skopeo inspect REF` says of an image.
type skopeoInspect struct {
	Digest       string
	Layers       []string
	Architecture string
	Os           string
	Labels       map[string]string
}

func yoctoSkopeoInspect(t *testing.T, ref string) skopeoInspect {
	t.Helper()
	out, err := exec.Command("skopeo", "inspect", ref).Output()
	if err != nil {
		var stderr []byte
		if xe, ok := err.(*exec.ExitError); ok {
			stderr = xe.Stderr
		}
		t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, stderr)
	}
	var r skopeoInspect
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, out)
	}
	return r
}

func yoctoImageConfig(t *testing.T, ref string) (configJSON, string) {
	t.Helper()
	out, err := exec.Command("skopeo", "inspect", "--config", "--raw", ref).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --config --raw %s: %v", ref, err)
	}
	var c configJSON
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatalf("config of %s: %v\n%s", ref, err, out)
	}
	return c, string(out)
}

func yoctoTarMembers(t *testing.T, file string) []string {
	t.Helper()
	out := mustRun(t, "", "tar", "-tf", file)
	return strings.Split(strings.TrimSpace(out), "\n")
}

// TestYoctoSameImageTwoRoutes: one 3-layer image, built from a spec and
// from the class's variables, is the same image (same keys, same
// manifest), and --from-env writes the class's deploy outputs: the
// layout, NAME.tar (an oci-archive with members ./...), NAME-dir.tar (the
// layout dir) and the three ${IMAGE_BASENAME}-${tag}-oci links, which
// the test suite's glob and skopeo read.
func TestYoctoSameImageTwoRoutes(t *testing.T) {
	t.Parallel()
	testenv.NeedTool(t, "skopeo")
	f := newBuildFixture(t)
	for _, p := range []struct{ name, version string }{{"a", "1.0"}, {"b", "1.1"}, {"c", "2.0"}, {"d", "4.0"}} {
		f.pkg(p.name, p.version, map[string]string{"usr/share/" + p.name + "/README": "package " + p.name + "\n"}, nil)
	}
	vars := yoctoEnv(t, f.dir, "base:packages:a+b shell:packages:c app:packages:d")
	for pkg, v := range map[string]string{"a": "1.0", "b": "1.1", "c": "2.0", "d": "4.0"} {
		yoctoPkgdata(t, f.dir, pkg, v, "r0")
	}
	labels := map[string]string{
		"OCI_IMAGE_BUILD_DATE": "2025-01-01T12:00:00Z",
		"OCI_IMAGE_REVISION":   "0123abc",
		"OCI_IMAGE_BRANCH":     "scarthgap",
	}
	maps.Copy(vars, labels)
	spec := fmt.Sprintf(`image: oci:%s/spec-out:latest
os: linux
machine: qemux86-64
tune: core2-64
arch: amd64
install: ./tinypkg
pkgdata: pkgdata
layers:
  - {name: base,  type: packages, packages: [a, b]}
  - {name: shell, type: packages, packages: [c]}
  - {name: app,   type: packages, packages: [d]}
config:
  cmd: [/bin/sh]
  author: oe.patch@oe
  labels:
    org.opencontainers.image.created: "2025-01-01T12:00:00Z"
    org.opencontainers.image.revision: "0123abc"
    org.opencontainers.image.ref.name: "scarthgap"
`, f.dir)
	if err := os.WriteFile(filepath.Join(f.dir, "route.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	fromSpec := layerfsBuild(ctx, t, f.dir, []string{"SOURCE_DATE_EPOCH=" + yoctoEpoch}, "route.yaml", "--cache", t.TempDir(), "--json")
	if fromSpec.err != nil {
		t.Fatalf("build of the spec: %v\n%s", fromSpec.err, fromSpec.stderr)
	}
	fromEnv := mustFromEnvBuild(ctx, t, f.dir, vars, "--json")

	deploy := vars["IMGDEPLOYDIR"]
	layout := filepath.Join(deploy, yoctoLayout)
	if want := "oci:" + layout + ":latest"; fromEnv.result.Image != want {
		t.Errorf("--from-env wrote %s, want %s", fromEnv.result.Image, want)
	}
	if len(fromEnv.result.Layers) != 3 || len(fromSpec.result.Layers) != 3 {
		t.Fatalf("layers: spec %d, env %d, want 3 each", len(fromSpec.result.Layers), len(fromEnv.result.Layers))
	}
	for i, l := range fromEnv.result.Layers {
		s := fromSpec.result.Layers[i]
		if l.Name != s.Name || l.Key != s.Key || l.Digest != s.Digest {
			t.Errorf("layer %d: env %s key %.16s digest %s; spec %s key %.16s digest %s", i, l.Name, l.Key, l.Digest, s.Name, s.Key, s.Digest)
		}
	}
	if fromEnv.result.Manifest != fromSpec.result.Manifest {
		_, envRaw := yoctoImageConfig(t, "oci:"+layout+":latest")
		_, specRaw := yoctoImageConfig(t, "oci:"+f.dir+"/spec-out:latest")
		t.Errorf("manifests differ: env %s, spec %s\nenv config:  %s\nspec config: %s", fromEnv.result.Manifest, fromSpec.result.Manifest, envRaw, specRaw)
	}
	// The versions came from PKGDATA_DIR.
	if !strings.Contains(fromEnv.stderr, "OCI Cache MISS: Layer 'base' (base:a=1.0 b=1.1)") {
		t.Errorf("--from-env log lacks the base miss with pkgdata versions:\n%s", fromEnv.stderr)
	}

	cfg, raw := yoctoImageConfig(t, "oci:"+layout+":latest")
	wantLabels := map[string]string{
		"org.opencontainers.image.created":  "2025-01-01T12:00:00Z",
		"org.opencontainers.image.revision": "0123abc",
		"org.opencontainers.image.ref.name": "scarthgap",
	}
	if !maps.Equal(cfg.Config.Labels, wantLabels) || !slices.Equal(cfg.Config.Cmd, []string{"/bin/sh"}) ||
		cfg.Config.Entrypoint != nil || cfg.Author != "oe.patch@oe" || cfg.Architecture != "amd64" || cfg.OS != "linux" {
		t.Errorf("config of the --from-env image:\n%s", raw)
	}
	if cfg.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("image created %q, want SOURCE_DATE_EPOCH's 2023-11-14T22:13:20Z", cfg.Created)
	}

	// The layout: readable by all (the deploy dir is served), one image,
	// which the suite inspects without a tag.
	if st, err := os.Stat(layout); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("layout %s: %v, mode %v, want 0755", layout, err, st.Mode())
	}
	manifest := fromEnv.result.Manifest
	if got := yoctoSkopeoInspect(t, "oci:"+layout+":latest"); got.Digest != manifest || len(got.Layers) != 3 {
		t.Errorf("skopeo inspect oci:%s:latest: digest %s, %d layers; want %s, 3", layout, got.Digest, len(got.Layers), manifest)
	}
	// The suite: glob app-container-multilayer*-oci, resolve, skopeo
	// inspect oci:DIR (no tag), 3 layers.
	globbed, _ := filepath.Glob(filepath.Join(deploy, yoctoBasename+"*-oci"))
	if len(globbed) != 2 {
		t.Errorf("glob %s*-oci: %v, want the layout and its link", yoctoBasename, globbed)
	}
	for _, g := range globbed {
		resolved, err := filepath.EvalSymlinks(g)
		if err != nil {
			t.Fatal(err)
		}
		if got := yoctoSkopeoInspect(t, "oci:"+resolved); len(got.Layers) != 3 || got.Digest != manifest {
			t.Errorf("skopeo inspect oci:%s: %d layers, digest %s", resolved, len(got.Layers), got.Digest)
		}
	}

	// NAME.tar: the layout's content at the top, members ./..., an
	// oci-archive.
	archive := layout + ".tar"
	members := yoctoTarMembers(t, archive)
	for _, m := range members {
		if !strings.HasPrefix(m, "./") {
			t.Errorf("%s: member %q does not start with ./", filepath.Base(archive), m)
			break
		}
	}
	for _, want := range []string{"./index.json", "./oci-layout"} {
		if !slices.Contains(members, want) {
			t.Errorf("%s lacks %s: %v", filepath.Base(archive), want, members)
		}
	}
	if got := yoctoSkopeoInspect(t, "oci-archive:"+archive); got.Digest != manifest || len(got.Layers) != 3 {
		t.Errorf("skopeo inspect oci-archive:%s: digest %s, %d layers; want %s", archive, got.Digest, len(got.Layers), manifest)
	}
	// NAME-dir.tar: the layout dir itself.
	dirTar := layout + "-dir.tar"
	members = yoctoTarMembers(t, dirTar)
	for _, m := range members {
		if m != yoctoLayout+"/" && !strings.HasPrefix(m, yoctoLayout+"/") {
			t.Errorf("%s: member %q is not under %s/", filepath.Base(dirTar), m, yoctoLayout)
			break
		}
	}
	if !slices.Contains(members, yoctoLayout+"/index.json") {
		t.Errorf("%s lacks %s/index.json: %v", filepath.Base(dirTar), yoctoLayout, members)
	}
	untar := t.TempDir()
	mustRun(t, "", "tar", "-xf", dirTar, "-C", untar)
	if got := yoctoSkopeoInspect(t, "oci:"+filepath.Join(untar, yoctoLayout)+":latest"); got.Digest != manifest {
		t.Errorf("the layout of NAME-dir.tar: digest %s, want %s", got.Digest, manifest)
	}
	// The links, relative, as ln -sfn in IMGDEPLOYDIR makes them.
	for link, target := range map[string]string{
		yoctoBasename + "-latest-oci":         yoctoLayout,
		yoctoBasename + "-latest-oci.tar":     yoctoLayout + ".tar",
		yoctoBasename + "-latest-oci-dir.tar": yoctoLayout + "-dir.tar",
	} {
		if got, err := os.Readlink(filepath.Join(deploy, link)); err != nil || got != target {
			t.Errorf("link %s -> %q (%v), want %s", link, got, err, target)
		}
	}
	// Nothing else: no bundle, no temp files.
	ents, _ := os.ReadDir(deploy)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 6 {
		t.Errorf("IMGDEPLOYDIR holds %q, want the layout, two tars and three links", names)
	}

	// A rebuild replaces all of it with the same image, all from the cache.
	again := mustFromEnvBuild(ctx, t, f.dir, vars, "--json")
	if again.result.Manifest != manifest || again.result.Hits != 3 {
		t.Errorf("rebuild: manifest %s (%d hits), want %s from 3 hits", again.result.Manifest, again.result.Hits, manifest)
	}
	if got := yoctoSkopeoInspect(t, "oci-archive:"+archive); got.Digest != manifest {
		t.Errorf("after the rebuild NAME.tar holds %s", got.Digest)
	}
}

// TestFromEnvQuotingAndVariant: the class's shlex words survive into the
// config exactly, env/labels/ports/user/workdir/stop signal are set, the
// auto labels are off unless OCI_IMAGE_AUTO_LABELS is exactly 1, and an
// arm image gets OCI_IMAGE_SUBARCH as its variant. Nothing of the image
// runs (tinypkg only untars), so it builds here for arm.
func TestFromEnvQuotingAndVariant(t *testing.T) {
	t.Parallel()
	testenv.NeedTool(t, "skopeo")
	f := newBuildFixture(t)
	vars := yoctoEnv(t, f.dir, "app:packages:app conf:files:/etc/app.conf")
	runScript(t, f.dir, "rootfs", `mkf image-rootfs/etc/app.conf 'port=8080'`)
	maps.Copy(vars, map[string]string{
		"OCI_LAYER_CACHE":           "0",
		"OCI_IMAGE_ARCH":            "arm",
		"OCI_IMAGE_SUBARCH":         "v7",
		"TARGET_ARCH":               "arm",
		"TUNE_PKGARCH":              "armv7at2hf-neon",
		"OCI_IMAGE_ENTRYPOINT":      `/bin/sh -c 'echo "hello  world" # not a comment'`,
		"OCI_IMAGE_ENTRYPOINT_ARGS": `--name 'John  Smith' "quoted \"inner\"" plain\ word`,
		"OCI_IMAGE_CMD":             "/bin/false",
		"OCI_IMAGE_ENV_VARS":        "APP_MODE=prod OPTS=a=b",
		"OCI_IMAGE_LABELS":          "org.example.team=core",
		"OCI_IMAGE_PORTS":           "8080/tcp 53/udp",
		"OCI_IMAGE_RUNTIME_UID":     "1000",
		"OCI_IMAGE_WORKINGDIR":      "/srv",
		"OCI_IMAGE_STOPSIGNAL":      "SIGINT",
		"OCI_IMAGE_AUTO_LABELS":     "true", // not "1": no auto labels
		"OCI_IMAGE_REVISION":        "deadbeef",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := filepath.Join(f.dir, "arm-out")
	r := mustFromEnvBuild(ctx, t, f.dir, vars, "--image", "oci:"+out+":v7", "--json")
	if len(r.result.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(r.result.Layers))
	}
	cfg, raw := yoctoImageConfig(t, "oci:"+out+":v7")
	if cfg.Architecture != "arm" || cfg.Variant != "v7" || cfg.OS != "linux" {
		t.Errorf("platform %s/%s/%s, want linux/arm/v7\n%s", cfg.OS, cfg.Architecture, cfg.Variant, raw)
	}
	if want := []string{"/bin/sh", "-c", `echo "hello  world" # not a comment`}; !slices.Equal(cfg.Config.Entrypoint, want) {
		t.Errorf("Entrypoint %q, want %q", cfg.Config.Entrypoint, want)
	}
	if want := []string{"--name", "John  Smith", `quoted "inner"`, "plain word"}; !slices.Equal(cfg.Config.Cmd, want) {
		t.Errorf("Cmd %q, want %q (OCI_IMAGE_ENTRYPOINT_ARGS, not OCI_IMAGE_CMD)", cfg.Config.Cmd, want)
	}
	for _, e := range []string{"APP_MODE=prod", "OPTS=a=b"} {
		if !slices.Contains(cfg.Config.Env, e) {
			t.Errorf("Env %q lacks %s", cfg.Config.Env, e)
		}
	}
	if !maps.Equal(cfg.Config.Labels, map[string]string{"org.example.team": "core"}) {
		t.Errorf("Labels %v, want the user's label alone (OCI_IMAGE_AUTO_LABELS is not 1)", cfg.Config.Labels)
	}
	if _, ok := cfg.Config.ExposedPorts["8080/tcp"]; !ok || len(cfg.Config.ExposedPorts) != 2 {
		t.Errorf("ExposedPorts %v", cfg.Config.ExposedPorts)
	}
	if cfg.Config.User != "1000" || cfg.Config.WorkingDir != "/srv" || cfg.Config.StopSignal != "SIGINT" || cfg.Author != "oe.patch@oe" {
		t.Errorf("user %q workdir %q stop signal %q author %q", cfg.Config.User, cfg.Config.WorkingDir, cfg.Config.StopSignal, cfg.Author)
	}
	// skopeo picks the image for linux/arm/v7 out of the layout.
	cmd := exec.Command("skopeo", "--override-arch", "arm", "--override-variant", "v7", "inspect", "oci:"+out+":v7")
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), `"Architecture": "arm"`) {
		t.Errorf("skopeo inspect for arm/v7: %v\n%s", err, b)
	}
	// The files layer came from IMAGE_ROOTFS.
	digests, _ := imageLayers(t, out, "v7")
	if names := layerTarNames(t, out, digests[1]); !slices.Contains(names, "etc/app.conf") {
		t.Errorf("conf layer %v lacks etc/app.conf", names)
	}
	// OCI_LAYER_CACHE is not 1: nothing kept.
	if _, err := os.Stat(vars["OCI_LAYER_CACHE_DIR"]); err == nil {
		t.Errorf("OCI_LAYER_CACHE=0 made %s", vars["OCI_LAYER_CACHE_DIR"])
	}
	if r.result.Hits != 0 {
		t.Errorf("cache off: %d hits", r.result.Hits)
	}
}

var (
	yoctoEntryName = regexp.MustCompile(`^([0-9a-f]{16})-(.+)$`)
	yoctoCreated   = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)
)

// TestYoctoCacheAsTheSuiteExpects: the cache in OCI_LAYER_CACHE_DIR as
// tests/test_multilayer_oci.py reads it (research/image-oci.md §9), and
// the class's marker lines and log.
func TestYoctoCacheAsTheSuiteExpects(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	vars := yoctoEnv(t, f.dir, "base:packages:base-files+busybox shell:packages:bash app:packages:app")
	// The marker's created= is the entry's making, by the clock.
	delete(vars, "SOURCE_DATE_EPOCH")
	cacheDir := filepath.Join(f.dir, "elsewhere", "layer-cache")
	vars["OCI_LAYER_CACHE_DIR"] = cacheDir
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now().UTC().Truncate(time.Second)
	first := mustFromEnvBuild(ctx, t, f.dir, vars)
	end := time.Now().UTC()
	log := first.stdout + first.stderr
	if n := strings.Count(log, "OCI Cache MISS"); n != 3 {
		t.Errorf("first build: %d misses, want 3:\n%s", n, log)
	}
	if !strings.Contains(log, "OCI: Pre-installed packages for 3 layers (cache: 0 hits, 3 misses)") {
		t.Errorf("first build's summary:\n%s", log)
	}

	// test_cache_directory_created, test_cache_entries_exist.
	all, err := os.ReadDir(cacheDir)
	if err != nil {
		t.Fatalf("cache dir: %v", err)
	}
	var names []string
	for _, e := range all {
		names = append(names, e.Name())
	}
	if len(names) < 3 {
		t.Errorf("%d cache entries, want at least 3: %v", len(names), names)
	}
	for _, l := range []string{"base", "shell", "app"} {
		if !slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, l) }) {
			t.Errorf("no cache entry for '%s': %v", l, names)
		}
	}
	// The class's own form, <key16>-<name>, for each layer.
	layerEntries := map[string]string{}
	for _, n := range names {
		if m := yoctoEntryName.FindStringSubmatch(n); m != nil {
			layerEntries[m[2]] = n
		}
	}
	for _, l := range []string{"base", "shell", "app"} {
		if layerEntries[l] == "" {
			t.Errorf("no entry <16 hex>-%s: %v", l, names)
		}
	}
	// test_cache_marker_file: every dir entry (as Path.iterdir lists
	// them: dot names too) has .oci-layer-cache with cache_key=,
	// layer_name= and created=; machine= as the class writes it.
	for _, e := range all {
		if !e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(cacheDir, e.Name(), ".oci-layer-cache"))
		if err != nil {
			t.Errorf("cache dir entry %s: no marker file (the suite's test_cache_marker_file fails): %v", e.Name(), err)
			continue
		}
		m := yoctoEntryName.FindStringSubmatch(e.Name())
		if m == nil {
			t.Errorf("entry %s with a marker is not <key16>-<name>", e.Name())
			continue
		}
		lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
		fields := map[string]string{}
		for _, l := range lines {
			k, v, _ := strings.Cut(l, "=")
			fields[k] = v
		}
		if len(lines) != 4 || !strings.HasSuffix(string(data), "\n") || fields["cache_key"] != m[1] || fields["layer_name"] != m[2] || fields["machine"] != "qemux86-64" {
			t.Errorf("%s/.oci-layer-cache:\n%s\nwant cache_key=%s, layer_name=%s, created=..., machine=qemux86-64, a line each", e.Name(), data, m[1], m[2])
		}
		for i, k := range []string{"cache_key", "layer_name", "created", "machine"} {
			if i < len(lines) && !strings.HasPrefix(lines[i], k+"=") {
				t.Errorf("%s/.oci-layer-cache line %d is %q, want %s=... (the class's order)", e.Name(), i+1, lines[i], k)
			}
		}
		created, err := time.Parse(time.RFC3339, fields["created"])
		if !yoctoCreated.MatchString(fields["created"]) || err != nil || created.Before(start) || created.After(end) {
			t.Errorf("%s: created=%q, want the time it was made (%s..%s) as %%Y-%%m-%%dT%%H:%%M:%%SZ", e.Name(), fields["created"], start.Format(time.RFC3339), end.Format(time.RFC3339))
		}
	}

	// test_cache_hit_on_rebuild: the rebuild's task log has at least 3
	// "OCI Cache HIT", and the class's summary.
	second := mustFromEnvBuild(ctx, t, f.dir, vars)
	log = second.stdout + second.stderr
	if n := strings.Count(log, "OCI Cache HIT"); n < 3 {
		t.Errorf("rebuild: %d \"OCI Cache HIT\", want at least 3:\n%s", n, log)
	}
	for _, l := range []string{"base", "shell", "app"} {
		key, _, _ := strings.Cut(layerEntries[l], "-")
		if want := fmt.Sprintf("OCI Cache HIT: Layer '%s' (%s)", l, key); !strings.Contains(log, want) {
			t.Errorf("rebuild log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "OCI Cache MISS") || strings.Contains(log, "INSTALLED") {
		t.Errorf("rebuild missed or installed:\n%s", log)
	}
	if !strings.Contains(log, "OCI: Pre-installed packages for 3 layers (cache: 3 hits, 0 misses)") {
		t.Errorf("rebuild's summary:\n%s", log)
	}
}

// TestYoctoPkgdataVersions: PKGDATA_DIR's PKGV lines are the packages'
// versions: a new PKGV of one package misses its layer and the layers
// above; a new PKGR (which the class does not key on) misses nothing.
func TestYoctoPkgdataVersions(t *testing.T) {
	t.Parallel()
	f := newBuildFixture(t)
	for _, p := range []string{"a", "b", "c", "d"} {
		f.pkg(p, "1", map[string]string{"usr/share/" + p + "/README": p + "\n"}, nil)
	}
	vars := yoctoEnv(t, f.dir, "base:packages:a+b shell:packages:c app:packages:d")
	pkgv := map[string]string{"a": "1.0", "b": "1.1", "c": "2.0", "d": "4.0"}
	for p, v := range pkgv {
		yoctoPkgdata(t, f.dir, p, v, "r0")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	hits := func(r buildRun) map[string]bool {
		m := map[string]bool{}
		for _, l := range r.result.Layers {
			m[l.Name] = l.Hit
		}
		return m
	}
	first := mustFromEnvBuild(ctx, t, f.dir, vars, "--json")
	if first.result.Misses != 3 {
		t.Fatalf("first build: %d misses, want 3", first.result.Misses)
	}
	for _, want := range []string{"OCI Cache MISS: Layer 'base' (base:a=1.0 b=1.1)", "OCI Cache MISS: Layer 'shell' (shell:c=2.0)", "OCI Cache MISS: Layer 'app' (app:d=4.0)"} {
		if !strings.Contains(first.stderr, want) {
			t.Errorf("first build's log lacks %q:\n%s", want, first.stderr)
		}
	}

	steps := []struct {
		what      string
		pkg, v, r string
		want      map[string]bool
		log       string
	}{
		{"PKGV of c 2.0 -> 2.1", "c", "2.1", "r0", map[string]bool{"base": true, "shell": false, "app": false}, "OCI Cache MISS: Layer 'shell' (shell:c=2.1)"},
		{"PKGR of c r0 -> r1", "c", "2.1", "r1", map[string]bool{"base": true, "shell": true, "app": true}, ""},
		{"PKGV of d 4.0 -> 4.1", "d", "4.1", "r0", map[string]bool{"base": true, "shell": true, "app": false}, "OCI Cache MISS: Layer 'app' (app:d=4.1)"},
		{"PKGV of a 1.0 -> 1.0.1", "a", "1.0.1", "r0", map[string]bool{"base": false, "shell": false, "app": false}, "OCI Cache MISS: Layer 'base' (base:a=1.0.1 b=1.1)"},
	}
	for _, s := range steps {
		yoctoPkgdata(t, f.dir, s.pkg, s.v, s.r)
		r := mustFromEnvBuild(ctx, t, f.dir, vars, "--json")
		if got := hits(r); !maps.Equal(got, s.want) {
			t.Errorf("%s: hits %v, want %v\n%s", s.what, got, s.want, r.stderr)
		}
		if s.log != "" && !strings.Contains(r.stderr, s.log) {
			t.Errorf("%s: log lacks %q:\n%s", s.what, s.log, r.stderr)
		}
		misses := 0
		for _, h := range s.want {
			if !h {
				misses++
			}
		}
		if want := fmt.Sprintf("OCI: Pre-installed packages for 3 layers (cache: %d hits, %d misses)", 3-misses, misses); !strings.Contains(r.stderr, want) {
			t.Errorf("%s: log lacks %q:\n%s", s.what, want, r.stderr)
		}
	}
}

// TestYoctoSingleModeOverBase: OCI_LAYER_MODE single with OCI_BASE_IMAGE
// is the class's `rsync -a IMAGE_ROOTFS/ bundle/rootfs/` over the
// unpacked base: one layer above the base's, and a file the rootfs has
// in a new version (an /etc/passwd with the app's user) replaces the
// base's.
func TestYoctoSingleModeOverBase(t *testing.T) {
	t.Parallel()
	testenv.NeedTool(t, "umoci")
	f := newBuildFixture(t)
	baseDir := t.TempDir()
	runScript(t, baseDir, "base", `
mkf rootfs/etc/passwd 'root:x:0:0:root:/root:/bin/sh
'
mkf rootfs/etc/os-release 'ID=base
'
mkdir -p rootfs/usr/bin`)
	base := filepath.Join(baseDir, "image")
	layerfsCommit(t, "--upper", baseDir+"/rootfs", "--image", "oci:"+base+":latest")
	vars := yoctoEnv(t, f.dir, "")
	vars["OCI_LAYER_MODE"] = "single"
	vars["OCI_BASE_IMAGE"] = base
	runScript(t, f.dir, "rootfs", `
mkf image-rootfs/etc/passwd 'root:x:0:0:root:/root:/bin/sh
app:x:1000:1000::/home/app:/bin/sh
'
mkf image-rootfs/etc/os-release 'ID=base
'
mkf image-rootfs/usr/bin/app '#!/bin/sh
echo app
'`)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := filepath.Join(f.dir, "single-out")
	mustFromEnvBuild(ctx, t, f.dir, vars, "--image", "oci:"+out+":latest", "--json")
	digests, _ := imageLayers(t, out, "latest")
	baseDigests, _ := imageLayers(t, base, "latest")
	if len(digests) != len(baseDigests)+1 {
		t.Fatalf("%d layers, want the base's %d and one", len(digests), len(baseDigests))
	}
	work := t.TempDir()
	mustRun(t, "", "umoci", "unpack", "--image", out+":latest", filepath.Join(work, "bundle"))
	passwd, err := os.ReadFile(filepath.Join(work, "bundle", "rootfs", "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(passwd), "app:x:1000") {
		t.Errorf("/etc/passwd of the image is the base's:\n%s\nwant IMAGE_ROOTFS's, with the app user (the class rsyncs the rootfs over the base)", passwd)
	}
	if _, err := os.Stat(filepath.Join(work, "bundle", "rootfs", "usr", "bin", "app")); err != nil {
		t.Errorf("/usr/bin/app: %v", err)
	}
}
