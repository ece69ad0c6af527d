package integration

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// epoch is the --source-date-epoch of the clamped variant: 2001-09-09,
// after the oldest mtimes the scenarios set and before the others.
const epoch = 1_000_000_000

// scenarioTools are the programs the scenario scripts use.
var scenarioTools = []string{"bash", "cp", "setfattr", "setfacl", "setcap", "mknod", "truncate", "dd", "skopeo"}

// TestDifferential is the differential test of layerfs commit against the
// kernel: each scenario's operations run in a real overlayfs mount, the
// merged view is the reference, and every applier must rebuild exactly it
// from the image that layerfs committed from the upper.
func TestDifferential(t *testing.T) {
	// The heavy tests overlap: one is disk-bound, one waits on the mirror,
	// one is CPU-bound.
	t.Parallel()
	testenv.NeedRoot(t)
	for _, tool := range scenarioTools {
		needTool(t, tool)
	}
	all := appliers.All()
	for _, a := range all {
		for _, tool := range a.Tools {
			needTool(t, tool)
		}
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) { runScenario(t, sc, all) })
	}
}

// scenarioRun holds the fixtures of one scenario, shared by its appliers.
type scenarioRun struct {
	sc      scenario
	comp    string
	lowers  []string // base first
	img     string   // the image, with the upper's layer on top at the end
	before  tree.Tree
	want    tree.Tree
	scratch string
}

func runScenario(t *testing.T, sc scenario, all []appliers.Applier) {
	base := t.TempDir()
	d := mkdirs(t, base, "l1", "l2", "upper", "work", "merged", "scratch")
	upper, work, merged := d[2], d[3], d[4]
	r := &scenarioRun{sc: sc, comp: sc.compression, img: filepath.Join(base, "img"), scratch: d[5]}
	if r.comp == "" {
		r.comp = "gzip"
	}
	r.buildLowers(t, d[0], d[1])
	imgDerived := filepath.Join(base, "img-derived")
	imgEpoch := filepath.Join(base, "img-epoch")
	copyTree(t, r.img, imgDerived)
	copyTree(t, r.img, imgEpoch)

	// c. The reference: the kernel's merged view after the operations.
	unmount := mountOverlay(t, r.lowers, upper, work, merged)
	r.before = snapshotOrFail(t, merged)
	runScript(t, merged, "ops", sc.ops)
	if sc.goOps != nil {
		if err := sc.goOps(merged); err != nil {
			t.Fatalf("ops: %v", err)
		}
	}
	r.want = snapshotOrFail(t, merged)
	unmount()

	// d. Commit the upper with the lowers given, and again letting layerfs
	// derive the lower view from the image's own layers: same layer.
	args := append([]string{"--upper", upper, "--compression", r.comp}, sc.commitArgs...)
	r1 := layerfsCommit(t, append(r.withLowers(args), "--image", "oci:"+r.img+":test")...)
	r2 := layerfsCommit(t, append(args, "--image", "oci:"+imgDerived+":test")...)
	if r1.Digest != r2.Digest || r1.DiffID != r2.DiffID {
		t.Errorf("layer with --lower %s (diff_id %s) != layer derived from the image %s (diff_id %s)",
			r1.Digest, r1.DiffID, r2.Digest, r2.DiffID)
		showLayerDiff(t, r.img, imgDerived)
	}
	lintOpts := lintOptions{opaqueMarkers: hasArg(sc.commitArgs, "--opaque-markers")}
	r.checkNotInLayer(t, lintCommitted(t, r.img, -1, r.before, lintOpts))
	validateImage(t, r.img, "test")

	// e. Every applier must rebuild the reference.
	for _, a := range all {
		t.Run(a.Name, func(t *testing.T) {
			checkApplier(t, a, r.img, filepath.Join(r.scratch, a.Name), r.want, sc)
		})
	}

	// The clamped variant: mtimes are clamped, so they are not compared;
	// one in-process applier suffices to check that what the epoch drops
	// as unchanged really is unchanged.
	epochArgs := append(r.withLowers(args), "--image", "oci:"+imgEpoch+":test", "--source-date-epoch", fmt.Sprint(epoch))
	layerfsCommit(t, epochArgs...)
	lintOpts.epoch = epoch
	lintCommitted(t, imgEpoch, -1, r.before, lintOpts)
	validateImage(t, imgEpoch, "test")
	t.Run("epoch/containerd-overlay", func(t *testing.T) {
		a := appliers.ByName("containerd-overlay")
		a.DiffOptions.IgnoreMtime = true
		checkApplier(t, a, imgEpoch, filepath.Join(r.scratch, "epoch"), r.want, sc)
	})
}

// buildLowers runs the lower scripts in l1 (and l2) and commits each
// plain dir as its own layer with layerfs: the base from scratch, the
// second appended with l1 as its lower.
func (r *scenarioRun) buildLowers(t *testing.T, l1, l2 string) {
	t.Helper()
	ref := "oci:" + r.img + ":test"
	runScript(t, l1, "lower1", r.sc.lower1)
	layerfsCommit(t, "--upper", l1, "--image", ref, "--compression", r.comp)
	r.lowers = []string{l1}
	lintCommitted(t, r.img, 0, tree.Tree{}, lintOptions{})
	if r.sc.lower2 == "" {
		return
	}
	runScript(t, l2, "lower2", r.sc.lower2)
	layerfsCommit(t, "--upper", l2, "--lower", l1, "--image", ref, "--compression", r.comp)
	r.lowers = append(r.lowers, l2)
	lintCommitted(t, r.img, 1, snapshotOrFail(t, l1), lintOptions{})
}

// withLowers returns args plus a --lower for each lower, base first.
func (r *scenarioRun) withLowers(args []string) []string {
	out := append([]string(nil), args...)
	for _, l := range r.lowers {
		out = append(out, "--lower", l)
	}
	return out
}

// checkNotInLayer fails for every entry of the top layer that names (or
// whites out) a path the scenario says must not be emitted.
func (r *scenarioRun) checkNotInLayer(t *testing.T, top []layerEntry) {
	t.Helper()
	for _, p := range r.sc.notInLayer {
		for _, e := range top {
			wh := e.isWhiteout() && path.Base(e.name) != ".wh..wh..opq" && whiteoutTarget(e.name) == p
			if e.name == p || wh {
				t.Errorf("layer has %s, which this scenario must not emit: %s", tree.Quote(e.hdr.Name), r.sc.why)
			}
		}
	}
}

func snapshotOrFail(t *testing.T, dir string) tree.Tree {
	t.Helper()
	s, err := tree.Snapshot(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hasArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

// lintCommitted lints layer i of the image (negative: from the end) and
// returns its entries.
func lintCommitted(t *testing.T, img string, i int, before tree.Tree, opts lintOptions) []layerEntry {
	t.Helper()
	im, err := appliers.Image(img, "test")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := readLayer(im, i)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range lintLayer(entries, before, opts) {
		t.Errorf("%s: %s", layerName(i), b)
	}
	return entries
}

// showLayerDiff logs the entries of the top layers of two images.
func showLayerDiff(t *testing.T, a, b string) {
	t.Helper()
	for _, img := range []string{a, b} {
		im, err := appliers.Image(img, "test")
		if err != nil {
			t.Log(err)
			continue
		}
		entries, err := readLayer(im, -1)
		if err != nil {
			t.Log(err)
			continue
		}
		var names []string
		for _, e := range entries {
			names = append(names, fmt.Sprintf("%s(%c)", tree.Quote(e.hdr.Name), e.hdr.Typeflag))
		}
		t.Logf("%s top layer: %s", filepath.Base(img), strings.Join(names, " "))
	}
}

func checkApplier(t *testing.T, a appliers.Applier, img, work string, want tree.Tree, sc scenario) {
	t.Helper()
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	rep, err := a.Verify(context.Background(), img, "test", work, want)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Refused != "" {
		t.Logf("refused as expected: %s", rep.Refused)
	}
	for _, k := range rep.Known {
		t.Log(k)
	}
	used := map[int]bool{}
	for _, d := range rep.Unexpected {
		if i := sc.expected(a.Name, d); i >= 0 {
			used[i] = true
			t.Logf("%s [expected in this scenario: %s]", d, sc.exceptions[i].why)
			continue
		}
		t.Error(d)
	}
	// A stale exception would hide a future regression: each must match.
	for i, e := range sc.exceptions {
		if e.applier == a.Name && !used[i] && rep.Refused == "" && !a.DiffOptions.IgnoreMtime {
			t.Errorf("exception for %s %s no longer matches any difference: remove it", tree.Quote(e.path), e.field)
		}
	}
}

func layerName(i int) string {
	if i < 0 {
		return "top layer"
	}
	return fmt.Sprintf("layer %d", i)
}
