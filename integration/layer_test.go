package integration

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/layerfs/layerfs/integration/tree"
)

// layerEntry is one tar entry of a layer, as the lint sees it.
type layerEntry struct {
	hdr    *tar.Header
	name   string // cleaned, without the trailing slash of dirs
	digest string // content digest (tree.DigestReader) of regular files
}

func (e layerEntry) isWhiteout() bool { return strings.HasPrefix(path.Base(e.name), ".wh.") }

// readLayer lists layer i of img, hashing regular files' content.
func readLayer(img v1.Image, i int) ([]layerEntry, error) {
	ls, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("layers: %w", err)
	}
	if i < 0 {
		i += len(ls)
	}
	rc, err := ls[i].Uncompressed()
	if err != nil {
		return nil, fmt.Errorf("open layer %d: %w", i, err)
	}
	defer rc.Close()
	var out []layerEntry
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		e := layerEntry{hdr: h, name: strings.TrimSuffix(h.Name, "/")}
		if h.Typeflag == tar.TypeReg {
			if e.digest, err = tree.DigestReader(tr, h.Size); err != nil {
				return nil, fmt.Errorf("layer %d %q: %w", i, h.Name, err)
			}
		}
		out = append(out, e)
	}
}

// lintOptions says how the layer was committed.
type lintOptions struct {
	opaqueMarkers bool  // --opaque-markers: .wh..wh..opq is allowed
	epoch         int64 // --source-date-epoch, 0 when none
}

// lintLayer checks the layer tar rules of DESIGN.md that no applier
// comparison can see (each broken one has lost data somewhere, or breaks
// reproducibility), given before, the merged view of the lowers the layer
// was committed on. It returns one line per violation.
func lintLayer(entries []layerEntry, before tree.Tree, opts lintOptions) []string {
	var bad []string
	fail := func(e layerEntry, format string, args ...any) {
		bad = append(bad, fmt.Sprintf("%s: %s", tree.Quote(e.hdr.Name), fmt.Sprintf(format, args...)))
	}
	seen := map[string]*tar.Header{}
	deleted := map[string]bool{}
	emittedChild := map[string]bool{}
	for _, e := range entries {
		h := e.hdr
		checkName(e, fail)
		if _, dup := seen[e.name]; dup {
			fail(e, "duplicate path (rule 4)")
		}
		if parent := path.Dir(e.name); parent != "." {
			if p := seen[parent]; p == nil || p.Typeflag != tar.TypeDir {
				fail(e, "parent %s not emitted as a dir before it (rules 1, 3)", tree.Quote(parent+"/"))
			}
			emittedChild[parent] = true
		}
		if e.isWhiteout() {
			checkWhiteout(e, before, opts, fail)
			deleted[whiteoutTarget(e.name)] = true
		} else {
			seen[e.name] = h
		}
		checkHeader(e, seen, opts, fail)
	}
	for _, e := range entries {
		if e.isWhiteout() {
			continue
		}
		for p := e.name; p != "."; p = path.Dir(p) {
			if deleted[p] {
				fail(e, "emitted although this layer also whites out %s (rule 4)", tree.Quote(p))
			}
		}
	}
	bad = append(bad, checkOrder(entries)...)
	bad = append(bad, checkDelta(entries, before, emittedChild, opts)...)
	return bad
}

func checkName(e layerEntry, fail func(layerEntry, string, ...any)) {
	h := e.hdr
	if strings.HasPrefix(h.Name, "/") || strings.HasPrefix(h.Name, "./") || path.Clean(e.name) != e.name || e.name == "." ||
		e.name == ".." || strings.HasPrefix(e.name, "../") {
		fail(e, "name is not clean and relative (rule 1)")
	}
	if (h.Typeflag == tar.TypeDir) != strings.HasSuffix(h.Name, "/") {
		fail(e, "dirs, and only dirs, end in / (rule 1)")
	}
}

func whiteoutTarget(name string) string {
	return path.Join(path.Dir(name), strings.TrimPrefix(path.Base(name), ".wh."))
}

func checkWhiteout(e layerEntry, before tree.Tree, opts lintOptions, fail func(layerEntry, string, ...any)) {
	h := e.hdr
	base := path.Base(e.name)
	if h.Typeflag != tar.TypeReg || h.Size != 0 {
		fail(e, "whiteout is not an empty regular file")
	}
	if opts.epoch != 0 && h.ModTime.Unix() != opts.epoch {
		fail(e, "whiteout mtime %d, want the epoch %d (rule 10)", h.ModTime.Unix(), opts.epoch)
	}
	if h.Uid != 0 || h.Gid != 0 {
		fail(e, "whiteout owned by %d:%d, want 0:0 (rule 10)", h.Uid, h.Gid)
	}
	if base == ".wh..wh..opq" {
		if !opts.opaqueMarkers {
			fail(e, "opaque marker without --opaque-markers (rule 5)")
		}
		return
	}
	switch base {
	case ".wh.", ".wh..", ".wh...":
		fail(e, "forbidden whiteout name (rule 8)")
		return
	}
	if _, ok := before[whiteoutTarget(e.name)]; !ok {
		fail(e, "whites out %s, which the lowers do not have (rule 6)", tree.Quote(whiteoutTarget(e.name)))
	}
}

// xattrAllowed is rule 8's allowlist.
func xattrAllowed(k string) bool {
	switch {
	case k == "security.capability", k == "system.posix_acl_access", k == "system.posix_acl_default":
		return true
	case strings.HasPrefix(k, "user.overlay."), strings.HasPrefix(k, "user.fuseoverlayfs."), strings.HasPrefix(k, "user.containers."):
		return false
	case strings.HasPrefix(k, "user."):
		return true
	case strings.HasPrefix(k, "trusted.overlay."):
		return false
	case strings.HasPrefix(k, "trusted."):
		return true
	}
	return false
}

func checkHeader(e layerEntry, seen map[string]*tar.Header, opts lintOptions, fail func(layerEntry, string, ...any)) {
	h := e.hdr
	for k := range h.PAXRecords {
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && !xattrAllowed(x) {
			fail(e, "xattr %s is not allowed in a layer (rule 8)", x)
		}
	}
	if h.Typeflag == tar.TypeChar && h.Devmajor == 0 && h.Devminor == 0 {
		fail(e, "0:0 character device (an overlay whiteout) as content (rule 8)")
	}
	if h.Typeflag == tar.TypeLink {
		if t := seen[path.Clean(h.Linkname)]; t == nil || t.Typeflag != tar.TypeReg {
			fail(e, "hardlink to %s, which is not an earlier regular file of this layer (rule 7)", tree.Quote(h.Linkname))
		}
	}
	if h.Uname != "" || h.Gname != "" {
		fail(e, "user/group names %q/%q, want empty (rule 9)", h.Uname, h.Gname)
	}
	if h.ModTime.Nanosecond() != 0 {
		fail(e, "mtime has a fraction of a second (rule 10)")
	}
	if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
		fail(e, "atime or ctime recorded (rule 10)")
	}
	if opts.epoch != 0 && h.ModTime.Unix() > opts.epoch {
		fail(e, "mtime %d after the epoch %d (rule 10)", h.ModTime.Unix(), opts.epoch)
	}
	if h.Typeflag == tar.TypeGNUSparse || h.Typeflag == tar.TypeXGlobalHeader {
		fail(e, "sparse or global header entry")
	}
}

// checkOrder compares the entry order with the canonical one: depth
// first, parents before children, in each dir its whiteouts first, each
// group sorted bytewise by name (rules 1 and 2).
func checkOrder(entries []layerEntry) []string {
	children := map[string][]layerEntry{}
	for _, e := range entries {
		p := path.Dir(e.name)
		children[p] = append(children[p], e)
	}
	var canon []string
	var walk func(dir string)
	walk = func(dir string) {
		kids := append([]layerEntry(nil), children[dir]...)
		sort.SliceStable(kids, func(i, j int) bool {
			wi, wj := kids[i].isWhiteout(), kids[j].isWhiteout()
			if wi != wj {
				return wi
			}
			return path.Base(kids[i].name) < path.Base(kids[j].name)
		})
		for _, k := range kids {
			canon = append(canon, k.name)
			if k.hdr.Typeflag == tar.TypeDir {
				walk(k.name)
			}
		}
	}
	walk(".")
	for i, e := range entries {
		if i >= len(canon) || canon[i] != e.name {
			want := "(end)"
			if i < len(canon) {
				want = tree.Quote(canon[i])
			}
			return []string{fmt.Sprintf("%s: entry %d out of order, want %s there (rules 1, 2)", tree.Quote(e.hdr.Name), i, want)}
		}
	}
	return nil
}

// checkDelta flags spurious copy-ups (rule 12): an entry identical to
// what the lowers already give at that path, except a dir that is the
// parent of an emitted entry and files that are hardlinked in the layer.
// Under an opaque marker every entry is needed, so nothing is checked.
func checkDelta(entries []layerEntry, before tree.Tree, emittedChild map[string]bool, opts lintOptions) []string {
	linked := map[string]bool{}
	opaque := map[string]bool{}
	for _, e := range entries {
		if e.hdr.Typeflag == tar.TypeLink {
			linked[e.name], linked[path.Clean(e.hdr.Linkname)] = true, true
		}
		if path.Base(e.name) == ".wh..wh..opq" {
			opaque[path.Dir(e.name)] = true
		}
	}
	var bad []string
	for _, e := range entries {
		if e.isWhiteout() || linked[e.name] || underOpaque(e.name, opaque) {
			continue
		}
		b, ok := before[e.name]
		if !ok || !sameAsLower(e, b, opts) {
			continue
		}
		if e.hdr.Typeflag == tar.TypeDir && emittedChild[e.name] {
			continue
		}
		bad = append(bad, fmt.Sprintf("%s: identical to the lowers, a spurious copy-up (rule 12)", tree.Quote(e.hdr.Name)))
	}
	return bad
}

func underOpaque(name string, opaque map[string]bool) bool {
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if opaque[p] {
			return true
		}
	}
	return false
}

func sameAsLower(e layerEntry, b *tree.Entry, opts lintOptions) bool {
	h := e.hdr
	typ := map[byte]tree.Type{tar.TypeDir: tree.Dir, tar.TypeReg: tree.File, tar.TypeSymlink: tree.Symlink,
		tar.TypeChar: tree.Char, tar.TypeBlock: tree.Block, tar.TypeFifo: tree.Fifo}[h.Typeflag]
	if typ != b.Type || uint32(h.Mode)&07777 != b.Mode || uint32(h.Uid) != b.Uid || uint32(h.Gid) != b.Gid {
		return false
	}
	if opts.epoch == 0 && h.ModTime.Unix() != b.Mtime {
		return false
	}
	switch typ {
	case tree.File:
		if h.Size != b.Size || e.digest != b.Digest {
			return false
		}
	case tree.Symlink:
		if h.Linkname != b.Link {
			return false
		}
	case tree.Char, tree.Block:
		if uint32(h.Devmajor) != b.Major || uint32(h.Devminor) != b.Minor {
			return false
		}
	}
	n := 0
	for k, v := range h.PAXRecords {
		if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			n++
			if string(b.Xattrs[x]) != v {
				return false
			}
		}
	}
	return n == len(b.Xattrs)
}
