package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testutil"
)

func runCLI(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestCommitBadInputExits2WithOneLine(t *testing.T) {
	tmp := t.TempDir()
	upper := testutil.Tree{T: t, Root: filepath.Join(tmp, "upper")}.File("f", "x")
	file := filepath.Join(tmp, "file")
	os.WriteFile(file, nil, 0o644)
	out := "oci:" + filepath.Join(tmp, "out")
	if code, _, stderr := runCLI("commit", "--upper", upper.Root, "--image", "oci:"+filepath.Join(tmp, "base")+":t"); code != 0 {
		t.Fatalf("setup commit: %d %s", code, stderr)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"commit", "--upper", filepath.Join(tmp, "missing"), "--image", out}, "missing: does not exist"},
		{[]string{"commit", "--upper", file, "--image", out}, "not a directory"},
		{[]string{"commit", "--upper", upper.Root, "--image", "tarball:" + tmp + "/x"}, `unknown transport "tarball"`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--base", "oci:" + filepath.Join(tmp, "base") + ":nope"}, `no image tagged "nope"`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--base", "oci:" + filepath.Join(tmp, "nobase")}, "is not an OCI image layout"},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--env", "FOO"}, `--env "FOO": want KEY=VALUE`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--label", "x"}, `--label "x"`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--port", "http"}, `--port "http"`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--created", "yesterday"}, `--created "yesterday"`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--source-date-epoch", "soon"}, `--source-date-epoch "soon"`},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--compression", "lz4"}, "--compression"},
		{[]string{"commit", "--upper", upper.Root}, "--image"},
		{[]string{"commit", "--upper", upper.Root, "--image", out, "--bogus"}, "--bogus"},
	}
	for _, c := range cases {
		code, stdout, stderr := runCLI(c.args...)
		if code != 2 || !strings.Contains(stderr, c.want) || strings.Count(stderr, "\n") != 1 || stdout != "" {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and one line containing %q", c.args, code, stderr, c.want)
		}
		if _, err := os.Stat(filepath.Join(tmp, "out")); err == nil {
			t.Fatalf("%q wrote the output", c.args)
		}
	}
}

func TestCommitPrintsDigests(t *testing.T) {
	testutil.RequireRoot(t)
	tmp := t.TempDir()
	upper := testutil.Tree{T: t, Root: filepath.Join(tmp, "upper")}.File("f", "x")
	code, stdout, stderr := runCLI("commit", "--upper", upper.Root, "--image", "oci:"+filepath.Join(tmp, "out"), "--json", "--source-date-epoch", "0")
	var res struct {
		Digest, DiffID, Manifest, Image string
		Size                            int64
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	blob, err := os.Stat(filepath.Join(tmp, "out", "blobs", "sha256", strings.TrimPrefix(res.Digest, "sha256:")))
	if err != nil || blob.Size() != res.Size || !strings.HasSuffix(res.Image, "out:latest") {
		t.Errorf("result %+v does not describe the blob (%v)", res, err)
	}
	code, stdout, _ = runCLI("commit", "--upper", upper.Root, "--image", "oci:"+filepath.Join(tmp, "out"))
	if code != 0 || !strings.Contains(stdout, "diff_id  sha256:") || !strings.Contains(stdout, "(2 layers") {
		t.Errorf("text output %q", stdout)
	}
}

func TestCommitConfigFlags(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "git")
	tmp := t.TempDir()
	upper := testutil.Tree{T: t, Root: filepath.Join(tmp, "upper")}.File("f", "x")
	// A git checkout for --auto-labels, entered as the working dir.
	repo := filepath.Join(tmp, "repo")
	for _, args := range [][]string{{"init", "-q", "-b", "release-1", repo}, {"-C", repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"}} {
		if out, err := exec.Command("git", args...).CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v %s", args, err, out)
		}
	}
	rev, _ := exec.Command("git", "-C", repo, "rev-parse", "HEAD").Output()
	t.Chdir(repo)
	out := filepath.Join(tmp, "out")
	code, _, stderr := runCLI("commit", "--upper", upper.Root, "--image", "oci:"+out+":t",
		"--entrypoint", "/bin/sh", "--entrypoint=-c", // kong wants = for a value starting with -
		"--cmd", "echo hi", "--env", "A=1", "--label", "k=v",
		"--port", "8080/udp", "--user", "1000:1000", "--workdir", "/srv", "--stop-signal", "SIGINT",
		"--os", "linux", "--arch", "arm", "--variant", "v7", "--author", "me@example.com",
		"--created", "2024-01-02T03:04:05Z", "--history", "first", "--auto-labels", "--source-date-epoch", "1700000000")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	idx, _ := os.ReadFile(filepath.Join(out, "index.json"))
	var index struct{ Manifests []struct{ Digest string } }
	json.Unmarshal(idx, &index)
	manifest := readBlob(t, out, index.Manifests[0].Digest)
	var m struct{ Config struct{ Digest string } }
	json.Unmarshal(manifest, &m)
	var cfg struct {
		Created, Author, OS, Architecture, Variant string
		Config                                     struct {
			Entrypoint, Cmd, Env []string
			Labels               map[string]string
			ExposedPorts         map[string]struct{}
			User, WorkingDir     string
			StopSignal           string
		}
		History []struct{ Created, Comment, Author string }
	}
	json.Unmarshal(readBlob(t, out, m.Config.Digest), &cfg)
	c := cfg.Config
	want := map[string]string{
		"org.opencontainers.image.revision": strings.TrimSpace(string(rev)),
		"org.opencontainers.image.ref.name": "release-1",
		"org.opencontainers.image.created":  "2024-01-02T03:04:05Z",
		"k":                                 "v",
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"created", cfg.Created, "2024-01-02T03:04:05Z"},
		{"author", cfg.Author, "me@example.com"},
		{"platform", cfg.OS + "/" + cfg.Architecture + "/" + cfg.Variant, "linux/arm/v7"},
		{"entrypoint", strings.Join(c.Entrypoint, "|"), "/bin/sh|-c"},
		{"cmd", strings.Join(c.Cmd, "|"), "echo hi"},
		{"env", strings.Join(c.Env, "|"), "A=1"},
		{"labels", fmt.Sprint(c.Labels), fmt.Sprint(want)},
		{"ports", fmt.Sprint(c.ExposedPorts), "map[8080/udp:{}]"},
		{"user/workdir/signal", c.User + " " + c.WorkingDir + " " + c.StopSignal, "1000:1000 /srv SIGINT"},
		{"history", fmt.Sprint(cfg.History), "[{2024-01-02T03:04:05Z first me@example.com}]"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %v, want %v", ch.what, ch.got, ch.want)
		}
	}
}

func readBlob(t *testing.T, layout, digest string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")))
	if err != nil {
		t.Fatal(err)
	}
	return data
}
