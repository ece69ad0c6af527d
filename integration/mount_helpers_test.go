package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/fsops/opspec"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// fsop is one operation for the fsops program.
type fsop = opspec.Op

// fsResult is fsops' output for one op (fsops/main.go, type Result).
type fsResult struct {
	I    int             `json:"i"`
	Op   string          `json:"op"`
	Err  string          `json:"err,omitempty"`
	Out  json.RawMessage `json:"out,omitempty"`
	Diag string          `json:"diag,omitempty"`
	Tree tree.Tree       `json:"tree,omitempty"`
}

// freshAfter: an mtime at or after it was set while the ops ran (both
// runs happen at different moments, so such mtimes compare as "new");
// every mtime that the lowers or the ops set explicitly is before it.
const freshAfter = 1_700_000_000

// freshMtime replaces such mtimes in a snapshot.
const freshMtime = -1

// union is a union filesystem that the differential test can mount.
type union struct {
	name  string
	tools []string
	// mount mounts lowers (base first) plus upper at mnt and returns the
	// unmount func; a cleanup detaches the mount if the test stops early.
	mount func(t *testing.T, lowers []string, upper, work, mnt string) func() error
}

var kernelUnion = union{
	name: "kernel-overlayfs",
	mount: func(t *testing.T, lowers []string, upper, work, mnt string) func() error {
		unmount := mountOverlay(t, lowers, upper, work, mnt)
		return func() error { unmount(); return nil }
	},
}

// layerfsUnion is `layerfs mount --driver DRIVER` (fuse or kernel).
func layerfsUnion(driver string) union {
	return union{
		name: "layerfs-" + driver,
		mount: func(t *testing.T, lowers []string, upper, work, mnt string) func() error {
			args := []string{"mount", "--driver", driver}
			for _, l := range lowers {
				args = append(args, "--lower", l)
			}
			args = append(args, "--upper", upper, "--workdir", work, mnt)
			unmount := fuseMount(t, mnt, exec.Command(layerfsBin, args...), func() *exec.Cmd {
				return exec.Command(layerfsBin, "umount", mnt)
			})
			checkMountDriver(t, mnt, driver)
			return unmount
		},
	}
}

// checkMountDriver fails the test unless what serves mnt is the driver
// asked for: the fs type of the mount on top there.
func checkMountDriver(t testing.TB, mnt, driver string) {
	t.Helper()
	fstype, ok := heavyMountType(t, mnt)
	want := map[string]string{"fuse": "fuse.layerfs", "kernel": "overlay"}[driver]
	if !ok || fstype != want {
		t.Fatalf("layerfs mount --driver %s: %s is a %q mount (mounted: %v), want %s", driver, mnt, fstype, ok, want)
	}
}

// layerfsDrivers are the drivers of layerfs mounts the tests run under,
// from LAYERFS_UNION: both by default (layerfs), or one (layerfs-fuse,
// layerfs-kernel).
func layerfsDrivers(t testing.TB) []string {
	switch name := os.Getenv("LAYERFS_UNION"); name {
	case "", "layerfs":
		return []string{"fuse", "kernel"}
	case "layerfs-fuse", "layerfs-kernel":
		return []string{strings.TrimPrefix(name, "layerfs-")}
	}
	return nil
}

var fuseOverlayfsUnion = union{
	name:  "fuse-overlayfs",
	tools: []string{"fuse-overlayfs", "fusermount3"},
	mount: func(t *testing.T, lowers []string, upper, work, mnt string) func() error {
		rev := make([]string, len(lowers))
		for i, l := range lowers {
			rev[len(lowers)-1-i] = l
		}
		// dev,suid: as the kernel mount, and as a rootfs for package
		// installs needs (fuse-overlayfs mounts nodev by default).
		opts := "lowerdir=" + strings.Join(rev, ":") + ",upperdir=" + upper + ",workdir=" + work + ",dev,suid"
		return fuseMount(t, mnt, exec.Command("fuse-overlayfs", "-o", opts, mnt), func() *exec.Cmd {
			return exec.Command("fusermount3", "-u", mnt)
		})
	},
}

// fuseMount runs a mount command that returns once the mount serves, and
// returns the unmount func.
func fuseMount(t *testing.T, mnt string, mountCmd *exec.Cmd, umountCmd func() *exec.Cmd) func() error {
	t.Helper()
	if out, err := runTimeout(mountCmd, 30*time.Second); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(mountCmd.Args, " "), err, out)
	}
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	return func() error {
		cmd := umountCmd()
		out, err := runTimeout(cmd, 30*time.Second)
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
		mounted = false
		return nil
	}
}

// runTimeout runs cmd (stdout and stderr combined) and kills it after d.
func runTimeout(cmd *exec.Cmd, d time.Duration) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		return out.Bytes(), fmt.Errorf("killed after %s", d)
	}
}

// unionsUnderTest are the implementations that the kernel is compared
// with: LAYERFS_UNION=layerfs (the default: layerfs under each driver,
// FUSE and the kernel's overlayfs), layerfs-fuse, layerfs-kernel,
// fuse-overlayfs, or kernel-overlayfs.
func unionsUnderTest(t *testing.T) []union {
	t.Helper()
	if drivers := layerfsDrivers(t); drivers != nil {
		out, err := exec.Command(layerfsBin, "mount", "--help").CombinedOutput()
		if err != nil {
			testenv.Unavailable(t, "layerfs mount is not available: %v: %s", err, firstLine(out))
		}
		var us []union
		for _, d := range drivers {
			us = append(us, layerfsUnion(d))
		}
		return us
	}
	switch name := os.Getenv("LAYERFS_UNION"); name {
	case "fuse-overlayfs":
		return []union{fuseOverlayfsUnion}
	case "kernel-overlayfs", "kernel":
		// The kernel against itself: a check of the harness, which must
		// then find no difference at all.
		return []union{kernelUnion}
	default:
		t.Fatalf("LAYERFS_UNION=%q: want layerfs, layerfs-fuse, layerfs-kernel, fuse-overlayfs or kernel-overlayfs", name)
		return nil
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

// needMountTools checks what every mount differential needs.
func needMountTools(t *testing.T, u union) {
	t.Helper()
	testenv.NeedRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testenv.Unavailable(t, "/dev/fuse: %v", err)
	}
	for _, tool := range append([]string{"bash", "sh", "cp", "rm", "mv", "tar", "setfattr", "mknod", "go"}, u.tools...) {
		needTool(t, tool)
	}
}

// buildFsops builds the fsops program into the top-level test's temp dir
// (go's build cache makes a rebuild cheap).
func buildFsops(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fsops")
	if out, err := exec.Command("go", "build", "-o", p, "./fsops").CombinedOutput(); err != nil {
		t.Fatalf("go build ./fsops: %v\n%s", err, out)
	}
	return p
}

// runFsops runs ops below root in a separate process and returns one
// result per op, plus the merged tree (a final snapshot op) with fresh
// mtimes normalized. A run that dies or hangs fails the test, with the
// results so far.
func runFsops(t *testing.T, bin, root, fix string, ops []fsop) ([]fsResult, tree.Tree) {
	t.Helper()
	res := runOps(t, bin, root, fix, nil, append(append([]fsop(nil), ops...), fsop{Op: "snapshot"}))
	last := res[len(res)-1]
	if last.Err != "" {
		t.Fatalf("snapshot of %s: %s", root, last.Diag)
	}
	for _, e := range last.Tree {
		if e.Mtime >= freshAfter {
			e.Mtime = freshMtime
		}
	}
	return res[:len(res)-1], last.Tree
}

// runOps runs ops below root in a separate fsops process (as cred's
// user, when set) and returns one result per op.
func runOps(t *testing.T, bin, root, fix string, cred *syscall.Credential, all []fsop) []fsResult {
	t.Helper()
	in, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-root", root, "-fix", fix, "-fresh", fmt.Sprint(freshAfter))
	cmd.Stdin = bytes.NewReader(in)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var res []fsResult
	dec := json.NewDecoder(&stdout)
	for dec.More() {
		var r fsResult
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("fsops output: %v", err)
		}
		res = append(res, r)
	}
	if runErr != nil || len(res) != len(all) {
		done := make([]string, len(res))
		for i, r := range res {
			done[i] = fmt.Sprintf("%d %s: %s", i, all[i], r.line())
		}
		t.Fatalf("fsops in %s: %v after %d of %d ops (the next is %s)\nstderr: %s\ndone:\n%s",
			root, runErr, len(res), len(all), opAt(all, len(res)), stderr.String(), strings.Join(done, "\n"))
	}
	return res
}

func opAt(ops []fsop, i int) string {
	if i < len(ops) {
		return ops[i].String()
	}
	return "none"
}

// line renders what is compared of a result: the errno and the outputs.
func (r fsResult) line() string {
	s := "ok"
	if r.Err != "" {
		s = r.Err
	}
	if len(r.Out) > 0 {
		s += " " + string(r.Out)
	}
	return s
}

// oldTime gives each path of a lower its own deterministic mtime (and
// atime), with nanoseconds, long before freshAfter, so that a copy-up that
// loses or moves a time shows, and a time the ops set is recognizable.
func oldTime(rel string) unix.Timespec {
	h := fnv.New64a()
	h.Write([]byte(rel))
	v := h.Sum64()
	return unix.Timespec{Sec: 1_000_000_000 + int64(v%300_000_000), Nsec: int64((v >> 32) % 1_000_000_000)}
}

// setOldTimes applies oldTime to every path below root, and root.
func setOldTimes(t *testing.T, root string) {
	t.Helper()
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		ts := oldTime(filepath.ToSlash(rel))
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	if err != nil {
		t.Fatalf("set lower times: %v", err)
	}
}

// mountCase is one differential case, named or random.
type mountCase struct {
	name string
	// buildLowers fills the lower dirs (base first); it returns how many
	// of them the case uses.
	buildLowers func(t *testing.T, l1, l2 string) int
	// fixtures, when set, is a script run in a dir that sh ops see as $FIX.
	fixtures string
	ops      []fsop
	// upperAbsent and upperPresent are paths that neither upper may hold,
	// or that both must hold (copy-up never on a read; on a write-open).
	upperAbsent, upperPresent []string
	// describe renders the case for a failure report.
	describe func() string
}

// unionRun is what one union did with a case.
type unionRun struct {
	union   string
	results []fsResult
	merged  tree.Tree
	upper   string
}

// runMountCase runs c on the kernel's overlayfs and on impl over the same
// lowers and compares everything.
func runMountCase(t *testing.T, c mountCase, impl union, bin string) {
	base := t.TempDir()
	l1, l2, fix := filepath.Join(base, "l1"), filepath.Join(base, "l2"), filepath.Join(base, "fix")
	for _, d := range []string{l1, l2, fix} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	lowers := []string{l1, l2}[:c.buildLowers(t, l1, l2)]
	for _, l := range lowers {
		setOldTimes(t, l)
	}
	if c.fixtures != "" {
		runScript(t, fix, "fixtures", c.fixtures)
	}
	before := make([]tree.Tree, len(lowers))
	for i, l := range lowers {
		before[i] = snapshotOrFail(t, l)
	}
	ref := runUnion(t, kernelUnion, base, "k", lowers, fix, bin, c.ops, before)
	got := runUnion(t, impl, base, "i", lowers, fix, bin, c.ops, before)

	failed := false
	fail := func(format string, args ...any) {
		t.Helper()
		if !failed {
			failed = true
			t.Errorf("case %s, %s vs %s:\n%s", c.name, kernelUnion.name, impl.name, c.describe())
		}
		t.Errorf(format, args...)
	}
	problems, tolerated := compareResults(c.ops, ref.results, got.results)
	for _, p := range tolerated {
		t.Log(p)
	}
	for _, p := range problems {
		fail("%s", p)
	}
	fresh := time.Unix(freshMtime, 0).UTC().Format(time.RFC3339)
	for _, d := range tree.Diff(ref.merged, got.merged, tree.Options{}) {
		d = strings.ReplaceAll(d, fresh, "new (set while the ops ran)")
		fail("merged view: %s (want = %s, got = %s)", d, kernelUnion.name, impl.name)
	}
	for _, p := range checkUppers(ref, got, c) {
		fail("%s", p)
	}
	compareCommits(t, base, lowers, ref, got, fail)
}

// runUnion mounts u over lowers with a fresh upper, runs the ops and
// snapshots the merged view, unmounts, and checks the lowers untouched.
func runUnion(t *testing.T, u union, base, tag string, lowers []string, fix, bin string, ops []fsop, before []tree.Tree) unionRun {
	t.Helper()
	upper, work, mnt := filepath.Join(base, tag+"-upper"), filepath.Join(base, tag+"-work"), filepath.Join(base, tag+"-mnt")
	for _, d := range []string{upper, work, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unmount := u.mount(t, lowers, upper, work, mnt)
	results, merged := runFsops(t, bin, mnt, fix, ops)
	if err := unmount(); err != nil {
		t.Fatalf("unmount %s: %v", u.name, err)
	}
	for i, l := range lowers {
		// The lowers are read-only layers (a cache): nothing, not even an
		// mtime, may change there.
		for _, d := range tree.Diff(before[i], snapshotOrFail(t, l), tree.Options{}) {
			t.Errorf("%s modified lower %d: %s", u.name, i+1, d)
		}
	}
	return unionRun{union: u.name, results: results, merged: merged, upper: upper}
}

// compareResults compares per-op results. The one difference tolerated
// (issue 3) is a directory rename that the kernel refused with EXDEV (it
// does for a dir that lives in a lower, with redirect_dir=off) and that
// the implementation performed: fsops then moved the dir by copying, as
// mv does (or failed as rename(2) would, ENOTEMPTY for instance, which
// the implementation must then say too), so both trees end alike; from
// then on a directory's st_nlink
// may differ (a copied dir is pure upper with its real link count, a
// moved merged dir reports 1, as the kernel does for merged dirs).
func compareResults(ops []fsop, want, got []fsResult) (problems, tolerated []string) {
	if len(want) != len(got) {
		return []string{fmt.Sprintf("%d results from the kernel, %d from the implementation", len(want), len(got))}, nil
	}
	diverged := false
	for i := range want {
		w, g := want[i], got[i]
		if w.line() == g.line() {
			continue
		}
		wo, go_ := decodeOut(w.Out), decodeOut(g.Out)
		if ops[i].Op == "rename" && w.Err == g.Err && wo["fallback"] == true && go_["fallback"] == nil {
			// With rename(2)'s rules applied by the fallback, an error
			// (ENOTEMPTY, ENOTDIR) must be the implementation's too.
			delete(wo, "fallback")
			diverged = diverged || w.Err == ""
			if canon(maskDirNlink(wo)) == canon(maskDirNlink(go_)) {
				tolerated = append(tolerated, fmt.Sprintf("op %d %s: the kernel said EXDEV (fsops then moved the dir as mv does: %s), the implementation renamed it: tolerated", i, ops[i], w.line()))
				continue
			}
		} else if diverged && w.Err == g.Err && canon(maskDirNlink(wo)) == canon(maskDirNlink(go_)) {
			tolerated = append(tolerated, fmt.Sprintf("op %d %s: dir st_nlink differs after the tolerated EXDEV rename: kernel %s, implementation %s", i, ops[i], w.line(), g.line()))
			continue
		}
		if ops[i].Op == "rofd_across_write" && w.Err == g.Err {
			// Documented deviation (README, layerfs mount): a read-only fd
			// opened on a lower file before the copy-up is bound to the
			// lower file by FUSE passthrough, so it keeps reading the old
			// data; the kernel's overlayfs (since 4.19) moves it to the
			// copy. A new open sees the new data, which the scenario checks
			// with its next read. Everything else must agree.
			delete(wo, "ro_fd_content")
			delete(go_, "ro_fd_content")
			if canon(wo) == canon(go_) {
				tolerated = append(tolerated, fmt.Sprintf("op %d %s: the read-only fd kept the lower data (passthrough): tolerated", i, ops[i]))
				continue
			}
		}
		msg := fmt.Sprintf("op %d %s:\n\tkernel:         %s\n\timplementation: %s", i, ops[i], w.line(), g.line())
		if w.Diag != "" || g.Diag != "" {
			msg += fmt.Sprintf("\n\tstderr: kernel %q, implementation %q", w.Diag, g.Diag)
		}
		problems = append(problems, msg)
	}
	return problems, tolerated
}

func decodeOut(raw json.RawMessage) map[string]any {
	m := map[string]any{}
	if len(raw) > 0 {
		_ = json.Unmarshal(raw, &m)
	}
	return m
}

func canon(v any) string {
	b, _ := json.Marshal(v) // map keys are sorted
	return string(b)
}

// maskDirNlink drops nlink from every stat of a directory in v.
func maskDirNlink(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			if k == "nlink" && x["type"] == "dir" {
				continue
			}
			out[k] = maskDirNlink(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = maskDirNlink(e)
		}
		return out
	}
	return v
}

// upperEntry is what the upper checks need of one upper path.
type upperEntry struct {
	whiteout bool
	typ      uint32
	xattrs   []string
}

// scanUpper lists an upper dir's entries (relative paths).
func scanUpper(root string) (map[string]upperEntry, error) {
	m := map[string]upperEntry{}
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := upperEntry{typ: st.Mode & unix.S_IFMT}
		e.whiteout = e.typ == unix.S_IFCHR && st.Rdev == 0
		if e.xattrs, err = tree.ListXattrs(p); err != nil {
			return err
		}
		sort.Strings(e.xattrs)
		m[filepath.ToSlash(rel)] = e
		return nil
	})
	return m, err
}

// checkUppers compares the two uppers where the issue pins them down:
// the implementation's upper is in the kernel's format (0:0 whiteouts,
// trusted.overlay.opaque: no .wh.* files, no user.* overlay xattrs, as
// root), it copied up nothing that the kernel did not (copy-up happens
// on a write, never on a read), and the case's upperAbsent/upperPresent
// hold for both.
func checkUppers(ref, got unionRun, c mountCase) []string {
	var out []string
	ku, err := scanUpper(ref.upper)
	if err != nil {
		return []string{fmt.Sprintf("scan kernel upper: %v", err)}
	}
	iu, err := scanUpper(got.upper)
	if err != nil {
		return []string{fmt.Sprintf("scan implementation upper: %v", err)}
	}
	for _, p := range sortedKeys(iu) {
		e := iu[p]
		if strings.HasPrefix(filepath.Base(p), ".wh.") {
			out = append(out, fmt.Sprintf("implementation upper has %s: the kernel format marks whiteouts with 0:0 devices and opaque dirs with trusted.overlay.opaque, no .wh.* files", tree.Quote(p)))
			continue
		}
		for _, x := range e.xattrs {
			if userMarker(x) {
				out = append(out, fmt.Sprintf("implementation upper %s has xattr %s: as root the kernel format marks with trusted.overlay.opaque and 0:0 devices, and applies ownership", tree.Quote(p), x))
			}
		}
		if e.whiteout {
			continue
		}
		if k, ok := ku[p]; !ok || k.whiteout {
			out = append(out, fmt.Sprintf("implementation upper holds %s, the kernel's does not: a copy-up (or create) the kernel did not make", tree.Quote(p)))
		}
	}
	for _, run := range []struct {
		name string
		u    map[string]upperEntry
	}{{ref.union, ku}, {got.union, iu}} {
		for _, p := range c.upperAbsent {
			if e, ok := run.u[p]; ok && !e.whiteout {
				out = append(out, fmt.Sprintf("%s upper holds %s, which this case only reads: copy-up must not happen on a read", run.name, tree.Quote(p)))
			}
		}
		for _, p := range c.upperPresent {
			if e, ok := run.u[p]; !ok || e.whiteout {
				out = append(out, fmt.Sprintf("%s upper lacks %s: an open for writing copies up", run.name, tree.Quote(p)))
			}
		}
	}
	return out
}

// userMarker reports the unprivileged variants of the markers, which an
// upper written as root must not use (bookkeeping such as an origin
// record is the implementation's business: commit ignores it).
func userMarker(x string) bool {
	if !strings.HasPrefix(x, "user.") {
		return false
	}
	return strings.HasSuffix(x, ".opaque") || strings.HasSuffix(x, ".whiteout") || strings.HasSuffix(x, ".override_stat")
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// compareCommits commits both uppers with layerfs (same lowers, clamped
// mtimes) and requires identical layers: the uppers are then equivalent
// in DESIGN's format whatever wrote them.
func compareCommits(t *testing.T, base string, lowers []string, ref, got unionRun, fail func(string, ...any)) {
	t.Helper()
	commit := func(r unionRun, tag string) (commitResult, string) {
		img := filepath.Join(base, tag+"-img")
		args := []string{"--upper", r.upper}
		for _, l := range lowers {
			args = append(args, "--lower", l)
		}
		args = append(args, "--image", "oci:"+img+":t", "--source-date-epoch", "1", "--compression", "none")
		return layerfsCommit(t, args...), img
	}
	kr, kimg := commit(ref, "k")
	ir, iimg := commit(got, "i")
	if kr.Digest == ir.Digest {
		return
	}
	kl, ke := layerListing(kimg)
	il, ie := layerListing(iimg)
	if ke != nil || ie != nil {
		fail("layer digests differ: kernel upper %s, implementation upper %s (listing: %v %v)", kr.Digest, ir.Digest, ke, ie)
		return
	}
	fail("layer digests differ: kernel upper %s, implementation upper %s\n%s", kr.Digest, ir.Digest, listingDiff(kl, il))
}

// layerListing renders each entry of an image's only layer as one line.
func layerListing(img string) ([]string, error) {
	im, err := appliers.Image(img, "t")
	if err != nil {
		return nil, err
	}
	entries, err := readLayer(im, -1)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		h := e.hdr
		var xs []string
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				xs = append(xs, fmt.Sprintf("%s=%q", strings.TrimPrefix(k, "SCHILY.xattr."), v))
			}
		}
		sort.Strings(xs)
		out = append(out, fmt.Sprintf("%q type %c mode %04o %d:%d size %d %s link %q dev %d:%d mtime %d xattrs [%s]",
			h.Name, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, h.Size, shortDigest(e.digest), h.Linkname,
			h.Devmajor, h.Devminor, h.ModTime.Unix(), strings.Join(xs, " ")))
	}
	return out, nil
}

func shortDigest(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// listingDiff shows the lines only one listing has.
func listingDiff(want, got []string) string {
	in := func(l []string) map[string]bool {
		m := map[string]bool{}
		for _, s := range l {
			m[s] = true
		}
		return m
	}
	w, g := in(want), in(got)
	var b strings.Builder
	for _, s := range want {
		if !g[s] {
			fmt.Fprintf(&b, "\tonly in the kernel's layer:         %s\n", s)
		}
	}
	for _, s := range got {
		if !w[s] {
			fmt.Fprintf(&b, "\tonly in the implementation's layer: %s\n", s)
		}
	}
	if b.Len() == 0 {
		return "\t(same entries, different order)\n\tkernel:\n\t\t" + strings.Join(want, "\n\t\t") + "\n\timplementation:\n\t\t" + strings.Join(got, "\n\t\t")
	}
	return b.String()
}
