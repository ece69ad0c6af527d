package overlay

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// at names an object of a layer dir by a directory descriptor and a path
// relative to it: every system call goes through the *at form, so no path
// handed to the kernel is longer than the path inside the layer. A union
// (whose objects may lie PATH_MAX-1 bytes deep in the mount, below a layer
// dir whose own path is long) opens each layer dir once and names
// everything below it so. Callers that only have a path use atPath, the
// path itself relative to the working directory.
type at struct {
	dir  int    // a directory descriptor, or unix.AT_FDCWD
	path string // relative to dir ("." is dir itself); absolute with AT_FDCWD
	root string // dir's own path, for messages ("" with AT_FDCWD)
}

func atPath(p string) at { return at{dir: unix.AT_FDCWD, path: p} }

// atRoot names the layer dir open at fd, whose path is root.
func atRoot(fd int, root string) at { return at{dir: fd, path: ".", root: root} }

// rel names the object at rel ("" for the dir itself) below a.
func (a at) rel(rel string) at {
	if rel == "" {
		return a
	}
	return a.join(rel)
}

func (a at) join(name string) at {
	if a.path == "." {
		return at{dir: a.dir, path: name, root: a.root}
	}
	return at{dir: a.dir, path: a.path + "/" + name, root: a.root}
}

// parent names the directory that holds a, and a's last element.
func (a at) parent() (at, string) {
	i := strings.LastIndexByte(a.path, '/')
	if i < 0 {
		return at{dir: a.dir, path: ".", root: a.root}, a.path
	}
	if i == 0 { // "/x", with AT_FDCWD
		return at{dir: a.dir, path: "/", root: a.root}, a.path[1:]
	}
	return at{dir: a.dir, path: a.path[:i], root: a.root}, a.path[i+1:]
}

// String is the object's path, for messages.
func (a at) String() string {
	if a.dir == unix.AT_FDCWD {
		return a.path
	}
	return filepath.Join(a.root, a.path)
}

func (a at) err(op string, err error) error {
	if err == nil {
		return nil
	}
	return &os.PathError{Op: op, Path: a.String(), Err: err}
}

// pathMax is Linux's PATH_MAX: no path argument of a system call may be
// as long (with its NUL byte, it would not fit).
const pathMax = 4096

// deep runs op on a, whose path is too long for one system call (an
// object below a directory that lies PATH_MAX-1 bytes deep, reached by a
// walk that went there step by step): through descriptors of directories
// along the way, each a step shorter than PATH_MAX. A single name longer
// than that still fails, with ENAMETOOLONG.
func (a at) deep(op func(at) error) error {
	dir, rest := a.dir, a.path
	var opened []int
	defer func() {
		for _, fd := range opened {
			unix.Close(fd)
		}
	}()
	for len(rest) >= pathMax {
		cut := strings.LastIndexByte(rest[:pathMax-1], '/')
		if cut <= 0 {
			return unix.ENAMETOOLONG
		}
		fd, err := unix.Openat(dir, rest[:cut], unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		opened = append(opened, fd)
		dir, rest = fd, rest[cut+1:]
	}
	return op(at{dir: dir, path: rest, root: a.String()})
}

func (a at) long() bool { return len(a.path) >= pathMax }

func (a at) lstat(st *unix.Stat_t) error {
	if a.long() {
		return a.deep(func(b at) error { return b.lstat(st) })
	}
	return unix.Fstatat(a.dir, a.path, st, unix.AT_SYMLINK_NOFOLLOW)
}

// open opens a without following a symlink at its end.
func (a at) open(flags int, mode uint32) (fd int, err error) {
	if a.long() {
		err = a.deep(func(b at) (err error) { fd, err = b.open(flags, mode); return err })
		return fd, err
	}
	return unix.Openat(a.dir, a.path, flags|unix.O_CLOEXEC|unix.O_NOFOLLOW, mode)
}

// readlink reads a symlink's target, whatever its length.
func (a at) readlink() (target string, err error) {
	if a.long() {
		err = a.deep(func(b at) (err error) { target, err = b.readlink(); return err })
		return target, err
	}
	for n := 256; ; n *= 2 {
		buf := make([]byte, n)
		k, err := unix.Readlinkat(a.dir, a.path, buf)
		if err != nil {
			return "", err
		}
		if k < n {
			return string(buf[:k]), nil
		}
	}
}

// do runs op on a's directory descriptor and path, through deep when the
// path is too long for one call.
func (a at) do(op func(dir int, path string) error) error {
	if a.long() {
		return a.deep(func(b at) error { return op(b.dir, b.path) })
	}
	return op(a.dir, a.path)
}

func (a at) mkdir(mode uint32) error {
	return a.do(func(d int, p string) error { return unix.Mkdirat(d, p, mode) })
}

func (a at) mknod(mode uint32, dev int) error {
	return a.do(func(d int, p string) error { return unix.Mknodat(d, p, mode, dev) })
}

func (a at) symlink(target string) error {
	return a.do(func(d int, p string) error { return unix.Symlinkat(target, d, p) })
}

func (a at) unlink() error {
	return a.do(func(d int, p string) error { return unix.Unlinkat(d, p, 0) })
}

func (a at) rmdir() error {
	return a.do(func(d int, p string) error { return unix.Unlinkat(d, p, unix.AT_REMOVEDIR) })
}

func (a at) chown(uid, gid int) error {
	return a.do(func(d int, p string) error { return unix.Fchownat(d, p, uid, gid, unix.AT_SYMLINK_NOFOLLOW) })
}

// chmod sets the mode of a, which is not a symlink (Linux has no mode of
// its own for one).
func (a at) chmod(mode uint32) error {
	return a.do(func(d int, p string) error { return unix.Fchmodat(d, p, mode, 0) })
}

func (a at) utimes(ts []unix.Timespec) error {
	return a.do(func(d int, p string) error { return unix.UtimesNanoAt(d, p, ts, unix.AT_SYMLINK_NOFOLLOW) })
}

// truncate sets the size of the regular file a.
func (a at) truncate(size int64) error {
	fd, err := a.open(unix.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Ftruncate(fd, size)
}

func renameat2(from, to at, flags uint) error {
	return from.do(func(fd int, fp string) error {
		return to.do(func(td int, tp string) error { return unix.Renameat2(fd, fp, td, tp, flags) })
	})
}

func linkat(from, to at) error {
	return from.do(func(fd int, fp string) error {
		return to.do(func(td int, tp string) error { return unix.Linkat(fd, fp, td, tp, 0) })
	})
}

// xattrs: the *xattrat system calls (Linux 6.13) name the object relative
// to a directory descriptor. Before them, the object is reached through
// its parent's descriptor in /proc/self/fd: a short path whatever its
// depth.

// xattrArgs is struct xattr_args.
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

// viaProc runs op on a path that reaches a without a long walk: the path
// itself with AT_FDCWD, else /proc/self/fd/N/NAME for its parent N.
func (a at) viaProc(op func(p string) error) error {
	if a.dir == unix.AT_FDCWD {
		return op(a.path)
	}
	if a.path == "." {
		return op("/proc/self/fd/" + strconv.Itoa(a.dir))
	}
	pdir, name := a.parent()
	fd, err := unix.Openat(pdir.dir, pdir.path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return op("/proc/self/fd/" + strconv.Itoa(fd) + "/" + name)
}

// xattrAtFlags ask the *xattrat calls for the object itself, not what a
// symlink there points to; "." is the directory descriptor itself.
const xattrAtFlags = unix.AT_SYMLINK_NOFOLLOW

func (a at) listxattr(dest []byte) (n int, err error) {
	if a.long() {
		err = a.deep(func(b at) (err error) { n, err = b.listxattr(dest); return err })
		return n, err
	}
	if a.dir != unix.AT_FDCWD {
		p, err := unix.BytePtrFromString(a.path)
		if err != nil {
			return 0, err
		}
		var d unsafe.Pointer
		if len(dest) > 0 {
			d = unsafe.Pointer(&dest[0])
		}
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(a.dir), uintptr(unsafe.Pointer(p)), xattrAtFlags, uintptr(d), uintptr(len(dest)), 0)
		if e != unix.ENOSYS {
			if e != 0 {
				return 0, e
			}
			return int(r), nil
		}
	}
	err = a.viaProc(func(p string) (err error) { n, err = unix.Llistxattr(p, dest); return err })
	return n, err
}

// cstrings are a's path and an xattr name for a system call.
func (a at) cstrings(name string) (path, nm *byte, err error) {
	if path, err = unix.BytePtrFromString(a.path); err == nil {
		nm, err = unix.BytePtrFromString(name)
	}
	return path, nm, err
}

func (a at) getxattr(name string, dest []byte) (n int, err error) {
	if a.long() {
		err = a.deep(func(b at) (err error) { n, err = b.getxattr(name, dest); return err })
		return n, err
	}
	if a.dir != unix.AT_FDCWD {
		p, nm, err := a.cstrings(name)
		if err != nil {
			return 0, err
		}
		// The kernel writes dest through an address in args, which the
		// Go runtime cannot see: dest must stay where it is.
		var pin runtime.Pinner
		defer pin.Unpin()
		var args xattrArgs
		if len(dest) > 0 {
			pin.Pin(&dest[0])
			args.value, args.size = uint64(uintptr(unsafe.Pointer(&dest[0]))), uint32(len(dest))
		}
		r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(a.dir), uintptr(unsafe.Pointer(p)), xattrAtFlags, uintptr(unsafe.Pointer(nm)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		if e != unix.ENOSYS {
			if e != 0 {
				return 0, e
			}
			return int(r), nil
		}
	}
	err = a.viaProc(func(p string) (err error) { n, err = unix.Lgetxattr(p, name, dest); return err })
	return n, err
}

func (a at) setxattr(name string, value []byte, flags int) error {
	if a.long() {
		return a.deep(func(b at) error { return b.setxattr(name, value, flags) })
	}
	if a.dir != unix.AT_FDCWD {
		p, nm, err := a.cstrings(name)
		if err != nil {
			return err
		}
		var pin runtime.Pinner
		defer pin.Unpin()
		args := xattrArgs{size: uint32(len(value)), flags: uint32(flags)}
		if len(value) > 0 {
			pin.Pin(&value[0])
			args.value = uint64(uintptr(unsafe.Pointer(&value[0])))
		}
		_, _, e := unix.Syscall6(unix.SYS_SETXATTRAT, uintptr(a.dir), uintptr(unsafe.Pointer(p)), xattrAtFlags, uintptr(unsafe.Pointer(nm)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		if e != unix.ENOSYS {
			if e != 0 {
				return e
			}
			return nil
		}
	}
	return a.viaProc(func(p string) error { return unix.Lsetxattr(p, name, value, flags) })
}

func (a at) removexattr(name string) error {
	if a.long() {
		return a.deep(func(b at) error { return b.removexattr(name) })
	}
	if a.dir != unix.AT_FDCWD {
		p, nm, err := a.cstrings(name)
		if err != nil {
			return err
		}
		_, _, e := unix.Syscall6(unix.SYS_REMOVEXATTRAT, uintptr(a.dir), uintptr(unsafe.Pointer(p)), xattrAtFlags, uintptr(unsafe.Pointer(nm)), 0, 0)
		if e != unix.ENOSYS {
			if e != 0 {
				return e
			}
			return nil
		}
	}
	return a.viaProc(func(p string) error { return unix.Lremovexattr(p, name) })
}

// removeAll removes a and everything below it, by descriptors.
func (a at) removeAll() error {
	err := a.unlink()
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return err
	}
	fd, err := a.open(unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	ents, err := readDirentsFd(fd)
	if err == nil {
		d := at{dir: fd, path: ".", root: a.String()}
		for _, e := range ents {
			if err = d.join(e.name).removeAll(); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := a.rmdir(); err != nil && err != unix.ENOENT {
		return err
	}
	return nil
}
