package integration

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/integration/appliers"
	"github.com/layerfs/layerfs/integration/testenv"
	"github.com/layerfs/layerfs/integration/tree"
)

// TestMountBulk is "bulk work checked against native" (issue 3, must show
// item 3): the corpus (a tar of the Go toolchain tree, ~16,700 entries,
// plus hardlinks, symlinks, devices, a fifo, odd modes and owners, xattrs,
// a file capability and ACLs: heavyCorpus) is untarred into a mount and
// into a native dir, once over an empty lower and once over a lower that
// already holds half of the tree (some of it stale). Then, against native:
//   - find with stat (type, mode, owner, size, nlink, mtime, link target of
//     every path, each listed once),
//   - a read of every file (sha256sum of all),
//   - tree.Snapshot of the merged view (names, types, modes, owners, sizes,
//     content hashes, symlink targets, devices, xattrs, mtimes, hardlink
//     groups),
//   - readdir's d_ino equal to st_ino, no name listed twice, and every
//     inode number unchanged after the kernel's caches are dropped;
//
// after the unmount the lower must be untouched, the upper in the kernel's
// format, and the upper, committed with layerfs (over the lower's own
// layer in the second case), must unpack to the native tree (umoci in the
// first case, containerd's applier in the second).
//
// Cost: the corpus tar is made once a day into the cache (heavyCache). On
// the 2-CPU VM of BENCHMARKS.md the test takes 2.7-3.6 minutes through
// layerfs and 2.2-2.8 through the kernel's overlayfs, mostly disk writes.
func TestMountBulk(t *testing.T) {
	// The heavy tests overlap: one is disk-bound, one waits on the mirror,
	// one is CPU-bound.
	t.Parallel()
	testenv.NeedRoot(t)
	corpus := heavyCorpus(t)
	for _, tool := range []string{"find", "sort", "sha256sum", "umoci"} {
		needTool(t, tool)
	}
	for _, union := range heavyUnions(t, true) {
		t.Run(union, func(t *testing.T) {
			t.Logf("union under test: %s; corpus %s", union, corpus)
			// One applier each (both unpack into one dir, whiteouts
			// included): umoci, the tool of Yocto's and Isar's image
			// classes, and the applier of containerd's native snapshotter.
			t.Run("empty-lower", func(t *testing.T) { bulkCase(t, union, corpus, false, "umoci") })
			t.Run("half-lower", func(t *testing.T) { bulkCase(t, union, corpus, true, "containerd-naive") })
		})
	}
}

func bulkCase(t *testing.T, union, corpus string, half bool, applier string) {
	last := time.Now()
	phase := func(what string) {
		t.Helper()
		t.Logf("%s: %v", what, time.Since(last).Round(time.Millisecond))
		last = time.Now()
	}
	base := t.TempDir()
	d := mkdirs(t, base, "lower", "upper", "mnt", "scratch")
	lower, upper, mnt, scratch := d[0], d[1], d[2], d[3]
	native := filepath.Join(base, "native")
	if half {
		heavyUntar(t, corpus, lower)
		bulkHalve(t, lower)
	}
	// The native dir starts as the lower does (cp -a keeps hardlinks,
	// devices, owners, xattrs and times).
	copyTree(t, lower, native)
	lowerBefore := snapshotOrFail(t, lower)
	phase("lower")

	// The reference: the same untar on native disk.
	heavyUntar(t, corpus, native)
	phase("untar on native disk")
	want := snapshotOrFail(t, native)
	wantFind := bulkFind(t, native)
	wantSums := bulkSums(t, native)
	phase("native: snapshot, find, sha256sum")

	unmount := heavyMount(t, union, []string{lower}, upper, mnt)
	heavyUntar(t, corpus, mnt)
	phase("untar into the mount")

	bulkCompareLines(t, "find with stat", wantFind, bulkFind(t, mnt))
	phase("mount: find with stat")
	bulkCompareLines(t, "sha256sum of every file", wantSums, bulkSums(t, mnt))
	phase("mount: sha256sum of every file")
	got := snapshotOrFail(t, mnt)
	bulkReport(t, "merged view (want = native, got = mount)", tree.Compare(want, got, tree.Options{}))
	phase("mount: snapshot")
	inos, problems := bulkInodes(mnt)
	bulkReportLines(t, "readdir", problems)
	// Inode numbers are stable for the life of the mount: dropping the
	// kernel's dentry and inode caches makes it look every path up again.
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatalf("drop caches: %v", err)
	}
	inos2, problems := bulkInodes(mnt)
	bulkReportLines(t, "readdir after drop_caches", problems)
	var changed []string
	for p, ino := range inos {
		if ino2, ok := inos2[p]; !ok {
			changed = append(changed, fmt.Sprintf("%s: listed before drop_caches, not after", tree.Quote(p)))
		} else if ino2 != ino {
			changed = append(changed, fmt.Sprintf("%s: st_ino %d before drop_caches, %d after", tree.Quote(p), ino, ino2))
		}
	}
	if len(inos2) != len(inos) {
		changed = append(changed, fmt.Sprintf("%d paths before drop_caches, %d after", len(inos), len(inos2)))
	}
	bulkReportLines(t, "inode numbers", changed)
	phase("mount: readdir and inode checks")
	unmount()
	phase("unmount")

	bulkReport(t, "lower after the unmount (want = before the mount)", tree.Compare(lowerBefore, snapshotOrFail(t, lower), tree.Options{}))
	if n := heavyCheckUpper(t, upper, []string{lower}); n > 0 {
		t.Errorf("the upper holds %d whiteouts: the untar deletes nothing without re-creating it", n)
	}
	if t.Failed() {
		return // a commit of a wrong upper tells nothing more
	}

	// The upper as a layer: it must unpack to the native tree.
	img := filepath.Join(base, "img")
	layers := 1
	if half {
		layerfsCommit(t, "--upper", lower, "--image", "oci:"+img+":bulk")
		layers++
	}
	r := layerfsCommit(t, "--upper", upper, "--lower", lower, "--image", "oci:"+img+":bulk")
	t.Logf("layer %s, %d bytes", r.Digest, r.Size)
	if n, err := appliers.LayerCount(img, "bulk"); err != nil || n != layers {
		t.Fatalf("image has %d layers (%v), want %d", n, err, layers)
	}
	phase("commit")
	a := appliers.ByName(applier)
	for _, tool := range a.Tools {
		needTool(t, tool)
	}
	rep, err := a.Verify(context.Background(), img, "bulk", scratch, want)
	if err != nil {
		t.Fatalf("%s: %v", applier, err)
	}
	for _, k := range rep.Known {
		t.Logf("%s: %s", applier, k)
	}
	bulkReport(t, applier+" unpack of the committed image (want = native)", rep.Unexpected)
	phase(applier + " unpack and compare")
}

// bulkHalve turns a full extraction of the corpus into a lower that holds
// about half of it: every 13th directory (below the top) is removed with
// everything in it; of the other entries, every second is removed, every
// tenth regular file is left stale (other content, mode 0600, another
// mtime) and a few are replaced by a symlink; and the lower gets a file and
// a dir that the tar does not have. Deterministic: the same on every
// extraction.
func bulkHalve(t *testing.T, root string) {
	t.Helper()
	type ent struct {
		rel string
		dir bool
	}
	var all []ent
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		all = append(all, ent{rel, de.IsDir()})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var gone []string // removed dirs, as "rel/"
	under := func(rel string) bool {
		for _, g := range gone {
			if strings.HasPrefix(rel, g) {
				return true
			}
		}
		return false
	}
	stale := time.Unix(1_234_567_890, 0)
	nd, nf := 0, 0
	for _, e := range all {
		if under(e.rel) {
			continue
		}
		p := filepath.Join(root, e.rel)
		if e.dir {
			if nd++; nd%13 == 5 && strings.Count(e.rel, "/") >= 1 {
				if err := os.RemoveAll(p); err != nil {
					t.Fatal(err)
				}
				gone = append(gone, e.rel+"/")
			}
			continue
		}
		nf++
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		regular := st.Mode&unix.S_IFMT == unix.S_IFREG
		switch {
		case nf%2 == 0:
			err = os.Remove(p)
		case nf%10 == 1 && regular:
			if err = os.WriteFile(p, []byte("stale lower copy of "+e.rel+"\n"), 0); err == nil {
				if err = os.Chmod(p, 0o600); err == nil {
					err = os.Chtimes(p, stale, stale)
				}
			}
		case nf%10 == 3 && regular:
			if err = os.Remove(p); err == nil {
				err = os.Symlink("stale-target", p)
			}
		}
		if err != nil {
			t.Fatalf("halve %s: %v", e.rel, err)
		}
	}
	runScript(t, root, "lower-only entries", `
		mkf go/lower-only-file "only in the lower"
		mkf go/lower-only-dir/inner "only in the lower too"
		touch -d @1111111111 go/lower-only-file go/lower-only-dir/inner go/lower-only-dir`)
}

// bulkFind runs find with a stat of every path below dir and returns its
// records, sorted: type, mode, owner, mtime and name of every path, plus
// size, link count and link target of every non-directory (a directory's
// size is the backing fs's business, and a merged directory reports one
// link, as the kernel's overlayfs does).
func bulkFind(t *testing.T, dir string) []string {
	t.Helper()
	out := heavyRun(t, dir, nil, "find", ".", "-mindepth", "1",
		"(", "-type", "d", "-printf", `%y %m %U:%G %T@ %P\0`, ")", "-o",
		"(", "-printf", `%y %m %U:%G %s %n %T@ %l -> %P\0`, ")")
	return bulkRecords(out)
}

// bulkSums reads every regular file below dir (sha256sum, batched by find).
func bulkSums(t *testing.T, dir string) []string {
	t.Helper()
	out := heavyRun(t, dir, nil, "find", ".", "-type", "f", "-exec", "sha256sum", "-z", "--", "{}", "+")
	return bulkRecords(out)
}

func bulkRecords(out string) []string {
	recs := strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
	sort.Strings(recs)
	return recs
}

// bulkCompareLines reports the records that only one side has.
func bulkCompareLines(t *testing.T, what string, want, got []string) {
	t.Helper()
	count := func(l []string) map[string]int {
		m := map[string]int{}
		for _, s := range l {
			m[s]++
		}
		return m
	}
	w, g := count(want), count(got)
	var diffs []string
	for _, s := range want {
		if g[s] < w[s] {
			diffs = append(diffs, fmt.Sprintf("only on native: %q", s))
			g[s]++ // report each missing record once
		}
	}
	for _, s := range got {
		if w[s] < g[s] {
			diffs = append(diffs, fmt.Sprintf("only in the mount: %q", s))
			w[s]++
		}
	}
	if len(want) != len(got) {
		diffs = append(diffs, fmt.Sprintf("%d records on native, %d in the mount", len(want), len(got)))
	}
	bulkReportLines(t, what, diffs)
}

const bulkMaxReport = 40

func bulkReport(t *testing.T, what string, ds []tree.Difference) {
	t.Helper()
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	bulkReportLines(t, what, lines)
}

func bulkReportLines(t *testing.T, what string, lines []string) {
	t.Helper()
	if len(lines) == 0 {
		return
	}
	shown := lines
	if len(shown) > bulkMaxReport {
		shown = shown[:bulkMaxReport]
	}
	more := ""
	if len(lines) > len(shown) {
		more = fmt.Sprintf("\n\t... and %d more", len(lines)-len(shown))
	}
	t.Errorf("%s: %d differences:\n\t%s%s", what, len(lines), strings.Join(shown, "\n\t"), more)
}

// bulkInodes walks root with raw getdents64 and returns the st_ino of
// every path, with the problems seen: a name listed twice in a directory,
// "." or ".." missing, a d_ino that is not the st_ino, or a d_type that is
// not the file type.
func bulkInodes(root string) (map[string]uint64, []string) {
	inos := map[string]uint64{}
	var problems []string
	var walk func(rel string)
	walk = func(rel string) {
		dir := filepath.Join(root, rel)
		fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			problems = append(problems, fmt.Sprintf("open %s: %v", tree.Quote(rel), err))
			return
		}
		defer unix.Close(fd)
		seen := map[string]bool{}
		var subdirs []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Getdents(fd, buf)
			if err != nil {
				problems = append(problems, fmt.Sprintf("getdents %s: %v", tree.Quote(rel), err))
				return
			}
			if n == 0 {
				break
			}
			for b := buf[:n]; len(b) > 0; {
				// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name
				ino := binary.NativeEndian.Uint64(b[0:8])
				reclen := binary.NativeEndian.Uint16(b[16:18])
				typ := b[18]
				name := b[19:reclen]
				if i := bytes.IndexByte(name, 0); i >= 0 {
					name = name[:i]
				}
				b = b[reclen:]
				if seen[string(name)] {
					problems = append(problems, fmt.Sprintf("%s: listed twice", tree.Quote(filepath.Join(rel, string(name)))))
					continue
				}
				seen[string(name)] = true
				if string(name) == "." || string(name) == ".." {
					continue
				}
				p := filepath.Join(rel, string(name))
				var st unix.Stat_t
				if err := unix.Fstatat(fd, string(name), &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
					problems = append(problems, fmt.Sprintf("%s: listed, but stat: %v", tree.Quote(p), err))
					continue
				}
				inos[p] = st.Ino
				if ino != st.Ino {
					problems = append(problems, fmt.Sprintf("%s: d_ino %d, st_ino %d", tree.Quote(p), ino, st.Ino))
				}
				if typ != unix.DT_UNKNOWN && uint32(typ)<<12 != st.Mode&unix.S_IFMT {
					problems = append(problems, fmt.Sprintf("%s: d_type %d, st_mode %o", tree.Quote(p), typ, st.Mode))
				}
				if st.Mode&unix.S_IFMT == unix.S_IFDIR {
					subdirs = append(subdirs, p)
				}
			}
		}
		if !seen["."] || !seen[".."] {
			problems = append(problems, fmt.Sprintf("%s: readdir lacks . or ..", tree.Quote(rel)))
		}
		for _, s := range subdirs {
			walk(s)
		}
	}
	walk(".")
	return inos, problems
}
