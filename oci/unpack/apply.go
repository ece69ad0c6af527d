package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/layerfs/layerfs/internal/compress"
	"github.com/layerfs/layerfs/internal/inputerr"
	"github.com/layerfs/layerfs/oci/layer"
	"github.com/layerfs/layerfs/overlay"
	"golang.org/x/sys/unix"
)

// Applying a layer tar: every tar is hostile.
//
// The threat is a layer whose entries, alone or in combination, make the
// applier touch something outside the layer dir: names with "..", symlinks
// planted by one entry and written through by a later one (absolute,
// relative, chained, or swapped in for a directory after it was used, the
// shape of CVE-2025-47290), hardlinks to host files, whiteouts whose name
// resolves to the parent of the root (".wh..."), a root entry that is a
// symlink (CVE-2021-29136). The layer dir is then mounted as a lower of our
// union, so markers matter too: a tar must not smuggle a whiteout (a 0:0
// char device) or an opaque xattr past us, nor forge the ownership
// override a rootless union trusts.
//
// Defences, each of which alone would stop most of the above:
//   - Every path is resolved by os.Root (openat, component by component,
//     refusing symlinks that leave the root), again for every entry: a
//     resolution cached across entries is exactly what CVE-2025-47290 broke.
//   - Nothing is ever replaced or removed: every create is exclusive, and a
//     second entry for a path the tar already wrote is rejected. So no
//     entry can change what an earlier entry's name resolves to.
//   - Operations os.Root lacks (mknod, xattrs and times of symlinks) run
//     on a parent directory opened through the root, with one final name
//     component and no symlink following.
//   - Metadata goes through the object's own descriptor where there is one
//     (containerd's chmod TOCTOU hardening), never a path chmod.

// ErrHostile is wrapped by every rejection of a layer tar's content. Such
// errors are also bad input (internal/inputerr).
var ErrHostile = errors.New("hostile layer")

// Options control Apply. The zero value is usable.
type Options struct {
	// MaxSize limits the uncompressed tar bytes read, and separately the
	// file bytes written (a GNU sparse entry expands past its tar size);
	// 0 means no limit. A layer past it is rejected as a decompression bomb.
	MaxSize int64
	// Warn hears about what was dropped: xattrs the layer may not set or
	// this process cannot.
	Warn func(msg string)
	// Rootfs: the tar is a root filesystem (`tar -cf - -C ROOTFS .`, as
	// `--rootfs-tar` takes it), not a layer. A gzip, zstd or bzip2 stream is
	// decompressed, and a whiteout or opaque marker name in it is refused:
	// a root filesystem deletes nothing.
	Rootfs bool
}

// Result describes an applied layer.
type Result struct {
	Entries int   // tar entries applied, whiteouts included
	Bytes   int64 // uncompressed tar bytes read
}

// Apply unpacks the uncompressed layer tar r into dir, which must exist and
// be empty, as a layer dir in the format of DESIGN.md (kernel overlayfs
// upper: whiteouts are 0:0 char devices, opaque dirs carry an xattr).
// Unprivileged, it records what it cannot apply the way a rootless union
// does: user.overlay.opaque, .wh.NAME files where mknod is refused, and
// owners, modes and device types in user.containers.override_stat, which
// it writes for every entry but symlinks (Linux keeps user.* xattrs off
// them), also where the tar names this process's own ids, and for the
// parents a tar leaves out (root's, 0755): so that an owner the tar gave is
// never taken for the applier's own, which a rootless build maps to root
// (layer.Options.SquashOwner). Fifos and devices are then empty files whose
// override names their type.
//
// Rejections wrap ErrHostile and are bad input. On any error dir holds a
// partial layer, which the caller must discard. Apply reads r to its end,
// past the tar's end-of-archive blocks, so that a digest over r is complete.
func Apply(ctx context.Context, r io.Reader, dir string, opts Options) (Result, error) {
	var res Result
	root, err := os.OpenRoot(dir)
	if err != nil {
		return res, err
	}
	defer root.Close()
	if err := checkEmpty(root, dir); err != nil {
		return res, err
	}
	if opts.Rootfs {
		dr, _, err := compress.DecompressStream(r, compress.Gzip, compress.Zstd, compress.Bzip2)
		if err != nil {
			return res, inputerr.New("rootfs tar: %v", err)
		}
		defer dr.Close()
		r = dr
	}
	cr := &countingReader{r: r, max: opts.MaxSize}
	a := &applier{
		ctx:      ctx,
		root:     root,
		opts:     opts,
		cr:       cr,
		rootless: os.Geteuid() != 0,
		seen:     map[string]kind{"": kindImplicitDir},
		dirIndex: map[string]int{},
		buf:      make([]byte, 256<<10),
	}
	err = a.run(tar.NewReader(cr))
	res.Entries, res.Bytes = a.entries, cr.n
	return res, err
}

func checkEmpty(root *os.Root, dir string) error {
	f, err := root.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	if err != nil && err != io.EOF {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("apply a layer into %s: the directory is not empty", dir)
	}
	return nil
}

// kind is what this tar put at a path, by the path's cleaned name.
type kind uint8

const (
	kindImplicitDir kind = iota + 1 // made as the parent of an entry
	kindDir
	kindFile
	kindSymlink
	kindDevice
	kindFifo
	kindWhiteout
	kindOpaque // key: DIR/.wh..wh..opq
)

func (k kind) String() string {
	switch k {
	case kindImplicitDir, kindDir:
		return "directory"
	case kindFile:
		return "regular file"
	case kindSymlink:
		return "symlink"
	case kindDevice:
		return "device"
	case kindFifo:
		return "fifo"
	case kindWhiteout:
		return "whiteout"
	case kindOpaque:
		return "opaque marker"
	}
	return "entry"
}

func (k kind) isDir() bool { return k == kindDir || k == kindImplicitDir }

// linkable: hardlinks may name only non-directories that are real objects.
func (k kind) linkable() bool {
	return k == kindFile || k == kindSymlink || k == kindDevice || k == kindFifo
}

// dirMeta is applied to a directory after everything beneath it is written:
// a restrictive mode would stop an unprivileged applier from creating the
// children, and creating them would move the mtime.
type dirMeta struct {
	rel          string
	mode         uint32 // as set on disk
	atime, mtime time.Time
	times        bool // false: an implicit dir, dated by its creation
}

type applier struct {
	ctx      context.Context
	root     *os.Root
	opts     Options
	cr       *countingReader
	rootless bool
	// noXattrs: the layer dir refused an override record, which was
	// warned about once.
	noXattrs bool
	// seen holds every path this tar wrote, by its cleaned name. It drives
	// the duplicate and hardlink rules; it never stands in for resolving a
	// path, which os.Root does afresh for every entry.
	seen     map[string]kind
	dirs     []dirMeta
	dirIndex map[string]int
	entries  int
	written  int64 // file bytes written, against MaxSize
	last     string
	buf      []byte
}

func (a *applier) run(tr *tar.Reader) error {
	for {
		if err := a.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return a.streamError(err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // archive-wide PAX defaults (git archive): nothing to apply
		}
		a.entries++
		a.last = hdr.Name
		if err := a.entry(tr, hdr); err != nil {
			return err
		}
	}
	// The end-of-archive blocks and any record padding belong to the
	// stream whose digest is the diff_id.
	if _, err := io.CopyBuffer(io.Discard, a.cr, a.buf); err != nil {
		return a.streamError(err)
	}
	return a.finishDirs()
}

// reject is a rejection of the entry named name (as the tar spells it).
func reject(name, format string, args ...any) error {
	return inputerr.New("layer entry %s: %s: %w", quoteName(name), fmt.Sprintf(format, args...), ErrHostile)
}

// quoteName quotes a tar name for a one-line error, shortening the names
// of PATH_MAX attacks to their ends.
func quoteName(name string) string {
	if len(name) > 512 {
		return fmt.Sprintf("%q…%q", name[:200], name[len(name)-200:])
	}
	return strconv.Quote(name)
}

// typeName names a tar entry type for errors.
func typeName(flag byte) string {
	switch flag {
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
		return "regular file"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeChar:
		return "char device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeDir:
		return "directory"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %q", flag)
}

// errTooBig is what countingReader returns past MaxSize.
var errTooBig = errors.New("layer too large")

func (a *applier) tooBig(name string) error {
	msg := fmt.Sprintf("layer is larger than the limit of %d uncompressed bytes (a decompression bomb?)", a.opts.MaxSize)
	if name == "" {
		return inputerr.New("%s: %w", msg, ErrHostile)
	}
	return reject(name, "%s", msg)
}

// streamError classifies a failure to read the tar: the source failing is
// the source's error (I/O, a corrupt gzip); archive/tar refusing what it
// read (a bad header, a lying size, a 3 MiB PAX record, a truncated
// stream) is a hostile or broken layer.
func (a *applier) streamError(err error) error {
	where := "layer"
	if a.last != "" {
		where = "layer, after entry " + quoteName(a.last)
	}
	switch {
	case errors.Is(err, errTooBig):
		return a.tooBig(a.last)
	case a.cr.err != nil && errors.Is(err, a.cr.err):
		return fmt.Errorf("reading %s: %w", where, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return inputerr.New("%s: truncated tar (the stream ends inside a header): %w", where, ErrHostile)
	}
	return inputerr.New("%s: malformed tar: %v: %w", where, err, ErrHostile)
}

// contentError is streamError for a failure while reading entry data.
func (a *applier) contentError(name string, err error) error {
	switch {
	case errors.Is(err, errTooBig):
		return a.tooBig(name)
	case a.cr.err != nil && errors.Is(err, a.cr.err):
		return fmt.Errorf("layer entry %s: reading: %w", quoteName(name), err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return reject(name, "the data ends before the size its header gives (a truncated tar or a lying size)")
	}
	return reject(name, "content: %v", err)
}

// fsError reports a failed filesystem operation on behalf of an entry. The
// failures a hostile tar provokes are bad input: os.Root refusing to leave
// the root, a symlink loop, a name that is taken (through a symlink alias)
// or not a directory. The machine's failures (no space, I/O) are not.
func fsError(name string, err error) error {
	var errno syscall.Errno
	switch {
	// os.Root has no exported sentinel for an escape, only this text.
	case strings.Contains(err.Error(), "path escapes from parent"):
		return reject(name, "path leaves the layer root (%v)", err)
	case errors.As(err, &errno) && hostileErrno(errno):
		return reject(name, "%v", err)
	}
	return fmt.Errorf("layer entry %s: %w", quoteName(name), err)
}

func hostileErrno(e syscall.Errno) bool {
	switch e {
	case unix.ELOOP, unix.EEXIST, unix.ENOTDIR, unix.EISDIR, unix.ENAMETOOLONG, unix.EMLINK, unix.EINVAL:
		return true
	}
	return false
}

func (a *applier) warn(format string, args ...any) {
	if a.opts.Warn != nil {
		a.opts.Warn(fmt.Sprintf(format, args...))
	}
}

// cleanEntryName turns a tar name into a layer path: "" for the root.
// Leading "/" and "./" are dropped (absolute names mean the layer root);
// ".." anywhere is refused rather than cleaned away, because a name that
// needs it is never one a producer meant.
func cleanEntryName(name string) (string, error) {
	if name == "" {
		return "", reject(name, "empty name")
	}
	rel, refused := LayerPath(name)
	if refused != "" {
		return "", reject(name, "%s", refused)
	}
	return rel, nil
}

// validID refuses ids at or past 2^31: runtimes that read them as int32
// turn them into negative ids or root (CVE-2024-40635).
func validID(id int) bool { return id >= 0 && id < 1<<31 }

func (a *applier) entry(tr *tar.Reader, hdr *tar.Header) error {
	name := hdr.Name
	rel, err := cleanEntryName(name)
	if err != nil {
		return err
	}
	if rel == "" {
		return a.rootEntry(hdr)
	}
	dir, base := overlay.Split(rel)
	for el := range strings.SplitSeq(dir, "/") {
		if overlay.IsReservedName(el) {
			return reject(name, "a whiteout name (%q) cannot be a directory", el)
		}
	}
	// Markers are recognised by name whatever the entry's type, as every
	// applier does; only these tar entries ever become markers.
	if overlay.IsReservedName(base) && a.opts.Rootfs {
		return reject(name, "a whiteout or opaque marker (%q) in a rootfs tar; a root filesystem deletes nothing", base)
	}
	if overlay.IsReservedName(base) {
		if base == overlay.OpaqueMarker {
			return a.opaque(name, dir)
		}
		return a.whiteout(name, dir, base[len(overlay.WhiteoutPrefix):])
	}
	if k, ok := a.seen[rel]; ok && !(k == kindImplicitDir && hdr.Typeflag == tar.TypeDir) {
		return reject(name, "duplicate entry: this layer already has a %s at %q", k, rel)
	}
	if !validID(hdr.Uid) || !validID(hdr.Gid) {
		return reject(name, "uid/gid %d:%d out of range (CVE-2024-40635)", hdr.Uid, hdr.Gid)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return a.dir(hdr, rel)
	case tar.TypeReg, tar.TypeGNUSparse, tar.TypeCont:
		return a.file(tr, hdr, rel)
	case tar.TypeSymlink:
		return a.symlink(hdr, rel)
	case tar.TypeLink:
		return a.hardlink(hdr, rel)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return a.special(hdr, rel)
	}
	return reject(name, "unsupported entry %s", typeName(hdr.Typeflag))
}

// rootEntry: a layer may describe its root's metadata, and nothing else
// about it. umoci applied a root symlink and with it every later layer
// onto the host (CVE-2021-29136).
func (a *applier) rootEntry(hdr *tar.Header) error {
	if hdr.Typeflag != tar.TypeDir {
		return reject(hdr.Name, "the layer root can only be a directory, not a %s (CVE-2021-29136)", typeName(hdr.Typeflag))
	}
	if a.seen[""] == kindDir {
		return reject(hdr.Name, "duplicate entry for the layer root")
	}
	if !validID(hdr.Uid) || !validID(hdr.Gid) {
		return reject(hdr.Name, "uid/gid %d:%d out of range (CVE-2024-40635)", hdr.Uid, hdr.Gid)
	}
	return a.dir(hdr, "")
}

// ensureDir makes sure the directory rel exists, creating what is missing
// 0755 as moby does for parents a tar leaves out. It walks down from the
// deepest path this tar already has, one os.Root per level, so that deep
// trees cost one open per level.
func (a *applier) ensureDir(name, rel string) error {
	if rel == "" {
		return nil
	}
	if k, ok := a.seen[rel]; ok {
		if k.isDir() || k == kindSymlink {
			return nil // a symlink is followed, inside the root only, on use
		}
		return reject(name, "parent %q is a %s, not a directory", rel, k)
	}
	comps := strings.Split(rel, "/")
	i := len(comps) - 1
	for ; i > 0; i-- {
		if _, ok := a.seen[strings.Join(comps[:i], "/")]; ok {
			break
		}
	}
	dir := a.root
	defer func() {
		if dir != a.root {
			dir.Close()
		}
	}()
	if i > 0 {
		prefix := strings.Join(comps[:i], "/")
		if k := a.seen[prefix]; !k.isDir() && k != kindSymlink {
			return reject(name, "parent %q is a %s, not a directory", prefix, k)
		}
		sub, err := a.root.OpenRoot(prefix)
		if err != nil {
			return fsError(name, err)
		}
		dir = sub
	}
	for j := i; j < len(comps); j++ {
		p := strings.Join(comps[:j+1], "/")
		err := dir.Mkdir(comps[j], 0o755)
		made := err == nil
		switch {
		case err == nil:
			a.seen[p] = kindImplicitDir
			a.setDir(dirMeta{rel: p, mode: 0o755})
		case errors.Is(err, fs.ErrExist):
			// Reached through an in-root symlink alias of a path this tar
			// wrote; OpenRoot below refuses it unless it is a directory
			// inside the root.
		default:
			return fsError(name, err)
		}
		sub, err := dir.OpenRoot(comps[j])
		if err != nil {
			return fsError(name, err)
		}
		if dir != a.root {
			dir.Close()
		}
		dir = sub
		if made && a.rootless {
			if err := a.recordImplicit(name, sub); err != nil {
				return err
			}
		}
	}
	return nil
}

// recordImplicit records the owner of a parent the tar left out as what a
// privileged applier makes it: root's, 0755. A later entry for the
// directory replaces the record with its own.
func (a *applier) recordImplicit(name string, dir *os.Root) error {
	f, err := dir.OpenFile(".", os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fsError(name, err)
	}
	defer f.Close()
	return a.record(name, int(f.Fd()), overlay.Override{Mode: 0o755, Type: overlay.TypeDir})
}

func (a *applier) setDir(m dirMeta) {
	if i, ok := a.dirIndex[m.rel]; ok {
		a.dirs[i] = m
		return
	}
	a.dirIndex[m.rel] = len(a.dirs)
	a.dirs = append(a.dirs, m)
}

// openParent opens the directory that holds rel, through the root: the
// handle for the *at calls that os.Root has no method for.
func (a *applier) openParent(name, rel string) (*os.File, string, error) {
	dir, base := overlay.Split(rel)
	if err := a.ensureDir(name, dir); err != nil {
		return nil, "", err
	}
	f, err := a.root.OpenFile(dirOrDot(dir), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, "", fsError(name, err)
	}
	return f, base, nil
}

func dirOrDot(rel string) string {
	if rel == "" {
		return "."
	}
	return rel
}

// openDir opens an existing directory of the layer for its metadata,
// refusing a symlink in the last place: markers and metadata meant for a
// directory never travel through a link.
func (a *applier) openDir(name, rel string) (*os.File, error) {
	if rel == "" {
		f, err := a.root.OpenFile(".", os.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			return nil, fsError(name, err)
		}
		return f, nil
	}
	pf, base, err := a.openParent(name, rel)
	if err != nil {
		return nil, err
	}
	defer pf.Close()
	fd, err := unix.Openat(int(pf.Fd()), base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fsError(name, &os.PathError{Op: "openat", Path: rel, Err: err})
	}
	return os.NewFile(uintptr(fd), rel), nil
}

func (a *applier) dir(hdr *tar.Header, rel string) error {
	name := hdr.Name
	var f *os.File
	var err error
	if _, exists := a.seen[rel]; exists {
		// A directory the tar already needed as a parent (or the root): the
		// entry only brings its metadata.
		f, err = a.openDir(name, rel)
	} else {
		dir, _ := overlay.Split(rel)
		if err := a.ensureDir(name, dir); err != nil {
			return err
		}
		// Owner-only until the post-pass gives the final mode: nobody else
		// gets in while the tree is being written.
		if err := a.root.Mkdir(rel, 0o700); err != nil {
			return fsError(name, err)
		}
		// Just made, and nothing replaces a name once made: no symlink can
		// stand here (os.Root would follow one inside the root anyway).
		if f, err = a.root.OpenFile(rel, os.O_RDONLY|unix.O_DIRECTORY, 0); err != nil {
			return fsError(name, err)
		}
	}
	if err != nil {
		return err
	}
	defer f.Close()
	a.seen[rel] = kindDir
	mode, err := a.owner(name, f, hdr, overlay.TypeDir, 0, 0)
	if err != nil {
		return err
	}
	if err := a.setXattrs(name, fdSetter(f), hdr); err != nil {
		return err
	}
	atime, mtime := entryTimes(hdr)
	a.setDir(dirMeta{rel: rel, mode: mode, atime: atime, mtime: mtime, times: true})
	return nil
}

func (a *applier) file(tr *tar.Reader, hdr *tar.Header, rel string) error {
	name := hdr.Name
	// A GNU sparse entry expands to hdr.Size bytes whatever its tar size;
	// the limit covers what lands on disk as well as what is read.
	if a.opts.MaxSize > 0 && a.written+hdr.Size > a.opts.MaxSize {
		return a.tooBig(name)
	}
	dir, _ := overlay.Split(rel)
	if err := a.ensureDir(name, dir); err != nil {
		return err
	}
	// O_EXCL refuses whatever is there, a planted symlink included, and
	// os.Root never follows the last component with O_CREATE|O_EXCL.
	f, err := a.root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fsError(name, err)
	}
	defer f.Close()
	a.seen[rel] = kindFile
	n, err := a.copyContent(name, f, tr)
	a.written += n
	if err != nil {
		return err
	}
	// The order matters: chown clears setuid bits and file capabilities,
	// and a write clears capabilities, so data, owner, xattrs, then mode.
	mode, err := a.owner(name, f, hdr, overlay.TypeReg, 0, 0)
	if err != nil {
		return err
	}
	if err := a.setXattrs(name, fdSetter(f), hdr); err != nil {
		return err
	}
	fd := int(f.Fd())
	if err := unix.Fchmod(fd, mode); err != nil {
		return fsError(name, err)
	}
	atime, mtime := entryTimes(hdr)
	if err := futimens(fd, atime, mtime); err != nil {
		return fsError(name, err)
	}
	return nil
}

// copyContent copies the entry's data, telling the tar's errors (a lying
// size) from the disk's.
func (a *applier) copyContent(name string, f *os.File, tr *tar.Reader) (int64, error) {
	var n int64
	for {
		k, rerr := tr.Read(a.buf)
		if k > 0 {
			if _, err := f.Write(a.buf[:k]); err != nil {
				return n, fmt.Errorf("layer entry %s: %w", quoteName(name), err)
			}
			n += int64(k)
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, a.contentError(name, rerr)
		}
	}
}

func (a *applier) symlink(hdr *tar.Header, rel string) error {
	name := hdr.Name
	if hdr.Linkname == "" {
		return reject(name, "symlink with an empty target")
	}
	dir, base := overlay.Split(rel)
	if err := a.ensureDir(name, dir); err != nil {
		return err
	}
	// The target is data: it is never resolved here. Later entries that
	// pass through the link are resolved by os.Root, inside the root only.
	if err := a.root.Symlink(hdr.Linkname, rel); err != nil {
		return fsError(name, err)
	}
	a.seen[rel] = kindSymlink
	pf, err := a.root.OpenFile(dirOrDot(dir), os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fsError(name, err)
	}
	defer pf.Close()
	pfd := int(pf.Fd())
	if !a.rootless {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fsError(name, err)
		}
	}
	// A symlink's owner cannot be recorded unprivileged: Linux refuses
	// user.* xattrs on symlinks. Rootless unions live with the same.
	if err := a.setXattrs(name, procSetter(pfd, base), hdr); err != nil {
		return err
	}
	atime, mtime := entryTimes(hdr)
	if err := utimesAt(pfd, base, atime, mtime); err != nil {
		return fsError(name, err)
	}
	return nil
}

// hardlink adds a name to an object this same tar wrote earlier, found by
// its cleaned name, and nothing else: resolving the target by any other
// means (a host path, a path through a symlink planted for the purpose) is
// how hardlink escapes work. The link header's own metadata is ignored: it
// would land on the shared inode, which is how CVE-2021-32760 chmodded a
// host file through a hardlinked symlink.
func (a *applier) hardlink(hdr *tar.Header, rel string) error {
	name := hdr.Name
	if hdr.Linkname == "" {
		return reject(name, "hardlink with an empty target")
	}
	target, refused := LayerPath(hdr.Linkname)
	if refused != "" {
		return reject(name, "hardlink target %q: %s", hdr.Linkname, refused)
	}
	k, ok := a.seen[target]
	switch {
	case !ok:
		return reject(name, "hardlink to %q, which is not an earlier entry of this layer", hdr.Linkname)
	case !k.linkable():
		return reject(name, "hardlink to %q, a %s", hdr.Linkname, k)
	}
	dir, _ := overlay.Split(rel)
	if err := a.ensureDir(name, dir); err != nil {
		return err
	}
	if err := a.root.Link(target, rel); err != nil {
		return fsError(name, err)
	}
	a.seen[rel] = k
	return nil
}

// Device numbers a Linux dev_t can hold; archive/tar reads base-256 fields
// up to 2^63, which a cast would silently truncate to another device.
const (
	maxMajor = 1 << 12
	maxMinor = 1 << 20
)

func (a *applier) special(hdr *tar.Header, rel string) error {
	name := hdr.Name
	var typ overlay.Type
	var ifmt uint32
	switch hdr.Typeflag {
	case tar.TypeChar:
		typ, ifmt = overlay.TypeChar, unix.S_IFCHR
	case tar.TypeBlock:
		typ, ifmt = overlay.TypeBlock, unix.S_IFBLK
	default:
		typ, ifmt = overlay.TypeFifo, unix.S_IFIFO
	}
	var major, minor uint32
	if typ != overlay.TypeFifo {
		if hdr.Devmajor < 0 || hdr.Devmajor >= maxMajor || hdr.Devminor < 0 || hdr.Devminor >= maxMinor {
			return reject(name, "device number %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		major, minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
		// A 0:0 char device is the kernel's whiteout: a tar entry must not
		// smuggle one into the layer dir, where the union would read it as
		// the deletion of a lower file.
		if typ == overlay.TypeChar && major == 0 && minor == 0 {
			return reject(name, "char device 0:0 is a whiteout; a layer deletes with %s names", overlay.WhiteoutPrefix)
		}
	}
	pf, base, err := a.openParent(name, rel)
	if err != nil {
		return err
	}
	defer pf.Close()
	pfd := int(pf.Fd())
	mode := uint32(hdr.Mode) & 07777
	if a.rootless {
		// Unprivileged: no mknod for devices, and a fifo cannot carry the
		// override xattr. An empty file whose override names the type is
		// what the union (and containers/storage) reads back as the device.
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fsError(name, &os.PathError{Op: "openat", Path: rel, Err: err})
		}
		f := os.NewFile(uintptr(fd), rel)
		defer f.Close()
		a.seen[rel] = kindFromType(typ)
		real, err := a.owner(name, f, hdr, typ, major, minor)
		if err != nil {
			return err
		}
		if err := a.setXattrs(name, fdSetter(f), hdr); err != nil {
			return err
		}
		if err := unix.Fchmod(fd, real); err != nil {
			return fsError(name, err)
		}
		atime, mtime := entryTimes(hdr)
		return wrapFS(name, futimens(fd, atime, mtime))
	}
	if err := unix.Mknodat(pfd, base, ifmt|0o600, int(unix.Mkdev(major, minor))); err != nil {
		return fsError(name, &os.PathError{Op: "mknodat", Path: rel, Err: err})
	}
	a.seen[rel] = kindFromType(typ)
	if !a.rootless {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fsError(name, err)
		}
	}
	// Opening a device or fifo for a descriptor has side effects (or
	// blocks), so these go by name in the parent, never following.
	if err := a.setXattrs(name, procSetter(pfd, base), hdr); err != nil {
		return err
	}
	if err := chmodAt(pfd, base, mode); err != nil {
		return fsError(name, err)
	}
	atime, mtime := entryTimes(hdr)
	return wrapFS(name, utimesAt(pfd, base, atime, mtime))
}

func kindFromType(t overlay.Type) kind {
	if t == overlay.TypeFifo {
		return kindFifo
	}
	return kindDevice
}

func wrapFS(name string, err error) error {
	if err == nil {
		return nil
	}
	return fsError(name, err)
}

// whiteout turns the tar's .wh.NAME into the kernel's marker for NAME.
// Only names that can be a sibling's are accepted: ".wh." and ".wh.." would
// delete the directory itself, ".wh..." its parent (for a top-level entry,
// the parent of the layer root: oci.md §4.4), and ".wh..wh.x" a name only a
// marker may have.
func (a *applier) whiteout(name, dir, target string) error {
	switch {
	case target == "", target == ".", strings.HasPrefix(target, ".."):
		return reject(name, "whiteout of %q would delete its own directory or one above it", target)
	case overlay.IsReservedName(target):
		return reject(name, "whiteout of the reserved name %q", target)
	}
	rel := overlay.Join(dir, target)
	if k, ok := a.seen[rel]; ok {
		return reject(name, "whiteout of %q, for which this layer already has a %s; a layer never holds both", rel, k)
	}
	pf, _, err := a.openParent(name, rel)
	if err != nil {
		return err
	}
	defer pf.Close()
	if _, err := overlay.WriteWhiteout(int(pf.Fd()), target); err != nil {
		return fsError(name, &os.PathError{Op: "mknodat", Path: rel, Err: err})
	}
	a.seen[rel] = kindWhiteout
	return nil
}

// opaque marks dir opaque, creating it if the tar has not. The marker is
// written by this applier only: an opaque xattr in the tar's own records is
// dropped like every other union xattr (setXattrs).
func (a *applier) opaque(name, dir string) error {
	key := overlay.Join(dir, overlay.OpaqueMarker)
	if _, ok := a.seen[key]; ok {
		return reject(name, "duplicate opaque marker")
	}
	if err := a.ensureDir(name, dir); err != nil {
		return err
	}
	if k, ok := a.seen[dir]; !ok {
		return reject(name, "opaque marker in %q, which this layer reaches only through a symlink", dir)
	} else if !k.isDir() {
		return reject(name, "opaque marker in %q, a %s", dir, k)
	}
	f, err := a.openDir(name, dir)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.Fsetxattr(int(f.Fd()), overlay.OpaqueXattr(a.rootless), []byte(overlay.OpaqueValue), 0)
	if err != nil && a.rootless && (err == unix.ENOTSUP || err == unix.EPERM) {
		// No user xattrs on this filesystem: the AUFS marker file, which
		// the union reads too.
		var fd int
		fd, err = unix.Openat(int(f.Fd()), overlay.OpaqueMarker, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		return fsError(name, &os.PathError{Op: "setxattr", Path: dirOrDot(dir), Err: err})
	}
	a.seen[key] = kindOpaque
	return nil
}

// owner gives the object open as f the entry's owner, or, unprivileged,
// records it with the mode and type (every entry: see Apply), and returns
// the mode to set on disk (which the caller sets after this, since chown
// clears setuid). Unprivileged, that mode keeps the union's own daemon
// able to read and search the object, and has no setuid or setgid bits,
// which the kernel may clear or refuse.
func (a *applier) owner(name string, f *os.File, hdr *tar.Header, t overlay.Type, major, minor uint32) (uint32, error) {
	mode := uint32(hdr.Mode) & 07777
	fd := int(f.Fd())
	if !a.rootless {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return 0, fsError(name, err)
		}
		return mode, nil
	}
	o := overlay.Override{UID: uint32(hdr.Uid), GID: uint32(hdr.Gid), Mode: mode, Type: t, Major: major, Minor: minor}
	if err := a.record(name, fd, o); err != nil {
		return 0, err
	}
	real := mode | 0o600
	if t == overlay.TypeDir {
		real |= 0o700
	}
	return real &^ (unix.S_ISUID | unix.S_ISGID), nil
}

// record writes an override_stat on the object open as fd, in the format
// containers/storage and fuse-overlayfs 1.14+ write, which the union lays
// over the object's stat.
func (a *applier) record(name string, fd int, o overlay.Override) error {
	if err := unix.Fsetxattr(fd, overlay.XattrOverrideStat, []byte(o.Format()), 0); err != nil {
		if err != unix.ENOTSUP && err != unix.EPERM {
			return fsError(name, err)
		}
		if !a.noXattrs {
			a.warn("layer entry %s: cannot record owner and mode %s without user xattrs (%v); the owners and modes of it and of later entries are lost", quoteName(name), o.Format(), err)
		}
		a.noXattrs = true
	}
	return nil
}

// xattrSetter sets one xattr on the object being applied.
type xattrSetter func(name string, value []byte) error

func fdSetter(f *os.File) xattrSetter {
	return func(name string, value []byte) error {
		return unix.Fsetxattr(int(f.Fd()), name, value, 0)
	}
}

// procSetter reaches an object that must not be opened (a symlink, a
// device) by name in its parent, opened through the root: lsetxattr on
// /proc/self/fd/DIRFD/NAME resolves nothing but the descriptor and the one
// final component, which it does not follow.
func procSetter(dirfd int, base string) xattrSetter {
	return func(name string, value []byte) error {
		return unix.Lsetxattr("/proc/self/fd/"+strconv.Itoa(dirfd)+"/"+base, name, value, 0)
	}
}

// setXattrs applies the entry's SCHILY.xattr records that a layer may
// carry (layerXattr, the allowlist the writer uses too). Union bookkeeping
// (opaque and whiteout marks, ownership overrides) is never taken from a
// tar: a layer that set them would hide lower files or forge owners.
func (a *applier) setXattrs(name string, set xattrSetter, hdr *tar.Header) error {
	var keys []string
	for k := range hdr.PAXRecords {
		if x, ok := strings.CutPrefix(k, layer.XattrRecord); ok {
			keys = append(keys, x)
		}
	}
	slices.Sort(keys)
	for _, x := range keys {
		switch {
		case overlay.IsInternalXattr(x):
			a.warn("layer entry %s: dropped xattr %s: union bookkeeping is never taken from a layer", quoteName(name), x)
			continue
		case !layer.KeepsXattr(x):
			a.warn("layer entry %s: dropped xattr %s: not one a layer may set", quoteName(name), x)
			continue
		case a.rootless && strings.HasPrefix(x, "trusted."):
			a.warn("layer entry %s: dropped xattr %s: trusted.* needs root", quoteName(name), x)
			continue
		}
		err := set(x, []byte(hdr.PAXRecords[layer.XattrRecord+x]))
		switch {
		case err == nil:
		case err == unix.EPERM || err == unix.EACCES || err == unix.ENOTSUP || err == unix.ENOENT:
			// Not permitted here (security.capability unprivileged, user.*
			// on a symlink or device), or no /proc to reach a symlink by.
			a.warn("layer entry %s: dropped xattr %s: %v", quoteName(name), x, err)
		case err == unix.EINVAL || err == unix.E2BIG || err == unix.ERANGE:
			return reject(name, "xattr %s: %v", x, err)
		default:
			return fmt.Errorf("layer entry %s: xattr %s: %w", quoteName(name), x, err)
		}
	}
	return nil
}

func entryTimes(hdr *tar.Header) (atime, mtime time.Time) {
	mtime = hdr.ModTime
	atime = hdr.AccessTime
	if atime.IsZero() {
		atime = mtime
	}
	return atime, mtime
}

func timespec(t time.Time) unix.Timespec {
	return unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}
}

// futimens sets the times of an open file: utimensat with a NULL path,
// which x/sys does not expose.
func futimens(fd int, atime, mtime time.Time) error {
	ts := [2]unix.Timespec{timespec(atime), timespec(mtime)}
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return &os.PathError{Op: "futimens", Path: "", Err: errno}
	}
	return nil
}

// utimesAt dates the object itself, never a symlink's target.
func utimesAt(dirfd int, base string, atime, mtime time.Time) error {
	ts := []unix.Timespec{timespec(atime), timespec(mtime)}
	if err := unix.UtimesNanoAt(dirfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimensat", Path: base, Err: err}
	}
	return nil
}

// chmodAt sets the mode of a device or fifo by name without following a
// symlink: fchmodat2's AT_SYMLINK_NOFOLLOW where the kernel has it (6.6),
// else after checking that the name still holds no symlink (nothing else
// writes in the layer dir while it is applied).
func chmodAt(dirfd int, base string, mode uint32) error {
	err := unix.Fchmodat(dirfd, base, mode, unix.AT_SYMLINK_NOFOLLOW)
	if err != unix.EOPNOTSUPP && err != unix.ENOSYS {
		if err != nil {
			return &os.PathError{Op: "fchmodat", Path: base, Err: err}
		}
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "fstatat", Path: base, Err: err}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return &os.PathError{Op: "fchmodat", Path: base, Err: unix.ELOOP}
	}
	if err := unix.Fchmodat(dirfd, base, mode, 0); err != nil {
		return &os.PathError{Op: "fchmodat", Path: base, Err: err}
	}
	return nil
}

// finishDirs gives directories their modes and times once everything is
// written, each after everything beneath it, so that neither a restrictive
// mode nor a child's creation comes in the way. The walk goes in path
// order holding an os.Root for each directory of the current path, each
// opened from its parent's: linear in the number of directories even for a
// chain 2000 deep (PATH_MAX bounds the depth, and so the descriptors held).
func (a *applier) finishDirs() error {
	slices.SortFunc(a.dirs, func(x, y dirMeta) int { return comparePaths(x.rel, y.rel) })
	type level struct {
		dirMeta
		r *os.Root
	}
	var stack []level
	defer func() {
		for _, l := range stack {
			if l.r != a.root {
				l.r.Close()
			}
		}
	}()
	pop := func() error {
		l := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if l.r != a.root {
			defer l.r.Close()
		}
		err := l.r.Chmod(".", fileMode(l.mode))
		if err == nil && l.times {
			err = l.r.Chtimes(".", l.atime, l.mtime)
		}
		if err != nil {
			return fsError(dirOrDot(l.rel), err)
		}
		return nil
	}
	for _, d := range a.dirs {
		if err := a.ctx.Err(); err != nil {
			return err
		}
		for len(stack) > 0 && !isAncestor(stack[len(stack)-1].rel, d.rel) {
			if err := pop(); err != nil {
				return err
			}
		}
		r := a.root
		if d.rel != "" {
			var err error
			if len(stack) == 0 {
				r, err = a.root.OpenRoot(d.rel)
			} else {
				top := stack[len(stack)-1]
				r, err = top.r.OpenRoot(strings.TrimPrefix(d.rel, top.rel+"/"))
				if err != nil {
					// A path through an in-root symlink may leave the
					// parent's subtree without leaving the layer.
					r, err = a.root.OpenRoot(d.rel)
				}
			}
			if err != nil {
				return fsError(d.rel, err)
			}
		}
		stack = append(stack, level{d, r})
	}
	for len(stack) > 0 {
		if err := pop(); err != nil {
			return err
		}
	}
	return nil
}

// comparePaths orders paths so that every directory comes right before
// its subtree: "/" sorts below every other byte ("a", "a/b", "a-c").
func comparePaths(x, y string) int {
	for i := 0; i < len(x) && i < len(y); i++ {
		if cx, cy := x[i], y[i]; cx != cy {
			switch {
			case cx == '/':
				return -1
			case cy == '/':
				return 1
			}
			return int(cx) - int(cy)
		}
	}
	return len(x) - len(y)
}

func isAncestor(dir, rel string) bool {
	return dir == "" || strings.HasPrefix(rel, dir+"/")
}

// fileMode converts permission and setuid/setgid/sticky bits for os.Root.
func fileMode(mode uint32) os.FileMode {
	m := os.FileMode(mode & 0o777)
	if mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// countingReader counts the tar bytes read, enforces MaxSize on them, and
// remembers the source's own error so that it is not blamed on the tar.
type countingReader struct {
	r   io.Reader
	n   int64
	max int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.max > 0 {
		if c.n > c.max {
			return 0, errTooBig
		}
		if room := c.max - c.n + 1; int64(len(p)) > room {
			p = p[:room] // one byte past the limit is enough to know
		}
	}
	k, err := c.r.Read(p)
	c.n += int64(k)
	if err != nil && err != io.EOF {
		c.err = err
	}
	if c.max > 0 && c.n > c.max {
		return 0, errTooBig
	}
	return k, err
}
