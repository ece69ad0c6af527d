package view

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/overlay"
)

// A View is the merged filesystem of an image, built by streaming its
// layer tars once: names, metadata, hardlink groups, the layer each path
// comes from and where each file's bytes are, with nothing unpacked.
//
// The layers are merged the way umoci (and containerd) apply them, so
// that a View lists what an unpack would leave on disk: a tar name is
// resolved through the symlinks already in the image (inside the image,
// `..` stops at the root); a whiteout or an opaque marker removes what the
// layers below put there but nothing this layer wrote; an entry replaces
// what was at its path unless both are directories, which merge; a
// hardlink shares its target's object and metadata (its own header's are
// ignored, as appliers ignore them), and a later entry at one name
// replaces that name alone.
type View struct {
	img    Image
	root   *viewNode
	counts []LayerCount

	linksOnce sync.Once
	links     map[*viewInode][]string
}

// Options say what a View records beyond names and metadata.
type Options struct {
	// Digests hashes every regular file's content (sha256) as the layers
	// stream past: Diff compares contents by it, and Open checks
	// the bytes it reads a second time against it.
	Digests bool
}

// LayerCount counts the entries of one layer tar.
type LayerCount struct {
	// Entries counts every tar entry, whiteouts and markers included.
	Entries int
	// Files counts regular files and hardlinks.
	Files int
	// Whiteouts counts whiteouts and opaque markers.
	Whiteouts int
}

// Entry describes one path of a View.
type Entry struct {
	// Path is absolute and clean; the root is "/".
	Path string
	Meta overlay.Meta
	// Layer is the index (from 0, the base) of the topmost layer with an
	// entry for the path, or that created it as a missing parent.
	Layer int
	// Digest is the sha256 of a regular file's content when the View
	// hashes contents, else "".
	Digest digest.Digest
	// Links lists every path that shares this object (hardlinks), this one
	// included, sorted; nil when it has one name.
	Links []string
	// Nlink is the link count an unpacked tree would show: the number of
	// names of a file, 2 plus the subdirectories of a directory.
	Nlink int
}

// viewInode is what hardlinks share.
type viewInode struct {
	meta overlay.Meta
	sum  []byte // sha256 of the content, when hashed
	// layer and entry locate a regular file's bytes: the ordinal of the
	// tar entry in that layer that carries them.
	layer, entry int
}

type viewNode struct {
	ino   *viewInode
	layer int
	kids  map[string]*viewNode // directories only
	// touched is 1 + the index of the last layer that wrote this path or
	// something beneath it (umoci's "upper paths"): its whiteouts must
	// spare them.
	touched int
}

func (n *viewNode) isDir() bool { return n.ino.meta.Type == overlay.TypeDir }

// maxSymlinks is the kernel's limit on links followed in one lookup.
const maxSymlinks = 40

// Errors of a lookup in a View. Callers see them wrapped with the
// image and path, and as bad input.
var (
	errViewLoop   = errors.New("too many levels of symbolic links")
	errViewNotDir = errors.New("not a directory")
)

// viewNotFound is a path missing from a View; it is an fs.ErrNotExist.
type viewNotFound struct{ why string }

func (e viewNotFound) Error() string      { return "no such file or directory in the image" + e.why }
func (viewNotFound) Is(target error) bool { return target == fs.ErrNotExist }

// Open builds the merged view of img's layers. The View reads img
// again in Open, so img must stay open while the View is used.
func Open(ctx context.Context, img Image, opts Options) (*View, error) {
	v := &View{
		img:    img,
		root:   newDirNode(overlay.Meta{Type: overlay.TypeDir, Mode: 0o755}, 0),
		counts: make([]LayerCount, img.NumLayers()),
	}
	err := readLayers(ctx, img, opts.Digests, true, func(i int, recs []viewRecord, c LayerCount) error {
		v.counts[i] = c
		if err := v.apply(i, recs); err != nil {
			return fmt.Errorf("%s: layer %d of %d (%s): %w", img, i+1, img.NumLayers(), img.LayerDigest(i), err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return v, nil
}

// CountLayers reads every layer of img, checking its diff_id, and counts
// its entries.
func CountLayers(ctx context.Context, img Image) ([]LayerCount, error) {
	counts := make([]LayerCount, img.NumLayers())
	err := readLayers(ctx, img, false, false, func(i int, _ []viewRecord, c LayerCount) error {
		counts[i] = c
		return nil
	})
	return counts, err
}

// Counts returns the entry counts of the image's layers, base first.
func (v *View) Counts() []LayerCount { return slices.Clone(v.counts) }

func newDirNode(m overlay.Meta, layer int) *viewNode {
	return &viewNode{ino: &viewInode{meta: m, entry: -1}, layer: layer, kids: map[string]*viewNode{}}
}

// viewRecord is one tar entry, as much of it as the merge needs.
type viewRecord struct {
	kind    recordKind
	name    string // clean, relative; "" is the root
	typ     byte
	link    string // a hardlink's clean target
	meta    overlay.Meta
	sum     []byte
	ordinal int
}

type recordKind uint8

const (
	recordEntry recordKind = iota
	recordWhiteout
	recordOpaque
)

// readLayers parses the layers concurrently (a registry's downloads and
// the decompression of several layers overlap) and hands each layer's
// records to fn in layer order, which is the order the merge needs.
func readLayers(ctx context.Context, img Image, digests, keep bool, fn func(i int, recs []viewRecord, c LayerCount) error) error {
	n := img.NumLayers()
	ctx, cancel := context.WithCancel(ctx)
	type result struct {
		recs []viewRecord
		c    LayerCount
		err  error
		done chan struct{}
	}
	res := make([]result, n)
	for i := range res {
		res[i].done = make(chan struct{})
	}
	// A bounded number of layers in flight: each holds a decompressor and
	// perhaps a connection. Started in layer order so that the next one
	// the merge waits for is never starved by later ones.
	slots := make(chan struct{}, max(2, min(runtime.GOMAXPROCS(0), 4)))
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range res {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				for ; i < n; i++ {
					res[i].err = ctx.Err()
					close(res[i].done)
				}
				return
			}
			wg.Go(func() {
				defer func() { <-slots }()
				res[i].recs, res[i].c, res[i].err = parseLayer(ctx, img, i, digests, keep)
				close(res[i].done)
			})
		}
	})
	// Every worker reads img's source, which the caller closes after we
	// return: stop them and wait for all of them whatever happens.
	defer func() {
		cancel()
		wg.Wait()
	}()
	for i := range res {
		select {
		case <-res[i].done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := res[i].err; err != nil {
			return err
		}
		recs := res[i].recs
		res[i].recs = nil // the merge keeps what it needs; let the rest go
		if err := fn(i, recs, res[i].c); err != nil {
			return err
		}
	}
	return nil
}

// parseLayer reads layer i to its end, which checks its diff_id.
func parseLayer(ctx context.Context, img Image, i int, digests, keep bool) (recs []viewRecord, c LayerCount, err error) {
	d := img.LayerDigest(i)
	where := func(err error) error {
		return fmt.Errorf("%s: layer %d of %d (%s): %w", img, i+1, img.NumLayers(), d, err)
	}
	r, err := img.OpenLayer(i)
	if err != nil {
		return nil, c, where(err)
	}
	defer func() {
		if cerr := r.Close(); err == nil && cerr != nil {
			err = where(cerr)
		}
	}()
	tr := tar.NewReader(r)
	var h hash.Hash
	if digests {
		h = sha256.New()
	}
	buf := make([]byte, 128<<10)
	for ordinal := 0; ; ordinal++ {
		if ordinal%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, c, err
			}
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			// Bytes after the end-of-archive blocks count toward the diff_id.
			if _, err := io.CopyBuffer(io.Discard, r, buf); err != nil {
				return nil, c, where(layerReadError(err))
			}
			return recs, c, nil
		}
		if err != nil {
			return nil, c, where(layerReadError(err))
		}
		c.Entries++
		p, err := cleanName(hdr.Name)
		if err != nil {
			return nil, c, where(err)
		}
		rec := viewRecord{name: p, typ: hdr.Typeflag, ordinal: ordinal}
		dir, base := overlay.Split(p)
		switch {
		case base == overlay.OpaqueMarker:
			c.Whiteouts++
			rec.kind, rec.name = recordOpaque, dir
		case strings.HasPrefix(base, overlay.WhiteoutPrefix):
			c.Whiteouts++
			name := base[len(overlay.WhiteoutPrefix):]
			if name == "" || name == "." || name == ".." {
				return nil, c, where(inputerr.New("tar entry %q: invalid whiteout", hdr.Name))
			}
			rec.kind, rec.name = recordWhiteout, overlay.Join(dir, name)
		default:
			rec.meta = layer.Meta(hdr)
			switch hdr.Typeflag {
			case tar.TypeReg, tar.TypeRegA:
				c.Files++
				if h != nil {
					h.Reset()
					if _, err := io.CopyBuffer(h, tr, buf); err != nil {
						return nil, c, where(layerReadError(err))
					}
					rec.sum = h.Sum(nil)
				}
			case tar.TypeLink:
				c.Files++
				if rec.link, err = cleanName(hdr.Linkname); err != nil {
					return nil, c, where(err)
				}
			}
			if rec.meta.Type == 0 && hdr.Typeflag != tar.TypeLink {
				continue // no filesystem object (e.g. a GNU volume header)
			}
		}
		if keep {
			recs = append(recs, rec)
		}
	}
}

// layerReadError classifies an error met while reading a layer: a
// failure of the file system or the network is the work failing; any
// other (a bad tar header, a truncated or corrupt compressed stream) is
// a bad layer, bad input.
func layerReadError(err error) error {
	var (
		pe    *fs.PathError
		se    *os.SyscallError
		errno syscall.Errno
	)
	if errors.As(err, &pe) || errors.As(err, &se) || errors.As(err, &errno) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return inputerr.Wrap(err)
}

// apply merges one layer's records into the view.
func (v *View) apply(layer int, recs []viewRecord) error {
	tag := layer + 1
	for _, rec := range recs {
		switch rec.kind {
		case recordOpaque:
			_, nodes, err := v.walk(rec.name, true)
			if err != nil {
				continue // nothing there to hide
			}
			if d := nodes[len(nodes)-1]; d != nil && d.isDir() {
				pruneKids(d, tag)
			}
		case recordWhiteout:
			dir, base := overlay.Split(rec.name)
			_, nodes, err := v.walk(dir, true)
			if err != nil {
				continue
			}
			d := nodes[len(nodes)-1]
			if d == nil || !d.isDir() {
				continue
			}
			if k := d.kids[base]; k != nil && prune(k, tag) {
				delete(d.kids, base)
			}
		default:
			if err := v.applyEntry(layer, rec); err != nil {
				return fmt.Errorf("tar entry %q: %w", rec.name, err)
			}
		}
	}
	return nil
}

// prune removes what n holds that the layer being applied did not write;
// it reports whether n itself goes.
func prune(n *viewNode, tag int) bool {
	if n.touched != tag {
		return true
	}
	pruneKids(n, tag)
	return false
}

func pruneKids(d *viewNode, tag int) {
	for name, k := range d.kids {
		if prune(k, tag) {
			delete(d.kids, name)
		}
	}
}

func (v *View) applyEntry(layer int, rec viewRecord) error {
	tag := layer + 1
	if rec.name == "" {
		// The root's own entry sets the root's metadata; it stays a dir.
		if rec.meta.Type == overlay.TypeDir {
			v.root.ino.meta = rec.meta
			v.root.layer = layer
		}
		return nil
	}
	dirPath, base := overlay.Split(rec.name)
	names, nodes, err := v.walk(dirPath, true)
	if err != nil {
		return inputerr.Wrap(fmt.Errorf("parent %q: %w", dirPath, err))
	}
	// Missing parents are made as appliers make them (MkdirAll 0755).
	for j := 1; j < len(nodes); j++ {
		if nodes[j] == nil {
			if !nodes[j-1].isDir() {
				return inputerr.New("parent %q: %w", "/"+strings.Join(names[:j-1], "/"), errViewNotDir)
			}
			nodes[j] = newDirNode(overlay.Meta{Type: overlay.TypeDir, Mode: 0o755}, layer)
			nodes[j-1].kids[names[j-1]] = nodes[j]
		}
	}
	d := nodes[len(nodes)-1]
	if !d.isDir() {
		return inputerr.New("parent %q is a %s: %w", dirPath, d.ino.meta.Type, errViewNotDir)
	}
	old := d.kids[base]
	var n *viewNode
	switch {
	case old != nil && old.isDir() && rec.meta.Type == overlay.TypeDir:
		// A directory over a directory keeps its contents and takes the
		// new metadata (xattrs replaced, not merged: umoci clears them).
		old.ino.meta = rec.meta
		old.layer = layer
		n = old
	case rec.typ == tar.TypeLink:
		delete(d.kids, base) // clobbered first, as appliers do, then linked
		_, tnodes, err := v.walk(rec.link, false)
		var t *viewNode
		if err == nil {
			t = tnodes[len(tnodes)-1]
		}
		if t == nil || t.isDir() {
			return inputerr.New("hardlink to %q, which is not a file of the layers so far", rec.link)
		}
		n = &viewNode{ino: t.ino, layer: layer}
	default:
		ino := &viewInode{meta: rec.meta, sum: rec.sum, layer: layer, entry: -1}
		if rec.meta.Type == overlay.TypeReg {
			ino.entry = rec.ordinal
		}
		n = &viewNode{ino: ino, layer: layer}
		if rec.meta.Type == overlay.TypeDir {
			n.kids = map[string]*viewNode{}
		}
	}
	d.kids[base] = n
	n.touched = tag
	for _, a := range nodes {
		a.touched = tag
	}
	return nil
}

// walk resolves p in the view the way an applier resolves a tar name
// (securejoin): symlinks are followed inside the image, an absolute
// target starts again at the root, ".." stops at the root, and the last
// component is followed only when followLast. It returns the resolved
// names and the nodes along them, nodes[0] being the root and nil from
// the first missing component on (from there the names are taken as
// they are).
func (v *View) walk(p string, followLast bool) (names []string, nodes []*viewNode, err error) {
	todo := splitPath(p)
	nodes = []*viewNode{v.root}
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(names) > 0 {
				names, nodes = names[:len(names)-1], nodes[:len(nodes)-1]
			}
			continue
		}
		d := nodes[len(nodes)-1]
		var k *viewNode
		if d != nil {
			if !d.isDir() {
				return nil, nil, errViewNotDir
			}
			k = d.kids[c]
		}
		if k != nil && k.ino.meta.Type == overlay.TypeSymlink && (len(todo) > 0 || followLast) {
			if links++; links > maxSymlinks {
				return nil, nil, errViewLoop
			}
			target := k.ino.meta.Link
			if strings.HasPrefix(target, "/") {
				names, nodes = nil, nodes[:1]
			}
			todo = append(splitPath(target), todo...)
			continue
		}
		names = append(names, c)
		nodes = append(nodes, k)
	}
	return names, nodes, nil
}

func splitPath(p string) []string {
	return strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
}

// lookup resolves p to an existing node; errors are bad input naming p.
func (v *View) lookup(p string, followLast bool) (string, *viewNode, error) {
	names, nodes, err := v.walk(p, followLast)
	switch {
	case errors.Is(err, errViewNotDir):
		err = viewNotFound{" (a parent is not a directory)"}
	case err == nil && nodes[len(nodes)-1] == nil:
		err = viewNotFound{}
	}
	if err != nil {
		return "", nil, inputerr.New("%s: %s: %w", v.img, p, err)
	}
	return "/" + strings.Join(names, "/"), nodes[len(nodes)-1], nil
}

// Stat describes the object at p, following symlinks in every component
// but the last (and the last too when followLast). Path is the resolved
// path. A missing p is bad input that wraps fs.ErrNotExist.
func (v *View) Stat(p string, followLast bool) (Entry, error) {
	rp, n, err := v.lookup(p, followLast)
	if err != nil {
		return Entry{}, err
	}
	return v.entry(rp, n), nil
}

func (v *View) entry(p string, n *viewNode) Entry {
	e := Entry{Path: p, Meta: n.ino.meta, Layer: n.layer}
	if n.ino.sum != nil {
		e.Digest = digest.NewDigestFromBytes(digest.SHA256, n.ino.sum)
	}
	if n.isDir() {
		e.Nlink = 2
		for _, k := range n.kids {
			if k.isDir() {
				e.Nlink++
			}
		}
	} else {
		v.linksOnce.Do(v.findLinks)
		e.Links = v.links[n.ino]
		e.Nlink = max(1, len(e.Links))
	}
	return e
}

// ReadDir describes the entries of the directory at p (resolved as Stat
// with followLast), sorted by name.
func (v *View) ReadDir(p string) ([]Entry, error) {
	rp, n, err := v.lookup(p, true)
	if err != nil {
		return nil, err
	}
	if !n.isDir() {
		return nil, inputerr.New("%s: %s: %w", v.img, rp, errViewNotDir)
	}
	out := make([]Entry, 0, len(n.kids))
	for _, name := range slices.Sorted(maps.Keys(n.kids)) {
		out = append(out, v.entry(joinViewPath(rp, name), n.kids[name]))
	}
	return out, nil
}

func joinViewPath(dir, name string) string {
	return strings.TrimSuffix(dir, "/") + "/" + name
}

// findLinks groups the paths that share an inode.
func (v *View) findLinks() {
	all := map[*viewInode][]string{}
	var rec func(p string, n *viewNode)
	rec = func(p string, n *viewNode) {
		for name, k := range n.kids {
			kp := p + "/" + name
			if k.isDir() {
				rec(kp, k)
			} else {
				all[k.ino] = append(all[k.ino], kp)
			}
		}
	}
	rec("", v.root)
	v.links = map[*viewInode][]string{}
	for ino, ps := range all {
		if len(ps) > 1 {
			slices.Sort(ps)
			v.links[ino] = ps
		}
	}
}

// Walk calls fn for the object at p (resolved as Stat with followLast
// false) and, when it is a directory, for everything beneath it,
// depth-first with names in byte order; symlinks are not followed.
// The root itself is passed as "/".
func (v *View) Walk(ctx context.Context, p string, fn func(Entry) error) error {
	rp, n, err := v.lookup(p, false)
	if err != nil {
		return err
	}
	count := 0
	var rec func(p string, n *viewNode) error
	rec = func(p string, n *viewNode) error {
		if count++; count%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(v.entry(p, n)); err != nil {
			return err
		}
		if !n.isDir() {
			return nil
		}
		for _, name := range slices.Sorted(maps.Keys(n.kids)) {
			if err := rec(joinViewPath(p, name), n.kids[name]); err != nil {
				return err
			}
		}
		return nil
	}
	return rec(rp, n)
}

// Open opens the content of the regular file at p, following symlinks
// (as cat does). It reads the file's layer again up to its entry: a
// hardlink's bytes are those of its first name. When the View hashes
// contents, a read that reaches the end checks them and fails with an
// error if they differ (the blob changed since the View was built).
func (v *View) Open(ctx context.Context, p string) (io.ReadCloser, error) {
	rp, n, err := v.lookup(p, true)
	if err != nil {
		return nil, err
	}
	if t := n.ino.meta.Type; t != overlay.TypeReg {
		return nil, inputerr.New("%s: %s: is a %s, not a regular file", v.img, rp, t)
	}
	ino := n.ino
	d := v.img.LayerDigest(ino.layer)
	where := func(err error) error {
		return fmt.Errorf("%s: %s: layer %d (%s): %w", v.img, rp, ino.layer+1, d, err)
	}
	r, err := v.img.OpenLayer(ino.layer)
	if err != nil {
		return nil, where(err)
	}
	tr := tar.NewReader(r)
	for i := 0; ; i++ {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				r.Close()
				return nil, err
			}
		}
		hdr, err := tr.Next()
		if err != nil {
			r.Close()
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, where(fmt.Errorf("entry %d: %w", ino.entry, err))
		}
		if i == ino.entry {
			if hdr.Size != ino.meta.Size {
				r.Close()
				return nil, where(fmt.Errorf("entry %d (%q) is not the file the view read", i, hdr.Name))
			}
			fr := &viewFile{r: tr, layer: r, want: ino.sum, where: where}
			if ino.sum != nil {
				fr.h = sha256.New()
			}
			return fr, nil
		}
	}
}

type viewFile struct {
	r     io.Reader
	layer io.Closer
	h     hash.Hash
	want  []byte
	where func(error) error
}

func (f *viewFile) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if f.h != nil {
		f.h.Write(p[:n])
		if err == io.EOF && string(f.h.Sum(nil)) != string(f.want) {
			return n, f.where(errors.New("content differs from the first read of the layer"))
		}
	}
	return n, err
}

// Close releases the layer stream. The rest of the layer is not read,
// so its diff_id is not checked again: the View checked it once, and
// the content digest covers what was read.
func (f *viewFile) Close() error { return f.layer.Close() }

// Change is one path that differs between two views.
type Change struct {
	Path string
	Kind ChangeKind
	// Fields say what changed, for ChangeChanged: "type", "mode",
	// "owner", "content", "target", "device", "xattrs", and "mtime" when
	// asked for.
	Fields []string
}

// ChangeKind says how a path differs.
type ChangeKind string

const (
	ChangeAdded   ChangeKind = "added"
	ChangeRemoved ChangeKind = "removed"
	ChangeChanged ChangeKind = "changed"
)

// DiffOptions tune Diff.
type DiffOptions struct {
	// Mtime counts a different mtime as a change. Off by default: a
	// rebuild with another date (or clamped to another epoch) changes
	// every mtime and nothing else.
	Mtime bool
}

// Diff lists the paths added, removed and changed from a to b,
// sorted by path. Everything beneath an added directory is listed as
// added; a removed path is listed alone (what was beneath it went with
// it), as is a directory that became something else. Contents compare
// by digest when both views hash them, else by size only.
func Diff(ctx context.Context, a, b *View, opts DiffOptions) ([]Change, error) {
	var out []Change
	count := 0
	var added func(p string, n *viewNode) error
	added = func(p string, n *viewNode) error {
		if count++; count%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		out = append(out, Change{Path: p, Kind: ChangeAdded})
		for name, k := range n.kids {
			if err := added(p+"/"+name, k); err != nil {
				return err
			}
		}
		return nil
	}
	var rec func(p string, x, y *viewNode) error
	rec = func(p string, x, y *viewNode) error {
		if count++; count%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		for name := range x.kids {
			if y.kids[name] == nil {
				out = append(out, Change{Path: p + "/" + name, Kind: ChangeRemoved})
			}
		}
		for name, yk := range y.kids {
			kp := p + "/" + name
			xk := x.kids[name]
			if xk == nil {
				if err := added(kp, yk); err != nil {
					return err
				}
				continue
			}
			if f := changedFields(&xk.ino.meta, &yk.ino.meta, xk.ino.sum, yk.ino.sum, opts); len(f) > 0 {
				out = append(out, Change{Path: kp, Kind: ChangeChanged, Fields: f})
			}
			switch {
			case xk.isDir() && yk.isDir():
				if err := rec(kp, xk, yk); err != nil {
					return err
				}
			case yk.isDir():
				for name, k := range yk.kids {
					if err := added(kp+"/"+name, k); err != nil {
						return err
					}
				}
			}
		}
		return nil
	}
	if f := changedFields(&a.root.ino.meta, &b.root.ino.meta, nil, nil, opts); len(f) > 0 {
		out = append(out, Change{Path: "/", Kind: ChangeChanged, Fields: f})
	}
	if err := rec("", a.root, b.root); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(x, y Change) int { return strings.Compare(x.Path, y.Path) })
	return out, nil
}

func changedFields(x, y *overlay.Meta, xs, ys []byte, opts DiffOptions) []string {
	if x.Type != y.Type {
		return []string{"type"}
	}
	var f []string
	if x.Mode != y.Mode {
		f = append(f, "mode")
	}
	if x.UID != y.UID || x.GID != y.GID {
		f = append(f, "owner")
	}
	if x.Type == overlay.TypeReg && (x.Size != y.Size || xs != nil && ys != nil && string(xs) != string(ys)) {
		f = append(f, "content")
	}
	if x.Link != y.Link {
		f = append(f, "target")
	}
	if x.Major != y.Major || x.Minor != y.Minor {
		f = append(f, "device")
	}
	if !maps.Equal(x.Xattrs, y.Xattrs) {
		f = append(f, "xattrs")
	}
	if opts.Mtime && !x.Mtime.Equal(y.Mtime) {
		f = append(f, "mtime")
	}
	return f
}
