package overlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Union is a merged view of layer dirs with the kernel overlayfs's
// semantics: an optional writable upper over read-only lowers. It works
// by path (clean, relative, "" for the root) and writes the upper in the
// kernel's on-disk format, so that an upper written through it commits
// exactly like one written through overlayfs.
//
// Mutations hold the write side of the namespace lock and lookups the read
// side; file data never takes it.
type Union struct {
	lower *Stack
	// upper and work are the layer dirs written, open: every object is
	// named relative to them (at), so no path the kernel resolves is
	// longer than the object's path in the union. hasUpper is false for a
	// read-only view.
	upper, work at
	hasUpper    bool
	fds         []int // what Close closes
	rootless    bool
	// recordChowns: see UnionOptions.RecordChowns.
	recordChowns bool
	ns           sync.RWMutex
	// entriesGen counts the changes to the entries of any directory (see
	// EntriesGen).
	entriesGen atomic.Uint64
	tmpSeq     atomic.Uint64
	// onCopyUp hears of each copy-up: the object is served by another
	// layer file now, and stat may say other things of it (a copied-up
	// directory is a merged one).
	onCopyUp func(rel string, from, to Object)
	onGone   func(o Object)

	// Reading override_stat costs a listxattr per stat, on every lookup;
	// most objects can be known not to have one. Lower objects never
	// change, so what one listxattr told is cached. An upper object can
	// only have one if this daemon wrote it (rootless), copied it up from a
	// lower object that had one, or found it in an upper it did not start
	// empty: upperOverrides says whether any of that may have happened.
	overrideMu     sync.Mutex
	lowerOverrides map[inoKey]bool
	upperOverrides atomic.Bool
	// aufsWhiteouts: the upper may hold .wh.NAME whiteout files, which
	// negative lookups must then look for: a writer without mknod (older
	// fuse-overlayfs, or this daemon where mknod is refused) leaves them.
	aufsWhiteouts atomic.Bool

	hideMu  sync.Mutex
	hideGen uint64
	hides   map[string]hideState
}

type hideState struct {
	gen    uint64
	hidden bool
}

// UnionOptions configure a Union.
type UnionOptions struct {
	Lowers []string // base first
	Upper  string   // empty for a read-only view
	// Work is a directory on the upper's filesystem for staging copy-ups
	// and atomic replacements.
	Work string
	// Rootless records ownership and modes the process cannot apply in
	// user.containers.override_stat, and marks opaque dirs with
	// user.overlay.opaque, as containers/storage and fuse-overlayfs do.
	Rootless bool
	// RecordChowns (rootless only) records every chown in the override,
	// also one to the daemon's own uid and gid, which would otherwise
	// leave the object as it is. The owner set explicitly is then told
	// apart from the daemon's own on-disk ownership of what it created,
	// which a commit that squashes the daemon's ids to root
	// (layer.Options.SquashOwner) turns into root. Where the owner of
	// an object the daemon creates must be recorded (a group it cannot
	// give), its own ids in it are recorded as root's, as such a commit
	// would read them on disk.
	RecordChowns bool
	// OnCopyUp, if set, is called (under the namespace lock) for each
	// object copied up, with the object before and after.
	OnCopyUp func(rel string, from, to Object)
	// OnGone, if set, is called (under the namespace lock) for each upper
	// object that stops existing, whose inode number its filesystem may
	// then reuse.
	OnGone func(o Object)
}

// Layer numbers in identities: the upper is 0, the lowers 1.. from the top.
const UpperLayer = 0

// NewUnion checks the layer dirs, opens them, and returns their union.
// Close closes them.
func NewUnion(o UnionOptions) (_ *Union, err error) {
	u := &Union{rootless: o.Rootless, recordChowns: o.RecordChowns, onCopyUp: o.OnCopyUp, onGone: o.OnGone, hides: map[string]hideState{}, lowerOverrides: map[inoKey]bool{}}
	defer func() {
		if err != nil {
			u.Close()
		}
	}()
	open := func(what, p string) (at, error) {
		if err := checkDir(p); err != nil {
			return at{}, fmt.Errorf("%s %s: %w", what, p, err)
		}
		fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return at{}, fmt.Errorf("%s %s: %w", what, p, err)
		}
		u.fds = append(u.fds, fd)
		return atRoot(fd, p), nil
	}
	var lowers []at
	for _, l := range o.Lowers {
		a, err := open("lower", l)
		if err != nil {
			return nil, err
		}
		lowers = append(lowers, a)
	}
	u.lower = newStack(lowers)
	if o.Upper == "" {
		return u, nil
	}
	if u.upper, err = open("upper", o.Upper); err != nil {
		return nil, err
	}
	if u.work, err = open("workdir", o.Work); err != nil {
		return nil, err
	}
	u.hasUpper = true
	if ents, err := readDirents(u.upper); err != nil || len(ents) > 0 || o.Rootless {
		u.upperOverrides.Store(true)
		u.aufsWhiteouts.Store(true)
	}
	var su, sw unix.Stat_t
	if err := u.upper.lstat(&su); err != nil {
		return nil, err
	}
	if err := u.work.lstat(&sw); err != nil {
		return nil, err
	}
	if su.Dev != sw.Dev {
		return nil, fmt.Errorf("workdir %s is not on the upper's filesystem (%s): copy-ups are renamed from one to the other", o.Work, o.Upper)
	}
	rel, err := filepath.Rel(o.Upper, o.Work)
	if err == nil && !strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("workdir %s is inside the upper %s: it would become part of the layer", o.Work, o.Upper)
	}
	return u, nil
}

// Close closes the layer dirs. The union must not be used after.
func (u *Union) Close() error {
	for _, fd := range u.fds {
		unix.Close(fd)
	}
	u.fds = nil
	return nil
}

func checkDir(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return errors.New("not a directory")
	}
	return nil
}

// Object is a merged object: the layer object that serves it.
type Object struct {
	at    at  // the serving object on disk
	Layer int // UpperLayer, or 1 + the index of a lower (topmost first)
	// Stat is the object's lstat, with a recorded ownership override
	// applied (owner, mode, and type for devices stored as plain files).
	Stat unix.Stat_t
	// InLower: the lowers have something at this path, so deleting it
	// must leave a whiteout.
	InLower bool
	// Merged: a directory whose contents come from more than one layer.
	Merged bool
	// Override: Stat carries a recorded override_stat.
	Override bool
}

// inoKey names a layer object.
type inoKey struct {
	layer int
	ino   uint64
}

// InUpper reports whether the upper serves the object.
func (o *Object) InUpper() bool { return o.Layer == UpperLayer }

// IsDir reports whether the object is a directory.
func (o *Object) IsDir() bool { return o.Stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// Where is the serving object's path on disk, for messages.
func (o *Object) Where() string { return o.at.String() }

func (u *Union) upperAt(rel string) at { return u.upper.rel(rel) }

// Lookup resolves rel, or returns ENOENT.
func (u *Union) Lookup(rel string) (Object, error) {
	u.ns.RLock()
	defer u.ns.RUnlock()
	return u.lookup(rel)
}

func (u *Union) lookup(rel string) (Object, error) {
	o, err := u.lookupObject(rel)
	if err != nil || !o.IsDir() || !o.InLower {
		return o, err
	}
	if o.InUpper() {
		vis, err := u.lowerVisibleIn(rel)
		if err != nil || !vis {
			return o, err
		}
	}
	srcs, err := u.lower.Sources(rel)
	if err != nil {
		return o, err
	}
	o.Merged = len(srcs) > 1 || (o.InUpper() && len(srcs) > 0)
	return o, nil
}

func (u *Union) lookupObject(rel string) (Object, error) {
	var o Object
	if rel == "" {
		if u.hasUpper {
			o.at, o.Layer = u.upper, UpperLayer
		} else if ls := u.lower.top; len(ls) > 0 {
			o.at, o.Layer = ls[0], 1
		} else {
			return o, unix.ENOENT
		}
		o.InLower = len(u.lower.top) > 0
		return o, u.stat(&o)
	}
	pdir, name := Split(rel)
	if IsReservedName(name) {
		return o, unix.ENOENT // a marker, never an object of the merged view
	}
	if u.hasUpper {
		p := u.upperAt(rel)
		err := p.lstat(&o.Stat)
		switch {
		case err == nil:
			if IsWhiteoutDevice(&o.Stat) {
				return o, unix.ENOENT
			}
			o.at, o.Layer = p, UpperLayer
			vis, err := u.lowerVisibleIn(pdir)
			if err != nil {
				return o, err
			}
			if vis {
				_, o.InLower, err = u.lowerEntry(pdir, name)
				if err != nil {
					return o, err
				}
			}
			return o, u.applyOverride(&o)
		case err == unix.ENOENT:
			if u.aufsWhiteouts.Load() {
				if hidden, _ := exists(u.upperAt(Join(pdir, WhiteoutPrefix+name))); hidden {
					return o, unix.ENOENT
				}
			}
		case err == unix.ENOTDIR:
		default:
			return o, p.err("lstat", err)
		}
	}
	vis, err := u.lowerVisibleIn(pdir)
	if err != nil || !vis {
		if err == nil {
			err = unix.ENOENT
		}
		return o, err
	}
	e, ok, err := u.lowerEntry(pdir, name)
	if err != nil {
		return o, err
	}
	if !ok {
		return o, unix.ENOENT
	}
	o.at, o.Layer, o.InLower = e.at(name), e.Layer+1, true
	return o, u.stat(&o)
}

func (u *Union) lowerEntry(dir, name string) (LowerEntry, bool, error) {
	idx, err := u.lower.Entries(dir)
	if err != nil {
		return LowerEntry{}, false, err
	}
	e, ok := idx[name]
	return e, ok, nil
}

func (u *Union) stat(o *Object) error {
	if err := o.at.lstat(&o.Stat); err != nil {
		return o.at.err("lstat", err)
	}
	return u.applyOverride(o)
}

// applyOverride lays a recorded override_stat over the object's stat.
// Only layers written without privileges carry one, but any layer may
// come from such a writer, so every stat pays one listxattr (most objects
// have no xattrs at all, which that one call tells).
func (u *Union) applyOverride(o *Object) error {
	key := inoKey{o.Layer, o.Stat.Ino}
	if o.InUpper() {
		if !u.upperOverrides.Load() {
			return nil
		}
	} else {
		u.overrideMu.Lock()
		has, known := u.lowerOverrides[key]
		u.overrideMu.Unlock()
		if known && !has {
			return nil
		}
	}
	names, err := readXattrNames(o.at)
	if err != nil {
		if err == unix.EPERM || err == unix.EOPNOTSUPP {
			return nil
		}
		return o.at.err("listxattr", err)
	}
	name := ""
	for _, n := range names {
		if n == XattrOverrideStat || (n == xattrOverrideStatOld && name == "") {
			name = n
		}
	}
	if !o.InUpper() {
		u.overrideMu.Lock()
		u.lowerOverrides[key] = name != ""
		u.overrideMu.Unlock()
	}
	if name == "" {
		return nil
	}
	o.Override = true
	v, err := getXattr(o.at, name)
	if err != nil {
		return nil // removed meanwhile
	}
	ov, err := ParseOverride(v)
	if err != nil {
		return fmt.Errorf("%s: %w", o.at, err)
	}
	ov.applyStat(&o.Stat)
	return nil
}

// applyStat lays the override over a stat result.
func (ov Override) applyStat(st *unix.Stat_t) {
	st.Uid, st.Gid = ov.UID, ov.GID
	st.Mode = st.Mode&unix.S_IFMT | ov.Mode
	if ov.Type != 0 && st.Mode&unix.S_IFMT == unix.S_IFREG {
		switch ov.Type {
		case TypeChar, TypeBlock, TypeFifo, TypeSocket:
			st.Mode = typeMode(ov.Type) | ov.Mode
			st.Rdev = unix.Mkdev(ov.Major, ov.Minor)
			st.Size, st.Blocks = 0, 0
		}
	}
}

// StatFd stats an open layer file as the union shows objects: with a
// recorded ownership override applied. It serves a file whose names are
// all gone from the union, which only its descriptors still reach.
func StatFd(fd int) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return st, err
	}
	for _, name := range []string{XattrOverrideStat, xattrOverrideStatOld} {
		buf := make([]byte, 256)
		n, err := unix.Fgetxattr(fd, name, buf)
		if err != nil {
			continue
		}
		ov, err := ParseOverride(string(buf[:n]))
		if err != nil {
			return st, err
		}
		ov.applyStat(&st)
		break
	}
	return st, nil
}

func typeMode(t Type) uint32 {
	switch t {
	case TypeReg:
		return unix.S_IFREG
	case TypeDir:
		return unix.S_IFDIR
	case TypeSymlink:
		return unix.S_IFLNK
	case TypeChar:
		return unix.S_IFCHR
	case TypeBlock:
		return unix.S_IFBLK
	case TypeFifo:
		return unix.S_IFIFO
	case TypeSocket:
		return unix.S_IFSOCK
	}
	return 0
}

// lowerVisibleIn reports whether the lowers contribute to the children of
// the merged directory dir: no upper object at dir or above it is a
// whiteout, a non-directory or an opaque directory.
func (u *Union) lowerVisibleIn(dir string) (bool, error) {
	if !u.hasUpper {
		return true, nil
	}
	u.hideMu.Lock()
	gen := u.hideGen
	h, ok := u.hides[dir]
	u.hideMu.Unlock()
	if ok && h.gen == gen {
		return !h.hidden, nil
	}
	hidden := false
	if dir != "" {
		pdir, _ := Split(dir)
		vis, err := u.lowerVisibleIn(pdir)
		if err != nil {
			return false, err
		}
		hidden = !vis
		if !hidden {
			p := u.upperAt(dir)
			var st unix.Stat_t
			switch err := p.lstat(&st); {
			case err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR:
				hidden = true
			case err == nil:
				if hidden, err = isOpaqueDir(p); err != nil {
					return false, err
				}
			case err != unix.ENOENT && err != unix.ENOTDIR:
				return false, p.err("lstat", err)
			}
		}
	}
	u.hideMu.Lock()
	if len(u.hides) > 1<<16 {
		clear(u.hides)
	}
	u.hides[dir] = hideState{gen: gen, hidden: hidden}
	u.hideMu.Unlock()
	return !hidden, nil
}

// structureChanged forgets what is known about which upper dirs hide the
// lowers; every mutation that can create or remove an opaque dir, a
// whiteout over a dir or a dir calls it.
func (u *Union) structureChanged() {
	u.hideMu.Lock()
	u.hideGen++
	u.hideMu.Unlock()
}

// DirEntry is a name of a merged directory.
type DirEntry struct {
	Name  string
	Mode  uint32 // S_IFMT bits of the serving object (before overrides)
	Layer int
	Ino   uint64 // in the serving layer's filesystem
}

// lockEntries takes the namespace for an operation that adds or removes
// entries, and the returned func gives it back, as the change is made.
func (u *Union) lockEntries() (unlock func()) {
	u.ns.Lock()
	return func() {
		u.entriesGen.Add(1)
		u.ns.Unlock()
	}
}

// EntriesGen changes whenever an entry is added to, removed from or
// renamed in any directory of the union: a listing made while it had one
// value is the listing for as long as it keeps it.
func (u *Union) EntriesGen() uint64 { return u.entriesGen.Load() }

// ReadDir lists the merged directory rel, sorted by name, without
// whiteouts and markers.
func (u *Union) ReadDir(rel string) ([]DirEntry, error) {
	u.ns.RLock()
	defer u.ns.RUnlock()
	return u.readDir(rel)
}

func (u *Union) readDir(rel string) ([]DirEntry, error) {
	var out []DirEntry
	seen := map[string]bool{}
	if u.hasUpper {
		dir := u.upperAt(rel)
		ents, err := readDirents(dir)
		if err != nil && !isNotExist(err) {
			return nil, err
		}
		for _, e := range ents {
			if IsReservedName(e.name) {
				if e.name != OpaqueMarker {
					seen[e.name[len(WhiteoutPrefix):]] = true
				}
				continue
			}
			mode := dtToMode(e.typ)
			if mode == 0 || mode == unix.S_IFCHR {
				var st unix.Stat_t
				if err := dir.join(e.name).lstat(&st); err != nil {
					continue // gone since getdents
				}
				if IsWhiteoutDevice(&st) {
					seen[e.name] = true
					continue
				}
				mode = st.Mode & unix.S_IFMT
			}
			seen[e.name] = true
			out = append(out, DirEntry{Name: e.name, Mode: mode, Layer: UpperLayer, Ino: e.ino})
		}
	}
	vis, err := u.lowerVisibleIn(rel)
	if err != nil {
		return nil, err
	}
	if vis {
		idx, err := u.lower.Entries(rel)
		if err != nil {
			return nil, err
		}
		for name, e := range idx {
			if !seen[name] {
				out = append(out, DirEntry{Name: name, Mode: e.Mode, Layer: e.Layer + 1, Ino: e.Ino})
			}
		}
	}
	slices.SortFunc(out, func(a, b DirEntry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func isNotExist(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR)
}
