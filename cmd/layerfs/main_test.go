package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
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
