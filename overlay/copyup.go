package overlay

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// workTemp names a staging entry in the workdir; the pid keeps two
// daemons sharing a workdir apart.
func (u *Union) workTemp() at {
	return u.work.join("#" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(u.tmpSeq.Add(1), 36))
}

// CopyUp makes rel exist in the upper, with its parents, and returns the
// object as the upper now serves it. The caller holds no lock.
func (u *Union) CopyUp(rel string) (Object, error) {
	u.ns.Lock()
	defer u.ns.Unlock()
	return u.copyUp(rel, false)
}

// copyUp does CopyUp under the namespace lock: the object is copied to the
// workdir with its data, owner, mode, xattrs and times (in that order:
// chown clears setuid bits and file capabilities), and renamed into place,
// so the upper never holds a partial copy.
//
// noData copies a regular file's metadata only, for an open with O_TRUNC
// that would throw the data away at once.
func (u *Union) copyUp(rel string, noData bool) (Object, error) {
	o, err := u.lookup(rel)
	if err != nil || o.InUpper() {
		return o, err
	}
	if !u.hasUpper {
		return o, unix.EROFS
	}
	if rel != "" {
		pdir, _ := Split(rel)
		if _, err := u.copyUp(pdir, false); err != nil {
			return o, err
		}
	}
	var raw unix.Stat_t
	if err := o.at.lstat(&raw); err != nil {
		return o, o.at.err("lstat", err)
	}
	tmp := u.workTemp()
	if noData {
		raw.Size = 0
	}
	if err := u.cloneObject(o.at, tmp, &raw); err != nil {
		tmp.removeAll()
		return o, fmt.Errorf("copy up %s: %w", rel, err)
	}
	// A copy-up is not a change of the parent directory: its times stay
	// what they were, as on the kernel's overlayfs.
	pdir, _ := Split(rel)
	var pst unix.Stat_t
	parentTimes := rel != "" && u.upperAt(pdir).lstat(&pst) == nil
	if err := renameat2(tmp, u.upperAt(rel), unix.RENAME_NOREPLACE); err != nil {
		tmp.removeAll()
		return o, fmt.Errorf("copy up %s: %w", rel, err)
	}
	if parentTimes {
		u.upperAt(pdir).utimes([]unix.Timespec{pst.Atim, pst.Mtim})
	}
	up, err := u.lookup(rel)
	if err == nil && u.onCopyUp != nil {
		u.onCopyUp(rel, o, up)
	}
	return up, err
}

// cloneObject creates dst as a copy of src: data (for files), owner,
// mode, xattrs and times.
func (u *Union) cloneObject(src, dst at, st *unix.Stat_t) error {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		if err := dst.mkdir(0o700); err != nil {
			return err
		}
	case unix.S_IFREG:
		if err := copyFileData(src, dst, st.Size); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := src.readlink()
		if err != nil {
			return err
		}
		if err := dst.symlink(target); err != nil {
			return err
		}
	default:
		if err := dst.mknod(st.Mode, int(st.Rdev)); err != nil {
			return err
		}
	}
	return u.copyMeta(src, dst, st)
}

// copyMeta gives dst the owner, mode, xattrs and times of src.
func (u *Union) copyMeta(src, dst at, st *unix.Stat_t) error {
	isLink := st.Mode&unix.S_IFMT == unix.S_IFLNK
	raw, err := readXattrs(src)
	if err != nil {
		return err
	}
	hasOverride := raw[XattrOverrideStat] != "" || raw[xattrOverrideStatOld] != ""
	if hasOverride {
		u.upperOverrides.Store(true)
	}
	if err := u.setOwner(dst, st.Uid, st.Gid, st.Mode, hasOverride); err != nil {
		return err
	}
	if !isLink {
		if err := dst.chmod(st.Mode & 07777); err != nil {
			return err
		}
	}
	for name, v := range raw {
		if skipOnCopyUp(name) {
			continue
		}
		if name == xattrOverrideStatOld {
			name = XattrOverrideStat // carry it over in today's name
		}
		if err := dst.setxattr(name, []byte(v), 0); err != nil {
			if u.rootless && (strings.HasPrefix(name, "trusted.") || strings.HasPrefix(name, "security.")) {
				continue // needs privileges this daemon lacks
			}
			if isLink && strings.HasPrefix(name, "user.") {
				continue // Linux keeps user.* off symlinks
			}
			return fmt.Errorf("setxattr %s %s: %w", dst, name, err)
		}
	}
	return dst.utimes([]unix.Timespec{st.Atim, st.Mtim})
}

// skipOnCopyUp: union bookkeeping of the layer the object came from
// (origins, impure and opaque marks, redirects) does not describe the copy.
// Ownership overrides do, and are kept.
func skipOnCopyUp(name string) bool {
	if name == XattrOverrideStat || name == xattrOverrideStatOld {
		return false
	}
	return IsInternalXattr(name)
}

// setOwner chowns p, or, where this process may not (rootless), records
// the owner, mode and type in user.containers.override_stat. hasOverride:
// the caller copies an override over p anyway.
func (u *Union) setOwner(p at, uid, gid, mode uint32, hasOverride bool) error {
	if !u.rootless {
		return p.chown(int(uid), int(gid))
	}
	if hasOverride {
		return nil
	}
	if int(uid) == os.Geteuid() && int(gid) == os.Getegid() {
		return nil
	}
	if err := p.chown(int(uid), int(gid)); err == nil {
		return nil
	}
	if u.recordChowns {
		// Recorded, the daemon's own ids would be explicit, and a
		// squashing commit would keep them: they stand for root's, as
		// that commit reads them on disk (a file made in a setgid
		// directory of a group the daemon is not in).
		if int(uid) == os.Geteuid() {
			uid = 0
		}
		if int(gid) == os.Getegid() {
			gid = 0
		}
	}
	return u.recordOverride(p, uid, gid, mode)
}

// recordOverride writes the override_stat a rootless daemon keeps for an
// owner or mode it cannot apply.
func (u *Union) recordOverride(p at, uid, gid, mode uint32) error {
	o := Override{UID: uid, GID: gid, Mode: mode & 07777, Type: TypeOf(mode)}
	if o.Type == TypeChar || o.Type == TypeBlock {
		var st unix.Stat_t
		if err := p.lstat(&st); err == nil {
			o.Major, o.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		}
	}
	if o.Type == TypeSymlink {
		return nil // Linux refuses user.* xattrs on symlinks; they keep the daemon's owner
	}
	u.upperOverrides.Store(true)
	return p.setxattr(XattrOverrideStat, []byte(o.Format()), 0)
}

// copyFileData copies a regular file: a reflink where the filesystem can,
// else copy_file_range over the data extents only, so that holes stay
// holes.
func copyFileData(src, dst at, size int64) error {
	in, err := src.open(unix.O_RDONLY, 0)
	if err != nil {
		return src.err("open", err)
	}
	defer unix.Close(in)
	out, err := dst.open(unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		return dst.err("create", err)
	}
	defer unix.Close(out)
	if size == 0 {
		return nil
	}
	if unix.IoctlFileClone(out, in) == nil {
		return nil
	}
	var off int64
	for off < size {
		data, err := unix.Seek(in, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole remains
		}
		if err != nil {
			data = off // no SEEK_DATA: copy everything
		}
		hole, err := unix.Seek(in, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		if err := copyRange(in, out, data, hole-data); err != nil {
			return fmt.Errorf("copy %s: %w", src, err)
		}
		off = hole
	}
	return unix.Ftruncate(out, size)
}

func copyRange(in, out int, off, n int64) error {
	for n > 0 {
		roff, woff := off, off
		k, err := unix.CopyFileRange(in, &roff, out, &woff, int(min(n, 1<<30)), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			if err == nil || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeRW(in, out, off, n)
			}
			return err
		}
		off += int64(k)
		n -= int64(k)
	}
	return nil
}

func copyRangeRW(in, out int, off, n int64) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		k, err := unix.Pread(in, buf[:min(int64(len(buf)), n)], off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if k == 0 {
			return io.ErrUnexpectedEOF
		}
		if _, err := unix.Pwrite(out, buf[:k], off); err != nil {
			return err
		}
		off += int64(k)
		n -= int64(k)
	}
	return nil
}
