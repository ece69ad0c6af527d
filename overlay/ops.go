package overlay

import (
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Owner is a uid and gid: who creates an object (the caller's), or whose
// on-disk ownership Meta.Squash maps to root.
type Owner struct{ UID, GID uint32 }

// The mutations below follow the kernel overlayfs: copy up before any
// change to a lower object, leave a whiteout where a name the lowers have
// is removed, make a directory created over a whiteout opaque. Each holds
// the namespace lock for writing and returns errno values as errors.

func (u *Union) writable() error {
	if !u.hasUpper {
		return unix.EROFS
	}
	return nil
}

// newOwner applies the setgid-directory rule the kernel would apply if
// the caller created the object itself: the group of a setgid parent, and
// for directories the setgid bit too.
func newOwner(parent *Object, owner Owner, mode uint32) (Owner, uint32) {
	if parent.Stat.Mode&unix.S_ISGID != 0 {
		owner.GID = parent.Stat.Gid
		if mode&unix.S_IFMT == unix.S_IFDIR {
			mode |= unix.S_ISGID
		}
	}
	return owner, mode
}

// upperWhiteoutAt reports whether the upper holds a whiteout at rel.
func (u *Union) upperWhiteoutAt(rel string) bool {
	var st unix.Stat_t
	return u.upperAt(rel).lstat(&st) == nil && IsWhiteoutDevice(&st)
}

// prepareCreate checks that rel is free in the merged view, copies its
// parent up and works out the new object's owner and mode.
func (u *Union) prepareCreate(rel string, owner Owner, mode uint32) (Owner, uint32, bool, error) {
	if err := u.writable(); err != nil {
		return owner, mode, false, err
	}
	if err := checkNewName(rel); err != nil {
		return owner, mode, false, err
	}
	if _, err := u.lookup(rel); err == nil {
		return owner, mode, false, unix.EEXIST
	} else if err != unix.ENOENT {
		return owner, mode, false, err
	}
	pdir, _ := Split(rel)
	parent, err := u.copyUp(pdir, false)
	if err != nil {
		return owner, mode, false, err
	}
	owner, mode = newOwner(&parent, owner, mode)
	return owner, mode, u.upperWhiteoutAt(rel), nil
}

// checkNewName refuses a name that the layer format reads as a marker:
// the object would hide what its name says instead of being seen (as
// fuse-overlayfs, EINVAL).
func checkNewName(rel string) error {
	if _, name := Split(rel); IsReservedName(name) {
		return unix.EINVAL
	}
	return nil
}

// place moves a finished object from the workdir to rel. Over a whiteout
// a non-directory simply replaces it; a directory cannot replace a
// non-directory, so it is exchanged with the whiteout and made opaque (the
// lowers' old contents must not show through), and the whiteout removed.
func (u *Union) place(tmp at, rel string, overWhiteout, isDir bool) error {
	dst := u.upperAt(rel)
	if !overWhiteout {
		return renameat2(tmp, dst, unix.RENAME_NOREPLACE)
	}
	if !isDir {
		return renameat2(tmp, dst, 0)
	}
	if err := u.setOpaque(tmp); err != nil {
		return err
	}
	if err := renameat2(tmp, dst, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	return tmp.unlink()
}

func (u *Union) setOpaque(p at) error {
	return p.setxattr(OpaqueXattr(u.rootless), []byte(OpaqueValue), 0)
}

// finish gives a new object its owner and mode.
func (u *Union) finish(p at, owner Owner, mode uint32) error {
	if err := u.setOwner(p, owner.UID, owner.GID, mode, false); err != nil {
		return err
	}
	if mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	return u.chmod(p, mode)
}

// chmod sets a mode; a rootless daemon keeps the owner bits it needs on
// the real file and the requested mode in the override, if it has one.
func (u *Union) chmod(p at, mode uint32) error {
	if u.rootless {
		if v, err := getXattr(p, XattrOverrideStat); err == nil {
			if o, err := ParseOverride(v); err == nil {
				o.Mode = mode & 07777
				if err := p.setxattr(XattrOverrideStat, []byte(o.Format()), 0); err != nil {
					return err
				}
				real := mode&07777 | 0o600
				if mode&unix.S_IFMT == unix.S_IFDIR {
					real |= 0o700
				}
				return p.chmod(real &^ (unix.S_ISUID | unix.S_ISGID))
			}
		}
	}
	return p.chmod(mode & 07777)
}

// Create creates and opens a regular file.
func (u *Union) Create(rel string, flags int, mode uint32, owner Owner) (int, Object, error) {
	defer u.lockEntries()()
	owner, mode, overWh, err := u.prepareCreate(rel, owner, mode|unix.S_IFREG)
	if err != nil {
		return -1, Object{}, err
	}
	target := u.upperAt(rel)
	if overWh {
		target = u.workTemp()
	}
	fd, err := target.open(flags&^unix.O_TRUNC|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		return -1, Object{}, err
	}
	fail := func(err error) (int, Object, error) {
		unix.Close(fd)
		target.unlink()
		return -1, Object{}, err
	}
	if err := u.finish(target, owner, mode); err != nil {
		return fail(err)
	}
	if overWh {
		if err := u.place(target, rel, true, false); err != nil {
			return fail(err)
		}
	}
	o, err := u.lookup(rel)
	if err != nil {
		return fail(err)
	}
	return fd, o, nil
}

// Mkdir creates a directory.
func (u *Union) Mkdir(rel string, mode uint32, owner Owner) (Object, error) {
	return u.create(rel, mode&07777|unix.S_IFDIR, owner,
		func(p at) error { return p.mkdir(0o700) }, at.rmdir)
}

// Mknod creates a device, fifo or socket.
func (u *Union) Mknod(rel string, mode uint32, dev uint64, owner Owner) (Object, error) {
	return u.create(rel, mode, owner,
		func(p at) error { return p.mknod(mode&unix.S_IFMT|0o600, int(dev)) }, at.unlink)
}

// Symlink creates a symbolic link.
func (u *Union) Symlink(target, rel string, owner Owner) (Object, error) {
	return u.create(rel, unix.S_IFLNK|0o777, owner,
		func(p at) error { return p.symlink(target) }, at.unlink)
}

// create makes a new object at rel with mk: in place, or, over a
// whiteout, in the workdir first and then moved over it (see place). rm
// undoes mk after a failure.
func (u *Union) create(rel string, mode uint32, owner Owner, mk, rm func(at) error) (Object, error) {
	defer u.lockEntries()()
	owner, mode, overWh, err := u.prepareCreate(rel, owner, mode)
	if err != nil {
		return Object{}, err
	}
	p := u.upperAt(rel)
	if overWh {
		p = u.workTemp()
	}
	if err := mk(p); err != nil {
		return Object{}, err
	}
	if err := u.finish(p, owner, mode); err != nil {
		rm(p)
		return Object{}, err
	}
	isDir := mode&unix.S_IFMT == unix.S_IFDIR
	if overWh {
		if err := u.place(p, rel, true, isDir); err != nil {
			rm(p)
			return Object{}, err
		}
		if isDir {
			u.structureChanged()
		}
	}
	return u.lookup(rel)
}

// Link makes newRel a hardlink of oldRel, copying oldRel up first.
func (u *Union) Link(oldRel, newRel string) (Object, error) {
	defer u.lockEntries()()
	if err := u.writable(); err != nil {
		return Object{}, err
	}
	src, err := u.lookup(oldRel)
	if err != nil {
		return Object{}, err
	}
	if src.IsDir() {
		return Object{}, unix.EPERM
	}
	if _, _, _, err := u.prepareCreate(newRel, Owner{}, 0); err != nil {
		return Object{}, err
	}
	if src, err = u.copyUp(oldRel, false); err != nil {
		return Object{}, err
	}
	if u.upperWhiteoutAt(newRel) {
		tmp := u.workTemp()
		if err := linkat(src.at, tmp); err != nil {
			return Object{}, err
		}
		if err := renameat2(tmp, u.upperAt(newRel), 0); err != nil {
			tmp.unlink()
			return Object{}, err
		}
	} else if err := linkat(src.at, u.upperAt(newRel)); err != nil {
		return Object{}, err
	}
	return u.lookup(newRel)
}

// whiteout makes the upper hide rel (see WriteWhiteout).
func (u *Union) whiteout(rel string) error {
	return u.upperAt(rel).do(func(d int, p string) error {
		aufs, err := WriteWhiteout(d, p)
		if aufs && err == nil {
			u.aufsWhiteouts.Store(true)
		}
		return err
	})
}

// removeUpper removes the upper object o at rel, leaving a whiteout when
// the lowers have something there: atomically, with RENAME_WHITEOUT, where
// the filesystem allows.
func (u *Union) removeUpper(rel string, o Object) error {
	p := u.upperAt(rel)
	rm := at.unlink
	if o.IsDir() {
		rm = at.rmdir
	}
	var err error
	if !o.InLower {
		err = rm(p)
	} else {
		tmp := u.workTemp()
		if err = renameat2(p, tmp, unix.RENAME_WHITEOUT); err == nil {
			err = rm(tmp)
		} else if err = rm(p); err == nil {
			err = u.whiteout(rel)
		}
	}
	if err == nil {
		u.gone(o)
	}
	return err
}

// gone reports an upper object that no longer exists (its last name was
// removed or replaced): its inode number may now be given to a new file.
func (u *Union) gone(o Object) {
	if u.onGone != nil && o.InUpper() && (o.IsDir() || o.Stat.Nlink <= 1) {
		u.onGone(o)
	}
}

// removable looks up what an unlink (dir false) or rmdir (dir true) of
// rel would remove.
func (u *Union) removable(rel string, dir bool) (Object, error) {
	if err := u.writable(); err != nil {
		return Object{}, err
	}
	o, err := u.lookup(rel)
	switch {
	case err != nil:
		return o, err
	case o.IsDir() && !dir:
		return o, unix.EISDIR
	case !o.IsDir() && dir:
		return o, unix.ENOTDIR
	}
	return o, nil
}

// Unlink removes a non-directory.
func (u *Union) Unlink(rel string) error {
	defer u.lockEntries()()
	o, err := u.removable(rel, false)
	if err != nil {
		return err
	}
	if o.InUpper() {
		return u.removeUpper(rel, o)
	}
	pdir, _ := Split(rel)
	if _, err := u.copyUp(pdir, false); err != nil {
		return err
	}
	return u.whiteout(rel)
}

// Rmdir removes an empty directory: empty in the merged view, whatever
// whiteouts its upper part holds.
func (u *Union) Rmdir(rel string) error {
	defer u.lockEntries()()
	o, err := u.removable(rel, true)
	if err != nil {
		return err
	}
	if err := u.checkEmpty(rel); err != nil {
		return err
	}
	defer u.structureChanged()
	if o.InUpper() {
		if err := u.clearMarkers(rel); err != nil {
			return err
		}
		return u.removeUpper(rel, o)
	}
	pdir, _ := Split(rel)
	if _, err := u.copyUp(pdir, false); err != nil {
		return err
	}
	return u.whiteout(rel)
}

// checkEmpty gives ENOTEMPTY unless the merged directory rel is empty.
// The caller holds the namespace lock.
func (u *Union) checkEmpty(rel string) error {
	ents, err := u.readDir(rel)
	if err != nil {
		return err
	}
	if len(ents) > 0 {
		return unix.ENOTEMPTY
	}
	return nil
}

// clearMarkers empties the upper part of a merged-empty directory: only
// whiteouts and markers can be left in it.
func (u *Union) clearMarkers(rel string) error {
	p := u.upperAt(rel)
	ents, err := readDirents(p)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := p.join(e.name).unlink(); err != nil {
			return err
		}
	}
	return nil
}

// lowerDirUnder reports whether the lowers contribute contents to the
// merged directory rel, which a rename cannot carry along.
func (u *Union) lowerDirUnder(rel string, o Object) (bool, error) {
	if !o.InLower {
		return false, nil
	}
	vis, err := u.lowerVisibleIn(rel)
	if err != nil || !vis {
		return false, err
	}
	srcs, err := u.lower.Sources(rel)
	return len(srcs) > 0, err
}

// Rename moves oldRel to newRel. flags are renameat2's NOREPLACE and
// EXCHANGE. A directory with contents in the lowers gives EXDEV, as the
// kernel without redirect_dir does (mv then copies).
func (u *Union) Rename(oldRel, newRel string, flags uint) error {
	defer u.lockEntries()()
	if err := u.writable(); err != nil {
		return err
	}
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return unix.EINVAL
	}
	if err := checkNewName(newRel); err != nil {
		return err
	}
	src, err := u.lookup(oldRel)
	if err != nil {
		return err
	}
	dst, derr := u.lookup(newRel)
	if derr != nil && derr != unix.ENOENT {
		return derr
	}
	dstExists := derr == nil
	exchange := flags&unix.RENAME_EXCHANGE != 0
	switch {
	case flags&unix.RENAME_NOREPLACE != 0 && dstExists:
		return unix.EEXIST
	case exchange && !dstExists:
		return unix.ENOENT
	case oldRel == newRel:
		return nil
	case strings.HasPrefix(newRel+"/", oldRel+"/") || (exchange && strings.HasPrefix(oldRel+"/", newRel+"/")):
		return unix.EINVAL // into its own subtree
	}
	if dstExists && !exchange {
		switch {
		case src.IsDir() && !dst.IsDir():
			return unix.ENOTDIR
		case !src.IsDir() && dst.IsDir():
			return unix.EISDIR
		case dst.IsDir():
			if err := u.checkEmpty(newRel); err != nil {
				return err
			}
		}
	}
	for _, x := range []struct {
		rel string
		o   Object
		ok  bool
	}{{oldRel, src, true}, {newRel, dst, exchange}} {
		if x.ok && x.o.IsDir() {
			if lower, err := u.lowerDirUnder(x.rel, x.o); err != nil || lower {
				if err == nil {
					err = unix.EXDEV
				}
				return err
			}
		}
	}
	if src.IsDir() || (dstExists && dst.IsDir()) {
		defer u.structureChanged()
	}
	if src, err = u.copyUp(oldRel, false); err != nil {
		return err
	}
	npdir, _ := Split(newRel)
	if _, err := u.copyUp(npdir, false); err != nil {
		return err
	}
	if exchange {
		if dst, err = u.copyUp(newRel, false); err != nil {
			return err
		}
		if err := renameat2(src.at, dst.at, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		// Each directory now stands where the lowers may have something.
		for _, x := range []struct {
			rel string
			o   Object
		}{{newRel, src}, {oldRel, dst}} {
			if x.o.IsDir() {
				if err := u.opaqueIfLowerHas(x.rel); err != nil {
					return err
				}
			}
		}
		return nil
	}
	newPath := u.upperAt(newRel)
	if dstExists && dst.IsDir() && dst.InUpper() {
		if err := u.clearMarkers(newRel); err != nil {
			return err
		}
	}
	switch {
	case src.IsDir() && u.upperWhiteoutAt(newRel):
		// A directory cannot be renamed over the whiteout device: swap
		// them, and the whiteout lands at the old name, where it is
		// either needed or removed.
		if err := renameat2(src.at, newPath, unix.RENAME_EXCHANGE); err != nil {
			return err
		}
		if !src.InLower {
			if err := src.at.unlink(); err != nil {
				return err
			}
		}
	case src.InLower:
		err := renameat2(src.at, newPath, unix.RENAME_WHITEOUT)
		if err == unix.EINVAL || err == unix.EPERM {
			if err = renameat2(src.at, newPath, 0); err == nil {
				err = u.whiteout(oldRel)
			}
		}
		if err != nil {
			return err
		}
	default:
		if err := renameat2(src.at, newPath, 0); err != nil {
			return err
		}
	}
	if dstExists {
		u.gone(dst) // replaced
	}
	if src.IsDir() {
		return u.opaqueIfLowerHas(newRel)
	}
	return nil
}

// opaqueIfLowerHas marks the upper directory at rel opaque when the lowers
// have something there that must not show through it.
func (u *Union) opaqueIfLowerHas(rel string) error {
	u.structureChanged()
	pdir, name := Split(rel)
	vis, err := u.lowerVisibleIn(pdir)
	if err != nil || !vis {
		return err
	}
	_, has, err := u.lowerEntry(pdir, name)
	if err != nil || !has {
		return err
	}
	return u.setOpaque(u.upperAt(rel))
}

// Open opens rel. Opening for writing, or with O_TRUNC, copies it up
// first (without its data for O_TRUNC); a read never does.
func (u *Union) Open(rel string, flags int) (int, Object, error) {
	write := flags&unix.O_ACCMODE != unix.O_RDONLY || flags&unix.O_TRUNC != 0
	var o Object
	var err error
	if write {
		if err := u.writable(); err != nil {
			return -1, o, err
		}
		u.ns.Lock()
		o, err = u.copyUp(rel, flags&unix.O_TRUNC != 0)
		u.ns.Unlock()
	} else {
		o, err = u.Lookup(rel)
	}
	if err != nil {
		return -1, o, err
	}
	fd, err := o.at.open(flags&^(unix.O_CREAT|unix.O_EXCL|unix.O_NOCTTY), 0)
	if err != nil {
		return -1, o, err
	}
	return fd, o, nil
}

// Attr is a change of attributes; nil fields stay.
type Attr struct {
	Mode         *uint32
	UID, GID     *uint32
	Size         *int64
	Atime, Mtime *unix.Timespec // may be UTIME_NOW
}

// Setattr copies rel up and changes its attributes.
func (u *Union) Setattr(rel string, a Attr) (Object, error) {
	u.ns.Lock()
	defer u.ns.Unlock()
	if err := u.writable(); err != nil {
		return Object{}, err
	}
	o, err := u.copyUp(rel, a.Size != nil && *a.Size == 0)
	if err != nil {
		return o, err
	}
	p := o.at
	if a.UID != nil || a.GID != nil {
		uid, gid := o.Stat.Uid, o.Stat.Gid
		if a.UID != nil {
			uid = *a.UID
		}
		if a.GID != nil {
			gid = *a.GID
		}
		if err := u.chown(p, &o, uid, gid); err != nil {
			return o, err
		}
	}
	if a.Mode != nil && o.Stat.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := u.chmod(p, o.Stat.Mode&unix.S_IFMT|*a.Mode&07777); err != nil {
			return o, err
		}
	}
	if a.Size != nil {
		if err := p.truncate(*a.Size); err != nil {
			return o, err
		}
	}
	if a.Atime != nil || a.Mtime != nil {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if a.Atime != nil {
			ts[0] = *a.Atime
		}
		if a.Mtime != nil {
			ts[1] = *a.Mtime
		}
		if err := p.utimes(ts); err != nil {
			return o, err
		}
	}
	return u.lookup(rel)
}

// chown changes an owner. As the kernel does for a chown, it clears the
// setuid and setgid bits of a non-directory; rootless, it records the
// owner in the override instead.
func (u *Union) chown(p at, o *Object, uid, gid uint32) error {
	if !u.rootless {
		return p.chown(int(uid), int(gid))
	}
	mode := o.Stat.Mode
	if mode&unix.S_IFMT != unix.S_IFDIR && (uid != o.Stat.Uid || gid != o.Stat.Gid) {
		mode &^= unix.S_ISUID
		if mode&0o010 != 0 {
			mode &^= unix.S_ISGID
		}
	}
	if !u.recordChowns && int(uid) == os.Geteuid() && int(gid) == os.Getegid() {
		if _, err := getXattr(p, XattrOverrideStat); err == unix.ENODATA {
			return nil
		}
	}
	if mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	return u.recordOverride(p, uid, gid, mode)
}

// GetXattr reads an xattr of the merged object; union bookkeeping is
// invisible.
func (u *Union) GetXattr(rel, name string) (string, error) {
	if IsInternalXattr(name) {
		return "", unix.ENODATA
	}
	o, err := u.Lookup(rel)
	if err != nil {
		return "", err
	}
	return getXattr(o.at, name)
}

// ListXattr lists the xattrs of the merged object, bookkeeping left out.
func (u *Union) ListXattr(rel string) ([]string, error) {
	o, err := u.Lookup(rel)
	if err != nil {
		return nil, err
	}
	raw, err := readXattrNames(o.at)
	if err != nil {
		return nil, err
	}
	out := raw[:0]
	for _, n := range raw {
		if !IsInternalXattr(n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// SetXattr copies rel up and sets an xattr. Bookkeeping names are not
// the caller's to set.
func (u *Union) SetXattr(rel, name string, value []byte, flags int) error {
	if IsInternalXattr(name) {
		return unix.EPERM
	}
	u.ns.Lock()
	defer u.ns.Unlock()
	if err := u.writable(); err != nil {
		return err
	}
	o, err := u.copyUp(rel, false)
	if err != nil {
		return err
	}
	return o.at.setxattr(name, value, flags)
}

// RemoveXattr removes an xattr; an absent one gives ENODATA without a
// copy-up (fuse-overlayfs copies up first, which leaves a spurious copy).
func (u *Union) RemoveXattr(rel, name string) error {
	if IsInternalXattr(name) {
		return unix.ENODATA
	}
	u.ns.Lock()
	defer u.ns.Unlock()
	if err := u.writable(); err != nil {
		return err
	}
	o, err := u.lookup(rel)
	if err != nil {
		return err
	}
	if _, err := getXattr(o.at, name); err != nil {
		return err
	}
	if o, err = u.copyUp(rel, false); err != nil {
		return err
	}
	return o.at.removexattr(name)
}

// Readlink reads a symlink's target.
func (u *Union) Readlink(rel string) (string, error) {
	o, err := u.Lookup(rel)
	if err != nil {
		return "", err
	}
	return o.at.readlink()
}

// Statfs reports on the upper's filesystem, or the top lower's.
func (u *Union) Statfs(st *syscall.Statfs_t) error {
	p := u.upper
	if !u.hasUpper {
		ls := u.lower.top
		if len(ls) == 0 {
			return unix.ENOENT
		}
		p = ls[0]
	}
	fd, err := p.open(unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return syscall.Fstatfs(fd, st)
}
