package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/testenv"
)

func needTool(t *testing.T, name string) {
	t.Helper()
	testenv.NeedTool(t, name)
}

// scriptPrelude runs before every scenario script: a fixed umask (the
// Go appliers set the process umask to 0 while they run) and mkf, which
// writes a file, creating its parents: mkf PATH [CONTENT] (default: PATH).
const scriptPrelude = `set -euo pipefail
umask 022
mkf() { mkdir -p -- "$(dirname -- "$1")"; printf '%s' "${2-$1}" > "$1"; }
`

// runScript runs a bash script with cwd dir.
func runScript(t *testing.T, dir, what, script string) {
	t.Helper()
	cmd := exec.Command("bash", "-c", scriptPrelude+script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s script: %v\n%s\n--- script ---\n%s", what, err, out, script)
	}
}

// commitResult is what `layerfs commit --json` prints.
type commitResult struct {
	Digest   string `json:"digest"`
	DiffID   string `json:"diff_id"`
	Size     int64  `json:"size"`
	Manifest string `json:"manifest"`
}

// layerfsCommit runs `layerfs commit ARGS --json` and decodes its output.
func layerfsCommit(t *testing.T, args ...string) commitResult {
	t.Helper()
	args = append([]string{"commit"}, append(args, "--json")...)
	cmd := exec.Command(layerfsBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("layerfs %s: %v\nstderr: %s\nstdout: %s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	var r commitResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("layerfs %s: decode --json output %q: %v", strings.Join(args, " "), stdout.String(), err)
	}
	if r.Digest == "" || r.DiffID == "" {
		t.Fatalf("layerfs %s: --json output lacks digest or diff_id: %s", strings.Join(args, " "), stdout.String())
	}
	return r
}

// copyTree copies src to dst with cp -a (hardlinks, xattrs and all).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s %s: %v: %s", src, dst, err, out)
	}
}

// mkdirs creates each dir under base and returns their paths.
func mkdirs(t *testing.T, base string, names ...string) []string {
	t.Helper()
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = filepath.Join(base, n)
		if err := os.Mkdir(out[i], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// mountOverlay mounts a real kernel overlayfs the way the reference is
// built: lowers given base first, redirect_dir=off so that a dir rename
// is copied rather than recorded as a redirect (layerfs refuses those),
// metacopy=off and index=off. It returns the unmount func, also
// registered as a cleanup in case the test stops early.
func mountOverlay(t *testing.T, lowers []string, upper, work, merged string) func() {
	t.Helper()
	rev := make([]string, len(lowers))
	for i, l := range lowers {
		rev[len(lowers)-1-i] = l
	}
	opts := "lowerdir=" + strings.Join(rev, ":") + ",upperdir=" + upper + ",workdir=" + work +
		",redirect_dir=off,metacopy=off,index=off"
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Fatalf("mount overlay at %s (%s): %v", merged, opts, err)
	}
	mounted := true
	unmount := func() {
		if !mounted {
			return
		}
		mounted = false
		if err := unix.Unmount(merged, 0); err != nil {
			t.Errorf("unmount %s: %v", merged, err)
			_ = unix.Unmount(merged, unix.MNT_DETACH)
		}
	}
	t.Cleanup(unmount)
	return unmount
}

// makeSocket returns a goOps func that leaves a bound unix socket at rel
// (net.Listener.Close would unlink it).
func makeSocket(rel string) func(string) error {
	return func(merged string) error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(merged, rel)}); err != nil {
			return fmt.Errorf("bind %s: %w", rel, err)
		}
		return nil
	}
}

// configJSON is an image config as skopeo inspect --config --raw prints
// it: the fields the tests compare.
type configJSON struct {
	Architecture string `json:"architecture"`
	Variant      string `json:"variant"`
	OS           string `json:"os"`
	Author       string `json:"author"`
	Created      string `json:"created"`
	Config       struct {
		Entrypoint   []string            `json:"Entrypoint"`
		Cmd          []string            `json:"Cmd"`
		Env          []string            `json:"Env"`
		Labels       map[string]string   `json:"Labels"`
		ExposedPorts map[string]struct{} `json:"ExposedPorts"`
		User         string              `json:"User"`
		WorkingDir   string              `json:"WorkingDir"`
		StopSignal   string              `json:"StopSignal"`
	} `json:"config"`
}
