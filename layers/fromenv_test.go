package layers

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/inputerr"

	"github.com/layerfs/layerfs/internal/testutil"
)

// The expectations of TestShellWords are Python's: each was checked with
// python3 -c 'import shlex; print(shlex.split(S))', which is what the
// class runs on OCI_IMAGE_ENTRYPOINT, OCI_IMAGE_ENTRYPOINT_ARGS and
// OCI_IMAGE_CMD (research/image-oci.md §5).
func TestShellWords(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   \t\n ", nil},
		{"/bin/sh", []string{"/bin/sh"}},
		{"/bin/sh -c 'echo hello world' ", []string{"/bin/sh", "-c", "echo hello world"}},
		// The DEMO recipe's OCI_IMAGE_CMD.
		{"/bin/sh -c 'echo Hello from multi-layer container && curl --version'",
			[]string{"/bin/sh", "-c", "echo Hello from multi-layer container && curl --version"}},
		{`a "b c" d`, []string{"a", "b c", "d"}},
		{`a\ b`, []string{"a b"}},
		{`\#x`, []string{"#x"}},
		{`a\\b`, []string{`a\b`}},
		// Adjacent quoted parts make one word; empty quotes are a word.
		{`a"b"'c'`, []string{"abc"}},
		{`a '' b`, []string{"a", "", "b"}},
		{`""`, []string{""}},
		// Inside single quotes a backslash is literal.
		{`'a\b'`, []string{`a\b`}},
		// Inside double quotes only \" and \\ are escapes (shlex's
		// escapedquotes and escape); any other backslash stays.
		{`"a\"b"`, []string{`a"b`}},
		{`"a\\b"`, []string{`a\b`}},
		{`"a\nb"`, []string{`a\nb`}},
		{`"a\$b"`, []string{`a\$b`}},
		{"\"a\\`b\"", []string{"a\\`b"}},
		// '#' is not a comment (shlex.split's comments=False).
		{"echo # not a comment", []string{"echo", "#", "not", "a", "comment"}},
		{"x=1#y", []string{"x=1#y"}},
		// Whitespace is space, tab, CR and LF only.
		{"a\tb\nc\rd", []string{"a", "b", "c", "d"}},
		{"a\vb", []string{"a\vb"}},
		{"a\fb", []string{"a\fb"}},
	}
	for _, c := range cases {
		got, err := shellWords(c.in)
		if err != nil {
			t.Errorf("shellWords(%q): %v", c.in, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("shellWords(%q) = %q, want %q (Python's shlex.split)", c.in, got, c.want)
		}
	}
	// shlex.split raises on these: "No closing quotation", "No escaped
	// character".
	for _, in := range []string{`"abc`, `'abc`, `a "b`, `a\`, `"a\"`} {
		if got, err := shellWords(in); err == nil {
			t.Errorf("shellWords(%q) = %q, want an error (shlex.split raises)", in, got)
		}
	}
}

// fromEnvLookup is a lookup over m: a key absent from m is unset.
func fromEnvLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

var envNow = time.Date(2025, 6, 1, 12, 34, 56, 0, time.UTC)

// multiEnv is a minimal multi-layer environment, with its own deploy dir.
func multiEnv(t *testing.T, more map[string]string) map[string]string {
	t.Helper()
	m := map[string]string{
		"OCI_LAYER_MODE": "multi",
		"OCI_LAYERS":     "base:packages:a+b",
		"IMGDEPLOYDIR":   t.TempDir(),
		"IMAGE_NAME":     "img",
	}
	for k, v := range more {
		m[k] = v
	}
	return m
}

func fromEnvOK(t *testing.T, m map[string]string) *Env {
	t.Helper()
	e, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow)
	if err != nil {
		t.Fatalf("FromEnv: %v", err)
	}
	return e
}

// fromEnvErr returns the error of FromEnv or, if it accepted the
// variables, of the spec's Validate: a build refuses both before it
// starts.
func fromEnvErr(t *testing.T, m map[string]string) error {
	t.Helper()
	e, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow)
	if err == nil {
		err = e.Spec.Validate()
	}
	if err == nil {
		t.Fatalf("FromEnv accepted %v", m)
	}
	if !inputerr.Is(err) {
		t.Errorf("error %q is not marked as bad input (exit 2)", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q is not one line", err)
	}
	return err
}

func TestFromEnvLayers(t *testing.T) {
	rootfs := t.TempDir()
	for _, d := range []string{"etc", "usr/share/app"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc/app.conf"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := fromEnvOK(t, multiEnv(t, map[string]string{
		// As bitbake joins a recipe's continued lines: any blanks between.
		"OCI_LAYERS": "  base:packages:base-files+base-passwd+netbase \n\tshell:packages:busybox++bash+ " +
			"app:directories:/usr/share/app conf:files:/etc/app.conf " +
			"extra:host:/src/a:b:/opt/x+/host/c:/opt/c",
		"IMAGE_ROOTFS": rootfs,
	}))
	s := e.Spec
	if s.Mode != "" && s.Mode != ModeMulti {
		t.Errorf("mode %q, want multi", s.Mode)
	}
	var names, types []string
	for _, l := range s.Layers {
		names, types = append(names, l.Name), append(types, l.Type)
	}
	if want := []string{"base", "shell", "app", "conf", "extra"}; !slices.Equal(names, want) {
		t.Fatalf("layers %q, want %q", names, want)
	}
	if want := []string{TypePackages, TypePackages, TypeDirectories, TypeFiles, TypeHost}; !slices.Equal(types, want) {
		t.Errorf("types %q, want %q", types, want)
	}
	if got := s.Layers[0].Packages; !slices.Equal(got, []string{"base-files", "base-passwd", "netbase"}) {
		t.Errorf("base packages %q", got)
	}
	// '+' separates items; empty items vanish.
	if got := s.Layers[1].Packages; !slices.Equal(got, []string{"busybox", "bash"}) {
		t.Errorf("shell packages %q, want [busybox bash]", got)
	}
	if l := s.Layers[2]; l.Source != rootfs || !slices.Equal(l.Paths, []string{"/usr/share/app"}) {
		t.Errorf("directories layer from IMAGE_ROOTFS: source %q paths %q", l.Source, l.Paths)
	}
	if l := s.Layers[3]; l.Source != rootfs || !slices.Equal(l.Paths, []string{"/etc/app.conf"}) {
		t.Errorf("files layer from IMAGE_ROOTFS: source %q paths %q", l.Source, l.Paths)
	}
	// The content is everything after the second colon, and a host pair
	// splits at its last colon.
	if got := s.Layers[4].Copy; !slices.Equal(got, []string{"/src/a:b:/opt/x", "/host/c:/opt/c"}) {
		t.Fatalf("host layer copy %q, want [/src/a:b:/opt/x /host/c:/opt/c]", got)
	}
	items := s.copies(s.Layers[4])
	if len(items) != 2 || items[0].src != "/src/a:b" || items[0].dst != "/opt/x" || items[1].src != "/host/c" || items[1].dst != "/opt/c" {
		t.Errorf("host pairs split as %+v, want /src/a:b -> /opt/x and /host/c -> /opt/c", items)
	}
	// A relative IMAGE_ROOTFS is taken from the working directory.
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, rootfs)
	if err != nil {
		t.Fatal(err)
	}
	e = fromEnvOK(t, multiEnv(t, map[string]string{"OCI_LAYERS": "app:directories:/usr/share/app", "IMAGE_ROOTFS": rel}))
	if e.Spec.Layers[0].Source != rootfs {
		t.Errorf("relative IMAGE_ROOTFS %q: source %q, want %q", rel, e.Spec.Layers[0].Source, rootfs)
	}
	if e.Spec.Dir != wd {
		t.Errorf("spec dir %q, want the working directory %q (install commands run there)", e.Spec.Dir, wd)
	}
}

func TestFromEnvLayerErrors(t *testing.T) {
	cases := []struct {
		name   string
		layers string
		want   []string // case-insensitive
	}{
		{"empty", "", []string{"OCI_LAYER_MODE = 'multi' requires OCI_LAYERS to be defined"}},
		{"blank", " \n\t ", []string{"OCI_LAYER_MODE = 'multi' requires OCI_LAYERS to be defined"}},
		{"two fields", "base:packages:a base:packages", []string{"invalid OCI_LAYERS entry 'base:packages': format is 'name:type:content'"}},
		{"one field", "base", []string{"invalid OCI_LAYERS entry 'base': format is 'name:type:content'"}},
		// The class: "Invalid layer type '{type}' in '{entry}': must be
		// 'packages', 'directories', 'files', or 'host'".
		{"bad type", "x:bogus:y", []string{"invalid layer type 'bogus' in 'x:bogus:y'"}},
		{"host pair without colon", "h:host:/nocolon", []string{"/nocolon"}},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			err := fromEnvErr(t, multiEnv(t, map[string]string{"OCI_LAYERS": c.layers}))
			for _, w := range c.want {
				if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(w)) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// Only the exact string "multi" is multi-layer mode; anything else copies
// IMAGE_ROOTFS as one layer: its top-level names, dot names left out as
// the shell glob ${IMAGE_ROOTFS}/* leaves them.
func TestFromEnvSingleMode(t *testing.T) {
	rootfs := t.TempDir()
	for _, d := range []string{"usr/bin", "etc", ".hidden-dir"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(rootfs, ".dotfile"), nil, 0o644)
	os.WriteFile(filepath.Join(rootfs, "etc/hostname"), []byte("x\n"), 0o644)
	if err := os.Symlink("usr/bin", filepath.Join(rootfs, "bin")); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"(unset)", "single", "Multi", "multiple", ""} {
		m := multiEnv(t, map[string]string{"IMAGE_ROOTFS": rootfs, "OCI_LAYERS": "base:packages:a"})
		if mode == "(unset)" {
			delete(m, "OCI_LAYER_MODE")
		} else {
			m["OCI_LAYER_MODE"] = mode
		}
		e := fromEnvOK(t, m)
		if len(e.Spec.Layers) != 1 {
			t.Errorf("OCI_LAYER_MODE %s: %d layers, want 1 (OCI_LAYERS is not read)", mode, len(e.Spec.Layers))
			continue
		}
		l := e.Spec.Layers[0]
		if l.Type != TypeDirectories || l.Source != rootfs || !slices.Equal(l.Paths, []string{"/bin", "/etc", "/usr"}) {
			t.Errorf("OCI_LAYER_MODE %s: layer %+v, want directories /bin /etc /usr of %s", mode, l, rootfs)
		}
		if err := e.Spec.Validate(); err != nil {
			t.Errorf("OCI_LAYER_MODE %s: %v", mode, err)
		}
	}
	m := multiEnv(t, nil)
	delete(m, "OCI_LAYER_MODE")
	if _, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow); err == nil || !strings.Contains(err.Error(), "IMAGE_ROOTFS") {
		t.Errorf("single mode without IMAGE_ROOTFS: %v, want an error naming IMAGE_ROOTFS", err)
	}
	m["IMAGE_ROOTFS"] = t.TempDir()
	if _, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow); err == nil {
		t.Errorf("single mode with an empty IMAGE_ROOTFS was accepted")
	}
}

// Unset variables take the class's ?= defaults; variables set to "" stay
// empty, as bitbake has them.
func TestFromEnvDefaults(t *testing.T) {
	e := fromEnvOK(t, multiEnv(t, nil))
	c := e.Spec.Config
	if c.Cmd == nil || !slices.Equal(*c.Cmd, []string{"/bin/sh"}) {
		t.Errorf("OCI_IMAGE_CMD unset: cmd %v, want [/bin/sh]", c.Cmd)
	}
	if c.Entrypoint != nil {
		t.Errorf("OCI_IMAGE_ENTRYPOINT unset: entrypoint %q, want none (inherited)", *c.Entrypoint)
	}
	if c.Env != nil || c.Ports != nil || c.User != nil || c.Workdir != nil || c.StopSignal != nil || c.Author != "" {
		t.Errorf("unset variables set config: %+v", c)
	}
	if !strings.HasSuffix(e.Spec.Image, ":latest") || e.Deploy == nil || e.Deploy.Tag != "latest" {
		t.Errorf("OCI_IMAGE_TAG unset: image %q, deploy %+v, want tag latest", e.Spec.Image, e.Deploy)
	}
	if !e.Deploy.Tars {
		t.Errorf("OCI_IMAGE_TAR_OUTPUT unset: no tars, want them (default \"true\")")
	}
	// OCI_IMAGE_AUTO_LABELS defaults to 1: the created label (no git, no
	// SOURCE_DATE_EPOCH: the clock).
	if got := c.Labels["org.opencontainers.image.created"]; got != "2025-06-01T12:34:56Z" {
		t.Errorf("default auto labels: created %q, want the clock's 2025-06-01T12:34:56Z (labels %v)", got, c.Labels)
	}

	e = fromEnvOK(t, multiEnv(t, map[string]string{"OCI_IMAGE_CMD": ""}))
	if e.Spec.Config.Cmd != nil {
		t.Errorf("OCI_IMAGE_CMD set empty: cmd %q, want none", *e.Spec.Config.Cmd)
	}
	e = fromEnvOK(t, multiEnv(t, map[string]string{"OCI_IMAGE_CMD": "  "}))
	if e.Spec.Config.Cmd != nil {
		t.Errorf("OCI_IMAGE_CMD blank: cmd %q, want none (no words, umoci changes nothing)", *e.Spec.Config.Cmd)
	}
	// ENTRYPOINT_ARGS, when set, is the cmd and OCI_IMAGE_CMD is ignored.
	e = fromEnvOK(t, multiEnv(t, map[string]string{
		"OCI_IMAGE_ENTRYPOINT":      `/usr/bin/app --config "/etc/app dir/app.conf"`,
		"OCI_IMAGE_ENTRYPOINT_ARGS": `--verbose 'two words'`,
		"OCI_IMAGE_CMD":             "/bin/false",
	}))
	c = e.Spec.Config
	if c.Entrypoint == nil || !slices.Equal(*c.Entrypoint, []string{"/usr/bin/app", "--config", "/etc/app dir/app.conf"}) {
		t.Errorf("entrypoint %v", c.Entrypoint)
	}
	if c.Cmd == nil || !slices.Equal(*c.Cmd, []string{"--verbose", "two words"}) {
		t.Errorf("cmd %v, want ENTRYPOINT_ARGS's [--verbose, two words]", c.Cmd)
	}
	e = fromEnvOK(t, multiEnv(t, map[string]string{"OCI_IMAGE_ENTRYPOINT_ARGS": "", "OCI_IMAGE_CMD": "/bin/true x"}))
	if c := e.Spec.Config; c.Cmd == nil || !slices.Equal(*c.Cmd, []string{"/bin/true", "x"}) {
		t.Errorf("empty ENTRYPOINT_ARGS: cmd %v, want OCI_IMAGE_CMD's", c.Cmd)
	}
	for _, v := range []string{"OCI_IMAGE_ENTRYPOINT", "OCI_IMAGE_ENTRYPOINT_ARGS", "OCI_IMAGE_CMD"} {
		if err := fromEnvErr(t, multiEnv(t, map[string]string{v: `sh -c 'unclosed`})); !strings.Contains(err.Error(), v) {
			t.Errorf("%s with an unclosed quote: error %q does not name the variable", v, err)
		}
	}

	// Other config variables: words, first word for single values.
	e = fromEnvOK(t, multiEnv(t, map[string]string{
		"OCI_IMAGE_PORTS": "80/tcp  53/udp", "OCI_IMAGE_RUNTIME_UID": "1000", "OCI_IMAGE_WORKINGDIR": "/srv",
		"OCI_IMAGE_STOPSIGNAL": "SIGINT", "OCI_IMAGE_AUTHOR_EMAIL": "dev@example.com", "OCI_IMAGE_AUTHOR": "Dev",
		"OCI_IMAGE_OS": "linux", "MACHINE": "qemuarm", "TUNE_PKGARCH": "armv7at2hf-neon", "LAYERFS_INSTALL": "./tinypkg",
	}))
	c, s := e.Spec.Config, e.Spec
	if c.Ports == nil || !slices.Equal(*c.Ports, []string{"80/tcp", "53/udp"}) {
		t.Errorf("ports %v", c.Ports)
	}
	if c.User == nil || *c.User != "1000" || c.Workdir == nil || *c.Workdir != "/srv" || c.StopSignal == nil || *c.StopSignal != "SIGINT" {
		t.Errorf("user/workdir/stop signal: %+v", c)
	}
	if c.Author != "dev@example.com" {
		t.Errorf("author %q, want OCI_IMAGE_AUTHOR_EMAIL (the class's --author)", c.Author)
	}
	if s.OS != "linux" || s.Machine != "qemuarm" || s.Tune != "armv7at2hf-neon" || s.Install != "./tinypkg" {
		t.Errorf("os %q machine %q tune %q install %q", s.OS, s.Machine, s.Tune, s.Install)
	}
	if err := s.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
}

func TestFromEnvKeyValueWords(t *testing.T) {
	e := fromEnvOK(t, multiEnv(t, map[string]string{
		"OCI_IMAGE_ENV_VARS":    "PATH=/usr/bin:/bin  OPTS=a=b EMPTY= ",
		"OCI_IMAGE_LABELS":      "org.example.team=core \n org.example.url=http://x/?a=1",
		"OCI_IMAGE_AUTO_LABELS": "0",
	}))
	c := e.Spec.Config
	if want := map[string]string{"PATH": "/usr/bin:/bin", "OPTS": "a=b", "EMPTY": ""}; !reflect.DeepEqual(c.Env, want) {
		t.Errorf("env %v, want %v (split at the first '=')", c.Env, want)
	}
	if want := map[string]string{"org.example.team": "core", "org.example.url": "http://x/?a=1"}; !reflect.DeepEqual(c.Labels, want) {
		t.Errorf("labels %v, want %v", c.Labels, want)
	}
	for _, v := range []string{"OCI_IMAGE_ENV_VARS", "OCI_IMAGE_LABELS"} {
		for _, bad := range []string{"NOEQUALS", "A=1 =novalue"} {
			err := fromEnvErr(t, multiEnv(t, map[string]string{v: bad}))
			word := strings.Fields(bad)[len(strings.Fields(bad))-1]
			if !strings.Contains(err.Error(), v) || !strings.Contains(err.Error(), word) {
				t.Errorf("%s=%q: error %q should name the variable and the word %q", v, bad, err, word)
			}
		}
	}
}

const (
	labelRevision = "org.opencontainers.image.revision"
	labelRef      = "org.opencontainers.image.ref.name"
	labelCreated  = "org.opencontainers.image.created"
)

func TestFromEnvAutoLabels(t *testing.T) {
	explicit := map[string]string{
		"OCI_IMAGE_REVISION": "abc1234", "OCI_IMAGE_BRANCH": "release/1.0", "OCI_IMAGE_BUILD_DATE": "2024-02-03T04:05:06Z",
		"OCI_IMAGE_LABELS": labelRevision + "=from-user org.example.x=1",
	}
	with := func(auto string) map[string]string {
		m := multiEnv(t, explicit)
		if auto != "(unset)" {
			m["OCI_IMAGE_AUTO_LABELS"] = auto
		}
		return m
	}
	for _, auto := range []string{"1", "(unset)"} {
		got := fromEnvOK(t, with(auto)).Spec.Config.Labels
		// Auto labels come after the user's and win.
		want := map[string]string{labelRevision: "abc1234", labelRef: "release/1.0", labelCreated: "2024-02-03T04:05:06Z", "org.example.x": "1"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("OCI_IMAGE_AUTO_LABELS %s: labels %v, want %v", auto, got, want)
		}
	}
	// Only "1" enables them; otherwise not even the explicit values.
	for _, auto := range []string{"0", "true", "yes", ""} {
		got := fromEnvOK(t, with(auto)).Spec.Config.Labels
		want := map[string]string{labelRevision: "from-user", "org.example.x": "1"}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("OCI_IMAGE_AUTO_LABELS %q: labels %v, want the user's alone %v", auto, got, want)
		}
	}
	// "none" leaves a label out.
	got := fromEnvOK(t, multiEnv(t, map[string]string{"OCI_IMAGE_REVISION": "none", "OCI_IMAGE_BRANCH": "none", "OCI_IMAGE_BUILD_DATE": "none"})).Spec.Config.Labels
	if len(got) != 0 {
		t.Errorf("all three none: labels %v, want none", got)
	}
	// created: OCI_IMAGE_BUILD_DATE, else SOURCE_DATE_EPOCH, else the clock.
	epoch := time.Unix(1700000000, 0)
	m := multiEnv(t, map[string]string{"SOURCE_DATE_EPOCH": "1700000000"})
	e, err := FromEnv(context.Background(), fromEnvLookup(m), "", &epoch, envNow)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.Spec.Config.Labels[labelCreated]; got != "2023-11-14T22:13:20Z" {
		t.Errorf("created from SOURCE_DATE_EPOCH 1700000000: %q, want 2023-11-14T22:13:20Z", got)
	}
	m["OCI_IMAGE_BUILD_DATE"] = "2020-01-01T00:00:00Z"
	if e, err = FromEnv(context.Background(), fromEnvLookup(m), "", &epoch, envNow); err != nil {
		t.Fatal(err)
	}
	if got := e.Spec.Config.Labels[labelCreated]; got != "2020-01-01T00:00:00Z" {
		t.Errorf("OCI_IMAGE_BUILD_DATE with SOURCE_DATE_EPOCH: created %q, want the explicit date", got)
	}
	local := time.Date(2025, 6, 1, 14, 34, 56, 0, time.FixedZone("CEST", 2*3600))
	if e, err = FromEnv(context.Background(), fromEnvLookup(multiEnv(t, nil)), "", nil, local); err != nil {
		t.Fatal(err)
	}
	if got := e.Spec.Config.Labels[labelCreated]; got != "2025-06-01T12:34:56Z" {
		t.Errorf("created from a clock in CEST: %q, want UTC 2025-06-01T12:34:56Z", got)
	}
}

// Revision and branch come from git in TOPDIR (a build dir inside the
// layer's checkout, as poky/build), unless set.
func TestFromEnvGitLabels(t *testing.T) {
	testutil.RequireTool(t, "git")
	repo := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"}, args...)...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	os.WriteFile(filepath.Join(repo, "f"), []byte("x\n"), 0o644)
	git("add", "f")
	git("commit", "-q", "-m", "one")
	git("checkout", "-q", "-b", "feature/oci")
	short := git("rev-parse", "--short", "HEAD")
	build := filepath.Join(repo, "build")
	if err := os.Mkdir(build, 0o755); err != nil {
		t.Fatal(err)
	}
	labels := fromEnvOK(t, multiEnv(t, map[string]string{"TOPDIR": build})).Spec.Config.Labels
	if labels[labelRevision] != short || labels[labelRef] != "feature/oci" {
		t.Errorf("labels from git in TOPDIR: %v, want revision %s and ref.name feature/oci", labels, short)
	}
	// Explicit values win over git; none leaves out.
	labels = fromEnvOK(t, multiEnv(t, map[string]string{"TOPDIR": build, "OCI_IMAGE_REVISION": "r1", "OCI_IMAGE_BRANCH": "none"})).Spec.Config.Labels
	if labels[labelRevision] != "r1" {
		t.Errorf("explicit revision: %v", labels)
	}
	if _, ok := labels[labelRef]; ok {
		t.Errorf("OCI_IMAGE_BRANCH=none: ref.name %q present", labels[labelRef])
	}
	// A detached HEAD names no branch.
	git("checkout", "-q", "--detach")
	labels = fromEnvOK(t, multiEnv(t, map[string]string{"TOPDIR": build})).Spec.Config.Labels
	if labels[labelRevision] != short {
		t.Errorf("detached: revision %q, want %s", labels[labelRevision], short)
	}
	if v, ok := labels[labelRef]; ok {
		t.Errorf("detached HEAD: ref.name %q, want none", v)
	}
	// Outside a repository: neither.
	labels = fromEnvOK(t, multiEnv(t, map[string]string{"TOPDIR": t.TempDir()})).Spec.Config.Labels
	if _, ok := labels[labelRevision]; ok {
		t.Errorf("TOPDIR outside git: labels %v", labels)
	}
	if _, ok := labels[labelRef]; ok {
		t.Errorf("TOPDIR outside git: labels %v", labels)
	}
}

func TestFromEnvArch(t *testing.T) {
	for target, want := range map[string]string{
		"i586": "386", "i686": "386", "x86_64": "amd64", "arm": "arm", "armeb": "arm", "aarch64": "arm64", "aarch64_be": "arm64",
		"mips64el": "mips64le", "mips64": "mips64", "mips": "mips", "mipsel": "mipsle",
		"powerpc64le": "ppc64le", "ppc64le": "ppc64le", "powerpc64": "ppc64", "riscv64": "riscv64", "loongarch64": "loong64",
	} {
		s := fromEnvOK(t, multiEnv(t, map[string]string{"TARGET_ARCH": target})).Spec
		if s.Arch != want {
			t.Errorf("TARGET_ARCH %s: arch %q, want %q", target, s.Arch, want)
		}
	}
	s := fromEnvOK(t, multiEnv(t, map[string]string{"TARGET_ARCH": "x86_64", "OCI_IMAGE_ARCH": "arm64"})).Spec
	if s.Arch != "arm64" {
		t.Errorf("OCI_IMAGE_ARCH arm64 over TARGET_ARCH x86_64: %q", s.Arch)
	}
	s = fromEnvOK(t, multiEnv(t, map[string]string{"OCI_IMAGE_ARCH": "arm", "OCI_IMAGE_SUBARCH": "v7"})).Spec
	if s.Arch != "arm" || s.Variant != "v7" {
		t.Errorf("arch %q variant %q, want arm v7", s.Arch, s.Variant)
	}
	if ch := s.Config.changes(s); ch.Arch != "arm" || ch.Variant != "v7" {
		t.Errorf("config changes arch %q variant %q, want arm v7", ch.Arch, ch.Variant)
	}
}

func TestFromEnvBase(t *testing.T) {
	deploy := t.TempDir()
	layout := filepath.Join(deploy, "container-base-latest-oci")
	if err := os.MkdirAll(layout, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(layout, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644)
	os.MkdirAll(filepath.Join(deploy, "other-latest-oci"), 0o755) // no index.json
	cases := []struct {
		base, tag, want string
	}{
		{"/srv/images/base-oci", "", "oci:/srv/images/base-oci:latest"},
		{"/srv/images/base-oci", "3.1", "oci:/srv/images/base-oci:3.1"},
		{"container-base", "", "oci:" + layout + ":latest"},
		{"docker.io/library/alpine", "", "docker://docker.io/library/alpine:latest"},
		{"docker.io/library/alpine", "3.20", "docker://docker.io/library/alpine:3.20"},
		{"registry.example.com:5000/team/app:1.2", "", "docker://registry.example.com:5000/team/app:1.2"},
		{"localhost:5000/app", "", "docker://localhost:5000/app:latest"},
		{"quay.io/x/y@sha256:" + strings.Repeat("a", 64), "", "docker://quay.io/x/y@sha256:" + strings.Repeat("a", 64)},
	}
	for _, c := range cases {
		m := multiEnv(t, map[string]string{"OCI_BASE_IMAGE": c.base, "DEPLOY_DIR_IMAGE": deploy})
		if c.tag != "" {
			m["OCI_BASE_IMAGE_TAG"] = c.tag
		}
		e, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow)
		if err != nil {
			t.Errorf("OCI_BASE_IMAGE %s: %v", c.base, err)
			continue
		}
		if e.Spec.Base != c.want {
			t.Errorf("OCI_BASE_IMAGE %s (tag %q): base %q, want %q", c.base, c.tag, e.Spec.Base, c.want)
		}
	}
	// A recipe's layout must be deployed, with its index.json.
	for _, base := range []string{"other", "missing"} {
		m := multiEnv(t, map[string]string{"OCI_BASE_IMAGE": base, "DEPLOY_DIR_IMAGE": deploy})
		_, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow)
		want := filepath.Join(deploy, base+"-latest-oci")
		if err == nil || !strings.Contains(err.Error(), "not found at expected path") || !strings.Contains(err.Error(), want) || !inputerr.Is(err) {
			t.Errorf("recipe %s without a layout: %v, want \"not found at expected path: %s\"", base, err, want)
		}
	}
	m := multiEnv(t, map[string]string{"OCI_BASE_IMAGE": "container-base"})
	if _, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow); err == nil || !strings.Contains(err.Error(), "DEPLOY_DIR_IMAGE") {
		t.Errorf("recipe base without DEPLOY_DIR_IMAGE: %v", err)
	}
	// The recipe's tag is its ref in the layout.
	os.MkdirAll(filepath.Join(deploy, "container-base-v2-oci"), 0o755)
	os.WriteFile(filepath.Join(deploy, "container-base-v2-oci", "index.json"), []byte(`{}`), 0o644)
	m = multiEnv(t, map[string]string{"OCI_BASE_IMAGE": "container-base", "OCI_BASE_IMAGE_TAG": "v2", "DEPLOY_DIR_IMAGE": deploy})
	if e, err := FromEnv(context.Background(), fromEnvLookup(m), "", nil, envNow); err != nil || e.Spec.Base != "oci:"+filepath.Join(deploy, "container-base-v2-oci")+":v2" {
		t.Errorf("recipe base with tag v2: %v %v", e, err)
	}
	// No base: none.
	if b := fromEnvOK(t, multiEnv(t, map[string]string{"OCI_BASE_IMAGE": ""})).Spec.Base; b != "" {
		t.Errorf("empty OCI_BASE_IMAGE: base %q", b)
	}
}

func TestFromEnvCache(t *testing.T) {
	cases := []struct {
		name string
		vars map[string]string
		want string
	}{
		{"default on, dir set", map[string]string{"OCI_LAYER_CACHE_DIR": "/c/cache"}, "/c/cache"},
		{"1", map[string]string{"OCI_LAYER_CACHE": "1", "OCI_LAYER_CACHE_DIR": "/c/cache"}, "/c/cache"},
		{"true is off", map[string]string{"OCI_LAYER_CACHE": "true", "OCI_LAYER_CACHE_DIR": "/c/cache"}, ""},
		{"yes is off", map[string]string{"OCI_LAYER_CACHE": "yes", "OCI_LAYER_CACHE_DIR": "/c/cache"}, ""},
		{"0 is off", map[string]string{"OCI_LAYER_CACHE": "0", "OCI_LAYER_CACHE_DIR": "/c/cache"}, ""},
		{"empty is off", map[string]string{"OCI_LAYER_CACHE": "", "OCI_LAYER_CACHE_DIR": "/c/cache"}, ""},
		{"default dir", map[string]string{"TOPDIR": "/work/build", "MACHINE": "qemux86-64"}, "/work/build/oci-layer-cache/qemux86-64"},
		// The class: an empty OCI_LAYER_CACHE_DIR checks and saves
		// nothing (always a miss), whatever TOPDIR is.
		{"dir set empty", map[string]string{"OCI_LAYER_CACHE_DIR": "", "TOPDIR": "/work/build", "MACHINE": "qemux86-64"}, ""},
	}
	for _, c := range cases {
		e := fromEnvOK(t, multiEnv(t, c.vars))
		if e.Cache != c.want {
			t.Errorf("%s (%v): cache %q, want %q", c.name, c.vars, e.Cache, c.want)
		}
	}
}

func TestFromEnvDeployNames(t *testing.T) {
	wd, _ := os.Getwd()
	deployDir := t.TempDir()
	rel, err := filepath.Rel(wd, deployDir)
	if err != nil {
		t.Fatal(err)
	}
	m := multiEnv(t, map[string]string{
		"IMGDEPLOYDIR":      rel,
		"IMAGE_NAME":        "app-container-multilayer-qemux86-64-20250101120000",
		"IMAGE_NAME_SUFFIX": ".rootfs",
		"IMAGE_BASENAME":    "app-container-multilayer",
		"OCI_IMAGE_TAG":     "v1.0",
	})
	e := fromEnvOK(t, m)
	d := e.Deploy
	if d == nil {
		t.Fatal("no deploy")
	}
	name := "app-container-multilayer-qemux86-64-20250101120000.rootfs-oci"
	if d.Dir != deployDir || d.Name != name || d.Basename != "app-container-multilayer" || d.Tag != "v1.0" || !d.Tars {
		t.Errorf("deploy %+v", d)
	}
	if d.Layout() != filepath.Join(deployDir, name) {
		t.Errorf("layout %q", d.Layout())
	}
	if want := "oci:" + filepath.Join(deployDir, name) + ":v1.0"; e.Spec.Image != want {
		t.Errorf("image %q, want %q", e.Spec.Image, want)
	}
	// Any non-empty OCI_IMAGE_TAR_OUTPUT turns the tars on.
	for v, want := range map[string]bool{"true": true, "false": true, "0": true, "": false} {
		m["OCI_IMAGE_TAR_OUTPUT"] = v
		if got := fromEnvOK(t, m).Deploy.Tars; got != want {
			t.Errorf("OCI_IMAGE_TAR_OUTPUT %q: tars %v, want %v", v, got, want)
		}
	}
	// --image replaces the deploy outputs.
	e, err = FromEnv(context.Background(), fromEnvLookup(m), "oci:/elsewhere/out:x", nil, envNow)
	if err != nil || e.Deploy != nil || e.Spec.Image != "oci:/elsewhere/out:x" {
		t.Errorf("--image: %+v %v", e, err)
	}
	// Without IMGDEPLOYDIR or IMAGE_NAME, and without --image: an error.
	for _, v := range []string{"IMGDEPLOYDIR", "IMAGE_NAME"} {
		m2 := multiEnv(t, nil)
		delete(m2, v)
		if _, err := FromEnv(context.Background(), fromEnvLookup(m2), "", nil, envNow); err == nil || !strings.Contains(err.Error(), v) {
			t.Errorf("without %s: %v", v, err)
		}
		if _, err := FromEnv(context.Background(), fromEnvLookup(m2), "oci:/x/out:t", nil, envNow); err != nil {
			t.Errorf("without %s but with --image: %v", v, err)
		}
	}
	if _, err := FromEnv(context.Background(), fromEnvLookup(multiEnv(t, map[string]string{"OCI_IMAGE_TAG": ""})), "", nil, envNow); err == nil {
		t.Errorf("an empty OCI_IMAGE_TAG was accepted")
	}
	// PKGDATA_DIR: an existing dir is the spec's pkgdata.
	pk := t.TempDir()
	if s := fromEnvOK(t, multiEnv(t, map[string]string{"PKGDATA_DIR": pk})).Spec; s.Pkgdata != pk {
		t.Errorf("PKGDATA_DIR %s: pkgdata %q", pk, s.Pkgdata)
	}
}

// Deploy.Finish writes NAME.tar (members ./...), NAME-dir.tar (members NAME/...)
// and the three links, as the class's tar and ln -sfn do.
func TestFromEnvDeployFinish(t *testing.T) {
	dir := t.TempDir()
	d := &Deploy{Dir: dir, Name: "img.rootfs-oci", Basename: "img", Tag: "v1", Tars: true}
	layout := d.Layout()
	for p, content := range map[string]string{"oci-layout": `{"imageLayoutVersion":"1.0.0"}`, "index.json": `{}`, "blobs/sha256/ab": "blob"} {
		os.MkdirAll(filepath.Dir(filepath.Join(layout, p)), 0o755)
		if err := os.WriteFile(filepath.Join(layout, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A link left by an earlier build is replaced (ln -sfn).
	if err := os.Symlink("stale", filepath.Join(dir, "img-v1-oci")); err != nil {
		t.Fatal(err)
	}
	epoch := time.Unix(1700000000, 0)
	if err := d.Finish(context.Background(), &epoch); err != nil {
		t.Fatal(err)
	}
	members := func(p string) []string {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var names []string
		tr := tar.NewReader(f)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if !h.ModTime.Equal(epoch) {
				t.Errorf("%s: %s dated %v, want SOURCE_DATE_EPOCH", filepath.Base(p), h.Name, h.ModTime)
			}
			names = append(names, h.Name)
		}
		return names
	}
	if got, want := members(layout+".tar"), []string{"./", "./blobs/", "./blobs/sha256/", "./blobs/sha256/ab", "./index.json", "./oci-layout"}; !slices.Equal(got, want) {
		t.Errorf("NAME.tar members %q, want %q", got, want)
	}
	if got, want := members(layout+"-dir.tar"), []string{"img.rootfs-oci/", "img.rootfs-oci/blobs/", "img.rootfs-oci/blobs/sha256/", "img.rootfs-oci/blobs/sha256/ab", "img.rootfs-oci/index.json", "img.rootfs-oci/oci-layout"}; !slices.Equal(got, want) {
		t.Errorf("NAME-dir.tar members %q, want %q", got, want)
	}
	for link, target := range map[string]string{"img-v1-oci": "img.rootfs-oci", "img-v1-oci.tar": "img.rootfs-oci.tar", "img-v1-oci-dir.tar": "img.rootfs-oci-dir.tar"} {
		if got, err := os.Readlink(filepath.Join(dir, link)); err != nil || got != target {
			t.Errorf("link %s -> %q (%v), want %s", link, got, err, target)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 6 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("deploy dir holds %q, want the layout, two tars and three links", names)
	}

	// Without tars: the layout's link alone.
	dir2 := t.TempDir()
	d2 := &Deploy{Dir: dir2, Name: "x-oci", Basename: "x", Tag: "latest"}
	os.MkdirAll(filepath.Join(dir2, "x-oci"), 0o755)
	if err := d2.Finish(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	ents, _ = os.ReadDir(dir2)
	if len(ents) != 2 {
		t.Errorf("without tars the deploy dir holds %d entries, want the layout and its link", len(ents))
	}
	if got, _ := os.Readlink(filepath.Join(dir2, "x-latest-oci")); got != "x-oci" {
		t.Errorf("link x-latest-oci -> %q", got)
	}
}
