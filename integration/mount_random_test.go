package integration

import (
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMountRandom is the seeded random half of the mount differential:
// random lowers over a small name space and 10-40 random ops on it, so
// that ops collide (create over a whiteout, rename onto what was just
// unlinked, rmdir of a dir that a lower still fills...). Each case is
// compared exactly as the named scenarios are.
//
//	LAYERFS_FUZZ_SEED=N   the seed (default: the time); always printed
//	LAYERFS_FUZZ_CASES=K  cases per run (default 200)
//
// Case K of seed N reruns alone with
// LAYERFS_FUZZ_SEED=N go test -run 'TestMountRandom/layerfs-fuse/seed-N/case-K$' .
func TestMountRandom(t *testing.T) {
	impls := unionsUnderTest(t)
	for _, impl := range impls {
		needMountTools(t, impl)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LAYERFS_FUZZ_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("LAYERFS_FUZZ_SEED=%q: %v", s, err)
		}
		seed = v
	}
	cases := 200
	if s := os.Getenv("LAYERFS_FUZZ_CASES"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("LAYERFS_FUZZ_CASES=%q: want a positive number", s)
		}
		cases = v
	}
	// Printed on stderr too, so that it shows without -v and whatever
	// fails.
	fmt.Fprintf(os.Stderr, "TestMountRandom: LAYERFS_FUZZ_SEED=%d (%d cases)\n", seed, cases)
	t.Logf("LAYERFS_FUZZ_SEED=%d", seed)
	bin := buildFsops(t)
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
				for k := range cases {
					t.Run(fmt.Sprintf("case-%d", k), func(t *testing.T) {
						t.Parallel()
						runMountCase(t, randomCase(seed, k), impl, bin)
					})
				}
			})
		})
	}
}

// The name space: few names, so that ops collide.
var (
	// randPaths are the paths that lowers may hold, parents first.
	randPaths = []string{"a", "b", "c", "d", "d/a", "d/b", "d/s", "d/s/a", "d/s/b", "e", "e/a", "e/b", "e/s"}
	// randOpPaths are what ops name: those, plus names no lower has.
	randOpPaths = append(append([]string(nil), randPaths...), "f", "d/c", "e/s/a", "x/y")
	randDirs    = []string{"", "d", "e", "d/s", "e/s", "f"}
	dirSlot     = map[string]bool{"d": true, "e": true, "d/s": true, "e/s": true}
)

// lowerEntry is one entry of a random lower.
type lowerEntry struct {
	path    string
	kind    string // file, dir, symlink, hardlink, char, whiteout
	content string // file content; symlink target; hardlink's first name
	mode    uint32
	uid     int
	gid     int
	xattrs  [][2]string // name, value
	opaque  bool
}

func (e lowerEntry) String() string {
	s := fmt.Sprintf("%s %s", e.path, e.kind)
	switch e.kind {
	case "file":
		s += fmt.Sprintf(" %04o %d:%d %d bytes", e.mode, e.uid, e.gid, len(e.content))
	case "dir":
		s += fmt.Sprintf(" %04o %d:%d", e.mode, e.uid, e.gid)
	case "symlink", "hardlink":
		s += " -> " + e.content
	}
	for _, x := range e.xattrs {
		s += fmt.Sprintf(" %s=%q", x[0], x[1])
	}
	if e.opaque {
		s += " opaque"
	}
	return s
}

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func randData(r *rand.Rand) string {
	switch r.IntN(6) {
	case 0:
		return ""
	case 1:
		// Over one 64 KiB block, so that copy-up and writes cross blocks.
		return strings.Repeat(string(rune('a'+r.IntN(26))), 70_000+r.IntN(100))
	}
	return fmt.Sprintf("data-%d", r.IntN(1000))
}

// randLower generates lower number i (0 = base); below is the lower
// beneath it (its paths and kinds) so whiteouts hide something.
func randLower(r *rand.Rand, i int, below map[string]string) []lowerEntry {
	var out []lowerEntry
	kinds := map[string]string{}
	var files []string
	for _, p := range randPaths {
		if parent := path.Dir(p); parent != "." && kinds[parent] != "dir" {
			continue
		}
		e := lowerEntry{path: p, uid: pick(r, []int{0, 0, 1000, 0}), gid: pick(r, []int{0, 0, 1000, 50})}
		v := r.IntN(100)
		if dirSlot[p] && v >= 12 {
			// Mostly a dir, so that the names below it are used.
			v = pick(r, []int{20, 70, 70, 70, 70, 40})
		}
		switch {
		case i > 0 && below[p] != "" && !underOpaqueDir(out, p) && v < 12:
			// Only where it hides something, never inside an opaque dir
			// (DESIGN's rule 6; the kernel lists such a whiteout in a
			// dir that it does not merge, and stat then says ENOENT).
			e.kind = "whiteout"
		case v < 30:
			continue
		case v < 58:
			e.kind = "file"
		case v < 85:
			e.kind = "dir"
		case v < 91:
			e.kind, e.content = "symlink", pick(r, []string{"a", "b", "s", "missing"})
		case v < 96 && len(files) > 0:
			e.kind, e.content = "hardlink", pick(r, files)
		default:
			e.kind = "char" // 1:3, the null device: harmless to open
		}
		switch e.kind {
		case "file":
			e.content = randData(r)
			e.mode = pick(r, []uint32{0o644, 0o644, 0o755, 0o600, 0o4755, 0o444})
			if r.IntN(3) == 0 {
				e.xattrs = append(e.xattrs, [2]string{"user.k", fmt.Sprint("v", r.IntN(3))})
			}
			if r.IntN(6) == 0 {
				e.xattrs = append(e.xattrs, [2]string{"trusted.t", "tv"})
			}
			if r.IntN(8) == 0 {
				e.xattrs = append(e.xattrs, [2]string{"security.capability", capNetBindHex})
			}
			files = append(files, p)
		case "dir":
			e.mode = pick(r, []uint32{0o755, 0o755, 0o700, 0o1777, 0o2755})
			if r.IntN(5) == 0 {
				e.xattrs = append(e.xattrs, [2]string{"user.k", "dir"})
			}
			e.opaque = i > 0 && below[p] == "dir" && r.IntN(4) == 0
		case "char":
			e.mode = 0o666
		}
		kinds[p] = e.kind
		out = append(out, e)
	}
	return out
}

// underOpaqueDir reports whether an ancestor of p is an opaque dir
// among es.
func underOpaqueDir(es []lowerEntry, p string) bool {
	for _, e := range es {
		if e.opaque && strings.HasPrefix(p, e.path+"/") {
			return true
		}
	}
	return false
}

// writeLower makes the entries in dir.
func writeLower(dir string, es []lowerEntry) error {
	for _, e := range es {
		p := filepath.Join(dir, e.path)
		var err error
		switch e.kind {
		case "file":
			err = os.WriteFile(p, []byte(e.content), 0o600)
		case "dir":
			err = os.Mkdir(p, 0o700)
		case "symlink":
			err = os.Symlink(e.content, p)
		case "hardlink":
			err = os.Link(filepath.Join(dir, e.content), p)
		case "char":
			err = unix.Mknod(p, unix.S_IFCHR|e.mode, int(unix.Mkdev(1, 3)))
		case "whiteout":
			err = unix.Mknod(p, unix.S_IFCHR, 0)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", e, err)
		}
		if e.kind == "file" || e.kind == "dir" {
			if err := os.Lchown(p, e.uid, e.gid); err != nil {
				return err
			}
			// After the chown, which clears setuid.
			if err := unix.Chmod(p, e.mode); err != nil {
				return err
			}
		}
		for _, x := range e.xattrs {
			v := []byte(x[1])
			if x[0] == "security.capability" {
				if v, err = hex.DecodeString(x[1]); err != nil {
					return err
				}
			}
			if err := unix.Lsetxattr(p, x[0], v, 0); err != nil {
				return fmt.Errorf("%s: setxattr %s: %w", e, x[0], err)
			}
		}
		if e.opaque {
			if err := unix.Lsetxattr(p, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
				return err
			}
		}
	}
	return nil
}

// randOps generates 10-40 ops over randOpPaths. Most name a path that
// likely exists (in the lowers, or made by an earlier op: a rough model,
// enough to make ops hit something), the others any name.
func randOps(r *rand.Rand, lowers [][]lowerEntry) []fsop {
	n := 10 + r.IntN(31)
	ops := make([]fsop, 0, n)
	known := map[string]string{} // path -> kind, "" once removed
	for _, es := range lowers {
		for _, e := range es {
			known[e.path] = e.kind
			if e.kind == "whiteout" {
				known[e.path] = ""
			}
		}
	}
	// pickKnown names a path thought to exist (of one of kinds, if
	// given) 7 times in 10, else any name.
	pickKnown := func(kinds ...string) string {
		var ks []string
		for _, k := range sortedKeys(known) {
			if known[k] != "" && (len(kinds) == 0 || slices.Contains(kinds, known[k])) {
				ks = append(ks, k)
			}
		}
		if len(ks) > 0 && r.IntN(10) < 7 {
			return pick(r, ks)
		}
		return pick(r, randOpPaths)
	}
	p := func() string { return pickKnown() }
	pf := func() string { return pickKnown("file", "hardlink") }
	// made marks the name an op creates, removed the one it removes.
	made := func(o fsop, which, kind string) fsop { known[which] = kind; return o }
	removed := func(o fsop) fsop { known[o.Path] = ""; return o }
	type gen struct {
		weight int
		make   func() fsop
	}
	gens := []gen{
		{12, func() fsop {
			flags := pick(r, [][]string{nil, nil, {"excl"}, {"trunc"}, {"append"}, {"excl", "trunc"}})
			o := op.createMode(pick(r, randOpPaths), pick(r, []uint32{0o644, 0o600, 0o755}), randData(r), flags...)
			return made(o, o.Path, "file")
		}},
		{8, func() fsop { return op.write(pf(), int64(r.IntN(9)), randData(r)) }},
		{4, func() fsop { return op.append(pf(), randData(r)) }},
		{4, func() fsop { return op.truncate(pf(), int64(r.IntN(13))) }},
		{8, func() fsop { return removed(op.unlink(p())) }},
		{6, func() fsop { return removed(op.rmdir(p())) }},
		{8, func() fsop {
			o := op.mkdir(pick(r, randOpPaths), pick(r, []uint32{0o755, 0o700}))
			return made(o, o.Path, "dir")
		}},
		{12, func() fsop {
			flags := pick(r, [][]string{{"fallback"}, {"fallback"}, {"fallback"}, {"fallback", "noreplace"}, {"fallback", "exchange"}})
			o := op.rename(p(), p(), flags...)
			if r.IntN(2) == 0 {
				o.Path2 = pick(r, randOpPaths)
			}
			kind := known[o.Path]
			return made(removed(o), o.Path2, kind)
		}},
		{5, func() fsop {
			o := op.link(pf(), pick(r, randOpPaths))
			return made(o, o.Path2, "hardlink")
		}},
		{4, func() fsop {
			o := op.symlink(pick(r, []string{"a", "b", "missing"}), pick(r, randOpPaths))
			return made(o, o.Path, "symlink")
		}},
		{5, func() fsop { return op.chmod(p(), pick(r, []uint32{0o600, 0o755, 0o4755, 0o2755, 0o1777})) }},
		{3, func() fsop { return op.chown(p(), pick(r, []int{0, 1000}), pick(r, []int{0, 50})) }},
		{5, func() fsop {
			if r.IntN(5) == 0 {
				return op.setxattrHex(p(), "security.capability", capNetBindHex)
			}
			return op.setxattr(p(), pick(r, []string{"user.k", "user.n", "trusted.t"}), fmt.Sprint("x", r.IntN(3)))
		}},
		{3, func() fsop {
			return op.removexattr(p(), pick(r, []string{"user.k", "user.n", "trusted.t", "security.capability"}))
		}},
		{2, func() fsop { return op.getxattr(p(), pick(r, []string{"user.k", "trusted.t"})) }},
		{2, func() fsop { return op.listxattr(p()) }},
		{2, func() fsop { return op.stat(p()) }},
		{2, func() fsop { return op.lstat(p()) }},
		{5, func() fsop { return op.readdir(pick(r, randDirs)) }},
		{4, func() fsop { return op.read(pf()) }},
		{2, func() fsop { return op.rwread(pf()) }},
		{3, func() fsop {
			return op.utimens(p(), pick(r, []int64{t2017, utimeOmit}), pick(r, []int64{t2018, utimeNow}))
		}},
		{2, func() fsop { return op.sameino(p(), p()) }},
		{1, func() fsop { return op.sh("rm -rf -- " + p()) }},
		{1, func() fsop {
			o := op.mknod(pick(r, randOpPaths), "char", 0o666, 1, 3)
			return made(o, o.Path, "char")
		}},
	}
	total := 0
	for _, g := range gens {
		total += g.weight
	}
	for range n {
		v := r.IntN(total)
		for _, g := range gens {
			if v < g.weight {
				ops = append(ops, g.make())
				break
			}
			v -= g.weight
		}
	}
	return ops
}

// randomCase is case k of seed: its own PCG stream, so that it can be
// rerun alone.
func randomCase(seed uint64, k int) mountCase {
	r := rand.New(rand.NewPCG(seed, uint64(k)))
	nl := 1 + r.IntN(2)
	var lowers [][]lowerEntry
	below := map[string]string{}
	for i := range nl {
		es := randLower(r, i, below)
		for _, e := range es {
			below[e.path] = e.kind
		}
		lowers = append(lowers, es)
	}
	ops := randOps(r, lowers)
	return mountCase{
		name: fmt.Sprintf("seed-%d/case-%d", seed, k),
		buildLowers: func(t *testing.T, l1, l2 string) int {
			for i, d := range []string{l1, l2}[:nl] {
				if err := writeLower(d, lowers[i]); err != nil {
					t.Fatalf("lower %d: %v", i+1, err)
				}
			}
			return nl
		},
		ops: ops,
		describe: func() string {
			var b strings.Builder
			for i, es := range lowers {
				fmt.Fprintf(&b, "--- lower%d ---\n", i+1)
				for _, e := range es {
					fmt.Fprintf(&b, "%s\n", e)
				}
			}
			b.WriteString(describeOps(ops))
			return b.String()
		},
	}
}
