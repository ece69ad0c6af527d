package layer

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/overlay"
)

// scope says what the lower holds beneath the directory being walked, from
// the point of view of an applier that applies this layer over it.
type scope int

const (
	// scopeMerge: the lower's children stay unless whited out.
	scopeMerge scope = iota
	// scopeExclusive: the upper re-created the directory (opaque), so every
	// lower child the upper lacks needs an explicit whiteout (rule 5).
	scopeExclusive
	// scopeEmpty: the applier will have nothing here from the lower, either
	// because the lower has nothing or because this layer replaces it.
	scopeEmpty
)

type fileID struct{ dev, ino uint64 }

type pendingDir struct {
	name    string
	meta    *overlay.Meta
	written bool
}

// differ turns an upper dir (or, in rootfs mode, a full root filesystem)
// into layer tar entries, following DESIGN.md's layer tar rules. The walk
// is depth-first with names sorted bytewise, so parents precede children
// and the output depends only on the trees.
type differ struct {
	ctx     context.Context
	tw      *tar.Writer
	root    string // the dir being committed
	lower   overlay.Lower
	opts    Options
	exclude *ExcludeMatcher
	epoch   time.Time // whiteout date
	pending []pendingDir
	links   map[fileID]string // first path of each upper hardlink group
	// groups (rootfs mode) lists the paths of each hardlink group of the
	// rootfs, gathered on first need; unchanged caches each group's verdict.
	groups    map[fileID][]string
	unchanged map[fileID]bool
	buf       []byte
	entries   int
}

func writeDiff(ctx context.Context, w io.Writer, upper string, lower overlay.Lower, opts Options) (int, error) {
	if opts.Deletions && !opts.Rootfs {
		return 0, inputerr.New("deletions apply to a rootfs only: an overlay upper records its deletions as whiteouts")
	}
	exclude, err := NewExcludeMatcher(opts.Exclude)
	if err != nil {
		return 0, err
	}
	st, err := os.Stat(upper)
	if err != nil {
		return 0, err
	}
	if !st.IsDir() {
		return 0, fmt.Errorf("%s: not a directory", upper)
	}
	if opts.Rootfs {
		e, err := overlay.Stat(upper)
		if err != nil {
			return 0, err
		}
		if e.Opaque {
			return 0, rootfsMarkerError(upper, "an overlay opaque xattr")
		}
	}
	d := &differ{
		ctx:     ctx,
		tw:      tar.NewWriter(w),
		root:    upper,
		lower:   lower,
		opts:    opts,
		exclude: exclude,
		epoch:   time.Unix(0, 0),
		links:   map[fileID]string{},
		buf:     make([]byte, 256<<10),
	}
	if opts.SourceDateEpoch != nil {
		d.epoch = *opts.SourceDateEpoch
	}
	root, err := lower.Lookup("")
	if err != nil {
		return 0, err
	}
	if err := d.walkDir("", upper, scopeMerge, false, root.IsDir()); err != nil {
		return 0, err
	}
	if err := d.tw.Close(); err != nil {
		return 0, err
	}
	return d.entries, nil
}

// walkDir emits the delta of the upper directory abs, at layer path rel.
func (d *differ) walkDir(rel, abs string, sc scope, opaque, lowerIsDir bool) error {
	if err := d.ctx.Err(); err != nil {
		return err
	}
	if d.opts.Rootfs {
		// Before ReadDir, which would read .wh. names as markers (and drop
		// a .wh.NAME beside a real NAME without a trace).
		if err := checkRootfsNames(abs); err != nil {
			return err
		}
	}
	entries, marker, err := overlay.ReadDir(abs)
	if err != nil {
		return err
	}
	if d.opts.Rootfs {
		if err := checkRootfsEntries(abs, entries); err != nil {
			return err
		}
	}
	opaque = opaque || marker
	switch {
	case sc == scopeEmpty:
	case !lowerIsDir:
		sc = scopeEmpty
	case d.opts.Rootfs && d.opts.Deletions:
		// A full rootfs lists everything it keeps: what the lower has
		// beyond that is gone, as beneath an opaque dir.
		sc = scopeExclusive
	case d.opts.Rootfs:
	case opaque && d.opts.OpaqueMarkers && !d.exclude.matchesBelow(rel):
		// Only where nothing beneath is excluded: the marker would delete
		// the lower's excluded paths too, which explicit whiteouts spare.
		if err := d.whiteout(overlay.Join(rel, overlay.OpaqueMarker)); err != nil {
			return err
		}
		sc = scopeEmpty
	case opaque:
		sc = scopeExclusive
	}

	// Whiteouts first in each directory (the image spec's SHOULD), and only
	// for names the lower really has (rule 6).
	switch sc {
	case scopeExclusive:
		names, err := d.lower.Names(rel)
		if err != nil {
			return err
		}
		present := make(map[string]bool, len(entries))
		for _, e := range entries {
			if !e.Whiteout {
				present[e.Name] = true
			}
		}
		for _, n := range names {
			if !present[n] && !d.exclude.matches(overlay.Join(rel, n)) {
				if err := d.whiteout(overlay.Join(rel, overlay.WhiteoutPrefix+n)); err != nil {
					return err
				}
			}
		}
	case scopeMerge:
		for _, e := range entries {
			if !e.Whiteout || d.exclude.matches(overlay.Join(rel, e.Name)) {
				continue
			}
			m, err := d.lower.Lookup(overlay.Join(rel, e.Name))
			if err != nil {
				return err
			}
			if m != nil {
				if err := d.whiteout(overlay.Join(rel, overlay.WhiteoutPrefix+e.Name)); err != nil {
					return err
				}
			}
		}
	}

	for i := range entries {
		e := &entries[i]
		if e.Whiteout {
			continue
		}
		if err := d.entry(rel, abs, e, sc); err != nil {
			return err
		}
	}
	return nil
}

func (d *differ) entry(rel, abs string, e *overlay.Entry, sc scope) error {
	p := overlay.Join(rel, e.Name)
	if d.exclude.matches(p) {
		return nil // nor anything beneath it
	}
	ap := filepath.Join(abs, e.Name)
	m := &e.Meta
	m.Squash(d.opts.SquashOwner)
	var lm *overlay.Meta
	if sc != scopeEmpty {
		var err error
		if lm, err = d.lowerLookup(p); err != nil {
			return err
		}
	}
	switch m.Type {
	case overlay.TypeDir:
		d.pending = append(d.pending, pendingDir{name: p + "/", meta: m})
		if lm == nil || !d.sameMeta(m, lm) {
			if err := d.flush(); err != nil {
				return err
			}
		}
		err := d.walkDir(p, ap, sc, e.Opaque, lm.IsDir())
		d.pending = d.pending[:len(d.pending)-1]
		return err
	case overlay.TypeSocket:
		if d.opts.Warn != nil {
			d.opts.Warn(fmt.Sprintf("skipping socket %s: a layer cannot hold one", ap))
		}
		return nil
	}
	if m.Nlink > 1 {
		// Every name of an upper hardlink group is emitted, the first in
		// walk order as the file and the rest as links to it (rule 7):
		// dropping a name as unchanged would leave a link to nothing.
		id := fileID{m.Dev, m.Ino}
		if d.opts.Rootfs {
			// A rootfs holds the lowers' hardlinks too; a group goes into
			// the layer whole or not at all, so that no name is left
			// linked to a stale inode.
			same, err := d.groupUnchanged(id)
			if err != nil || same {
				return err
			}
		}
		if first, ok := d.links[id]; ok {
			// The link carries the file's full metadata: containerd and
			// moby chown, chmod and set times on the link path, which is
			// the shared inode, so zeros here would reset the file.
			hdr := d.header(p, m)
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			return d.write(hdr, "", nil)
		}
		d.links[id] = p
		return d.emit(p, ap, m)
	}
	if lm != nil && d.sameMeta(m, lm) {
		if m.Type != overlay.TypeReg {
			return nil
		}
		same, err := d.lower.SameContent(p, ap)
		if err != nil {
			return err
		}
		if same {
			return nil // a spurious copy-up (rule 12)
		}
	}
	return d.emit(p, ap, m)
}

// lowerLookup is the lower's object at p, with its owner squashed as the
// committed dir's are (Options.SquashOwner), so that the two compare.
func (d *differ) lowerLookup(p string) (*overlay.Meta, error) {
	lm, err := d.lower.Lookup(p)
	if lm == nil || err != nil || d.opts.SquashOwner == nil || !lm.OnDiskOwner {
		return lm, err
	}
	c := *lm // the lower's own, maybe cached
	c.Squash(d.opts.SquashOwner)
	return &c, nil
}

// sameMeta reports whether an upper object adds nothing over the lower one
// at the same path, content aside. mtime only counts when no epoch clamps it.
func (d *differ) sameMeta(m, lm *overlay.Meta) bool {
	if m.Type != lm.Type || m.Mode != lm.Mode || m.UID != lm.UID || m.GID != lm.GID ||
		m.Size != lm.Size || m.Link != lm.Link || m.Major != lm.Major || m.Minor != lm.Minor {
		return false
	}
	if d.opts.SourceDateEpoch == nil && m.Mtime.Unix() != lm.Mtime.Unix() {
		return false
	}
	return sameLayerXattrs(m.Xattrs, lm.Xattrs)
}

func sameLayerXattrs(a, b map[string]string) bool {
	n := 0
	for k, v := range a {
		if !KeepsXattr(k) {
			continue
		}
		n++
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	for k := range b {
		if KeepsXattr(k) {
			n--
		}
	}
	return n == 0
}

// KeepsXattr reports whether layers carry the xattr name (tar rule 8):
// the allowlist of what a commit writes, an apply sets, a copy into an
// image keeps and a cache key hashes. It keeps file capabilities, POSIX
// ACLs, and user.* and trusted.* names that are not union bookkeeping;
// security.selinux and the like belong to the host.
func KeepsXattr(name string) bool {
	switch name {
	case "security.capability", "system.posix_acl_access", "system.posix_acl_default":
		return true
	}
	return (strings.HasPrefix(name, "user.") || strings.HasPrefix(name, "trusted.")) &&
		!overlay.IsInternalXattr(name)
}

// flush writes the headers of directories whose entries are about to be
// written, parents first (rule 1), carrying their real metadata.
func (d *differ) flush() error {
	for i := range d.pending {
		pd := &d.pending[i]
		if pd.written {
			continue
		}
		pd.written = true
		if err := d.writeEntry(d.header(pd.name, pd.meta), "", nil); err != nil {
			return err
		}
	}
	return nil
}

func (d *differ) whiteout(name string) error {
	return d.write(&tar.Header{Typeflag: tar.TypeReg, Name: name, ModTime: d.epoch}, "", nil)
}

func (d *differ) emit(name, path string, m *overlay.Meta) error {
	return d.write(d.header(name, m), path, m)
}

func (d *differ) header(name string, m *overlay.Meta) *tar.Header {
	hdr := &tar.Header{
		Name:     name,
		Mode:     int64(m.Mode),
		Uid:      int(m.UID),
		Gid:      int(m.GID),
		ModTime:  d.mtime(m.Mtime),
		Typeflag: Typeflag(m.Type),
	}
	switch m.Type {
	case overlay.TypeReg:
		hdr.Size = m.Size
	case overlay.TypeSymlink:
		hdr.Linkname = m.Link
	case overlay.TypeChar, overlay.TypeBlock:
		hdr.Devmajor, hdr.Devminor = int64(m.Major), int64(m.Minor)
	}
	for k, v := range m.Xattrs {
		if KeepsXattr(k) {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords[XattrRecord+k] = v
		}
	}
	return hdr
}

// mtime is whole seconds (sub-second times would add PAX records),
// clamped to the epoch when one is set.
func (d *differ) mtime(t time.Time) time.Time {
	t = time.Unix(t.Unix(), 0)
	if e := d.opts.SourceDateEpoch; e != nil && t.After(*e) {
		return *e
	}
	return t
}

// write emits one entry. Every entry goes through here so that its
// parents are always written first.
func (d *differ) write(hdr *tar.Header, path string, m *overlay.Meta) error {
	if err := d.flush(); err != nil {
		return err
	}
	return d.writeEntry(hdr, path, m)
}

func (d *differ) writeEntry(hdr *tar.Header, path string, m *overlay.Meta) error {
	hdr.Format = tar.FormatPAX
	d.entries++
	if err := d.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("write %s: %w", hdr.Name, err)
	}
	if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
		return nil
	}
	return d.copyContent(path, m.Size)
}

var errChanged = errors.New("changed while being committed")

func (d *differ) copyContent(path string, size int64) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	// Raw reads: an *os.File would cost fcntl and epoll calls per file.
	var n int64
	for n < size {
		chunk := d.buf[:min(int64(len(d.buf)), size-n)]
		k, err := unix.Read(fd, chunk)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "read", Path: path, Err: err}
		}
		if k == 0 {
			return fmt.Errorf("%s: %w (shrank from %d to %d bytes)", path, errChanged, size, n)
		}
		if _, err := d.tw.Write(chunk[:k]); err != nil {
			return err
		}
		n += int64(k)
	}
	if k, _ := unix.Read(fd, d.buf[:1]); k > 0 {
		return fmt.Errorf("%s: %w (grew past %d bytes)", path, errChanged, size)
	}
	return nil
}

// checkRootfsNames refuses .wh. names in a rootfs: they are overlay
// markers, which a full root filesystem never holds, and reading one as a
// marker would turn a stray file into a deletion.
func checkRootfsNames(dir string) error {
	names, err := readNames(dir)
	if err != nil {
		return err
	}
	slices.Sort(names) // report the same one every time
	for _, n := range names {
		if overlay.IsReservedName(n) {
			return rootfsMarkerError(filepath.Join(dir, n), "a "+overlay.WhiteoutPrefix+" file (an overlay whiteout or opaque marker)")
		}
	}
	return nil
}

// checkRootfsEntries refuses the markers that ReadDir recognises by type
// or xattr rather than by name.
func checkRootfsEntries(dir string, entries []overlay.Entry) error {
	for i := range entries {
		e := &entries[i]
		p := filepath.Join(dir, e.Name)
		switch {
		case e.Whiteout:
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err == nil && overlay.IsWhiteoutDevice(&st) {
				return rootfsMarkerError(p, "a 0:0 character device (an overlay whiteout)")
			}
			return rootfsMarkerError(p, "an overlay whiteout xattr")
		case e.Opaque:
			return rootfsMarkerError(p, "an overlay opaque xattr")
		}
	}
	return nil
}

func rootfsMarkerError(path, what string) error {
	return inputerr.New("%s: %s in a rootfs; a full root filesystem has no overlay markers, so commit an overlay upper as an upper, not as a rootfs", path, what)
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read dir %s: %w", dir, err)
	}
	return names, nil
}

// groupUnchanged reports whether every name of the rootfs hardlink group
// id is identical to what the lower has at that path, and, where the
// lower can tell (a Stack reports inodes, a Listing does not), is one
// object there too. Such a group is the lowers' own and is left out.
func (d *differ) groupUnchanged(id fileID) (bool, error) {
	if same, ok := d.unchanged[id]; ok {
		return same, nil
	}
	if d.groups == nil {
		// Only a full scan finds every name of a group before the first
		// is due; it reads no content and no xattrs.
		d.groups = map[fileID][]string{}
		d.unchanged = map[fileID]bool{}
		if err := d.scanLinks("", d.root); err != nil {
			return false, err
		}
	}
	same, err := d.sameGroup(d.groups[id])
	if err != nil {
		return false, err
	}
	d.unchanged[id] = same
	return same, nil
}

func (d *differ) sameGroup(paths []string) (bool, error) {
	if len(paths) == 0 {
		return false, nil // linked after the scan: not the lowers' group
	}
	var lowerID fileID
	for i, p := range paths {
		ap := filepath.Join(d.root, p)
		e, err := overlay.Stat(ap)
		if err != nil {
			return false, err
		}
		if e.Whiteout {
			return false, nil // refused when the walk gets there
		}
		lm, err := d.lowerLookup(p)
		if err != nil {
			return false, err
		}
		e.Meta.Squash(d.opts.SquashOwner)
		if lm == nil || !d.sameMeta(&e.Meta, lm) {
			return false, nil
		}
		if lm.Ino != 0 {
			if id := (fileID{lm.Dev, lm.Ino}); i == 0 {
				lowerID = id
			} else if id != lowerID {
				return false, nil // linked here, separate objects below
			}
		}
		if e.Meta.Type == overlay.TypeReg {
			same, err := d.lower.SameContent(p, ap)
			if err != nil || !same {
				return false, err
			}
		}
	}
	return true, nil
}

// scanLinks records the paths of every non-directory with more than one
// link beneath the rootfs dir abs (layer path rel), skipping excluded ones.
func (d *differ) scanLinks(rel, abs string) error {
	if err := d.ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(abs)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		f.Close()
		return fmt.Errorf("read dir %s: %w", abs, err)
	}
	var subdirs []string
	for _, n := range names {
		p := overlay.Join(rel, n)
		if d.exclude.matches(p) {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstatat(int(f.Fd()), n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			f.Close()
			return &os.PathError{Op: "lstat", Path: filepath.Join(abs, n), Err: err}
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			subdirs = append(subdirs, n)
		case st.Nlink > 1:
			id := fileID{uint64(st.Dev), st.Ino}
			d.groups[id] = append(d.groups[id], p)
		}
	}
	f.Close() // before descending: open fds would grow with the depth
	for _, n := range subdirs {
		if err := d.scanLinks(overlay.Join(rel, n), filepath.Join(abs, n)); err != nil {
			return err
		}
	}
	return nil
}
