package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// rootfsEpoch is the SOURCE_DATE_EPOCH of the rootfs tests: before every
// mtime they create, so that all mtimes clamp to it and an upper and a
// rootfs that were written at different moments commit alike.
const rootfsEpoch = 1_700_000_000

// rootfsBaseScript is the lower of every rootfs scenario: a little of
// everything a change can touch, hardlinks included.
const rootfsBaseScript = `
mkf etc/passwd 'root:x:0:0'; mkf etc/hosts 127.0.0.1; mkf etc/conf.d/a a; mkf etc/conf.d/b b
mkf bin/sh sh; mkf bin/ls ls; mkdir -p usr/bin
mkf usr/share/doc/readme doc; setfattr -n user.k -v v usr/share/doc/readme
mkf var/lib/db/x x; mkf var/lib/db/sub/y y; mkf opt/f f
mkf home/u/file u; chown -R 1000:1000 home/u; chmod 0700 home/u
mkf lib/libfoo.so.1 foo; ln lib/libfoo.so.1 lib/libfoo-link; ln -s lib lib64
mkf var/cache/apt/pkgcache.bin cache
`

// rootfsScenarios are changes made once in a kernel overlay mount (the
// upper is the reference) and once in a cp -a copy of the lower.
var rootfsScenarios = []struct{ name, change string }{
	{"unchanged", ":"},
	{"add", "mkf etc/new new; mkf srv/www/index.html '<html>'; ln -s index.html srv/www/link"},
	{"modify-content", "printf 127.0.0.2 > etc/hosts; printf root:x:0:0:longer > etc/passwd"},
	{"mode-only", "chmod 0600 etc/passwd; chmod 0700 var/lib"},
	{"owner-only", "chown 5:6 etc/hosts; chown 0:0 home/u"},
	{"xattr-only", "setfattr -n user.x -v 1 etc/passwd; setfattr -n user.k -v w usr/share/doc/readme"},
	{"delete-file", "rm etc/conf.d/a lib/libfoo-link"},
	{"delete-dir-tree", "rm -rf var/lib/db"},
	{"merged-usr", "mv bin/sh bin/ls usr/bin/; rm -rf bin; ln -s usr/bin bin"},
	{"file-to-dir", "rm opt/f; mkf opt/f/inside i"},
	{"dir-to-file", "rm -rf var/lib/db; mkf var/lib/db 'now a file'"},
	{"everything", `mkf etc/new new; printf 127.0.0.2 > etc/hosts; chmod 0600 etc/passwd; chown 5:6 etc/conf.d/b
		setfattr -n user.x -v 1 usr/share/doc/readme; rm etc/conf.d/a; rm -rf var/lib/db/sub
		mv bin/sh bin/ls usr/bin/; rm -rf bin; ln -s usr/bin bin; rm opt/f; mkf opt/f/inside i
		rm -rf var/cache/apt; mkf var/cache/apt/new n`},
}

// TestCommitRootfsEqualsUpper: `commit --rootfs R --deletions` over L gives
// the very layer that `commit --upper U` gives, U being the upper the
// kernel's overlayfs leaves after the same changes, whether the lower
// comes from --lower or from the image; umoci unpacks the image to R; and
// without --deletions the layer has no whiteouts.
func TestCommitRootfsEqualsUpper(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"bash", "cp", "setfattr", "umoci"} {
		needTool(t, tool)
	}
	t.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(rootfsEpoch))
	for _, sc := range rootfsScenarios {
		t.Run(sc.name, func(t *testing.T) {
			tmp := t.TempDir()
			lower := mkdirs(t, tmp, "lower")[0]
			runScript(t, lower, "lower", rootfsBaseScript)
			img := filepath.Join(tmp, "img")
			layerfsCommit(t, "--upper", lower, "--image", "oci:"+img+":test")
			outs := map[string]string{}
			for _, n := range []string{"upper", "rootfs", "derived", "additive"} {
				outs[n] = img + "-" + n
				copyTree(t, img, outs[n])
			}

			upper := throughOverlay(t, []string{lower}, sc.change)
			rootfs := filepath.Join(tmp, "rootfs")
			copyTree(t, lower, rootfs)
			runScript(t, rootfs, "rootfs", sc.change)

			ru := layerfsCommit(t, "--upper", upper, "--lower", lower, "--image", "oci:"+outs["upper"]+":test")
			rr := layerfsCommit(t, "--rootfs", rootfs, "--deletions", "--lower", lower, "--image", "oci:"+outs["rootfs"]+":test")
			rd := layerfsCommit(t, "--rootfs", rootfs, "--deletions", "--image", "oci:"+outs["derived"]+":test")
			if rr.Digest != ru.Digest || rr.DiffID != ru.DiffID {
				t.Errorf("--rootfs --deletions gave %s, --upper %s", rr.Digest, ru.Digest)
				showLayerDiff(t, outs["upper"], outs["rootfs"])
			}
			if rd.Digest != ru.Digest {
				t.Errorf("--rootfs --deletions with the lower listed from the image gave %s, --upper %s", rd.Digest, ru.Digest)
				showLayerDiff(t, outs["upper"], outs["derived"])
			}
			before := snapshotOrFail(t, lower)
			entries := lintCommitted(t, outs["rootfs"], -1, before, lintOptions{epoch: rootfsEpoch})
			if sc.name == "unchanged" && len(entries) != 0 {
				t.Errorf("an unchanged rootfs gave %d entries", len(entries))
			}
			if sc.name != "unchanged" && len(entries) == 0 {
				t.Error("a changed rootfs gave an empty layer")
			}

			// umoci rebuilds the rootfs from base + layer.
			want := snapshotOrFail(t, rootfs)
			work := filepath.Join(tmp, "umoci")
			if err := os.Mkdir(work, 0o755); err != nil {
				t.Fatal(err)
			}
			got, cleanup, err := appliers.Umoci(context.Background(), outs["rootfs"], "test", work)
			if err != nil {
				t.Fatal(err)
			}
			defer cleanup()
			for _, d := range tree.Diff(want, snapshotOrFail(t, got), tree.Options{IgnoreMtime: true}) {
				t.Errorf("umoci unpack differs from the rootfs: %s", d)
			}

			// Without --deletions: additions and changes, no whiteouts.
			layerfsCommit(t, "--rootfs", rootfs, "--lower", lower, "--image", "oci:"+outs["additive"]+":test")
			additive := lintCommitted(t, outs["additive"], -1, before, lintOptions{epoch: rootfsEpoch})
			names := map[string]bool{}
			for _, e := range entries {
				names[e.hdr.Name] = true
			}
			for _, e := range additive {
				if e.isWhiteout() {
					t.Errorf("whiteout %s without --deletions", tree.Quote(e.hdr.Name))
				}
				if !names[e.hdr.Name] {
					t.Errorf("%s without --deletions but not with it", tree.Quote(e.hdr.Name))
				}
			}
		})
	}
}

// TestCommitRootfsExclude: --exclude leaves paths out of a rootfs layer,
// entries and whiteouts alike, while the dir above a /** keeps its own
// change.
func TestCommitRootfsExclude(t *testing.T) {
	testenv.NeedRoot(t)
	for _, tool := range []string{"bash", "cp", "setfattr"} {
		needTool(t, tool)
	}
	tmp := t.TempDir()
	lower := mkdirs(t, tmp, "lower")[0]
	runScript(t, lower, "lower", rootfsBaseScript)
	img := filepath.Join(tmp, "img")
	layerfsCommit(t, "--upper", lower, "--image", "oci:"+img+":test", "--source-date-epoch", fmt.Sprint(rootfsEpoch))
	rootfs := filepath.Join(tmp, "rootfs")
	copyTree(t, lower, rootfs)
	runScript(t, rootfs, "rootfs", `rm -rf var/cache/apt; mkf var/cache/new n; chmod 0700 var/cache
		mkf etc/new.pyc x; mkf usr/lib/python3/m.pyc x; mkf usr/lib/python3/m.py y; rm etc/conf.d/a`)
	layerfsCommit(t, "--rootfs", rootfs, "--deletions", "--image", "oci:"+img+":test", "--source-date-epoch", fmt.Sprint(rootfsEpoch),
		"--exclude", "/var/cache/**", "--exclude", "/**/*.pyc", "--exclude", "/etc/conf.d/a")
	im, err := appliers.Image(img, "test")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readLayer(im, -1)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.hdr.Name)
	}
	want := []string{"usr/", "usr/lib/", "usr/lib/python3/", "usr/lib/python3/m.py", "var/", "var/cache/"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("layer entries %q, want %q", got, want)
	}
}

// TestCommitRootfsBadInput: misuse of the rootfs flags, and overlay
// markers in a rootfs, exit 2 with one line naming the problem.
func TestCommitRootfsBadInput(t *testing.T) {
	testenv.NeedRoot(t)
	needTool(t, "bash")
	tmp := t.TempDir()
	d := mkdirs(t, tmp, "lower", "marked", "opaque", "whfile")
	runScript(t, d[0], "lower", "mkf etc/a a; mkf etc/b b")
	runScript(t, d[1], "marked", "mkf etc/a a; mknod etc/b c 0 0")
	runScript(t, d[2], "opaque", "mkf etc/a a; setfattr -n trusted.overlay.opaque -v y etc")
	runScript(t, d[3], "whfile", "mkf etc/a a; mkf etc/.wh.b ''")
	img := "oci:" + filepath.Join(tmp, "img") + ":test"
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--upper", d[0], "--rootfs", d[0]}, "--upper and --rootfs"},
		{[]string{"--lower", d[0]}, "--upper=DIR or --rootfs=DIR"},
		{[]string{"--upper", d[0], "--deletions"}, "--deletions: only with --rootfs"},
		{[]string{"--rootfs", filepath.Join(tmp, "nope")}, "--rootfs " + filepath.Join(tmp, "nope") + ": does not exist"},
		{[]string{"--rootfs", d[0], "--exclude", "var/cache"}, `exclude pattern "var/cache"`},
		{[]string{"--rootfs", d[0], "--exclude", "/var/[cache"}, `exclude pattern "/var/[cache"`},
		{[]string{"--rootfs", d[1], "--lower", d[0], "--deletions"}, filepath.Join(d[1], "etc/b") + ": a 0:0 character device"},
		{[]string{"--rootfs", d[2], "--lower", d[0]}, filepath.Join(d[2], "etc") + ": an overlay opaque xattr"},
		{[]string{"--rootfs", d[3], "--lower", d[0]}, filepath.Join(d[3], "etc/.wh.b") + ": a .wh. file"},
	}
	for _, c := range cases {
		args := append([]string{"commit", "--image", img}, c.args...)
		cmd := exec.Command(layerfsBin, args...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(stderr.String(), c.want) ||
			strings.Count(stderr.String(), "\n") != 1 || stdout.Len() != 0 {
			t.Errorf("layerfs %s: %v, stderr %q; want exit 2 and one line containing %q", strings.Join(args, " "), err, stderr.String(), c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(tmp, "img")); err == nil {
		t.Error("a refused commit wrote the image")
	}
}
