package integration

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// The bbclass cannot meet bitbake here (it is not on this machine), so
// it meets a small parser of the assignment and function forms bitbake
// takes, and its IMAGE_CMD body runs under bash and pseudo as bitbake
// would run it: as a normal user, with the class's variables exported.

const bbclassPath = "../contrib/yocto/classes/image-oci-layerfs.bbclass"

// bbFile is what the parser makes of a class.
type bbFile struct {
	assigned  map[string]bool   // VAR (overrides and flags stripped) given a value
	exported  map[string]bool   // export VAR
	functions map[string]string // shell and python functions: name -> body
	words     map[string]bool   // every VAR-like word anywhere
}

var (
	bbAssign   = regexp.MustCompile(`^(export\s+)?([A-Za-z_][A-Za-z0-9_${}\-]*)((?::[A-Za-z0-9_${}\-]+)*)(\[[A-Za-z0-9_\-]+\])?\s*(\?\?=|\?=|:=|\+=|=\+|\.=|=\.|=)\s*(.*)$`)
	bbExport   = regexp.MustCompile(`^export\s+([A-Za-z_][A-Za-z0-9_]*)$`)
	bbShellFn  = regexp.MustCompile(`^(fakeroot\s+)?([A-Za-z_][A-Za-z0-9_\-]*(?::[A-Za-z0-9_\-]+)*)\s*\(\)\s*\{$`)
	bbPythonFn = regexp.MustCompile(`^(fakeroot\s+)?python\s+([A-Za-z_][A-Za-z0-9_\-]*)?\s*\(\)\s*\{$`)
	bbDef      = regexp.MustCompile(`^def\s+[A-Za-z_][A-Za-z0-9_]*\(.*\):$`)
	bbDirect   = regexp.MustCompile(`^(inherit|require|include|addtask|deltask|EXPORT_FUNCTIONS|addhandler)\s+\S`)
	bbWord     = regexp.MustCompile(`[A-Z][A-Z0-9_]{2,}`)
)

// parseBB parses a class in bitbake's syntax, failing on any line that is
// not one of its forms.
func parseBB(t *testing.T, path string) *bbFile {
	t.Helper()
	f, errs := parseBBFile(t, path)
	for _, e := range errs {
		t.Error(e)
	}
	return f
}

// parseBBFile parses path and returns what it could not take, a line each.
func parseBBFile(t *testing.T, path string) (*bbFile, []string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var errs []string
	f := &bbFile{assigned: map[string]bool{}, exported: map[string]bool{}, functions: map[string]string{}, words: map[string]bool{}}
	for _, w := range bbWord.FindAllString(string(data), -1) {
		f.words[w] = true
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	n := 0
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		n++
		return sc.Text(), true
	}
	bad := func(line, why string) {
		errs = append(errs, fmt.Sprintf("%s:%d: %s: %q", path, n, why, line))
	}
	for {
		line, ok := next()
		if !ok {
			break
		}
		switch trimmed := strings.TrimSpace(line); {
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
		case bbExport.MatchString(line):
			f.exported[bbExport.FindStringSubmatch(line)[1]] = true
		case bbDirect.MatchString(line):
		case bbShellFn.MatchString(line) || bbPythonFn.MatchString(line):
			name := ""
			if m := bbShellFn.FindStringSubmatch(line); m != nil {
				name = m[2]
			} else {
				name = "python " + bbPythonFn.FindStringSubmatch(line)[2]
			}
			var body []string
			closed := false
			for {
				l, ok := next()
				if !ok {
					break
				}
				if l == "}" {
					closed = true
					break
				}
				body = append(body, l)
			}
			if !closed {
				bad(line, "function without a closing } at the start of a line")
			}
			f.functions[name] = strings.Join(body, "\n")
		case bbDef.MatchString(line):
			// A Python def: its body is the indented lines after it.
			for {
				l, ok := next()
				if !ok || l == "" {
					break
				}
				if !strings.HasPrefix(l, "    ") && !strings.HasPrefix(l, "\t") {
					bad(l, "a def's body line is not indented")
					break
				}
			}
		case bbAssign.MatchString(line):
			m := bbAssign.FindStringSubmatch(line)
			if m[1] != "" {
				f.exported[m[2]] = true
			}
			f.assigned[m[2]] = true
			value := m[6]
			// A value is one double- or single-quoted string, which may
			// go on over lines ending in a backslash.
			for strings.HasSuffix(value, "\\") {
				l, ok := next()
				if !ok {
					bad(line, "continuation at the end of the file")
					break
				}
				value = strings.TrimSuffix(value, "\\") + strings.TrimSpace(l)
			}
			if len(value) < 2 || value[0] != value[len(value)-1] || (value[0] != '"' && value[0] != '\'') {
				bad(line, "the value is not one quoted string")
			}
			if strings.Count(value, "${")+strings.Count(value, "${@") < strings.Count(value, "}")-strings.Count(value, "{") {
				bad(line, "unbalanced braces")
			}
		default:
			bad(line, "not a bitbake assignment, export, directive or function")
		}
	}
	return f, errs
}

// issueVariables is the issue's table of the class's variables.
var issueVariables = []string{
	"OCI_LAYER_MODE", "OCI_LAYERS",
	"OCI_LAYER_CACHE", "OCI_LAYER_CACHE_DIR",
	"OCI_BASE_IMAGE", "OCI_BASE_IMAGE_TAG",
	"OCI_IMAGE_TAG",
	"OCI_IMAGE_ENTRYPOINT", "OCI_IMAGE_ENTRYPOINT_ARGS", "OCI_IMAGE_CMD", "OCI_IMAGE_ENV_VARS", "OCI_IMAGE_LABELS",
	"OCI_IMAGE_PORTS", "OCI_IMAGE_RUNTIME_UID", "OCI_IMAGE_WORKINGDIR", "OCI_IMAGE_STOPSIGNAL", "OCI_IMAGE_OS",
	"OCI_IMAGE_ARCH", "OCI_IMAGE_SUBARCH",
	"OCI_IMAGE_AUTHOR", "OCI_IMAGE_AUTHOR_EMAIL", "OCI_IMAGE_AUTO_LABELS", "OCI_IMAGE_REVISION", "OCI_IMAGE_BRANCH",
	"OCI_IMAGE_BUILD_DATE",
	"OCI_IMAGE_TAR_OUTPUT", "IMGDEPLOYDIR", "IMAGE_NAME", "IMAGE_NAME_SUFFIX", "IMAGE_BASENAME",
	"MACHINE", "TUNE_PKGARCH", "PKGDATA_DIR", "IMAGE_ROOTFS", "SOURCE_DATE_EPOCH",
}

func TestBbclassSyntax(t *testing.T) {
	f := parseBB(t, bbclassPath)
	for _, v := range issueVariables {
		if !f.words[v] {
			t.Errorf("the class does not name %s", v)
		}
		// layerfs reads them from the environment: bitbake exports only
		// what the class exports.
		if !f.exported[v] {
			t.Errorf("the class does not export %s", v)
		}
	}
	for _, v := range issueVariables {
		if strings.HasPrefix(v, "OCI_") && !f.assigned[v] {
			t.Errorf("%s has no default (?=) in the class, as image-oci gives it", v)
		}
	}
	body, ok := f.functions["IMAGE_CMD:oci"]
	if !ok {
		t.Fatalf("no IMAGE_CMD:oci() function; functions: %v", f.functions)
	}
	if !strings.Contains(body, "build --from-env") {
		t.Errorf("IMAGE_CMD:oci does not run layerfs build --from-env:\n%s", body)
	}
	// The parser must be able to fail: a line of another language.
	bad := filepath.Join(t.TempDir(), "bad.bbclass")
	os.WriteFile(bad, []byte("OCI_LAYERS ?= \"a\"\nif [ x ]; then\n"), 0o644)
	if _, errs := parseBBFile(t, bad); len(errs) != 1 || !strings.Contains(errs[0], ":2:") {
		t.Errorf("the parser on a shell line at the top level: %v, want one error on line 2", errs)
	}
}

// TestBbclassImageCmdUnderPseudo runs the class's IMAGE_CMD body as
// bitbake would: bash (bitbake's sh), under pseudo, as a normal user,
// with the class's variables in the environment and bbfatal defined. A
// rootfs whose files pseudo says are root's (on disk they are the
// user's) and a packages layer installed through the layerfs mount give
// an image whose every entry is 0:0, in IMGDEPLOYDIR with the class's
// names.
func TestBbclassImageCmdUnderPseudo(t *testing.T) {
	u := newFakeRootUser(t, "pseudo")
	u.stopPseudo(t)
	f := parseBB(t, bbclassPath)
	body := f.functions["IMAGE_CMD:oci"]
	if body == "" {
		t.Fatal("no IMAGE_CMD:oci in the class")
	}
	// The install: a package manager writing files, some through chown
	// to root as package managers under a fake root do.
	install := `set -e
mkdir -p "$LAYERFS_ROOT/usr/share/demo" "$LAYERFS_ROOT/usr/bin"
for p in $LAYERFS_PACKAGES; do echo "$p" > "$LAYERFS_ROOT/usr/share/demo/$p"; done
echo '#!/bin/sh' > "$LAYERFS_ROOT/usr/bin/demo"; chmod 755 "$LAYERFS_ROOT/usr/bin/demo"; chown 0:0 "$LAYERFS_ROOT/usr/bin/demo"
`
	if err := os.WriteFile(filepath.Join(u.work, "install.sh"), []byte(install), 0o755); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{
		"OCI_LAYER_MODE":        "multi",
		"OCI_LAYERS":            "base:packages:base-files+busybox app:packages:demo conf:files:/etc/app.conf+/etc/motd",
		"OCI_LAYER_CACHE":       "1",
		"OCI_LAYER_CACHE_DIR":   "$PWD/oci-layer-cache/qemux86-64",
		"OCI_IMAGE_TAG":         "latest",
		"OCI_IMAGE_CMD":         "/bin/sh",
		"OCI_IMAGE_ARCH":        "amd64",
		"OCI_IMAGE_OS":          "linux",
		"OCI_IMAGE_TAR_OUTPUT":  "true",
		"OCI_IMAGE_AUTO_LABELS": "1",
		"OCI_IMAGE_REVISION":    "none",
		"OCI_IMAGE_BRANCH":      "none",
		"OCI_IMAGE_BUILD_DATE":  "2024-01-01T00:00:00Z",
		"IMGDEPLOYDIR":          "$PWD/deploy",
		"IMAGE_NAME":            "demo-image-qemux86-64-20240101000000",
		"IMAGE_NAME_SUFFIX":     ".rootfs",
		"IMAGE_BASENAME":        "demo-image",
		"IMAGE_ROOTFS":          "$PWD/rootfs",
		"MACHINE":               "qemux86-64",
		"TUNE_PKGARCH":          "core2-64",
		"WORKDIR":               "$PWD/work",
		"LAYERFS_INSTALL":       "$PWD/install.sh",
	}
	var script strings.Builder
	script.WriteString("mkdir -p deploy work\n")
	// The rootfs is made under pseudo, as bitbake's do_rootfs makes it: on
	// disk the user's, root's to pseudo.
	script.WriteString("pseudo sh -c 'mkdir -p rootfs/etc && echo conf > rootfs/etc/app.conf && echo hi > rootfs/etc/motd && chmod 600 rootfs/etc/app.conf'\n")
	for k, v := range vars {
		fmt.Fprintf(&script, "export %s=\"%s\"\n", k, v)
	}
	// bitbake's logging functions, which the body may call.
	script.WriteString("cat > cmd.sh <<'LAYERFS_EOF'\nbbfatal() { echo \"ERROR: $*\" >&2; exit 1; }\nbbnote() { echo \"NOTE: $*\"; }\nset -e\n")
	script.WriteString(body)
	script.WriteString("\nLAYERFS_EOF\npseudo bash cmd.sh\n")
	out := u.run(t, script.String())
	for _, want := range []string{"OCI Cache MISS: Layer 'base'", "OCI: Pre-installed packages for 3 layers"} {
		if !strings.Contains(out, want) {
			t.Errorf("the class's log lacks %q:\n%s", want, out)
		}
	}
	deploy := filepath.Join(u.work, "deploy")
	name := vars["IMAGE_NAME"] + vars["IMAGE_NAME_SUFFIX"] + "-oci"
	for _, p := range []string{name, name + ".tar", name + "-dir.tar", "demo-image-latest-oci", "demo-image-latest-oci.tar", "demo-image-latest-oci-dir.tar"} {
		if _, err := os.Stat(filepath.Join(deploy, p)); err != nil {
			t.Errorf("deploy: %v", err)
		}
	}
	layers := layerLines(t, filepath.Join(deploy, name), "latest")
	if len(layers) != 3 {
		t.Fatalf("%d layers, want 3", len(layers))
	}
	sawConf := false
	for i, l := range layers {
		for _, e := range l {
			if fields := strings.Fields(e); fields[2] != "0:0" {
				t.Errorf("layer %d: %s is not root's", i+1, e)
			}
			if strings.Contains(e, "etc/app.conf 0:0 600") {
				sawConf = true
			}
		}
	}
	if !sawConf {
		t.Errorf("etc/app.conf 0:0 600 is not in the image: %v", layers)
	}
	// Owned by the user on disk: only pseudo knew they are root's.
	st, err := os.Stat(filepath.Join(u.work, "rootfs/etc/app.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != u.uid {
		t.Errorf("rootfs/etc/app.conf is owned by %d on disk, not by the user %d: the test does not test pseudo", uid, u.uid)
	}
}
