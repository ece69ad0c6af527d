package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/hostile"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/internal/testutil"
	"github.com/layerfs/layerfs/oci/unpack"
)

// The unprivileged runs re-execute this test binary as nobody, which then
// runs only TestApplyHelperProcess with its job in this variable.
const applyHelperEnv = "LAYERFS_TEST_APPLY_HELPER"

const (
	nobodyUID = 65534
	nobodyGID = 65534
	// The helper's answer is the stdout line that starts with this.
	helperResultPrefix = "APPLY-RESULT "
)

type helperJob struct {
	Tar     string
	Dir     string
	MaxSize int64
}

// applyOutcome is what an Apply did, in a form a child process can report.
type applyOutcome struct {
	Err      string
	Hostile  bool
	Input    bool
	Warnings []string
}

func outcomeOf(err error, warnings []string) applyOutcome {
	o := applyOutcome{Warnings: warnings}
	if err != nil {
		o.Err, o.Hostile, o.Input = err.Error(), errors.Is(err, unpack.ErrHostile), inputerr.Is(err)
	}
	return o
}

// TestApplyHelperProcess is not a test: it is the child of the
// unprivileged runs, and does nothing when not started as one.
func TestApplyHelperProcess(t *testing.T) {
	spec := os.Getenv(applyHelperEnv)
	if spec == "" {
		return
	}
	var job helperJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(job.Tar)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var warnings []string
	_, err = unpack.Apply(context.Background(), f, job.Dir, unpack.Options{MaxSize: job.MaxSize, Warn: func(m string) { warnings = append(warnings, m) }})
	out, _ := json.Marshal(outcomeOf(err, warnings))
	fmt.Printf("\n%s%s\n", helperResultPrefix, out)
}

// applyRunner runs one Apply of the tar file into dir, in this process or as
// another user.
type applyRunner func(t *testing.T, tarFile, dir string, maxSize int64) applyOutcome

func applyHere(t *testing.T, tarFile, dir string, maxSize int64) applyOutcome {
	t.Helper()
	f, err := os.Open(tarFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var warnings []string
	_, err = unpack.Apply(context.Background(), f, dir, unpack.Options{MaxSize: maxSize, Warn: func(m string) { warnings = append(warnings, m) }})
	return outcomeOf(err, warnings)
}

// applyAsNobody runs Apply in a copy of this test binary as uid 65534.
func applyAsNobody(bin string) applyRunner {
	return func(t *testing.T, tarFile, dir string, maxSize int64) applyOutcome {
		t.Helper()
		spec, _ := json.Marshal(helperJob{Tar: tarFile, Dir: dir, MaxSize: maxSize})
		cmd := exec.Command(bin, "-test.run=^TestApplyHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), applyHelperEnv+"="+string(spec))
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobodyUID, Gid: nobodyGID, Groups: []uint32{}}}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("helper as nobody: %v\n%s%s", err, stdout.String(), stderr.String())
		}
		for line := range strings.SplitSeq(stdout.String(), "\n") {
			if js, ok := strings.CutPrefix(line, helperResultPrefix); ok {
				var o applyOutcome
				if err := json.Unmarshal([]byte(js), &o); err != nil {
					t.Fatal(err)
				}
				return o
			}
		}
		t.Fatalf("helper as nobody gave no result:\n%s%s", stdout.String(), stderr.String())
		return applyOutcome{}
	}
}

// openTempDir is a t.TempDir that an unprivileged child can reach.
func openTempDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// helperBinary copies this test binary where nobody may run it (go test
// keeps it in a 0700 directory).
func helperBinary(t *testing.T) string {
	t.Helper()
	return testutil.CopyTestBinary(t, openTempDir(t))
}

// escapeSnapshot records everything about a tree that an escape could change:
// type, mode, owner, links, size, content, link target, xattrs, mtime and
// ctime (which moves on any chmod, chown or link, even one that restores
// the old value). skip's subtree (the extraction root) is left out.
func escapeSnapshot(t *testing.T, dir, skip string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			out[p] = "error: " + err.Error()
			return nil
		}
		if p == skip {
			return filepath.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			out[p] = "error: " + err.Error()
			return nil
		}
		s := fmt.Sprintf("mode=%o owner=%d:%d nlink=%d size=%d mtime=%d.%d ctime=%d.%d ino=%d",
			st.Mode, st.Uid, st.Gid, st.Nlink, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec, st.Ino)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			s += fmt.Sprintf(" sha=%x err=%v", sha256.Sum256(data), err)
		case unix.S_IFLNK:
			target, _ := os.Readlink(p)
			s += " -> " + target
		}
		s += " xattrs=" + xattrDump(p)
		out[p] = s
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func xattrDump(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return "error: " + err.Error()
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var parts []string
	for _, name := range names {
		v := make([]byte, 64<<10)
		k, _ := unix.Lgetxattr(p, name, v)
		parts = append(parts, fmt.Sprintf("%s=%q", name, v[:max(k, 0)]))
	}
	return strings.Join(parts, ",")
}

func diffSnapshots(before, after map[string]string) []string {
	var diffs []string
	for p, b := range before {
		a, ok := after[p]
		switch {
		case !ok:
			diffs = append(diffs, "gone: "+p)
		case a != b:
			diffs = append(diffs, fmt.Sprintf("changed: %s\n    before %s\n    after  %s", p, b, a))
		}
	}
	for p, a := range after {
		if _, ok := before[p]; !ok {
			diffs = append(diffs, "new: "+p+" "+a)
		}
	}
	slices.Sort(diffs)
	return diffs
}

// caseJob is one hostile case laid out for applying:
//
//	base/job/CANARY      beside the root: ".wh..." deletes the root's parent
//	base/job/root/       the extraction root
//	base/outside/victim  the victim that escapes aim at
type caseJob struct {
	base, root, outside, tarFile string
	before                       map[string]string
}

func prepareCase(t *testing.T, c hostile.Case, rootless bool) *caseJob {
	t.Helper()
	base := openTempDir(t)
	job := filepath.Join(base, "job")
	j := &caseJob{base: base, root: filepath.Join(job, "root"), outside: filepath.Join(base, "outside")}
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, d := range []string{job, j.root, j.outside, filepath.Join(j.outside, "dir")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, content := range map[string]string{
		filepath.Join(job, "CANARY"):              "canary",
		filepath.Join(j.outside, hostile.Victim):  "victim",
		filepath.Join(j.outside, "dir", "inside"): "inside",
	} {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if rootless {
		if err := os.Chown(j.root, nobodyUID, nobodyGID); err != nil {
			t.Fatal(err)
		}
	}
	j.tarFile = filepath.Join(openTempDir(t), "layer.tar")
	if err := os.WriteFile(j.tarFile, c.Tar(j.outside), 0o644); err != nil {
		t.Fatal(err)
	}
	j.before = escapeSnapshot(t, base, j.root)
	return j
}

// escapes lists what changed outside the root since prepareCase.
func (j *caseJob) escapes(t *testing.T) []string {
	return diffSnapshots(j.before, escapeSnapshot(t, j.base, j.root))
}

// runCase applies one hostile case and checks the outcome and that
// nothing outside the root changed.
func runCase(t *testing.T, c hostile.Case, apply applyRunner, rootless bool) {
	j := prepareCase(t, c, rootless)
	out := apply(t, j.tarFile, j.root, c.MaxSize)
	if diffs := j.escapes(t); len(diffs) > 0 {
		t.Errorf("ESCAPE: applying %s changed things outside the root (result: %q):\n  %s", c.Name, out.Err, strings.Join(diffs, "\n  "))
	}

	switch c.Want {
	case hostile.Reject:
		if out.Err == "" {
			t.Fatalf("%s applied; want a rejection (%s)", c.Name, c.Doc)
		}
		if !out.Hostile || !out.Input {
			t.Errorf("rejection %q: unpack.ErrHostile %v, bad input %v; want both", out.Err, out.Hostile, out.Input)
		}
		if !strings.Contains(out.Err, c.Mention) {
			t.Errorf("rejection %q does not mention %s", out.Err, c.Mention)
		}
	case hostile.Contain:
		if out.Err != "" {
			t.Fatalf("%s: %s; want it applied and contained (%s)", c.Name, out.Err, c.Doc)
		}
		if c.Check != nil {
			if err := c.Check(j.root, j.outside); err != nil {
				t.Error(err)
			}
		}
	}
}

// naiveApply is the applier of the escapes in hostile-matrix.md: joined
// paths, symlinks followed, whiteouts removed by joined name, hardlinks
// chmodded by path. It exists to prove that the harness sees an escape.
func naiveApply(tarFile, root string) {
	f, err := os.Open(tarFile)
	if err != nil {
		return
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			return
		}
		p := filepath.Join(root, hdr.Name)
		dir, base := filepath.Split(p)
		if target, ok := strings.CutPrefix(base, ".wh."); ok {
			os.RemoveAll(filepath.Join(dir, target))
			continue
		}
		os.MkdirAll(dir, 0o755)
		if hdr.Typeflag != tar.TypeDir {
			os.RemoveAll(p)
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			data, _ := io.ReadAll(tr)
			os.WriteFile(p, data, 0o644)
		case tar.TypeSymlink:
			os.Symlink(hdr.Linkname, p)
		case tar.TypeLink:
			os.Link(filepath.Join(root, hdr.Linkname), p)
			os.Chmod(p, os.FileMode(hdr.Mode&0o777))
		}
	}
}

// The harness must see the escapes that a naive applier falls for,
// otherwise the corpus runs prove nothing.
func TestHostileHarnessSeesEscapes(t *testing.T) {
	testutil.RequireRoot(t)
	escaping := []string{"h04_abs_symlink_write", "h08_hardlink_via_symlinked_parent", "h09_hardlink_to_symlink_chmod",
		"h10_whiteout_through_abs_symlink", "h15_dir_then_symlink_swap_write", "h27_whiteout_dotdotdot_root"}
	for _, c := range hostile.Cases() {
		if !slices.Contains(escaping, c.Name) {
			continue
		}
		t.Run(c.Name, func(t *testing.T) {
			j := prepareCase(t, c, false)
			naiveApply(j.tarFile, j.root)
			if len(j.escapes(t)) == 0 {
				t.Errorf("a naive applier escaped with %s, and the harness saw nothing", c.Name)
			}
		})
	}
}

func TestHostileCorpus(t *testing.T) {
	testutil.RequireRoot(t)
	for _, c := range hostile.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			runCase(t, c, applyHere, false)
		})
	}
}

// Unprivileged, devices, trusted.* xattrs, owners and markers all take
// other paths (override_stat, user.* markers), so the whole corpus runs
// again as nobody.
func TestHostileCorpusRootless(t *testing.T) {
	testutil.RequireRoot(t) // to become nobody
	apply := applyAsNobody(helperBinary(t))
	for _, c := range hostile.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			runCase(t, c, apply, true)
		})
	}
}

// The gzip bomb: a few KiB that inflate to 64 MiB stop at the limit, with
// the limit named and not much written.
func TestApplyStopsDecompressionBomb(t *testing.T) {
	bomb := hostile.GzipBomb(64 << 20)
	if len(bomb) > 256<<10 {
		t.Fatalf("the bomb is %d bytes compressed; it should be tiny", len(bomb))
	}
	for _, viaImage := range []bool{false, true} {
		t.Run(fmt.Sprintf("image=%v", viaImage), func(t *testing.T) {
			dir := t.TempDir()
			opts := unpack.Options{MaxSize: 1 << 20}
			var res unpack.Result
			var err error
			if viaImage {
				img := testImage(t, []layerBlob{{data: bomb}})
				defer img.Close()
				res, err = ApplyImageLayer(context.Background(), img, 0, dir, opts)
			} else {
				zr, zerr := gzipReader(bomb)
				if zerr != nil {
					t.Fatal(zerr)
				}
				res, err = unpack.Apply(context.Background(), zr, dir, opts)
			}
			if !errors.Is(err, unpack.ErrHostile) || !inputerr.Is(err) || !strings.Contains(fmt.Sprint(err), "limit of 1048576") {
				t.Fatalf("got %v; want a hostile-layer error naming the limit of 1048576 bytes", err)
			}
			if res.Bytes > opts.MaxSize+1 {
				t.Errorf("read %d bytes past a limit of %d", res.Bytes, opts.MaxSize)
			}
			if n := dirBytes(t, dir); n > opts.MaxSize {
				t.Errorf("wrote %d bytes past a limit of %d", n, opts.MaxSize)
			}
		})
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
